"""The sqlite backend's operations as synchronous functions of one connection (``Store``).

Only the backend's thread calls them, each as one transaction: ``write`` (``BEGIN IMMEDIATE``),
``claim`` (a read transaction that becomes a write one only when there is work to take), ``read``
(one snapshot) or one statement; ``group`` runs several queued writes and claims in one
transaction, each in its own savepoint, so each stays all or nothing on its own.

Operations that take work also return *readings* (per queue, a lower bound of when it can next
yield work; see ``Hints``), read in the same transaction.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import attrs

from ..kernel.events import Event, HookReceived, TimerFired
from ..kernel.status import RunStatus
from ._sqlite_schema import (
    CLAIM_RUN,
    CLAIM_WF,
    CLOSE_RUN,
    CLOSED,
    COMMIT_RUN,
    DELIVER,
    HAS_RETURNING,
    INLINE_REFUSED,
    INSERT_INBOX,
    INSERT_RUN,
    LOAD_SEQ,
    NEXT_STEPS,
    NEXT_WF,
    QUEUE,
    RELEASE_RUN,
    RELEASE_RUN_SAME_STATUS,
    RUN_COLS,
    SAVE_SEQ,
    SCAN_STEPS,
    SCAN_WF,
    STATE_STEPS,
    STATE_TIMERS,
    STATE_WF,
    UPSERT_STEP,
    UPSERT_TIMER,
    SqliteOptions,
    connect,
    dump_event,
    earliest,
    encode_json,
    load_event,
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

__all__ = ["Store", "Readings"]

T = TypeVar("T")
log = logging.getLogger("plait.sqlite")
_INF = float("inf")
_QUEUES = ("wf", "steps", "timers")

Readings = dict[str, float]
"""Per queue ("wf", "steps", "timers"): no claim before this time finds work; -inf: unknown."""


def _busy(exc: sqlite3.OperationalError) -> bool:
    """SQLITE_BUSY or one of its extended codes (e.g. BUSY_SNAPSHOT)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return (code & 0xFF) == sqlite3.SQLITE_BUSY if code is not None else "locked" in str(exc)


class Store:
    """The protocol's operations as synchronous functions of one connection."""

    def __init__(self, options: SqliteOptions) -> None:
        self.options = options
        self.con: sqlite3.Connection | None = None
        self._order: int | None = None
        self._loaded: int | None = None  # the counter as read, when a commit read it ahead
        self.returning = HAS_RETURNING  # UPDATE ... RETURNING (SQLite 3.35+)
        self._watch: str | None = None  # the run of the commit being applied
        self._watched = False  # whether this commit gave that run an inbox entry
        self._groupable = (self.write, self.claim)
        self.commits = 0  # since the last checkpoint, when this backend makes them

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

    # -- transactions --------------------------------------------------------------------------

    def _commit(self, con: sqlite3.Connection) -> None:
        if self._order is not None and self._order != self._loaded:
            con.execute(SAVE_SEQ, (self._order,))
        con.execute("COMMIT")
        self.commits += 1

    def inline(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        """Run a write, claim or ``get_run`` on the caller's thread, but never wait: with
        another connection holding the write lock it is refused (``INLINE_REFUSED``), rolled
        back, for the backend's thread to make with the busy timeout. Other reads (lists,
        histories, counts) may be long: they are refused too."""
        if not (fn == self.write or fn == self.claim or fn == self.get_run):
            return INLINE_REFUSED
        if self.options.path is None:  # one connection, used by one thread at a time
            return fn(*args)
        con = self._con()
        con.execute("PRAGMA busy_timeout = 0")
        try:
            return fn(*args)
        except sqlite3.OperationalError as exc:
            if _busy(exc):
                return INLINE_REFUSED
            raise
        finally:
            con.execute(f"PRAGMA busy_timeout = {self.options.busy_timeout_ms}")

    def checkpoint(self) -> None:
        """Copy the WAL back into the database file (``PASSIVE``: waits for nobody), on a
        connection of its own: the store's connection stays free for inline calls meanwhile
        (a checkpoint syncs the disk)."""
        if self.options.path is None:
            return
        try:
            con = sqlite3.connect(self.options.path, timeout=0, isolation_level=None)
            try:
                con.execute("PRAGMA wal_checkpoint(PASSIVE)")
            finally:
                con.close()
        except sqlite3.Error:  # the next one will catch up; nothing depends on this one
            log.debug("sqlite checkpoint of %s failed", self.options.path, exc_info=True)

    def write(self, fn: Callable[..., T], *args: Any) -> T:
        con = self._con()
        con.execute("BEGIN IMMEDIATE")
        self._order = None
        try:
            out = fn(*args)
            self._commit(con)
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        finally:
            self._order = None
        return out

    def claim(self, fn: Callable[..., T], *args: Any) -> T:
        """Run claim ``fn`` in a read transaction that its first write turns into a write
        transaction: an empty queue is answered without taking the write lock, which matters
        when several processes poll one file. SQLite refuses that upgrade at once (it never
        waits, so it cannot deadlock) when another connection holds the write lock or wrote
        since our snapshot; then the claim is made again in ``BEGIN IMMEDIATE``."""
        con = self._con()
        con.execute("BEGIN")
        self._order = None
        try:
            out = fn(*args)
            self._commit(con)
            return out
        except sqlite3.OperationalError as exc:
            if con.in_transaction:
                con.execute("ROLLBACK")
            if not _busy(exc):
                raise
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        finally:
            self._order = None
        return self.write(fn, *args)

    def read(self, fn: Callable[..., T], *args: Any) -> T:
        con = self._con()
        con.execute("BEGIN")
        try:
            return fn(*args)
        finally:
            if con.in_transaction:
                con.execute("COMMIT")

    def groupable(self, fn: Callable[..., Any]) -> bool:
        """Whether a job calling ``fn`` may share a transaction with others (see ``group``)."""
        return fn in self._groupable

    def group(
        self, jobs: Sequence[tuple[Callable[..., Any], tuple[Any, ...]]]
    ) -> list[tuple[Any, BaseException | None]]:
        """Run queued ``write``/``claim`` jobs, in order, in one write transaction: one commit
        instead of one each. Each job runs in a savepoint, so a job that fails is rolled back
        alone and the others still apply; callers hear of their results only after the commit.
        If the transaction itself fails (it could not begin or commit, or SQLite rolled it back
        whole), every job fails with that error and none is applied."""
        con = self._con()
        outcomes: list[tuple[Any, BaseException | None]] = []
        try:
            con.execute("BEGIN IMMEDIATE")
            self._order = None
            for _, (fn, *args) in jobs:
                order = self._order
                con.execute("SAVEPOINT plait_job")
                try:
                    outcomes.append((fn(*args), None))
                except Exception as exc:
                    if not con.in_transaction:
                        raise
                    con.execute("ROLLBACK TO plait_job")
                    self._order = order
                    outcomes.append((None, exc))
                con.execute("RELEASE plait_job")
            self._commit(con)
        except BaseException as exc:
            if con.in_transaction:
                con.execute("ROLLBACK")
            return [(None, exc)] * len(jobs)
        finally:
            self._order = None
        return outcomes

    def _returning(self, update: str, params: Sequence[Any], select: str, key: Any) -> Any:
        """The row ``update ... RETURNING`` gives, or None; ``select`` (by ``key``) reads it
        after a plain update on SQLite older than 3.35."""
        con = self._con()
        if self.returning:
            rows = con.execute(f"{update} RETURNING fence, history_len, {RUN_COLS}", params)
            return next(iter(rows.fetchall()), None)
        if not con.execute(update, params).rowcount:
            return None
        return con.execute(select, (key,)).fetchone()

    # -- helpers (inside a write transaction) --------------------------------------------------

    def _next(self) -> int:
        if self._order is None:
            self._order = self._loaded = self._con().execute(LOAD_SEQ).fetchone()[0]
        self._order += 1
        return self._order

    def _preload(self, order: int) -> None:
        """The enqueue counter, read ahead with the commit's run row (saves a statement)."""
        if self._order is None:
            self._order = self._loaded = order

    def _queue(self, run_id: str, ready_at: float) -> None:
        self._con().execute(QUEUE, (ready_at, self._next(), run_id))

    def _deliver(self, d: Delivery | None, now: float) -> None:
        if d is None:
            return
        params = (d.run_id, self._next(), dump_event(d.event), d.run_id)
        if self._con().execute(DELIVER, params).rowcount:
            self._watched = self._watched or d.run_id == self._watch
            self._queue(d.run_id, now)

    def _insert_run(self, record: RunRecord, inbox: Sequence[Event], now: float) -> list[int]:
        """Insert the run with its inbox (queued); the inbox entries' ids."""
        con = self._con()
        con.execute(INSERT_RUN, record_params(record))
        if inbox and not record.closed:
            ids = self._add_inbox(record.run_id, inbox)
            self._queue(record.run_id, now)
            return ids
        return []

    def _add_inbox(self, run_id: str, events: Sequence[Event]) -> list[int]:
        rows = [(run_id, self._next(), dump_event(e)) for e in events]
        self._con().executemany(INSERT_INBOX, rows)
        return [row[1] for row in rows]

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

    def _claimed(self, row: Sequence[Any], known: dict[int, Event] | None = None) -> ClaimedRun:
        """A ``ClaimedRun`` from a claimed row (fence, history_len, RUN_COLS) and its inbox;
        ``known`` events (by inbox id, just written here) are not decoded again."""
        record = record_from_row(row[2:])
        rows = self._con().execute(
            "SELECT id, event FROM plait_inbox WHERE run_id = ? ORDER BY id", (record.run_id,)
        )
        known = known or {}
        inbox = tuple(
            InboxEntry(i, known[i] if i in known else load_event(e)) for i, e in rows.fetchall()
        )
        return ClaimedRun(run=record, lease=row[0], inbox=inbox, history_length=row[1])

    def _next_wf_time(self, now: float) -> float:
        """A lower bound of when a workflow task can next be claimed (see ``earliest``)."""
        return earliest(self._con().execute(SCAN_WF).fetchall(), now)

    def _next_step_time(self, now: float) -> float:
        return earliest(self._con().execute(SCAN_STEPS).fetchall(), now)

    def _next_timer_time(self) -> float:
        until = self._con().execute("SELECT min(fire_at) FROM plait_timers").fetchone()[0]
        return _INF if until is None else float(until)

    # -- runs ----------------------------------------------------------------------------------

    def create_run(self, record: RunRecord, inbox: Sequence[Event], now: float) -> tuple[str, bool]:
        run_id, ids = self._create(record, inbox, now)
        return run_id, ids is not None

    def _create(
        self, record: RunRecord, inbox: Sequence[Event], now: float
    ) -> tuple[str, list[int] | None]:
        """``create_run``: the run's id, and its inbox ids (None when nothing was created)."""
        if record.key is not None:
            holder = self._key_holder(record.key)
            if holder is not None:
                return holder, None
        if self._exists(record.run_id):
            return record.run_id, None
        return record.run_id, self._insert_run(record, inbox, now)

    def create_run_and_claim(
        self, record: RunRecord, inbox: Sequence[Event], now: float, lease_seconds: float
    ) -> tuple[str, bool, ClaimedRun | None]:
        """``create_run``, then the new run's workflow task claimed (its first claim: the
        fence goes from 0 to 1)."""
        run_id, ids = self._create(record, inbox, now)
        if ids is None:
            return run_id, False, None
        self._con().execute(
            "UPDATE plait_runs SET fence = 1, lease_expires = ? WHERE run_id = ?",
            (now + lease_seconds, record.run_id),
        )
        entries = tuple(InboxEntry(i, e) for i, e in zip(ids, inbox, strict=True))
        return record.run_id, True, ClaimedRun(record, 1, entries, 0)

    def create_run_and_commit(
        self, record: RunRecord, c: Commit, queues: Sequence[str]
    ) -> tuple[tuple[str, bool], Readings]:
        """``create_run`` with no inbox, then ``c`` applied to the new run as a forced
        commit (its first: the fence goes from 0 to 1). Readings of ``queues`` only."""
        run_id, ids = self._create(record, (), c.now)
        if ids is None:
            return (run_id, False), {}
        row = self._con().execute(COMMIT_RUN, (run_id, 0)).fetchone()
        rid, status, fence, _, length, more, order = row
        self._preload(order)
        return (run_id, True), self._apply(c, rid, status, fence + 1, length, more, 0, queues)

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
        self, now: float, lease_seconds: float
    ) -> tuple[ClaimedRun | None, Readings]:
        """The claim, and a lower bound of when the next one can be made."""
        con = self._con()
        found = con.execute(NEXT_WF, (now, now)).fetchall()
        if not found:
            return None, {"wf": self._next_wf_time(now)}
        rid = found[0][0]
        select = f"SELECT fence, history_len, {RUN_COLS} FROM plait_runs WHERE id = ?"
        row = self._returning(CLAIM_WF, (now + lease_seconds, rid), select, rid)
        claim = self._claimed(row)
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

    def apply_commit(self, c: Commit) -> tuple[bool, Readings]:
        """Whether it applied, and readings of the queues it may have added work to.

        The run's row is written once: with the commit's fields and its release at the end
        (requeued when its inbox still has entries: ones after ``inbox_upto``, or delivered by
        this commit), or, when closing, at once (a closed run takes no delivery, and its key is
        free for the new runs below)."""
        row = self._con().execute(COMMIT_RUN, (c.run_id, c.inbox_upto)).fetchone()
        if row is None:
            return False, {}
        rid, status, fence, lease_expires, length, more, order = row
        self._preload(order)
        if c.lease is None:
            if status in CLOSED:
                return False, {}
            fence += 1
        elif fence != c.lease or lease_expires is None or status in CLOSED:
            return False, {}
        return True, self._apply(c, rid, status, fence, length, more, c.inbox_upto, _QUEUES)

    def finish_step_and_commit(
        self, run_id: str, seq: int, lease: int, c: Commit, history_length: int, queues: Any
    ) -> tuple[bool, Readings]:
        """The step finished by ``c`` (whose events start with its outcome), when the run is
        quiet: open, ``history_length`` events long, inbox empty, no live lease. Readings are
        taken of ``queues`` only (the ones the commit may add claimable work to)."""
        row = self._con().execute(COMMIT_RUN, (run_id, 0)).fetchone()
        if row is None or c.run_id != run_id:
            return False, {}
        rid, status, fence, lease_expires, length, more, order = row
        self._preload(order)
        if (
            status in CLOSED
            or more
            or length != history_length
            or (lease_expires is not None and lease_expires > c.now)
            or not self._finish(run_id, seq, lease)
        ):
            return False, {}
        return True, self._apply(c, rid, status, fence + 1, length, False, 0, queues)

    def _apply(
        self,
        c: Commit,
        rid: int,
        status: str,
        fence: int,
        length: int,
        more: bool,
        upto: int,
        queues: Sequence[str],
    ) -> Readings:
        """A commit whose fencing passed, on the run row ``rid`` as read (``more``: whether
        its inbox has entries after ``upto``); readings of ``queues`` it may have added to."""
        con = self._con()
        now = c.now
        if c.events:
            length = self._append_events(c.run_id, length, c.events)
        if upto > 0:
            con.execute("DELETE FROM plait_inbox WHERE run_id = ? AND id <= ?", (c.run_id, upto))
        new_status = status if c.status is None else str(c.status)
        closing = new_status in CLOSED
        result = None if c.result is None else encode_json(c.result)
        error = None if c.error is None else encode_json(attrs.asdict(c.error))
        fields = (result, error, c.continued_to, c.block_reason, fence, length)
        if closing:
            con.execute(CLOSE_RUN, (new_status, *fields, now, rid))
        self._watch, self._watched = c.run_id, False
        try:
            self._apply_changes(c, now, closing)
        finally:
            self._watch = None
        requeue = not closing and c.requeue and (more or self._watched)
        if not closing:
            queued = (now, self._next()) if requeue else (None, None)
            if new_status == status:  # an indexed column: leave it out when unchanged
                con.execute(RELEASE_RUN_SAME_STATUS, (*fields, *queued, rid))
            else:
                con.execute(RELEASE_RUN, (new_status, *fields, *queued, rid))
        readings: Readings = {}
        if "wf" in queues:
            readings["wf"] = -_INF if requeue else self._next_wf_time(now)
        if c.steps and "steps" in queues:
            readings["steps"] = self._next_step_time(now)
        if c.timers and "timers" in queues:
            readings["timers"] = self._next_timer_time()
        return readings

    def _apply_changes(self, c: Commit, now: float, closing: bool) -> None:
        """A commit's effects after its record update, in the reference backend's order."""
        con = self._con()
        self._apply_effects(c, now)
        if closing:
            for table in ("plait_hooks", "plait_steps", "plait_timers", "plait_inbox"):
                con.execute(f"DELETE FROM {table} WHERE run_id = ?", (c.run_id,))
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
        self, now: float, limit: int, lease_seconds: float
    ) -> tuple[list[StepTask], Readings]:
        """The claimed tasks, and a lower bound of when the next can be claimed."""
        con = self._con()
        rows = con.execute(NEXT_STEPS, (now, now, limit + 1)).fetchall()
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
        return tasks, {"steps": -_INF if more else self._next_step_time(now)}

    def heartbeat_step(self, run_id: str, seq: int, lease: int, now: float, seconds: float) -> bool:
        cur = self._con().execute(
            "UPDATE plait_steps SET lease_expires = ? WHERE run_id = ? AND seq = ? AND lease = ?",
            (now + seconds, run_id, seq, lease),
        )
        return cur.rowcount > 0

    def _finish(self, run_id: str, seq: int, lease: int) -> bool:
        cur = self._con().execute(
            "DELETE FROM plait_steps WHERE run_id = ? AND seq = ? AND lease = ?",
            (run_id, seq, lease),
        )
        return cur.rowcount > 0

    def finish_step(self, run_id: str, seq: int, lease: int, outcome: Event, now: float) -> bool:
        if not self._finish(run_id, seq, lease):
            return False
        self._deliver(Delivery(run_id, outcome), now)
        return True

    def finish_step_and_claim(
        self, run_id: str, seq: int, lease: int, outcome: Event, now: float, lease_seconds: float
    ) -> tuple[tuple[bool, ClaimedRun | None], Readings]:
        """``finish_step``, then the run's workflow task claimed as ``claim_workflow_task``
        would (queued by the delivery if it was not; claimable when ready at ``now`` and not
        under a live lease), with the reading of the workflow queue after it."""
        if not self._finish(run_id, seq, lease):
            return (False, None), {}
        con = self._con()
        entry = self._next()
        if not con.execute(DELIVER, (run_id, entry, dump_event(outcome), run_id)).rowcount:
            return (True, None), {}  # the run is closed or gone: the outcome is dropped
        order = self._next()
        select = f"SELECT fence, history_len, {RUN_COLS} FROM plait_runs WHERE run_id = ?"
        params = (now + lease_seconds, now, order, run_id, now, now, now)
        row = self._returning(CLAIM_RUN, params, select, run_id)
        if row is None:  # under a live lease (or not ready yet): queue it as finish_step would
            con.execute(QUEUE, (now, order, run_id))
            return (True, None), {"wf": -_INF}
        return (True, self._claimed(row, {entry: outcome})), {"wf": self._next_wf_time(now)}

    def retry_step(self, run_id: str, seq: int, lease: int, attempt: int, ready_at: float) -> bool:
        cur = self._con().execute(
            "UPDATE plait_steps SET attempt = ?, ready_at = ?, lease = 0, lease_expires = NULL, "
            "ord = ? WHERE run_id = ? AND seq = ? AND lease = ?",
            (attempt, ready_at, self._next(), run_id, seq, lease),
        )
        return cur.rowcount > 0

    # -- timers and hooks ----------------------------------------------------------------------

    def fire_due_timers(self, now: float, limit: int) -> tuple[int, Readings]:
        """How many fired, and the earliest fire time left."""
        con = self._con()
        due = con.execute(
            "SELECT run_id, seq FROM plait_timers WHERE fire_at <= ? ORDER BY fire_at, ord LIMIT ?",
            (now, limit),
        ).fetchall()
        if due:
            con.executemany("DELETE FROM plait_timers WHERE run_id = ? AND seq = ?", due)
            for run_id, seq in due:
                self._deliver(Delivery(run_id, TimerFired(seq)), now)
        readings = {"wf": -_INF} if due else {}  # their runs have work now
        readings["timers"] = -_INF if len(due) == limit else self._next_timer_time()
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
