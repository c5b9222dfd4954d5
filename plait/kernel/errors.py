"""Errors of plait, and ``ErrorInfo``, the recorded form of an exception.

Two kernel families (STYLE rule 5): ``NonDeterminismError`` (history and code disagree) and
``FatalError`` (corrupt history, kernel bug). Neither fails a run: the runtime blocks it.
Everything else here is raised *into* workflow code or to a client.
"""

from __future__ import annotations

import traceback as _tb

from attrs import frozen

__all__ = [
    "ErrorInfo",
    "PlaitError",
    "WorkflowError",
    "NonDeterminismError",
    "FatalError",
    "CorruptHistoryError",
    "Cancelled",
    "Timeout",
    "StepFailed",
    "ChildFailed",
    "ChildCancelled",
    "ChildTerminated",
    "KeyConflict",
    "HookConflictError",
    "HookNotFound",
    "RunFailed",
    "RunCancelled",
    "RunTerminated",
]


@frozen
class ErrorInfo:
    """An exception as recorded in history: its type name, message and formatted traceback."""

    type: str
    message: str
    traceback: str = ""
    non_retryable: bool = False

    @classmethod
    def from_exception(cls, exc: BaseException, *, non_retryable: bool = False) -> ErrorInfo:
        tb = "".join(_tb.format_exception(type(exc), exc, exc.__traceback__))
        name = type(exc).__qualname__
        module = type(exc).__module__
        if module not in ("builtins", "__main__"):
            name = f"{module}.{name}"
        return cls(type=name, message=str(exc), traceback=tb, non_retryable=non_retryable)

    def __str__(self) -> str:
        return f"{self.type}: {self.message}" if self.message else self.type


class PlaitError(Exception):
    """Base of plait's own exceptions."""


class WorkflowError(PlaitError):
    """Workflow code misused the API (awaited a foreign awaitable, called outside a workflow).

    Raised by a kernel check it blocks the run instead of failing it.
    """


class NonDeterminismError(PlaitError):
    """The workflow code and the recorded history disagree. The run is blocked, not failed."""


class FatalError(PlaitError):
    """The kernel cannot go on: a corrupt history or a bug. The run is blocked, not failed."""


class CorruptHistoryError(FatalError):
    """A history that no execution could have produced (e.g. an outcome for no open command)."""


class Cancelled(BaseException):
    """Raised at await points after the run (or this branch of it) was cancelled.

    A ``BaseException`` like ``asyncio.CancelledError``, so ``except Exception`` does not swallow
    it by accident. Catch it explicitly to clean up, then re-raise or return.
    """


class Timeout(PlaitError, TimeoutError):
    """``wait_for`` or ``RunHandle.result(timeout=...)`` ran out of time."""


class StepFailed(PlaitError):
    """A step failed for good; ``cause`` is the recorded last error."""

    def __init__(self, step: str, cause: ErrorInfo, attempts: int = 1) -> None:
        super().__init__(f"step {step!r} failed after {attempts} attempt(s): {cause}")
        self.step = step
        self.cause = cause
        self.attempts = attempts


class ChildFailed(PlaitError):
    """A child run failed; ``cause`` is its recorded error."""

    def __init__(self, run_id: str, cause: ErrorInfo) -> None:
        super().__init__(f"child run {run_id} failed: {cause}")
        self.run_id = run_id
        self.cause = cause


class ChildCancelled(PlaitError):
    """A child run closed as cancelled."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"child run {run_id} was cancelled")
        self.run_id = run_id


class ChildTerminated(PlaitError):
    """A child run was terminated."""

    def __init__(self, run_id: str, reason: str = "") -> None:
        super().__init__(f"child run {run_id} was terminated" + (f": {reason}" if reason else ""))
        self.run_id = run_id
        self.reason = reason


class KeyConflict(PlaitError, LookupError):
    """Another open run already holds this key."""

    def __init__(self, key: str | None, run_id: str | None = None) -> None:
        super().__init__(
            f"key {key!r} is held by another open run" + (f" ({run_id})" if run_id else "")
        )
        self.key = key
        self.run_id = run_id


class HookConflictError(PlaitError):
    """Another open hook holds this token."""

    def __init__(self, token: str) -> None:
        super().__init__(f"hook token {token!r} is held by another open hook")
        self.token = token


class HookNotFound(PlaitError, LookupError):
    """No open hook has this token (never created, or disposed)."""

    def __init__(self, token: str) -> None:
        super().__init__(f"no open hook has token {token!r}")
        self.token = token


class RunFailed(PlaitError):
    """The awaited run failed; ``cause`` is its recorded error."""

    def __init__(self, run_id: str, cause: ErrorInfo) -> None:
        super().__init__(f"run {run_id} failed: {cause}")
        self.run_id = run_id
        self.cause = cause


class RunCancelled(PlaitError):
    """The awaited run was cancelled."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id} was cancelled")
        self.run_id = run_id


class RunTerminated(PlaitError):
    """The awaited run was terminated."""

    def __init__(self, run_id: str, reason: str = "") -> None:
        super().__init__(f"run {run_id} was terminated" + (f": {reason}" if reason else ""))
        self.run_id = run_id
        self.reason = reason


# Errors are public as ``plait.X``: recorded ErrorInfo types and reprs use that name.
for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type) and issubclass(_obj, BaseException):
        _obj.__module__ = "plait"
del _name, _obj
