"""Worker crashes: abandoned step leases, an activation that dies before its commit, and stale
commits fenced out. Each run still completes, and nothing is created twice."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

import plait
from plait.backends.base import Commit
from plait.kernel.machine import Machine
from plait.runtime._commit import build_commit
from plait.testing import TimeSkippingEnvironment, replay_all

pytestmark = pytest.mark.anyio

GATE_CALLS: dict[str, int] = {}


@plait.step
async def gate(name: str) -> str:
    """Hangs on its first call (the worker dies while it runs), returns on later calls."""
    GATE_CALLS[name] = GATE_CALLS.get(name, 0) + 1
    if GATE_CALLS[name] == 1:
        await anyio.Event().wait()  # never fires
    info = plait.step_info()
    return f"{name} passed on call {GATE_CALLS[name]} (attempt {info.attempt})"


@plait.step
async def square(x: int) -> int:
    return x * x


@plait.workflow
async def reporter(token: str, i: int) -> int:
    await plait.resume_hook(token, i)
    return await square(i)


@plait.workflow
async def crashy_parent(name: str, n: int) -> dict[str, Any]:
    hook = plait.hook()
    handles = await plait.all(*(plait.start_child(reporter, hook.token, i) for i in range(n)))
    passed = await gate(name)
    got = [await hook for _ in range(n)]
    squares = await plait.all(*(h.result() for h in handles))
    return {"gate": passed, "payloads": sorted(got), "squares": squares}


@plait.workflow
async def two_steps(x: int) -> int:
    a = await square(x)
    return a + await square(a)


WORKFLOWS = [reporter, crashy_parent, two_steps]
STEPS = [gate, square]


def of(history: list[Any], kind: str) -> list[Any]:
    return [e for e in history if type(e).__name__ == kind]


async def assert_nothing_created_twice(env: TimeSkippingEnvironment, parent: str, n: int) -> None:
    runs = [r async for r in env.list_runs()]
    histories = {r.run_id: await env.history(r.run_id) for r in runs}
    kids = [r for r in runs if r.parent_run_id == parent]
    assert len(kids) == n
    assert len({k.run_id for k in kids}) == n == len(runs) - 1
    scheduled = of(histories[parent], "ChildScheduled")
    assert sorted(e.child_run_id for e in scheduled) == sorted(k.run_id for k in kids)
    assert len(of(histories[parent], "ChildStarted")) == n
    assert sum(len(of(h, "HookCreated")) for h in histories.values()) == 1
    assert len(of(histories[parent], "HookReceived")) == n
    for k in kids:
        assert len(of(histories[k.run_id], "RunStarted")) == 1
        assert len(of(histories[k.run_id], "HookResumeSent")) == 1
    assert replay_all(histories, WORKFLOWS) == len(runs)


async def test_worker_dies_while_a_step_runs(backend_url: str) -> None:
    name = f"gate-{backend_url}"
    async with TimeSkippingEnvironment(backend_url, WORKFLOWS, STEPS, deterministic=True) as env:
        run = await env.start(crashy_parent, name, 3)
        crashed = False
        for _ in range(100):
            with anyio.move_on_after(0.05) as scope:
                progressed = await env.worker.run_one()
            if scope.cancelled_caught:
                crashed = True  # the worker "died" inside the gate step, holding its lease
                break
            assert progressed
        assert crashed and GATE_CALLS[name] == 1
        st = await env.backend.state(env.clock.now())
        assert st.leased_steps == 1
        t0 = env.clock.now()
        result = await run.result()
        assert GATE_CALLS[name] == 2
        assert result["gate"].startswith(f"{name} passed on call 2")
        assert result["payloads"] == [0, 1, 2] and result["squares"] == [0, 1, 4]
        # Time skipped to the abandoned step lease's expiry (step_lease_seconds=30).
        assert env.clock.now() - t0 == pytest.approx(env.worker.step_lease_seconds)
        history = await env.history(run.run_id)
        gate_seq = [e.seq for e in of(history, "StepScheduled") if e.name == gate.name]
        assert len(gate_seq) == 1
        assert [e.seq for e in of(history, "StepCompleted")] == gate_seq
        await assert_nothing_created_twice(env, run.run_id, 3)


async def test_worker_dies_between_claim_and_commit(
    backend_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"nogate-{backend_url}"
    GATE_CALLS[name] = 1  # the gate lets this run through at once
    async with TimeSkippingEnvironment(backend_url, WORKFLOWS, STEPS) as env:
        real_apply = env.backend.apply_commit
        crashes: list[Commit] = []

        async def apply_commit(commit: Commit) -> bool:
            if commit.new_runs and not crashes:
                crashes.append(commit)
                raise RuntimeError("worker crashed before its commit")
            return await real_apply(commit)

        monkeypatch.setattr(env.backend, "apply_commit", apply_commit)
        run = await env.start(crashy_parent, name, 3)
        with pytest.raises(RuntimeError, match="worker crashed"):
            await run.result()
        assert len(crashes[0].new_runs) == 3 and len(crashes[0].hooks) == 1
        # Nothing of the lost commit was applied.
        assert [r.run_id async for r in env.list_runs()] == [run.run_id]
        rec = await env.get_run(run.run_id)
        assert rec.status == "pending"
        assert await env.history(run.run_id) == []
        t0 = env.clock.now()
        result = await run.result()
        assert result["payloads"] == [0, 1, 2]
        # The run waited for its workflow lease to expire (lease_seconds=30).
        assert env.clock.now() - t0 == pytest.approx(env.worker.lease_seconds)
        assert env.worker.stats["replays"] >= 1
        await assert_nothing_created_twice(env, run.run_id, 3)


async def test_stale_commit_is_fenced_out(backend_url: str) -> None:
    async with TimeSkippingEnvironment(backend_url, WORKFLOWS, STEPS) as env:
        run = await env.start(two_steps, 3)
        backend = env.backend
        first = await backend.claim_workflow_task(env.clock.now(), 30)
        assert first is not None and first.run.run_id == run.run_id
        # Worker A computes its activation but stalls before committing.
        machine = Machine(two_steps, await backend.read_history(run.run_id))
        commands = machine.activate([e.event for e in first.inbox], env.clock.now())
        stale = build_commit(
            first.run,
            first.lease,
            env.clock.now(),
            machine.new_events,
            commands,
            first.inbox[-1].id,
            env.engine.new_seed,
        )
        assert stale.steps  # it would schedule the first step
        assert await backend.claim_workflow_task(env.clock.now(), 30) is None  # still leased
        env.clock.advance_to(env.clock.now() + 31)
        second = await backend.claim_workflow_task(env.clock.now(), 30)
        assert second is not None and second.run.run_id == run.run_id
        assert second.lease != first.lease
        assert [e.event for e in second.inbox] == [e.event for e in first.inbox]
        # A's commit arrives late: rejected, and nothing of it is applied.
        assert await backend.apply_commit(stale) is False
        assert await env.history(run.run_id) == []
        assert (await env.get_run(run.run_id)).status == "pending"
        st = await backend.state(env.clock.now())
        assert st.ready_steps == 0 and st.leased_steps == 0
        # Worker B, holding the live lease, commits normally and the run completes once.
        await env.worker.activate(second)
        assert await backend.apply_commit(stale) is False
        assert await run.result() == 9 + 81
        history = await env.history(run.run_id)
        assert len(of(history, "RunStarted")) == 1
        assert [e.seq for e in of(history, "StepScheduled")] == [1, 2]
        assert len(of(history, "RunCompleted")) == 1
        assert replay_all([history], WORKFLOWS) == 1


@plait.workflow
async def long_child(seconds: float) -> str:
    await plait.sleep(seconds)
    return "outlived"


@plait.workflow
async def leaves_child_behind(seconds: float) -> str:
    h = await plait.start_child(long_child, seconds)  # parent_close=TERMINATE (default)
    return h.run_id


WORKFLOWS += [long_child, leaves_child_behind]


@pytest.mark.xfail(
    strict=True,
    reason="runtime gap: parent-close policies are applied by the worker after the closing "
    "commit, outside it; a worker that dies in between leaves the child open for good",
)
async def test_worker_dies_after_the_parent_closed_before_its_children_were_closed(
    backend_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with TimeSkippingEnvironment(backend_url, WORKFLOWS, STEPS) as env:
        real = env.engine.apply_parent_close
        crashed: list[str] = []

        async def apply_parent_close(run_id: str) -> None:
            if not crashed:
                crashed.append(run_id)
                raise RuntimeError("worker died after the parent's commit")
            await real(run_id)

        monkeypatch.setattr(env.engine, "apply_parent_close", apply_parent_close)
        run = await env.start(leaves_child_behind, 1000.0)
        with pytest.raises(RuntimeError, match="worker died"):
            await run.result()
        child_id = await run.result()  # the parent's close was committed
        assert crashed == [run.run_id]
        await env.sleep(2000)
        # The default TERMINATE policy should still close the child; it ran to the end.
        assert (await env.get_run(child_id)).status == "terminated"
