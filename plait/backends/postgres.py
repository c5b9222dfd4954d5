"""PostgreSQL backend (psycopg 3, async): tables and JSONB in one schema, ``FOR UPDATE SKIP
LOCKED`` queues, fencing tokens, and ``LISTEN/NOTIFY`` wake-ups.

``postgresql://user:pw@host:5432/db?schema=plait&pool_min=1&pool_max=10`` (``postgres://`` too).
Needs the ``postgres`` extra (``pip install 'plait[postgres]'``); psycopg is imported only when
a backend is made, so this module imports (and its plugin registers) without it.

Each protocol call is one round trip: one statement or one call of a server-side PL/pgSQL
function (``_pg_sql``), so one transaction. Concurrent calls of the hot kinds (commits, step
results, claims) travel together: while one is in flight the next ones queue and then go in
one round trip and one transaction (group commit, ``_pg_client.Batcher``); a call that goes
alone takes a fast path (``commit1``, ``finish1``, ``spec1``). Semantics follow ``MemoryBackend``
operation by operation, including the optional eager dispatch (``supports_eager``): steps
committed pre-leased, and ``finish_step_and_claim``; and the optional speculative activation
(``supports_speculation``): ``finish_step_and_commit`` finishes a step and applies the commit of
the activation it causes in one transaction, travelling with the commits (group commit); and
the optional eager start (``supports_eager_start``): ``create_run_and_claim`` creates a run with
its workflow task claimed, in one call of ``create_claim``; and the optional start with commit
(``supports_start_commit``): ``create_run_and_commit`` creates a run with its first commit
applied, in one call of ``create_commit``.

Wake-ups: a write that creates ready work sends ``NOTIFY <schema>_work`` (payload: what changed
-- ``w`` workflow tasks, ``s`` steps, ``t`` timers, ``r`` a run record -- and the writer's
origin id) when another backend object is registered as a listener; ``l`` (a run created
already leased: eager start) wakes nobody, it only says the workflow queue's leases moved. Each
backend LISTENs on one dedicated connection, reconnecting when it is lost. While it listens it
remembers that a queue held nothing claimable (and until when), and which run records it read,
and answers claims, ``state()`` and ``get_run()`` from that memory until a local write or a
notification says otherwise. So an idle worker costs almost no queries. A local write whose
effect on a queue is known (a lease released, steps added leased, a run claimed) is applied to
that memory rather than erasing it (``_carry``), so a run going step by step asks nothing but
its commits and step results.
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from ..kernel.codec import event_from_dict, event_to_dict
from ..kernel.events import Event
from ..kernel.status import CLOSED_STATUSES, RunStatus
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
    check_start_commit,
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

    supports_eager = True
    supports_speculation = True
    supports_eager_start = True
    supports_start_commit = True

    def __init__(self, url: str) -> None:
        super().__init__(url)
        # what the server told us about its queues, and the run records we read
        self._gen = dict.fromkeys(_KINDS, 0)  # bumped when what we knew of a queue is lost
        self._seen = dict.fromkeys(_KINDS, 0)  # ... or changed by a local write (see _carry)
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
        self._commits: Batcher[Commit | _Spec, bool] = Batcher(self._flush_commits, 50, self._cut)
        self._finishes: Batcher[_Finish, tuple[bool, ClaimedRun | None]] = Batcher(
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
            "create_claim": f"SELECT actual, created, run::text, inbox::text FROM {s}.create_claim("
            "%s::jsonb, %s::jsonb, %s::float8, %s::float8, %s)",
            "create_commit": "SELECT actual, created, flags, steps_new, steps_gone FROM"
            f" {s}.create_commit(%s::jsonb, %s::jsonb, %s::text[], %s)",
            "get_run": f"SELECT {RUN_COLS} FROM {s}.runs WHERE run_id = %s",
            "history": f"SELECT coalesce(json_agg(event ORDER BY pos), '[]') FROM {s}.history"
            " WHERE run_id = %s",
            "append_history": f"WITH r AS (UPDATE {s}.runs SET history_len = history_len + %s"
            " WHERE run_id = %s RETURNING run_id, history_len - %s AS base)"
            f" INSERT INTO {s}.history (run_id, pos, event)"
            " SELECT r.run_id, r.base + t.o - 1, t.e FROM r,"
            " jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS t(e, o)",
            "append_inbox": f"SELECT {s}.append_inbox(%s, %s::jsonb, %s::float8, %s)",
            # The hot calls return JSON as text, parsed here (cheaper than psycopg's jsonb
            # loader, which decodes and sniffs the encoding of every value).
            "claim_wfs": f"SELECT {s}.claim_wfs2(%s::float8, %s::float8, %s::int4, %s)::text",
            "renew": f"UPDATE {s}.runs SET lease_expires = %s::float8 WHERE run_id = %s"
            " AND fence = %s::int8 AND lease_expires IS NOT NULL",
            "commit_batch2": f"SELECT {s}.commit_batch2(%s::jsonb, %s::text[], %s, %s, %s)::text",
            "commit1": f"SELECT flags, info::text, steps_new, steps_gone FROM {s}.commit1("
            "%s::jsonb, %s, %s)",
            "spec1": f"SELECT flags, info::text, steps_new, steps_gone FROM {s}.spec1("
            "%s::jsonb, %s::int4, %s::int8, %s::int4, %s, %s, %s)",
            "requeue": f"SELECT {s}.requeue(%s, %s::float8, %s)",
            "claim_steps": f"SELECT {s}.claim_steps(%s::float8, %s::int4, %s::float8)",
            "heartbeat": f"UPDATE {s}.steps SET lease_expires = %s::float8 WHERE run_id = %s"
            " AND seq = %s::int4 AND lease = %s::int8",
            "finish_claim": f"SELECT {s}.finish_claim(%s::jsonb, %s::text[], %s, %s)::text",
            "finish1": f"SELECT code, run::text, inbox::text, info::text FROM {s}.finish1(%s,"
            " %s::int4, %s::int8,"
            " %s::jsonb, %s::float8, %s::float8, %s, %s)",
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
        if flags == "l":
            # A run created with its workflow task leased to its creator (eager start): the
            # workflow queue's leased count and next due time moved, nothing became claimable.
            self._invalidate("w")
            return
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
                self._seen[k] += 1

    def _snapshot(self, kind: str) -> tuple[int, int]:
        """Taken before a call whose answer carries queue info, for ``_absorb``."""
        return self._seen[kind], self._epoch

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

    def _absorb(
        self, kind: str, seen: int, epoch: int, now: float, info: Any, write: bool = False
    ) -> None:
        """Keep queue info from the server (``None``: something may be claimable), read by a
        call sent at ``_snapshot`` ``(seen, epoch)``. Info that a local change since may have
        missed is dropped; if the call was a ``write`` whose change is then accounted for
        nowhere, what we knew of the queue goes too. (A claim needs no such care: it only
        leases what was claimable, so it cannot contradict "nothing claimable".)"""
        if seen != self._seen[kind] or epoch != self._epoch:
            if write:
                self._invalidate(kind)
            return
        if info is None:
            self._empty[kind] = None
            return
        nxt, count = info
        until = _INF if nxt is None else float(nxt)
        self._empty[kind] = (
            _Empty(self._gen[kind], epoch, now, until, int(count), time.monotonic())
            if until > now
            else None
        )

    def _trusted(self, kind: str, now: float) -> _Empty | None:
        """What we know of ``kind``'s queue at ``now``, if trusted (see ``_known_empty``)."""
        return self._empty[kind] if self._known_empty(kind, now) else None

    def _carry(self, kind: str, before: _Empty | None, gen: int, leased: int, due: float) -> bool:
        """A local write changed ``kind``'s queue by ``leased`` leased tasks (claimable again
        at ``due``) and made nothing claimable. Apply that to what we knew of the queue when
        the write was sent (``before``, ``_gen`` then ``gen``) if it was not lost since
        (other writes' changes carried over meanwhile commute with this one); False (nothing
        done) otherwise. Calls still in flight may have read the queue before the write:
        their info is dropped (``_absorb``)."""
        if before is None or self._empty[kind] is not before or self._gen[kind] != gen:
            return False
        self._seen[kind] += 1
        before.until = min(before.until, due)
        before.count = max(0, before.count + leased)
        return True

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
        if kept is None or c.error is not None or not _jsonb_stable(c.result):
            return  # read back as stored: JSONB may change how it looks (see _jsonb_stable)
        changes: dict[str, Any] = {"block_reason": c.block_reason}
        if c.result is not None:
            changes["result"] = c.result
        if c.status is not None:
            changes["status"] = c.status
        if c.continued_to is not None:
            changes["continued_to"] = c.continued_to
        rec = kept[0]
        if all(getattr(rec, k) == v for k, v in changes.items()):
            self._records[c.run_id] = kept  # unchanged (a run that stays running)
            return
        rec = attrs.evolve(rec, **changes)
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

    async def create_run_and_claim(
        self, record: RunRecord, inbox: Sequence[Event], now: float, lease_seconds: float
    ) -> tuple[str, bool, ClaimedRun | None]:
        self._waker.unwatch()
        w0, wgen, remote = self._trusted("w", now), self._gen["w"], self._remote_gen
        try:
            actual, created, run, entries = await self._run(
                "create_claim",
                (
                    dumps(rec_doc(record)),
                    dumps([event_to_dict(e) for e in inbox]),
                    now,
                    lease_seconds,
                    self._origin,
                ),
                safe=False,
            )
        except BaseException:
            self._invalidate("w")
            raise
        if not created:
            return actual, False, None  # nothing written
        self._local_gen += 1
        claimed = self._claimed(json.loads(run), json.loads(entries), remote, time.monotonic())
        if self._listening:
            self._keep_record(claimed.run)
        # One more leased task, claimable again when its lease expires (none queued without an
        # inbox). Nobody here is woken: the caller activates the run.
        queued = bool(inbox)
        if not self._carry("w", w0, wgen, int(queued), now + lease_seconds if queued else _INF):
            self._invalidate("w")
        return actual, True, claimed

    async def create_run_and_commit(self, record: RunRecord, commit: Commit) -> tuple[str, bool]:
        """``create_run`` and, when it created the run, ``commit`` applied to it as a forced
        commit, in one call of ``create_commit``. Not retried after a lost connection (like
        every write that is not idempotent): the call raises, and the run may exist."""
        check_start_commit(record, commit)
        self._waker.unwatch()
        c = attrs.evolve(commit, lease=None, inbox_upto=0)
        now = c.now
        s0, sgen = self._trusted("s", now), self._gen["s"]
        locks: set[str] = set()
        commit_locks(c, locks)
        locks.discard(c.run_id)  # not there yet: the call inserts it
        try:
            actual, created, flags, new, gone = await self._run(
                "create_commit",
                (dumps(rec_doc(record)), commit_doc(c, _within_run(c)), sorted(locks))
                + (self._origin,),
                safe=False,
            )
        except BaseException:
            self._commit_failed([c])
            raise
        if not created:
            return actual, False  # nothing written
        flags = flags or ""
        if self._listening:
            self._keep_record(record)
        self._committed(c)  # the kept record updated as a commit updates it
        # What the new run did to the queues. Its workflow task: none queued and no lease
        # held, unless the commit delivered to it ("w", with deliveries elsewhere and new
        # runs). Its steps: new rows; all leased to the caller (eager dispatch) and so none
        # claimable before those leases pass, or we ask again. Its timers: asked again.
        if "w" in flags:
            self._invalidate("w")
        if "t" in flags:
            self._invalidate("t")
        if c.steps or gone or (new is None and (c.status in CLOSED_STATUSES or "s" in flags)):
            own = not c.unleased_steps
            if (
                new is None
                or gone
                or new != len(c.steps)
                or not own
                or not self._carry("s", s0, sgen, new, _due(c.steps, now))
            ):
                self._invalidate("s")
        if _wakes(c, flags):
            self._waker.notify()
        return actual, True

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
        sgen = self._seen["s"]
        remote = self._remote_gen
        sinfo = self._trusted("s", now) is None  # also learn about steps (claimed next)
        row = await self._run("claim_wfs", (now, secs, len(want), sinfo), safe=True)
        claims, info, steps = json.loads(row[0])
        self._absorb("w", gen, epoch, now, info)
        if sinfo:
            self._absorb("s", sgen, epoch, now, steps)
        born = time.monotonic()
        for i, (run, inbox) in zip(want, claims, strict=False):
            out[i] = self._claimed(run, inbox, remote, born)
        return out

    def _claimed(self, run: list[Any], inbox: list[Any], remote: int, born: float) -> ClaimedRun:
        """A ``ClaimedRun`` from a claim's ``[RUN_COLS..., fence, history_len, has children]``
        and inbox ``[[id, event]...]``; remembers what the claim told about the run."""
        claimed = ClaimedRun(
            run=rec_from_row(run),
            lease=int(run[14]),
            inbox=tuple(InboxEntry(int(n), event_from_dict(e)) for n, e in inbox),
            history_length=int(run[15]),
        )
        run_id = claimed.run.run_id
        # Facts from an earlier claim of this run are stale now (its lease was lost).
        self._fresh.pop(run_id, None)
        self._childless.pop(run_id, None)
        if self._listening:
            if claimed.history_length == 0:
                _bounded_put(self._fresh, run_id, (remote, born))
            if not run[16]:
                _bounded_put(self._childless, run_id, (remote, born))
        return claimed

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

    async def finish_step_and_commit(
        self, run_id: str, seq: int, lease: int, commit: Commit, history_length: int
    ) -> bool:
        self._waker.unwatch()
        if commit.run_id != run_id:
            return False
        applied = attrs.evolve(commit, lease=None, inbox_upto=0)
        return await self._commits(_Spec(applied, seq, lease, history_length))

    async def _flush_commits(self, items: list[Commit | _Spec]) -> list[bool]:
        # The server's answer tells how each commit changed the queues, so what we knew of
        # them is carried over (see ``_carry``) rather than asked for again. A speculation
        # (``_Spec``) is a commit that also finished a leased step.
        specs = [it if isinstance(it, _Spec) else None for it in items]
        commits = [it.commit if isinstance(it, _Spec) else it for it in items]
        lo, hi = min(c.now for c in commits), max(c.now for c in commits)
        w0 = self._trusted("w", lo) and self._trusted("w", hi)
        s0 = self._trusted("s", lo) and self._trusted("s", hi)
        (wseen, epoch), wgen, sgen = self._snapshot("w"), self._gen["w"], self._gen["s"]
        sseen = self._seen["s"]
        # A batch means concurrent calls, which may leave nothing to carry over: always ask.
        ask = w0 is None or len(items) > 1
        sask = any(specs) and (s0 is None or len(items) > 1)
        sinfo = None
        own = [
            _within_run(c) and (sp is None or sp.own) for c, sp in zip(commits, specs, strict=True)
        ]
        try:
            if len(items) == 1 and own[0]:
                sp = specs[0]
                if sp is None:
                    flags, info, new, gone = await self._run(
                        "commit1", (commit_doc(commits[0]), self._origin, ask), safe=False
                    )
                    info = _loads(info)
                else:
                    flags, infos, new, gone = await self._run(
                        "spec1",
                        (commit_doc(sp.commit), sp.seq, sp.lease, sp.length)
                        + (self._origin, ask, sask),
                        safe=False,
                    )
                    info, sinfo = _loads(infos) or (None, None)
                results = [None if flags is None else [flags, new, gone]]
            else:
                locks: set[str] = set()
                for c in commits:
                    commit_locks(c, locks)
                docs = (
                    "["
                    + ",".join(
                        commit_doc(c, o, None if sp is None else sp.key)
                        for c, sp, o in zip(commits, specs, own, strict=True)
                    )
                    + "]"
                )
                row = await self._run(
                    "commit_batch2", (docs, sorted(locks), self._origin, ask, sask), safe=False
                )
                results, info, sinfo = json.loads(row[0])
        except BaseException:
            self._commit_failed(commits)
            raise
        out = []
        wake = False
        w_carry, w_delta = True, 0
        s_touched, s_carry, s_delta, s_due = False, True, 0, _INF
        for c, sp, r in zip(commits, specs, results, strict=True):
            if r is None:
                # fenced out (the lease is lost), or a speculation refused: nothing applied
                out.append(False)
                self._fresh.pop(c.run_id, None)
                self._childless.pop(c.run_id, None)
                continue
            flags, new, gone = r
            self._committed(c)
            out.append(True)
            wake = wake or _wakes(c, flags)
            if "t" in flags:
                self._invalidate("t")
            # Its workflow task: the lease we held (so counted) released; "w": a workflow
            # task queued (its own or another run's), claimable. A speculation held no lease
            # and found the run's task not leased; "q": it was queued, and is dropped.
            if sp is not None:
                if "w" in flags or "q" in flags:
                    w_carry = False
            elif "w" in flags or c.lease is None:
                w_carry = False
            else:
                w_delta -= 1
            # Its steps: new rows, all leased to us (eager dispatch), claimable when that
            # lease (or a later ready time) passes. Anything else (an unleased step, a
            # replaced or dropped row, a commit of the general path) and we ask again. A
            # speculation also deleted the leased step it finished.
            if sp is not None:
                s_touched = True
                s_delta -= 1
            closing = c.status in CLOSED_STATUSES
            if c.steps or gone or (new is None and (closing or "s" in flags)):
                s_touched = True
                own = not c.unleased_steps
                if new is None or gone or new != len(c.steps) or not own:
                    s_carry = False
                else:
                    s_delta += new
                    s_due = min(s_due, _due(c.steps, c.now))
        if not any(out):  # nothing applied
            if ask:
                self._absorb("w", wseen, epoch, hi, info)
        elif not (w_carry and self._carry("w", w0, wgen, w_delta, _INF)):
            if ask:
                self._absorb("w", wseen, epoch, hi, info, write=True)
            else:
                self._invalidate("w")
        if s_touched:
            if not (s_carry and self._carry("s", s0, sgen, s_delta, s_due)):
                if sask:
                    self._absorb("s", sseen, epoch, hi, sinfo, write=True)
                else:
                    self._invalidate("s")
        elif sask:
            self._absorb("s", sseen, epoch, hi, sinfo)
        if wake:
            self._waker.notify()
        return out

    def _commit_failed(self, commits: list[Commit]) -> None:
        """A commit call failed (its outcome unknown): forget what it may have changed."""
        self._invalidate(*_KINDS)
        self._local_gen += 1
        for c in commits:
            self._records.pop(c.run_id, None)
            self._fresh.pop(c.run_id, None)
            self._childless.pop(c.run_id, None)
            self._waker.notify_run(c.run_id)

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
        done, _ = await self._finishes(_Finish(run_id, seq, lease, outcome, now, None))
        return done

    async def finish_step_and_claim(
        self, run_id: str, seq: int, lease: int, outcome: Event, now: float, lease_seconds: float
    ) -> tuple[bool, ClaimedRun | None]:
        self._waker.unwatch()
        return await self._finishes(_Finish(run_id, seq, lease, outcome, now, lease_seconds))

    async def _flush_finishes(self, items: list[_Finish]) -> list[tuple[bool, ClaimedRun | None]]:
        # As in _flush_commits: what a step result does to the queues (a leased step gone,
        # maybe its run's task queued and leased to us) is carried over into what we knew.
        lo, hi = min(f.now for f in items), max(f.now for f in items)
        s0 = self._trusted("s", lo) and self._trusted("s", hi)
        w0 = self._trusted("w", lo) and self._trusted("w", hi)
        (sseen, epoch), sgen, wgen = self._snapshot("s"), self._gen["s"], self._gen["w"]
        remote = self._remote_gen
        ask = s0 is None or len(items) > 1  # as in _flush_commits
        try:
            if len(items) == 1:
                f = items[0]
                code, run, inbox, info = await self._run(
                    "finish1",
                    (
                        f.run_id,
                        f.seq,
                        f.lease,
                        dumps(event_to_dict(f.outcome)),
                        f.now,
                        f.claim,
                        self._origin,
                        ask,
                    ),
                    safe=False,
                )
                results = [code if run is None else [code, json.loads(run), json.loads(inbox)]]
                info = _loads(info)
            else:
                payload = dumps(
                    [
                        [f.run_id, f.seq, f.lease, event_to_dict(f.outcome), f.now, f.claim]
                        for f in items
                    ]
                )
                locks = sorted({f.run_id for f in items})
                row = await self._run(
                    "finish_claim", (payload, locks, self._origin, ask), safe=False
                )
                results, info = json.loads(row[0])
        except BaseException:
            self._invalidate(*_KINDS)
            raise
        out: list[tuple[bool, ClaimedRun | None]] = []
        born = time.monotonic()
        done = claimed = 0
        due = _INF
        wake = False
        for f, r in zip(items, results, strict=True):
            if isinstance(r, list):  # finished, and claimed the run's workflow task
                _, run, inbox = r
                done += 1
                claimed += 1
                due = min(due, f.now + (f.claim or 0.0))
                out.append((True, self._claimed(run, inbox, remote, born)))
            else:
                # 2: a workflow task was queued, claimable. Local claimers are woken only for
                # it: a run claimed here is activated by the caller, and a delivery to a run
                # whose task is queued or leased already makes no new work.
                done += bool(r)
                wake = wake or r == 2
                out.append((bool(r), None))
        if not (done and self._carry("s", s0, sgen, -done, _INF)):
            if ask:
                self._absorb("s", sseen, epoch, hi, info, write=bool(done))
            elif done:
                self._invalidate("s")
        if wake or (claimed and not self._carry("w", w0, wgen, claimed, due)):
            self._invalidate("w")
        if wake:
            self._waker.notify()
        return out

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


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _jsonb_stable(value: Any) -> bool:
    """Whether ``value`` reads back from JSONB exactly as it is. Not so for objects (JSONB
    sorts their keys) or floats (``1e16`` comes back as an integer)."""
    if value is None or isinstance(value, bool | int):
        return True
    if isinstance(value, str):
        return "\x00" not in value
    if isinstance(value, list):
        return all(_jsonb_stable(v) for v in value)
    return False


def _within_run(c: Commit) -> bool:
    """Whether ``c`` writes to no run but its own (the server's ``commit1`` fast path)."""
    return not (
        c.timers
        or c.cancel_timers
        or c.hooks
        or c.dispose_hooks
        or c.new_runs
        or c.hook_resumes
        or c.deliveries
    )


def _wakes(c: Commit, flags: str) -> bool:
    """Whether a commit made work local claimers may take (or a timer to wait for): steps
    leased to the committer (eager dispatch) are its own to run."""
    return "w" in flags or "t" in flags or c.unleased_steps


def _due(steps: Sequence[StepTask], now: float) -> float:
    """The earliest time one of these leased steps may become claimable."""
    return min(
        (st.ready_at if st.ready_at > now else st.lease_expires or _INF for st in steps),
        default=_INF,
    )


@attrs.frozen
class _Finish:
    """A step result to deliver; ``claim``: lease seconds to claim the run's workflow task
    with afterwards (``finish_step_and_claim``), or None."""

    run_id: str
    seq: int
    lease: int
    outcome: Event
    now: float
    claim: float | None


@attrs.frozen
class _Spec:
    """A speculative activation (``finish_step_and_commit``): step ``seq`` held with ``lease``
    finished and ``commit`` (as applied: no lease, ``inbox_upto`` 0) applied, if the run's
    history is ``length`` events long and the run is quiet."""

    commit: Commit
    seq: int
    lease: int
    length: int

    @property
    def key(self) -> tuple[int, int, int]:
        return self.seq, self.lease, self.length

    @property
    def own(self) -> bool:
        """Whether the server's ``spec_run`` may apply it, if its commit stays within its run:
        ``spec_run`` deletes the finished step's row and inserts the commit's steps in one
        statement, so the commit must not schedule a step of the same seq."""
        return all(st.seq != self.seq for st in self.commit.steps)


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
