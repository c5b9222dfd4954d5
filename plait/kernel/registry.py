"""``@plait.step``, ``@plait.workflow``, ``RetryPolicy`` and the default registry.

Decorated functions stay callable. Inside a workflow, calling a step schedules it (the call
returns an awaitable that issues ``ScheduleStep``) and calling a workflow runs it inline; anywhere
else both are plain calls of the underlying function.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Generator
from typing import Any, TypeVar, overload

import attrs

from ._scheduler import Future
from .codec import encode_args, return_hint
from .machine import current_machine

__all__ = [
    "RetryPolicy",
    "StepFunction",
    "WorkflowFunction",
    "step",
    "workflow",
    "Registry",
    "default_registry",
]

F = TypeVar("F", bound=Callable[..., Any])


@attrs.frozen
class RetryPolicy:
    """How a failed step is retried: exponential backoff, capped, with non-retryable types.

    The delay before attempt ``n + 1`` is ``initial_interval * backoff ** (n - 1)``, at most
    ``max_interval``. ``max_attempts`` counts the first attempt; ``None`` retries forever.
    """

    max_attempts: int | None = 3
    initial_interval: float = 1.0
    backoff: float = 2.0
    max_interval: float = 60.0
    non_retryable: tuple[type[BaseException], ...] = ()

    def __attrs_post_init__(self) -> None:
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("RetryPolicy.max_attempts must be at least 1 (or None)")
        if self.initial_interval < 0 or self.max_interval < 0 or self.backoff < 1:
            raise ValueError("RetryPolicy intervals must be >= 0 and backoff >= 1")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        return float(min(self.max_interval, self.initial_interval * self.backoff ** (attempt - 1)))

    def should_retry(self, attempt: int, error: BaseException) -> bool:
        if isinstance(error, self.non_retryable):
            return False
        return self.max_attempts is None or attempt < self.max_attempts


def _name_of(fn: Callable[..., Any]) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


def _positional(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Any, ...]:
    if not kwargs:
        return args
    bound = inspect.signature(fn).bind(*args, **kwargs)
    if bound.kwargs:
        raise TypeError(
            f"{_name_of(fn)}: keyword-only arguments cannot be recorded; pass them positionally"
        )
    return tuple(bound.args)


class _StepCall:
    """The awaitable a step call returns inside a workflow; awaiting it schedules the step."""

    __slots__ = ("_step", "_args")

    def __init__(self, step: StepFunction, args: tuple[Any, ...]) -> None:
        self._step, self._args = step, args

    def __await__(self) -> Generator[Future, None, Any]:
        machine = current_machine()
        if machine is None:
            from .errors import WorkflowError

            raise WorkflowError(f"step {self._step.name} was awaited outside its workflow")
        args = encode_args(self._step.fn, self._args)
        fut = machine.schedule_step(self._step.name, args, self._step.result_hint)
        return (yield from fut.__await__())


class StepFunction:
    """A step: I/O happens here. Retried per ``retry``; each attempt has ``timeout`` seconds."""

    def __init__(
        self,
        fn: Callable[..., Any],
        name: str | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
    ) -> None:
        self.fn = fn
        self.name = name or _name_of(fn)
        self.retry = retry if retry is not None else RetryPolicy()
        self.timeout = timeout
        self.is_async = inspect.iscoroutinefunction(fn)
        functools.update_wrapper(self, fn)

    @property
    def result_hint(self) -> Any:
        """The declared return type, resolved lazily (it may name a class defined later)."""
        return return_hint(self.fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if current_machine() is not None:
            return _StepCall(self, _positional(self.fn, args, kwargs))
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<plait step {self.name}>"


class WorkflowFunction:
    """A workflow. Started as a run by an engine or ``plait.child``; awaited directly inside
    another workflow it runs inline, its steps joining the caller's history."""

    def __init__(self, fn: Callable[..., Awaitable[Any]], name: str | None = None) -> None:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"@plait.workflow needs an async def function, got {fn!r}")
        self.fn = fn
        self.name = name or _name_of(fn)
        functools.update_wrapper(self, fn)

    @property
    def result_hint(self) -> Any:
        """The declared return type, resolved lazily (it may name a class defined later)."""
        return return_hint(self.fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<plait workflow {self.name}>"


class Registry:
    """Name -> function maps. Duplicates are kept; they are an error only where they meet."""

    def __init__(self) -> None:
        self.workflows: list[WorkflowFunction] = []
        self.steps: list[StepFunction] = []

    def add(self, item: WorkflowFunction | StepFunction) -> None:
        (self.workflows if isinstance(item, WorkflowFunction) else self.steps).append(item)  # type: ignore[arg-type]


default_registry = Registry()


@overload
def step(fn: F, /) -> F: ...
@overload
def step(
    *, name: str | None = None, retry: RetryPolicy | None = None, timeout: float | None = None
) -> Callable[[F], F]: ...
def step(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    retry: RetryPolicy | None = None,
    timeout: float | None = None,
) -> Any:
    """Declare a step (``async def``, or ``def`` which the worker runs in a thread)."""

    def wrap(f: Callable[..., Any]) -> Any:
        s = StepFunction(f, name, retry, timeout)
        default_registry.add(s)
        return s

    return wrap(fn) if fn is not None else wrap


@overload
def workflow(fn: F, /) -> F: ...
@overload
def workflow(*, name: str | None = None) -> Callable[[F], F]: ...
def workflow(fn: Callable[..., Any] | None = None, /, *, name: str | None = None) -> Any:
    """Declare a workflow; ``name`` defaults to ``module.qualname``."""

    def wrap(f: Callable[..., Any]) -> Any:
        w = WorkflowFunction(f, name)
        default_registry.add(w)
        return w

    return wrap(fn) if fn is not None else wrap
