"""Conformance under real concurrency: claimers on one object, on several objects sharing the
store, and in several processes never get the same task; racing finishes and commits apply once.

The multi-object and multi-process tests are skipped for a store private to one object
(``memory://``): there is nothing shared to race on.
"""

from __future__ import annotations

import multiprocessing
import queue
import traceback
from collections import Counter
from collections.abc import Sequence
from typing import Any

import anyio
import pytest

from ..backends.base import Backend, StepTask
from ..kernel import events as ev
from ._conformance_support import (
    T0,
    claim_run,
    close_backend,
    commit,
    inbox_events,
    open_backend,
    signal,
    start_with,
    step,
    store_is_shared,
)

__all__ = [
    "test_concurrent_claimers_never_share_a_task",
    "test_claimers_on_separate_objects_never_share_a_task",
    "test_claimers_in_separate_processes_never_share_a_task",
    "test_racing_finishes_deliver_a_step_result_once",
    "test_racing_commits_under_one_lease_apply_once",
]

RUNS = 6
STEPS = 5
HOLD = 3600.0
"""Lease length while claiming: nothing expires during a test, so every claim is final."""

Claim = tuple[str, str, int]


async def _populate(b: Backend) -> set[Claim]:
    """RUNS runs with STEPS ready step tasks each and a ready workflow task each."""
    expected: set[Claim] = set()
    runs = [
        await start_with(b, steps=tuple(step(i) for i in range(1, STEPS + 1))) for _ in range(RUNS)
    ]
    for rec in runs:
        assert await b.append_inbox(rec.run_id, (signal("go"),), T0)
        expected.add(("wf", rec.run_id, 0))
        expected.update(("step", rec.run_id, i) for i in range(1, STEPS + 1))
    return expected


async def _claim_until_empty(b: Backend, claimed: list[Claim], budget: int) -> None:
    """Claim workflow and step tasks (two at a time) until none is left or ``budget`` claims
    were made in all (a backend that hands tasks out again would never run dry)."""
    while len(claimed) < budget:
        wf = await b.claim_workflow_task(T0, HOLD)
        if wf is not None:
            claimed.append(("wf", wf.run.run_id, 0))
        await anyio.sleep(0)
        steps = await b.claim_step_tasks(T0, 2, HOLD)
        claimed.extend(("step", t.run_id, t.seq) for t in steps)
        if wf is None and not steps:
            return
        await anyio.sleep(0)


def _check(claimed: Sequence[Claim], expected: set[Claim]) -> None:
    dups = sorted(k for k, n in Counter(claimed).items() if n > 1)
    assert not dups, f"{len(dups)} task(s) handed to more than one claimer, e.g. {dups[:5]}"
    assert set(claimed) == expected, (
        f"missing {sorted(expected - set(claimed))[:5]}, unexpected "
        f"{sorted(set(claimed) - expected)[:5]}"
    )


async def test_concurrent_claimers_never_share_a_task(conformance_backend: Backend) -> None:
    """Eight concurrent claimers on one backend object."""
    b = conformance_backend
    expected = await _populate(b)
    claimed: list[Claim] = []
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(_claim_until_empty, b, claimed, 3 * len(expected))
    _check(claimed, expected)


async def _others(url: str, n: int) -> list[Backend]:
    return [await open_backend(url) for _ in range(n)]


async def test_claimers_on_separate_objects_never_share_a_task(
    conformance_backend: Backend, conformance_url: str
) -> None:
    """Claimers on four backend objects opened on the same store, concurrently."""
    b = conformance_backend
    expected = await _populate(b)
    if not await store_is_shared(conformance_url, next(iter(expected))[1]):
        pytest.skip("the store is private to one backend object (e.g. memory://)")
    objects = [b, *await _others(conformance_url, 3)]
    claimed: list[Claim] = []
    try:
        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                for obj in objects:
                    for _ in range(2):
                        tg.start_soon(_claim_until_empty, obj, claimed, 3 * len(expected))
    finally:
        for obj in objects[1:]:
            await close_backend(obj)
    _check(claimed, expected)


def _process_claimer(url: str, probe: str, budget: int, barrier: Any, results: Any) -> None:
    """Body of one claiming process: open ``url``, wait for the others, claim until empty."""

    async def main() -> tuple[bool, list[Claim]]:
        b = await open_backend(url)
        try:
            seen = await b.get_run(probe) is not None
            claimed: list[Claim] = []
            barrier.wait(60)
            await _claim_until_empty(b, claimed, budget)
            return seen, claimed
        finally:
            with anyio.fail_after(30):
                await b.close()

    try:
        results.put(("ok", anyio.run(main)))
    except BaseException:  # report, never hang the parent
        results.put(("error", traceback.format_exc(limit=-8)))


def _run_processes(url: str, probe: str, budget: int, n: int) -> list[Any]:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(n)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_process_claimer, args=(url, probe, budget, barrier, results))
        for _ in range(n)
    ]
    for p in procs:
        p.start()
    out = []
    try:
        for _ in range(n):
            out.append(results.get(timeout=180))
    except queue.Empty:
        out.append(("error", "a claiming process reported nothing within 180s"))
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join()
    return out


async def test_claimers_in_separate_processes_never_share_a_task(
    conformance_backend: Backend, conformance_url: str
) -> None:
    """Three processes (spawned) open the store's URL and claim concurrently until empty."""
    b = conformance_backend
    expected = await _populate(b)
    probe = next(iter(expected))[1]
    if not await store_is_shared(conformance_url, probe):
        pytest.skip("the store is private to one backend object (e.g. memory://)")
    out = await anyio.to_thread.run_sync(
        _run_processes, conformance_url, probe, 3 * len(expected), 3
    )
    errors = [detail for kind, detail in out if kind != "ok"]
    assert not errors, f"claiming processes failed: {errors}"
    if not any(seen for _, (seen, _) in out):
        pytest.skip("the store is not shared between processes")
    claimed = [c for _, (_, part) in out for c in part]
    _check(claimed, expected)


async def _pair(b: Backend, url: str, probe: str) -> tuple[Backend, Backend | None]:
    """A second object on the store when it is shared, else the same object again."""
    if await store_is_shared(url, probe):
        other = await open_backend(url)
        return other, other
    return b, None


async def test_racing_finishes_deliver_a_step_result_once(
    conformance_backend: Backend, conformance_url: str
) -> None:
    b = conformance_backend
    rec = await start_with(b, steps=(step(1),))
    other, opened = await _pair(b, conformance_url, rec.run_id)
    try:
        (task,) = await b.claim_step_tasks(T0, 1, HOLD)
        results: list[bool] = []
        outcomes = [ev.StepCompleted(1, f"from-{i}") for i in range(6)]

        async def finish(obj: Backend, outcome: ev.Event) -> None:
            results.append(await obj.finish_step(rec.run_id, 1, task.lease, outcome, T0 + 1))

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for i, outcome in enumerate(outcomes):
                    tg.start_soon(finish, b if i % 2 else other, outcome)
    finally:
        if opened is not None:
            await close_backend(opened)
    assert sorted(results) == [False] * 5 + [True], results
    got = await claim_run(b, rec.run_id, T0 + 1)
    delivered = inbox_events(got.inbox)
    assert len(delivered) == 1 and delivered[0] in outcomes, delivered


async def test_racing_commits_under_one_lease_apply_once(
    conformance_backend: Backend, conformance_url: str
) -> None:
    b = conformance_backend
    rec = await start_with(b)
    assert await b.append_inbox(rec.run_id, (signal("x"),), T0)
    other, opened = await _pair(b, conformance_url, rec.run_id)
    try:
        got = await claim_run(b, rec.run_id)
        history = await b.read_history(rec.run_id)
        c = commit(
            got,
            T0 + 1,
            events=(signal("x"), ev.Activated(T0 + 1)),
            steps=(StepTask(rec.run_id, 7, "s", [], 1, T0 + 1),),
        )
        results: list[bool] = []

        async def apply(obj: Backend) -> None:
            results.append(await obj.apply_commit(c))

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for i in range(6):
                    tg.start_soon(apply, b if i % 2 else other)
    finally:
        if opened is not None:
            await close_backend(opened)
    assert sorted(results) == [False] * 5 + [True], results
    assert await b.read_history(rec.run_id) == [*history, *c.events]
    assert [(t.run_id, t.seq) for t in await b.claim_step_tasks(T0 + 1, 10, HOLD)] == [
        (rec.run_id, 7)
    ]
