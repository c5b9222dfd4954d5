"""Hooks and signals end to end: completion hooks, token conflicts and reuse, buffered signals."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

import plait
from plait.testing import TimeSkippingEnvironment

pytestmark = pytest.mark.anyio


@dataclasses.dataclass
class Approval:
    by: str
    ok: bool


@plait.step
async def square(x: int) -> int:
    return x * x


@plait.workflow
async def reporter(token: str, i: int) -> int:
    """A child that reports back through its parent's hook (Vercel's startAndWait)."""
    value = await square(i)
    await plait.resume_hook(token, {"i": i, "value": value})
    return i


@plait.workflow
async def collect_via_hook(n: int) -> dict[str, Any]:
    hook = plait.hook()
    handles = await plait.all(*(plait.start_child(reporter, hook.token, i) for i in range(n)))
    got: list[dict[str, int]] = []
    async for payload in hook:
        got.append(payload)
        if len(got) == n:
            hook.close()
    finished = await plait.all(*(h.result() for h in handles))
    return {"token": hook.token, "payloads": got, "finished": finished}


@plait.workflow
async def resume_missing(token: str) -> str:
    try:
        await plait.resume_hook(token, 1)
    except plait.HookNotFound as exc:
        return f"not found: {exc.token}"
    return "delivered"


@plait.workflow
async def one_payload(token: str) -> Any:
    return await plait.hook(token=token)


@plait.workflow
async def typed_hook(token: str) -> str:
    approval = await plait.hook(token=token, type=Approval)
    assert isinstance(approval, Approval)
    return f"{approval.by}:{approval.ok}"


@plait.workflow
async def maybe_conflict(token: str) -> str:
    hook = plait.hook(token=token)
    try:
        await hook
    except plait.HookConflictError as exc:
        return f"conflict on {exc.token}"
    return "got one"


@plait.workflow
async def reuse_in_one_run(token: str) -> list[Any]:
    first = plait.hook(token=token)
    a = await first
    first.close()
    second = plait.hook(token=token)
    b = await second
    return [a, b]


@plait.workflow
async def open_and_close(token: str) -> str:
    hook = plait.hook(token=token)
    hook.close()  # in the same activation as its creation
    try:
        await hook
    except plait.HookNotFound:
        pass
    await plait.sleep(10)
    return "done"


@plait.workflow
async def signal_reader(n: int, delay: float) -> list[Any]:
    await plait.sleep(delay)
    return [await plait.signal("x") for _ in range(n)]


@plait.workflow
async def two_names() -> list[Any]:
    await plait.sleep(5)
    b = await plait.signal("b")
    a1 = await plait.signal("a")
    a2 = await plait.signal("a")
    return [b, a1, a2]


@plait.workflow
async def typed_signal() -> str:
    approval = await plait.signal("approve", type=Approval)
    return f"{approval.by}:{approval.ok}"


WORKFLOWS = [
    reporter,
    collect_via_hook,
    resume_missing,
    one_payload,
    typed_hook,
    maybe_conflict,
    reuse_in_one_run,
    open_and_close,
    signal_reader,
    two_names,
    typed_signal,
]
STEPS = [square]


def of(history: list[Any], kind: str) -> list[Any]:
    return [e for e in history if type(e).__name__ == kind]


async def test_children_report_back_through_a_completion_hook(backend_url: str) -> None:
    async with TimeSkippingEnvironment(backend_url, WORKFLOWS, STEPS) as env:
        run = await env.start(collect_via_hook, 6)
        result = await run.result()
        assert sorted(p["i"] for p in result["payloads"]) == list(range(6))
        assert all(p["value"] == p["i"] ** 2 for p in result["payloads"])
        assert result["finished"] == list(range(6))
        history = await env.history(run.run_id)
        assert len(of(history, "HookCreated")) == 1
        assert [e.payload for e in of(history, "HookReceived")] == result["payloads"]
        assert len(of(history, "HookDisposed")) == 1
        kids = [r async for r in env.list_runs(parent=run.run_id)]
        assert len(kids) == 6 and all(k.status == "completed" for k in kids)
        for k in kids:
            sent = of(await env.history(k.run_id), "HookResumeSent")
            assert [e.token for e in sent] == [result["token"]]
            assert [e.delivered for e in of(await env.history(k.run_id), "HookResumeResult")] == [
                True
            ]
        with pytest.raises(plait.HookNotFound):
            await env.resume_hook(result["token"], "late")


async def test_resume_hook_from_a_workflow_to_a_missing_token(backend_url: str) -> None:
    async with TimeSkippingEnvironment(backend_url, WORKFLOWS, STEPS) as env:
        run = await env.start(resume_missing, "nobody-listens")
        assert await run.result() == "not found: nobody-listens"
        results = of(await env.history(run.run_id), "HookResumeResult")
        assert [e.delivered for e in results] == [False]


async def test_hook_payload_structured_into_its_type(backend_url: str) -> None:
    async with TimeSkippingEnvironment(backend_url, WORKFLOWS, STEPS) as env:
        run = await env.start(typed_hook, "typed-1")
        await env.sleep(0)
        assert await env.resume_hook("typed-1", {"by": "ann", "ok": True}) == run.run_id
        assert await run.result() == "ann:True"


async def test_hook_conflict_between_two_runs(backend_url: str) -> None:
    async with TimeSkippingEnvironment(backend_url, WORKFLOWS, STEPS) as env:
        holder = await env.start(one_payload, "shared")
        await env.sleep(0)
        loser = await env.start(maybe_conflict, "shared")
        assert await loser.result() == "conflict on shared"
        history = await env.history(loser.run_id)
        assert [e.token for e in of(history, "HookConflict")] == ["shared"]
        # The token still belongs to the first run.
        assert await env.resume_hook("shared", "for the holder") == holder.run_id
        assert await holder.result() == "for the holder"
        assert of(await env.history(holder.run_id), "HookConflict") == []


async def test_token_reused_by_a_later_run_after_the_first_closed(backend_url: str) -> None:
    async with TimeSkippingEnvironment(backend_url, WORKFLOWS, STEPS) as env:
        first = await env.start(one_payload, "reusable")
        await env.sleep(0)
        assert await env.resume_hook("reusable", 1) == first.run_id
        assert await first.result() == 1
        second = await env.start(maybe_conflict, "reusable")
        await env.sleep(0)
        assert await env.resume_hook("reusable", 2) == second.run_id
        assert await second.result() == "got one"
        assert of(await env.history(second.run_id), "HookConflict") == []


async def test_token_reused_in_one_run_after_close(backend_url: str) -> None:
    async with TimeSkippingEnvironment(backend_url, WORKFLOWS, STEPS) as env:
        run = await env.start(reuse_in_one_run, "again")
        await env.sleep(0)
        await env.resume_hook("again", "a")
        await env.sleep(0)
        history = await env.history(run.run_id)
        assert of(history, "HookConflict") == []
        await env.resume_hook("again", "b")
        assert await run.result() == ["a", "b"]
        history = await env.history(run.run_id)
        assert [e.token for e in of(history, "HookCreated")] == ["again", "again"]


@pytest.mark.parametrize("held", [False, True], ids=["free", "held-by-another-run"])
async def test_hook_created_and_closed_in_one_activation(backend_url: str, held: bool) -> None:
    async with TimeSkippingEnvironment(backend_url, WORKFLOWS, STEPS) as env:
        if held:
            holder = await env.start(one_payload, "brief")
            await env.sleep(0)
        run = await env.start(open_and_close, "brief")
        await env.sleep(1)
        rec = await env.get_run(run.run_id)
        assert rec.status == "running", rec.block_reason
        history = await env.history(run.run_id)
        assert of(history, "HookConflict") == []
        assert len(of(history, "HookDisposed")) == 1
        if held:
            assert await env.resume_hook("brief", "x") == holder.run_id
        else:  # the closed hook left no registration behind
            with pytest.raises(plait.HookNotFound):
                await env.resume_hook("brief", "x")
        assert await run.result() == "done"


async def test_signals_sent_before_the_wait_arrive_in_order(backend_url: str) -> None:
    async with TimeSkippingEnvironment(backend_url, WORKFLOWS, STEPS) as env:
        run = await env.start(signal_reader, 4, 60.0)
        for i in (1, 2):  # before the first activation
            await env.signal(run.run_id, "x", i)
        await env.sleep(30)  # the run is asleep, not waiting for signals yet
        await env.signal(run.run_id, "x", 3)
        await env.signal(run.run_id, "ignored", "other name")
        assert (await env.get_run(run.run_id)).status == "running"
        await env.sleep(60)  # now it waits for the fourth
        assert (await env.get_run(run.run_id)).status == "running"
        await env.signal(run.run_id, "x", 4)
        assert await run.result() == [1, 2, 3, 4]
        received = of(await env.history(run.run_id), "SignalReceived")
        assert [(e.name, e.payload) for e in received] == [
            ("x", 1),
            ("x", 2),
            ("x", 3),
            ("ignored", "other name"),
            ("x", 4),
        ]


async def test_signals_of_different_names_are_buffered_apart(backend_url: str) -> None:
    async with TimeSkippingEnvironment(backend_url, WORKFLOWS, STEPS) as env:
        run = await env.start(two_names)
        await env.signal(run.run_id, "a", "a1")
        await env.signal(run.run_id, "b", "b1")
        await env.signal(run.run_id, "a", "a2")
        assert await run.result() == ["b1", "a1", "a2"]


async def test_signal_payload_structured_into_its_type(backend_url: str) -> None:
    async with TimeSkippingEnvironment(backend_url, WORKFLOWS, STEPS) as env:
        run = await env.start(typed_signal)
        await env.signal(run.run_id, "approve", Approval("bob", False))
        assert await run.result() == "bob:False"


async def test_signal_to_unknown_or_closed_run(backend_url: str) -> None:
    async with TimeSkippingEnvironment(backend_url, WORKFLOWS, STEPS) as env:
        with pytest.raises(plait.RunNotFound) as info:
            await env.signal("no-such-run", "x", 1)
        assert info.value.run_id == "no-such-run"
        with pytest.raises(plait.RunNotFound):
            await env.engine.signal("no-such-run", "x")
        run = await env.start(resume_missing, "t")
        await run.result()
        with pytest.raises(plait.PlaitError, match="closed"):
            await env.signal(run.run_id, "x", 1)
        assert of(await env.history(run.run_id), "SignalReceived") == []
