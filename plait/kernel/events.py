"""History events.

A run's history is a list of these. Each is a frozen value: *inbound* events are outcomes the
runtime delivered (a step finished, a timer fired, a child closed...), *command events* record a
command the workflow code issued, and *meta* events are appended by the runtime after the run
closed. ``seq`` is the sequence number of the command an event refers to.

Payloads (``args``, ``result``, ``payload``) are already JSON-safe values: the kernel converts
them with the payload codec before they get here.
"""

from __future__ import annotations

from typing import Any

from attrs import field, frozen

from .errors import ErrorInfo

__all__ = [
    "Event",
    "RunStarted",
    "Activated",
    "StepScheduled",
    "StepCompleted",
    "StepFailed",
    "TimerStarted",
    "TimerFired",
    "TimerCancelled",
    "ChildScheduled",
    "ChildStarted",
    "ChildStartFailed",
    "ChildCompleted",
    "ChildFailed",
    "ChildCancelled",
    "ChildTerminated",
    "ChildCancelRequested",
    "HookCreated",
    "HookConflict",
    "HookReceived",
    "HookDisposed",
    "HookResumeSent",
    "HookResumeResult",
    "SignalReceived",
    "SignalSent",
    "CancelRequested",
    "RunCompleted",
    "RunFailed",
    "RunCancelled",
    "RunTerminated",
    "RunContinuedAsNew",
    "PatchMarker",
    "ParentClosePolicyApplied",
    "ParentClosePolicyFailed",
    "INBOUND_EVENTS",
    "COMMAND_EVENTS",
    "META_EVENTS",
    "CLOSE_EVENTS",
]


class Event:
    """Base of every history event (a marker; subclasses are frozen attrs classes)."""

    __slots__ = ()


# -- run lifecycle ---------------------------------------------------------------------------


@frozen
class RunStarted(Event):
    """First event of every run: what to run and with which (already encoded) arguments.

    ``seed`` is a random secret chosen by the runtime; ``plait.random()`` and generated hook
    tokens derive from it, so they are unguessable yet identical on replay.
    """

    run_id: str
    workflow: str
    args: list[Any]
    key: str | None = None
    parent_run_id: str | None = None
    parent_seq: int | None = None
    seed: str = ""
    attempt: int = 1
    time: float = 0.0


@frozen
class Activated(Event):
    """Batch boundary: the inbound events before it were applied, then code ran at ``time``."""

    time: float


@frozen
class CancelRequested(Event):
    """Someone asked the run to cancel; the code sees ``plait.Cancelled`` at its await point."""

    reason: str = ""


@frozen
class SignalReceived(Event):
    """A signal sent to this run; buffered per name until ``plait.signal(name)`` takes it."""

    name: str
    payload: Any = None


@frozen
class RunCompleted(Event):
    """The workflow returned ``result``."""

    seq: int
    result: Any = None


@frozen
class RunFailed(Event):
    """An exception escaped the workflow."""

    seq: int
    error: ErrorInfo


@frozen
class RunCancelled(Event):
    """``plait.Cancelled`` escaped the workflow after a cancel request."""

    seq: int


@frozen
class RunContinuedAsNew(Event):
    """The run ended and a fresh run of the same workflow and key starts with ``args``."""

    seq: int
    workflow: str
    args: list[Any]


@frozen
class RunTerminated(Event):
    """The runtime closed the run without running any code (meta event)."""

    reason: str = ""


@frozen
class PatchMarker(Event):
    """``plait.patched(change_id)`` returned True on this execution."""

    seq: int
    change_id: str


# -- steps -----------------------------------------------------------------------------------


@frozen
class StepScheduled(Event):
    """A step call was scheduled."""

    seq: int
    name: str
    args: list[Any]


@frozen
class StepCompleted(Event):
    """The step returned ``result`` (after ``attempts`` attempts)."""

    seq: int
    result: Any = None
    attempts: int = 1


@frozen
class StepFailed(Event):
    """The step failed for good (retries exhausted or a non-retryable error)."""

    seq: int
    error: ErrorInfo
    attempts: int = 1


# -- timers ----------------------------------------------------------------------------------


@frozen
class TimerStarted(Event):
    """A durable timer of ``duration`` seconds, due at ``fire_at`` (epoch seconds)."""

    seq: int
    duration: float
    fire_at: float


@frozen
class TimerFired(Event):
    """The timer became due."""

    seq: int


@frozen
class TimerCancelled(Event):
    """The code cancelled timer ``timer_seq`` (a ``race`` or ``wait_for`` loser, or a cancel)."""

    seq: int
    timer_seq: int


# -- children --------------------------------------------------------------------------------


@frozen
class ChildScheduled(Event):
    """A child run was requested; its run id is derived from the parent's run id and seq."""

    seq: int
    workflow: str
    args: list[Any]
    child_run_id: str
    key: str | None = None
    parent_close: str = "terminate"
    queue: str | None = None


@frozen
class ChildStarted(Event):
    """The child run exists."""

    seq: int
    run_id: str


@frozen
class ChildStartFailed(Event):
    """The child could not start: ``key`` belongs to another open run."""

    seq: int
    key: str | None = None
    reason: str = "key_conflict"


@frozen
class ChildCompleted(Event):
    """The child (or the last run of its continue-as-new chain) returned ``result``."""

    seq: int
    result: Any = None


@frozen
class ChildFailed(Event):
    """The child failed."""

    seq: int
    error: ErrorInfo


@frozen
class ChildCancelled(Event):
    """The child closed as cancelled."""

    seq: int


@frozen
class ChildTerminated(Event):
    """The child was terminated."""

    seq: int
    reason: str = ""


@frozen
class ChildCancelRequested(Event):
    """The code asked the child started by ``child_seq`` to cancel."""

    seq: int
    child_seq: int
    child_run_id: str


# -- hooks and signals -----------------------------------------------------------------------


@frozen
class HookCreated(Event):
    """A hook with ``token`` was opened."""

    seq: int
    token: str


@frozen
class HookConflict(Event):
    """Another open hook holds the token; awaiting this hook raises ``HookConflictError``."""

    seq: int
    token: str


@frozen
class HookReceived(Event):
    """A payload resumed the hook."""

    seq: int
    payload: Any = None


@frozen
class HookDisposed(Event):
    """The code closed the hook."""

    seq: int
    hook_seq: int


@frozen
class HookResumeSent(Event):
    """The code delivered ``payload`` to the hook holding ``token`` (in another run)."""

    seq: int
    token: str
    payload: Any = None


@frozen
class HookResumeResult(Event):
    """Outcome of a ``HookResumeSent``: whether an open hook had the token."""

    seq: int
    delivered: bool


@frozen
class SignalSent(Event):
    """The code sent signal ``name`` to run ``run_id``."""

    seq: int
    run_id: str
    name: str
    payload: Any = None


# -- parent close (meta) ---------------------------------------------------------------------


@frozen
class ParentClosePolicyApplied(Event):
    """After this run closed, ``policy`` was applied to the open child ``child_run_id``."""

    child_run_id: str
    policy: str


@frozen
class ParentClosePolicyFailed(Event):
    """Applying ``policy`` to ``child_run_id`` failed (``reason``)."""

    child_run_id: str
    policy: str
    reason: str = field(default="")


INBOUND_EVENTS: frozenset[type[Event]] = frozenset(
    {
        RunStarted,
        CancelRequested,
        SignalReceived,
        StepCompleted,
        StepFailed,
        TimerFired,
        ChildStarted,
        ChildStartFailed,
        ChildCompleted,
        ChildFailed,
        ChildCancelled,
        ChildTerminated,
        HookConflict,
        HookReceived,
        HookResumeResult,
    }
)

COMMAND_EVENTS: frozenset[type[Event]] = frozenset(
    {
        StepScheduled,
        TimerStarted,
        TimerCancelled,
        ChildScheduled,
        ChildCancelRequested,
        HookCreated,
        HookDisposed,
        HookResumeSent,
        SignalSent,
        PatchMarker,
        RunCompleted,
        RunFailed,
        RunCancelled,
        RunContinuedAsNew,
    }
)

META_EVENTS: frozenset[type[Event]] = frozenset(
    {RunTerminated, ParentClosePolicyApplied, ParentClosePolicyFailed}
)

CLOSE_EVENTS: frozenset[type[Event]] = frozenset(
    {RunCompleted, RunFailed, RunCancelled, RunContinuedAsNew, RunTerminated}
)
