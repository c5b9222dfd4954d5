"""``Machine``: a run's history in, commands out.

Rules: the machine is the only owner of a run's kernel state. History is a sequence of batches
(inbound events, ``Activated(time)``, then the command events the code produced). Replay feeds
each recorded batch exactly like a live one and checks every command against the recorded
command event at its position; only the batch given to ``activate`` is live. Nothing here does
I/O or reads a clock: time comes from ``Activated``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import random as _random
import sys
import uuid as _uuid
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from contextvars import ContextVar
from typing import Any

import attrs

from . import commands as cmd
from . import events as ev
from ._ops import ChildOp, HookOp, Op, ResumeOp, StepOp, TimerOp
from ._scheduler import Future, Scheduler, Task, _Abort, _Closed, resolved
from .codec import decode_args, encode, return_hint
from .errors import (
    Cancelled,
    CorruptHistoryError,
    ErrorInfo,
    FatalError,
    NonDeterminismError,
    WorkflowError,
)
from .status import RunStatus

__all__ = ["Machine", "WorkflowInfo", "current_machine", "derive_child_run_id"]

_KERNEL_DIR = os.path.dirname(os.path.abspath(__file__))

_CURRENT: ContextVar[Machine | None] = ContextVar("plait_machine", default=None)


def current_machine() -> Machine | None:
    """The machine running workflow code in this context, if any."""
    return _CURRENT.get()


def derive_child_run_id(parent_run_id: str, seq: int) -> str:
    """A child's run id: a function of its parent's run id and the command's seq."""
    digest = hashlib.sha256(f"{parent_run_id}/child/{seq}".encode()).digest()
    return str(_uuid.UUID(bytes=digest[:16], version=4))


@attrs.frozen
class WorkflowInfo:
    """What ``plait.info()`` returns inside a workflow."""

    run_id: str
    workflow: str
    key: str | None
    parent_run_id: str | None
    attempt: int
    history_length: int


# Which fields of a command event must agree on replay (rule 2). Payloads compare by value.
_MATCH_FIELDS: dict[type[ev.Event], tuple[str, ...]] = {
    ev.StepScheduled: ("name", "args"),
    ev.TimerStarted: ("duration",),
    ev.TimerCancelled: ("timer_seq",),
    ev.ChildScheduled: ("workflow", "key", "args"),
    ev.ChildCancelRequested: ("child_seq",),
    ev.HookCreated: ("token",),
    ev.HookDisposed: ("hook_seq",),
    ev.HookResumeSent: ("token",),
    ev.SignalSent: ("run_id", "name"),
    ev.PatchMarker: ("change_id",),
    ev.RunCompleted: (),
    ev.RunFailed: (),
    ev.RunCancelled: (),
    ev.RunContinuedAsNew: ("workflow", "args"),
}

_COMMAND_EVENT: dict[type[cmd.Command], Callable[[Any], ev.Event]] = {
    cmd.ScheduleStep: lambda c: ev.StepScheduled(c.seq, c.name, c.args),
    cmd.StartTimer: lambda c: ev.TimerStarted(c.seq, c.duration, c.fire_at),
    cmd.CancelTimer: lambda c: ev.TimerCancelled(c.seq, c.timer_seq),
    cmd.StartChild: lambda c: ev.ChildScheduled(
        c.seq, c.workflow, c.args, c.child_run_id, c.key, c.parent_close, c.queue
    ),
    cmd.RequestCancelChild: lambda c: ev.ChildCancelRequested(c.seq, c.child_seq, c.child_run_id),
    cmd.ResumeHook: lambda c: ev.HookResumeSent(c.seq, c.token, c.payload),
    cmd.SendSignal: lambda c: ev.SignalSent(c.seq, c.run_id, c.name, c.payload),
    cmd.CreateHook: lambda c: ev.HookCreated(c.seq, c.token),
    cmd.DisposeHook: lambda c: ev.HookDisposed(c.seq, c.hook_seq),
    cmd.RecordPatch: lambda c: ev.PatchMarker(c.seq, c.change_id),
    cmd.CompleteRun: lambda c: ev.RunCompleted(c.seq, c.result),
    cmd.FailRun: lambda c: ev.RunFailed(c.seq, c.error),
    cmd.CancelRun: lambda c: ev.RunCancelled(c.seq),
    cmd.ContinueAsNew: lambda c: ev.RunContinuedAsNew(c.seq, c.workflow, c.args),
}


def command_event(command: cmd.Command) -> ev.Event:
    """The history event that records ``command``."""
    return _COMMAND_EVENT[type(command)](command)


def _user_site() -> str:
    """File:line of the innermost frame outside the kernel (the workflow's call)."""
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not filename.startswith(_KERNEL_DIR):
            return f"{filename}:{frame.f_lineno} (in {frame.f_code.co_qualname})"
        frame = frame.f_back  # type: ignore[assignment]
    return "<unknown>"


def _describe(event: ev.Event | None) -> str:
    if event is None:
        return "nothing"
    parts = []
    for a in attrs.fields(type(event)):  # type: ignore[arg-type]
        value = getattr(event, a.name)
        if a.name in ("args", "payload", "result") and value is not None:
            from .codec import payload_hash

            value = f"#{payload_hash(value)}"
            parts.append(f"{a.name}={value}")
        else:
            parts.append(f"{a.name}={value!r}")
    return f"{type(event).__name__}({', '.join(parts)})"


def _workflow_name(fn: Callable[..., Any]) -> str:
    name = getattr(fn, "name", None)
    if isinstance(name, str):
        return name
    return f"{fn.__module__}.{fn.__qualname__}"


class Machine:
    """Replays ``history`` for ``workflow_fn``; ``activate`` runs the next live batch.

    ``workflow_fn`` is a ``@plait.workflow`` function or a plain ``async def``. Raises
    ``NonDeterminismError`` when the code disagrees with the history and ``FatalError`` (or
    ``WorkflowError`` for misuse) when it cannot go on; neither means the run failed.
    """

    def __init__(self, workflow_fn: Callable[..., Any], history: Sequence[ev.Event] = ()) -> None:
        self._wf = workflow_fn
        self._fn: Callable[..., Any] = getattr(workflow_fn, "fn", workflow_fn)
        self.workflow_name = _workflow_name(workflow_fn)
        self.history: list[ev.Event] = []
        self.status = RunStatus.RUNNING
        self.result: Any = None
        self.result_data: Any = None
        self.error: ErrorInfo | None = None
        self.close_command: cmd.Command | None = None
        self.new_events: list[ev.Event] = []
        self.info: WorkflowInfo | None = None
        self.time = 0.0
        self._seq = 0
        self._ops: dict[int, Op] = {}
        self._sched = Scheduler(self._foreign)
        self._main: Task | None = None
        self._expect: deque[ev.Event] | None = None
        self._commands: list[cmd.Command] = []
        self._fatal: BaseException | None = None
        self._cancel_due = False
        self._cancel_seen = False
        self._seed = ""
        self._uuid_count = 0
        self._token_count = 0
        self._random: _random.Random | None = None
        self._patches: dict[str, bool] = {}
        self._signals: dict[str, deque[Any]] = {}
        self._signal_waiters: dict[str, deque[tuple[Future, Any]]] = {}
        self._history_len_at_activation = 0
        self._replay(history)

    # -- public ------------------------------------------------------------------------------

    started_children = 0
    """How many children the code started (the runtime skips parent-close work when 0)."""

    @property
    def closed(self) -> bool:
        return self.status is not RunStatus.RUNNING

    @property
    def replaying(self) -> bool:
        """True while a recorded batch is being replayed (never during a live activation)."""
        return self._expect is not None

    def activate(
        self, new_events: Sequence[ev.Event], time: float | _dt.datetime | None = None
    ) -> list[cmd.Command]:
        """Apply one batch of inbound events, run the code until blocked, return its commands.

        ``time`` is the activation time (epoch seconds or an aware datetime); by default that of
        the previous activation, or of ``RunStarted``. The events this appended to ``history``
        (inbound, ``Activated``, command events) are in ``new_events`` afterwards.
        """
        if self.closed:
            self.new_events = []
            return []
        start = len(self.history)
        self._commands = []
        if time is None:
            time = self.time
            for e in new_events:
                if isinstance(e, ev.RunStarted) and e.time:
                    time = e.time
        elif isinstance(time, _dt.datetime):
            time = time.timestamp()
        for e in new_events:
            if type(e) not in ev.INBOUND_EVENTS:
                raise CorruptHistoryError(f"{type(e).__name__} is not an inbound event")
        self._run_batch(new_events, float(time), None)
        self.new_events = self.history[start:]
        return self._commands

    # -- replay and batches --------------------------------------------------------------------

    def _replay(self, history: Sequence[ev.Event]) -> None:
        i, n = 0, len(history)
        while i < n:
            inbound: list[ev.Event] = []
            while i < n and type(history[i]) is not ev.Activated:
                e = history[i]
                i += 1
                if type(e) in ev.META_EVENTS:
                    self.history.append(e)
                    if isinstance(e, ev.RunTerminated):
                        self.status = RunStatus.TERMINATED
                    continue
                if type(e) in ev.COMMAND_EVENTS:
                    raise CorruptHistoryError(
                        f"command event {_describe(e)} at position {i - 1} precedes any Activated"
                    )
                inbound.append(e)
            if i >= n:
                if inbound:
                    raise CorruptHistoryError(
                        f"history ends with {len(inbound)} inbound event(s) and no Activated"
                    )
                break
            activated = history[i]
            assert isinstance(activated, ev.Activated)
            i += 1
            recorded: list[ev.Event] = []
            while i < n and type(history[i]) in ev.COMMAND_EVENTS:
                recorded.append(history[i])
                i += 1
            if self.closed:
                raise CorruptHistoryError(f"batch at position {i} follows the run's close")
            self._run_batch(inbound, activated.time, recorded)

    def _run_batch(
        self, inbound: Sequence[ev.Event], time: float, recorded: list[ev.Event] | None
    ) -> None:
        token = _CURRENT.set(self)
        try:
            self._expect = deque(recorded) if recorded is not None else None
            self._history_len_at_activation = len(self.history)
            for e in inbound:
                self.history.append(e)
                self._apply(e)
            self.history.append(ev.Activated(time))
            self.time = time
            if self._cancel_due and self._main is not None:
                self._cancel_due = False
                self._main.cancel()
            try:
                self._sched.run()
            except (_Abort, _Closed):
                pass
            if self._fatal is not None:
                raise self._fatal
            if self._expect:
                extra = self._expect[0]
                raise NonDeterminismError(
                    f"nondeterminism at seq {getattr(extra, 'seq', '?')}: history recorded "
                    f"{_describe(extra)} but the workflow code issued no command for it "
                    f"(the code now stops earlier or takes another branch; it waits at "
                    f"{self._waiting_site()})"
                )
        finally:
            self._expect = None
            _CURRENT.reset(token)

    def _waiting_site(self) -> str:
        """File:line where the main workflow coroutine is suspended (its innermost own frame)."""
        site = "<unknown>"
        obj: object = self._main.coro if self._main is not None else None
        while obj is not None:
            frame = getattr(obj, "cr_frame", None) or getattr(obj, "gi_frame", None)
            if frame is not None and not frame.f_code.co_filename.startswith(_KERNEL_DIR):
                code = frame.f_code
                site = f"{code.co_filename}:{frame.f_lineno} (in {code.co_qualname})"
            obj = getattr(obj, "cr_await", None) or getattr(obj, "gi_yieldfrom", None)
        return site

    def _apply(self, e: ev.Event) -> None:
        if isinstance(e, ev.RunStarted):
            self._start(e)
        elif isinstance(e, ev.CancelRequested):
            # Only the first request cancels: a second one (say the parent's close policy after
            # its own request) must not interrupt the cleanup the first one started.
            if not self._cancel_seen:
                self._cancel_seen = self._cancel_due = True
        elif isinstance(e, ev.SignalReceived):
            waiters = self._signal_waiters.get(e.name)
            if waiters:
                fut, hint = waiters.popleft()
                self._settle(fut, e.payload, hint, f"signal {e.name!r}")
            else:
                self._signals.setdefault(e.name, deque()).append(e.payload)
        else:
            seq = getattr(e, "seq", None)
            op = self._ops.get(seq) if isinstance(seq, int) else None
            if op is None:
                raise CorruptHistoryError(
                    f"{_describe(e)} refers to seq {seq}, which is no open command of this run"
                )
            op.apply(e)

    def _start(self, e: ev.RunStarted) -> None:
        if self.info is not None:
            raise CorruptHistoryError("a second RunStarted in one history")
        self.info = WorkflowInfo(e.run_id, e.workflow, e.key, e.parent_run_id, e.attempt, 0)
        self._seed = e.seed or e.run_id
        try:
            args = decode_args(self._fn, e.args)
            coro = self._fn(*args)
        except TypeError as exc:
            coro = _raise(exc)
        if not isinstance(coro, Coroutine):
            raise WorkflowError(f"workflow {self.workflow_name} is not an async def function")
        self._main = self._sched.spawn(coro, "main", eager=False)
        self._main.future.add_done_callback(self._main_done)

    def _settle(self, fut: Future, data: Any, hint: Any, what: str) -> None:
        from .codec import decode

        try:
            fut.set_result(decode(data, hint, what))
        except TypeError as exc:
            fut.set_exception(exc)

    def _foreign(self, message: str) -> None:
        self._fatal = WorkflowError(message)

    # -- commands ------------------------------------------------------------------------------

    def issue(self, make: Callable[[int], cmd.Command], site: str | None = None) -> cmd.Command:
        """Give the next seq to a command; check it against history when replaying."""
        if self.closed:
            raise _Closed()
        if self._fatal is not None:
            raise _Abort()
        self._seq += 1
        command = make(self._seq)
        event = command_event(command)
        if self._expect is not None:
            recorded = self._expect.popleft() if self._expect else None
            if recorded is None or not self._matches(event, recorded):
                self._fatal = NonDeterminismError(
                    f"nondeterminism at seq {self._seq}: the workflow code issued "
                    f"{_describe(event)} at {site or _user_site()}, but history recorded "
                    f"{_describe(recorded)}"
                    + ("" if recorded is not None else " (the recorded batch ended earlier)")
                )
                raise _Abort()
            self.history.append(recorded)
        else:
            self.history.append(event)
            self._commands.append(command)
        return command

    @staticmethod
    def _matches(new: ev.Event, recorded: ev.Event) -> bool:
        if type(new) is not type(recorded) or getattr(new, "seq", 0) != getattr(recorded, "seq", 0):
            return False
        return all(getattr(new, f) == getattr(recorded, f) for f in _MATCH_FIELDS[type(new)])

    def peek_recorded(self) -> ev.Event | None:
        if self._expect:
            return self._expect[0]
        return None

    # -- closing -------------------------------------------------------------------------------

    def _main_done(self, fut: Future) -> None:
        if self.closed:
            return
        exc = fut.exception()
        site = self._end_site()
        if exc is None:
            value = fut.result()
            try:
                data = encode(value, return_hint(self._fn), "workflow result")
            except TypeError as error:
                failure = ErrorInfo.from_exception(error)
                self._close(lambda s: cmd.FailRun(s, failure), site)
                return
            self.result = value
            self.result_data = data
            self._close(lambda s: cmd.CompleteRun(s, data), site)
        elif isinstance(exc, Cancelled):
            self._close(lambda s: cmd.CancelRun(s), site)
        elif isinstance(exc, (_Abort, _Closed)):
            return
        else:
            self._close(lambda s: cmd.FailRun(s, ErrorInfo.from_exception(exc)), site)

    def _end_site(self) -> str | None:
        # The workflow returned or raised: no frame of it is on the stack to point at.
        code = getattr(self._fn, "__code__", None)
        if code is None:
            return None
        return f"{code.co_filename}:{code.co_firstlineno} (end of {code.co_qualname})"

    def _close(self, make: Callable[[int], cmd.Command], site: str | None = None) -> None:
        try:
            command = self.issue(make, site)
        except _Abort:
            self._sched.stopped = True
            return
        self.close_command = command
        self._sched.stopped = True
        self._sched.ready.clear()
        # On replay the recorded event is the truth (a traceback need not be reproducible).
        recorded = self.history[-1]
        if isinstance(command, cmd.CompleteRun):
            self.status = RunStatus.COMPLETED
            if isinstance(recorded, ev.RunCompleted):
                self.result_data = recorded.result
        elif isinstance(command, cmd.FailRun):
            self.status = RunStatus.FAILED
            self.error = recorded.error if isinstance(recorded, ev.RunFailed) else command.error
        elif isinstance(command, cmd.CancelRun):
            self.status = RunStatus.CANCELLED
        elif isinstance(command, cmd.ContinueAsNew):
            self.status = RunStatus.CONTINUED_AS_NEW

    def continue_as_new(self, args: list[Any]) -> None:
        self._close(lambda s: cmd.ContinueAsNew(s, self.workflow_name, args))
        raise _Closed()

    # -- services for the workflow API ---------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str = "member") -> Task:
        return self._sched.spawn(coro, name)

    def run_info(self) -> WorkflowInfo:
        assert self.info is not None
        return attrs.evolve(self.info, history_length=self._history_len_at_activation)

    def now(self) -> _dt.datetime:
        return _dt.datetime.fromtimestamp(self.time, _dt.UTC)

    def uuid4(self) -> _uuid.UUID:
        self._uuid_count += 1
        run_id = self.info.run_id if self.info else ""
        digest = hashlib.sha256(f"{run_id}/uuid/{self._uuid_count}".encode()).digest()
        return _uuid.UUID(bytes=digest[:16], version=4)

    def random(self) -> _random.Random:
        if self._random is None:
            self._random = _random.Random(f"{self._seed}/random")
        return self._random

    def new_token(self) -> str:
        self._token_count += 1
        return hashlib.sha256(f"{self._seed}/hook/{self._token_count}".encode()).hexdigest()[:32]

    def schedule_step(self, name: str, args: list[Any], hint: Any) -> Future:
        c = self.issue(lambda s: cmd.ScheduleStep(s, name, args))
        op = StepOp(c.seq, name, hint)
        self._ops[c.seq] = op
        return op.future

    def start_timer(self, seconds: float) -> Future:
        seconds = max(0.0, float(seconds))
        c = self.issue(lambda s: cmd.StartTimer(s, seconds, self.time + seconds))
        op = TimerOp(c.seq, lambda: self._cancel_timer(op))
        self._ops[c.seq] = op
        return op.future

    def _cancel_timer(self, op: TimerOp) -> None:
        from ._ops import TimerState

        if op.state is TimerState.STARTED and not self.closed:
            c = self.issue(lambda s: cmd.CancelTimer(s, op.seq))
            op.apply(command_event(c))

    def start_child(
        self,
        workflow: str,
        args: list[Any],
        key: str | None,
        parent_close: str,
        queue: str | None,
        hint: Any,
    ) -> ChildOp:
        run_id = self.info.run_id if self.info else ""
        c = self.issue(
            lambda s: cmd.StartChild(
                s, workflow, args, derive_child_run_id(run_id, s), key, parent_close, queue
            )
        )
        assert isinstance(c, cmd.StartChild)
        op = ChildOp(c.seq, c.child_run_id, key, hint)
        self._ops[c.seq] = op
        self.started_children += 1
        return op

    def cancel_child(self, op: ChildOp) -> None:
        if op.closed.done() or op.cancel_requested or self.closed:
            return
        c = self.issue(lambda s: cmd.RequestCancelChild(s, op.seq, op.run_id))
        op.apply(command_event(c))

    def send_signal(self, run_id: str, name: str, payload: Any) -> Future:
        self.issue(lambda s: cmd.SendSignal(s, run_id, name, payload))
        return resolved(None)

    def create_hook(self, token: str | None, hint: Any) -> HookOp:
        chosen = token if token is not None else self.new_token()
        c = self.issue(lambda s: cmd.CreateHook(s, chosen))
        op = HookOp(c.seq, chosen, hint)
        self._ops[c.seq] = op
        return op

    def dispose_hook(self, op: HookOp) -> None:
        if op.disposed or self.closed:
            return
        c = self.issue(lambda s: cmd.DisposeHook(s, op.seq, op.token))
        op.apply(command_event(c))

    def resume_hook(self, token: str, payload: Any) -> Future:
        c = self.issue(lambda s: cmd.ResumeHook(s, token, payload))
        op = ResumeOp(c.seq, token)
        self._ops[c.seq] = op
        return op.future

    def wait_signal(self, name: str, hint: Any) -> Future:
        buffered = self._signals.get(name)
        fut = Future()
        if buffered:
            self._settle(fut, buffered.popleft(), hint, f"signal {name!r}")
            return fut
        self._signal_waiters.setdefault(name, deque()).append((fut, hint))

        def forget() -> None:
            # Filter the current queue: an earlier forget may have replaced the one seen above.
            current = self._signal_waiters.get(name, deque())
            self._signal_waiters[name] = deque(w for w in current if w[0] is not fut)

        fut.on_cancel = forget
        return fut

    def patched(self, change_id: str) -> bool:
        if change_id in self._patches:
            return self._patches[change_id]
        if self._expect is not None:
            nxt = self.peek_recorded()
            value = isinstance(nxt, ev.PatchMarker) and nxt.change_id == change_id
        else:
            value = True
        if value:
            self.issue(lambda s: cmd.RecordPatch(s, change_id))
        self._patches[change_id] = value
        return value


async def _raise(exc: BaseException) -> Any:
    raise exc


__all__ += ["command_event", "FatalError"]
