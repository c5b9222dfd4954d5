"""The kernel's tiny deterministic scheduler: futures, tasks and a FIFO ready queue.

No asyncio. A task is a coroutine the scheduler drives with ``send``/``throw``; it may only
await plait ``Future`` objects. Futures resolve when the machine applies an event, their waiters
are appended to the ready queue in resolution order, and the queue runs first in, first out, so
the same history always runs the code in the same order.
"""

from __future__ import annotations

import inspect
import os
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from typing import Any

from .errors import Cancelled

_KERNEL_DIR = os.path.dirname(os.path.abspath(__file__))


class _Abort(BaseException):
    """Unwinds workflow code after the machine recorded a fatal error (never user-visible)."""


class _Closed(BaseException):
    """Unwinds workflow code after the run closed (``continue_as_new``)."""


class Future:
    """A value the workflow waits for. ``on_cancel`` undoes the wait's effect when cancelled."""

    __slots__ = ("_done", "_value", "_exc", "_callbacks", "on_cancel")

    def __init__(self, on_cancel: Callable[[], None] | None = None) -> None:
        self._done = False
        self._value: Any = None
        self._exc: BaseException | None = None
        self._callbacks: list[Callable[[Future], None]] = []
        self.on_cancel = on_cancel

    def done(self) -> bool:
        return self._done

    def set_result(self, value: Any) -> None:
        if self._done:
            return
        self._done, self._value = True, value
        self._fire()

    def set_exception(self, exc: BaseException) -> None:
        if self._done:
            return
        self._done, self._exc = True, exc
        self._fire()

    def _fire(self) -> None:
        callbacks, self._callbacks = self._callbacks, []
        for cb in callbacks:
            cb(self)

    def add_done_callback(self, cb: Callable[[Future], None]) -> None:
        if self._done:
            cb(self)
        else:
            self._callbacks.append(cb)

    def remove_done_callback(self, cb: Callable[[Future], None]) -> None:
        try:
            self._callbacks.remove(cb)
        except ValueError:
            pass

    def exception(self) -> BaseException | None:
        return self._exc

    def result(self) -> Any:
        if self._exc is not None:
            raise self._exc
        return self._value

    def __await__(self) -> Generator[Future, None, Any]:
        if not self._done:
            yield self
        return self.result()


def resolved(value: Any = None) -> Future:
    fut = Future()
    fut.set_result(value)
    return fut


class Task:
    """One coroutine on the scheduler; ``future`` settles with its outcome."""

    __slots__ = ("scheduler", "coro", "future", "waiting", "cancel_pending", "name")

    def __init__(self, scheduler: Scheduler, coro: Coroutine[Any, Any, Any], name: str) -> None:
        self.scheduler = scheduler
        self.coro = coro
        self.name = name
        self.future = Future(on_cancel=self.cancel)
        self.waiting: Future | None = None
        self.cancel_pending = False

    @property
    def done(self) -> bool:
        return self.future.done()

    def step(self, exc: BaseException | None) -> None:
        if self.future.done():
            return
        # A cancel that arrives before the code ran is delivered at its first await (below),
        # so the workflow still gets the chance to clean up.
        if (
            self.cancel_pending
            and exc is None
            and inspect.getcoroutinestate(self.coro) != inspect.CORO_CREATED
        ):
            self.cancel_pending = False
            exc = Cancelled()
        try:
            yielded = self.coro.throw(exc) if exc is not None else self.coro.send(None)
        except StopIteration as stop:
            self.future.set_result(stop.value)
            return
        except (_Abort, _Closed):
            self.future.set_exception(Cancelled())
            raise
        except BaseException as error:
            # Outside an event loop, asyncio.sleep() & co. raise before yielding anything.
            misuse = describe_loop_error(error)
            if misuse is not None:
                self.scheduler.misuse(misuse)
                raise _Abort() from None
            self.future.set_exception(error)
            return
        if not isinstance(yielded, Future):
            self.scheduler.foreign_await(self, yielded)
            raise _Abort()
        if yielded.done():
            self.scheduler.ready.append((self, None))
        elif self.cancel_pending:
            self.cancel_pending = False
            if yielded.on_cancel is not None:
                yielded.on_cancel()
            self.scheduler.ready.append((self, Cancelled()))
        else:
            self.waiting = yielded
            yielded.add_done_callback(self._wake)

    def _wake(self, _fut: Future) -> None:
        self.waiting = None
        self.scheduler.ready.append((self, None))

    def cancel(self) -> None:
        """Throw ``Cancelled`` in at the await point, undoing what the task waits for."""
        if self.future.done():
            return
        fut = self.waiting
        if fut is None:
            self.cancel_pending = True
            return
        fut.remove_done_callback(self._wake)
        self.waiting = None
        if fut.on_cancel is not None:
            fut.on_cancel()
        self.scheduler.ready.append((self, Cancelled()))


class Scheduler:
    """FIFO ready queue. ``spawn`` starts a task at once, so members start in argument order."""

    def __init__(self, on_foreign: Callable[[str], None]) -> None:
        self.ready: deque[tuple[Task, BaseException | None]] = deque()
        self._on_foreign = on_foreign
        self.stopped = False

    def spawn(
        self, coro: Coroutine[Any, Any, Any], name: str = "task", *, eager: bool = True
    ) -> Task:
        task = Task(self, coro, name)
        if eager:
            task.step(None)
        else:
            self.ready.append((task, None))
        return task

    def run(self) -> None:
        ready = self.ready
        while ready and not self.stopped:
            task, exc = ready.popleft()
            task.step(exc)

    def foreign_await(self, task: Task, yielded: object) -> None:
        self._on_foreign(describe_foreign(task.coro, yielded))

    def misuse(self, message: str) -> None:
        self._on_foreign(message)


# Event-loop libraries: a workflow that calls into them is waiting on something not plait's.
_LOOP_LIBRARIES = frozenset({"asyncio", "anyio", "sniffio", "trio"})


def _frame(obj: object) -> Any:
    return getattr(obj, "cr_frame", None) or getattr(obj, "gi_frame", None)


def _loop_library(frame: Any) -> bool:
    name = frame.f_globals.get("__name__", "") if frame is not None else ""
    return isinstance(name, str) and name.partition(".")[0] in _LOOP_LIBRARIES


def _code_name(obj: object) -> str | None:
    code = getattr(obj, "cr_code", None) or getattr(obj, "gi_code", None)
    if code is None:
        return None
    frame = _frame(obj)
    module = frame.f_globals.get("__name__", "") if frame is not None else ""
    return f"{module}.{code.co_qualname}" if module else str(code.co_qualname)


def _misuse(culprit: str, where: str, detail: str = "") -> str:
    return (
        f"workflow awaited {culprit}, which is not a plait awaitable{where}{detail}: workflow "
        "code must be deterministic; use plait.sleep() for delays and steps for I/O"
    )


def describe_foreign(coro: object, yielded: object) -> str:
    """Name the innermost call a workflow awaited that is not plait's, and where it was made."""
    chain: list[object] = []
    obj: object = coro
    while obj is not None:
        chain.append(obj)
        obj = getattr(obj, "cr_await", None) or getattr(obj, "gi_yieldfrom", None)
    coded = [link for link in chain if _code_name(link) is not None]
    # Name the event-loop library's public call (asyncio.sleep), not its private helper.
    first = next((i for i, link in enumerate(coded) if i and _loop_library(_frame(link))), None)
    if first is not None:
        coded = coded[: first + 1]
    culprit = _code_name(coded[-1]) if len(coded) > 1 else None
    # The frame that made the call: the caller of the culprit, or the awaiting frame itself.
    frame = _frame(coded[-2] if len(coded) > 1 else coded[-1]) if coded else None
    where = f" (at {frame.f_code.co_filename}:{frame.f_lineno})" if frame is not None else ""
    if culprit is None:
        culprit = (
            "a bare yield"
            if yielded is None
            else f"{type(yielded).__module__}.{type(yielded).__qualname__}"
        )
    return _misuse(culprit, where)


def describe_loop_error(error: BaseException) -> str | None:
    """Name the event-loop call behind ``error`` when an event-loop library raised it.

    ``asyncio.sleep(1)`` with no running loop raises ``RuntimeError`` instead of yielding a
    foreign awaitable; it is the same misuse, so it must block the run, not fail it.
    """
    if not isinstance(error, RuntimeError):
        return None
    frames: list[tuple[Any, int]] = []
    tb = error.__traceback__
    while tb is not None:
        frames.append((tb.tb_frame, tb.tb_lineno))
        tb = tb.tb_next
    if not frames or not _loop_library(frames[-1][0]):
        return None
    first = next(i for i, (f, _) in enumerate(frames) if _loop_library(f))
    frame = frames[first][0]
    culprit = f"{frame.f_globals.get('__name__')}.{frame.f_code.co_qualname}"
    where = ""
    if first > 0:
        caller, line = frames[first - 1]
        where = f" (at {caller.f_code.co_filename}:{line})"
    return _misuse(culprit, where, f" and raised {type(error).__name__}: {error}")


def chain(source: Future, on_cancel: Callable[[], None] | None = None) -> Future:
    """A fresh future settling like ``source``; cancelling it runs ``on_cancel`` only."""
    waiter = Future(on_cancel=on_cancel)

    def copy(src: Future) -> None:
        exc = src.exception()
        if exc is not None:
            waiter.set_exception(exc)
        else:
            waiter.set_result(src.result())

    source.add_done_callback(copy)
    return waiter
