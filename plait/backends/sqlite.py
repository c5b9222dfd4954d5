"""``sqlite:///path.db``: one SQLite file in WAL mode, shareable by several worker processes.

Every operation of the ``Backend`` protocol is one synchronous function run as one transaction
(``BEGIN IMMEDIATE`` for anything that writes) on the backend's own thread, so the event loop
never blocks on sqlite and each operation is atomic, also against other processes using the same
file. Semantics follow ``MemoryBackend`` operation by operation: same claim order (ready time,
then a global enqueue counter stored in the file), same fencing, same drops and no-ops.

Uniqueness holds across processes by constraint or inside the write transaction: an open run's
key lives in the UNIQUE column ``held_key``, hook tokens are the primary key of ``plait_hooks``.
Other processes' changes are noticed by polling: ``wait`` returns after at most ``POLL_SECONDS``.

Each call costs a round trip to that thread, so claims avoid the ones that cannot find work:
every claim (and commit) reads, in its own transaction, when its queue can next yield work, and
a later claim before that time is answered locally (``Hints``); a claim that looks at an empty
queue does so without taking the write lock (``_Store.claim``).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import sqlite3
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import anyio
import attrs

from ..kernel.events import Event, HookReceived, TimerFired
from ..kernel.status import RunStatus
from ._notify import Notifier
from ._sqlite_schema import (
    CLOSED,
    DELIVER,
    INSERT_INBOX,
    INSERT_RUN,
    LOAD_SEQ,
    NEXT_STEPS,
    NEXT_WF,
    QUEUE,
    RUN_COLS,
    SAVE_SEQ,
    SCAN_STEPS,
    SCAN_WF,
    STATE_STEPS,
    STATE_TIMERS,
    STATE_WF,
    UPDATE_RUN,
    UPDATE_RUN_SAME_STATUS,
    UPSERT_STEP,
    UPSERT_TIMER,
    DbThread,
    Hints,
    SqliteOptions,
    connect,
    dump_event,
    earliest,
    encode_json,
    load_event,
    parse_url,
    record_from_row,
    record_params,
    step_params,
)
from .base import (
    BackendError,
    BackendState,
    ClaimedRun,
    Commit,
    Delivery,
    InboxEntry,
    RunRecord,
    StepTask,
)

__all__ = ["SqliteBackend", "SqliteBackendPlugin", "POLL_SECONDS"]

POLL_SECONDS = 0.1
"""Longest ``wait`` on a file database: changes made by other processes are seen this soon."""

T = TypeVar("T")
_INF = float("inf")


class _Store:
    """The protocol's operations as synchronous functions of one connection.

    Only the backend's thread calls these, each through ``write`` (``BEGIN IMMEDIATE``),
    ``claim`` (a look, then ``write`` if there is work) or ``read`` (one snapshot), or as one
    statement, so each operation is one transaction.
    """

    def __init__(self, options: SqliteOptions) -> None:
        self.options = options
        self.con: sqlite3.Connection | None = None
        self._order: int | None = None

    def open(self) -> None:
        if self.con is None:
            self.con = connect(self.options)

    def close(self) -> None:
        con, self.con = self.con, None
        if con is not None:
            con.close()

    def _con(self) -> sqlite3.Connection:
        if self.con is None:
            raise BackendError("the sqlite backend is closed")
        return self.con

    def write(self, fn: Callable[..., T], *args: Any) -> T:
        con = self._con()
        con.execute("BEGIN IMMEDIATE")
        self._order = None
        try:
            out = fn(*args)
            if self._order is not None:
                con.execute(SAVE_SEQ, (self._order,))
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        finally:
            self._order = None
        return out

    def claim(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run claim ``fn`` in a write transaction only when a first look (``peek=True``, in a
        read transaction) sees work: an empty queue is answered without taking the write lock,
        which matters when several processes poll one file."""
        empty = self.read(fn, *args, peek=True)
        return empty if empty is not None else self.write(fn, *args)

    def read(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        con = self._con()
        con.execute("BEGIN")
        try:
            return fn(*args, **kw)
        finally:
            if con.in_transaction:
                con.execute("COMMIT")

    # -- helpers (inside a write transaction) --------------------------------------------------

    def _next(self) -> int:
        if self._order is None:
            self._order = self._con().execute(LOAD_SEQ).fetchone()[0]
        self._order += 1
        return self._order

    def _queue(self, run_id: str, ready_at: float) -> None:
        self._con().execute(QUEUE, (ready_at, self._next(), run_id))

    def _deliver(self, d: Delivery | None, now: float) -> None:
        if d is None:
            return
        params = (d.run_id, self._next(), dump_event(d.event), d.run_id)
        cur = self._con().execute(DELIVER, params)
        if cur.rowcount:
            self._queue(d.run_id, now)

    def _insert_run(self, record: RunRecord, inbox: Sequence[Event], now: float) -> None:
        con = self._con()
        con.execute(INSERT_RUN, record_params(record))
        if inbox and not record.closed:
            self._add_inbox(record.run_id, inbox)
            self._queue(record.run_id, now)

    def _add_inbox(self, run_id: str, events: Sequence[Event]) -> None:
        rows = [(run_id, self._next(), dump_event(e)) for e in events]
        self._con().executemany(INSERT_INBOX, rows)

    def _exists(self, run_id: str) -> bool:
        sql = "SELECT 1 FROM plait_runs WHERE run_id = ?"
        return self._con().execute(sql, (run_id,)).fetchone() is not None

    def _key_holder(self, key: str) -> str | None:
        found = self._con().execute("SELECT run_id FROM plait_runs WHERE held_key = ?", (key,))
        return next((r[0] for r in found), None)

    def _is_open(self, run_id: str) -> bool:
        row = self._con().execute("SELECT status FROM plait_runs WHERE run_id = ?", (run_id,))
        found = row.fetchone()
        return found is not None and found[0] not in CLOSED

    def _drop_pending(self, rid: int, run_id: str) -> None:
        con = self._con()
        con.execute("UPDATE plait_runs SET held_key = NULL WHERE id = ?", (rid,))
        for table in ("plait_hooks", "plait_steps", "plait_timers", "plait_inbox"):
            con.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))

    def _resume(
        self,
        token: str,
        payload: Any,
        now: float,
        on_delivered: Delivery | None = None,
        on_missing: Delivery | None = None,
    ) -> str | None:
        sql = "SELECT run_id, seq FROM plait_hooks WHERE token = ?"
        owner = self._con().execute(sql, (token,)).fetchone()
        if owner is None:
            self._deliver(on_missing, now)
            return None
        run_id, seq = owner
        self._deliver(Delivery(run_id, HookReceived(seq, payload)), now)
        self._deliver(on_delivered, now)
        return str(run_id)

    # -- runs ----------------------------------------------------------------------------------

    def create_run(self, record: RunRecord, inbox: Sequence[Event], now: float) -> tuple[str, bool]:
        if record.key is not None:
            holder = self._key_holder(record.key)
            if holder is not None:
                return holder, False
        if self._exists(record.run_id):
            return record.run_id, False
        self._insert_run(record, inbox, now)
        return record.run_id, True

    def get_run(self, run_id: str) -> RunRecord | None:
        sql = f"SELECT {RUN_COLS} FROM plait_runs WHERE run_id = ?"
        row = self._con().execute(sql, (run_id,)).fetchone()
        return None if row is None else record_from_row(row)

    def list_runs(
        self,
        status: RunStatus | None,
        workflow: str | None,
        parent: str | None,
        limit: int,
        offset: int,
    ) -> list[RunRecord]:
        where: list[str] = []
        params: list[Any] = []
        for column, value in (("status", status), ("workflow", workflow)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(str(value))
        if parent is not None:
            where.append("parent_run_id = ?")
            params.append(parent)
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        sql = f"SELECT {RUN_COLS} FROM plait_runs {clause}ORDER BY id LIMIT ? OFFSET ?"
        rows = self._con().execute(sql, (*params, limit, max(0, offset))).fetchall()
        return [record_from_row(r) for r in rows]

    def read_history(self, run_id: str) -> list[Event]:
        sql = "SELECT event FROM plait_history WHERE run_id = ? ORDER BY pos"
        return [load_event(r[0]) for r in self._con().execute(sql, (run_id,)).fetchall()]

    def _append_events(self, run_id: str, start: int, events: Sequence[Event]) -> int:
        self._con().executemany(
            "INSERT INTO plait_history (run_id, pos, event) VALUES (?, ?, ?)",
            [(run_id, start + i, dump_event(e)) for i, e in enumerate(events)],
        )
        return start + len(events)

    def append_history(self, run_id: str, events: Sequence[Event]) -> None:
        sql = "SELECT id, history_len FROM plait_runs WHERE run_id = ?"
        row = self._con().execute(sql, (run_id,)).fetchone()
        if row is None or not events:
            return
        length = self._append_events(run_id, row[1], events)
        self._con().execute("UPDATE plait_runs SET history_len = ? WHERE id = ?", (length, row[0]))

    def append_inbox(self, run_id: str, events: Sequence[Event], now: float) -> bool:
        if not self._is_open(run_id):
            return False
        if events:
            self._add_inbox(run_id, events)
            self._queue(run_id, now)
        return True

    # -- workflow tasks ------------------------------------------------------------------------

    def claim_workflow_task(
        self, now: float, lease_seconds: float, peek: bool = False
    ) -> tuple[ClaimedRun | None, dict[str, float]] | None:
        """The claim, and a lower bound of when the next one can be made (see ``claim``)."""
        con = self._con()
        found = con.execute(NEXT_WF, (now, now)).fetchall()
        if not found:
            return None, {"wf": self._next_wf_time(now)}
        if peek:
            return None
        rid = found[0][0]
        con.execute(
            "UPDATE plait_runs SET fence = fence + 1, lease_expires = ? WHERE id = ?",
            (now + lease_seconds, rid),
        )
        sql = f"SELECT fence, history_len, {RUN_COLS} FROM plait_runs WHERE id = ?"
        row = con.execute(sql, (rid,)).fetchone()
        record = record_from_row(row[2:])
        inbox = con.execute(
            "SELECT id, event FROM plait_inbox WHERE run_id = ? ORDER BY id", (record.run_id,)
        ).fetchall()
        claim = ClaimedRun(
            run=record,
            lease=row[0],
            inbox=tuple(InboxEntry(i, load_event(e)) for i, e in inbox),
            history_length=row[1],
        )
        return claim, {"wf": -_INF if len(found) > 1 else self._next_wf_time(now)}

    def renew_workflow_lease(self, run_id: str, lease: int, now: float, seconds: float) -> bool:
        cur = self._con().execute(
            "UPDATE plait_runs SET lease_expires = ? "
            "WHERE run_id = ? AND fence = ? AND lease_expires IS NOT NULL",
            (now + seconds, run_id, lease),
        )
        return cur.rowcount > 0

    def requeue_workflow_task(self, run_id: str, now: float) -> bool:
        if not self._is_open(run_id):
            return False
        self._queue(run_id, now)
        return True

    def apply_commit(self, c: Commit) -> tuple[bool, float]:
        """Whether it applied, and then a lower bound of the next workflow claim time."""
        con = self._con()
        row = con.execute(
            "SELECT id, status, fence, lease_expires, history_len FROM plait_runs WHERE run_id = ?",
            (c.run_id,),
        ).fetchone()
        if row is None:
            return False, -_INF
        rid, status, fence, lease_expires, length = row
        if c.lease is None:
            if status in CLOSED:
                return False, -_INF
            fence += 1
        elif fence != c.lease or lease_expires is None or status in CLOSED:
            return False, -_INF
        now = c.now
        if c.events:
            length = self._append_events(c.run_id, length, c.events)
        if c.inbox_upto > 0:
            con.execute(
                "DELETE FROM plait_inbox WHERE run_id = ? AND id <= ?", (c.run_id, c.inbox_upto)
            )
        new_status = status if c.status is None else str(c.status)
        closing = new_status in CLOSED
        result = None if c.result is None else encode_json(c.result)
        error = None if c.error is None else encode_json(attrs.asdict(c.error))
        params = (result, error, c.continued_to, c.block_reason, now if closing else None)
        # The status column is indexed: writing it unchanged would still dirty an index page.
        if new_status == status:
            con.execute(UPDATE_RUN_SAME_STATUS, (*params, fence, length, rid))
        else:
            con.execute(UPDATE_RUN, (new_status, *params, fence, length, rid))
        self._apply_effects(c, now)
        if closing:
            self._drop_pending(rid, c.run_id)
        for nr in c.new_runs:
            if self._exists(nr.record.run_id):
                continue
            if nr.record.key is not None and self._key_holder(nr.record.key) is not None:
                self._deliver(nr.on_conflict, now)
            else:
                self._insert_run(nr.record, nr.inbox, now)
                self._deliver(nr.on_started, now)
        for hr in c.hook_resumes:
            self._resume(hr.token, hr.payload, now, hr.on_delivered, hr.on_missing)
        for d in c.deliveries:
            self._deliver(d, now)
        requeue = (
            not closing
            and c.requeue
            and con.execute(
                "SELECT 1 FROM plait_inbox WHERE run_id = ? LIMIT 1", (c.run_id,)
            ).fetchone()
            is not None
        )
        con.execute(
            "UPDATE plait_runs SET lease_expires = NULL, wf_ready_at = ?, wf_order = ? "
            "WHERE id = ?",
            (now, self._next(), rid) if requeue else (None, None, rid),
        )
        return True, (-_INF if requeue else self._next_wf_time(now))

    def _next_wf_time(self, now: float) -> float:
        """A lower bound of when a workflow task can next be claimed (see ``_earliest``)."""
        return earliest(self._con().execute(SCAN_WF).fetchall(), now)

    def _apply_effects(self, c: Commit, now: float) -> None:
        """Steps, timers and hooks of a commit, in the reference backend's order."""
        con = self._con()
        if c.steps:
            con.executemany(UPSERT_STEP, [(*step_params(s), self._next()) for s in c.steps])
        if c.timers:
            con.executemany(
                UPSERT_TIMER, [(t.run_id, t.seq, t.fire_at, self._next()) for t in c.timers]
            )
        if c.cancel_timers:
            con.executemany(
                "DELETE FROM plait_timers WHERE run_id = ? AND seq = ?",
                [(c.run_id, seq) for seq in c.cancel_timers],
            )
        if c.dispose_hooks:  # before registrations: a token may be reopened
            con.executemany(
                "DELETE FROM plait_hooks WHERE token = ? AND run_id = ?",
                [(token, c.run_id) for token in c.dispose_hooks],
            )
        for reg in c.hooks:
            cur = con.execute(
                "INSERT OR IGNORE INTO plait_hooks (token, run_id, seq) VALUES (?, ?, ?)",
                (reg.token, c.run_id, reg.seq),
            )
            if not cur.rowcount:
                self._deliver(reg.on_conflict, now)

    # -- steps ---------------------------------------------------------------------------------

    def claim_step_tasks(
        self, now: float, limit: int, lease_seconds: float, peek: bool = False
    ) -> tuple[list[StepTask], dict[str, float]] | None:
        """The claimed tasks, and a lower bound of when the next can be claimed (see ``claim``)."""
        con = self._con()
        rows = con.execute(NEXT_STEPS, (now, now, limit + 1)).fetchall()
        if rows and peek:
            return None
        more, rows = len(rows) > limit, rows[:limit]
        tasks = [
            StepTask(run_id, seq, name, json.loads(args), attempt, ready_at, self._next())
            for run_id, seq, name, args, attempt, ready_at in rows
        ]
        if tasks:
            con.executemany(
                "UPDATE plait_steps SET lease = ?, lease_expires = ? WHERE run_id = ? AND seq = ?",
                [(t.lease, now + lease_seconds, t.run_id, t.seq) for t in tasks],
            )
        if more:
            return tasks, {"steps": -_INF}
        return tasks, {"steps": earliest(con.execute(SCAN_STEPS).fetchall(), now)}

    def heartbeat_step(self, run_id: str, seq: int, lease: int, now: float, seconds: float) -> bool:
        cur = self._con().execute(
            "UPDATE plait_steps SET lease_expires = ? WHERE run_id = ? AND seq = ? AND lease = ?",
            (now + seconds, run_id, seq, lease),
        )
        return cur.rowcount > 0

    def finish_step(self, run_id: str, seq: int, lease: int, outcome: Event, now: float) -> bool:
        cur = self._con().execute(
            "DELETE FROM plait_steps WHERE run_id = ? AND seq = ? AND lease = ?",
            (run_id, seq, lease),
        )
        if not cur.rowcount:
            return False
        self._deliver(Delivery(run_id, outcome), now)
        return True

    def retry_step(self, run_id: str, seq: int, lease: int, attempt: int, ready_at: float) -> bool:
        cur = self._con().execute(
            "UPDATE plait_steps SET attempt = ?, ready_at = ?, lease = 0, lease_expires = NULL, "
            "ord = ? WHERE run_id = ? AND seq = ? AND lease = ?",
            (attempt, ready_at, self._next(), run_id, seq, lease),
        )
        return cur.rowcount > 0

    # -- timers and hooks ----------------------------------------------------------------------

    def fire_due_timers(
        self, now: float, limit: int, peek: bool = False
    ) -> tuple[int, dict[str, float]] | None:
        """How many fired, and the earliest fire time left (see ``claim``)."""
        con = self._con()
        due = con.execute(
            "SELECT run_id, seq FROM plait_timers WHERE fire_at <= ? ORDER BY fire_at, ord LIMIT ?",
            (now, limit),
        ).fetchall()
        if due and peek:
            return None
        if due:
            con.executemany("DELETE FROM plait_timers WHERE run_id = ? AND seq = ?", due)
            for run_id, seq in due:
                self._deliver(Delivery(run_id, TimerFired(seq)), now)
        readings = {"wf": -_INF} if due else {}  # their runs have work now
        if len(due) == limit:
            readings["timers"] = -_INF
        else:
            until = con.execute("SELECT min(fire_at) FROM plait_timers").fetchone()[0]
            readings["timers"] = _INF if until is None else until
        return len(due), readings

    def resume_hook(self, token: str, payload: Any, now: float) -> str | None:
        return self._resume(token, payload, now)

    # -- idle detection ------------------------------------------------------------------------

    def state(self, now: float) -> BackendState:
        con = self._con()
        args = {"now": now}
        wf_leased, wf_ready, wf_due = con.execute(STATE_WF, args).fetchone()
        st_leased, st_ready, st_due = con.execute(STATE_STEPS, args).fetchone()
        timers, timer_due = con.execute(STATE_TIMERS, args).fetchone()
        due = [d for d in (wf_due, st_due, timer_due) if d is not None]
        return BackendState(
            ready_workflow_tasks=int(wf_ready),
            leased_workflow_tasks=int(wf_leased),
            ready_steps=int(st_ready),
            leased_steps=int(st_leased),
            timers=timers,
            next_due=min(due) if due else None,
        )


_SHARED_HINTS: weakref.WeakValueDictionary[str, Hints] = weakref.WeakValueDictionary()
_QUEUES = ("wf", "steps", "timers")


class SqliteBackend:
    """``sqlite:///path.db`` (WAL, ``synchronous=NORMAL``; ``?synchronous=full`` survives power
    loss; ``?busy_timeout=ms``, default 5000) or ``sqlite://:memory:`` (one connection, gone
    when closed). Opens lazily on first use if ``open`` was not called."""

    def __init__(self, url: str = "sqlite://:memory:") -> None:
        self.url = url
        self.options = parse_url(url)
        self._store = _Store(self.options)
        self._thread: DbThread | None = None
        self._notifier = Notifier()
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
        thread = self._thread = DbThread(f"plait-sqlite:{self.options.path or ':memory:'}")
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

    @contextlib.contextmanager
    def _busy(self, queues: Sequence[str]) -> Iterator[None]:
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
        hints = self._hints
        with self._busy(queues):
            hints.forget(queues)
            generation, read_at = hints.generation, time.monotonic()
            try:
                ok, until = await self._run(self._store.write, self._store.apply_commit, commit)
            except BaseException:
                hints.forget(queues)
                raise
            readings = dict.fromkeys(queues, -_INF)
            readings["wf"] = until
            hints.settle(readings, generation, read_at)
        if ok:
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
