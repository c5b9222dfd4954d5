"""Conformance: atomic commits, fencing, new runs (key uniqueness), hooks and deliveries."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import attrs

from ..backends.base import (
    Backend,
    ClaimedRun,
    Commit,
    Delivery,
    HookReg,
    HookResume,
    NewRun,
    RunRecord,
    StepTask,
    Timer,
)
from ..kernel import events as ev
from ..kernel.status import RunStatus
from ._conformance_support import (
    LEASE,
    T0,
    claim,
    claim_run,
    commit,
    create,
    deliver,
    drain_all,
    drain_inbox,
    inbox_events,
    make_record,
    new_id,
    signal,
    start_with,
    started,
)

__all__ = [
    "test_commit_applies_every_effect_together",
    "test_stale_lease_commit_is_rejected_whole",
    "test_forced_commit_fences_out_the_inflight_activation",
    "test_forced_commit_on_an_open_run_bumps_the_fence",
    "test_forced_commit_on_a_closed_run_is_rejected",
    "test_a_commit_is_applied_at_most_once",
    "test_new_run_is_created_with_its_inbox_and_delivers_on_started_only",
    "test_new_run_with_a_held_key_delivers_on_conflict_only",
    "test_new_run_with_an_existing_run_id_is_left_alone",
    "test_new_runs_in_one_commit_see_each_others_keys",
    "test_closing_commit_frees_its_key_for_its_new_run",
    "test_hook_token_is_unique_among_open_hooks",
    "test_hook_token_is_released_when_its_run_closes",
    "test_disposed_hook_token_is_released",
    "test_dispose_then_register_in_one_commit_moves_the_token",
    "test_resume_hook_delivers_hook_received_to_the_holder",
    "test_commit_hook_resume_delivers_on_delivered_or_on_missing",
    "test_deliveries_to_closed_or_missing_runs_are_dropped",
    "test_closing_a_run_drops_its_pending_work",
]

LATER = T0 + 1000.0
"""Observation time: every lease of the tests has expired and every timer is due."""


def _bag(events: Sequence[ev.Event]) -> Counter[str]:
    return Counter(repr(e) for e in events)


@attrs.frozen
class Scene:
    """A run ``parent`` mid-flight plus a bystander ``other``, and the commit that would
    exercise every kind of effect at once."""

    parent: RunRecord
    other: RunRecord
    claimed: ClaimedRun
    history: list[ev.Event]
    full: Commit
    child_id: str


async def _scene(b: Backend) -> Scene:
    """Parent P (holds key "p-key", hook "p-old" seq 8, timer seq 9 due at T0+50); bystander O
    (hook "o-hook" seq 5). P is claimed with inbox [s1, s2]; ``full`` consumes s1 only."""
    other = await create(b, key="o-key")
    got = await claim_run(b, other.run_id)
    assert await b.apply_commit(
        commit(
            got,
            events=(got.inbox[0].event, ev.Activated(T0), ev.HookCreated(5, "o-hook")),
            hooks=(HookReg("o-hook", 5, deliver(other.run_id, "conflict")),),
        )
    )
    parent = await create(b, key="p-key")
    got = await claim_run(b, parent.run_id)
    first = (got.inbox[0].event, ev.Activated(T0), ev.HookCreated(8, "p-old"))
    assert await b.apply_commit(
        commit(
            got,
            status=None,  # stays pending: the full commit's status change is observable
            events=(*first, ev.TimerStarted(9, 50.0, T0 + 50)),
            timers=(Timer(parent.run_id, 9, T0 + 50),),
            hooks=(HookReg("p-old", 8, deliver(parent.run_id, "conflict")),),
        )
    )
    assert await b.append_inbox(parent.run_id, (signal("s1"), signal("s2")), T0 + 1)
    claimed = await claim_run(b, parent.run_id, T0 + 1)
    assert inbox_events(claimed.inbox) == [signal("s1"), signal("s2")]
    history = await b.read_history(parent.run_id)
    pid = parent.run_id
    child = make_record(new_id("child"), key="child-key", parent=pid, parent_seq=3)
    full = Commit(
        run_id=pid,
        lease=claimed.lease,
        now=T0 + 2,
        events=(
            signal("s1"),
            ev.Activated(T0 + 2),
            ev.StepScheduled(1, "conformance.step", ["x"]),
            ev.TimerStarted(2, 58.0, T0 + 60),
            ev.ChildScheduled(3, child.workflow, [], child.run_id, "child-key"),
            ev.HookCreated(4, "p-new"),
            ev.HookResumeSent(6, "o-hook", {"x": 1}),
            ev.SignalSent(7, other.run_id, "sig", 7),
            ev.TimerCancelled(10, 9),
            ev.HookDisposed(11, 8),
        ),
        inbox_upto=claimed.inbox[0].id,
        status=RunStatus.RUNNING,
        steps=(StepTask(pid, 1, "conformance.step", ["x"], 1, T0 + 2),),
        timers=(Timer(pid, 2, T0 + 60),),
        cancel_timers=(9,),
        new_runs=(
            NewRun(
                child,
                (started(child),),
                on_started=Delivery(pid, ev.ChildStarted(3, child.run_id)),
                on_conflict=Delivery(pid, ev.ChildStartFailed(3, "child-key")),
            ),
        ),
        hooks=(HookReg("p-new", 4, Delivery(pid, ev.HookConflict(4, "p-new"))),),
        dispose_hooks=("p-old",),
        hook_resumes=(
            HookResume(
                "o-hook",
                {"x": 1},
                on_delivered=Delivery(pid, ev.HookResumeResult(6, True)),
                on_missing=Delivery(pid, ev.HookResumeResult(6, False)),
            ),
        ),
        deliveries=(deliver(other.run_id, "sig", 7),),
    )
    return Scene(parent, other, claimed, history, full, child.run_id)


async def test_commit_applies_every_effect_together(conformance_backend: Backend) -> None:
    """After a successful commit every one of its effects is visible."""
    b = conformance_backend
    s = await _scene(b)
    pid, oid = s.parent.run_id, s.other.run_id
    assert await b.apply_commit(s.full) is True

    assert await b.read_history(pid) == [*s.history, *s.full.events], "events"
    rec = await b.get_run(pid)
    assert rec is not None and rec.status == RunStatus.RUNNING, "status"
    child = await b.get_run(s.child_id)
    assert child == s.full.new_runs[0].record, "new run"
    assert [r.run_id for r in await b.list_runs(parent=pid)] == [s.child_id]
    assert await b.resume_hook("p-new", "ping", T0 + 3) == pid, "hook registered"
    assert await b.resume_hook("p-old", "ping", T0 + 3) is None, "hook disposed"
    steps = await b.claim_step_tasks(LATER, 10, LEASE)
    assert [(t.run_id, t.seq, t.name, t.args) for t in steps] == [
        (pid, 1, "conformance.step", ["x"])
    ], "step tasks"
    assert await b.fire_due_timers(LATER) == 1, "timer set and cancelled timer removed"
    inboxes = await drain_all(b, LATER)
    p_inbox = inboxes.get(pid, [])
    assert p_inbox[:1] == [signal("s2")], "inbox_upto consumed only the prefix"
    assert _bag(p_inbox[1:]) == _bag(
        [
            ev.ChildStarted(3, s.child_id),
            ev.HookResumeResult(6, True),
            ev.HookReceived(4, "ping"),
            ev.TimerFired(2),
        ]
    ), "deliveries to the committing run"
    assert _bag(inboxes.get(oid, [])) == _bag([ev.HookReceived(5, {"x": 1}), signal("sig", 7)]), (
        "hook resume and delivery to another run"
    )
    assert inboxes.get(s.child_id) == [started(s.full.new_runs[0].record)], "new run's inbox"
    assert set(inboxes) == {pid, oid, s.child_id}


async def _assert_nothing_applied(b: Backend, s: Scene) -> None:
    """Every part of ``s.full`` is absent: the state is the one before it."""
    pid, oid = s.parent.run_id, s.other.run_id
    assert await b.read_history(pid) == s.history, "events were appended"
    assert await b.get_run(s.child_id) is None, "the new run was created"
    assert await b.list_runs(parent=pid) == []
    assert await b.resume_hook("p-new", "ping", T0 + 3) is None, "the hook was registered"
    assert await b.resume_hook("p-old", "ping", T0 + 3) == pid, "the hook was disposed"
    assert await b.claim_step_tasks(LATER, 10, LEASE) == [], "step tasks were queued"
    assert await b.fire_due_timers(LATER) == 1, "timers were set or cancelled"
    inboxes = await drain_all(b, LATER)
    assert oid not in inboxes, "the hook resume or delivery reached another run"
    assert s.child_id not in inboxes
    p_inbox = inboxes.get(pid, [])
    assert p_inbox[:2] == [signal("s1"), signal("s2")], "inbox entries were consumed"
    assert _bag(p_inbox[2:]) == _bag([ev.HookReceived(8, "ping"), ev.TimerFired(9)]), (
        "deliveries of the rejected commit reached its run"
    )


async def test_stale_lease_commit_is_rejected_whole(conformance_backend: Backend) -> None:
    """A commit under a lease that expired and was claimed again applies nothing at all."""
    b = conformance_backend
    s = await _scene(b)
    pid = s.parent.run_id
    newer = await claim_run(b, pid, T0 + 1 + LEASE)  # the first lease expired
    assert newer.lease != s.claimed.lease
    assert await b.apply_commit(s.full) is False
    rec = await b.get_run(pid)
    assert rec is not None and rec.status == RunStatus.PENDING, "the status was updated"
    assert await b.renew_workflow_lease(pid, newer.lease, T0 + 2 + LEASE, LEASE), (
        "the rejected commit released the newer lease"
    )
    assert await b.apply_commit(commit(newer, T0 + 2 + LEASE, status=None, consume=False))
    await _assert_nothing_applied(b, s)


async def test_forced_commit_fences_out_the_inflight_activation(
    conformance_backend: Backend,
) -> None:
    """``lease=None`` (terminate) applies at once and the in-flight commit is then refused."""
    b = conformance_backend
    s = await _scene(b)
    pid = s.parent.run_id
    terminate = Commit(
        run_id=pid,
        lease=None,
        now=T0 + 2,
        events=(ev.RunTerminated("ops"),),
        status=RunStatus.TERMINATED,
    )
    assert await b.apply_commit(terminate) is True
    assert await b.apply_commit(s.full) is False
    rec = await b.get_run(pid)
    assert rec is not None and rec.status == RunStatus.TERMINATED
    assert await b.read_history(pid) == [*s.history, ev.RunTerminated("ops")]
    assert await b.get_run(s.child_id) is None
    assert await b.claim_step_tasks(LATER, 10, LEASE) == []
    assert await b.fire_due_timers(LATER) == 0
    assert await b.resume_hook("p-new", 1, LATER) is None
    assert await b.resume_hook("o-hook", 1, LATER) == s.other.run_id
    inboxes = await drain_all(b, LATER)
    assert inboxes == {s.other.run_id: [ev.HookReceived(5, 1)]}


async def test_forced_commit_on_an_open_run_bumps_the_fence(conformance_backend: Backend) -> None:
    b = conformance_backend
    s = await _scene(b)
    pid = s.parent.run_id
    forced = Commit(run_id=pid, lease=None, now=T0 + 2, events=(ev.PatchMarker(20, "ops"),))
    assert await b.apply_commit(forced) is True
    assert await b.apply_commit(s.full) is False
    assert await b.renew_workflow_lease(pid, s.claimed.lease, T0 + 2, LEASE) is False
    await _assert_nothing_applied_but(b, s, [ev.PatchMarker(20, "ops")])


async def _assert_nothing_applied_but(b: Backend, s: Scene, extra: list[ev.Event]) -> None:
    assert await b.read_history(s.parent.run_id) == [*s.history, *extra]
    s2 = attrs.evolve(s, history=[*s.history, *extra])
    await _assert_nothing_applied(b, s2)


async def test_forced_commit_on_a_closed_run_is_rejected(conformance_backend: Backend) -> None:
    b = conformance_backend
    rec = await start_with(b)
    close = Commit(run_id=rec.run_id, lease=None, now=T0 + 1, status=RunStatus.TERMINATED)
    assert await b.apply_commit(close) is True
    history = await b.read_history(rec.run_id)
    again = Commit(
        run_id=rec.run_id,
        lease=None,
        now=T0 + 2,
        events=(ev.RunTerminated("twice"),),
        status=RunStatus.TERMINATED,
    )
    assert await b.apply_commit(again) is False
    assert await b.read_history(rec.run_id) == history
    closed = await b.get_run(rec.run_id)
    assert closed is not None and closed.closed_at == T0 + 1


async def test_a_commit_is_applied_at_most_once(conformance_backend: Backend) -> None:
    """A commit releases its lease, so the same commit sent again is refused."""
    b = conformance_backend
    rec = await create(b)
    got = await claim_run(b, rec.run_id)
    c = commit(got, events=(got.inbox[0].event, ev.Activated(T0)), timers=())
    assert await b.apply_commit(c) is True
    assert await b.apply_commit(c) is False
    assert await b.read_history(rec.run_id) == list(c.events)
    assert await b.renew_workflow_lease(rec.run_id, got.lease, T0, LEASE) is False


def _child_run(parent: RunRecord, seq: int, key: str | None) -> NewRun:
    child = make_record(new_id("child"), key=key, parent=parent.run_id, parent_seq=seq)
    return NewRun(
        child,
        (started(child), signal("hello")),
        on_started=Delivery(parent.run_id, ev.ChildStarted(seq, child.run_id)),
        on_conflict=Delivery(parent.run_id, ev.ChildStartFailed(seq, key)),
    )


async def test_new_run_is_created_with_its_inbox_and_delivers_on_started_only(
    conformance_backend: Backend,
) -> None:
    b = conformance_backend
    parent = await create(b)
    got = await claim_run(b, parent.run_id)
    nr = _child_run(parent, 1, "c-key")
    assert await b.apply_commit(commit(got, T0 + 1, new_runs=(nr,)))
    assert await b.get_run(nr.record.run_id) == nr.record
    inboxes = await drain_all(b, T0 + 1)
    assert inboxes == {
        parent.run_id: [ev.ChildStarted(1, nr.record.run_id)],
        nr.record.run_id: [started(nr.record), signal("hello")],
    }
    dup = make_record(key="c-key")
    assert await b.create_run(dup, (), T0 + 2) == (nr.record.run_id, False), "key not held"


async def test_new_run_with_a_held_key_delivers_on_conflict_only(
    conformance_backend: Backend,
) -> None:
    b = conformance_backend
    holder = await start_with(b, key="taken")
    parent = await create(b)
    got = await claim_run(b, parent.run_id)
    nr = _child_run(parent, 4, "taken")
    assert await b.apply_commit(commit(got, T0 + 1, new_runs=(nr,)))
    assert await b.get_run(nr.record.run_id) is None
    assert await b.list_runs(parent=parent.run_id) == []
    inboxes = await drain_all(b, T0 + 1)
    assert inboxes == {parent.run_id: [ev.ChildStartFailed(4, "taken")]}
    assert holder.run_id not in inboxes


async def test_new_run_with_an_existing_run_id_is_left_alone(
    conformance_backend: Backend,
) -> None:
    b = conformance_backend
    existing = await start_with(b, workflow="existing.wf")
    parent = await create(b)
    got = await claim_run(b, parent.run_id)
    nr = _child_run(parent, 2, "fresh-key")
    nr = attrs.evolve(nr, record=attrs.evolve(nr.record, run_id=existing.run_id))
    assert await b.apply_commit(commit(got, T0 + 1, new_runs=(nr,)))
    assert await b.get_run(existing.run_id) == attrs.evolve(existing, status=RunStatus.RUNNING)
    assert await drain_all(b, T0 + 1) == {}, "on_started/on_conflict or the inbox was delivered"
    other = make_record(key="fresh-key")
    assert await b.create_run(other, (), T0 + 2) == (other.run_id, True), "key was taken"


async def test_new_runs_in_one_commit_see_each_others_keys(conformance_backend: Backend) -> None:
    b = conformance_backend
    parent = await create(b)
    got = await claim_run(b, parent.run_id)
    first, second = _child_run(parent, 1, "same"), _child_run(parent, 2, "same")
    assert await b.apply_commit(commit(got, T0 + 1, new_runs=(first, second)))
    assert await b.get_run(first.record.run_id) == first.record
    assert await b.get_run(second.record.run_id) is None
    inboxes = await drain_all(b, T0 + 1)
    assert _bag(inboxes[parent.run_id]) == _bag(
        [ev.ChildStarted(1, first.record.run_id), ev.ChildStartFailed(2, "same")]
    )


async def test_closing_commit_frees_its_key_for_its_new_run(conformance_backend: Backend) -> None:
    """Continue-as-new: the closing run's key passes to the run its commit creates."""
    b = conformance_backend
    rec = await create(b, key="chain")
    got = await claim_run(b, rec.run_id)
    nxt = make_record(new_id("next"), key="chain", created_at=T0 + 1)
    c = commit(
        got,
        T0 + 1,
        events=(got.inbox[0].event, ev.Activated(T0 + 1), ev.RunContinuedAsNew(1, "wf", [2])),
        status=RunStatus.CONTINUED_AS_NEW,
        continued_to=nxt.run_id,
        new_runs=(NewRun(nxt, (started(nxt, 2),)),),
    )
    assert await b.apply_commit(c)
    old = await b.get_run(rec.run_id)
    assert old is not None
    assert (old.status, old.continued_to) == (RunStatus.CONTINUED_AS_NEW, nxt.run_id)
    assert await b.get_run(nxt.run_id) == nxt
    other = make_record(key="chain")
    assert await b.create_run(other, (), T0 + 2) == (nxt.run_id, False)
    assert await drain_all(b, T0 + 2) == {nxt.run_id: [started(nxt, 2)]}


def _hook_commit(got: ClaimedRun, now: float, *regs: tuple[str, int], **fields: object) -> Commit:
    rid = got.run.run_id
    hooks = tuple(HookReg(t, seq, Delivery(rid, ev.HookConflict(seq, t))) for t, seq in regs)
    return commit(got, now, hooks=hooks, **fields)  # type: ignore[arg-type]


async def test_hook_token_is_unique_among_open_hooks(conformance_backend: Backend) -> None:
    b = conformance_backend
    a, c = await create(b), await create(b)
    got = await claim_run(b, a.run_id)
    assert await b.apply_commit(_hook_commit(got, T0, ("tok", 3)))
    got = await claim_run(b, c.run_id)
    assert await b.apply_commit(_hook_commit(got, T0, ("tok", 5), ("tok-2", 6)))
    assert await drain_all(b, T0) == {c.run_id: [ev.HookConflict(5, "tok")]}
    assert await b.resume_hook("tok", "p", T0) == a.run_id
    assert await b.resume_hook("tok-2", "q", T0) == c.run_id
    assert await drain_all(b, T0) == {
        a.run_id: [ev.HookReceived(3, "p")],
        c.run_id: [ev.HookReceived(6, "q")],
    }


async def test_hook_token_is_released_when_its_run_closes(conformance_backend: Backend) -> None:
    b = conformance_backend
    a = await create(b)
    got = await claim_run(b, a.run_id)
    assert await b.apply_commit(_hook_commit(got, T0, ("tok", 3), ("tok-b", 4)))
    assert await b.append_inbox(a.run_id, (signal("x"),), T0)
    got = await claim_run(b, a.run_id)
    assert await b.apply_commit(commit(got, T0, status=RunStatus.COMPLETED))
    assert await b.resume_hook("tok", 1, T0) is None
    assert await b.resume_hook("tok-b", 1, T0) is None
    c = await create(b)
    got = await claim_run(b, c.run_id)
    assert await b.apply_commit(_hook_commit(got, T0, ("tok", 7)))
    assert await b.resume_hook("tok", 2, T0) == c.run_id
    assert await drain_all(b, T0) == {c.run_id: [ev.HookReceived(7, 2)]}


async def test_disposed_hook_token_is_released(conformance_backend: Backend) -> None:
    b = conformance_backend
    a, c = await create(b), await create(b)
    got = await claim_run(b, a.run_id)
    assert await b.apply_commit(_hook_commit(got, T0, ("tok", 3), ("keep", 4)))
    got = await claim_run(b, c.run_id)
    # Disposing a token another run holds (e.g. after a HookConflict) leaves that hook alone.
    assert await b.apply_commit(commit(got, T0, dispose_hooks=("tok",)))
    assert await b.resume_hook("tok", 1, T0) == a.run_id
    assert await b.append_inbox(a.run_id, (signal("x"),), T0)
    got = await claim_run(b, a.run_id)
    assert await b.apply_commit(commit(got, T0, dispose_hooks=("tok", "never-opened")))
    assert await b.resume_hook("tok", 2, T0) is None
    assert await b.resume_hook("keep", 3, T0) == a.run_id
    assert await drain_all(b, T0) == {a.run_id: [ev.HookReceived(4, 3)]}
    assert await b.append_inbox(c.run_id, (signal("y"),), T0)
    got = await claim_run(b, c.run_id)
    assert await b.apply_commit(_hook_commit(got, T0, ("tok", 9)))
    assert await b.resume_hook("tok", 4, T0) == c.run_id


async def test_dispose_then_register_in_one_commit_moves_the_token(
    conformance_backend: Backend,
) -> None:
    """Disposals apply before registrations: a token closed and reopened in one activation
    moves to the new hook instead of conflicting with itself."""
    b = conformance_backend
    a = await create(b)
    got = await claim_run(b, a.run_id)
    assert await b.apply_commit(_hook_commit(got, T0, ("tok", 3)))
    assert await b.append_inbox(a.run_id, (signal("x"),), T0)
    got = await claim_run(b, a.run_id)
    assert await b.apply_commit(_hook_commit(got, T0, ("tok", 8), dispose_hooks=("tok",)))
    assert await b.resume_hook("tok", "p", T0) == a.run_id
    assert await drain_all(b, T0) == {a.run_id: [ev.HookReceived(8, "p")]}


async def test_resume_hook_delivers_hook_received_to_the_holder(
    conformance_backend: Backend,
) -> None:
    b = conformance_backend
    a = await create(b)
    got = await claim_run(b, a.run_id)
    assert await b.apply_commit(_hook_commit(got, T0, ("tok", 3)))
    assert await claim(b, T0 + 1) is None
    payload = {"approved": True, "by": ["ann", None], "n": 1.5}
    assert await b.resume_hook("tok", payload, T0 + 1) == a.run_id
    assert await b.resume_hook("tok", None, T0 + 1) == a.run_id  # every resume is delivered
    assert await b.resume_hook("unknown", payload, T0 + 1) is None
    got = await claim_run(b, a.run_id, T0 + 1)
    assert inbox_events(got.inbox) == [ev.HookReceived(3, payload), ev.HookReceived(3, None)]


async def test_commit_hook_resume_delivers_on_delivered_or_on_missing(
    conformance_backend: Backend,
) -> None:
    b = conformance_backend
    holder, sender = await create(b), await create(b)
    got = await claim_run(b, holder.run_id)
    assert await b.apply_commit(_hook_commit(got, T0, ("tok", 3)))
    got = await claim_run(b, sender.run_id)
    sid = sender.run_id
    resumes = (
        HookResume(
            "tok",
            "v",
            on_delivered=Delivery(sid, ev.HookResumeResult(1, True)),
            on_missing=Delivery(sid, ev.HookResumeResult(1, False)),
        ),
        HookResume(
            "nobody",
            "w",
            on_delivered=Delivery(sid, ev.HookResumeResult(2, True)),
            on_missing=Delivery(sid, ev.HookResumeResult(2, False)),
        ),
    )
    assert await b.apply_commit(commit(got, T0 + 1, hook_resumes=resumes))
    inboxes = await drain_all(b, T0 + 1)
    assert inboxes[holder.run_id] == [ev.HookReceived(3, "v")]
    assert _bag(inboxes[sid]) == _bag([ev.HookResumeResult(1, True), ev.HookResumeResult(2, False)])
    assert set(inboxes) == {holder.run_id, sid}


async def test_deliveries_to_closed_or_missing_runs_are_dropped(
    conformance_backend: Backend,
) -> None:
    b = conformance_backend
    closed = await start_with(b)
    assert await b.apply_commit(
        Commit(run_id=closed.run_id, lease=None, now=T0, status=RunStatus.COMPLETED)
    )
    target, sender = await start_with(b), await create(b)
    got = await claim_run(b, sender.run_id)
    deliveries = (
        deliver(closed.run_id, "a"),
        deliver(new_id("missing"), "b"),
        deliver(target.run_id, "c"),
    )
    assert await b.apply_commit(commit(got, T0 + 1, deliveries=deliveries))
    assert await b.get_run(deliveries[1].run_id) is None
    assert await drain_all(b, T0 + 1) == {target.run_id: [signal("c")]}
    assert await b.requeue_workflow_task(closed.run_id, T0 + 2) is False
    assert await drain_inbox(b, closed.run_id, T0 + 2) == []


async def test_closing_a_run_drops_its_pending_work(conformance_backend: Backend) -> None:
    """Closing drops the run's step tasks, timers, workflow task and unconsumed inbox."""
    b = conformance_backend
    rec = await start_with(
        b,
        steps=(StepTask("", 1, "s", [], 1, T0), StepTask("", 2, "s", [], 1, T0 + 5)),
        timers=(Timer("", 3, T0 + 10),),
        key="closing-key",
    )
    leased = await b.claim_step_tasks(T0, 10, LEASE)
    assert [t.seq for t in leased] == [1]
    assert await b.append_inbox(rec.run_id, (signal("a"), signal("b")), T0)
    got = await claim_run(b, rec.run_id)
    assert await b.apply_commit(
        commit(got, T0 + 1, inbox_upto=got.inbox[0].id, status=RunStatus.FAILED, error=None)
    )
    assert await claim(b, LATER) is None, "the workflow task or inbox survived"
    assert await b.claim_step_tasks(LATER, 10, LEASE) == [], "step tasks survived"
    assert await b.fire_due_timers(LATER) == 0, "timers survived"
    assert (
        await b.finish_step(rec.run_id, 1, leased[0].lease, ev.StepCompleted(1, "x"), T0 + 2)
        is False
    ), "a leased step of a closed run could still be finished"
    st = await b.state(T0 + 2)
    assert (st.ready_workflow_tasks, st.ready_steps, st.leased_steps, st.timers) == (0, 0, 0, 0)
