"""Commands: what the workflow code asks the runtime to do.

``Machine.activate`` returns these. Each has the ``seq`` the code gave it (rule 1 of the
matching rules) and is recorded in history as the command event named in its docstring.
"""

from __future__ import annotations

from typing import Any

from attrs import frozen

from .errors import ErrorInfo

__all__ = [
    "Command",
    "ScheduleStep",
    "StartTimer",
    "CancelTimer",
    "StartChild",
    "RequestCancelChild",
    "ResumeHook",
    "SendSignal",
    "CreateHook",
    "DisposeHook",
    "RecordPatch",
    "CompleteRun",
    "FailRun",
    "CancelRun",
    "ContinueAsNew",
    "CLOSE_COMMANDS",
]


class Command:
    """Base of every command (a marker; subclasses are frozen attrs classes)."""

    __slots__ = ()
    seq: int


@frozen
class ScheduleStep(Command):
    """Run step ``name`` with ``args`` (recorded as ``StepScheduled``)."""

    seq: int
    name: str
    args: list[Any]


@frozen
class StartTimer(Command):
    """Fire at ``fire_at`` (recorded as ``TimerStarted``)."""

    seq: int
    duration: float
    fire_at: float


@frozen
class CancelTimer(Command):
    """Cancel the timer started by command ``timer_seq`` (recorded as ``TimerCancelled``)."""

    seq: int
    timer_seq: int


@frozen
class StartChild(Command):
    """Create child run ``child_run_id`` (recorded as ``ChildScheduled``)."""

    seq: int
    workflow: str
    args: list[Any]
    child_run_id: str
    key: str | None = None
    parent_close: str = "terminate"
    queue: str | None = None


@frozen
class RequestCancelChild(Command):
    """Ask child ``child_run_id`` (from ``child_seq``) to cancel (``ChildCancelRequested``)."""

    seq: int
    child_seq: int
    child_run_id: str


@frozen
class ResumeHook(Command):
    """Deliver ``payload`` to the open hook holding ``token`` (recorded as ``HookResumeSent``)."""

    seq: int
    token: str
    payload: Any = None


@frozen
class SendSignal(Command):
    """Send signal ``name`` to run ``run_id`` (recorded as ``SignalSent``)."""

    seq: int
    run_id: str
    name: str
    payload: Any = None


@frozen
class CreateHook(Command):
    """Open a hook with ``token`` (recorded as ``HookCreated``)."""

    seq: int
    token: str


@frozen
class DisposeHook(Command):
    """Close the hook opened by command ``hook_seq`` (recorded as ``HookDisposed``)."""

    seq: int
    hook_seq: int
    token: str


@frozen
class RecordPatch(Command):
    """Record that ``patched(change_id)`` returned True (recorded as ``PatchMarker``)."""

    seq: int
    change_id: str


@frozen
class CompleteRun(Command):
    """Close the run with ``result`` (recorded as ``RunCompleted``)."""

    seq: int
    result: Any = None


@frozen
class FailRun(Command):
    """Close the run as failed (recorded as ``RunFailed``)."""

    seq: int
    error: ErrorInfo


@frozen
class CancelRun(Command):
    """Close the run as cancelled (recorded as ``RunCancelled``)."""

    seq: int


@frozen
class ContinueAsNew(Command):
    """Close the run and start a fresh one (recorded as ``RunContinuedAsNew``)."""

    seq: int
    workflow: str
    args: list[Any]


CLOSE_COMMANDS: frozenset[type[Command]] = frozenset(
    {CompleteRun, FailRun, CancelRun, ContinueAsNew}
)
