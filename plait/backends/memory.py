"""In-process backend: dicts, atomic because no operation awaits before it is done.

The reference implementation of the ``Backend`` protocol: the SQL and Redis backends keep the
same semantics, and the conformance suite holds every backend to what this one does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import anyio
import attrs

from ..kernel.events import Event, HookReceived, TimerFired
from ..kernel.status import RunStatus
from ._notify import Notifier
from .base import (
    BackendState,
    ClaimedRun,
    Commit,
    Delivery,
    InboxEntry,
    RunRecord,
    StepTask,
    check_start_commit,
)

__all__ = ["MemoryBackend", "MemoryBackendPlugin"]


@attrs.define
class _Step:
    task: StepTask
    order: int
    expires: float | None = None


class MemoryBackend:
    """``memory://``: everything in dicts; lost when the process ends. For tests and demos."""

    # It implements the eager-dispatch and speculation calls (the reference for the
    # conformance suite) but does not ask the runtime to use them: with no round trips to
    # save they only cost, and the plain path stays exercised.
    supports_eager = False
    supports_speculation = False
    supports_eager_start = False
    supports_start_commit = False

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._runs: dict[str, RunRecord] = {}
        self._history: dict[str, list[Event]] = {}
        self._inbox: dict[str, list[InboxEntry]] = {}
        self._keys: dict[str, str] = {}
        self._hooks: dict[str, tuple[str, int]] = {}
        self._wf_ready: dict[str, tuple[float, int]] = {}
        self._fence: dict[str, int] = {}
        self._wf_lease: dict[str, float] = {}
        self._steps: dict[tuple[str, int], _Step] = {}
        self._timers: dict[tuple[str, int], tuple[float, int]] = {}
        self._order = 0
        self._inbox_id = 0
        self._step_lease = 0
        self._notifier = Notifier()

    @classmethod
    def from_url(cls, url: str) -> MemoryBackend:
        return cls(url)

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    # -- helpers -------------------------------------------------------------------------------

    def _next(self) -> int:
        self._order += 1
        return self._order

    def _queue(self, run_id: str, ready_at: float) -> None:
        if run_id not in self._wf_ready:
            self._wf_ready[run_id] = (ready_at, self._next())

    def _deliver(self, d: Delivery | None, now: float) -> None:
        if d is None:
            return
        run = self._runs.get(d.run_id)
        if run is None or run.closed:
            return
        self._inbox_id += 1
        self._inbox[d.run_id].append(InboxEntry(self._inbox_id, d.event))
        self._queue(d.run_id, now)

    def _insert_run(self, record: RunRecord, inbox: Iterable[Event], now: float) -> None:
        self._runs[record.run_id] = record
        self._history[record.run_id] = []
        self._inbox[record.run_id] = []
        self._fence[record.run_id] = 0
        if record.key is not None:
            self._keys[record.key] = record.run_id
        for e in inbox:
            self._deliver(Delivery(record.run_id, e), now)

    def _drop_pending(self, run_id: str, record: RunRecord) -> None:
        if record.key is not None and self._keys.get(record.key) == run_id:
            del self._keys[record.key]
        for token in [t for t, (r, _) in self._hooks.items() if r == run_id]:
            del self._hooks[token]
        for k in [k for k in self._steps if k[0] == run_id]:
            del self._steps[k]
        for k in [k for k in self._timers if k[0] == run_id]:
            del self._timers[k]
        self._wf_ready.pop(run_id, None)
        self._inbox[run_id] = []

    # -- runs ----------------------------------------------------------------------------------

    async def create_run(
        self, record: RunRecord, inbox: Sequence[Event], now: float
    ) -> tuple[str, bool]:
        if record.key is not None and record.key in self._keys:
            return self._keys[record.key], False
        if record.run_id in self._runs:
            return record.run_id, False
        self._insert_run(record, inbox, now)
        self._notifier.notify()
        return record.run_id, True

    async def create_run_and_claim(
        self, record: RunRecord, inbox: Sequence[Event], now: float, lease_seconds: float
    ) -> tuple[str, bool, ClaimedRun | None]:
        run_id, created = await self.create_run(record, inbox, now)
        if not created:
            return run_id, False, None
        return run_id, True, self._claim(run_id, now, lease_seconds)

    async def create_run_and_commit(self, record: RunRecord, commit: Commit) -> tuple[str, bool]:
        check_start_commit(record, commit)
        run_id, created = await self.create_run(record, (), commit.now)
        if created:
            self._apply(attrs.evolve(commit, lease=None, inbox_upto=0))
        return run_id, created

    async def get_run(self, run_id: str) -> RunRecord | None:
        return self._runs.get(run_id)

    async def list_runs(
        self,
        *,
        status: RunStatus | None = None,
        workflow: str | None = None,
        parent: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[RunRecord]:
        out = [
            r
            for r in self._runs.values()
            if (status is None or r.status == status)
            and (workflow is None or r.workflow == workflow)
            and (parent is None or r.parent_run_id == parent)
        ]
        return out[offset : offset + limit]

    async def read_history(self, run_id: str) -> list[Event]:
        return list(self._history.get(run_id, ()))

    async def append_history(self, run_id: str, events: Sequence[Event]) -> None:
        if run_id in self._history:
            self._history[run_id].extend(events)

    async def append_inbox(self, run_id: str, events: Sequence[Event], now: float) -> bool:
        run = self._runs.get(run_id)
        if run is None or run.closed:
            return False
        for e in events:
            self._deliver(Delivery(run_id, e), now)
        self._notifier.notify()
        return True

    # -- workflow tasks ------------------------------------------------------------------------

    def _wf_claimable(self, run_id: str, now: float) -> bool:
        expires = self._wf_lease.get(run_id)
        return expires is None or expires <= now

    async def claim_workflow_task(self, now: float, lease_seconds: float) -> ClaimedRun | None:
        best: tuple[float, int, str] | None = None
        for run_id, (ready_at, order) in self._wf_ready.items():
            if ready_at <= now and self._wf_claimable(run_id, now):
                if best is None or (ready_at, order) < best[:2]:
                    best = (ready_at, order, run_id)
        if best is None:
            return None
        return self._claim(best[2], now, lease_seconds)

    def _claim(self, run_id: str, now: float, lease_seconds: float) -> ClaimedRun:
        """Lease ``run_id``'s workflow task (the fencing token advances) and snapshot it."""
        self._fence[run_id] += 1
        self._wf_lease[run_id] = now + lease_seconds
        return ClaimedRun(
            run=self._runs[run_id],
            lease=self._fence[run_id],
            inbox=tuple(self._inbox[run_id]),
            history_length=len(self._history[run_id]),
        )

    async def renew_workflow_lease(
        self, run_id: str, lease: int, now: float, seconds: float
    ) -> bool:
        if self._fence.get(run_id) != lease or run_id not in self._wf_lease:
            return False
        self._wf_lease[run_id] = now + seconds
        return True

    async def requeue_workflow_task(self, run_id: str, now: float) -> bool:
        run = self._runs.get(run_id)
        if run is None or run.closed:
            return False
        self._queue(run_id, now)
        self._notifier.notify()
        return True

    async def apply_commit(self, c: Commit) -> bool:
        return self._apply(c)

    def _apply(self, c: Commit) -> bool:
        run = self._runs.get(c.run_id)
        if run is None:
            return False
        if c.lease is None:
            if run.closed:
                return False
            self._fence[c.run_id] += 1
        elif self._fence[c.run_id] != c.lease or c.run_id not in self._wf_lease or run.closed:
            return False
        now = c.now
        self._history[c.run_id].extend(c.events)
        self._inbox[c.run_id] = [e for e in self._inbox[c.run_id] if e.id > c.inbox_upto]
        changes: dict[str, Any] = {}
        if c.status is not None:
            changes["status"] = c.status
        if c.result is not None:
            changes["result"] = c.result
        if c.error is not None:
            changes["error"] = c.error
        if c.continued_to is not None:
            changes["continued_to"] = c.continued_to
        changes["block_reason"] = c.block_reason
        record = attrs.evolve(run, **changes)
        closing = record.closed
        if closing:
            record = attrs.evolve(record, closed_at=now)
        self._runs[c.run_id] = record
        for s in c.steps:
            self._steps[(s.run_id, s.seq)] = _Step(s, self._next(), s.lease_expires)
        for t in c.timers:
            self._timers[(t.run_id, t.seq)] = (t.fire_at, self._next())
        for seq in c.cancel_timers:
            self._timers.pop((c.run_id, seq), None)
        for token in c.dispose_hooks:  # before registrations: a token may be reopened
            if self._hooks.get(token, ("",))[0] == c.run_id:
                del self._hooks[token]
        for reg in c.hooks:
            if reg.token in self._hooks:
                self._deliver(reg.on_conflict, now)
            else:
                self._hooks[reg.token] = (c.run_id, reg.seq)
        if closing:
            self._drop_pending(c.run_id, record)
        for nr in c.new_runs:
            if nr.record.run_id in self._runs:
                continue
            if nr.record.key is not None and nr.record.key in self._keys:
                self._deliver(nr.on_conflict, now)
            else:
                self._insert_run(nr.record, nr.inbox, now)
                self._deliver(nr.on_started, now)
        for hr in c.hook_resumes:
            self._resume(hr.token, hr.payload, now, hr.on_delivered, hr.on_missing)
        for d in c.deliveries:
            self._deliver(d, now)
        self._wf_lease.pop(c.run_id, None)
        self._wf_ready.pop(c.run_id, None)
        if not closing and c.requeue and self._inbox[c.run_id]:
            self._queue(c.run_id, now)
        self._notifier.notify()
        return True

    # -- steps ---------------------------------------------------------------------------------

    async def claim_step_tasks(
        self, now: float, limit: int, lease_seconds: float
    ) -> list[StepTask]:
        due = [
            s
            for s in self._steps.values()
            if s.task.ready_at <= now and (s.expires is None or s.expires <= now)
        ]
        due.sort(key=lambda s: (s.task.ready_at, s.order))
        out = []
        for s in due[:limit]:
            self._step_lease += 1
            s.task = attrs.evolve(s.task, lease=self._step_lease)
            s.expires = now + lease_seconds
            out.append(s.task)
        return out

    def _held(self, run_id: str, seq: int, lease: int) -> _Step | None:
        s = self._steps.get((run_id, seq))
        return s if s is not None and s.task.lease == lease else None

    async def heartbeat_step(
        self, run_id: str, seq: int, lease: int, now: float, seconds: float
    ) -> bool:
        s = self._held(run_id, seq, lease)
        if s is None:
            return False
        s.expires = now + seconds
        return True

    async def finish_step(
        self, run_id: str, seq: int, lease: int, outcome: Event, now: float
    ) -> bool:
        if self._held(run_id, seq, lease) is None:
            return False
        del self._steps[(run_id, seq)]
        self._deliver(Delivery(run_id, outcome), now)
        self._notifier.notify()
        return True

    async def finish_step_and_claim(
        self, run_id: str, seq: int, lease: int, outcome: Event, now: float, lease_seconds: float
    ) -> tuple[bool, ClaimedRun | None]:
        if not await self.finish_step(run_id, seq, lease, outcome, now):
            return False, None
        ready = self._wf_ready.get(run_id)
        if ready is None or ready[0] > now or not self._wf_claimable(run_id, now):
            return True, None
        return True, self._claim(run_id, now, lease_seconds)

    async def finish_step_and_commit(
        self, run_id: str, seq: int, lease: int, commit: Commit, history_length: int
    ) -> bool:
        run = self._runs.get(run_id)
        if (
            run is None
            or commit.run_id != run_id
            or self._held(run_id, seq, lease) is None
            or run.closed
            or self._inbox[run_id]
            or len(self._history[run_id]) != history_length
            or not self._wf_claimable(run_id, commit.now)
        ):
            return False
        del self._steps[(run_id, seq)]
        return self._apply(attrs.evolve(commit, lease=None, inbox_upto=0))

    async def retry_step(
        self, run_id: str, seq: int, lease: int, attempt: int, ready_at: float
    ) -> bool:
        s = self._held(run_id, seq, lease)
        if s is None:
            return False
        s.task = attrs.evolve(
            s.task, attempt=attempt, ready_at=ready_at, lease=0, lease_expires=None
        )
        s.expires = None
        s.order = self._next()
        self._notifier.notify()
        return True

    # -- timers and hooks ----------------------------------------------------------------------

    async def fire_due_timers(self, now: float, limit: int = 1000) -> int:
        due = sorted((v, k) for k, v in self._timers.items() if v[0] <= now)[:limit]
        for _, (run_id, seq) in due:
            del self._timers[(run_id, seq)]
            self._deliver(Delivery(run_id, TimerFired(seq)), now)
        if due:
            self._notifier.notify()
        return len(due)

    def _resume(
        self,
        token: str,
        payload: Any,
        now: float,
        on_delivered: Delivery | None = None,
        on_missing: Delivery | None = None,
    ) -> str | None:
        owner = self._hooks.get(token)
        if owner is None:
            self._deliver(on_missing, now)
            return None
        run_id, seq = owner
        self._deliver(Delivery(run_id, HookReceived(seq, payload)), now)
        self._deliver(on_delivered, now)
        return run_id

    async def resume_hook(self, token: str, payload: Any, now: float) -> str | None:
        run_id = self._resume(token, payload, now)
        self._notifier.notify()
        return run_id

    # -- idle detection ------------------------------------------------------------------------

    async def state(self, now: float) -> BackendState:
        due: list[float] = []
        ready_wf = leased_wf = ready_steps = leased_steps = 0
        for run_id, (ready_at, _) in self._wf_ready.items():
            expires = self._wf_lease.get(run_id)
            if expires is not None and expires > now:
                leased_wf += 1
                due.append(expires)
            elif ready_at <= now:
                ready_wf += 1
            else:
                due.append(ready_at)
        for s in self._steps.values():
            if s.expires is not None and s.expires > now:
                leased_steps += 1
                due.append(s.expires)
            elif s.task.ready_at <= now:
                ready_steps += 1
            else:
                due.append(s.task.ready_at)
        due.extend(v[0] for v in self._timers.values())
        future = [d for d in due if d > now]
        return BackendState(
            ready_workflow_tasks=ready_wf,
            leased_workflow_tasks=leased_wf,
            ready_steps=ready_steps,
            leased_steps=leased_steps,
            timers=len(self._timers),
            next_due=min(future) if future else None,
        )

    def notify(self) -> None:
        self._notifier.notify()

    async def wait(self, timeout: float) -> None:
        await self._notifier.wait(timeout)


class MemoryBackendPlugin:
    """Registers ``memory://`` through the entry-point group ``plait``, like any third party."""

    from ..plugins.hookspecs import hookimpl as _hookimpl

    @staticmethod
    @_hookimpl
    def plait_backend_schemes() -> dict[str, Callable[[str], Any]]:
        return {"memory": MemoryBackend.from_url}


_ = anyio  # anyio is the runtime's loop; the memory backend needs no I/O of its own
