"""Property: any program, any completion order — replay reproduces the run exactly.

Hypothesis generates small workflow programs (a JSON tree of steps, sleeps, children, hooks,
failing steps, barriers and sequences), and ONE generic workflow interprets them. A fake runtime
completes the open commands in a hypothesis-chosen order, one or several per activation, until the
run closes. Then:

* ``Machine(fn, history)`` reproduces the history exactly (and so every command event);
* replaying any prefix of batches and running the rest live gives the same commands and history
  (a worker that lost its cached machine);
* a fresh live run fed the same batches gives the same commands and history.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import plait.kernel as k
from plait.kernel import commands as cmd
from plait.kernel import events as ev
from plait.kernel.machine import command_event

from ._driver import RUN_ID, T0, started


@k.step
async def fetch(value: str) -> str:
    raise AssertionError("steps never run inside the kernel")


@k.step
async def broken(value: str) -> str:
    raise AssertionError("steps never run inside the kernel")


@k.workflow
async def kid(n: int) -> int:
    return n


async def run_op(op: list[Any]) -> Any:
    kind = op[0]
    if kind == "step":
        return await fetch(op[1])
    if kind == "fail":
        try:
            return await broken(op[1])
        except k.StepFailed as e:
            if op[2]:
                return "caught " + e.cause.message
            raise
    if kind == "sleep":
        await k.sleep(op[1])
        return ["slept", k.now().timestamp()]
    if kind == "child":
        try:
            return await k.child(kid, op[1])
        except k.ChildFailed as e:
            return "child failed: " + e.cause.message
    if kind == "hook":
        return await k.hook()
    if kind == "rand":
        return [k.random().randint(0, 1000), str(k.uuid4())]
    if kind == "seq":
        return [await run_op(o) for o in op[1]]
    barrier = getattr(k, kind)
    try:
        result = await barrier(*(run_op(o) for o in op[1]))
    except k.StepFailed as e:
        return f"{kind} failed: {e.cause.message}"
    if kind == "all_settled":
        return [["ok", r.value] if isinstance(r, k.Ok) else ["err", str(r.error)] for r in result]
    return result


@k.workflow(name="properties.interpret")
async def interpret(program: list[Any]) -> Any:
    try:
        return await run_op(program)
    except k.Cancelled:
        await fetch("cleanup")
        raise


# -- programs ------------------------------------------------------------------------------------

words = st.text("abc", min_size=1, max_size=3)
leaves = st.one_of(
    st.tuples(st.just("step"), words).map(list),
    st.tuples(st.just("fail"), words, st.booleans()).map(list),
    st.tuples(st.just("sleep"), st.integers(0, 100)).map(list),
    st.tuples(st.just("child"), st.integers(0, 9)).map(list),
    st.just(["hook"]),
    st.just(["rand"]),
)
programs = st.recursive(
    leaves,
    lambda inner: st.tuples(
        st.sampled_from(["seq", "all", "all_settled", "race"]),
        st.lists(inner, min_size=1, max_size=3),
    ).map(list),
    max_leaves=12,
)


# -- the fake runtime ----------------------------------------------------------------------------


class FakeRuntime:
    """Turns commands into pending outcome events, as a runtime would deliver them."""

    def __init__(self, data: st.DataObject, run_id: str, cancel_at: int | None) -> None:
        self.data, self.run_id, self.cancel_at = data, run_id, cancel_at
        self.pending: list[ev.Event] = []
        self.activations = 0

    def _drop(self, seq: int) -> None:
        self.pending = [e for e in self.pending if getattr(e, "seq", None) != seq]

    def take(self, commands: list[cmd.Command]) -> None:
        for c in commands:
            if isinstance(c, cmd.ScheduleStep):
                if c.name == fetch.name:
                    self.pending.append(ev.StepCompleted(c.seq, "r" + c.args[0]))
                else:
                    error = k.ErrorInfo("ValueError", c.args[0])
                    self.pending.append(ev.StepFailed(c.seq, error, attempts=2))
            elif isinstance(c, cmd.StartTimer):
                self.pending.append(ev.TimerFired(c.seq))
            elif isinstance(c, cmd.CancelTimer):
                # A runtime may have fired the timer already: sometimes deliver it late.
                if not self.data.draw(st.booleans(), label="late fire"):
                    self._drop(c.timer_seq)
            elif isinstance(c, cmd.StartChild):
                assert c.child_run_id == k.derive_child_run_id(self.run_id, c.seq)
                self.pending.append(ev.ChildStarted(c.seq, c.child_run_id))
            elif isinstance(c, cmd.RequestCancelChild):
                for i, e in enumerate(self.pending):
                    if isinstance(e, ev.ChildCompleted | ev.ChildFailed) and e.seq == c.child_seq:
                        self.pending[i] = ev.ChildCancelled(c.child_seq)
            elif isinstance(c, cmd.CreateHook):
                self.pending.append(ev.HookReceived(c.seq, "p" + c.token[:4]))
            elif isinstance(c, cmd.DisposeHook):
                self._drop(c.hook_seq)
            else:
                assert type(c) in cmd.CLOSE_COMMANDS, c

    def delivered(self, event: ev.Event) -> None:
        if isinstance(event, ev.ChildStarted):
            if self.data.draw(st.integers(0, 3), label="child fails?") == 3:
                error = k.ErrorInfo("KeyError", f"child {event.seq}")
                self.pending.append(ev.ChildFailed(event.seq, error))
            else:
                self.pending.append(ev.ChildCompleted(event.seq, event.seq * 10))

    def next_batch(self) -> list[ev.Event]:
        batch: list[ev.Event] = []
        self.activations += 1
        if self.activations == self.cancel_at:
            batch.append(ev.CancelRequested())
        size = self.data.draw(st.integers(1, 3), label="batch size")
        while self.pending and len(batch) < size:
            i = self.data.draw(st.integers(0, len(self.pending) - 1), label="next outcome")
            event = self.pending.pop(i)
            batch.append(event)
            self.delivered(event)
        return batch


Batches = list[tuple[list[ev.Event], float]]


def live_run(
    program: list[Any], cancel_at: int | None, data: st.DataObject
) -> tuple[k.Machine, Batches, list[list[cmd.Command]]]:
    first = [started(interpret, program)]
    m = k.Machine(interpret)
    runtime = FakeRuntime(data, RUN_ID, cancel_at)
    batches: Batches = [(first, T0)]
    outputs = [m.activate(first, time=T0)]
    runtime.take(outputs[-1])
    time = T0
    while not m.closed:
        assert runtime.pending, "the run is stuck with nothing to deliver"
        batch = runtime.next_batch()
        time += data.draw(st.integers(0, 50), label="time passes")
        batches.append((batch, time))
        outputs.append(m.activate(batch, time=time))
        runtime.take(outputs[-1])
        assert len(batches) < 200
    return m, batches, outputs


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    program=st.lists(programs, min_size=2, max_size=5).map(lambda ops: ["seq", ops]),
    cancel_at=st.one_of(st.none(), st.none(), st.integers(1, 8)),
    data=st.data(),
)
def test_replay_and_rerun_reproduce_the_run(
    program: list[Any], cancel_at: int | None, data: st.DataObject
) -> None:
    m, batches, outputs = live_run(program, cancel_at, data)
    history = m.history
    assert m.status in k.CLOSED_STATUSES

    # Every command the live run issued is recorded, in order, as its command event.
    issued = [command_event(c) for out in outputs for c in out]
    assert [e for e in history if type(e) in ev.COMMAND_EVENTS] == issued
    assert [e.seq for e in issued] == list(range(1, len(issued) + 1))

    # Replay of the whole history.
    replayed = k.Machine(interpret, history)
    assert replayed.history == history
    assert (replayed.status, replayed.result_data, replayed.error) == (
        m.status,
        m.result_data,
        m.error,
    )

    # Replay of every prefix, then the rest live (a worker that lost its cached machine).
    ends = [i + 1 for i, e in enumerate(history) if isinstance(e, ev.Activated)]
    for cut in range(1, len(batches)):
        prefix = history[: _batch_end(history, ends, cut)]
        resumed = k.Machine(interpret, prefix)
        for (batch, time), expected in zip(batches[cut:], outputs[cut:], strict=True):
            assert resumed.activate(batch, time=time) == expected
        assert resumed.history == history

    # A fresh live run fed the same batches.
    again = k.Machine(interpret)
    for (batch, time), expected in zip(batches, outputs, strict=True):
        assert again.activate(batch, time=time) == expected
    assert again.history == history


def _batch_end(history: list[ev.Event], ends: list[int], n: int) -> int:
    """Index just past the command events of the ``n``-th batch."""
    i = ends[n - 1]
    while i < len(history) and type(history[i]) in ev.COMMAND_EVENTS:
        i += 1
    return i


def test_the_interpreter_on_a_fixed_program() -> None:
    program = ["seq", [["step", "a"], ["all", [["sleep", 5], ["fail", "x", True]]], ["hook"]]]
    m = k.Machine(interpret)
    (first,) = m.activate([started(interpret, program)], time=T0)
    assert first == cmd.ScheduleStep(1, fetch.name, ["a"])
    assert m.activate([ev.StepCompleted(1, "ra")], time=T0 + 1) == [
        cmd.StartTimer(2, 5.0, T0 + 6),
        cmd.ScheduleStep(3, broken.name, ["x"]),
    ]
    assert m.activate([ev.StepFailed(3, k.ErrorInfo("ValueError", "x"))], time=T0 + 2) == []
    (hook,) = m.activate([ev.TimerFired(2)], time=T0 + 6)
    assert isinstance(hook, cmd.CreateHook) and hook.seq == 4
    assert m.activate([ev.HookReceived(4, "p")], time=T0 + 7) == [
        cmd.CompleteRun(5, ["ra", [["slept", T0 + 6], "caught x"], "p"])
    ]
