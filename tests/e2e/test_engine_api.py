"""The Engine's client API, the step context, step timeouts and retries, payload limits,
backend URLs, and recovery of a run blocked by nondeterminism."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import pytest

import plait
from plait.kernel.registry import WorkflowFunction
from plait.plugins.manager import backend_from_url
from plait.testing import TimeSkippingEnvironment, replay_all

pytestmark = pytest.mark.anyio

_START = 1_767_225_600.0  # the environment's default virtual start (2026-01-01T00:00:00Z)


# -- steps -------------------------------------------------------------------------------------


@plait.step
async def square(x: int) -> int:
    return x * x


@plait.step
async def cube(x: int) -> int:
    return x * x * x


@plait.step(timeout=120.0)
async def starts_a_run(x: int) -> dict[str, Any]:
    info = plait.step_info()
    handle = await plait.engine().start(leaf, x, key=f"spawned-{x}")
    return {
        "run_id": info.run_id,
        "seq": info.seq,
        "step": info.step,
        "attempt": info.attempt,
        "idempotency_key": info.idempotency_key,
        "deadline": info.deadline,
        "spawned": handle.run_id,
    }


@plait.step
def blocking_io(x: int) -> dict[str, Any]:
    """A sync step: the worker runs it in a thread, with the step context copied in."""
    return {"thread": threading.get_ident(), "run_id": plait.step_info().run_id, "x": x}


@plait.step(timeout=0.05, retry=plait.RetryPolicy(max_attempts=2, initial_interval=5))
async def too_slow() -> str:
    await anyio.sleep(1)  # real time: the 0.05 s timeout cuts it short
    return "never"


NON_RETRYABLE_CALLS: list[str] = []


@plait.step(
    retry=plait.RetryPolicy(max_attempts=5, initial_interval=1, non_retryable=(ValueError,))
)
async def rejects(kind: str) -> str:
    NON_RETRYABLE_CALLS.append(kind)
    if kind == "value":
        raise ValueError("bad input")
    raise KeyError("transient")


@plait.step
async def big_result(n: int) -> str:
    return "x" * n


# -- workflows ---------------------------------------------------------------------------------


@plait.workflow
async def leaf(x: int) -> int:
    return await square(x)


@plait.workflow
async def napper(seconds: float) -> str:
    await plait.sleep(seconds)
    return "rested"


@plait.workflow
async def boom(message: str) -> int:
    raise RuntimeError(message)


@plait.workflow
async def parent_waits(x: int) -> int:
    return await plait.child(leaf, x)


@plait.workflow
async def hook_waiter(token: str) -> Any:
    return await plait.hook(token=token)


@plait.workflow
async def two_steps_and_a_nap(x: int) -> int:
    a = await square(x)
    await plait.sleep(5)
    return a + await cube(x)


@plait.workflow
async def uses_step_context(x: int) -> dict[str, Any]:
    await square(x)
    return await starts_a_run(x)


@plait.workflow
async def uses_sync_step(x: int) -> dict[str, Any]:
    return await blocking_io(x)


@plait.workflow
async def times_out() -> list[Any]:
    try:
        await too_slow()
    except plait.StepFailed as exc:
        return [exc.attempts, exc.cause.type, exc.step]
    return []


@plait.workflow
async def step_rejects(kind: str) -> list[Any]:
    try:
        await rejects(kind)
    except plait.StepFailed as exc:
        return [exc.attempts, exc.cause.type, exc.cause.non_retryable]
    return []


@plait.workflow
async def wants_big(n: int) -> str:
    try:
        return await big_result(n)
    except plait.StepFailed as exc:
        return f"{exc.attempts}: {exc.cause.message}"


@plait.workflow(name="e2e.versioned")
async def versioned(x: int) -> int:
    a = await square(x)
    await plait.sleep(60)
    return a + await square(x + 1)


async def _versioned_v2(x: int) -> int:  # an incompatible change: another first step
    a = await cube(x)
    await plait.sleep(60)
    return a + await square(x + 1)


async def _versioned_v3(x: int) -> int:  # the fix: the change behind a patch
    if plait.patched("use-cube"):
        a = await cube(x)
    else:
        a = await square(x)
    await plait.sleep(60)
    return a + await square(x + 1)


# Built without the decorator: three functions under one name must not share the default
# registry, which tests using it (plait.run without workflows=) would then refuse.
versioned_v2 = WorkflowFunction(_versioned_v2, name=versioned.name)
versioned_v3 = WorkflowFunction(_versioned_v3, name=versioned.name)

WORKFLOWS = [
    leaf,
    napper,
    boom,
    parent_waits,
    hook_waiter,
    two_steps_and_a_nap,
    uses_step_context,
    uses_sync_step,
    times_out,
    step_rejects,
    wants_big,
    versioned,
]
STEPS = [square, cube, starts_a_run, blocking_io, too_slow, rejects, big_result]


def names(history: list[Any]) -> list[str]:
    return [type(e).__name__ for e in history]


# -- client API --------------------------------------------------------------------------------


async def test_list_runs_filters(backend_url: str) -> None:
    async with TimeSkippingEnvironment(backend_url, WORKFLOWS, STEPS) as env:
        done = await env.start(leaf, 2)
        failed = await env.start(boom, "no")
        waiting = await env.start(hook_waiter, "list-token")
        parent = await env.start(parent_waits, 3)
        assert await done.result() == 4
        assert await parent.result() == 9
        with pytest.raises(plait.RunFailed):
            await failed.result()

        async def ids(**filters: Any) -> list[str]:
            return [r.run_id async for r in env.list_runs(**filters)]

        (child,) = await ids(parent=parent.run_id)
        everything = await ids()
        assert everything == [done.run_id, failed.run_id, waiting.run_id, parent.run_id, child]
        assert await ids(status="completed") == [done.run_id, parent.run_id, child]
        assert await ids(status=plait.RunStatus.FAILED) == [failed.run_id]
        assert await ids(status="running") == [waiting.run_id]
        assert await ids(workflow=leaf.name) == [done.run_id, child]
        assert await ids(workflow=leaf.name, parent=parent.run_id) == [child]
        assert await ids(workflow=leaf.name, status="failed") == []
        assert await ids(parent=done.run_id) == []
        assert await ids(page_size=2) == everything  # paging returns every run once
        with pytest.raises(ValueError):
            await ids(status="no-such-status")


async def test_get_run_fields(backend_url: str) -> None:
    async with TimeSkippingEnvironment(backend_url, WORKFLOWS, STEPS) as env:
        t0 = env.clock.now()
        ok = await env.start(napper, 90.0, key="nap-1")
        bad = await env.start(boom, "kaput")
        parent = await env.start(parent_waits, 5)
        pending = await env.get_run(ok.run_id)
        assert pending.status == "pending" and pending.closed_at is None
        assert pending.result is None and pending.error is None
        assert await ok.result() == "rested"
        with pytest.raises(plait.RunFailed):
            await bad.result()
        await parent.result()

        rec = await env.get_run(ok.run_id)
        assert rec.run_id == ok.run_id and rec.workflow == napper.name
        assert rec.key == "nap-1" and rec.parent_run_id is None
        assert rec.status == plait.RunStatus.COMPLETED and rec.closed
        assert rec.result == "rested" and rec.error is None
        assert rec.created_at == t0
        assert rec.closed_at == pytest.approx(t0 + 90)

        err = await env.get_run(bad.run_id)
        assert err.status == "failed" and err.result is None
        assert err.error is not None
        assert (err.error.type, err.error.message) == ("RuntimeError", "kaput")
        assert "RuntimeError: kaput" in err.error.traceback
        assert err.closed_at == t0  # failed at once, no time passed

        (child,) = [r async for r in env.list_runs(parent=parent.run_id)]
        assert child.parent_run_id == parent.run_id and child.result == 25
        with pytest.raises(plait.RunNotFound):
            await env.get_run("missing")


async def test_history_is_in_order(backend_url: str) -> None:
    async with TimeSkippingEnvironment(backend_url, WORKFLOWS, STEPS) as env:
        run = await env.start(two_steps_and_a_nap, 2)
        assert await run.result() == 4 + 8
        history = await env.history(run.run_id)
        assert names(history) == [
            "RunStarted",
            "Activated",
            "StepScheduled",
            "StepCompleted",
            "Activated",
            "TimerStarted",
            "TimerFired",
            "Activated",
            "StepScheduled",
            "StepCompleted",
            "Activated",
            "RunCompleted",
        ]
        seqs = [e.seq for e in history if hasattr(e, "seq")]
        assert seqs == [1, 1, 2, 2, 3, 3, 4]
        times = [e.time for e in history if type(e).__name__ == "Activated"]
        assert times == sorted(times) and times[-1] - times[0] == pytest.approx(5)
        assert history[0].run_id == run.run_id and history[0].args == [2]
        with pytest.raises(plait.RunNotFound):
            await env.history("missing")


async def test_client_calls_on_unknown_ids(backend_url: str) -> None:
    async with TimeSkippingEnvironment(backend_url, WORKFLOWS, STEPS) as env:
        with pytest.raises(plait.RunNotFound):
            await env.cancel("missing")
        with pytest.raises(plait.RunNotFound):
            await env.terminate("missing")
        with pytest.raises(plait.HookNotFound):
            await env.resume_hook("missing-token", 1)


async def test_result_timeout_in_virtual_time(backend_url: str) -> None:
    async with TimeSkippingEnvironment(backend_url, WORKFLOWS, STEPS) as env:
        run = await env.start(napper, 3600.0)
        t0 = env.clock.now()
        with pytest.raises(plait.Timeout):
            await run.result(timeout=60)
        assert env.clock.now() - t0 == pytest.approx(60)
        assert (await env.get_run(run.run_id)).status == "running"
        assert await run.result() == "rested"


def test_plait_run_sync_helper() -> None:
    assert plait.run(leaf, 7, workflows=WORKFLOWS, steps=STEPS, timeout=10) == 49
    with pytest.raises(plait.RunFailed, match="sync kaput"):
        plait.run(boom, "sync kaput", workflows=WORKFLOWS, steps=STEPS, timeout=10)


# -- inside steps ------------------------------------------------------------------------------


async def test_step_info_and_engine_inside_a_step(backend_url: str) -> None:
    async with TimeSkippingEnvironment(backend_url, WORKFLOWS, STEPS) as env:
        run = await env.start(uses_step_context, 6)
        got = await run.result()
        assert got["run_id"] == run.run_id
        assert got["seq"] == 2 and got["attempt"] == 1
        assert got["step"] == starts_a_run.name
        assert got["idempotency_key"] == f"{run.run_id}:2"
        assert got["deadline"] == pytest.approx(env.clock.now() + 120, abs=1)
        spawned = await env.get_run(got["spawned"])
        assert spawned.workflow == leaf.name and spawned.key == "spawned-6"
        assert spawned.parent_run_id is None  # a run of its own, not a child
        assert await env.engine.handle(spawned.run_id, leaf).result() == 36
        with pytest.raises(plait.WorkflowError):
            plait.step_info()
        with pytest.raises(plait.WorkflowError):
            plait.engine()


async def test_sync_step_runs_in_a_thread(backend_url: str) -> None:
    async with TimeSkippingEnvironment(backend_url, WORKFLOWS, STEPS) as env:
        run = await env.start(uses_sync_step, 4)
        got = await run.result()
        assert got["thread"] != threading.get_ident()
        assert got["run_id"] == run.run_id and got["x"] == 4


async def test_step_timeout_fails_after_retries(backend_url: str) -> None:
    async with TimeSkippingEnvironment(backend_url, WORKFLOWS, STEPS) as env:
        run = await env.start(times_out)
        assert await run.result() == [2, "TimeoutError", too_slow.name]
        failed = [e for e in await env.history(run.run_id) if type(e).__name__ == "StepFailed"]
        assert len(failed) == 1
        assert failed[0].attempts == 2 and failed[0].error.type == "TimeoutError"


async def test_non_retryable_error_fails_at_once(backend_url: str) -> None:
    async with TimeSkippingEnvironment(backend_url, WORKFLOWS, STEPS) as env:
        NON_RETRYABLE_CALLS.clear()
        run = await env.start(step_rejects, "value")
        assert await run.result() == [1, "ValueError", True]
        assert NON_RETRYABLE_CALLS == ["value"]
        other = await env.start(step_rejects, "key")  # retryable: all five attempts
        assert await other.result() == [5, "KeyError", False]
        assert NON_RETRYABLE_CALLS == ["value"] + ["key"] * 5


# -- limits and configuration ------------------------------------------------------------------


async def test_oversized_payloads_are_rejected(backend_url: str) -> None:
    async with plait.Engine(backend_url, max_payload_bytes=200) as engine:
        with pytest.raises(plait.PayloadTooLarge, match="over the limit of 200"):
            await engine.start(napper, "x" * 500)
        assert [r async for r in engine.list_runs()] == []
    async with TimeSkippingEnvironment(backend_url, WORKFLOWS, STEPS) as env:
        env.engine.max_payload_bytes = 200
        waiting = await env.start(hook_waiter, "big-token")
        await env.sleep(0)
        with pytest.raises(plait.PayloadTooLarge):
            await env.signal(waiting.run_id, "s", "y" * 500)
        with pytest.raises(plait.PayloadTooLarge):
            await env.resume_hook("big-token", "y" * 500)
        assert names(await env.history(waiting.run_id))[-1] == "HookCreated"  # nothing arrived
        run = await env.start(wants_big, 500)  # a step result over the limit: not retried
        message = await run.result()
        assert message.startswith("1: ") and "over the limit of 200" in message
        small = await env.start(wants_big, 10)
        assert await small.result() == "x" * 10


async def test_unknown_backend_scheme_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"nosuch://.*memory://"):
        plait.Engine("nosuch://somewhere")
    with pytest.raises(ValueError, match="no scheme"):
        plait.Engine("just-a-path.db")


# -- nondeterminism ----------------------------------------------------------------------------


async def test_nondeterminism_blocks_and_a_fixed_deploy_resumes(backend_url: str) -> None:
    backend = backend_from_url(backend_url)  # one store shared by three "deploys"
    async with TimeSkippingEnvironment(backend, [versioned], STEPS, seed="v1") as env:
        run = await env.start(versioned, 3)
        await env.sleep(1)  # v1 ran its first step and sleeps for 60 s
        assert (await env.get_run(run.run_id)).status == "running"
        t = env.clock.now()

    async with TimeSkippingEnvironment(backend, [versioned_v2], STEPS, seed="v2", start=t) as env:
        with pytest.raises(plait.Timeout, match="blocked"):
            await env.engine.handle(run.run_id).result()
        rec = await env.get_run(run.run_id)
        assert rec.status == "blocked"
        assert rec.block_reason is not None
        assert "NonDeterminismError" in rec.block_reason and "seq 1" in rec.block_reason
        assert [r.run_id async for r in env.list_runs(status="blocked")] == [run.run_id]
        before = await env.history(run.run_id)
        assert "RunFailed" not in names(before)
        t = env.clock.now()

    async with TimeSkippingEnvironment(backend, [versioned_v3], STEPS, seed="v3", start=t) as env:
        assert await env.engine.handle(run.run_id, versioned_v3).result() == 9 + 16
        rec = await env.get_run(run.run_id)
        assert rec.status == "completed" and rec.block_reason is None
        history = await env.history(run.run_id)
        assert history[: len(before)] == before  # the blocked attempt appended nothing
        steps = [e.name for e in history if type(e).__name__ == "StepScheduled"]
        assert steps == [square.name, square.name]
        assert "PatchMarker" not in names(history)
        assert replay_all([history], [versioned_v3]) == 1
