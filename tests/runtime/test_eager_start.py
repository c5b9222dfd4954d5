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


@plait.workflow
async def at_once(x: int) -> int:
    return x + 1


class Committing(Counting):
    """The memory backend with every round-trip saving turned on, counting calls."""

    supports_eager = True
    supports_speculation = True
    supports_start_commit = True

    def __init__(self) -> None:
        super().__init__()
        self.start_commits = 0
        self.commits = 0

    async def create_run_and_commit(self, *a: Any, **k: Any) -> Any:
        self.start_commits += 1
        return await super().create_run_and_commit(*a, **k)

    async def apply_commit(self, *a: Any, **k: Any) -> Any:
        self.commits += 1
        return await super().apply_commit(*a, **k)


def _shape(history: list[Any]) -> list[Any]:
    """A history without its times: what two runs of the same program must share."""
    from plait.kernel.codec import event_to_dict

    out = []
    for e in history:
        d = event_to_dict(e)
        for k in ("time", "run_id", "seed"):
            d.pop(k, None)
        out.append(d)
    return out


async def test_a_run_starts_with_its_first_activation_committed() -> None:
    backend = Committing()
    async with plait.Engine(backend) as engine:
        async with engine.worker([twice], [double]):
            run = await engine.start(twice, 3)
            assert backend.start_commits == 1
            assert backend.eager == 0 and backend.commits == 0, "the start took more calls"
            history = await engine.history(run.run_id)
            assert [type(e).__name__ for e in history][:1] == ["RunStarted"]
            assert any(type(e).__name__ == "StepScheduled" for e in history)
            reads = backend.reads
            assert await run.result(timeout=10) == 12
            assert backend.reads == reads + 1, "the run was read while it was known to be open"
        assert backend.claims == 0, "a run started with its commit went through the queue"
        assert backend.commits == 0, "the steps did not speculate"
        queued = await engine.start(twice, 3)  # no worker: the ordinary path
        async with engine.worker([twice], [double]):
            assert await queued.result(timeout=10) == 12
        assert _shape(await engine.history(queued.run_id)) == _shape(
            await engine.history(run.run_id)
        ), "a run started with its commit has another history"


async def test_a_run_that_closes_in_its_first_activation_is_one_call() -> None:
    backend = Committing()
    async with plait.Engine(backend) as engine:
        async with engine.worker([at_once], []):
            run = await engine.start(at_once, 41)
            assert (await engine.get_run(run.run_id)).status is plait.RunStatus.COMPLETED
            assert await run.result(timeout=10) == 42
    assert (backend.start_commits, backend.eager, backend.commits, backend.claims) == (1, 0, 0, 0)


async def test_a_step_the_worker_cannot_take_is_released_at_once() -> None:
    backend = Committing()
    async with plait.Engine(backend) as engine:
        async with engine.worker([twice], [double]) as worker:
            adopt = worker._adopt
            refused: list[Any] = []

            def once(item: Any) -> bool:
                if not refused:
                    refused.append(item)
                    return False
                return adopt(item)

            worker._adopt = once  # type: ignore[method-assign]
            run = await engine.start(twice, 4)
            assert len(refused) == 1 and refused[0].seq == 1
            with anyio.fail_after(5):  # released, not left to its lease: claimed again at once
                assert await run.result(timeout=10) == 16


async def test_a_held_key_starts_nothing() -> None:
    backend = Committing()
    async with plait.Engine(backend) as engine:
        async with engine.worker([twice], [double]) as worker:
            worker._takes = lambda name: False  # type: ignore[method-assign]
            first = await engine.start(twice, 1, key="k")  # queued, not yet run
            worker._takes = lambda name: True  # type: ignore[method-assign]
            second = await engine.start(twice, 2, key="k")
            assert second.run_id == first.run_id
            assert backend.start_commits == 1
            assert await first.result(timeout=10) == 4
            assert len([r async for r in engine.list_runs()]) == 1
