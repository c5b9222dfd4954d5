"""Barriers: ``all``, ``all_settled``, ``race``, ``wait_for`` (DESIGN §2, scheduler of §4)."""

from __future__ import annotations

from collections.abc import Awaitable, Generator
from typing import Any

import pytest

import plait.kernel as k
from plait.kernel import commands as cmd
from plait.kernel import events as ev

from ._driver import RUN_ID, T0, Run, started


@k.step
async def fetch(doc: str) -> str:
    raise AssertionError("steps never run inside the kernel")


@k.workflow
async def kid(n: int) -> int:
    return n


CID = k.derive_child_run_id


def sched(seq: int, doc: str) -> cmd.ScheduleStep:
    return cmd.ScheduleStep(seq, fetch.name, [doc])


def failure(message: str) -> k.ErrorInfo:
    return k.ErrorInfo("ValueError", message)


async def timer(seconds: float, value: str = "timer") -> str:
    await k.sleep(seconds)
    return value


# -- all -----------------------------------------------------------------------------------------


@k.workflow
async def all_three() -> list[str]:
    return await k.all(fetch("a"), fetch("b"), fetch("c"))


def test_all_results_in_argument_order() -> None:
    run = Run(all_three)
    assert run.commands == [sched(1, "a"), sched(2, "b"), sched(3, "c")]
    assert run.send(ev.StepCompleted(3, "C")) == []
    assert run.send(ev.StepCompleted(1, "A")) == []
    assert run.send(ev.StepCompleted(2, "B")) == [cmd.CompleteRun(4, ["A", "B", "C"])]


@k.workflow
async def all_fails_fast() -> str:
    try:
        await k.all(fetch("a"), fetch("b"), fetch("c"))
    except k.StepFailed as e:
        return await fetch("after " + e.cause.message)
    return "no failure"


def test_all_raises_the_first_failure_at_once() -> None:
    run = Run(all_fails_fast)
    assert run.send(ev.StepCompleted(1, "A")) == []
    # The waiter resumes now, before the slow sibling (seq 3) completes.
    assert run.send(ev.StepFailed(2, failure("b broke"))) == [sched(4, "after b broke")]
    # The sibling keeps running; its late completion is accepted and wakes nobody.
    assert run.send(ev.StepCompleted(3, "C")) == []
    assert run.send(ev.StepCompleted(4, "done")) == [cmd.CompleteRun(5, "done")]


def test_all_failure_order_is_history_order_within_a_batch() -> None:
    run = Run(all_fails_fast)
    assert run.send(ev.StepFailed(3, failure("c broke")), ev.StepFailed(2, failure("b broke"))) == [
        sched(4, "after c broke")
    ]
    other = Run(all_fails_fast)
    assert other.send(
        ev.StepFailed(2, failure("b broke")), ev.StepFailed(3, failure("c broke"))
    ) == [sched(4, "after b broke")]


@k.workflow
async def nested_all() -> list[Any]:
    return await k.all(k.all(fetch("a"), fetch("b")), fetch("c"), k.all(fetch("d")), k.all())


def test_nested_all() -> None:
    run = Run(nested_all)
    assert run.commands == [sched(1, "a"), sched(2, "b"), sched(3, "c"), sched(4, "d")]
    assert run.send(ev.StepCompleted(4, "D"), ev.StepCompleted(2, "B")) == []
    assert run.send(ev.StepCompleted(3, "C"), ev.StepCompleted(1, "A")) == [
        cmd.CompleteRun(5, [["A", "B"], "C", ["D"], []])
    ]


@k.workflow
async def nested_all_fails() -> str:
    try:
        await k.all(fetch("a"), k.all(fetch("b"), fetch("c")))
    except k.StepFailed as e:
        return e.cause.message
    return "no failure"


def test_nested_all_failure_propagates_at_once() -> None:
    run = Run(nested_all_fails)
    assert run.send(ev.StepFailed(3, failure("inner"))) == [cmd.CompleteRun(4, "inner")]


# -- all_settled ---------------------------------------------------------------------------------


@k.workflow
async def settled() -> list[Any]:
    out = []
    for r in await k.all_settled(fetch("a"), fetch("b"), fetch("c")):
        if isinstance(r, k.Ok):
            out.append(["ok", r.value])
        else:
            assert isinstance(r, k.Err)
            out.append(["err", type(r.error).__name__, str(r.error)])
    return out


def test_all_settled_in_argument_order_never_raises() -> None:
    run = Run(settled)
    assert run.send(ev.StepFailed(2, failure("b broke"), attempts=2)) == []
    assert run.send(ev.StepCompleted(3, "C")) == []
    assert run.send(ev.StepCompleted(1, "A")) == [
        cmd.CompleteRun(
            4,
            [
                ["ok", "A"],
                [
                    "err",
                    "StepFailed",
                    f"step {fetch.name!r} failed after 2 attempt(s): ValueError: b broke",
                ],
                ["ok", "C"],
            ],
        )
    ]


# -- race ----------------------------------------------------------------------------------------


@k.workflow
async def three_way_race() -> list[Any]:
    winner = await k.race(fetch("a"), timer(10), k.child(kid, 1))
    after = await fetch("after")
    return [winner, after]


def test_race_step_wins_and_losers_are_cancelled() -> None:
    run = Run(three_way_race)
    assert run.commands == [
        sched(1, "a"),
        cmd.StartTimer(2, 10.0, T0 + 10),
        cmd.StartChild(3, kid.name, [1], CID(RUN_ID, 3)),
    ]
    assert run.send(ev.StepCompleted(1, "A")) == [
        cmd.CancelTimer(4, 2),
        cmd.RequestCancelChild(5, 3, CID(RUN_ID, 3)),
        sched(6, "after"),
    ]
    # The losers' late outcomes are accepted and wake nobody.
    assert run.send(ev.TimerFired(2), ev.ChildStarted(3, CID(RUN_ID, 3))) == []
    assert run.send(ev.ChildCancelled(3)) == []
    assert run.send(ev.StepCompleted(6, "X")) == [cmd.CompleteRun(7, ["A", "X"])]


def test_race_timer_wins() -> None:
    run = Run(three_way_race)
    # A step cannot be cancelled: only the child gets a request.
    assert run.send(ev.TimerFired(2)) == [
        cmd.RequestCancelChild(4, 3, CID(RUN_ID, 3)),
        sched(5, "after"),
    ]
    assert run.send(ev.StepCompleted(1, "late")) == []
    assert run.send(ev.StepCompleted(5, "X")) == [cmd.CompleteRun(6, ["timer", "X"])]


def test_race_child_wins() -> None:
    run = Run(three_way_race)
    assert run.send(ev.ChildStarted(3, CID(RUN_ID, 3))) == []
    assert run.send(ev.ChildCompleted(3, 7)) == [cmd.CancelTimer(4, 2), sched(5, "after")]


@k.workflow
async def race_error() -> str:
    try:
        await k.race(fetch("a"), timer(10))
    except k.StepFailed as e:
        return "lost: " + e.cause.message
    return "won"


def test_race_raises_when_the_first_member_settles_with_an_error() -> None:
    run = Run(race_error)
    assert run.send(ev.StepFailed(1, failure("a broke"))) == [
        cmd.CancelTimer(3, 2),
        cmd.CompleteRun(4, "lost: a broke"),
    ]


def test_race_first_in_history_order_wins_within_a_batch() -> None:
    run = Run(three_way_race)
    assert run.send(ev.TimerFired(2), ev.StepCompleted(1, "A")) == [
        cmd.RequestCancelChild(4, 3, CID(RUN_ID, 3)),
        sched(5, "after"),
    ]
    assert run.send(ev.StepCompleted(5, "X")) == [cmd.CompleteRun(6, ["timer", "X"])]


@k.workflow
async def race_of_barriers() -> Any:
    return await k.race(k.all(fetch("a"), timer(5, "t5")), timer(20, "t20"))


def test_race_cancels_a_losing_barrier_and_its_members() -> None:
    run = Run(race_of_barriers)
    assert run.commands == [
        sched(1, "a"),
        cmd.StartTimer(2, 5.0, T0 + 5),
        cmd.StartTimer(3, 20.0, T0 + 20),
    ]
    assert run.send(ev.TimerFired(3)) == [cmd.CancelTimer(4, 2), cmd.CompleteRun(5, "t20")]


def test_empty_race_is_an_error() -> None:
    @k.workflow
    async def empty_race() -> str:
        try:
            await k.race()
        except ValueError as e:
            return str(e)
        return "raced"

    run = Run(empty_race)
    assert run.commands == [cmd.CompleteRun(1, "plait.race() needs at least one awaitable")]


@k.workflow
async def careful_race() -> str:
    async def careful() -> str:
        try:
            await k.sleep(100)
        except k.Cancelled:
            await fetch("cleanup 1")
            await fetch("cleanup 2")
            return "cleaned"
        return "slept"

    try:
        return await k.race(careful(), fetch("a"))
    except k.Cancelled:
        return await fetch("after")


def test_cancelling_a_race_cancels_each_member_once() -> None:
    run = Run(careful_race)
    assert run.commands == [cmd.StartTimer(1, 100.0, T0 + 100), sched(2, "a")]
    assert run.send(ev.CancelRequested()) == [
        cmd.CancelTimer(3, 1),
        sched(4, "cleanup 1"),
        sched(5, "after"),
    ]
    # The loser's cleanup goes on: it is not cancelled a second time by its sibling's end.
    assert run.send(ev.StepCompleted(4, "ok")) == [sched(6, "cleanup 2")]
    assert run.send(ev.StepCompleted(5, "A")) == [cmd.CompleteRun(7, "A")]


# -- wait_for ------------------------------------------------------------------------------------


@k.workflow
async def waits(kind: str) -> Any:
    aw = fetch("a") if kind == "step" else k.child(kid, 1)
    try:
        return await k.wait_for(aw, 30)
    except k.Timeout as e:
        return ["timeout", str(e), isinstance(e, TimeoutError)]


def test_wait_for_times_out() -> None:
    run = Run(waits, "step")
    assert run.commands == [sched(1, "a"), cmd.StartTimer(2, 30.0, T0 + 30)]
    assert run.send(ev.TimerFired(2)) == [
        cmd.CompleteRun(3, ["timeout", "timed out after 30s", True])
    ]


def test_wait_for_returns_the_value_first() -> None:
    run = Run(waits, "step")
    assert run.send(ev.StepCompleted(1, "A")) == [cmd.CancelTimer(3, 2), cmd.CompleteRun(4, "A")]


def test_wait_for_cancels_a_child_on_timeout() -> None:
    run = Run(waits, "child")
    assert run.commands == [
        cmd.StartChild(1, kid.name, [1], CID(RUN_ID, 1)),
        cmd.StartTimer(2, 30.0, T0 + 30),
    ]
    assert run.send(ev.TimerFired(2)) == [
        cmd.RequestCancelChild(3, 1, CID(RUN_ID, 1)),
        cmd.CompleteRun(4, ["timeout", "timed out after 30s", True]),
    ]


# -- cancellation of a whole barrier -------------------------------------------------------------


@k.workflow
async def cancel_all() -> str:
    try:
        await k.all(timer(10), k.child(kid, 1), fetch("a"))
    except k.Cancelled:
        return "cancelled"
    return "done"


def test_cancel_request_cancels_every_member() -> None:
    run = Run(cancel_all)
    run.send(ev.ChildStarted(2, CID(RUN_ID, 2)))
    assert run.send(ev.CancelRequested()) == [
        cmd.CancelTimer(4, 1),
        cmd.RequestCancelChild(5, 2, CID(RUN_ID, 2)),
        cmd.CompleteRun(6, "cancelled"),
    ]


# -- the waiter wakes once -----------------------------------------------------------------------


class CountResumes:
    """Wraps an awaitable and counts how often the awaiting coroutine is resumed through it."""

    def __init__(self, aw: Awaitable[Any]) -> None:
        self.aw, self.resumes = aw, 0

    def __await__(self) -> Generator[Any, Any, Any]:
        it = self.aw.__await__()
        try:
            yielded = next(it)
        except StopIteration as stop:
            return stop.value
        while True:
            try:
                sent = yield yielded
            except BaseException as exc:  # noqa: BLE001 - forwarded as is
                self.resumes += 1
                try:
                    yielded = it.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                self.resumes += 1
                try:
                    yielded = it.send(sent)
                except StopIteration as stop:
                    return stop.value


COUNTERS: list[CountResumes] = []
AFTER: list[int] = []


@k.workflow
async def fan_in(n: int) -> int:
    barrier = CountResumes(
        k.all(*(k.child(kid, i) for i in range(n)), *(fetch(str(i)) for i in range(n)))
    )
    COUNTERS.append(barrier)
    results = await barrier
    AFTER.append(1)
    return len(results)


def test_barrier_over_n_members_wakes_its_waiter_once() -> None:
    COUNTERS.clear()
    AFTER.clear()
    n = 5
    m = k.Machine(fan_in)
    assert len(m.activate([started(fan_in, n)], time=T0)) == 2 * n
    # Every partial completion appends its events and issues nothing.
    for seq in range(1, n + 1):
        assert m.activate([ev.ChildStarted(seq, CID(RUN_ID, seq))], time=T0 + seq) == []
        assert m.new_events == [ev.ChildStarted(seq, CID(RUN_ID, seq)), ev.Activated(T0 + seq)]
    for seq in range(n + 1, 2 * n + 1):
        assert m.activate([ev.StepCompleted(seq, "x")], time=T0 + seq) == []
    for seq in range(2, n + 1):
        assert m.activate([ev.ChildCompleted(seq, seq)], time=T0 + 20) == []
    assert COUNTERS[0].resumes == 0 and AFTER == []
    assert m.activate([ev.ChildCompleted(1, 1)], time=T0 + 30) == [
        cmd.CompleteRun(2 * n + 1, 2 * n)
    ]
    assert COUNTERS[0].resumes == 1 and AFTER == [1]
    # Replay also resumes the waiter exactly once.
    replayed = k.Machine(fan_in, m.history)
    assert replayed.history == m.history
    assert COUNTERS[1].resumes == 1 and AFTER == [1, 1]


def test_empty_all_and_all_settled_return_at_once() -> None:
    @k.workflow
    async def empties() -> list[Any]:
        return [await k.all(), await k.all_settled()]

    assert Run(empties).commands == [cmd.CompleteRun(1, [[], []])]


@pytest.mark.parametrize("mode", ["all", "all_settled", "race"])
def test_members_may_be_any_plait_awaitable(mode: str) -> None:
    @k.workflow
    async def mixed() -> Any:
        h = k.hook(token="t")
        barrier = getattr(k, mode)
        return await barrier(h, k.signal("s"), fetch("a"))

    run = Run(mixed)
    assert run.commands == [cmd.CreateHook(1, "t"), sched(2, "a")]
    result = run.send(
        ev.SignalReceived("s", "S"), ev.HookReceived(1, "H"), ev.StepCompleted(2, "A")
    )
    if mode == "race":
        assert result == [cmd.CompleteRun(3, "S")]
    elif mode == "all":
        assert result == [cmd.CompleteRun(3, ["H", "S", "A"])]
    else:
        (complete,) = result
        assert isinstance(complete, cmd.CompleteRun) and complete.seq == 3
        assert run.result == [k.Ok("H"), k.Ok("S"), k.Ok("A")]
