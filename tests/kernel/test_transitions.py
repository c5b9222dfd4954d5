"""Walk every ``TRANSITIONS`` table of ``plait.kernel._ops`` (STYLE rule 3).

Every listed ``(state, event)`` transition is driven through a real ``Machine`` (inbound events
through ``activate``, code actions such as cancelling a timer through a signal that makes the
workflow do it) and must land in the listed state. Every unlisted ``(state, inbound event)``
pair must raise ``CorruptHistoryError``, through the machine and directly through the op class.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import Any

import pytest

import plait.kernel as k
from plait.kernel import _ops
from plait.kernel import commands as cmd
from plait.kernel import events as ev

from ._driver import RUN_ID, T0, started


@k.step
async def fetch(doc: str) -> str:
    raise AssertionError("steps never run inside the kernel")


@k.workflow
async def kid(n: int) -> int:
    return n


CHILD_ID = k.derive_child_run_id(RUN_ID, 1)
ERROR = k.ErrorInfo("ValueError", "boom")

# One instance of every inbound event that refers to a command, all for seq 1.
INBOUND: dict[type[ev.Event], ev.Event] = {
    ev.StepCompleted: ev.StepCompleted(1, "x"),
    ev.StepFailed: ev.StepFailed(1, ERROR, 2),
    ev.TimerFired: ev.TimerFired(1),
    ev.ChildStarted: ev.ChildStarted(1, CHILD_ID),
    ev.ChildStartFailed: ev.ChildStartFailed(1, "key"),
    ev.ChildCompleted: ev.ChildCompleted(1, 1),
    ev.ChildFailed: ev.ChildFailed(1, ERROR),
    ev.ChildCancelled: ev.ChildCancelled(1),
    ev.ChildTerminated: ev.ChildTerminated(1, "why"),
    ev.HookConflict: ev.HookConflict(1, "t"),
    ev.HookReceived: ev.HookReceived(1, "payload"),
    ev.HookResumeResult: ev.HookResumeResult(1, True),
}

# Code actions: the command event the workflow records when it receives signal "act".
ACTIONS: dict[type[ev.Event], ev.Event] = {
    ev.TimerCancelled: ev.TimerCancelled(2, 1),
    ev.ChildCancelRequested: ev.ChildCancelRequested(2, 1, CHILD_ID),
    ev.HookDisposed: ev.HookDisposed(2, 1),
}


def test_inbound_list_covers_every_seq_event() -> None:
    routed = {
        t
        for t in ev.INBOUND_EVENTS
        if t not in (ev.RunStarted, ev.CancelRequested, ev.SignalReceived)
    }
    assert set(INBOUND) == routed


async def subject(kind: str) -> None:
    """Issue the one command under test (seq 1), survive its outcome, then wait forever."""
    try:
        if kind == "step":
            await fetch("a")
        elif kind == "timer":
            await k.sleep(10)
        elif kind == "child":
            await k.child(kid, 1)
        elif kind == "hook resume":
            await k.resume_hook("t", 1)
    except Exception:
        pass
    await k.signal("never")


@k.workflow
async def harness(kind: str) -> None:
    if kind == "hook":
        h = k.hook(token="t")
        await k.signal("act")
        h.close()
    else:
        # "act" wins the race: the subject is cancelled at its await (CancelTimer, ...).
        await k.race(subject(kind), k.signal("act"))
    await k.signal("never")


OPS: dict[str, type[_ops.Op]] = {op.kind: op for op in _ops.OP_KINDS}


def test_every_op_kind_is_walked() -> None:
    assert set(OPS) == {"step", "timer", "child", "hook", "hook resume"}
    for op in _ops.OP_KINDS:
        for state, row in op.TRANSITIONS.items():
            assert isinstance(state, enum.Enum)
            # Every event in a table is one this test can deliver.
            assert set(row) <= set(INBOUND) | set(ACTIONS), (op.kind, state)
        first = next(iter(op.TRANSITIONS))
        assert set(op.TRANSITIONS) == set(type(first)), f"{op.kind}: a state has no row"


def paths(table: _ops.Table, initial: enum.Enum) -> dict[enum.Enum, list[type[ev.Event]]]:
    """The shortest event path from ``initial`` to every reachable state."""
    found: dict[enum.Enum, list[type[ev.Event]]] = {initial: []}
    queue = deque([initial])
    while queue:
        state = queue.popleft()
        for event_type, nxt in table[state].items():
            if nxt not in found:
                found[nxt] = [*found[state], event_type]
                queue.append(nxt)
    return found


class Harness:
    """A live machine running ``harness(kind)``; the op under test has seq 1."""

    def __init__(self, kind: str) -> None:
        self.m = k.Machine(harness)
        self.time = T0
        self.m.activate([started(harness, kind)], time=T0)

    @property
    def op(self) -> _ops.Op:
        return self.m._ops[1]

    def deliver(self, event_type: type[ev.Event]) -> None:
        self.time += 1
        if event_type in ACTIONS:
            self.m.activate([ev.SignalReceived("act")], time=self.time)
            assert ACTIONS[event_type] in self.m.new_events, self.m.new_events
        else:
            self.m.activate([INBOUND[event_type]], time=self.time)

    def check_replay(self) -> None:
        assert k.Machine(harness, self.m.history).history == self.m.history


def initial_state(kind: str) -> enum.Enum:
    state: enum.Enum = Harness(kind).op.state
    return state


@pytest.mark.parametrize("kind", sorted(OPS))
def test_every_listed_transition_through_a_machine(kind: str) -> None:
    table = OPS[kind].TRANSITIONS
    reach = paths(table, initial_state(kind))
    assert set(reach) == set(table), f"{kind}: unreachable states {set(table) - set(reach)}"
    exercised = set()
    for state, row in table.items():
        for event_type, target in row.items():
            h = Harness(kind)
            for step in reach[state]:
                h.deliver(step)
            assert h.op.state is state
            h.deliver(event_type)
            assert h.op.state is target, (kind, state, event_type)
            h.check_replay()
            exercised.add((state, event_type))
    assert exercised == {(s, e) for s, row in table.items() for e in row}


@pytest.mark.parametrize("kind", sorted(OPS))
def test_every_unlisted_inbound_pair_is_corrupt_through_a_machine(kind: str) -> None:
    table = OPS[kind].TRANSITIONS
    reach = paths(table, initial_state(kind))
    checked = 0
    for state, row in table.items():
        for event_type, event in INBOUND.items():
            if event_type in row:
                continue
            h = Harness(kind)
            for step in reach[state]:
                h.deliver(step)
            with pytest.raises(k.CorruptHistoryError) as info:
                h.m.activate([event], time=h.time + 1)
            assert str(info.value) == (
                f"{event_type.__name__} arrived for {kind} 1 in state {state.name}: "
                "no execution could produce this history"
            )
            assert h.op.state is state
            checked += 1
    assert checked > 0


def _instance(op_type: type[_ops.Op]) -> _ops.Op:
    if op_type is _ops.StepOp:
        return _ops.StepOp(1, "s", Any)
    if op_type is _ops.TimerOp:
        return _ops.TimerOp(1, lambda: None)
    if op_type is _ops.ChildOp:
        return _ops.ChildOp(1, CHILD_ID, None, Any)
    if op_type is _ops.HookOp:
        return _ops.HookOp(1, "t", Any)
    if op_type is _ops.ResumeOp:
        return _ops.ResumeOp(1, "t")
    raise AssertionError(f"no test instance for {op_type}")


def _drive(op: _ops.Op, steps: list[type[ev.Event]]) -> None:
    for step in steps:
        op.apply(INBOUND.get(step) or ACTIONS[step])


@pytest.mark.parametrize("op_type", _ops.OP_KINDS, ids=lambda t: t.kind)
def test_every_pair_directly_through_the_op(op_type: type[_ops.Op]) -> None:
    table = op_type.TRANSITIONS
    reach = paths(table, _instance(op_type).state)
    assert set(reach) == set(table)
    for state, row in table.items():
        for event_type, event in {**INBOUND, **ACTIONS}.items():
            op = _instance(op_type)
            _drive(op, reach[state])
            if event_type in row:
                op.apply(event)
                assert op.state is row[event_type]
            else:
                with pytest.raises(k.CorruptHistoryError):
                    op.apply(event)
                assert op.state is state


# -- what the transitions do to the code ---------------------------------------------------------


def test_late_outcomes_after_cancel_are_dropped() -> None:
    timer = Harness("timer")
    timer.deliver(ev.TimerCancelled)
    timer.deliver(ev.TimerFired)
    assert timer.m.new_events == [ev.TimerFired(1), ev.Activated(timer.time)]
    assert not timer.op.future.done()
    hook = Harness("hook")
    hook.deliver(ev.HookDisposed)
    hook.deliver(ev.HookReceived)
    assert isinstance(hook.op, _ops.HookOp) and list(hook.op.buffer) == []


def test_resume_result_false_rejects_with_hook_not_found() -> None:
    op = _ops.ResumeOp(1, "tok")
    op.apply(ev.HookResumeResult(1, False))
    assert op.state is _ops.ResumeState.DELIVERED
    error = op.future.exception()
    assert isinstance(error, k.HookNotFound) and error.token == "tok"


def test_child_start_failed_settles_both_futures_with_key_conflict() -> None:
    op = _ops.ChildOp(1, CHILD_ID, "key", Any)
    op.apply(ev.ChildStartFailed(1, "key"))
    assert isinstance(op.started.exception(), k.KeyConflict)
    assert op.closed.exception() is op.started.exception()


def test_harness_issues_the_command_under_test_as_seq_1() -> None:
    expected = {
        "step": cmd.ScheduleStep(1, fetch.name, ["a"]),
        "timer": cmd.StartTimer(1, 10.0, T0 + 10),
        "child": cmd.StartChild(1, kid.name, [1], CHILD_ID),
        "hook": cmd.CreateHook(1, "t"),
        "hook resume": cmd.ResumeHook(1, "t", 1),
    }
    for kind, command in expected.items():
        m = k.Machine(harness)
        assert m.activate([started(harness, kind)], time=T0) == [command]
