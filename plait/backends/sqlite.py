"""``sqlite:///path.db``: one SQLite file in WAL mode, shareable by several worker processes.

Every operation of the ``Backend`` protocol is one synchronous function run in one transaction
(or savepoint, see below) on the backend's own thread (``plait.backends._sqlite_store``), so the
event loop never blocks on sqlite and each operation is atomic, also against other processes
using the same file. Semantics follow ``MemoryBackend`` operation by operation: same claim order
(ready time, then a global enqueue counter stored in the file), same fencing, same drops and
no-ops.

Uniqueness holds across processes by constraint or inside the write transaction: an open run's
key lives in the UNIQUE column ``held_key``, hook tokens are the primary key of ``plait_hooks``.
Other processes' changes are noticed by polling: ``wait`` returns after at most ``POLL_SECONDS``.

Each call costs a round trip to that thread, so claims avoid the ones that cannot find work:
every claim (and commit) reads, in its own transaction, when its queue can next yield work, and
a later claim before that time is answered locally (``Hints``); a claim that looks at an empty
queue does so without taking the write lock (``Store.claim``). Writes and claims already queued
for the thread share one transaction, each in its own savepoint (``Store.group``).

Eager dispatch (``supports_eager``): a commit may hand over steps already leased to the
committing worker, and ``finish_step_and_claim`` finishes a step and claims its run's workflow
task in one transaction, so a step costs two round trips instead of four.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import anyio

from ..kernel.events import Event
from ..kernel.status import RunStatus
from ._notify import Notifier
from ._sqlite_schema import DbThread, Hints, parse_url
from ._sqlite_store import Readings, Store
from .base import (
    BackendError,
    BackendState,
    ClaimedRun,
    Commit,
    RunRecord,
    StepTask,
    check_start_commit,
)

__all__ = ["SqliteBackend", "SqliteBackendPlugin", "POLL_SECONDS"]

POLL_SECONDS = 0.1
"""Longest ``wait`` on a file database: changes made by other processes are seen this soon."""

CHECKPOINT_EVERY = 200
"""Commits between two WAL checkpoints, which this backend makes on a thread of its own when it
runs calls inline (SQLite's automatic ones would sync the disk inside an inline commit)."""

T = TypeVar("T")
_INF = float("inf")


def _wakes(c: Commit, readings: Readings) -> bool:
    """Whether an applied commit may have made work a local waiter should look at now: a
    timer, a step not pre-leased to the committer, or a workflow task ready at ``c.now`` (its
    run requeued, or one it delivered to). A commit whose only new work is steps it leased to
    itself wakes nobody (their leases expire long after any waiter polls again)."""
    if c.timers or c.unleased_steps:
        return True
    return readings.get("wf", _INF) <= c.now


def _unqueued_changes(c: Commit) -> tuple[str, ...]:
    """The queues a commit to a run that stays unqueued (speculative, or a new run's first)
    can add claimable work to."""
    return (
        *(("wf",) if c.delivers else ()),
        *(("steps",) if c.unleased_steps else ()),
        *(("timers",) if c.timers else ()),
    )


_SHARED_HINTS: weakref.WeakValueDictionary[str, Hints] = weakref.WeakValueDictionary()
_QUEUES = ("wf", "steps", "timers")


class SqliteBackend:
    """``sqlite:///path.db`` (WAL, ``synchronous=NORMAL``; ``?synchronous=full`` survives power
    loss; ``?busy_timeout=ms``, default 5000) or ``sqlite://:memory:`` (one connection, gone
    when closed). Opens lazily on first use if ``open`` was not called."""

    supports_eager = True
    supports_speculation = True
    supports_eager_start = True
    supports_start_commit = True

    def __init__(self, url: str = "sqlite://:memory:") -> None:
        self.url = url
        self.options = parse_url(url)
        self._store = Store(self.options)
        self._thread: DbThread | None = None
        self._notifier = Notifier()
        self._checkpointing: threading.Thread | None = None
        self._changes = 0  # local notifications so far
        # Per task: ``_changes`` when it first called the backend since its last ``wait``.
        self._seen: contextvars.ContextVar[int | None] = contextvars.ContextVar(
            f"plait-sqlite-{id(self)}", default=None
        )
        # Per queue: the operations in flight that may change what a claim of it finds.
        self._inflight: dict[str, set[anyio.Event]] = {q: set() for q in _QUEUES}
        if self.options.path is None:
            self._hints = Hints(_INF)
        else:
            key = os.path.realpath(self.options.path)
            hints = _SHARED_HINTS.get(key)
            if hints is None:
                hints = _SHARED_HINTS[key] = Hints(POLL_SECONDS)
            self._hints = hints

    @classmethod
    def from_url(cls, url: str) -> SqliteBackend:
        return cls(url)

    async def open(self) -> None:
        if self._thread is not None:
            return
        store = self._store
        name = f"plait-sqlite:{self.options.path or ':memory:'}"
        inline = store.inline if self.options.runs_inline else None
        thread = self._thread = DbThread(name, store.group, store.groupable, inline)
        try:
            await thread.call(self._store.open)
        except BaseException:
            if self._thread is thread:
                self._thread = None
                thread.stop()
            raise
        self._hints.forget(_QUEUES)

    async def close(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        try:
            await thread.call(self._store.close)
        finally:
            thread.stop()

    # -- plumbing ------------------------------------------------------------------------------

    def _look(self) -> None:
        if self._seen.get() is None:
            self._seen.set(self._changes)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        self._look()
        if self._thread is None:
            await self.open()
        assert self._thread is not None
        try:
            return await self._thread.call(fn, *args)
        except sqlite3.Error as exc:  # e.g. still locked by another process after busy_timeout
            where = self.options.path or ":memory:"
            raise BackendError(f"sqlite database {where}: {exc}") from exc
        finally:
            if self._store.commits >= CHECKPOINT_EVERY and self.options.runs_inline:
                self._store.commits = 0
                self._checkpoint()

    def _checkpoint(self) -> None:
        """Start a WAL checkpoint on a thread of its own (one at a time), so that neither
        the event loop nor the backend's thread waits for its disk sync."""
        if self.options.path is None:
            return
        running = self._checkpointing
        if running is not None and running.is_alive():
            return
        self._checkpointing = threading.Thread(
            target=self._store.checkpoint, name="plait-sqlite-checkpoint", daemon=True
        )
        self._checkpointing.start()

    @contextlib.contextmanager
    def _busy(self, queues: Sequence[str]) -> Iterator[None]:
        if not queues:
            yield
            return
        done = anyio.Event()
        for q in queues:
            self._inflight[q].add(done)
        try:
            yield
        finally:
            for q in queues:
                self._inflight[q].discard(done)
            done.set()

    async def _claim(
        self,
        queue: str,
        affects: Sequence[str],
        now: float,
        none: Any,
        fn: Callable[..., Any],
        *args: Any,
    ) -> Any:
        """Take work from ``queue`` with ``fn`` (which returns its result and its readings).

        The database is asked only when the hints allow work, and only after the claims and
        changes of the queue already in flight (the database thread would run them first
        anyway): their readings may tell there is nothing to ask for."""
        hints = self._hints
        self._look()
        if hints.idle(queue, now):
            return none
        pending = list(self._inflight[queue])
        if pending:
            for done in pending:  # only those: later ones must not starve this claim
                await done.wait()
            if hints.idle(queue, now):
                return none
        with self._busy(affects):
            generation, read_at = hints.generation, time.monotonic()
            result, readings = await self._run(self._store.claim, fn, *args)
            hints.settle(readings, generation, read_at)
        return result

    async def _change(
        self, queues: Sequence[str], fn: Callable[..., T], *args: Any, wake: bool = False
    ) -> T:
        """A write that may add work to ``queues`` (their readings are dropped); local waiters
        are woken when it did something (or always, with ``wake``), as the memory backend's."""
        with self._busy(queues):
            self._hints.forget(queues)
            try:
                out = await self._run(self._store.write, fn, *args)
            finally:
                self._hints.forget(queues)
        if wake or (out[1] if isinstance(out, tuple) else out):
            self.notify()
        return out

    # -- runs ----------------------------------------------------------------------------------

    async def create_run(
        self, record: RunRecord, inbox: Sequence[Event], now: float
    ) -> tuple[str, bool]:
        return await self._change(("wf",), self._store.create_run, record, tuple(inbox), now)

    async def create_run_and_claim(
        self, record: RunRecord, inbox: Sequence[Event], now: float, lease_seconds: float
    ) -> tuple[str, bool, ClaimedRun | None]:
        store = self._store
        with self._busy(("wf",)):
            out = await self._run(
                store.write, store.create_run_and_claim, record, tuple(inbox), now, lease_seconds
            )
        if out[1]:  # a new task, leased to the caller: nobody to wake until its lease expires
            self._hints.lower("wf", now + lease_seconds)
        return out

    async def get_run(self, run_id: str) -> RunRecord | None:
        return await self._run(self._store.get_run, run_id)

    async def list_runs(
        self,
        *,
        status: RunStatus | None = None,
        workflow: str | None = None,
        parent: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[RunRecord]:
        if limit <= 0:
            return []
        return await self._run(self._store.list_runs, status, workflow, parent, limit, offset)

    async def read_history(self, run_id: str) -> list[Event]:
        return await self._run(self._store.read_history, run_id)

    async def append_history(self, run_id: str, events: Sequence[Event]) -> None:
        await self._run(self._store.write, self._store.append_history, run_id, tuple(events))

    async def append_inbox(self, run_id: str, events: Sequence[Event], now: float) -> bool:
        return await self._change(("wf",), self._store.append_inbox, run_id, tuple(events), now)

    # -- workflow tasks ------------------------------------------------------------------------

    async def claim_workflow_task(self, now: float, lease_seconds: float) -> ClaimedRun | None:
        return await self._claim(
            "wf", ("wf",), now, None, self._store.claim_workflow_task, now, lease_seconds
        )

    async def renew_workflow_lease(
        self, run_id: str, lease: int, now: float, seconds: float
    ) -> bool:
        store = self._store
        return await self._run(store.write, store.renew_workflow_lease, run_id, lease, now, seconds)

    async def requeue_workflow_task(self, run_id: str, now: float) -> bool:
        return await self._change(("wf",), self._store.requeue_workflow_task, run_id, now)

    async def apply_commit(self, commit: Commit) -> bool:
        queues = (
            "wf",
            *(("steps",) if commit.steps else ()),
            *(("timers",) if commit.timers else ()),
        )
        return await self._commit(commit, queues, self._store.apply_commit, commit)

    async def finish_step_and_commit(
        self, run_id: str, seq: int, lease: int, commit: Commit, history_length: int
    ) -> bool:
        c = commit
        queues = _unqueued_changes(c)
        store = self._store
        ok = await self._commit(
            c, queues, store.finish_step_and_commit, run_id, seq, lease, c, history_length, queues
        )
        if ok:
            self._pre_leased(c)
        return bool(ok)

    async def create_run_and_commit(self, record: RunRecord, commit: Commit) -> tuple[str, bool]:
        check_start_commit(record, commit)
        queues = _unqueued_changes(commit)
        run_id, created = await self._commit(
            commit, queues, self._store.create_run_and_commit, record, commit, queues
        )
        if created:
            self._pre_leased(commit)
        return run_id, created

    def _pre_leased(self, c: Commit) -> None:
        """Steps a commit leased to its committer: claimable again once their leases expire."""
        for s in c.steps:
            if s.lease_expires is not None:
                self._hints.lower("steps", s.lease_expires)

    async def _commit(
        self,
        commit: Commit,
        queues: Sequence[str],
        fn: Callable[..., tuple[Any, Readings]],
        *args: Any,
    ) -> Any:
        """Apply ``commit`` with ``fn`` (which returns whether it did, or ``create_run``'s
        answer, and readings of the ``queues`` it may have added work to), keeping the claim
        hints right around it."""
        hints = self._hints
        with self._busy(queues):
            hints.forget(queues)
            generation, read_at = hints.generation, time.monotonic()
            try:
                ok, found = await self._run(self._store.write, fn, *args)
            except BaseException:
                hints.forget(queues)
                raise
            readings: Readings = dict.fromkeys(queues, -_INF)
            readings.update(found)
            hints.settle(readings, generation, read_at)
        applied = ok[1] if isinstance(ok, tuple) else ok
        if applied and _wakes(commit, readings):
            self.notify()
        return ok

    # -- steps ---------------------------------------------------------------------------------

    async def claim_step_tasks(
        self, now: float, limit: int, lease_seconds: float
    ) -> list[StepTask]:
        if limit <= 0:
            return []
        return await self._claim(
            "steps", ("steps",), now, [], self._store.claim_step_tasks, now, limit, lease_seconds
        )

    async def heartbeat_step(
        self, run_id: str, seq: int, lease: int, now: float, seconds: float
    ) -> bool:
        store = self._store
        return await self._run(store.write, store.heartbeat_step, run_id, seq, lease, now, seconds)

    async def finish_step(
        self, run_id: str, seq: int, lease: int, outcome: Event, now: float
    ) -> bool:
        return await self._change(
            ("wf",), self._store.finish_step, run_id, seq, lease, outcome, now
        )

    async def finish_step_and_claim(
        self, run_id: str, seq: int, lease: int, outcome: Event, now: float, lease_seconds: float
    ) -> tuple[bool, ClaimedRun | None]:
        hints = self._hints
        with self._busy(("wf",)):
            hints.forget(("wf",))
            generation, read_at = hints.generation, time.monotonic()
            store = self._store
            try:
                (ok, claim), readings = await self._run(
                    store.write,
                    store.finish_step_and_claim,
                    run_id,
                    seq,
                    lease,
                    outcome,
                    now,
                    lease_seconds,
                )
            except BaseException:
                hints.forget(("wf",))
                raise
            hints.settle(readings, generation, read_at)
        if ok and claim is None:  # else the work it made is ours: nobody to wake
            self.notify()
        return ok, claim

    async def retry_step(
        self, run_id: str, seq: int, lease: int, attempt: int, ready_at: float
    ) -> bool:
        return await self._change(
            ("steps",), self._store.retry_step, run_id, seq, lease, attempt, ready_at
        )

    # -- timers and hooks ----------------------------------------------------------------------

    async def fire_due_timers(self, now: float, limit: int = 1000) -> int:
        if limit <= 0:
            return 0
        n: int = await self._claim(
            "timers", ("timers", "wf"), now, 0, self._store.fire_due_timers, now, limit
        )
        if n:
            self.notify()
        return n

    async def resume_hook(self, token: str, payload: Any, now: float) -> str | None:
        return await self._change(("wf",), self._store.resume_hook, token, payload, now, wake=True)

    # -- idle detection ------------------------------------------------------------------------

    async def state(self, now: float) -> BackendState:
        return await self._run(self._store.read, self._store.state, now)

    def notify(self) -> None:
        self._changes += 1
        seen = self._seen.get()
        if seen is not None:  # a task's own change does not cut its next ``wait`` short
            self._seen.set(seen + 1)
        self._notifier.notify()

    async def wait(self, timeout: float) -> None:
        """Unlike the memory backend's, our calls yield to the event loop, so a change can land
        between a caller's last look and its ``wait``: then return at once, never miss it."""
        seen = self._seen.get()
        self._seen.set(None)
        if seen is not None and seen != self._changes:
            await anyio.lowlevel.checkpoint()
            return
        if self.options.path is not None:  # another process may write: poll
            timeout = min(timeout, POLL_SECONDS)
        await self._notifier.wait(timeout)


class SqliteBackendPlugin:
    """Registers ``sqlite://`` through the entry-point group ``plait``, like any third party."""

    from ..plugins.hookspecs import hookimpl as _hookimpl

    @staticmethod
    @_hookimpl
    def plait_backend_schemes() -> dict[str, Callable[[str], Any]]:
        return {"sqlite": SqliteBackend.from_url}
