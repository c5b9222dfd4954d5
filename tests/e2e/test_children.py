"""Child runs end to end (issue 3's seed patterns), on every backend."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import plait
from plait.kernel.codec import history_to_json
from plait.testing import TimeSkippingEnvironment, replay_all
from plait.testing.pytest_plugin import isolated_url

pytestmark = pytest.mark.anyio


# -- steps -------------------------------------------------------------------------------------


@plait.step
async def square(x: int) -> int:
    return x * x


@plait.step
async def is_big(n: int) -> bool:
    return n >= 100


@plait.step
async def cleanup(tag: str) -> str:
    return f"cleaned {tag}"


@plait.step(retry=plait.RetryPolicy(max_attempts=1))
async def explode(message: str) -> int:
    raise ValueError(message)


# -- children ----------------------------------------------------------------------------------


@plait.workflow
async def sq_child(x: int) -> int:
    return await square(x)


@plait.workflow
async def odd_fails(x: int) -> int:
    if x % 2:
        raise ValueError(f"odd {x}")
    return x * 10


@plait.workflow
async def fails_until(attempt: int) -> str:
    if attempt < 2:
        raise RuntimeError(f"attempt {attempt} failed")
    return f"ok on attempt {attempt}"


@plait.workflow
async def sleepy(seconds: float, value: int) -> int:
    await plait.sleep(seconds)
    return value


@plait.workflow
async def slow_then_step(seconds: float, value: int) -> int:
    await plait.sleep(seconds)
    return await square(value)


@plait.workflow
async def sleep_then_fail(seconds: float) -> int:
    await plait.sleep(seconds)
    raise ValueError(f"failed after {seconds}")


@plait.workflow
async def cancel_aware(seconds: float) -> str:
    try:
        await plait.sleep(seconds)
    except plait.Cancelled:
        await cleanup("child")
        raise
    return "finished"


@plait.workflow
async def small_job(n: int) -> str:
    return f"small {n}"


@plait.workflow
async def big_job(n: int) -> str:
    return f"big {n}"


@plait.workflow
async def signal_child() -> int:
    value = await plait.signal("go")
    return value * 2


@plait.workflow
async def countdown(n: int) -> int:
    if n > 0:
        await square(n)
        plait.continue_as_new(n - 1)
    return 100


@plait.workflow
async def waits_on_hook(token: str) -> Any:
    return await plait.hook(token=token)


# -- parents -----------------------------------------------------------------------------------


@plait.workflow
async def settled_batch(n: int) -> list[list[Any]]:
    out = await plait.all_settled(*(plait.child(odd_fails, i) for i in range(n)))
    rows: list[list[Any]] = []
    for r in out:
        if isinstance(r, plait.Ok):
            rows.append(["ok", r.value])
        else:
            assert isinstance(r, plait.Err)
            err = r.error
            assert isinstance(err, plait.ChildFailed)
            rows.append(["err", err.run_id, err.cause.type, err.cause.message])
    return rows


@plait.workflow
async def retry_with_fresh_key() -> list[str]:
    seen: list[str] = []
    for attempt in range(5):
        try:
            seen.append(await plait.child(fails_until, attempt, key=f"job-{attempt}"))
            return seen
        except plait.ChildFailed as exc:
            seen.append(f"failed: {exc.cause.message}")
    return seen


@plait.workflow
async def chunked(n: int, size: int) -> list[int]:
    results: list[int] = []
    for start in range(0, n, size):
        chunk = range(start, min(n, start + size))
        results.extend(await plait.all(*(plait.child(sq_child, i) for i in chunk)))
    return results


@plait.workflow
async def inline_sub(x: int) -> int:
    a = await square(x)
    return a + await square(x + 1)


@plait.workflow
async def direct_await(x: int) -> int:
    return await inline_sub(x)  # runs inline: same run, same history


@plait.workflow
async def via_start_child(x: int) -> list[Any]:
    h = await plait.start_child(inline_sub, x)
    return [h.run_id, await h.result()]


@plait.workflow
async def sync_child(x: int) -> int:
    return await plait.child(sq_child, x) + 1


@plait.workflow
async def fire_and_forget(seconds: float) -> str:
    h = await plait.start_child(slow_then_step, seconds, 7, parent_close=plait.ParentClose.ABANDON)
    return h.run_id


@plait.workflow
async def reverse_finish(n: int) -> list[int]:
    return await plait.all(*(plait.child(sleepy, 10.0 * (n - i), i) for i in range(n)))


@plait.workflow
async def leaves_child_open(policy: str, seconds: float) -> str:
    h = await plait.start_child(cancel_aware, seconds, parent_close=policy)
    await plait.sleep(1)
    return h.run_id


@plait.workflow
async def conditional(n: int) -> str:
    if await is_big(n):
        return await plait.child(big_job, n)
    return await plait.child(small_job, n)


@plait.workflow
async def catches_child_failure(x: int) -> dict[str, Any]:
    try:
        await plait.child(odd_fails, x)
    except plait.ChildFailed as exc:
        return {"run_id": exc.run_id, "type": exc.cause.type, "message": exc.cause.message}
    return {}


@plait.workflow
async def lets_child_failure_escape(x: int) -> int:
    return await plait.child(odd_fails, x)


@plait.workflow
async def signals_its_child(value: int) -> int:
    h = await plait.start_child(signal_child)
    await h.signal("go", value)
    return await h.result()


@plait.workflow
async def mixed_barrier(x: int) -> list[Any]:
    return await plait.all(
        plait.child(sq_child, x),
        square(x + 1),
        plait.all(plait.sleep(5), plait.child(sleepy, 20.0, x + 2), square(x + 3)),
        plait.sleep(30),
    )


@plait.workflow
async def fail_fast_barrier(x: int) -> list[Any]:
    return await plait.all(
        plait.child(sleepy, 1000.0, x),  # the slow sibling, still open when the parent fails
        square(x),
        plait.all(plait.sleep(5), plait.child(sleep_then_fail, 10.0)),
    )


@plait.workflow
async def fanout(n: int) -> int:
    values = await plait.all(*(plait.child(sq_child, i) for i in range(n)))
    return sum(values)


@plait.workflow
async def parent_of_chain(n: int) -> int:
    return await plait.child(countdown, n)


@plait.workflow
async def child_with_key(key: str) -> str:
    try:
        await plait.child(small_job, 1, key=key)
    except plait.KeyConflict as exc:
        return f"conflict on {exc.key}"
    return "started"


@plait.workflow
async def cancels_its_child() -> str:
    h = await plait.start_child(cancel_aware, 1000.0)
    await plait.sleep(5)
    await h.cancel()
    try:
        await h.result()
    except plait.ChildCancelled as exc:
        return f"cancelled {exc.run_id}"
    return "finished"


@plait.workflow
async def outcome_of_child(seconds: float) -> str:
    try:
        return await plait.child(cancel_aware, seconds)
    except plait.ChildTerminated as exc:
        return f"terminated: {exc.reason}"
    except plait.ChildCancelled:
        return "child cancelled"


@plait.workflow
async def program(seed: int) -> dict[str, Any]:
    """Everything at once, for the determinism check."""
    h = plait.hook(token=f"prog-{seed}")
    first = await plait.all(
        plait.child(sq_child, seed),
        plait.child(sleepy, 30.0, seed),
        square(seed + 1),
        plait.sleep(10),
    )
    settled = await plait.all_settled(plait.child(odd_fails, 1), plait.child(odd_fails, 2))
    handle = await plait.start_child(signal_child)
    await handle.signal("go", seed)
    signalled = await handle.result()
    payload = await h
    won = await plait.race(plait.child(sleepy, 5.0, 1), plait.child(sleepy, 50.0, 2))
    three = await plait.race(square(7), plait.sleep(10), plait.child(sleepy, 20.0, 3))
    try:
        await plait.wait_for(plait.child(cancel_aware, 500.0), 15)
        timed_out = False
    except plait.Timeout:
        timed_out = True
    return {
        "first": first,
        "settled": [type(r).__name__ for r in settled],
        "signalled": signalled,
        "payload": payload,
        "won": won,
        "three": three,
        "timed_out": timed_out,
        "uuid": str(plait.uuid4()),
        "rand": plait.random().random(),
    }


WORKFLOWS = [
    sq_child,
    odd_fails,
    fails_until,
    sleepy,
    slow_then_step,
    sleep_then_fail,
    cancel_aware,
    small_job,
    big_job,
    signal_child,
    countdown,
    waits_on_hook,
    settled_batch,
    retry_with_fresh_key,
    chunked,
    inline_sub,
    direct_await,
    via_start_child,
    sync_child,
    fire_and_forget,
    reverse_finish,
    leaves_child_open,
    conditional,
    catches_child_failure,
    lets_child_failure_escape,
    signals_its_child,
    mixed_barrier,
    fail_fast_barrier,
    fanout,
    parent_of_chain,
    child_with_key,
    cancels_its_child,
    outcome_of_child,
    program,
]
STEPS = [square, is_big, cleanup, explode]


# -- helpers -----------------------------------------------------------------------------------


def names(history: list[Any]) -> list[str]:
    return [type(e).__name__ for e in history]


def of(history: list[Any], kind: str) -> list[Any]:
    return [e for e in history if type(e).__name__ == kind]


async def children_of(env: TimeSkippingEnvironment, run_id: str) -> list[plait.RunInfo]:
    return [r async for r in env.list_runs(parent=run_id)]


# -- tests -------------------------------------------------------------------------------------


async def test_all_settled_gives_ok_and_err_in_argument_order(backend_url: str) -> None:
    async with TimeSkippingEnvironment(backend_url, WORKFLOWS, STEPS) as env:
        run = await env.start(settled_batch, 5)
        rows = await run.result()
        kids = await children_of(env, run.run_id)
        assert len(kids) == 5
        by_id = {k.run_id: k for k in kids}
        assert [r[0] for r in rows] == ["ok", "err", "ok", "err", "ok"]
        assert [rows[0][1], rows[2][1], rows[4][1]] == [0, 20, 40]
        for i in (1, 3):
            _, child_id, typ, message = rows[i]
            assert by_id[child_id].status == "failed"
            assert typ == "ValueError" and message == f"odd {i}"
        history = await env.history(run.run_id)
        assert len(of(history, "ChildFailed")) == 2
        assert len(of(history, "ChildCompleted")) == 3
        assert (await env.get_run(run.run_id)).status == "completed"


async def test_failed_child_is_retried_with_a_fresh_key(backend_url: str) -> None:
    async with TimeSkippingEnvironment(backend_url, WORKFLOWS, STEPS) as env:
        run = await env.start(retry_with_fresh_key)
        assert await run.result() == [
            "failed: attempt 0 failed",
            "failed: attempt 1 failed",
            "ok on attempt 2",
        ]
        kids = await children_of(env, run.run_id)
        assert [(k.key, k.status) for k in kids] == [
            ("job-0", "failed"),
            ("job-1", "failed"),
            ("job-2", "completed"),
        ]
        assert [e.key for e in of(await env.history(run.run_id), "ChildScheduled")] == [
            "job-0",
            "job-1",
            "job-2",
        ]


async def test_chunked_fan_out_of_120_children(backend_url: str) -> None:
    async with TimeSkippingEnvironment(backend_url, WORKFLOWS, STEPS) as env:
        run = await env.start(chunked, 120, 20)
        assert await run.result() == [i * i for i in range(120)]
        kids = await children_of(env, run.run_id)
        assert len(kids) == 120
        assert all(k.status == "completed" for k in kids)
        assert len({k.run_id for k in kids}) == 120
        history = await env.history(run.run_id)
        assert len(of(history, "ChildScheduled")) == 120
        assert len(of(history, "ChildCompleted")) == 120


async def test_direct_await_flattens_into_the_caller(backend_url: str) -> None:
    async with TimeSkippingEnvironment(backend_url, WORKFLOWS, STEPS) as env:
        run = await env.start(direct_await, 3)
        assert await run.result() == 9 + 16
        assert [r.run_id async for r in env.list_runs()] == [run.run_id]
        history = await env.history(run.run_id)
        assert len(of(history, "StepScheduled")) == 2
        assert of(history, "ChildScheduled") == []


async def test_start_child_is_its_own_run(backend_url: str) -> None:
    async with TimeSkippingEnvironment(backend_url, WORKFLOWS, STEPS) as env:
        run = await env.start(via_start_child, 3)
        child_id, value = await run.result()
        assert value == 25
        child = await env.get_run(child_id)
        assert child.parent_run_id == run.run_id
        assert child.workflow == inline_sub.name
        assert child.status == "completed"
        parent_history = await env.history(run.run_id)
        assert of(parent_history, "StepScheduled") == []  # the steps ran in the child
        assert [e.child_run_id for e in of(parent_history, "ChildScheduled")] == [child_id]
        assert len(of(await env.history(child_id), "StepScheduled")) == 2


async def test_synchronous_child(backend_url: str) -> None:
    async with TimeSkippingEnvironment(backend_url, WORKFLOWS, STEPS) as env:
        run = await env.start(sync_child, 6)
        assert await run.result() == 37
        history = await env.history(run.run_id)
        assert names(history).count("ChildScheduled") == 1
        assert of(history, "ChildCompleted")[0].result == 36


async def test_abandoned_child_outlives_its_parent(backend_url: str) -> None:
    async with TimeSkippingEnvironment(backend_url, WORKFLOWS, STEPS) as env:
        run = await env.start(fire_and_forget, 500.0)
        child_id = await run.result()
        parent = await env.get_run(run.run_id)
        assert parent.status == "completed"
        assert (await env.get_run(child_id)).status == "running"
        assert await env.engine.handle(child_id, slow_then_step).result() == 49
        child = await env.get_run(child_id)
        assert child.status == "completed"
        assert child.closed_at is not None and parent.closed_at is not None
        assert child.closed_at - parent.closed_at == pytest.approx(500)
        applied = of(await env.history(run.run_id), "ParentClosePolicyApplied")
        assert [(e.child_run_id, e.policy) for e in applied] == [(child_id, "abandon")]


async def test_parallel_children_keep_argument_order(backend_url: str) -> None:
    async with TimeSkippingEnvironment(backend_url, WORKFLOWS, STEPS) as env:
        run = await env.start(reverse_finish, 5)
        assert await run.result() == [0, 1, 2, 3, 4]
        history = await env.history(run.run_id)
        scheduled = {e.seq: e.child_run_id for e in of(history, "ChildScheduled")}
        finished = [e.seq for e in of(history, "ChildCompleted")]
        assert finished == sorted(scheduled, reverse=True)  # last started finished first
        rec = await env.get_run(run.run_id)
        assert rec.closed_at - rec.created_at == pytest.approx(50)


async def test_terminate_policy_is_the_default(backend_url: str) -> None:
    async with TimeSkippingEnvironment(backend_url, WORKFLOWS, STEPS) as env:
        run = await env.start(leaves_child_open, "terminate", 1000.0)
        child_id = await run.result()
        child = await env.get_run(child_id)
        assert child.status == "terminated"
        child_history = await env.history(child_id)
        assert names(child_history)[-1] == "RunTerminated"
        assert of(child_history, "StepScheduled") == []  # no cleanup ran
        applied = of(await env.history(run.run_id), "ParentClosePolicyApplied")
        assert [(e.child_run_id, e.policy) for e in applied] == [(child_id, "terminate")]


async def test_request_cancel_policy_lets_the_child_clean_up(backend_url: str) -> None:
    async with TimeSkippingEnvironment(backend_url, WORKFLOWS, STEPS) as env:
        run = await env.start(leaves_child_open, "request_cancel", 1000.0)
        child_id = await run.result()
        with pytest.raises(plait.RunCancelled):
            await env.engine.handle(child_id).result()
        child_history = await env.history(child_id)
        assert len(of(child_history, "CancelRequested")) == 1
        assert [e.result for e in of(child_history, "StepCompleted")] == ["cleaned child"]
        assert names(child_history)[-1] == "RunCancelled"
        child = await env.get_run(child_id)
        assert child.status == "cancelled"
        assert child.closed_at - child.created_at < 1000  # well before its own timer was due
        applied = of(await env.history(run.run_id), "ParentClosePolicyApplied")
        assert [(e.child_run_id, e.policy) for e in applied] == [(child_id, "request_cancel")]


@pytest.mark.parametrize("n, expected", [(5, "small 5"), (500, "big 500")])
async def test_conditional_child(backend_url: str, n: int, expected: str) -> None:
    async with TimeSkippingEnvironment(backend_url, WORKFLOWS, STEPS) as env:
        run = await env.start(conditional, n)
        assert await run.result() == expected
        kids = await children_of(env, run.run_id)
        assert [k.workflow for k in kids] == [(big_job if n >= 100 else small_job).name]


async def test_child_failure_caught(backend_url: str) -> None:
    async with TimeSkippingEnvironment(backend_url, WORKFLOWS, STEPS) as env:
        run = await env.start(catches_child_failure, 3)
        got = await run.result()
        (child,) = await children_of(env, run.run_id)
        assert got == {"run_id": child.run_id, "type": "ValueError", "message": "odd 3"}
        assert child.status == "failed"
        assert child.error is not None and child.error.message == "odd 3"
        assert len(of(await env.history(run.run_id), "ChildFailed")) == 1


async def test_child_failure_uncaught_fails_the_parent(backend_url: str) -> None:
    async with TimeSkippingEnvironment(backend_url, WORKFLOWS, STEPS) as env:
        run = await env.start(lets_child_failure_escape, 1)
        with pytest.raises(plait.RunFailed) as info:
            await run.result()
        (child,) = await children_of(env, run.run_id)
        cause = info.value.cause
        assert cause.type.endswith("ChildFailed")
        assert child.run_id in cause.message and "odd 1" in cause.message
        parent = await env.get_run(run.run_id)
        assert parent.status == "failed" and parent.error == cause
        assert names(await env.history(run.run_id))[-1] == "RunFailed"


async def test_signal_a_child_through_its_handle(backend_url: str) -> None:
    async with TimeSkippingEnvironment(backend_url, WORKFLOWS, STEPS) as env:
        run = await env.start(signals_its_child, 21)
        assert await run.result() == 42
        (child,) = await children_of(env, run.run_id)
        sent = of(await env.history(run.run_id), "SignalSent")
        assert [(e.run_id, e.name, e.payload) for e in sent] == [(child.run_id, "go", 21)]
        received = of(await env.history(child.run_id), "SignalReceived")
        assert [(e.name, e.payload) for e in received] == [("go", 21)]


async def test_mixed_nested_barrier(backend_url: str) -> None:
    async with TimeSkippingEnvironment(backend_url, WORKFLOWS, STEPS) as env:
        run = await env.start(mixed_barrier, 2)
        assert await run.result() == [4, 9, [None, 4, 25], None]
        rec = await env.get_run(run.run_id)
        assert rec.closed_at - rec.created_at == pytest.approx(30)
        history = await env.history(run.run_id)
        assert len(of(history, "TimerFired")) == 2
        assert len(of(history, "ChildCompleted")) == 2
        assert len(of(history, "StepCompleted")) == 2


async def test_barrier_fails_fast_while_a_slow_sibling_is_open(backend_url: str) -> None:
    async with TimeSkippingEnvironment(backend_url, WORKFLOWS, STEPS) as env:
        run = await env.start(fail_fast_barrier, 3)
        with pytest.raises(plait.RunFailed) as info:
            await run.result()
        assert "failed after 10" in info.value.cause.message
        parent = await env.get_run(run.run_id)
        assert parent.closed_at - parent.created_at == pytest.approx(10)  # not 1000
        kids = {k.workflow: k for k in await children_of(env, run.run_id)}
        assert kids[sleep_then_fail.name].status == "failed"
        slow = kids[sleepy.name]
        assert slow.status == "terminated"  # still open when the parent failed
        assert slow.closed_at == parent.closed_at
        applied = of(await env.history(run.run_id), "ParentClosePolicyApplied")
        assert [(e.child_run_id, e.policy) for e in applied] == [(slow.run_id, "terminate")]


@pytest.mark.parametrize("deterministic", [True, False], ids=["deterministic", "concurrent"])
async def test_fan_out_with_concurrency_one_does_not_deadlock(
    backend_url: str, deterministic: bool
) -> None:
    async with TimeSkippingEnvironment(
        backend_url, WORKFLOWS, STEPS, concurrency=1, deterministic=deterministic
    ) as env:
        run = await env.start(fanout, 20)
        assert await run.result(timeout=3600) == sum(i * i for i in range(20))
        kids = await children_of(env, run.run_id)
        assert len(kids) == 20 and all(k.status == "completed" for k in kids)


async def test_continue_as_new_then_result(backend_url: str) -> None:
    async with TimeSkippingEnvironment(backend_url, WORKFLOWS, STEPS) as env:
        run = await env.start(countdown, 3, key="chain")
        assert await run.result() == 100
        chain = [r async for r in env.list_runs(workflow=countdown.name)]
        assert [r.status for r in chain] == ["continued_as_new"] * 3 + ["completed"]
        assert chain[0].run_id == run.run_id
        for a, b in zip(chain, chain[1:], strict=False):
            assert a.continued_to == b.run_id
        assert {r.key for r in chain} == {"chain"}
        first = await env.history(run.run_id)
        assert names(first)[-1] == "RunContinuedAsNew" and first[-1].args == [2]


async def test_child_that_continues_as_new_reports_its_final_result(backend_url: str) -> None:
    async with TimeSkippingEnvironment(backend_url, WORKFLOWS, STEPS) as env:
        run = await env.start(parent_of_chain, 2)
        assert await run.result() == 100
        kids = await children_of(env, run.run_id)
        assert [k.status for k in kids] == ["continued_as_new", "continued_as_new", "completed"]
        history = await env.history(run.run_id)
        assert [e.result for e in of(history, "ChildCompleted")] == [100]
        assert [e.run_id for e in of(history, "ChildStarted")] == [kids[0].run_id]


async def test_child_key_held_by_another_open_run(backend_url: str) -> None:
    async with TimeSkippingEnvironment(backend_url, WORKFLOWS, STEPS) as env:
        holder = await env.start(waits_on_hook, "holder-token", key="busy")
        run = await env.start(child_with_key, "busy")
        assert await run.result() == "conflict on busy"
        history = await env.history(run.run_id)
        assert [e.key for e in of(history, "ChildStartFailed")] == ["busy"]
        assert await children_of(env, run.run_id) == []
        # Once the holder closes, the key is free again.
        await env.resume_hook("holder-token", "done")
        assert await holder.result() == "done"
        again = await env.start(child_with_key, "busy")
        assert await again.result() == "started"


async def _run_program(backend_url: str, **options: Any) -> dict[str, list[Any]]:
    async with TimeSkippingEnvironment(backend_url, WORKFLOWS, STEPS, **options) as env:
        run = await env.start(program, 3)
        await env.sleep(600)
        await env.resume_hook("prog-3", {"ok": True})
        result = await run.result()
        assert result["first"] == [9, 3, 16, None]
        assert result["settled"] == ["Err", "Ok"]
        assert result["signalled"] == 6
        assert result["payload"] == {"ok": True}
        assert result["won"] == 1
        assert result["three"] == 49 and result["timed_out"] is True
        histories = {r.run_id: await env.history(r.run_id) async for r in env.list_runs()}
        assert len(histories) == 10
        assert replay_all(histories, WORKFLOWS) == 10
        return {run_id: history_to_json(h) for run_id, h in histories.items()}


async def test_same_program_gives_identical_histories(
    plait_backend_name: str, tmp_path: Path
) -> None:
    # Two fresh stores of the same backend: the same seed gives the same run ids.
    first = await _run_program(isolated_url(plait_backend_name, tmp_path))
    second = await _run_program(isolated_url(plait_backend_name, tmp_path))
    assert list(first) == list(second)
    assert first == second
    # With no sticky cache every activation replays the stored history first: same result.
    uncached = await _run_program(isolated_url(plait_backend_name, tmp_path), cache_size=0)
    assert uncached == first
    kinds = Counter(e["type"] for h in first.values() for e in h)
    # Both races' losing children were asked to cancel and did; the child wait_for gave up on
    # was asked in the parent's last activation and terminated by the parent's close first.
    last = Counter(h[-1]["type"] for h in first.values())
    assert last == {
        "RunCompleted": 5,  # sq_child, sleepy(30), odd_fails(2), signal_child, race winner
        "RunFailed": 1,  # odd_fails(1)
        "RunCancelled": 2,  # the two race losers
        "RunTerminated": 1,  # cancel_aware
        "ParentClosePolicyApplied": 1,  # the parent itself, recorded after RunCompleted
    }
    assert kinds["ChildCancelRequested"] == 3
    assert kinds["TimerCancelled"] == 3  # the three-way race's timer and two losers' sleeps


async def test_child_handle_cancel(backend_url: str) -> None:
    async with TimeSkippingEnvironment(backend_url, WORKFLOWS, STEPS) as env:
        run = await env.start(cancels_its_child)
        message = await run.result()
        (child,) = await children_of(env, run.run_id)
        assert message == f"cancelled {child.run_id}"
        assert child.status == "cancelled"
        child_history = await env.history(child.run_id)
        assert [e.result for e in of(child_history, "StepCompleted")] == ["cleaned child"]
        parent_history = await env.history(run.run_id)
        assert len(of(parent_history, "ChildCancelRequested")) == 1
        assert len(of(parent_history, "ChildCancelled")) == 1
        assert of(parent_history, "ParentClosePolicyApplied") == []  # nothing left open


async def test_child_terminated_by_the_client(backend_url: str) -> None:
    async with TimeSkippingEnvironment(backend_url, WORKFLOWS, STEPS) as env:
        run = await env.start(outcome_of_child, 1000.0)
        await env.sleep(10)
        (child,) = await children_of(env, run.run_id)
        assert await env.terminate(child.run_id, reason="ops")
        assert await run.result() == "terminated: ops"
        assert [e.reason for e in of(await env.history(run.run_id), "ChildTerminated")] == ["ops"]


async def test_cancelling_a_parent_cancels_the_child_it_awaits(backend_url: str) -> None:
    async with TimeSkippingEnvironment(backend_url, WORKFLOWS, STEPS) as env:
        run = await env.start(outcome_of_child, 1000.0)
        await env.sleep(10)
        assert await env.cancel(run.run_id)
        # The parent's await of the child is cancelled: the child is asked to cancel, and the
        # parent (which does not catch Cancelled) closes in that same activation, so the
        # default TERMINATE policy closes the child before it runs its cleanup.
        with pytest.raises(plait.RunCancelled):
            await run.result()
        (child,) = await children_of(env, run.run_id)
        parent_history = await env.history(run.run_id)
        assert len(of(parent_history, "ChildCancelRequested")) == 1
        applied = of(parent_history, "ParentClosePolicyApplied")
        assert [(e.child_run_id, e.policy) for e in applied] == [(child.run_id, "terminate")]
        assert child.status == "terminated"
        assert of(await env.history(child.run_id), "StepScheduled") == []


async def test_terminating_a_parent_applies_its_children_policies(backend_url: str) -> None:
    async with TimeSkippingEnvironment(backend_url, WORKFLOWS, STEPS) as env:
        run = await env.start(outcome_of_child, 1000.0)
        await env.sleep(10)
        (child,) = await children_of(env, run.run_id)
        assert await env.terminate(run.run_id, reason="shutdown")
        # Synchronous: by the time terminate returns, the child is closed too.
        assert (await env.get_run(child.run_id)).status == "terminated"
        parent_history = await env.history(run.run_id)
        assert names(parent_history)[-2:] == ["RunTerminated", "ParentClosePolicyApplied"]
        assert names(await env.history(child.run_id))[-1] == "RunTerminated"
        histories = [await env.history(r.run_id) async for r in env.list_runs()]
        assert replay_all(histories, WORKFLOWS) == 2
