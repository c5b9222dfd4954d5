"""Eager start: an engine with a running local worker creates runs already claimed for it."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

import plait
from plait.backends.memory import MemoryBackend

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@plait.step
async def double(x: int) -> int:
    return 2 * x


@plait.workflow
async def twice(x: int) -> int:
    return await double(await double(x))


class Counting(MemoryBackend):
    """The memory backend with eager start turned on, counting the claims of new runs."""

    supports_eager_start = True

    def __init__(self) -> None:
        super().__init__()
        self.claims = 0
        self.eager = 0
        self.reads = 0

    async def claim_workflow_task(self, *a: Any, **k: Any) -> Any:
        got = await super().claim_workflow_task(*a, **k)
        if got is not None and got.history_length == 0:  # a run's first activation
            self.claims += 1
        return got

    async def create_run_and_claim(self, *a: Any, **k: Any) -> Any:
        self.eager += 1
        return await super().create_run_and_claim(*a, **k)

    async def get_run(self, run_id: str) -> Any:
        self.reads += 1
        return await super().get_run(run_id)


async def test_a_run_started_next_to_a_free_worker_is_never_claimed_from_the_queue() -> None:
    backend = Counting()
    async with plait.Engine(backend) as engine:
        async with engine.worker([twice], [double]):
            results = [await (await engine.start(twice, i)).result(timeout=10) for i in range(5)]
    assert results == [4 * i for i in range(5)]
    assert backend.eager == 5
    assert backend.claims == 0, "an eagerly started run went through the queue"


async def test_without_a_local_worker_for_the_workflow_runs_are_queued() -> None:
    backend = Counting()
    async with plait.Engine(backend) as engine:
        run = await engine.start(twice, 1)  # no worker yet: queued
        async with engine.worker([twice], [double]):
            assert await run.result(timeout=10) == 4
            other = await engine.worker([], [double]).__aenter__()  # takes no workflow
            try:
                engine._workers.remove(engine._workers[0])  # only the stepless one is left
                run2 = await engine.start(twice, 2)
            finally:
                await other.__aexit__(None, None, None)
            assert await run2.result(timeout=10) == 8
    assert backend.eager == 0
    assert backend.claims == 2


async def test_a_claim_the_worker_cannot_take_is_released_at_once() -> None:
    backend = Counting()
    async with plait.Engine(backend) as engine:
        async with engine.worker([twice], [double]) as worker:
            worker._adopt = lambda claim: False  # type: ignore[method-assign]
            run = await engine.start(twice, 3)
            assert backend.eager == 1
            assert await run.result(timeout=10) == 12  # released, then claimed from the queue
    assert backend.claims == 1


async def test_result_of_an_eager_run_reads_it_once_closed() -> None:
    backend = Counting()
    async with plait.Engine(backend) as engine:
        async with engine.worker([twice], [double]):
            run = await engine.start(twice, 5)
            assert await run.result(timeout=10) == 20
            assert backend.reads == 1, "the run was read while it was known to be open"
            late = await engine.start(twice, 6)
            while (await engine.get_run(late.run_id)).status is not plait.RunStatus.COMPLETED:
                await anyio.sleep(0.001)
            assert await late.result(timeout=10) == 24  # closed before result(): still right
