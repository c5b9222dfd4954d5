"""PostgreSQL backend (psycopg 3, async): tables and JSONB in one schema, ``FOR UPDATE SKIP
LOCKED`` queues, fencing tokens, and ``LISTEN/NOTIFY`` wake-ups.

``postgresql://user:pw@host:5432/db?schema=plait&pool_min=1&pool_max=10`` (``postgres://`` too).
Needs the ``postgres`` extra (``pip install 'plait[postgres]'``); psycopg is imported only when
a backend is made, so this module imports (and its plugin registers) without it.

Each protocol call is one round trip: one statement or one call of a server-side PL/pgSQL
function (``_pg_schema``), so one transaction. Concurrent calls of the hot kinds (commits, step
results, claims) travel together: while one is in flight the next ones queue and then go in
one round trip and one transaction (group commit, ``_pg_client.Batcher``). Semantics follow
``MemoryBackend`` operation by operation.

Wake-ups: a write that creates ready work sends ``NOTIFY <schema>_work`` (payload: what changed
-- ``w`` workflow tasks, ``s`` steps, ``t`` timers, ``r`` a run record -- and the writer's
origin id) when another backend object is registered as a listener. Each backend LISTENs on one
dedicated connection, reconnecting when it is lost. While it listens it remembers that a queue
held nothing claimable (and until when), and which run records it read, and answers claims,
``state()`` and ``get_run()`` from that memory until a local write or a notification says
otherwise. So an idle worker costs almost no queries.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from ..kernel.codec import event_from_dict, event_to_dict
from ..kernel.events import Event
from ..kernel.status import RunStatus
from . import _pg_schema as schema_mod
from ._pg_client import (
    MISSING_EXTRA,
    RUN_COLS,
    Batcher,
    commit_doc,
    commit_locks,
    dumps,
    import_psycopg,
    rec_doc,
    rec_from_row,
)
from ._pg_conn import PgConnections
from .base import (
    BackendState,
    ClaimedRun,
    Commit,
    InboxEntry,
    RunRecord,
    StepTask,
)

__all__ = ["PostgresBackend", "PostgresBackendPlugin", "MISSING_EXTRA"]

log = logging.getLogger("plait.backends.postgres")

_KINDS = ("w", "s", "t")
_INF = float("inf")
_RECORDS = 10_000  # run records kept in memory
_BATCH = 200  # most calls of one kind per round trip
# How long (real seconds) "nothing claimable" or a run record learnt from the server is trusted
# without asking again, even with no notification: a safety net should the LISTEN connection
# die silently (TCP keepalives notice within ~25 s). An idle worker asks ~3 queries per period.
_TRUST_SECONDS = 10.0


@attrs.define
class _Empty:
    """A queue seen with nothing claimable at ``since``: still so before ``until`` unless a
    change was announced (local write or NOTIFY) after the query that saw it started.
    ``count``: leased tasks (timers: how many exist, -1 for many) at that time."""

    gen: int
    epoch: int
    since: float
    until: float
    count: int
    born: float  # time.monotonic() when learnt


class PostgresBackend(PgConnections):
    """``postgresql://`` / ``postgres://``: see the module docstring."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        # what the server told us about its queues, and the run records we read
        self._gen = dict.fromkeys(_KINDS, 0)
        self._empty: dict[str, _Empty | None] = dict.fromkeys(_KINDS)
        self._records: OrderedDict[str, tuple[RunRecord, float]] = OrderedDict()
        self._local_gen = 0  # bumped by each local commit
        self._remote_gen = 0  # bumped by each notification from elsewhere
        # Facts about runs this object holds the lease of, learnt when claiming them: a run
        # claimed with an empty history (its history is read right after, to replay), and
        # runs without children (listed when they close, for parent-close policies).
        self._fresh: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._childless: OrderedDict[str, tuple[int, float]] = OrderedDict()
        # group commit
        self._commits: Batcher[Commit, bool] = Batcher(self._flush_commits, 50, self._cut)
        self._finishes: Batcher[tuple[Any, ...], bool] = Batcher(
            self._flush_finishes, _BATCH, self._cut
        )
        self._wf_claims: Batcher[tuple[float, float], ClaimedRun | None] = Batcher(
            self._flush_wf_claims, _BATCH, self._cut
        )
        self._step_claims: Batcher[tuple[float, int, float], list[StepTask]] = Batcher(
            self._flush_step_claims, _BATCH, self._cut
        )
        self._sql = self._statements()

    @classmethod
    def from_url(cls, url: str) -> PostgresBackend:
        import_psycopg()
        return cls(url)

    def __repr__(self) -> str:
        return f"<PostgresBackend {schema_mod.redact(self.url)}>"

    def _statements(self) -> dict[str, str]:
        s = self._s
        return {
            "create_run": f"SELECT {s}.create_run(%s::jsonb, %s::jsonb, %s::float8, %s)",
            "get_run": f"SELECT {RUN_COLS} FROM {s}.runs WHERE run_id = %s",
            "history": f"SELECT coalesce(json_agg(event ORDER BY pos), '[]') FROM {s}.history"
            " WHERE run_id = %s",
            "append_history": f"WITH r AS (UPDATE {s}.runs SET history_len = history_len + %s"
            " WHERE run_id = %s RETURNING run_id, history_len - %s AS base)"
            f" INSERT INTO {s}.history (run_id, pos, event)"
            " SELECT r.run_id, r.base + t.o - 1, t.e FROM r,"
            " jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS t(e, o)",
            "append_inbox": f"SELECT {s}.append_inbox(%s, %s::jsonb, %s::float8, %s)",
            "claim_wfs": f"SELECT {s}.claim_wfs(%s::float8, %s::float8, %s::int4)",
            "renew": f"UPDATE {s}.runs SET lease_expires = %s::float8 WHERE run_id = %s"
            " AND fence = %s::int8 AND lease_expires IS NOT NULL",
            "commits": f"SELECT {s}.apply_commits(%s::jsonb, %s::text[], %s)",
            "requeue": f"SELECT {s}.requeue(%s, %s::float8, %s)",
            "claim_steps": f"SELECT {s}.claim_steps(%s::float8, %s::int4, %s::float8)",
            "heartbeat": f"UPDATE {s}.steps SET lease_expires = %s::float8 WHERE run_id = %s"
            " AND seq = %s::int4 AND lease = %s::int8",
            "finish_steps": f"SELECT {s}.finish_steps(%s::jsonb, %s::text[], %s)",
            "retry_step": f"SELECT {s}.retry_step(%s, %s::int4, %s::int8, %s::int4, %s::float8,"
            " %s)",
            "fire_timers": f"SELECT {s}.fire_timers(%s::float8, %s::int4, %s)",
            "resume_hook": f"SELECT {s}.resume_hook(%s, %s::jsonb, %s::float8, %s)",
            "state": f"SELECT {s}.state(%s::float8)",
        }

    # -- what we know without asking -----------------------------------------------------------
    def _on_notify(self, payload: str) -> None:
        flags, _, origin = payload.partition(":")
        if origin == self._origin:
            return  # our own write: accounted for locally already
        self._invalidate(*(flags or _KINDS))
        if "r" in flags:
            self._invalidate("w")  # a lease was released: counts and due times moved
        self._remote_gen += 1
        self._records.clear()
        self._waker.notify_all()

    def _forget(self) -> None:
        self._invalidate(*_KINDS)
        self._records.clear()

    def _invalidate(self, *kinds: str) -> None:
        for k in kinds:
            if k in self._gen:
                self._gen[k] += 1

    def _snapshot(self, kind: str) -> tuple[int, int]:
        return self._gen[kind], self._epoch

    def _known_empty(self, kind: str, now: float) -> bool:
        e = self._empty[kind]
        return (
            e is not None
            and self._listening
            and e.gen == self._gen[kind]
            and e.epoch == self._epoch
            and e.since <= now < e.until
            and time.monotonic() - e.born < _TRUST_SECONDS
        )

    def _absorb(self, kind: str, gen: int, epoch: int, now: float, info: Any) -> None:
        """Keep queue info from the server (``None``: something may be claimable)."""
        if info is None:
            self._empty[kind] = None
            return
        nxt, count = info
        until = _INF if nxt is None else float(nxt)
        self._empty[kind] = (
            _Empty(gen, epoch, now, until, int(count), time.monotonic()) if until > now else None
        )

    def _keep_record(self, rec: RunRecord, born: float | None = None) -> None:
        self._records[rec.run_id] = (rec, time.monotonic() if born is None else born)
        if len(self._records) > _RECORDS:
            self._records.popitem(last=False)

    def _committed(self, c: Commit) -> None:
        """Apply a local commit to the kept record, as ``MemoryBackend`` changes its own."""
        self._local_gen += 1
        self._waker.notify_run(c.run_id)
        self._fresh.pop(c.run_id, None)
        if any(nr.record.parent_run_id == c.run_id for nr in c.new_runs):
            self._childless.pop(c.run_id, None)
        kept = self._records.pop(c.run_id, None)
        if kept is None or c.result is not None or c.error is not None:
            return  # results and errors are read back as stored (JSONB)
        changes: dict[str, Any] = {"block_reason": c.block_reason}
        if c.status is not None:
            changes["status"] = c.status
        if c.continued_to is not None:
            changes["continued_to"] = c.continued_to
        rec = attrs.evolve(kept[0], **changes)
        if rec.closed:
            rec = attrs.evolve(rec, closed_at=c.now)
        self._keep_record(rec, kept[1])

    # -- runs ----------------------------------------------------------------------------------

    async def create_run(
        self, record: RunRecord, inbox: Sequence[Event], now: float
    ) -> tuple[str, bool]:
        self._waker.unwatch()
        try:
            row = await self._run(
                "create_run",
                (
                    dumps(rec_doc(record)),
                    dumps([event_to_dict(e) for e in inbox]),
                    now,
                    self._origin,
                ),
                safe=False,
            )
        finally:
            self._invalidate("w")
        run_id, created, _queued = row[0]
        if created:
            self._local_gen += 1
            if self._listening:
                self._keep_record(record)
            self._waker.notify()
        return run_id, bool(created)

    async def get_run(self, run_id: str) -> RunRecord | None:
        waker = self._waker
        gens = (waker.run_gen(run_id), waker.all_gen)  # before reading: no change is missed
        kept = self._records.get(run_id)
        rec: RunRecord | None = None
        if kept is not None and self._listening:
            if time.monotonic() - kept[1] < _TRUST_SECONDS:
                self._records.move_to_end(run_id)
                rec = kept[0]
            else:
                del self._records[run_id]
        if rec is None:
            marks = (self._local_gen, self._remote_gen, self._epoch)
            row = await self._run("get_run", (run_id,), safe=True)
            if row is not None:
                rec = rec_from_row(row)
                if self._listening and marks == (self._local_gen, self._remote_gen, self._epoch):
                    self._keep_record(rec)
        if rec is not None and not rec.closed:
            waker.watch(run_id, *gens)  # a wait() next waits for this run (RunHandle.result)
        else:
            waker.unwatch()
        return rec

    async def list_runs(
        self,
        *,
        status: RunStatus | None = None,
        workflow: str | None = None,
        parent: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[RunRecord]:
        self._waker.unwatch()
        if (
            parent is not None
            and status is None
            and workflow is None
            and offset == 0
            and self._known(self._childless, parent)
        ):
            return []  # a run we hold the lease of, which never started a child
        where: list[str] = []
        params: list[Any] = []
        if status is not None:
            where.append("status = %s")
            params.append(RunStatus(status).value)
        if workflow is not None:
            where.append("workflow = %s")
            params.append(workflow)
        if parent is not None:
            where.append("parent_run_id = %s")
            params.append(parent)
        key = "list:" + ",".join(w.split(" ")[0] for w in where)
        if key not in self._sql:
            cond = (" WHERE " + " AND ".join(where)) if where else ""
            self._sql[key] = (
                f"SELECT {RUN_COLS} FROM {self._s}.runs{cond}"
                " ORDER BY created_seq LIMIT %s OFFSET %s"
            )
        params += [max(0, limit), max(0, offset)]
        got = await self._run(key, params, safe=True, rows=True)
        return [rec_from_row(r) for r in got]

    async def read_history(self, run_id: str) -> list[Event]:
        self._waker.unwatch()
        if self._known(self._fresh, run_id):
            return []  # claimed just now with an empty history, by us
        row = await self._run("history", (run_id,), safe=True)
        return [event_from_dict(d) for d in row[0]]

    async def append_history(self, run_id: str, events: Sequence[Event]) -> None:
        self._waker.unwatch()
        if not events:
            return
        self._fresh.pop(run_id, None)
        n = len(events)
        await self._run(
            "append_history",
            (n, run_id, n, dumps([event_to_dict(e) for e in events])),
            safe=False,
            dml=True,
        )

    async def append_inbox(self, run_id: str, events: Sequence[Event], now: float) -> bool:
        self._waker.unwatch()
        try:
            row = await self._run(
                "append_inbox",
                (run_id, dumps([event_to_dict(e) for e in events]), now, self._origin),
                safe=False,
            )
        finally:
            self._invalidate("w")
        if row[0]:
            self._waker.notify()
        return bool(row[0])

    # -- workflow tasks ------------------------------------------------------------------------

    async def claim_workflow_task(self, now: float, lease_seconds: float) -> ClaimedRun | None:
        self._waker.unwatch()
        if self._known_empty("w", now):
            return None
        return await self._wf_claims((now, lease_seconds))

    async def _flush_wf_claims(self, items: list[tuple[float, float]]) -> list[ClaimedRun | None]:
        out: list[ClaimedRun | None] = [None] * len(items)
        # A claim queued behind one that found the queue empty is answered without asking.
        want = [i for i, (now, _) in enumerate(items) if not self._known_empty("w", now)]
        if not want:
            return out
        now = min(items[i][0] for i in want)
        secs = min(items[i][1] for i in want)
        gen, epoch = self._snapshot("w")
        remote = self._remote_gen
        row = await self._run("claim_wfs", (now, secs, len(want)), safe=True)
        claims, info = row[0]
        self._absorb("w", gen, epoch, now, info)
        born = time.monotonic()
        for i, (run, inbox) in zip(want, claims, strict=False):
            claimed = ClaimedRun(
                run=rec_from_row(run),
                lease=int(run[14]),
                inbox=tuple(InboxEntry(int(n), event_from_dict(e)) for n, e in inbox),
                history_length=int(run[15]),
            )
            out[i] = claimed
            if self._listening:
                run_id = claimed.run.run_id
                if claimed.history_length == 0:
                    _bounded_put(self._fresh, run_id, (remote, born))
                if not run[16]:
                    _bounded_put(self._childless, run_id, (remote, born))
        return out

    def _known(self, facts: OrderedDict[str, tuple[int, float]], run_id: str) -> bool:
        fact = facts.pop(run_id, None)
        return (
            fact is not None
            and self._listening
            and fact[0] == self._remote_gen
            and time.monotonic() - fact[1] < _TRUST_SECONDS
        )

    async def renew_workflow_lease(
        self, run_id: str, lease: int, now: float, seconds: float
    ) -> bool:
        self._waker.unwatch()
        try:
            n = await self._run("renew", (now + seconds, run_id, lease), safe=True, dml=True)
        finally:
            self._invalidate("w")  # a lease expiry moved
        return bool(n)

    async def requeue_workflow_task(self, run_id: str, now: float) -> bool:
        self._waker.unwatch()
        try:
            row = await self._run("requeue", (run_id, now, self._origin), safe=True)
        finally:
            self._invalidate("w")
        if row[0]:
            self._waker.notify()
        return bool(row[0])

    async def apply_commit(self, commit: Commit) -> bool:
        self._waker.unwatch()
        return await self._commits(commit)

    async def _flush_commits(self, commits: list[Commit]) -> list[bool]:
        locks: set[str] = set()
        for c in commits:
            commit_locks(c, locks)
        docs = "[" + ",".join(commit_doc(c) for c in commits) + "]"
        gen, epoch = self._snapshot("w")
        try:
            row = await self._run("commits", (docs, sorted(locks), self._origin), safe=False)
        except BaseException:
            self._invalidate(*_KINDS)
            self._local_gen += 1
            for c in commits:
                self._records.pop(c.run_id, None)
                self._fresh.pop(c.run_id, None)
                self._childless.pop(c.run_id, None)
                self._waker.notify_run(c.run_id)
            raise
        results, info = row[0]
        out = []
        for c, flags in zip(commits, results, strict=True):
            if flags is None:
                out.append(False)  # fenced out: nothing of it applied
                continue
            self._committed(c)
            self._invalidate(*flags)
            out.append(True)
        self._absorb("w", gen, epoch, max(c.now for c in commits), info)
        if any(out):
            self._waker.notify()
        return out

    # -- steps ---------------------------------------------------------------------------------

    async def claim_step_tasks(
        self, now: float, limit: int, lease_seconds: float
    ) -> list[StepTask]:
        self._waker.unwatch()
        if limit <= 0 or self._known_empty("s", now):
            return []
        return await self._step_claims((now, limit, lease_seconds))

    async def _flush_step_claims(
        self, items: list[tuple[float, int, float]]
    ) -> list[list[StepTask]]:
        out: list[list[StepTask]] = [[] for _ in items]
        want = [i for i, (now, _, _) in enumerate(items) if not self._known_empty("s", now)]
        if not want:
            return out
        now = min(items[i][0] for i in want)
        secs = min(items[i][2] for i in want)
        total = sum(items[i][1] for i in want)
        gen, epoch = self._snapshot("s")
        row = await self._run("claim_steps", (now, total, secs), safe=True)
        tasks, info = row[0]
        self._absorb("s", gen, epoch, now, info)
        got = iter(tasks)
        for i in want:
            for t in got:
                out[i].append(
                    StepTask(
                        run_id=t[0],
                        seq=int(t[1]),
                        name=t[2],
                        args=t[3],
                        attempt=int(t[4]),
                        ready_at=float(t[5]),
                        lease=int(t[6]),
                    )
                )
                if len(out[i]) == items[i][1]:
                    break
        return out

    async def heartbeat_step(
        self, run_id: str, seq: int, lease: int, now: float, seconds: float
    ) -> bool:
        self._waker.unwatch()
        try:
            n = await self._run(
                "heartbeat", (now + seconds, run_id, seq, lease), safe=True, dml=True
            )
        finally:
            self._invalidate("s")  # a lease expiry moved
        return bool(n)

    async def finish_step(
        self, run_id: str, seq: int, lease: int, outcome: Event, now: float
    ) -> bool:
        self._waker.unwatch()
        return await self._finishes((run_id, seq, lease, outcome, now))

    async def _flush_finishes(self, items: list[tuple[Any, ...]]) -> list[bool]:
        payload = dumps([[r, s, lease, event_to_dict(o), now] for r, s, lease, o, now in items])
        locks = sorted({item[0] for item in items})
        gen, epoch = self._snapshot("s")
        try:
            row = await self._run("finish_steps", (payload, locks, self._origin), safe=False)
        except BaseException:
            self._invalidate(*_KINDS)
            raise
        done, info = row[0]
        if 2 in done:
            self._invalidate("w")
        self._absorb("s", gen, epoch, max(item[4] for item in items), info)
        if any(done):
            self._waker.notify()
        return [bool(d) for d in done]

    async def retry_step(
        self, run_id: str, seq: int, lease: int, attempt: int, ready_at: float
    ) -> bool:
        self._waker.unwatch()
        try:
            row = await self._run(
                "retry_step", (run_id, seq, lease, attempt, ready_at, self._origin), safe=False
            )
        finally:
            self._invalidate("s")
        if row[0]:
            self._waker.notify()
        return bool(row[0])

    # -- timers and hooks ----------------------------------------------------------------------

    async def fire_due_timers(self, now: float, limit: int = 1000) -> int:
        self._waker.unwatch()
        self._waker.mark()
        if limit <= 0 or self._known_empty("t", now):
            return 0
        gen, epoch = self._snapshot("t")
        row = await self._run("fire_timers", (now, limit, self._origin), safe=True)
        fired, queued, info = row[0]
        self._absorb("t", gen, epoch, now, info)
        if queued:
            self._invalidate("w")
        if fired:
            self._waker.notify()
        return int(fired)

    async def resume_hook(self, token: str, payload: Any, now: float) -> str | None:
        self._waker.unwatch()
        try:
            row = await self._run(
                "resume_hook", (token, dumps(payload), now, self._origin), safe=False
            )
        finally:
            self._invalidate("w")
        self._waker.notify()
        return row[0]  # type: ignore[no-any-return]

    # -- idle detection ------------------------------------------------------------------------

    async def state(self, now: float) -> BackendState:
        self._waker.unwatch()
        if all(self._known_empty(k, now) for k in _KINDS):
            # Nothing claimable anywhere and nothing changed since we looked: no round trip.
            w, s, t = (self._empty[k] for k in _KINDS)
            assert w is not None and s is not None and t is not None
            if t.count >= 0:  # -1: too many timers to count on every fire_due_timers
                due = min(w.until, s.until, t.until)
                return BackendState(0, w.count, 0, s.count, t.count, None if due == _INF else due)
        snaps = {k: self._snapshot(k) for k in _KINDS}
        row = await self._run("state", (now,), safe=True)
        w_ready, w_leased, w_due, s_ready, s_leased, s_due, timers, t_due_now, t_next = row[0]
        if not w_ready:
            self._absorb("w", *snaps["w"], now, (w_due, w_leased))
        if not s_ready:
            self._absorb("s", *snaps["s"], now, (s_due, s_leased))
        if not t_due_now:
            self._absorb("t", *snaps["t"], now, (t_next, timers))
        dues = [d for d in (w_due, s_due, t_next) if d is not None]
        return BackendState(
            ready_workflow_tasks=int(w_ready),
            leased_workflow_tasks=int(w_leased),
            ready_steps=int(s_ready),
            leased_steps=int(s_leased),
            timers=int(timers),
            next_due=float(min(dues)) if dues else None,
        )

    def notify(self) -> None:
        # A change made elsewhere in this process (a worker slot freed, virtual time moved):
        # wake every waiter but those watching one run's record, which only a write through a
        # backend changes (here: notify_run; elsewhere: a server notification, notify_all).
        self._waker.notify()

    async def wait(self, timeout: float) -> None:
        await self._waker.wait(timeout)


def _bounded_put(d: OrderedDict[str, Any], key: str, value: Any, size: int = _RECORDS) -> None:
    d[key] = value
    d.move_to_end(key)
    if len(d) > size:
        d.popitem(last=False)


class PostgresBackendPlugin:
    """Registers ``postgresql://`` and ``postgres://`` through the entry-point group ``plait``."""

    from ..plugins.hookspecs import hookimpl as _hookimpl

    @staticmethod
    @_hookimpl
    def plait_backend_schemes() -> dict[str, Callable[[str], Any]]:
        return {
            "postgresql": PostgresBackend.from_url,
            "postgres": PostgresBackend.from_url,
        }
