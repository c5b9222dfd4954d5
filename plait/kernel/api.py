"""The calls workflow code makes (DESIGN §2), each turning into commands on the current machine.

Every awaitable here is lazy: nothing is issued until it is awaited (or, for barrier members,
until the barrier is awaited, which starts its members in argument order).
"""

from __future__ import annotations

import datetime as _dt
import enum
import functools
import inspect
import random as _random
import uuid as _uuid
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, Generic, TypeVar

import attrs

from ._ops import ChildOp, HookOp
from ._scheduler import Future, Task, chain
from .codec import encode, encode_args
from .errors import Cancelled, Timeout, WorkflowError
from .machine import Machine, WorkflowInfo, current_machine

__all__ = [
    "ParentClose",
    "Ok",
    "Err",
    "ChildHandle",
    "Hook",
    "sleep",
    "sleep_until",
    "now",
    "uuid4",
    "random",
    "info",
    "child",
    "start_child",
    "all",
    "all_settled",
    "race",
    "wait_for",
    "hook",
    "signal",
    "resume_hook",
    "patched",
    "continue_as_new",
    "in_workflow",
]

T = TypeVar("T")
_builtin_all = all


class ParentClose(enum.StrEnum):
    """What happens to an open child when its parent closes."""

    TERMINATE = "terminate"
    REQUEST_CANCEL = "request_cancel"
    ABANDON = "abandon"


@attrs.frozen
class Ok(Generic[T]):
    """A barrier member that succeeded (``all_settled``)."""

    value: T


@attrs.frozen
class Err:
    """A barrier member that failed (``all_settled``)."""

    error: BaseException


def _machine(what: str) -> Machine:
    m = current_machine()
    if m is None:
        raise WorkflowError(f"plait.{what}() can only be used inside a workflow")
    return m


def in_workflow() -> bool:
    """True while workflow code runs (on a machine)."""
    return current_machine() is not None


class _Lazy:
    """An awaitable that issues its command when awaited."""

    __slots__ = ("_what", "_make")

    def __init__(self, what: str, make: Callable[[Machine], Future]) -> None:
        self._what, self._make = what, make

    def __await__(self) -> Generator[Future, None, Any]:
        return (yield from self._make(_machine(self._what)).__await__())


def _seconds(value: float | _dt.timedelta) -> float:
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"sleep takes seconds or a timedelta, not {type(value).__name__}")
    return float(value)


def sleep(seconds: float | _dt.timedelta) -> Awaitable[None]:
    """Durable timer: resumes after ``seconds`` of (workflow) time, even across restarts."""
    secs = _seconds(seconds)
    return _Lazy("sleep", lambda m: m.start_timer(secs))


def sleep_until(when: _dt.datetime) -> Awaitable[None]:
    """Durable timer until an aware datetime (a past time fires at once)."""
    if when.tzinfo is None:
        raise ValueError("sleep_until needs an aware datetime (e.g. with tzinfo=timezone.utc)")
    return _Lazy("sleep_until", lambda m: m.start_timer((when - m.now()).total_seconds()))


def now() -> _dt.datetime:
    """Deterministic current time (UTC): the time of the current activation."""
    return _machine("now").now()


def uuid4() -> _uuid.UUID:
    """Deterministic UUID derived from the run id and a counter of its own."""
    return _machine("uuid4").uuid4()


def random() -> _random.Random:
    """The run's seeded ``random.Random``."""
    return _machine("random").random()


def info() -> WorkflowInfo:
    """Run id, workflow name, key, parent run id, attempt and history length."""
    return _machine("info").run_info()


def patched(change_id: str) -> bool:
    """Versioning: True on new executions and histories that recorded this patch."""
    return _machine("patched").patched(change_id)


def continue_as_new(*args: Any) -> None:
    """End this run and start a fresh one of the same workflow and key with ``args``."""
    m = _machine("continue_as_new")
    m.continue_as_new(encode_args(m._fn, args))


def _target(wf: Any) -> tuple[str, Callable[..., Any] | None, Any]:
    if isinstance(wf, str):
        return wf, None, Any
    name = getattr(wf, "name", None)
    fn = getattr(wf, "fn", wf)
    if not isinstance(name, str):
        name = f"{fn.__module__}.{fn.__qualname__}"
    return name, fn, getattr(wf, "result_hint", Any)


class ChildHandle:
    """A started child run: its ``run_id``, its result, and a way to signal or cancel it."""

    def __init__(self, machine: Machine, op: ChildOp) -> None:
        self._m, self._op = machine, op
        self.run_id = op.run_id

    def result(self) -> Awaitable[Any]:
        """Wait for the child's result (raises ``ChildFailed``, ``ChildCancelled``...)."""
        return _Lazy("ChildHandle.result", lambda m: chain(self._op.closed))

    def signal(self, name: str, payload: Any = None) -> Awaitable[None]:
        """Send signal ``name`` to the child."""
        data = encode(payload, Any, f"signal {name!r} payload")
        return _Lazy("ChildHandle.signal", lambda m: m.send_signal(self.run_id, name, data))

    def cancel(self) -> Awaitable[None]:
        """Ask the child to cancel (it sees ``Cancelled`` and may clean up)."""

        def make(m: Machine) -> Future:
            m.cancel_child(self._op)
            fut = Future()
            fut.set_result(None)
            return fut

        return _Lazy("ChildHandle.cancel", make)

    def __repr__(self) -> str:
        return f"<ChildHandle {self.run_id}>"


class _ChildCall:
    __slots__ = ("_wf", "_args", "_key", "_parent_close", "_queue", "_handle_only")

    def __init__(
        self,
        wf: Any,
        args: tuple[Any, ...],
        key: str | None,
        parent_close: ParentClose | str,
        queue: str | None,
        handle_only: bool,
    ) -> None:
        self._wf, self._args, self._key = wf, args, key
        self._parent_close = ParentClose(parent_close)
        self._queue, self._handle_only = queue, handle_only

    def __await__(self) -> Generator[Future, None, Any]:
        m = _machine("start_child" if self._handle_only else "child")
        name, fn, hint = _target(self._wf)
        args = encode_args(fn, self._args)
        op = m.start_child(name, args, self._key, self._parent_close.value, self._queue, hint)
        cancel = None if self._handle_only else (lambda: m.cancel_child(op))
        yield from chain(op.started, cancel).__await__()
        if self._handle_only:
            return ChildHandle(m, op)
        return (yield from chain(op.closed, cancel).__await__())


def child(
    wf: Any,
    *args: Any,
    key: str | None = None,
    parent_close: ParentClose | str = ParentClose.TERMINATE,
    queue: str | None = None,
) -> Awaitable[Any]:
    """Start ``wf`` as a child run and wait for its result."""
    return _ChildCall(wf, args, key, parent_close, queue, handle_only=False)


def start_child(
    wf: Any,
    *args: Any,
    key: str | None = None,
    parent_close: ParentClose | str = ParentClose.TERMINATE,
    queue: str | None = None,
) -> Awaitable[ChildHandle]:
    """Start ``wf`` as a child run; returns its ``ChildHandle`` once the child exists."""
    return _ChildCall(wf, args, key, parent_close, queue, handle_only=True)


# -- barriers ----------------------------------------------------------------------------------


def _as_coro(aw: Awaitable[Any]) -> Coroutine[Any, Any, Any]:
    if inspect.iscoroutine(aw):
        return aw

    async def wrapper() -> Any:
        return await aw

    return wrapper()


class _Barrier:
    __slots__ = ("_mode", "_members")

    def __init__(self, mode: str, members: tuple[Awaitable[Any], ...]) -> None:
        self._mode, self._members = mode, members

    def __await__(self) -> Generator[Future, None, Any]:
        m = _machine(self._mode)
        fut = Future()
        tasks: list[Task] = [m.spawn(_as_coro(a), self._mode) for a in self._members]
        n = len(tasks)
        results: list[Any] = [None] * n
        pending = [n]

        def cancel_members() -> None:
            # The waiter is gone. Settle now, so a member ending later (a race loser finishing
            # with Cancelled) cannot cancel its siblings a second time, mid-cleanup.
            fut.set_exception(Cancelled())
            for t in tasks:
                t.cancel()

        fut.on_cancel = cancel_members

        def member_done(i: int, f: Future) -> None:
            if fut.done():
                return
            exc = f.exception()
            if self._mode == "race":
                if exc is not None:
                    fut.set_exception(exc)
                else:
                    fut.set_result(f.result())
                for t in tasks:
                    if t is not tasks[i]:
                        t.cancel()
                return
            if exc is not None and self._mode == "all":
                fut.set_exception(exc)
                return
            if self._mode == "all_settled":
                results[i] = Err(exc) if exc is not None else Ok(f.result())
            else:
                results[i] = f.result()
            pending[0] -= 1
            if pending[0] == 0:
                fut.set_result(results)

        if n == 0:
            if self._mode == "race":
                raise ValueError("plait.race() needs at least one awaitable")
            fut.set_result([])
        for i, t in enumerate(tasks):
            t.future.add_done_callback(functools.partial(member_done, i))
        return (yield from fut.__await__())


def all(*aws: Awaitable[Any]) -> Awaitable[list[Any]]:  # noqa: A001 - the design's name
    """Barrier: results in argument order; raises the first failure (in history order) at once."""
    return _Barrier("all", aws)


def all_settled(*aws: Awaitable[Any]) -> Awaitable[list[Ok[Any] | Err]]:
    """Barrier: ``Ok(value)`` / ``Err(error)`` per member, in argument order; never raises."""
    return _Barrier("all_settled", aws)


def race(*aws: Awaitable[Any]) -> Awaitable[Any]:
    """First member to settle wins (value or raise); the others are cancelled."""
    return _Barrier("race", aws)


async def wait_for(aw: Awaitable[T], timeout: float | _dt.timedelta) -> T:
    """``aw``'s result, or ``plait.Timeout`` after ``timeout`` seconds (``aw`` is cancelled)."""
    secs = _seconds(timeout)

    async def timer() -> Any:
        await sleep(secs)
        raise Timeout(f"timed out after {secs:g}s")

    result: T = await race(aw, timer())
    return result


# -- hooks and signals -------------------------------------------------------------------------


class Hook(Generic[T]):
    """A durable hook: ``await hook`` for the next payload, ``async for`` until ``close()``."""

    def __init__(self, machine: Machine, op: HookOp) -> None:
        self._m, self._op = machine, op

    @property
    def token(self) -> str:
        return self._op.token

    def __await__(self) -> Generator[Future, None, T]:
        result: T = yield from self._op.next(False).__await__()
        return result

    def __aiter__(self) -> Hook[T]:
        return self

    def __anext__(self) -> Awaitable[T]:
        return self._op.next(True)

    def close(self) -> None:
        """Dispose of the hook: later resumes get ``HookNotFound``, ``async for`` ends."""
        self._m.dispose_hook(self._op)

    def __repr__(self) -> str:
        return f"<Hook {self.token}>"


def hook(token: str | None = None, type: Any = None) -> Hook[Any]:  # noqa: A002
    """Open a durable hook. ``token`` defaults to a random, unguessable one (128 bits)."""
    m = _machine("hook")
    if token is not None and (not isinstance(token, str) or not token):
        raise ValueError("a hook token must be a non-empty string")
    return Hook(m, m.create_hook(token, type))


def signal(name: str, type: Any = None) -> Awaitable[Any]:  # noqa: A002
    """The next signal ``name`` sent to this run (buffered in order, never lost)."""
    return _Lazy("signal", lambda m: m.wait_signal(name, type))


def resume_hook(token: str, payload: Any = None) -> Awaitable[None]:
    """Deliver ``payload`` to another run's hook, exactly once; ``HookNotFound`` if none."""
    data = encode(payload, Any, "hook payload")
    return _Lazy("resume_hook", lambda m: m.resume_hook(token, data))
