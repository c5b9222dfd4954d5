"""Conformance: claim order, leases and redelivery, step results, timers, state, wake-ups."""

from __future__ import annotations

import anyio

from ..backends.base import Backend, BackendState, Commit, StepTask, Timer
from ..kernel import events as ev
from ..kernel.errors import ErrorInfo
from ..kernel.status import RunStatus
from ._conformance_support import (
    LEASE,
    T0,
    claim,
    claim_run,
    commit,
    create,
    drain_all,
    drain_inbox,
    inbox_events,
    signal,
    start_with,
    started,
    step,
)

__all__ = [
    "test_workflow_tasks_are_claimed_by_ready_time_then_enqueue_order",
    "test_a_leased_workflow_task_is_not_claimed_again",
    "test_an_expired_workflow_lease_is_redelivered_with_a_new_fence",
    "test_renewing_a_workflow_lease_extends_it",
    "test_step_tasks_are_claimed_by_ready_time_then_enqueue_order",
    "test_claim_step_tasks_returns_at_most_limit",
    "test_a_leased_step_task_is_not_redelivered_before_expiry",
    "test_an_expired_step_lease_is_redelivered",
    "test_heartbeat_extends_a_step_lease",
    "test_a_step_result_is_delivered_exactly_once",
    "test_finishing_with_a_stale_lease_changes_nothing",
    "test_retry_step_releases_the_task_for_another_attempt",
    "test_timers_fire_at_their_due_time_in_fire_time_order",
    "test_fire_due_timers_respects_limit",
    "test_cancel_timers_removes_them",
    "test_closing_a_run_drops_its_timers",
    "test_state_counts_queued_work_and_next_due",
    "test_wait_returns_after_its_timeout",
    "test_wait_wakes_on_a_local_change",
]


async def test_workflow_tasks_are_claimed_by_ready_time_then_enqueue_order(
    conformance_backend: Backend,
) -> None:
    b = conformance_backend
    a = await create(b, now=T0 + 3)
    bb = await create(b, now=T0 + 1)
    c = await create(b, now=T0 + 2)
    d = await create(b, now=T0 + 1)
    future = await create(b, now=T0 + 50)
    # More inbox for an already queued run keeps its place (ready time and order).
    assert await b.append_inbox(bb.run_id, (signal("more"),), T0 + 4)
    order = []
    for _ in range(4):
        got = await claim(b, T0 + 10, lease=1000)
        assert got is not None
        order.append(got.run.run_id)
    assert order == [bb.run_id, d.run_id, c.run_id, a.run_id]
    assert await claim(b, T0 + 10) is None, "a task was claimed before its ready time"
    got = await claim_run(b, future.run_id, T0 + 50, lease=1000)
    assert inbox_events(got.inbox) == [started(future)]


async def test_a_leased_workflow_task_is_not_claimed_again(conformance_backend: Backend) -> None:
    b = conformance_backend
    rec = await create(b)
    await claim_run(b, rec.run_id)
    assert await b.append_inbox(rec.run_id, (signal("x"),), T0 + 1)
    assert await b.requeue_workflow_task(rec.run_id, T0 + 1)
    assert await claim(b, T0 + LEASE - 1) is None
    st = await b.state(T0 + 1)
    assert (st.ready_workflow_tasks, st.leased_workflow_tasks) == (0, 1)


async def test_an_expired_workflow_lease_is_redelivered_with_a_new_fence(
    conformance_backend: Backend,
) -> None:
    b = conformance_backend
    rec = await create(b)
    first = await claim_run(b, rec.run_id)
    second = await claim_run(b, rec.run_id, T0 + LEASE)  # expired exactly now
    assert second.lease != first.lease, "a claim did not bump the fencing token"
    assert second.inbox == first.inbox
    assert await b.apply_commit(commit(first, T0 + LEASE)) is False
    assert await b.apply_commit(commit(second, T0 + LEASE)) is True
    assert await b.read_history(rec.run_id) == []


async def test_renewing_a_workflow_lease_extends_it(conformance_backend: Backend) -> None:
    b = conformance_backend
    rec = await create(b)
    got = await claim_run(b, rec.run_id)
    assert await b.renew_workflow_lease(rec.run_id, got.lease, T0 + 20, LEASE)
    assert await claim(b, T0 + LEASE) is None, "the renewed lease expired at its old time"
    again = await claim_run(b, rec.run_id, T0 + 20 + LEASE)
    assert await b.renew_workflow_lease(rec.run_id, got.lease, T0 + 21 + LEASE, LEASE) is False
    assert await b.renew_workflow_lease(rec.run_id, again.lease, T0 + 21 + LEASE, LEASE)
    assert await b.renew_workflow_lease("no-such-run", 1, T0, LEASE) is False


def _ids(tasks: list[StepTask]) -> list[tuple[str, int]]:
    return [(t.run_id, t.seq) for t in tasks]


async def test_step_tasks_are_claimed_by_ready_time_then_enqueue_order(
    conformance_backend: Backend,
) -> None:
    b = conformance_backend
    r1 = await start_with(
        b,
        steps=(
            step(1, T0 + 3),
            step(2, T0 + 1),
            step(3, T0 + 2),
            step(4, T0 + 1),
            step(5, T0 + 100),
        ),
    )
    r2 = await start_with(b, steps=(step(1, T0 + 1),))
    claimed = []
    for _ in range(5):
        got = await b.claim_step_tasks(T0 + 10, 1, 1000)
        assert len(got) == 1
        claimed.extend(_ids(got))
    one, two = r1.run_id, r2.run_id
    assert claimed == [(one, 2), (one, 4), (two, 1), (one, 3), (one, 1)]
    assert await b.claim_step_tasks(T0 + 10, 10, 1000) == [], "claimed before its ready time"
    assert _ids(await b.claim_step_tasks(T0 + 100, 10, 1000)) == [(one, 5)]


async def test_claim_step_tasks_returns_at_most_limit(conformance_backend: Backend) -> None:
    b = conformance_backend
    rec = await start_with(b, steps=tuple(step(i) for i in range(1, 6)))
    got = await b.claim_step_tasks(T0, 2, LEASE)
    assert _ids(got) == [(rec.run_id, 1), (rec.run_id, 2)]
    for t in got:
        assert (t.name, t.args, t.attempt, t.ready_at) == ("conformance.step", [t.seq], 1, T0)
        assert t.lease != 0, "a claimed task carries its lease token"
    assert len({t.lease for t in got}) == 2, "two claimed tasks share a lease token"
    assert _ids(await b.claim_step_tasks(T0, 10, LEASE)) == [(rec.run_id, i) for i in (3, 4, 5)]
    assert await b.claim_step_tasks(T0, 10, LEASE) == []


async def test_a_leased_step_task_is_not_redelivered_before_expiry(
    conformance_backend: Backend,
) -> None:
    b = conformance_backend
    await start_with(b, steps=(step(1),))
    assert len(await b.claim_step_tasks(T0, 10, LEASE)) == 1
    assert await b.claim_step_tasks(T0, 10, LEASE) == []
    assert await b.claim_step_tasks(T0 + LEASE - 1, 10, LEASE) == []
    st = await b.state(T0 + 1)
    assert (st.ready_steps, st.leased_steps) == (0, 1)


async def test_an_expired_step_lease_is_redelivered(conformance_backend: Backend) -> None:
    b = conformance_backend
    rec = await start_with(b, steps=(step(1),))
    (first,) = await b.claim_step_tasks(T0, 10, LEASE)
    (second,) = await b.claim_step_tasks(T0 + LEASE, 10, LEASE)
    assert _ids([second]) == [(rec.run_id, 1)]
    assert second.lease != first.lease, "a redelivered task kept its old lease token"
    assert await b.heartbeat_step(rec.run_id, 1, first.lease, T0 + LEASE, LEASE) is False
    outcome = ev.StepCompleted(1, "ok", 2)
    assert await b.finish_step(rec.run_id, 1, first.lease, outcome, T0 + LEASE) is False
    assert await b.finish_step(rec.run_id, 1, second.lease, outcome, T0 + LEASE) is True
    assert await drain_inbox(b, rec.run_id, T0 + LEASE) == [outcome]


async def test_heartbeat_extends_a_step_lease(conformance_backend: Backend) -> None:
    b = conformance_backend
    rec = await start_with(b, steps=(step(1),))
    (task,) = await b.claim_step_tasks(T0, 10, LEASE)
    assert await b.heartbeat_step(rec.run_id, 1, task.lease, T0 + 20, LEASE)
    assert await b.claim_step_tasks(T0 + LEASE, 10, LEASE) == [], "heartbeat did not extend"
    assert len(await b.claim_step_tasks(T0 + 20 + LEASE, 10, LEASE)) == 1
    assert await b.heartbeat_step(rec.run_id, 1, task.lease, T0 + 21 + LEASE, LEASE) is False
    assert await b.heartbeat_step(rec.run_id, 99, task.lease, T0, LEASE) is False


async def test_a_step_result_is_delivered_exactly_once(conformance_backend: Backend) -> None:
    b = conformance_backend
    rec = await start_with(b, steps=(step(1),))
    (task,) = await b.claim_step_tasks(T0, 10, LEASE)
    outcome = ev.StepCompleted(1, {"v": [1, None]}, 1)
    assert await b.finish_step(rec.run_id, 1, task.lease, outcome, T0 + 1) is True
    assert await b.finish_step(rec.run_id, 1, task.lease, outcome, T0 + 1) is False
    assert await b.heartbeat_step(rec.run_id, 1, task.lease, T0 + 1, LEASE) is False
    assert await b.retry_step(rec.run_id, 1, task.lease, 2, T0 + 2) is False
    assert await b.claim_step_tasks(T0 + 1000, 10, LEASE) == [], "a finished task came back"
    got = await claim_run(b, rec.run_id, T0 + 1)
    assert inbox_events(got.inbox) == [outcome]


async def test_finishing_with_a_stale_lease_changes_nothing(conformance_backend: Backend) -> None:
    b = conformance_backend
    rec = await start_with(b, steps=(step(1),))
    (old,) = await b.claim_step_tasks(T0, 10, LEASE)
    (new,) = await b.claim_step_tasks(T0 + LEASE, 10, LEASE)
    failed = ev.StepFailed(1, ErrorInfo("RuntimeError", "boom"), 1)
    assert await b.finish_step(rec.run_id, 1, old.lease, failed, T0 + LEASE) is False
    assert await claim(b, T0 + LEASE) is None, "the stale finish delivered its outcome"
    assert await b.heartbeat_step(rec.run_id, 1, new.lease, T0 + LEASE, LEASE), (
        "the stale finish removed the task"
    )
    assert await b.claim_step_tasks(T0 + LEASE + 1, 10, LEASE) == []


async def test_retry_step_releases_the_task_for_another_attempt(
    conformance_backend: Backend,
) -> None:
    b = conformance_backend
    rec = await start_with(b, steps=(step(1), step(2)))
    first = await b.claim_step_tasks(T0, 10, LEASE)
    assert _ids(first) == [(rec.run_id, 1), (rec.run_id, 2)]
    assert await b.retry_step(rec.run_id, 1, first[0].lease, 2, T0 + 100)
    assert await b.retry_step(rec.run_id, 2, first[1].lease, 3, T0 + 100)  # enqueued after seq 1
    assert await b.claim_step_tasks(T0 + 99, 10, LEASE) == [], "retried before ready_at"
    assert (await b.state(T0 + 99)).next_due == T0 + 100
    again = await b.claim_step_tasks(T0 + 100, 10, LEASE)
    assert _ids(again) == [(rec.run_id, 1), (rec.run_id, 2)]
    assert [(t.attempt, t.ready_at) for t in again] == [(2, T0 + 100), (3, T0 + 100)]
    assert again[0].lease != first[0].lease
    assert await b.retry_step(rec.run_id, 1, first[0].lease, 3, T0 + 200) is False
    assert await b.retry_step(rec.run_id, 9, again[0].lease, 3, T0 + 200) is False


async def test_timers_fire_at_their_due_time_in_fire_time_order(
    conformance_backend: Backend,
) -> None:
    b = conformance_backend
    rec = await start_with(
        b,
        timers=(
            Timer("", 1, T0 + 30),
            Timer("", 2, T0 + 10),
            Timer("", 3, T0 + 20),
            Timer("", 4, T0 + 10),
        ),
    )
    assert await b.fire_due_timers(T0 + 9.5) == 0
    assert await claim(b, T0 + 9.5) is None
    assert await b.fire_due_timers(T0 + 10) == 2  # due exactly at fire_at
    assert await b.fire_due_timers(T0 + 10) == 0, "a fired timer fired again"
    assert await drain_inbox(b, rec.run_id, T0 + 10) == [ev.TimerFired(2), ev.TimerFired(4)]
    assert await b.fire_due_timers(T0 + 31) == 2
    assert await drain_inbox(b, rec.run_id, T0 + 31) == [ev.TimerFired(3), ev.TimerFired(1)]
    assert (await b.state(T0 + 31)).timers == 0


async def test_fire_due_timers_respects_limit(conformance_backend: Backend) -> None:
    b = conformance_backend
    rec = await start_with(
        b, timers=(Timer("", 1, T0 + 3), Timer("", 2, T0 + 1), Timer("", 3, T0 + 2))
    )
    assert await b.fire_due_timers(T0 + 10, limit=2) == 2
    assert await b.fire_due_timers(T0 + 10, limit=2) == 1
    assert await drain_inbox(b, rec.run_id, T0 + 10) == [
        ev.TimerFired(2),
        ev.TimerFired(3),
        ev.TimerFired(1),
    ]


async def test_cancel_timers_removes_them(conformance_backend: Backend) -> None:
    b = conformance_backend
    rec = await start_with(b, timers=(Timer("", 1, T0 + 5), Timer("", 2, T0 + 6)))
    other = await start_with(b, timers=(Timer("", 1, T0 + 5),))
    assert await b.append_inbox(rec.run_id, (signal("x"),), T0)
    got = await claim_run(b, rec.run_id)
    # Cancelling is per run (seq 1 of the other run stays) and unknown seqs are ignored.
    assert await b.apply_commit(commit(got, cancel_timers=(1, 77)))
    assert (await b.state(T0)).timers == 2
    assert await b.fire_due_timers(T0 + 100) == 2
    assert await drain_all(b, T0 + 100) == {
        rec.run_id: [ev.TimerFired(2)],
        other.run_id: [ev.TimerFired(1)],
    }


async def test_closing_a_run_drops_its_timers(conformance_backend: Backend) -> None:
    b = conformance_backend
    rec = await start_with(b, timers=(Timer("", 1, T0 + 5), Timer("", 2, T0 + 500)))
    close = Commit(run_id=rec.run_id, lease=None, now=T0 + 1, status=RunStatus.TERMINATED)
    assert await b.apply_commit(close)
    assert (await b.state(T0 + 1)).timers == 0
    assert await b.fire_due_timers(T0 + 1000) == 0
    assert await claim(b, T0 + 1000) is None


async def test_state_counts_queued_work_and_next_due(conformance_backend: Backend) -> None:
    b = conformance_backend
    assert await b.state(T0) == BackendState(0, 0, 0, 0, 0, None)
    rec = await start_with(
        b,
        steps=(step(1, T0), step(2, T0), step(3, T0 + 70)),
        timers=(Timer("", 4, T0 + 40), Timer("", 5, T0 + 80)),
    )
    waiting = await create(b, now=T0)
    await create(b, now=T0 + 90)  # ready in the future
    assert await b.state(T0) == BackendState(
        ready_workflow_tasks=1,
        leased_workflow_tasks=0,
        ready_steps=2,
        leased_steps=0,
        timers=2,
        next_due=T0 + 40,
    )
    await claim_run(b, waiting.run_id, T0)  # lease until T0 + 30
    (task, _) = await b.claim_step_tasks(T0 + 5, 2, LEASE)  # leases until T0 + 35
    assert await b.state(T0 + 5) == BackendState(0, 1, 0, 2, 2, T0 + 30)
    assert await b.finish_step(rec.run_id, task.seq, task.lease, ev.StepCompleted(1), T0 + 6)
    st = await b.state(T0 + 36)  # the workflow lease and the other step lease expired
    assert (st.leased_workflow_tasks, st.leased_steps, st.ready_steps) == (0, 0, 1)
    assert st.ready_workflow_tasks == 2  # the expired lease's run and the finished step's run
    assert st.next_due == T0 + 40
    assert await b.fire_due_timers(T0 + 40) == 1
    assert (await b.state(T0 + 40)).next_due == T0 + 70
    assert (await b.state(T0 + 75)).next_due == T0 + 80
    assert (await b.state(T0 + 85)).next_due == T0 + 90


async def test_wait_returns_after_its_timeout(conformance_backend: Backend) -> None:
    start = anyio.current_time()
    with anyio.fail_after(10):
        await conformance_backend.wait(0.2)
    assert anyio.current_time() - start < 5


async def test_wait_wakes_on_a_local_change(conformance_backend: Backend) -> None:
    b = conformance_backend
    woke: list[float] = []

    async def waiter() -> None:
        start = anyio.current_time()
        await b.wait(30)
        woke.append(anyio.current_time() - start)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.sleep(0.1)
            await create(b)
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.sleep(0.1)
            b.notify()
    assert len(woke) == 2 and max(woke) < 10, woke
