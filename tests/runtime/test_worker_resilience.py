"""A worker survives backend errors: its loop backs off and retries, nothing is lost."""

from __future__ import annotations

from typing import Any

import pytest

import plait
from plait.backends.memory import MemoryBackend

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@plait.step
async def inc(x: int) -> int:
    return x + 1


@plait.workflow
async def counter(n: int) -> int:
    for _ in range(n):
        n = await inc(n)
    return n


class Flaky(MemoryBackend):
    """Fails every claim, timer poll and wait call while ``failing`` is above zero."""

    def __init__(self) -> None:
        super().__init__()
        self.failing = 0
        self.raised = 0

    def _maybe_fail(self) -> None:
        if self.failing > 0:
            self.failing -= 1
            self.raised += 1
            raise ConnectionError("server went away")

    async def claim_workflow_task(self, *a: Any, **k: Any) -> Any:
        self._maybe_fail()
        return await super().claim_workflow_task(*a, **k)

    async def fire_due_timers(self, *a: Any, **k: Any) -> Any:
        self._maybe_fail()
        return await super().fire_due_timers(*a, **k)


async def test_worker_loop_retries_after_backend_errors() -> None:
    backend = Flaky()
    async with plait.Engine(backend) as engine:
        run = await engine.start(counter, 3)
        backend.failing = 5
        async with engine.worker([counter], [inc], max_backoff=0.05) as worker:
            assert await run.result(timeout=10) == 6
            assert backend.raised == 5
            assert worker.stats["backend_errors"] >= 1


async def test_engine_is_closed_even_when_the_worker_fails() -> None:
    closed = []

    class Tracking(MemoryBackend):
        async def close(self) -> None:
            closed.append(True)

    engine = plait.Engine(Tracking())
    with pytest.raises(RuntimeError, match="boom"):
        async with engine.worker([counter], [inc]):
            raise RuntimeError("boom")
    assert closed == [True]
