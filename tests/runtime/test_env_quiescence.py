"""The concurrent time-skipping environment never skips time past work in flight.

A threaded backend (SQLite, the jsonfile example) applies a claim before the worker's coroutine
resumes with it. Between the two the run's task is leased and the worker still counts as idle:
an environment that read the backend then did not see the task, saw an idle worker, found
nothing due and reported a run that would have finished as stuck.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

import plait
from plait.backends.memory import MemoryBackend
from plait.testing import TimeSkippingEnvironment

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@plait.step
async def square(x: int) -> int:
    return x * x


@plait.workflow
async def squares(n: int) -> int:
    total = 0
    for i in range(n):
        total += await square(i)
    return total


class LateClaims(MemoryBackend):
    """Applies every claim at once, then hands it to the caller only after a pause."""

    def __init__(self) -> None:
        super().__init__()
        self.late = 0

    async def claim_workflow_task(self, *a: Any, **k: Any) -> Any:
        claim = await super().claim_workflow_task(*a, **k)
        if claim is not None:
            self.late += 1
            await anyio.sleep(0.02)
        return claim

    async def claim_step_tasks(self, *a: Any, **k: Any) -> Any:
        tasks = await super().claim_step_tasks(*a, **k)
        if tasks:
            self.late += 1
            await anyio.sleep(0.02)
        return tasks


async def test_a_claim_in_flight_is_not_mistaken_for_quiescence() -> None:
    backend = LateClaims()
    async with TimeSkippingEnvironment(
        backend, [squares], [square], concurrency=1, deterministic=False
    ) as env:
        start = env.clock.now()
        run = await env.start(squares, 5)
        assert await run.result(timeout=3600) == sum(i * i for i in range(5))
        # Nothing in this run waits on time: skipping any (to a lease expiry) was a mistake.
        assert env.clock.now() == start
        assert env.worker.stats["fenced"] == 0
    assert backend.late > 0  # the pause really happened
