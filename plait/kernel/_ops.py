"""One small state machine per command kind (after Temporal's sdk-core).

Rules: all state of an open command lives here. Each machine's ``TRANSITIONS`` maps
``state -> event type -> next state``; an event missing from the table is a corrupt history
(rule 4 of the matching rules), never silently ignored. Code actions (cancel, dispose) are keyed
by the command event that records them. Late outcomes the runtime may legitimately deliver after
a cancel (a timer that fired as it was cancelled, a payload that raced a dispose) have explicit
self-transitions.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from . import events as ev
from ._scheduler import Future
from .codec import decode
from .errors import (
    ChildCancelled,
    ChildFailed,
    ChildTerminated,
    CorruptHistoryError,
    HookConflictError,
    HookNotFound,
    KeyConflict,
    StepFailed,
)

Table = Mapping[enum.Enum, Mapping[type[ev.Event], enum.Enum]]


def transition(table: Table, state: enum.Enum, event: ev.Event, what: str) -> Any:
    try:
        return table[state][type(event)]
    except KeyError:
        raise CorruptHistoryError(
            f"{type(event).__name__} arrived for {what} in state {state.name}: "
            "no execution could produce this history"
        ) from None


def _settle_decoded(fut: Future, data: Any, hint: Any, what: str) -> None:
    try:
        value = decode(data, hint, what)
    except TypeError as exc:
        fut.set_exception(exc)
    else:
        fut.set_result(value)


class Op:
    """Base: an open command with a ``seq`` and a state moved only by ``apply``."""

    TRANSITIONS: ClassVar[Table]
    kind: ClassVar[str]
    state: Any

    def __init__(self, seq: int) -> None:
        self.seq = seq

    def apply(self, event: ev.Event) -> None:
        self.state = transition(self.TRANSITIONS, self.state, event, f"{self.kind} {self.seq}")
        self.on(event)

    def on(self, event: ev.Event) -> None:  # pragma: no cover - overridden
        pass


class StepState(enum.Enum):
    SCHEDULED = "scheduled"
    COMPLETED = "completed"
    FAILED = "failed"


class StepOp(Op):
    kind = "step"
    TRANSITIONS: ClassVar[Table] = {
        StepState.SCHEDULED: {
            ev.StepCompleted: StepState.COMPLETED,
            ev.StepFailed: StepState.FAILED,
        },
        StepState.COMPLETED: {},
        StepState.FAILED: {},
    }

    def __init__(self, seq: int, name: str, hint: Any) -> None:
        super().__init__(seq)
        self.state = StepState.SCHEDULED
        self.name, self.hint = name, hint
        self.future = Future()

    def on(self, event: ev.Event) -> None:
        if isinstance(event, ev.StepCompleted):
            _settle_decoded(self.future, event.result, self.hint, f"result of step {self.name}")
        elif isinstance(event, ev.StepFailed):
            self.future.set_exception(StepFailed(self.name, event.error, event.attempts))


class TimerState(enum.Enum):
    STARTED = "started"
    FIRED = "fired"
    CANCELLED = "cancelled"


class TimerOp(Op):
    kind = "timer"
    TRANSITIONS: ClassVar[Table] = {
        TimerState.STARTED: {
            ev.TimerFired: TimerState.FIRED,
            ev.TimerCancelled: TimerState.CANCELLED,
        },
        TimerState.FIRED: {},
        # The timer may have fired while the commit that cancelled it was in flight.
        TimerState.CANCELLED: {ev.TimerFired: TimerState.CANCELLED},
    }

    def __init__(self, seq: int, on_cancel: Callable[[], None]) -> None:
        super().__init__(seq)
        self.state = TimerState.STARTED
        self.future = Future(on_cancel=on_cancel)

    def on(self, event: ev.Event) -> None:
        if isinstance(event, ev.TimerFired) and self.state is TimerState.FIRED:
            self.future.set_result(None)


class ChildState(enum.Enum):
    SCHEDULED = "scheduled"
    STARTED = "started"
    START_FAILED = "start_failed"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TERMINATED = "terminated"


class ChildOp(Op):
    kind = "child"
    TRANSITIONS: ClassVar[Table] = {
        ChildState.SCHEDULED: {
            ev.ChildStarted: ChildState.STARTED,
            ev.ChildStartFailed: ChildState.START_FAILED,
            ev.ChildCancelRequested: ChildState.SCHEDULED,
        },
        ChildState.STARTED: {
            ev.ChildCompleted: ChildState.COMPLETED,
            ev.ChildFailed: ChildState.FAILED,
            ev.ChildCancelled: ChildState.CANCELLED,
            ev.ChildTerminated: ChildState.TERMINATED,
            ev.ChildCancelRequested: ChildState.STARTED,
        },
        ChildState.START_FAILED: {},
        ChildState.COMPLETED: {},
        ChildState.FAILED: {},
        ChildState.CANCELLED: {},
        ChildState.TERMINATED: {},
    }

    def __init__(self, seq: int, run_id: str, key: str | None, hint: Any) -> None:
        super().__init__(seq)
        self.state = ChildState.SCHEDULED
        self.run_id, self.key, self.hint = run_id, key, hint
        self.started = Future()
        self.closed = Future()
        self.cancel_requested = False

    def on(self, event: ev.Event) -> None:
        if isinstance(event, ev.ChildStarted):
            self.started.set_result(event.run_id)
        elif isinstance(event, ev.ChildStartFailed):
            error = KeyConflict(event.key)
            self.started.set_exception(error)
            self.closed.set_exception(error)
        elif isinstance(event, ev.ChildCompleted):
            _settle_decoded(self.closed, event.result, self.hint, f"result of child {self.run_id}")
        elif isinstance(event, ev.ChildFailed):
            self.closed.set_exception(ChildFailed(self.run_id, event.error))
        elif isinstance(event, ev.ChildCancelled):
            self.closed.set_exception(ChildCancelled(self.run_id))
        elif isinstance(event, ev.ChildTerminated):
            self.closed.set_exception(ChildTerminated(self.run_id, event.reason))
        elif isinstance(event, ev.ChildCancelRequested):
            self.cancel_requested = True


class HookState(enum.Enum):
    OPEN = "open"
    CONFLICT = "conflict"
    DISPOSED = "disposed"


class HookOp(Op):
    kind = "hook"
    TRANSITIONS: ClassVar[Table] = {
        HookState.OPEN: {
            ev.HookReceived: HookState.OPEN,
            ev.HookConflict: HookState.CONFLICT,
            ev.HookDisposed: HookState.DISPOSED,
        },
        HookState.CONFLICT: {ev.HookDisposed: HookState.CONFLICT},
        # A resume may race the commit that disposed the hook; the payload is dropped.
        HookState.DISPOSED: {ev.HookReceived: HookState.DISPOSED},
    }

    def __init__(self, seq: int, token: str, hint: Any) -> None:
        super().__init__(seq)
        self.state = HookState.OPEN
        self.token, self.hint = token, hint
        self.buffer: deque[Any] = deque()
        self.waiters: deque[tuple[Future, bool]] = deque()
        # CONFLICT stays CONFLICT when disposed: remember the dispose so it is issued once.
        self.disposed = False

    def on(self, event: ev.Event) -> None:
        if isinstance(event, ev.HookReceived):
            if self.state is HookState.OPEN:
                self.buffer.append(event.payload)
                self._pump()
        else:
            self.disposed = self.disposed or isinstance(event, ev.HookDisposed)
            self._pump()

    def next(self, for_iteration: bool) -> Future:
        fut = Future()
        fut.on_cancel = lambda: self._forget(fut)
        self.waiters.append((fut, for_iteration))
        self._pump()
        return fut

    def _forget(self, fut: Future) -> None:
        self.waiters = deque(w for w in self.waiters if w[0] is not fut)

    def _pump(self) -> None:
        while self.waiters and self.buffer:
            fut, _ = self.waiters.popleft()
            _settle_decoded(fut, self.buffer.popleft(), self.hint, f"payload of hook {self.token}")
        if self.state is HookState.OPEN:
            return
        while self.waiters:
            fut, for_iteration = self.waiters.popleft()
            if self.state is HookState.CONFLICT:
                fut.set_exception(HookConflictError(self.token))
            elif for_iteration:
                fut.set_exception(StopAsyncIteration())
            else:
                fut.set_exception(HookNotFound(self.token))


class ResumeState(enum.Enum):
    SENT = "sent"
    DELIVERED = "delivered"


class ResumeOp(Op):
    kind = "hook resume"
    TRANSITIONS: ClassVar[Table] = {
        ResumeState.SENT: {ev.HookResumeResult: ResumeState.DELIVERED},
        ResumeState.DELIVERED: {},
    }

    def __init__(self, seq: int, token: str) -> None:
        super().__init__(seq)
        self.state = ResumeState.SENT
        self.token = token
        self.future = Future()

    def on(self, event: ev.Event) -> None:
        assert isinstance(event, ev.HookResumeResult)
        if event.delivered:
            self.future.set_result(None)
        else:
            self.future.set_exception(HookNotFound(self.token))


OP_KINDS: tuple[type[Op], ...] = (StepOp, TimerOp, ChildOp, HookOp, ResumeOp)
