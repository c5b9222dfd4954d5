"""Client-side pieces of the postgres backend: encoding records and commits for the server
functions, local wake-ups, and group commit (``Batcher``)."""

from __future__ import annotations

import asyncio
import json
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

import attrs

from ..kernel.codec import event_to_dict
from ..kernel.errors import ErrorInfo
from ..kernel.status import RunStatus
from .base import BackendError, Commit, Delivery, RunRecord, StepTask

__all__ = [
    "MISSING_EXTRA",
    "import_psycopg",
    "dumps",
    "rec_doc",
    "rec_from_row",
    "rec_from_dict",
    "commit_doc",
    "commit_locks",
    "RUN_COLS",
    "Waker",
    "Batcher",
]

MISSING_EXTRA = (
    "the postgres backend needs psycopg 3 and psycopg_pool: pip install 'plait[postgres]'"
)


def import_psycopg() -> tuple[Any, Any]:
    """``(psycopg, psycopg_pool)``, or ``BackendError`` naming the extra to install."""
    try:
        import psycopg
        import psycopg_pool
    except ImportError as exc:
        raise BackendError(MISSING_EXTRA) from exc
    return psycopg, psycopg_pool


def dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), allow_nan=False)


# -- records and commits -----------------------------------------------------------------------

RUN_COLS = (
    "run_id, workflow, status, created_at, key, parent_run_id, parent_seq, parent_close, queue,"
    " result, error, closed_at, continued_to, block_reason"
)


def _err(error: ErrorInfo | None) -> dict[str, Any] | None:
    return None if error is None else attrs.asdict(error)


def _dl(d: Delivery | None) -> list[Any] | None:
    return None if d is None else [d.run_id, event_to_dict(d.event)]


def _status(s: Any) -> str:
    return s.value if isinstance(s, RunStatus) else str(s)


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)


def rec_doc(r: RunRecord) -> dict[str, Any]:
    return {
        "run_id": r.run_id,
        "workflow": r.workflow,
        "status": _status(r.status),
        "created_at": r.created_at,
        "key": r.key,
        "parent_run_id": r.parent_run_id,
        "parent_seq": r.parent_seq,
        "parent_close": r.parent_close,
        "queue": r.queue,
        "result": r.result,
        "error": _err(r.error),
        "closed_at": r.closed_at,
        "continued_to": r.continued_to,
        "block_reason": r.block_reason,
    }


def rec_from_row(row: Sequence[Any]) -> RunRecord:
    """A ``RunRecord`` from a row of ``RUN_COLS``."""
    err = row[10]
    return RunRecord(
        run_id=row[0],
        workflow=row[1],
        status=RunStatus(row[2]),
        created_at=float(row[3]),
        key=row[4],
        parent_run_id=row[5],
        parent_seq=row[6],
        parent_close=row[7],
        queue=row[8],
        result=row[9],
        error=None if err is None else ErrorInfo(**err),
        closed_at=_opt_float(row[11]),
        continued_to=row[12],
        block_reason=row[13],
    )


def rec_from_dict(d: dict[str, Any]) -> RunRecord:
    """A ``RunRecord`` from a ``to_jsonb`` of a row of ``runs``."""
    err = d.get("error")
    return RunRecord(
        run_id=d["run_id"],
        workflow=d["workflow"],
        status=RunStatus(d["status"]),
        created_at=float(d["created_at"]),
        key=d.get("key"),
        parent_run_id=d.get("parent_run_id"),
        parent_seq=d.get("parent_seq"),
        parent_close=d["parent_close"],
        queue=d.get("queue"),
        result=d.get("result"),
        error=None if err is None else ErrorInfo(**err),
        closed_at=_opt_float(d.get("closed_at")),
        continued_to=d.get("continued_to"),
        block_reason=d.get("block_reason"),
    )


def commit_doc(c: Commit, own: bool = False, spec: tuple[int, int, int] | None = None) -> str:
    """The JSON document the server's ``commit_one`` (or, when ``own``: the commit writes to
    its run only, ``commit_run``) applies; empty parts left out. ``spec``: ``(seq, lease,
    history length)`` of a speculative activation (``spec_one``), whose commit ``c`` is as
    applied: no lease, ``inbox_upto`` 0."""
    doc: dict[str, Any] = {
        "run_id": c.run_id,
        "lease": c.lease,
        "now": c.now,
        "inbox_upto": c.inbox_upto,
        "requeue": c.requeue,
    }
    if own:
        doc["own"] = True
    if spec is not None:
        doc["spec"] = list(spec)
    if c.events:
        doc["events"] = [event_to_dict(e) for e in c.events]
    if c.status is not None:
        doc["status"] = _status(c.status)
    if c.result is not None:
        doc["result"] = c.result
    if c.error is not None:
        doc["error"] = _err(c.error)
    if c.block_reason is not None:
        doc["block_reason"] = c.block_reason
    if c.continued_to is not None:
        doc["continued_to"] = c.continued_to
    if c.steps:
        doc["steps"] = [_step_doc(s) for s in c.steps]
    if c.timers:
        doc["timers"] = [[t.run_id, t.seq, t.fire_at] for t in c.timers]
    if c.cancel_timers:
        doc["cancel_timers"] = list(c.cancel_timers)
    if c.new_runs:
        doc["new_runs"] = [
            [
                rec_doc(nr.record),
                [event_to_dict(e) for e in nr.inbox],
                _dl(nr.on_started),
                _dl(nr.on_conflict),
            ]
            for nr in c.new_runs
        ]
    if c.hooks:
        doc["hooks"] = [[h.token, h.seq, _dl(h.on_conflict)] for h in c.hooks]
    if c.dispose_hooks:
        doc["dispose_hooks"] = list(c.dispose_hooks)
    if c.hook_resumes:
        doc["hook_resumes"] = [
            [h.token, h.payload, _dl(h.on_delivered), _dl(h.on_missing)] for h in c.hook_resumes
        ]
    if c.deliveries:
        doc["deliveries"] = [_dl(d) for d in c.deliveries]
    return dumps(doc)


def _step_doc(s: StepTask) -> list[Any]:
    """``[run_id, seq, name, args, attempt, ready_at]``, plus ``lease, lease_expires`` for a
    pre-leased step (eager dispatch)."""
    doc = [s.run_id, s.seq, s.name, s.args, s.attempt, s.ready_at]
    if s.pre_leased:
        doc += [s.lease, s.lease_expires]
    return doc


def commit_locks(c: Commit, into: set[str]) -> None:
    """Add the existing runs ``c`` writes to (its own and its deliveries' targets)."""
    into.add(c.run_id)
    for d in c.deliveries:
        into.add(d.run_id)
    for nr in c.new_runs:
        for d in (nr.on_started, nr.on_conflict):
            if d is not None:
                into.add(d.run_id)
    for h in c.hooks:
        into.add(h.on_conflict.run_id)
    for hr in c.hook_resumes:
        for d in (hr.on_delivered, hr.on_missing):
            if d is not None:
                into.add(d.run_id)


# -- local wake-ups ------------------------------------------------------------------------------


class Waker:
    """Local wake-ups that are not lost, and not wasted.

    A notification that arrives while a task is not waiting makes that task's next ``wait``
    return at once (tracked per asyncio task). Notifications within one turn of the event loop
    wake each waiter once.

    A task whose last call was ``get_run`` of an open run (``watch``) -- how a ``RunHandle``
    waits for its result -- is woken only when that run's record changes here
    (``notify_run``), on ``notify_all`` (a notification from elsewhere, an explicit
    ``Backend.notify``) or at its timeout: with many handles waiting, a change to one run does
    not wake them all. Every other waiter wakes on any local change (``notify``).
    """

    def __init__(self) -> None:
        self.gen = 0  # local changes (and everything notify_all covers)
        self.all_gen = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._watchers: dict[str, list[asyncio.Future[None]]] = {}
        self._run_gen: OrderedDict[str, int] = OrderedDict()
        self._pending = False
        self._general = False
        self._everyone = False
        self._touched: set[str] = set()
        self._seen: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        self._watch: weakref.WeakKeyDictionary[Any, tuple[str, int, int]] = (
            weakref.WeakKeyDictionary()
        )

    # -- raising ---------------------------------------------------------------------------------

    def notify(self) -> None:
        """Something changed here: wake the waiters that are not watching one run."""
        self.gen += 1
        if self._waiters:
            self._general = True
            self._soon()

    def notify_run(self, run_id: str) -> None:
        """``run_id``'s record changed here: wake the tasks watching it."""
        self._run_gen[run_id] = self._run_gen.pop(run_id, 0) + 1
        if len(self._run_gen) > 10_000:
            self._run_gen.popitem(last=False)
        if run_id in self._watchers:
            self._touched.add(run_id)
            self._soon()

    def notify_all(self) -> None:
        """Anything may have changed: wake every waiter."""
        self.gen += 1
        self.all_gen += 1
        if self._waiters or self._watchers:
            self._everyone = True
            self._soon()

    def _soon(self) -> None:
        if self._pending:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not in the loop: wake now
            self._fire()
            return
        self._pending = True
        loop.call_soon(self._fire)

    def _fire(self) -> None:
        self._pending = False
        woken: list[asyncio.Future[None]] = []
        if self._general or self._everyone:
            woken, self._waiters = self._waiters, []
        runs = list(self._watchers) if self._everyone else self._touched
        for r in runs:
            woken.extend(self._watchers.pop(r, ()))
        self._general = self._everyone = False
        self._touched = set()
        for f in woken:
            if not f.done():
                f.set_result(None)

    # -- waiting ---------------------------------------------------------------------------------

    def watch(self, run_id: str, run_gen: int, all_gen: int) -> None:
        """The current task read ``run_id`` (open) with these generations taken before."""
        task = asyncio.current_task()
        if task is not None:
            self._watch[task] = (run_id, run_gen, all_gen)

    def unwatch(self) -> None:
        if self._watch:
            task = asyncio.current_task()
            if task is not None:
                self._watch.pop(task, None)

    def run_gen(self, run_id: str) -> int:
        return self._run_gen.get(run_id, 0)

    def mark(self) -> None:
        """Start tracking the current task (so a notification before its first wait counts)."""
        task = asyncio.current_task()
        if task is not None and task not in self._seen:
            self._seen[task] = self.gen

    async def wait(self, timeout: float) -> None:
        task = asyncio.current_task()
        watched = self._watch.pop(task, None) if task is not None else None
        if watched is not None:
            run_id, rg, ag = watched
            if self.run_gen(run_id) != rg or self.all_gen != ag:
                await asyncio.sleep(0)
                return
            await self._park(self._watchers.setdefault(run_id, []), timeout, run_id)
            return
        seen = self._seen.get(task) if task is not None else None
        if seen is not None and seen != self.gen:
            self._seen[task] = self.gen
            await asyncio.sleep(0)
            return
        try:
            await self._park(self._waiters, timeout)
        finally:
            if task is not None:
                self._seen[task] = self.gen

    async def _park(
        self, into: list[asyncio.Future[None]], timeout: float, run_id: str | None = None
    ) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        into.append(fut)
        timer = loop.call_later(max(0.0, timeout), _wake, fut)
        try:
            await fut
        finally:
            timer.cancel()
            try:
                into.remove(fut)  # timed out or cancelled (a wake-up took the whole list)
            except ValueError:
                pass
            if run_id is not None and not into and self._watchers.get(run_id) is into:
                del self._watchers[run_id]


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


# -- group commit --------------------------------------------------------------------------------

I = TypeVar("I")  # noqa: E741
R = TypeVar("R")


class Batcher(Generic[I, R]):
    """Group commit for one kind of call.

    A call made while none of its kind is in flight goes at once, alone: no added latency.
    Calls made while one is in flight queue up; when it returns, one of them sends every queued
    call (up to ``limit``) in one round trip and one transaction, and hands each its result.
    ``flush`` maps a list of items to their results, in order, or raises for all of them.
    """

    def __init__(
        self,
        flush: Callable[[list[I]], Awaitable[list[R]]],
        limit: int,
        interrupted: Callable[[], Exception],
    ) -> None:
        self._flush = flush
        self._limit = limit
        self._interrupted = interrupted
        self._queue: list[tuple[I, asyncio.Future[R]]] = []
        self._busy = False
        self._turn: asyncio.Event | None = None

    async def __call__(self, item: I) -> R:
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        entry = (item, fut)
        self._queue.append(entry)
        try:
            while not fut.done():
                if self._busy:
                    if self._turn is None:
                        self._turn = asyncio.Event()
                    await self._turn.wait()
                else:
                    await self._send()
        except asyncio.CancelledError:
            if entry in self._queue:
                self._queue.remove(entry)
            if fut.done() and not fut.cancelled():
                fut.exception()  # retrieved: nobody else will look at it
            else:
                fut.cancel()
            raise
        return fut.result()

    async def _send(self) -> None:
        self._busy = True
        batch = self._queue[: self._limit]
        del self._queue[: self._limit]
        try:
            results = await self._flush([item for item, _ in batch])
        except Exception as exc:
            # A failed round trip fails every call it carried, as a lost connection fails the
            # one call in flight.
            for _, f in batch:
                if not f.done():
                    f.set_exception(exc)
        except BaseException:
            # The sender was cancelled mid-flight: the others' outcome is unknown.
            for _, f in batch:
                if not f.done():
                    f.set_exception(self._interrupted())
            raise
        else:
            for (_, f), r in zip(batch, results, strict=True):
                if not f.done():
                    f.set_result(r)
        finally:
            self._busy = False
            turn, self._turn = self._turn, None
            if turn is not None:
                turn.set()
