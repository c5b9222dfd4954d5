"""``TimeSkippingEnvironment``: an engine, an in-process worker and a virtual clock.

Virtual time moves only while the test waits (``env.sleep`` or a ``RunHandle.result`` of the
environment) and only when nothing is in flight; then it jumps to the next due timer, retry or
lease expiry. By default one task runs at a time in claim order and ids derive from ``seed``,
so a test produces the same history on every run and on every backend.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import AsyncIterator, Iterable
from typing import Any

import anyio

from ..backends.base import Backend, RunRecord
from ..kernel import events as ev
from ..kernel.errors import Timeout
from ..kernel.registry import StepFunction, WorkflowFunction
from ..kernel.status import RunStatus
from ..runtime.clock import VirtualClock
from ..runtime.engine import Engine, RunHandle, RunInfo
from ..runtime.worker import Worker

__all__ = ["TimeSkippingEnvironment"]

_START = 1_767_225_600.0  # 2026-01-01T00:00:00Z


class TimeSkippingEnvironment:
    """``async with TimeSkippingEnvironment(workflows=[...], steps=[...]) as env:``"""

    def __init__(
        self,
        backend: str | Backend = "memory://",
        workflows: Iterable[WorkflowFunction] | None = None,
        steps: Iterable[StepFunction] | None = None,
        concurrency: int = 64,
        *,
        auto_skip: bool = True,
        deterministic: bool = True,
        seed: str = "plait",
        start: float | _dt.datetime = _START,
        **worker_options: Any,
    ) -> None:
        start_ts = start.timestamp() if isinstance(start, _dt.datetime) else float(start)
        self.clock = VirtualClock(start_ts)
        self.engine = Engine(backend, clock=self.clock, id_seed=seed)
        self.auto_skip = auto_skip
        self.deterministic = deterministic
        self.worker: Worker = self.engine.worker(
            workflows, steps, concurrency=concurrency, **worker_options
        )
        self._running = False

    async def __aenter__(self) -> TimeSkippingEnvironment:
        await self.engine.open()
        self.engine._driver = self
        if not self.deterministic:
            await self.worker.__aenter__()
            self._running = True
        else:
            await self.worker.requeue_blocked()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._running:
            self._running = False
            await self.worker.__aexit__(*exc)
        self.engine._driver = None
        await self.engine.close()

    # -- client methods ------------------------------------------------------------------------

    @property
    def backend(self) -> Backend:
        return self.engine.backend

    def now(self) -> _dt.datetime:
        """Virtual now (UTC)."""
        return _dt.datetime.fromtimestamp(self.clock.now(), _dt.UTC)

    async def start(
        self, workflow: Any, *args: Any, key: str | None = None, queue: str | None = None
    ) -> RunHandle:
        return await self.engine.start(workflow, *args, key=key, queue=queue)

    async def get_run(self, run_id: str) -> RunInfo:
        return await self.engine.get_run(run_id)

    def list_runs(self, **filters: Any) -> AsyncIterator[RunInfo]:
        return self.engine.list_runs(**filters)

    async def history(self, run_id: str) -> list[ev.Event]:
        return await self.engine.history(run_id)

    async def resume_hook(self, token: str, payload: Any = None) -> str:
        return await self.engine.resume_hook(token, payload)

    async def signal(self, run_id: str, name: str, payload: Any = None) -> None:
        await self.engine.signal(run_id, name, payload)

    async def cancel(self, run_id: str, reason: str = "") -> bool:
        return await self.engine.cancel(run_id, reason)

    async def terminate(self, run_id: str, reason: str = "") -> bool:
        return await self.engine.terminate(run_id, reason)

    # -- driving -------------------------------------------------------------------------------

    async def _step(self) -> bool:
        """Make progress at the current virtual time; False when nothing is ready."""
        if self.deterministic:
            return await self.worker.run_one()
        before = self.worker.activity
        st = await self.backend.state(self.clock.now())
        after = self.worker.activity
        _, inflight, ticking = after
        busy = (
            after != before  # the worker moved while we read: the read may be stale
            or inflight
            or ticking
            or st.ready_workflow_tasks
            or st.ready_steps
            or await self.backend.fire_due_timers(self.clock.now())
        )
        if busy:
            self.backend.notify()
            await self.backend.wait(0.01)
            return True
        return False

    async def drain(self) -> None:
        """Run everything ready at the current virtual time."""
        while await self._step():
            pass

    async def _next_due(self) -> float | None:
        return (await self.backend.state(self.clock.now())).next_due

    async def sleep(self, seconds: float | _dt.timedelta) -> None:
        """Move virtual time forward by ``seconds``, running all work due on the way in order;
        returns when the system is idle at the new time."""
        secs = seconds.total_seconds() if isinstance(seconds, _dt.timedelta) else float(seconds)
        target = self.clock.now() + secs
        while True:
            await self.drain()
            nxt = await self._next_due()
            if nxt is None or nxt > target:
                self.clock.advance_to(target)
                self.backend.notify()
                await self.drain()
                return
            self.clock.advance_to(nxt)
            self.backend.notify()

    async def wait_closed(self, run_id: str, timeout: float | None) -> RunRecord:
        """Drive the system until ``run_id`` (or the last run of its chain) closes.

        ``timeout`` is in virtual seconds. Raises ``plait.Timeout`` when it passes, or at once
        when the run waits for something nothing will deliver (a hook, a signal) or is blocked.
        """
        deadline = None if timeout is None else self.clock.now() + timeout
        while True:
            rec = await self.engine.get_run(run_id)
            if rec.status is RunStatus.CONTINUED_AS_NEW and rec.continued_to:
                run_id = rec.continued_to
                continue
            if rec.closed:
                return rec
            if await self._step():
                continue
            if not self.auto_skip:
                await anyio.sleep(0.01)
                continue
            nxt = await self._next_due()
            if deadline is not None and (nxt is None or nxt > deadline):
                self.clock.advance_to(deadline)
                raise Timeout(f"run {run_id} did not close within {timeout}s of virtual time")
            if nxt is None:
                why = (
                    f"it is blocked: {rec.block_reason}"
                    if rec.status is RunStatus.BLOCKED
                    else "it waits for a hook, signal or run that nothing will deliver"
                )
                raise Timeout(f"run {run_id} cannot finish: nothing is due and {why}")
            self.clock.advance_to(nxt)
            self.backend.notify()
