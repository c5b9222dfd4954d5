"""Conformance: the optional start with commit (``create_run_and_commit``).

Skipped for a backend without ``create_run_and_commit``: start with commit is optional.
"""

from __future__ import annotations

import pytest

from ..backends.base import Backend, Commit, Delivery, RunRecord, StepTask, Timer
from ..kernel import events as ev
from ..kernel.status import RunStatus
from ._conformance_support import (
    LEASE,
    T0,
    claim,
    claim_run,
    commit,
    create,
    make_record,
    signal,
    started,
)

__all__ = [
    "test_create_run_and_commit_creates_the_run_with_its_first_commit",
    "test_create_run_and_commit_can_close_the_run_at_once",
    "test_create_run_and_commit_with_a_held_key_writes_nothing",
    "test_create_run_and_commit_of_an_existing_run_writes_nothing",
    "test_create_run_and_commit_fences_like_a_first_claim",
]

TOKEN = 7_777_777


def _needs_start_commit(b: Backend) -> None:
    if not hasattr(b, "create_run_and_commit"):
        pytest.skip("the backend has no start with commit (optional)")


def _first(rec: RunRecord, now: float = T0, **fields: object) -> Commit:
    """The commit of ``rec``'s first activation: RunStarted consumed, ``Activated``."""
    fields.setdefault("events", (started(rec), ev.Activated(now)))
    fields.setdefault("status", RunStatus.RUNNING)
    return Commit(run_id=rec.run_id, lease=None, now=now, **fields)  # type: ignore[arg-type]


async def _start(b: Backend, rec: RunRecord, c: Commit) -> tuple[str, bool]:
    return await b.create_run_and_commit(rec, c)  # type: ignore[attr-defined,no-any-return]


async def test_create_run_and_commit_creates_the_run_with_its_first_commit(
    conformance_backend: Backend,
) -> None:
    b = conformance_backend
    _needs_start_commit(b)
    rec = make_record(key="start-commit")
    pre = StepTask(rec.run_id, 1, "conformance.step", [1], 1, T0, TOKEN, T0 + LEASE)
    free = StepTask(rec.run_id, 2, "conformance.step", [2], 1, T0)
    events = (started(rec), ev.Activated(T0), ev.StepScheduled(1, "s", [1]))
    c = _first(rec, events=events, steps=(pre, free), timers=(Timer(rec.run_id, 3, T0 + 5),))
    assert await _start(b, rec, c) == (rec.run_id, True)
    assert await b.read_history(rec.run_id) == list(events)
    got = await b.get_run(rec.run_id)
    assert got is not None and got.status is RunStatus.RUNNING and got.key == "start-commit"
    assert await claim(b, T0 + 1) is None, "the new run has a workflow task"
    (task,) = await b.claim_step_tasks(T0 + 1, 10, LEASE)
    assert task.seq == 2, "the pre-leased step was claimable (or the free one was not)"
    assert await b.heartbeat_step(rec.run_id, 1, TOKEN, T0 + 1, LEASE)
    assert await b.fire_due_timers(T0 + 5) == 1
    woke = await claim_run(b, rec.run_id, T0 + 5)
    assert woke.history_length == len(events)
    assert [e.event for e in woke.inbox] == [ev.TimerFired(3)]
    assert await b.apply_commit(commit(woke, T0 + 5, events=(ev.TimerFired(3),)))


async def test_create_run_and_commit_can_close_the_run_at_once(
    conformance_backend: Backend,
) -> None:
    b = conformance_backend
    _needs_start_commit(b)
    parent = await create(b)
    rec = make_record(key="closes-at-once", parent=parent.run_id, parent_seq=4)
    notice = Delivery(parent.run_id, ev.ChildCompleted(4, "done"))
    events = (started(rec), ev.Activated(T0))
    c = _first(rec, events=events, status=RunStatus.COMPLETED, result="done", deliveries=(notice,))
    assert await _start(b, rec, c) == (rec.run_id, True)
    got = await b.get_run(rec.run_id)
    assert got is not None and got.status is RunStatus.COMPLETED and got.result == "done"
    assert got.closed_at == T0
    woke = await claim_run(b, parent.run_id)
    assert [e.event for e in woke.inbox][-1] == ev.ChildCompleted(4, "done")
    again = make_record(key="closes-at-once")
    assert await _start(b, again, _first(again)) == (again.run_id, True), "the key was kept"


async def test_create_run_and_commit_with_a_held_key_writes_nothing(
    conformance_backend: Backend,
) -> None:
    b = conformance_backend
    _needs_start_commit(b)
    holder = await create(b, key="held")
    rec = make_record(key="held")
    pre = StepTask(rec.run_id, 1, "conformance.step", [1], 1, T0, TOKEN, T0 + LEASE)
    other = await create(b)
    c = _first(rec, steps=(pre,), deliveries=(Delivery(other.run_id, signal("x")),))
    assert await _start(b, rec, c) == (holder.run_id, False)
    assert await b.get_run(rec.run_id) is None
    assert await b.read_history(rec.run_id) == []
    assert not await b.heartbeat_step(rec.run_id, 1, TOKEN, T0, LEASE), "its step was stored"
    runs = {}
    while (got := await claim(b, T0)) is not None:
        runs[got.run.run_id] = [e.event for e in got.inbox]
        assert await b.apply_commit(commit(got, T0))
    assert runs == {holder.run_id: [started(holder)], other.run_id: [started(other)]}, (
        "a refused start delivered its commit's signal"
    )


async def test_create_run_and_commit_of_an_existing_run_writes_nothing(
    conformance_backend: Backend,
) -> None:
    b = conformance_backend
    _needs_start_commit(b)
    rec = await create(b)
    assert await _start(b, rec, _first(rec, status=RunStatus.COMPLETED)) == (rec.run_id, False)
    got = await b.get_run(rec.run_id)
    assert got is not None and got.status is RunStatus.PENDING
    assert await b.read_history(rec.run_id) == []
    woke = await claim_run(b, rec.run_id)
    assert [e.event for e in woke.inbox] == [started(rec)]


async def test_create_run_and_commit_fences_like_a_first_claim(
    conformance_backend: Backend,
) -> None:
    b = conformance_backend
    _needs_start_commit(b)
    rec = make_record()
    assert await _start(b, rec, _first(rec)) == (rec.run_id, True)
    assert await b.append_inbox(rec.run_id, (signal("go"),), T0 + 1)
    got = await claim_run(b, rec.run_id, T0 + 1)
    assert got.history_length == 2 and got.lease >= 1
    assert await b.apply_commit(commit(got, T0 + 1, events=(signal("go"),)))
    assert (await b.read_history(rec.run_id))[2:] == [signal("go")]
    with pytest.raises(ValueError):
        await _start(b, make_record(), _first(rec))
