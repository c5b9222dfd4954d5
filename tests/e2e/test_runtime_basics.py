"""Core runtime behaviour through the time-skipping environment, on every backend."""

from __future__ import annotations

import pytest

import plait
from plait.testing import TimeSkippingEnvironment

pytestmark = pytest.mark.anyio

CALLS: dict[str, int] = {}


@plait.step
async def double(x: int) -> int:
    return x * 2


@plait.step(
    retry=plait.RetryPolicy(max_attempts=4, initial_interval=600, backoff=2, max_interval=3600)
)
async def flaky(name: str) -> str:
    CALLS[name] = CALLS.get(name, 0) + 1
    if CALLS[name] < 3:
        raise RuntimeError(f"attempt {CALLS[name]} failed")
    return f"ok after {CALLS[name]}"


@plait.workflow
async def hourly(days: int) -> int:
    total = 0
    for _ in range(days * 24):
        await plait.sleep(3600)
        total += 1
    return total


@plait.workflow
async def retrying(name: str) -> str:
    return await flaky(name)


@plait.workflow
async def with_timeout(seconds: float) -> str:
    try:
        await plait.wait_for(plait.sleep(10_000), seconds)
    except plait.Timeout:
        return "timed out"
    return "slept"


@plait.workflow
async def approval() -> list[str]:
    hook = plait.hook(token="approve-1")
    got = []
    async for payload in hook:
        got.append(payload)
        if len(got) == 2:
            hook.close()
    return got


@plait.workflow
async def cancellable() -> str:
    try:
        await plait.sleep(86_400)
    except plait.Cancelled:
        await double(1)  # cleanup step
        raise
    return "finished"


@plait.workflow
async def adder(a: int) -> int:
    return await double(a)


WFS = [hourly, retrying, with_timeout, approval, cancellable, adder]
STEPS = [double, flaky]


async def test_thirty_days_of_hourly_timers_are_skipped(backend_url: str) -> None:
    # Wall time is measured by benchmarks/ (timers workload), not asserted here.
    async with TimeSkippingEnvironment(backend_url, WFS, STEPS) as env:
        t0 = env.now()
        run = await env.start(hourly, 30)
        assert await run.result() == 720
        assert (env.now() - t0).days == 30
        rec = await env.get_run(run.run_id)
        assert rec.status == "completed"
        assert rec.closed_at - rec.created_at == pytest.approx(720 * 3600)


async def test_step_retry_backoff_is_skipped(backend_url: str) -> None:
    async with TimeSkippingEnvironment(backend_url, WFS, STEPS) as env:
        t0 = env.clock.now()
        run = await env.start(retrying, f"r-{backend_url}")
        assert await run.result() == "ok after 3"
        assert env.clock.now() - t0 == pytest.approx(600 + 1200)
        history = await env.history(run.run_id)
        done = [e for e in history if type(e).__name__ == "StepCompleted"]
        assert done[0].attempts == 3


async def test_env_sleep_fires_wait_for_timeout(backend_url: str) -> None:
    async with TimeSkippingEnvironment(backend_url, WFS, STEPS) as env:
        run = await env.start(with_timeout, 60.0)
        await env.sleep(59)
        assert (await env.get_run(run.run_id)).status == "running"
        await env.sleep(1)
        assert (await env.get_run(run.run_id)).status == "completed"
        assert await run.result() == "timed out"


async def test_hook_several_payloads_then_closed(backend_url: str) -> None:
    async with TimeSkippingEnvironment(backend_url, WFS, STEPS) as env:
        run = await env.start(approval)
        await env.sleep(0)
        await env.resume_hook("approve-1", "first")
        await env.resume_hook("approve-1", "second")
        assert await run.result() == ["first", "second"]
        with pytest.raises(plait.HookNotFound):
            await env.resume_hook("approve-1", "late")
        with pytest.raises(plait.HookNotFound):
            await env.resume_hook("never-created", 1)


async def test_cancel_runs_cleanup_then_cancels(backend_url: str) -> None:
    async with TimeSkippingEnvironment(backend_url, WFS, STEPS) as env:
        run = await env.start(cancellable)
        await env.sleep(10)
        assert await env.cancel(run.run_id)
        with pytest.raises(plait.RunCancelled):
            await run.result()
        names = [type(e).__name__ for e in await env.history(run.run_id)]
        assert "TimerCancelled" in names and "StepCompleted" in names
        assert names[-1] == "RunCancelled"


async def test_terminate_closes_at_once(backend_url: str) -> None:
    async with TimeSkippingEnvironment(backend_url, WFS, STEPS) as env:
        run = await env.start(cancellable)
        await env.sleep(1)
        assert await env.terminate(run.run_id, reason="ops")
        assert (await env.get_run(run.run_id)).status == "terminated"
        with pytest.raises(plait.RunTerminated):
            await run.result()
        assert not await env.terminate(run.run_id)


async def test_start_is_idempotent_by_key_while_open(backend_url: str) -> None:
    async with TimeSkippingEnvironment(backend_url, WFS, STEPS) as env:
        a = await env.start(cancellable, key="k1")
        b = await env.start(cancellable, key="k1")
        assert a.run_id == b.run_id
        await env.terminate(a.run_id)
        c = await env.start(cancellable, key="k1")
        assert c.run_id != a.run_id


async def test_unserializable_argument_is_rejected_and_creates_no_run(backend_url: str) -> None:
    async with TimeSkippingEnvironment(backend_url, WFS, STEPS) as env:
        with pytest.raises(TypeError, match=r"args\[0\] \(a\)"):
            await env.start(adder, object())
        assert [r async for r in env.list_runs()] == []


async def test_unknown_workflow_blocks_with_reason(backend_url: str) -> None:
    async with TimeSkippingEnvironment(backend_url, WFS, STEPS) as env:
        run = await env.start("no.such.workflow")
        with pytest.raises(plait.Timeout, match="blocked"):
            await run.result()
        rec = await env.get_run(run.run_id)
        assert rec.status == "blocked"
        assert "no.such.workflow" in (rec.block_reason or "")
