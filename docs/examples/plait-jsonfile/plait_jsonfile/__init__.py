"""``jsonfile:///abs/dir``: a plait backend keeping all state in JSON files in ``dir``.

Every operation is one read-modify-write of ``dir/state.json`` under an ``fcntl.flock`` on
``dir/lock`` (shared for reads, exclusive for writes), run on a worker thread. The lock makes
each operation atomic against every other thread and process using the directory, so leases,
fencing, key and token uniqueness and exactly-once step results hold across processes.

``state.json`` is replaced atomically (write a temporary file, ``os.replace``): that replace is
the commit point of every operation. Histories, the bulk of the data, are append-only JSON-lines
files ``dir/history/<hash of run id>.jsonl``; ``state.json`` records how many bytes of each are
committed, so bytes a crashed operation appended past that mark are ignored and overwritten.

Semantics follow ``plait.backends.memory.MemoryBackend`` operation by operation; the conformance
suite checks them::

    pytest --pyargs plait.testing.conformance --plait-conformance='jsonfile://{tmp}/store'
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import anyio
import attrs
import pluggy

from plait.backends._notify import Notifier

# ErrorInfo and RunStatus are the types of RunRecord's fields; base.py imports them from the
# kernel, so the records' module is the one place a backend needs to know.
from plait.backends.base import (
    BackendError,
    BackendState,
    ClaimedRun,
    Commit,
    Delivery,
    ErrorInfo,
    InboxEntry,
    RunRecord,
    RunStatus,
    SchemaError,
    StepTask,
)
from plait.kernel.codec import event_from_dict, event_to_dict
from plait.kernel.events import Event, HookReceived, TimerFired

__all__ = ["JsonFileBackend", "JsonFilePlugin", "FORMAT", "VERSION", "POLL_SECONDS"]

FORMAT = "plait-jsonfile"
VERSION = 1
POLL_SECONDS = 0.1
"""Longest ``wait``: changes made by other processes are noticed this soon."""

T = TypeVar("T")
State = dict[str, Any]
hookimpl = pluggy.HookimplMarker("plait")


def _empty() -> State:
    return {
        "format": FORMAT,
        "version": VERSION,
        "order": 0,  # enqueue order of workflow tasks, steps and timers
        "inbox_id": 0,
        "step_lease": 0,
        "runs": {},  # run_id -> record (dict order = creation order)
        "history": {},  # run_id -> [events, committed bytes] of history/<hash>.jsonl
        "inbox": {},  # run_id -> [[id, event]]
        "keys": {},  # key of an open run -> run_id
        "hooks": {},  # token of an open hook -> [run_id, seq]
        "fence": {},  # run_id -> fencing token
        "wf_ready": {},  # run_id -> [ready_at, order]
        "wf_lease": {},  # run_id -> lease expiry
        "steps": {},  # "[run_id, seq]" -> task fields + order, expires
        "timers": {},  # "[run_id, seq]" -> [fire_at, order]
    }


def _key(run_id: str, seq: int) -> str:
    return json.dumps([run_id, seq])


def _record_to_json(r: RunRecord) -> dict[str, Any]:
    d = attrs.asdict(r, recurse=False)
    d["status"] = r.status.value
    d["error"] = attrs.asdict(r.error) if r.error is not None else None
    return d


def _record_from_json(d: dict[str, Any]) -> RunRecord:
    error = ErrorInfo(**d["error"]) if d["error"] is not None else None
    return RunRecord(**{**d, "status": RunStatus(d["status"]), "error": error})


def _task(s: dict[str, Any]) -> StepTask:
    return StepTask(
        s["run_id"], s["seq"], s["name"], s["args"], s["attempt"], s["ready_at"], s["lease"]
    )


class JsonFileBackend:
    """All of plait's state in one JSON file, one file lock per operation."""

    def __init__(self, url: str) -> None:
        path = url.split("://", 1)[1] if "://" in url else ""
        if not path.startswith("/"):
            raise ValueError(f"jsonfile URL needs an absolute directory: {url!r}")
        self.url = url
        self.dir = Path(path)
        self._state_path = self.dir / "state.json"
        self._lock_path = self.dir / "lock"
        self._notifier = Notifier()

    @classmethod
    def from_url(cls, url: str) -> JsonFileBackend:
        return cls(url)

    # -- files ---------------------------------------------------------------------------------

    def _load(self) -> State:
        try:
            text = self._state_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise BackendError(f"{self._state_path} is missing; was open() called?") from None
        state = json.loads(text)
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise SchemaError(f"{self._state_path} is not a plait jsonfile store")
        if state.get("version", 0) > VERSION:
            raise SchemaError(f"{self._state_path} was written by a newer plait-jsonfile")
        return state

    def _save(self, state: State) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".state-", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(state, f, separators=(",", ":"), allow_nan=False)
        os.replace(tmp, self._state_path)

    def _locked(self, fn: Callable[[State], T], changed: Callable[[T], bool] | None) -> T:
        """Run ``fn`` on the state under the lock; save when ``changed(result)`` says so."""
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if changed is None else fcntl.LOCK_EX)
            state = self._load()
            result = fn(state)
            if changed is not None and changed(result):
                self._save(state)
            return result
        finally:
            os.close(fd)  # releases the lock

    async def _read(self, fn: Callable[[State], T]) -> T:
        return await anyio.to_thread.run_sync(self._locked, fn, None)

    async def _write(self, fn: Callable[[State], T], changed: Callable[[T], bool] = bool) -> T:
        """A writing operation; by default a falsy result (False, None, 0, []) changed nothing."""
        result = await anyio.to_thread.run_sync(self._locked, fn, changed)
        if changed(result):
            self._notifier.notify()
        return result

    def _history_file(self, run_id: str) -> Path:
        return self.dir / "history" / f"{hashlib.sha256(run_id.encode()).hexdigest()[:32]}.jsonl"

    def _append_history(self, s: State, run_id: str, events: Sequence[Event]) -> None:
        if not events:
            return
        count, size = s["history"][run_id]
        lines = (json.dumps(event_to_dict(e), separators=(",", ":")) + "\n" for e in events)
        data = "".join(lines).encode()
        fd = os.open(self._history_file(run_id), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, size)  # drop bytes of an operation that crashed before its commit
            os.pwrite(fd, data, size)
        finally:
            os.close(fd)
        s["history"][run_id] = [count + len(events), size + len(data)]

    def _read_history(self, s: State, run_id: str) -> list[Event]:
        if run_id not in s["history"] or s["history"][run_id][1] == 0:
            return []
        with open(self._history_file(run_id), "rb") as f:
            data = f.read(s["history"][run_id][1])
        return [event_from_dict(json.loads(line)) for line in data.splitlines()]

    async def open(self) -> None:
        def create() -> None:
            (self.dir / "history").mkdir(parents=True, exist_ok=True)
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                if self._state_path.exists():
                    self._load()  # refuse foreign or newer stores
                else:
                    self._save(_empty())
            finally:
                os.close(fd)

        await anyio.to_thread.run_sync(create)

    async def close(self) -> None:
        return None

    # -- helpers (called with the lock held) ---------------------------------------------------

    @staticmethod
    def _next(s: State) -> int:
        s["order"] += 1
        return int(s["order"])

    def _queue(self, s: State, run_id: str, ready_at: float) -> None:
        if run_id not in s["wf_ready"]:
            s["wf_ready"][run_id] = [ready_at, self._next(s)]

    def _deliver(self, s: State, d: Delivery | None, now: float) -> None:
        if d is None:
            return
        run = s["runs"].get(d.run_id)
        if run is None or _record_from_json(run).closed:
            return
        s["inbox_id"] += 1
        s["inbox"][d.run_id].append([s["inbox_id"], event_to_dict(d.event)])
        self._queue(s, d.run_id, now)

    def _insert_run(self, s: State, record: RunRecord, inbox: Sequence[Event], now: float) -> None:
        rid = record.run_id
        s["runs"][rid] = _record_to_json(record)
        s["history"][rid], s["inbox"][rid], s["fence"][rid] = [0, 0], [], 0
        if record.key is not None:
            s["keys"][record.key] = rid
        for e in inbox:
            self._deliver(s, Delivery(rid, e), now)

    @staticmethod
    def _drop_pending(s: State, run_id: str, record: RunRecord) -> None:
        if record.key is not None and s["keys"].get(record.key) == run_id:
            del s["keys"][record.key]
        s["hooks"] = {t: h for t, h in s["hooks"].items() if h[0] != run_id}
        s["steps"] = {k: v for k, v in s["steps"].items() if v["run_id"] != run_id}
        s["timers"] = {k: v for k, v in s["timers"].items() if json.loads(k)[0] != run_id}
        s["wf_ready"].pop(run_id, None)
        s["inbox"][run_id] = []

    def _resume(
        self,
        s: State,
        token: str,
        payload: Any,
        now: float,
        on_delivered: Delivery | None = None,
        on_missing: Delivery | None = None,
    ) -> str | None:
        owner = s["hooks"].get(token)
        if owner is None:
            self._deliver(s, on_missing, now)
            return None
        run_id, seq = owner
        self._deliver(s, Delivery(run_id, HookReceived(seq, payload)), now)
        self._deliver(s, on_delivered, now)
        return str(run_id)

    # -- runs ----------------------------------------------------------------------------------

    async def create_run(
        self, record: RunRecord, inbox: Sequence[Event], now: float
    ) -> tuple[str, bool]:
        def op(s: State) -> tuple[str, bool]:
            if record.key is not None and record.key in s["keys"]:
                return s["keys"][record.key], False
            if record.run_id in s["runs"]:
                return record.run_id, False
            self._insert_run(s, record, inbox, now)
            return record.run_id, True

        return await self._write(op, changed=lambda r: r[1])

    async def get_run(self, run_id: str) -> RunRecord | None:
        def op(s: State) -> RunRecord | None:
            d = s["runs"].get(run_id)
            return _record_from_json(d) if d is not None else None

        return await self._read(op)

    async def list_runs(
        self,
        *,
        status: RunStatus | None = None,
        workflow: str | None = None,
        parent: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[RunRecord]:
        def op(s: State) -> list[RunRecord]:
            out = [
                d
                for d in s["runs"].values()
                if (status is None or d["status"] == status)
                and (workflow is None or d["workflow"] == workflow)
                and (parent is None or d["parent_run_id"] == parent)
            ]
            return [_record_from_json(d) for d in out[offset : offset + limit]]

        return await self._read(op)

    async def read_history(self, run_id: str) -> list[Event]:
        return await self._read(lambda s: self._read_history(s, run_id))

    async def append_history(self, run_id: str, events: Sequence[Event]) -> None:
        def op(s: State) -> bool:
            if run_id not in s["history"]:
                return False
            self._append_history(s, run_id, events)
            return True

        await self._write(op)

    async def append_inbox(self, run_id: str, events: Sequence[Event], now: float) -> bool:
        def op(s: State) -> bool:
            run = s["runs"].get(run_id)
            if run is None or _record_from_json(run).closed:
                return False
            for e in events:
                self._deliver(s, Delivery(run_id, e), now)
            return True

        return await self._write(op)

    # -- workflow tasks ------------------------------------------------------------------------

    async def claim_workflow_task(self, now: float, lease_seconds: float) -> ClaimedRun | None:
        def op(s: State) -> ClaimedRun | None:
            best: tuple[float, int, str] | None = None
            for run_id, (ready_at, order) in s["wf_ready"].items():
                expires = s["wf_lease"].get(run_id)
                if ready_at <= now and (expires is None or expires <= now):
                    if best is None or (ready_at, order) < best[:2]:
                        best = (ready_at, order, run_id)
            if best is None:
                return None
            run_id = best[2]
            s["fence"][run_id] += 1
            s["wf_lease"][run_id] = now + lease_seconds
            return ClaimedRun(
                run=_record_from_json(s["runs"][run_id]),
                lease=s["fence"][run_id],
                inbox=tuple(InboxEntry(i, event_from_dict(e)) for i, e in s["inbox"][run_id]),
                history_length=s["history"][run_id][0],
            )

        return await self._write(op)

    async def renew_workflow_lease(
        self, run_id: str, lease: int, now: float, seconds: float
    ) -> bool:
        def op(s: State) -> bool:
            if s["fence"].get(run_id) != lease or run_id not in s["wf_lease"]:
                return False
            s["wf_lease"][run_id] = now + seconds
            return True

        return await self._write(op)

    async def requeue_workflow_task(self, run_id: str, now: float) -> bool:
        def op(s: State) -> bool:
            run = s["runs"].get(run_id)
            if run is None or _record_from_json(run).closed:
                return False
            self._queue(s, run_id, now)
            return True

        return await self._write(op)

    async def apply_commit(self, commit: Commit) -> bool:
        return await self._write(lambda s: self._apply(s, commit))

    def _apply(self, s: State, c: Commit) -> bool:
        rid, now = c.run_id, c.now
        if rid not in s["runs"]:
            return False
        run = _record_from_json(s["runs"][rid])
        if c.lease is None:
            if run.closed:
                return False
            s["fence"][rid] += 1
        elif s["fence"][rid] != c.lease or rid not in s["wf_lease"] or run.closed:
            return False
        self._append_history(s, rid, c.events)
        s["inbox"][rid] = [e for e in s["inbox"][rid] if e[0] > c.inbox_upto]
        changes: dict[str, Any] = {"block_reason": c.block_reason}
        for name in ("status", "result", "error", "continued_to"):
            if getattr(c, name) is not None:
                changes[name] = getattr(c, name)
        record = attrs.evolve(run, **changes)
        closing = record.closed
        if closing:
            record = attrs.evolve(record, closed_at=now)
        s["runs"][rid] = _record_to_json(record)
        for t in c.steps:
            entry = {**attrs.asdict(t), "lease": 0, "order": self._next(s), "expires": None}
            s["steps"][_key(t.run_id, t.seq)] = entry
        for tm in c.timers:
            s["timers"][_key(tm.run_id, tm.seq)] = [tm.fire_at, self._next(s)]
        for seq in c.cancel_timers:
            s["timers"].pop(_key(rid, seq), None)
        for token in c.dispose_hooks:  # before registrations: a token may be reopened
            if s["hooks"].get(token, [""])[0] == rid:
                del s["hooks"][token]
        for reg in c.hooks:
            if reg.token in s["hooks"]:
                self._deliver(s, reg.on_conflict, now)
            else:
                s["hooks"][reg.token] = [rid, reg.seq]
        if closing:
            self._drop_pending(s, rid, record)
        for nr in c.new_runs:
            if nr.record.run_id in s["runs"]:
                continue
            if nr.record.key is not None and nr.record.key in s["keys"]:
                self._deliver(s, nr.on_conflict, now)
            else:
                self._insert_run(s, nr.record, nr.inbox, now)
                self._deliver(s, nr.on_started, now)
        for hr in c.hook_resumes:
            self._resume(s, hr.token, hr.payload, now, hr.on_delivered, hr.on_missing)
        for d in c.deliveries:
            self._deliver(s, d, now)
        s["wf_lease"].pop(rid, None)
        s["wf_ready"].pop(rid, None)
        if not closing and c.requeue and s["inbox"][rid]:
            self._queue(s, rid, now)
        return True

    # -- steps ---------------------------------------------------------------------------------

    async def claim_step_tasks(
        self, now: float, limit: int, lease_seconds: float
    ) -> list[StepTask]:
        def op(s: State) -> list[StepTask]:
            due = [
                t
                for t in s["steps"].values()
                if t["ready_at"] <= now and (t["expires"] is None or t["expires"] <= now)
            ]
            due.sort(key=lambda t: (t["ready_at"], t["order"]))
            for t in due[:limit]:
                s["step_lease"] += 1
                t["lease"], t["expires"] = s["step_lease"], now + lease_seconds
            return [_task(t) for t in due[:limit]]

        return await self._write(op)

    @staticmethod
    def _held(s: State, run_id: str, seq: int, lease: int) -> dict[str, Any] | None:
        t = s["steps"].get(_key(run_id, seq))
        return t if t is not None and t["lease"] == lease else None

    async def heartbeat_step(
        self, run_id: str, seq: int, lease: int, now: float, seconds: float
    ) -> bool:
        def op(s: State) -> bool:
            t = self._held(s, run_id, seq, lease)
            if t is None:
                return False
            t["expires"] = now + seconds
            return True

        return await self._write(op)

    async def finish_step(
        self, run_id: str, seq: int, lease: int, outcome: Event, now: float
    ) -> bool:
        def op(s: State) -> bool:
            if self._held(s, run_id, seq, lease) is None:
                return False
            del s["steps"][_key(run_id, seq)]
            self._deliver(s, Delivery(run_id, outcome), now)
            return True

        return await self._write(op)

    async def retry_step(
        self, run_id: str, seq: int, lease: int, attempt: int, ready_at: float
    ) -> bool:
        def op(s: State) -> bool:
            t = self._held(s, run_id, seq, lease)
            if t is None:
                return False
            t.update(attempt=attempt, ready_at=ready_at, lease=0, expires=None)
            t["order"] = self._next(s)
            return True

        return await self._write(op)

    # -- timers and hooks ----------------------------------------------------------------------

    async def fire_due_timers(self, now: float, limit: int = 1000) -> int:
        def op(s: State) -> int:
            due = sorted((v, k) for k, v in s["timers"].items() if v[0] <= now)[:limit]
            for _, k in due:
                del s["timers"][k]
                run_id, seq = json.loads(k)
                self._deliver(s, Delivery(run_id, TimerFired(seq)), now)
            return len(due)

        return await self._write(op)

    async def resume_hook(self, token: str, payload: Any, now: float) -> str | None:
        return await self._write(lambda s: self._resume(s, token, payload, now))

    # -- idle detection and wake-ups -----------------------------------------------------------

    async def state(self, now: float) -> BackendState:
        def op(s: State) -> BackendState:
            due: list[float] = []
            ready_wf = leased_wf = ready_steps = leased_steps = 0
            for run_id, (ready_at, _) in s["wf_ready"].items():
                expires = s["wf_lease"].get(run_id)
                if expires is not None and expires > now:
                    leased_wf += 1
                    due.append(expires)
                elif ready_at <= now:
                    ready_wf += 1
                else:
                    due.append(ready_at)
            for t in s["steps"].values():
                if t["expires"] is not None and t["expires"] > now:
                    leased_steps += 1
                    due.append(t["expires"])
                elif t["ready_at"] <= now:
                    ready_steps += 1
                else:
                    due.append(t["ready_at"])
            due.extend(v[0] for v in s["timers"].values())
            future = [d for d in due if d > now]
            next_due = min(future) if future else None
            return BackendState(
                ready_wf, leased_wf, ready_steps, leased_steps, len(s["timers"]), next_due
            )

        return await self._read(op)

    def notify(self) -> None:
        self._notifier.notify()

    async def wait(self, timeout: float) -> None:
        # Local changes wake at once; other processes' changes are seen by polling.
        await self._notifier.wait(min(timeout, POLL_SECONDS))


class JsonFilePlugin:
    """The pluggy plugin registered under the entry-point group ``plait``."""

    @staticmethod
    @hookimpl
    def plait_backend_schemes() -> dict[str, Callable[[str], Any]]:
        return {"jsonfile": JsonFileBackend.from_url}
