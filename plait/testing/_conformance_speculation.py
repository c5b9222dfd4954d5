"""Conformance: the optional speculative activation (``finish_step_and_commit``).

Skipped for a backend without ``finish_step_and_commit``: speculation is optional.
"""

from __future__ import annotations

import pytest

from ..backends.base import Backend, Commit, RunRecord, StepTask
from ..kernel import events as ev
from ..kernel.status import RunStatus
from ._conformance_support import (
    LEASE,
    T0,
    claim,
    claim_run,
    create,
    signal,
    start_with,
    step,
)

__all__ = [
    "test_finish_step_and_commit_applies_to_a_quiet_run",
    "test_finish_step_and_commit_can_close_the_run",
    "test_finish_step_and_commit_refuses_a_stale_step_lease",
    "test_finish_step_and_commit_refuses_a_run_with_inbox",
    "test_finish_step_and_commit_refuses_a_moved_history",
    "test_finish_step_and_commit_fences_an_expired_holder_only",
]

TOKEN = 8_888_888


def _needs_speculation(b: Backend) -> None:
    if not hasattr(b, "finish_step_and_commit"):
        pytest.skip("the backend has no speculative activation (optional)")


async def _running_step(b: Backend, **fields: object) -> tuple[RunRecord, StepTask, int]:
    """A run waiting on its one step, that step claimed, and the run's history length."""
    rec = await start_with(b, steps=(step(1),), events=(ev.StepScheduled(1, "s", [1]),), **fields)
    (task,) = await b.claim_step_tasks(T0, 10, LEASE)
    return rec, task, len(await b.read_history(rec.run_id))


def _next(rec: RunRecord, now: float, **fields: object) -> Commit:
    """The speculative commit of the activation that step 1's result causes."""
    fields.setdefault("events", (ev.StepCompleted(1, "one"), ev.Activated(now)))
    fields.setdefault("status", RunStatus.RUNNING)
    return Commit(run_id=rec.run_id, lease=0, now=now, **fields)  # type: ignore[arg-type]


async def _speculate(b: Backend, task: StepTask, c: Commit, length: int) -> bool:
    return await b.finish_step_and_commit(task.run_id, task.seq, task.lease, c, length)  # type: ignore[attr-defined,no-any-return]


async def test_finish_step_and_commit_applies_to_a_quiet_run(conformance_backend: Backend) -> None:
    b = conformance_backend
    _needs_speculation(b)
    rec, task, length = await _running_step(b)
    pre = StepTask(rec.run_id, 2, "conformance.step", [2], 1, T0 + 1, TOKEN, T0 + 1 + LEASE)
    events = (ev.StepCompleted(1, "one"), ev.Activated(T0 + 1), ev.StepScheduled(2, "s", [2]))
    assert await _speculate(b, task, _next(rec, T0 + 1, events=events, steps=(pre,)), length)
    history = await b.read_history(rec.run_id)
    assert history[length:] == list(events), "the commit's events are not the history's tail"
    assert not await b.finish_step(rec.run_id, 1, task.lease, ev.StepCompleted(1, 0), T0 + 2), (
        "the step finished by the speculative commit is still held"
    )
    assert await claim(b, T0 + 2) is None, "the outcome also went to the inbox"
    assert await b.claim_step_tasks(T0 + 2, 10, LEASE) == [], "the pre-leased step was claimable"
    assert await b.heartbeat_step(rec.run_id, 2, TOKEN, T0 + 2, LEASE)
    got = await b.get_run(rec.run_id)
    assert got is not None and got.status is RunStatus.RUNNING


async def test_finish_step_and_commit_can_close_the_run(conformance_backend: Backend) -> None:
    b = conformance_backend
    _needs_speculation(b)
    rec, task, length = await _running_step(b, key="spec-key")
    c = _next(rec, T0 + 1, status=RunStatus.COMPLETED, result={"total": 1})
    assert await _speculate(b, task, c, length)
    got = await b.get_run(rec.run_id)
    assert got is not None and got.status is RunStatus.COMPLETED and got.result == {"total": 1}
    await create(b, key="spec-key")  # the key was released with the close


async def test_finish_step_and_commit_refuses_a_stale_step_lease(
    conformance_backend: Backend,
) -> None:
    b = conformance_backend
    _needs_speculation(b)
    rec, old, length = await _running_step(b)
    (new,) = await b.claim_step_tasks(T0 + LEASE, 10, LEASE)  # redelivered: old is stale
    assert not await _speculate(b, old, _next(rec, T0 + LEASE), length)
    assert len(await b.read_history(rec.run_id)) == length, "a refused speculation wrote events"
    assert await b.heartbeat_step(rec.run_id, 1, new.lease, T0 + LEASE, LEASE)


async def test_finish_step_and_commit_refuses_a_run_with_inbox(
    conformance_backend: Backend,
) -> None:
    b = conformance_backend
    _needs_speculation(b)
    rec, task, length = await _running_step(b)
    assert await b.append_inbox(rec.run_id, [signal("go")], T0 + 1)
    assert not await _speculate(b, task, _next(rec, T0 + 2), length)
    assert len(await b.read_history(rec.run_id)) == length, "a refused speculation wrote events"
    assert await b.heartbeat_step(rec.run_id, 1, task.lease, T0 + 2, LEASE), (
        "a refused speculation finished the step"
    )
    got = await claim_run(b, rec.run_id, T0 + 2)
    assert [e.event for e in got.inbox] == [signal("go")]


async def test_finish_step_and_commit_refuses_a_moved_history(
    conformance_backend: Backend,
) -> None:
    b = conformance_backend
    _needs_speculation(b)
    rec, task, length = await _running_step(b)
    for wrong in (length - 1, length + 1):
        assert not await _speculate(b, task, _next(rec, T0 + 1), wrong)
    assert len(await b.read_history(rec.run_id)) == length
    assert await _speculate(b, task, _next(rec, T0 + 1), length)


async def test_finish_step_and_commit_fences_an_expired_holder_only(
    conformance_backend: Backend,
) -> None:
    b = conformance_backend
    _needs_speculation(b)
    rec, task, length = await _running_step(b)
    assert await b.requeue_workflow_task(rec.run_id, T0 + 1)
    holder = await claim_run(b, rec.run_id, T0 + 1)  # a live lease, empty inbox
    assert not await _speculate(b, task, _next(rec, T0 + 2), length), (
        "speculation overrode a live workflow lease"
    )
    assert await b.heartbeat_step(rec.run_id, 1, task.lease, T0 + 2, LEASE)
    later = T0 + 1 + LEASE  # the holder's lease has expired: the run is quiet again
    assert await _speculate(b, task, _next(rec, later), length)
    stale = Commit(run_id=rec.run_id, lease=holder.lease, now=later, status=RunStatus.RUNNING)
    assert not await b.apply_commit(stale), "the expired holder's commit was not fenced out"
    assert len(await b.read_history(rec.run_id)) == length + 2
