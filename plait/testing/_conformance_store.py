"""Conformance: runs, keys, listing, history and inboxes."""

from __future__ import annotations

import anyio
import attrs
import pytest

from ..backends.base import Backend, Commit
from ..kernel import events as ev
from ..kernel.errors import ErrorInfo
from ..kernel.status import CLOSED_STATUSES, RunStatus
from ._conformance_support import (
    T0,
    claim,
    claim_run,
    close_backend,
    commit,
    create,
    inbox_events,
    make_record,
    new_id,
    open_backend,
    signal,
    start_with,
    started,
    store_is_shared,
)

__all__ = [
    "test_backend_implements_the_protocol",
    "test_close_is_idempotent",
    "test_reopened_store_keeps_its_data",
    "test_create_run_stores_the_record_and_queues_its_workflow_task",
    "test_unknown_run_reads_as_missing",
    "test_create_run_with_a_held_key_returns_the_holder",
    "test_create_run_with_an_existing_run_id_creates_nothing",
    "test_closing_a_run_releases_its_key",
    "test_commit_updates_the_run_record",
    "test_list_runs_filters_in_creation_order",
    "test_history_keeps_append_order_across_commits_and_append_history",
    "test_inbox_is_fifo_with_growing_ids",
    "test_inbox_upto_consumes_only_a_prefix",
    "test_inbox_appended_during_a_lease_survives_the_commit_and_requeues",
    "test_commit_consuming_the_whole_inbox_leaves_no_task",
    "test_requeue_false_leaves_the_task_unqueued",
    "test_requeue_workflow_task_queues_open_runs_only",
    "test_append_inbox_to_a_closed_or_missing_run_is_refused",
]


async def test_backend_implements_the_protocol(
    conformance_backend: Backend, conformance_url: str
) -> None:
    assert isinstance(conformance_backend, Backend)
    assert isinstance(conformance_backend.url, str) and conformance_backend.url


async def test_close_is_idempotent(conformance_url: str) -> None:
    backend = await open_backend(conformance_url)
    with anyio.fail_after(30):
        await backend.close()
        await backend.close()


async def test_reopened_store_keeps_its_data(
    conformance_backend: Backend, conformance_url: str
) -> None:
    """Opening a second object on an existing store (schema present) loses nothing."""
    rec = await start_with(conformance_backend, events=(ev.PatchMarker(1, "p"),))
    if not await store_is_shared(conformance_url, rec.run_id):
        pytest.skip("the store is private to one backend object (e.g. memory://)")
    other = await open_backend(conformance_url)
    try:
        assert await other.get_run(rec.run_id) == await conformance_backend.get_run(rec.run_id)
        assert await other.read_history(rec.run_id) == await conformance_backend.read_history(
            rec.run_id
        )
    finally:
        await close_backend(other)


async def test_create_run_stores_the_record_and_queues_its_workflow_task(
    conformance_backend: Backend,
) -> None:
    b = conformance_backend
    rec = attrs.evolve(
        make_record(key="k-1", parent="some-parent", parent_seq=7),
        parent_close="abandon",
        queue="q-1",
    )
    first = (started(rec, 1, {"a": [1, 2.5, None]}), signal("go", "now"))
    assert await b.create_run(rec, first, T0) == (rec.run_id, True)
    assert await b.get_run(rec.run_id) == rec
    assert await b.read_history(rec.run_id) == []
    st = await b.state(T0)
    assert (st.ready_workflow_tasks, st.leased_workflow_tasks) == (1, 0)
    got = await claim_run(b, rec.run_id)
    assert got.run == rec
    assert inbox_events(got.inbox) == list(first)
    assert got.history_length == 0
    assert isinstance(got.lease, int)


async def test_unknown_run_reads_as_missing(conformance_backend: Backend) -> None:
    b = conformance_backend
    assert await b.get_run("no-such-run") is None
    assert await b.read_history("no-such-run") == []
    assert await b.append_inbox("no-such-run", (signal("x"),), T0) is False
    assert await b.requeue_workflow_task("no-such-run", T0) is False
    assert await b.list_runs() == []
    assert await claim(b) is None


async def test_create_run_with_a_held_key_returns_the_holder(conformance_backend: Backend) -> None:
    b = conformance_backend
    holder = await create(b, key="order-1")
    other = make_record(key="order-1", workflow="other.wf")
    assert await b.create_run(other, (started(other),), T0) == (holder.run_id, False)
    assert await b.get_run(other.run_id) is None
    assert [r.run_id for r in await b.list_runs()] == [holder.run_id]
    got = await claim_run(b, holder.run_id)
    assert inbox_events(got.inbox) == [started(holder)]
    assert await claim(b) is None, "the refused create_run queued a workflow task"


async def test_create_run_with_an_existing_run_id_creates_nothing(
    conformance_backend: Backend,
) -> None:
    b = conformance_backend
    rec = await create(b)
    again = make_record(rec.run_id, workflow="other.wf")
    assert await b.create_run(again, (started(again), signal("x")), T0) == (rec.run_id, False)
    assert await b.get_run(rec.run_id) == rec
    got = await claim_run(b, rec.run_id)
    assert inbox_events(got.inbox) == [started(rec)]


@pytest.mark.parametrize("status", sorted(CLOSED_STATUSES))
async def test_closing_a_run_releases_its_key(
    conformance_backend: Backend, status: RunStatus
) -> None:
    b = conformance_backend
    rec = await create(b, key="k")
    got = await claim_run(b, rec.run_id)
    assert await b.apply_commit(commit(got, T0 + 5, status=status))
    closed = await b.get_run(rec.run_id)
    assert closed is not None and closed.status == status and closed.closed_at == T0 + 5
    nxt = make_record(key="k")
    assert await b.create_run(nxt, (started(nxt),), T0 + 6) == (nxt.run_id, True)
    dup = make_record(key="k")
    assert await b.create_run(dup, (started(dup),), T0 + 7) == (nxt.run_id, False)


async def test_commit_updates_the_run_record(conformance_backend: Backend) -> None:
    b = conformance_backend
    rec = await create(b)
    got = await claim_run(b, rec.run_id)
    assert await b.apply_commit(commit(got, status=None))
    assert (await b.get_run(rec.run_id)) == rec, "a commit with status=None changed the record"

    assert await b.append_inbox(rec.run_id, (signal("a"),), T0)
    got = await claim_run(b, rec.run_id)
    reason = "NonDeterminismError: expected StepScheduled"
    assert await b.apply_commit(commit(got, status=RunStatus.BLOCKED, block_reason=reason))
    blocked = await b.get_run(rec.run_id)
    assert blocked is not None
    assert (blocked.status, blocked.block_reason, blocked.closed_at) == (
        RunStatus.BLOCKED,
        reason,
        None,
    )

    assert await b.requeue_workflow_task(rec.run_id, T0 + 1)
    got = await claim_run(b, rec.run_id, T0 + 1)
    assert await b.apply_commit(commit(got, T0 + 1, status=RunStatus.RUNNING))
    running = await b.get_run(rec.run_id)
    assert running is not None
    assert (running.status, running.block_reason) == (RunStatus.RUNNING, None)

    assert await b.requeue_workflow_task(rec.run_id, T0 + 2)
    got = await claim_run(b, rec.run_id, T0 + 2)
    error = ErrorInfo("ValueError", "bad input", "Traceback ...", non_retryable=True)
    assert await b.apply_commit(commit(got, T0 + 9, status=RunStatus.FAILED, error=error))
    failed = await b.get_run(rec.run_id)
    assert failed is not None
    assert (failed.status, failed.error, failed.closed_at) == (RunStatus.FAILED, error, T0 + 9)
    assert failed.closed

    other = await create(b)
    got = await claim_run(b, other.run_id, T0 + 10)
    result = {"a": [1, 2.5, None, "x"], "b": True, "c": {"d": -3}}
    assert await b.apply_commit(
        commit(got, T0 + 10, status=RunStatus.COMPLETED, result=result, continued_to="nxt")
    )
    done = await b.get_run(other.run_id)
    assert done is not None
    assert (done.status, done.result, done.continued_to) == (RunStatus.COMPLETED, result, "nxt")


async def test_list_runs_filters_in_creation_order(conformance_backend: Backend) -> None:
    b = conformance_backend
    # Ids neither sorted nor reverse-sorted: the order must come from creation.
    ids = ["m-run", "c-run", "x-run", "a-run", "z-run", "k-run"]
    recs = []
    for i, rid in enumerate(ids):
        parent = "m-run" if rid in ("x-run", "a-run") else None
        rec = make_record(
            rid,
            workflow="w1" if i % 2 == 0 else "w2",
            parent=parent,
            parent_seq=i if parent else None,
            created_at=T0 + i,
        )
        recs.append(await create(b, rec, now=T0 + i))
    for rid, status in (("c-run", RunStatus.COMPLETED), ("z-run", RunStatus.FAILED)):
        assert await b.apply_commit(Commit(run_id=rid, lease=None, now=T0 + 10, status=status))
    assert await b.apply_commit(
        Commit(run_id="a-run", lease=None, now=T0 + 10, status=RunStatus.RUNNING)
    )

    async def listed(**filters: object) -> list[str]:
        return [r.run_id for r in await b.list_runs(**filters)]  # type: ignore[arg-type]

    assert await listed() == ids
    assert await listed(workflow="w1") == ["m-run", "x-run", "z-run"]
    assert await listed(parent="m-run") == ["x-run", "a-run"]
    assert await listed(status=RunStatus.COMPLETED) == ["c-run"]
    assert await listed(status=RunStatus.PENDING) == ["m-run", "x-run", "k-run"]
    assert await listed(status=RunStatus.RUNNING, parent="m-run") == ["a-run"]
    assert await listed(workflow="w1", status=RunStatus.FAILED) == ["z-run"]
    assert await listed(workflow="w2", status=RunStatus.FAILED) == []
    assert await listed(workflow="nope") == []
    assert await listed(limit=2) == ids[:2]
    assert await listed(limit=2, offset=3) == ids[3:5]
    assert await listed(offset=5) == ids[5:]
    assert await listed(offset=6) == []
    assert await listed(workflow="w2", limit=1, offset=1) == ["a-run"]
    first = (await b.list_runs(limit=1))[0]
    assert first == recs[0]


async def test_history_keeps_append_order_across_commits_and_append_history(
    conformance_backend: Backend,
) -> None:
    b = conformance_backend
    rec = await create(b)
    err = ErrorInfo("RuntimeError", "boom", "tb", non_retryable=False)
    batches: list[tuple[ev.Event, ...]] = [
        (started(rec, "a"), ev.Activated(T0), ev.StepScheduled(1, "s", [1, {"k": None}])),
        (ev.StepFailed(1, err, 3), ev.Activated(T0 + 1), ev.TimerStarted(2, 1.5, T0 + 2.5)),
        (ev.TimerFired(2), ev.Activated(T0 + 3), ev.RunCompleted(3, {"done": [True, 1.25]})),
    ]
    got = await claim_run(b, rec.run_id)
    assert await b.apply_commit(commit(got, events=batches[0]))
    meta: tuple[ev.Event, ...] = (ev.PatchMarker(9, "mid"),)
    await b.append_history(rec.run_id, meta)
    assert await b.append_inbox(rec.run_id, (signal("x"),), T0 + 1)
    got = await claim_run(b, rec.run_id, T0 + 1)
    assert got.history_length == len(batches[0]) + 1
    assert await b.apply_commit(commit(got, T0 + 1, events=batches[1]))
    assert await b.append_inbox(rec.run_id, (signal("y"),), T0 + 3)
    got = await claim_run(b, rec.run_id, T0 + 3)
    assert await b.apply_commit(commit(got, T0 + 3, events=batches[2], status=RunStatus.COMPLETED))
    after: tuple[ev.Event, ...] = (
        ev.ParentClosePolicyApplied("child-1", "terminate"),
        ev.ParentClosePolicyFailed("child-2", "request_cancel", "gone"),
    )
    await b.append_history(rec.run_id, after)  # closed runs take meta events too
    expected = [*batches[0], *meta, *batches[1], *batches[2], *after]
    assert await b.read_history(rec.run_id) == expected


async def test_inbox_is_fifo_with_growing_ids(conformance_backend: Backend) -> None:
    b = conformance_backend
    rec = await create(b)
    other = await create(b)
    sent = [signal("s", i) for i in range(6)]
    assert await b.append_inbox(rec.run_id, sent[:2], T0)
    assert await b.append_inbox(other.run_id, (signal("other"),), T0)
    assert await b.append_inbox(rec.run_id, sent[2:3], T0)
    assert await b.append_inbox(rec.run_id, sent[3:], T0)
    got = await claim_run(b, rec.run_id)
    assert inbox_events(got.inbox) == [started(rec), *sent]
    ids = [e.id for e in got.inbox]
    assert all(a < b_ for a, b_ in zip(ids, ids[1:], strict=False)), ids


async def test_inbox_upto_consumes_only_a_prefix(conformance_backend: Backend) -> None:
    b = conformance_backend
    rec = await create(b)
    assert await b.append_inbox(rec.run_id, (signal("a"), signal("b")), T0)
    got = await claim_run(b, rec.run_id)
    assert len(got.inbox) == 3
    assert await b.apply_commit(commit(got, inbox_upto=got.inbox[1].id))
    again = await claim_run(b, rec.run_id)
    assert again.inbox == (got.inbox[2],)


async def test_inbox_appended_during_a_lease_survives_the_commit_and_requeues(
    conformance_backend: Backend,
) -> None:
    b = conformance_backend
    rec = await create(b)
    got = await claim_run(b, rec.run_id)
    assert await b.append_inbox(rec.run_id, (signal("late"),), T0 + 1)
    assert await claim(b, T0 + 1) is None, "a leased run was claimed again"
    assert await b.apply_commit(commit(got, T0 + 2))  # consumes the snapshot only
    again = await claim_run(b, rec.run_id, T0 + 2)
    assert inbox_events(again.inbox) == [signal("late")]


async def test_commit_consuming_the_whole_inbox_leaves_no_task(
    conformance_backend: Backend,
) -> None:
    b = conformance_backend
    rec = await create(b)
    got = await claim_run(b, rec.run_id)
    assert await b.apply_commit(commit(got))
    assert await claim(b, T0 + 1000) is None
    st = await b.state(T0)
    assert (st.ready_workflow_tasks, st.leased_workflow_tasks) == (0, 0)


async def test_requeue_false_leaves_the_task_unqueued(conformance_backend: Backend) -> None:
    b = conformance_backend
    rec = await create(b)
    assert await b.append_inbox(rec.run_id, (signal("kept"),), T0)
    got = await claim_run(b, rec.run_id)
    assert await b.apply_commit(commit(got, inbox_upto=got.inbox[0].id, requeue=False))
    assert await claim(b, T0 + 1000) is None
    assert await b.requeue_workflow_task(rec.run_id, T0 + 1)
    again = await claim_run(b, rec.run_id, T0 + 1)
    assert inbox_events(again.inbox) == [signal("kept")]


async def test_requeue_workflow_task_queues_open_runs_only(conformance_backend: Backend) -> None:
    b = conformance_backend
    rec = await start_with(b)
    assert await claim(b, T0 + 1) is None
    assert await b.requeue_workflow_task(rec.run_id, T0 + 1)
    assert await b.requeue_workflow_task(rec.run_id, T0 + 1)  # already queued: still one task
    got = await claim_run(b, rec.run_id, T0 + 1)
    assert got.inbox == ()
    assert await claim(b, T0 + 1) is None
    assert await b.apply_commit(commit(got, T0 + 1, status=RunStatus.CANCELLED))
    assert await b.requeue_workflow_task(rec.run_id, T0 + 2) is False
    assert await claim(b, T0 + 1000) is None


async def test_append_inbox_to_a_closed_or_missing_run_is_refused(
    conformance_backend: Backend,
) -> None:
    b = conformance_backend
    rec = await create(b)
    got = await claim_run(b, rec.run_id)
    assert await b.apply_commit(commit(got, status=RunStatus.COMPLETED))
    assert await b.append_inbox(rec.run_id, (signal("late"),), T0 + 1) is False
    assert await b.append_inbox(new_id(), (signal("late"),), T0 + 1) is False
    assert await claim(b, T0 + 1000) is None
    st = await b.state(T0 + 1)
    assert st.ready_workflow_tasks == 0
