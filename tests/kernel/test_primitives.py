"""Every primitive of DESIGN §2, driven through a real ``Machine``.

Each test asserts the exact commands of each activation and, where the shape matters, the exact
history (built by hand). ``Run`` replays the whole history after every activation, so every
test also proves that replay reproduces it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import uuid
from typing import Any

import attrs
import pytest

import plait.kernel as k
from plait.kernel import commands as cmd
from plait.kernel import events as ev

from ._driver import RUN_ID, SEED, T0, Run, site, started

UTC = dt.UTC


@k.step
async def fetch(doc: str) -> str:
    raise AssertionError("steps never run inside the kernel")


@k.step
async def nothing() -> None:
    raise AssertionError("steps never run inside the kernel")


@attrs.frozen
class Point:
    x: int
    y: int


@k.step
async def locate(name: str) -> Point:
    raise AssertionError("steps never run inside the kernel")


@k.workflow
async def kid(n: int) -> int:
    return n


def child_id(seq: int, parent: str = RUN_ID) -> str:
    return k.derive_child_run_id(parent, seq)


# -- steps ---------------------------------------------------------------------------------------


@k.workflow
async def one_step(doc: str) -> str:
    text = await fetch(doc)
    return text + "!"


def test_step_result_and_history() -> None:
    run = Run(one_step, "a")
    assert run.commands == [cmd.ScheduleStep(1, fetch.name, ["a"])]
    assert run.status is k.RunStatus.RUNNING
    assert run.send(ev.StepCompleted(1, "aa")) == [cmd.CompleteRun(2, "aa!")]
    assert run.status is k.RunStatus.COMPLETED
    assert run.result == "aa!"
    expected = [
        started(one_step, "a"),
        ev.Activated(T0),
        ev.StepScheduled(1, fetch.name, ["a"]),
        ev.StepCompleted(1, "aa"),
        ev.Activated(T0 + 1),
        ev.RunCompleted(2, "aa!"),
    ]
    assert run.history == expected
    replayed = k.Machine(one_step, expected)
    assert (replayed.status, replayed.result) == (k.RunStatus.COMPLETED, "aa!")


def test_step_name_is_module_qualname() -> None:
    assert fetch.name == f"{__name__}.fetch"


@k.workflow
async def catches_step_failure() -> list[Any]:
    try:
        await fetch("x")
    except k.StepFailed as e:
        return [e.step, e.cause.type, e.cause.message, e.attempts, str(e)]
    return ["no error"]


def test_step_failed_is_raised_with_cause_and_attempts() -> None:
    run = Run(catches_step_failure)
    error = k.ErrorInfo("ValueError", "bad input", "Traceback...")
    assert run.send(ev.StepFailed(1, error, attempts=3)) == [
        cmd.CompleteRun(
            2,
            [
                fetch.name,
                "ValueError",
                "bad input",
                3,
                f"step {fetch.name!r} failed after 3 attempt(s): ValueError: bad input",
            ],
        )
    ]


def test_uncaught_step_failure_fails_the_run() -> None:
    run = Run(one_step, "a")
    (fail,) = run.send(ev.StepFailed(1, k.ErrorInfo("OSError", "down"), attempts=2))
    assert isinstance(fail, cmd.FailRun) and fail.seq == 2
    assert fail.error.type == "plait.StepFailed"
    assert fail.error.message == f"step {fetch.name!r} failed after 2 attempt(s): OSError: down"
    assert run.status is k.RunStatus.FAILED and run.error == fail.error


@k.workflow
async def typed_results() -> list[Any]:
    p = await locate("home")
    n = await nothing()
    return [type(p).__name__, p.x, p.y, n]


def test_step_results_are_structured_by_return_hint() -> None:
    run = Run(typed_results)
    assert run.commands == [cmd.ScheduleStep(1, locate.name, ["home"])]
    assert run.send(ev.StepCompleted(1, {"x": 1, "y": 2})) == [
        cmd.ScheduleStep(2, nothing.name, [])
    ]
    # ``-> None`` steps: the hint is NoneType, which must accept None.
    assert run.send(ev.StepCompleted(2, None)) == [cmd.CompleteRun(3, ["Point", 1, 2, None])]


# -- timers --------------------------------------------------------------------------------------


@k.workflow
async def sleeper() -> str:
    await k.sleep(30)
    await k.sleep(dt.timedelta(minutes=1))
    await k.sleep_until(dt.datetime.fromtimestamp(T0 + 500, UTC))
    await k.sleep_until(dt.datetime.fromtimestamp(T0, UTC))  # in the past: due at once
    return "rested"


def test_sleep_and_sleep_until_durations_and_fire_times() -> None:
    run = Run(sleeper)
    assert run.commands == [cmd.StartTimer(1, 30.0, T0 + 30)]
    assert run.send(ev.TimerFired(1), time=T0 + 30) == [cmd.StartTimer(2, 60.0, T0 + 90)]
    assert run.send(ev.TimerFired(2), time=T0 + 91) == [cmd.StartTimer(3, 409.0, T0 + 500)]
    assert run.send(ev.TimerFired(3), time=T0 + 500) == [cmd.StartTimer(4, 0.0, T0 + 500)]
    assert run.send(ev.TimerFired(4), time=T0 + 500) == [cmd.CompleteRun(5, "rested")]
    assert [e for e in run.history if isinstance(e, ev.TimerStarted)] == [
        ev.TimerStarted(1, 30.0, T0 + 30),
        ev.TimerStarted(2, 60.0, T0 + 90),
        ev.TimerStarted(3, 409.0, T0 + 500),
        ev.TimerStarted(4, 0.0, T0 + 500),
    ]


@k.workflow
async def naive_sleep_until() -> str:
    try:
        await k.sleep_until(dt.datetime(2030, 1, 1))
    except ValueError as e:
        return str(e)
    return "slept"


def test_sleep_until_rejects_naive_datetimes() -> None:
    run = Run(naive_sleep_until)
    assert run.commands == [
        cmd.CompleteRun(1, "sleep_until needs an aware datetime (e.g. with tzinfo=timezone.utc)")
    ]


# -- deterministic values ------------------------------------------------------------------------


@k.workflow
async def clock() -> list[str]:
    first = k.now()
    assert first.tzinfo is UTC
    await fetch("x")
    return [first.isoformat(), k.now().isoformat()]


def test_now_is_the_activation_time_in_utc() -> None:
    run = Run(clock, time=T0)
    assert run.send(ev.StepCompleted(1, "xx"), time=T0 + 7.5) == [
        cmd.CompleteRun(
            2,
            [
                dt.datetime.fromtimestamp(T0, UTC).isoformat(),
                dt.datetime.fromtimestamp(T0 + 7.5, UTC).isoformat(),
            ],
        )
    ]


def test_activation_time_may_be_an_aware_datetime() -> None:
    m = k.Machine(clock)
    m.activate([started(clock)], time=dt.datetime.fromtimestamp(T0, UTC))
    assert m.history[1] == ev.Activated(T0)


@k.workflow
async def ids() -> list[str]:
    return [str(k.uuid4()), str(k.uuid4())]


@k.workflow
async def ids_with_random() -> list[str]:
    k.random().random()
    first = k.uuid4()
    k.random().randint(1, 6)
    return [str(first), str(k.uuid4())]


def _result(wf: Any, **fields: Any) -> Any:
    run = Run(wf, **fields)
    assert run.status is k.RunStatus.COMPLETED, run.commands
    return run.result


def test_uuid4_is_deterministic_and_independent_of_random() -> None:
    first, second = _result(ids)
    assert first != second
    assert {uuid.UUID(first).version, uuid.UUID(second).version} == {4}
    assert _result(ids) == [first, second]
    assert _result(ids_with_random) == [first, second]
    assert _result(ids, run_id="run-2") != [first, second]


@k.workflow
async def dice() -> list[float]:
    before = k.random().random()
    await fetch("x")
    return [before, k.random().random()]


def test_random_is_seeded_and_replays() -> None:
    run = Run(dice)
    run.send(ev.StepCompleted(1, "xx"))  # Run.check_replay compares the recorded result
    values = run.result
    assert len(set(values)) == 2
    again = Run(dice)
    again.send(ev.StepCompleted(1, "xx"))
    assert again.result == values
    other = Run(dice, seed="another-seed")
    other.send(ev.StepCompleted(1, "xx"))
    assert other.result != values


@k.workflow
async def who() -> list[Any]:
    def snap() -> list[Any]:
        i = k.info()
        return [i.run_id, i.workflow, i.key, i.parent_run_id, i.attempt, i.history_length]

    first = snap()
    await fetch("x")
    return [first, snap()]


def test_info_fields() -> None:
    run = Run(who, key="k-1", parent_run_id="parent-1", parent_seq=4, attempt=2)
    run.send(ev.StepCompleted(1, "xx"))
    assert run.result == [
        [RUN_ID, who.name, "k-1", "parent-1", 2, 0],
        [RUN_ID, who.name, "k-1", "parent-1", 2, 3],
    ]


# -- children ------------------------------------------------------------------------------------


@k.workflow
async def parent() -> int:
    n: int = await k.child(kid, 5, key="c-5", parent_close=k.ParentClose.ABANDON, queue="slow")
    return n * 2


def test_child_result() -> None:
    run = Run(parent)
    assert run.commands == [cmd.StartChild(1, kid.name, [5], child_id(1), "c-5", "abandon", "slow")]
    assert run.send(ev.ChildStarted(1, child_id(1))) == []
    assert run.send(ev.ChildCompleted(1, 5)) == [cmd.CompleteRun(2, 10)]
    assert run.history[2] == ev.ChildScheduled(
        1, kid.name, [5], child_id(1), "c-5", "abandon", "slow"
    )


def test_derived_child_run_id() -> None:
    a = k.derive_child_run_id("run-1", 1)
    assert a == k.derive_child_run_id("run-1", 1)
    assert uuid.UUID(a).version == 4
    assert a != k.derive_child_run_id("run-1", 2)
    assert a != k.derive_child_run_id("run-2", 1)


@k.workflow
async def child_outcome() -> list[Any]:
    try:
        return ["ok", await k.child(kid, 1, key="dup")]
    except k.ChildFailed as e:
        return ["failed", e.run_id, e.cause.type, e.cause.message]
    except k.ChildCancelled as e:
        return ["cancelled", e.run_id]
    except k.ChildTerminated as e:
        return ["terminated", e.run_id, e.reason]
    except k.KeyConflict as e:
        return ["conflict", e.key, isinstance(e, LookupError)]


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        (ev.ChildCompleted(1, 1), ["ok", 1]),
        (
            ev.ChildFailed(1, k.ErrorInfo("KeyError", "'x'")),
            ["failed", child_id(1), "KeyError", "'x'"],
        ),
        (ev.ChildCancelled(1), ["cancelled", child_id(1)]),
        (ev.ChildTerminated(1, "by operator"), ["terminated", child_id(1), "by operator"]),
    ],
)
def test_child_outcomes_raise_in_the_parent(outcome: ev.Event, expected: list[Any]) -> None:
    run = Run(child_outcome)
    run.send(ev.ChildStarted(1, child_id(1)))
    assert run.send(outcome) == [cmd.CompleteRun(2, expected)]


def test_child_start_failed_raises_key_conflict() -> None:
    run = Run(child_outcome)
    assert run.send(ev.ChildStartFailed(1, key="dup")) == [
        cmd.CompleteRun(2, ["conflict", "dup", True])
    ]


@k.workflow
async def handles() -> list[Any]:
    h = await k.start_child(kid, 1)
    await h.signal("go", {"n": 1})
    result = await h.result()
    return [h.run_id, result]


def test_start_child_handle_signal_and_result() -> None:
    run = Run(handles)
    assert run.commands == [cmd.StartChild(1, kid.name, [1], child_id(1))]
    assert run.send(ev.ChildStarted(1, child_id(1))) == [
        cmd.SendSignal(2, child_id(1), "go", {"n": 1})
    ]
    assert run.send(ev.ChildCompleted(1, 7)) == [cmd.CompleteRun(3, [child_id(1), 7])]


@k.workflow
async def cancels_child() -> list[Any]:
    h = await k.start_child(kid, 1)
    await h.cancel()
    await h.cancel()  # a second request is not sent again
    try:
        await h.result()
    except k.ChildCancelled as e:
        return ["cancelled", e.run_id]
    return ["finished"]


def test_child_handle_cancel_requests_cancellation_once() -> None:
    run = Run(cancels_child)
    assert run.send(ev.ChildStarted(1, child_id(1))) == [cmd.RequestCancelChild(2, 1, child_id(1))]
    assert run.history[-1] == ev.ChildCancelRequested(2, 1, child_id(1))
    assert run.send(ev.ChildCancelled(1)) == [cmd.CompleteRun(3, ["cancelled", child_id(1)])]


# -- hooks ---------------------------------------------------------------------------------------


@k.workflow
async def two_hooks() -> list[str]:
    return [k.hook().token, k.hook().token, k.hook(token="mine").token]


def test_hook_tokens_generated_and_given() -> None:
    run = Run(two_hooks)
    t1, t2, t3 = run.result
    assert re.fullmatch(r"[0-9a-f]{32}", t1) and re.fullmatch(r"[0-9a-f]{32}", t2)
    assert t1 != t2 and t3 == "mine"
    assert run.commands == [
        cmd.CreateHook(1, t1),
        cmd.CreateHook(2, t2),
        cmd.CreateHook(3, "mine"),
        cmd.CompleteRun(4, [t1, t2, "mine"]),
    ]
    assert _result(two_hooks) == [t1, t2, "mine"]
    assert _result(two_hooks, seed="other")[:2] != [t1, t2]


def test_hook_token_must_be_a_non_empty_string() -> None:
    @k.workflow
    async def empty_token() -> str:
        try:
            k.hook(token="")
        except ValueError as e:
            return str(e)
        return "accepted"

    assert _result(empty_token) == "a hook token must be a non-empty string"


@k.workflow
async def three_payloads() -> list[Any]:
    h = k.hook(token="t")
    return [await h, await h, await h]


def test_hook_payloads_in_order() -> None:
    run = Run(three_payloads)
    assert run.commands == [cmd.CreateHook(1, "t")]
    assert run.send(ev.HookReceived(1, {"a": 1}), ev.HookReceived(1, "b")) == []
    assert run.send(ev.HookReceived(1, None)) == [cmd.CompleteRun(2, [{"a": 1}, "b", None])]


@k.workflow
async def iterate_hook() -> list[Any]:
    h = k.hook(token="t")
    out = []
    async for payload in h:
        out.append(payload)
        if payload == "last":
            h.close()
    return out


def test_async_for_ends_on_close() -> None:
    run = Run(iterate_hook)
    assert run.send(ev.HookReceived(1, "a")) == []
    assert run.send(ev.HookReceived(1, "b"), ev.HookReceived(1, "last")) == [
        cmd.DisposeHook(2, 1, "t"),
        cmd.CompleteRun(3, ["a", "b", "last"]),
    ]
    assert ev.HookDisposed(2, 1) in run.history


@k.workflow
async def close_from_sibling() -> list[Any]:
    h = k.hook(token="t")

    async def consume() -> list[Any]:
        return [p async for p in h]

    async def closer() -> None:
        await fetch("x")
        h.close()

    got, _ = await k.all(consume(), closer())
    return list(got)


def test_async_for_ends_when_another_branch_closes_the_hook() -> None:
    run = Run(close_from_sibling)
    assert run.commands == [cmd.CreateHook(1, "t"), cmd.ScheduleStep(2, fetch.name, ["x"])]
    assert run.send(ev.HookReceived(1, "a")) == []
    assert run.send(ev.StepCompleted(2, "xx")) == [
        cmd.DisposeHook(3, 1, "t"),
        cmd.CompleteRun(4, ["a"]),
    ]


@k.workflow
async def conflicting_hook() -> list[Any]:
    h = k.hook(token="taken")
    try:
        await h
    except k.HookConflictError as e:
        return ["conflict", e.token, str(e)]
    return ["no conflict"]


def test_hook_conflict_raises_hook_conflict_error() -> None:
    run = Run(conflicting_hook)
    assert run.send(ev.HookConflict(1, "taken")) == [
        cmd.CompleteRun(2, ["conflict", "taken", "hook token 'taken' is held by another open hook"])
    ]


@attrs.frozen
class Approval:
    user: str
    ok: bool


@k.workflow
async def typed_hook() -> list[Any]:
    h = k.hook(token="t", type=Approval)
    a = await h
    return [type(a).__name__, a.user, a.ok]


def test_hook_payload_structured_into_type() -> None:
    run = Run(typed_hook)
    assert run.send(ev.HookReceived(1, {"user": "ann", "ok": True})) == [
        cmd.CompleteRun(2, ["Approval", "ann", True])
    ]


# -- signals -------------------------------------------------------------------------------------


@k.workflow
async def late_listener() -> Any:
    await fetch("x")
    return await k.signal("go")


def test_signal_sent_before_the_wait_is_buffered() -> None:
    m = k.Machine(late_listener)
    assert m.activate([started(late_listener), ev.SignalReceived("go", 1)], time=T0) == [
        cmd.ScheduleStep(1, fetch.name, ["x"])
    ]
    assert m.activate([ev.StepCompleted(1, "xx")], time=T0 + 1) == [cmd.CompleteRun(2, 1)]
    assert k.Machine(late_listener, m.history).history == m.history


@k.workflow
async def signal_order() -> list[Any]:
    return [await k.signal("a"), await k.signal("a"), await k.signal("b"), await k.signal("a")]


def test_signals_are_ordered_per_name() -> None:
    m = k.Machine(signal_order)
    inbound = [
        started(signal_order),
        ev.SignalReceived("a", 1),
        ev.SignalReceived("b", 2),
        ev.SignalReceived("a", 3),
    ]
    assert m.activate(inbound, time=T0) == []
    assert m.activate([ev.SignalReceived("b", 4)], time=T0 + 1) == []
    assert m.activate([ev.SignalReceived("a", 5)], time=T0 + 2) == [
        cmd.CompleteRun(1, [1, 3, 2, 5])
    ]


@k.workflow
async def typed_signal() -> list[Any]:
    a = await k.signal("approve", type=Approval)
    return [type(a).__name__, a.user]


def test_signal_payload_structured_into_type() -> None:
    run = Run(typed_signal)
    assert run.send(ev.SignalReceived("other", {"user": "x", "ok": False})) == []
    assert run.send(ev.SignalReceived("approve", {"user": "bo", "ok": True})) == [
        cmd.CompleteRun(1, ["Approval", "bo"])
    ]


@k.workflow
async def abandoned_signal_waits() -> list[Any]:
    try:
        await k.wait_for(k.all(k.signal("x"), k.signal("x")), 10)
    except k.Timeout:
        pass
    return [await k.signal("x")]


def test_cancelled_signal_waits_do_not_swallow_later_signals() -> None:
    run = Run(abandoned_signal_waits)
    assert run.commands == [cmd.StartTimer(1, 10.0, T0 + 10)]
    assert run.send(ev.TimerFired(1)) == []
    assert run.send(ev.SignalReceived("x", "hello")) == [cmd.CompleteRun(2, ["hello"])]


# -- resume_hook ---------------------------------------------------------------------------------


@k.workflow
async def resumer() -> Any:
    try:
        await k.resume_hook("tok", {"x": 1})
    except k.HookNotFound as e:
        return ["missing", e.token, isinstance(e, LookupError)]
    return "delivered"


def test_resume_hook_delivered() -> None:
    run = Run(resumer)
    assert run.commands == [cmd.ResumeHook(1, "tok", {"x": 1})]
    assert run.send(ev.HookResumeResult(1, True)) == [cmd.CompleteRun(2, "delivered")]
    assert run.history[2] == ev.HookResumeSent(1, "tok", {"x": 1})


def test_resume_hook_not_found() -> None:
    run = Run(resumer)
    assert run.send(ev.HookResumeResult(1, False)) == [cmd.CompleteRun(2, ["missing", "tok", True])]


# -- patched -------------------------------------------------------------------------------------


@k.workflow(name="patchy")
async def patchy_old() -> list[Any]:
    return [None, await fetch("old")]


@k.workflow(name="patchy")
async def patchy_new() -> list[Any]:
    flag = k.patched("v2")
    assert k.patched("v2") is flag  # asked twice, recorded once
    return [flag, await fetch("new" if flag else "old")]


def test_patched_is_true_live_and_records_a_marker() -> None:
    run = Run(patchy_new)
    assert run.commands == [cmd.RecordPatch(1, "v2"), cmd.ScheduleStep(2, fetch.name, ["new"])]
    assert run.history[2] == ev.PatchMarker(1, "v2")
    assert run.send(ev.StepCompleted(2, "n")) == [cmd.CompleteRun(3, [True, "n"])]
    replayed = k.Machine(patchy_new, run.history)
    assert replayed.result == [True, "n"]


def test_patched_is_false_when_replaying_an_old_history() -> None:
    old = Run(patchy_old)
    assert old.commands == [cmd.ScheduleStep(1, fetch.name, ["old"])]
    m = k.Machine(patchy_new, old.history)  # the new code replays the old history cleanly
    assert m.activate([ev.StepCompleted(1, "o")], time=T0 + 1) == [cmd.CompleteRun(2, [False, "o"])]
    assert not any(isinstance(e, ev.PatchMarker) for e in m.history)


def test_patched_is_true_when_replaying_a_history_with_the_marker() -> None:
    run = Run(patchy_new)
    m = k.Machine(patchy_new, run.history)
    assert m.activate([ev.StepCompleted(2, "n")], time=T0 + 1) == [cmd.CompleteRun(3, [True, "n"])]


# -- continue_as_new -----------------------------------------------------------------------------


@k.workflow
async def looper(n: int) -> int:
    if n < 3:
        try:
            k.continue_as_new(n + 1)
        except Exception:
            return -1  # continue_as_new is not an Exception: never reached
    return n


def test_continue_as_new() -> None:
    run = Run(looper, 1)
    assert run.commands == [cmd.ContinueAsNew(1, looper.name, [2])]
    assert run.status is k.RunStatus.CONTINUED_AS_NEW
    assert run.history[-1] == ev.RunContinuedAsNew(1, looper.name, [2])
    assert run.m.activate([ev.SignalReceived("late", 1)], time=T0 + 1) == []
    assert run.m.new_events == []
    last = Run(looper, 3)
    assert last.commands == [cmd.CompleteRun(1, 3)]


@k.workflow
async def continue_after_step(n: int) -> None:
    await fetch("x")
    try:
        k.continue_as_new(n + 1)
    finally:
        await fetch("never")  # the run is closed: nothing more is issued


def test_continue_as_new_after_a_step_issues_nothing_more() -> None:
    run = Run(continue_after_step, 0)
    assert run.send(ev.StepCompleted(1, "xx")) == [
        cmd.ContinueAsNew(2, continue_after_step.name, [1])
    ]
    assert run.status is k.RunStatus.CONTINUED_AS_NEW


# -- cancellation --------------------------------------------------------------------------------


@k.workflow
async def cleans_up(reraise: bool) -> str:
    try:
        await fetch("work")
    except k.Cancelled:
        await fetch("cleanup")
        if reraise:
            raise
        return "cleaned"
    return "done"


def test_cancel_runs_cleanup_then_reraises() -> None:
    run = Run(cleans_up, True)
    assert run.commands == [cmd.ScheduleStep(1, fetch.name, ["work"])]
    assert run.send(ev.CancelRequested("stop")) == [cmd.ScheduleStep(2, fetch.name, ["cleanup"])]
    # The cancelled step's late result is still accepted.
    assert run.send(ev.StepCompleted(1, "w"), ev.StepCompleted(2, "c")) == [cmd.CancelRun(3)]
    assert run.status is k.RunStatus.CANCELLED
    assert run.history[-1] == ev.RunCancelled(3)


def test_cancel_then_return_completes() -> None:
    run = Run(cleans_up, False)
    run.send(ev.CancelRequested())
    assert run.send(ev.StepCompleted(2, "c")) == [cmd.CompleteRun(3, "cleaned")]
    assert run.status is k.RunStatus.COMPLETED


def test_cancel_in_the_first_batch_reaches_the_first_await() -> None:
    # Like Temporal: the code starts, sees Cancelled at its first await and may clean up.
    m = k.Machine(cleans_up)
    assert m.activate([started(cleans_up, True), ev.CancelRequested()], time=T0) == [
        cmd.ScheduleStep(1, fetch.name, ["work"]),
        cmd.ScheduleStep(2, fetch.name, ["cleanup"]),
    ]


@k.workflow
async def swallows_everything() -> str:
    try:
        await fetch("x")
    except Exception:
        return "caught"
    return "done"


def test_cancelled_is_not_an_exception() -> None:
    run = Run(swallows_everything)
    assert run.send(ev.CancelRequested()) == [cmd.CancelRun(2)]


@k.workflow
async def cancellable_sleep() -> str:
    try:
        await k.sleep(60)
    except k.Cancelled:
        return "woke"
    return "slept"


def test_cancel_while_sleeping_cancels_the_timer() -> None:
    run = Run(cancellable_sleep)
    assert run.commands == [cmd.StartTimer(1, 60.0, T0 + 60)]
    assert run.send(ev.CancelRequested()) == [cmd.CancelTimer(2, 1), cmd.CompleteRun(3, "woke")]
    assert run.history[-2:] == [ev.TimerCancelled(2, 1), ev.RunCompleted(3, "woke")]


@k.workflow
async def cancellable_child() -> str:
    try:
        await k.child(kid, 1)
    except k.Cancelled:
        return "stopped"
    return "finished"


def test_cancel_while_waiting_on_a_child_requests_its_cancellation() -> None:
    run = Run(cancellable_child)
    run.send(ev.ChildStarted(1, child_id(1)))
    assert run.send(ev.CancelRequested()) == [
        cmd.RequestCancelChild(2, 1, child_id(1)),
        cmd.CompleteRun(3, "stopped"),
    ]


def test_cancel_before_the_child_started_requests_its_cancellation() -> None:
    run = Run(cancellable_child)
    assert run.send(ev.CancelRequested()) == [
        cmd.RequestCancelChild(2, 1, child_id(1)),
        cmd.CompleteRun(3, "stopped"),
    ]


# -- inline workflows ----------------------------------------------------------------------------


@k.workflow
async def inner(x: str) -> str:
    a = await fetch(x)
    await k.sleep(5)
    return a + "!" + k.info().run_id


@k.workflow
async def outer() -> list[str]:
    first = await inner("p")
    second = await fetch("q")
    return [first, second]


def test_direct_await_of_a_workflow_runs_inline() -> None:
    run = Run(outer)
    assert run.commands == [cmd.ScheduleStep(1, fetch.name, ["p"])]
    assert run.send(ev.StepCompleted(1, "pp")) == [cmd.StartTimer(2, 5.0, T0 + 6)]
    assert run.send(ev.TimerFired(2)) == [cmd.ScheduleStep(3, fetch.name, ["q"])]
    assert run.send(ev.StepCompleted(3, "qq")) == [cmd.CompleteRun(4, [f"pp!{RUN_ID}", "qq"])]
    assert not any(isinstance(e, ev.ChildScheduled) for e in run.history)


# -- failures and misuse -------------------------------------------------------------------------


class Nope(Exception):
    pass


@k.workflow
async def fails() -> None:
    await fetch("x")
    raise Nope("nope")


def test_failing_workflow_fails_the_run() -> None:
    run = Run(fails)
    (fail,) = run.send(ev.StepCompleted(1, "xx"))
    assert isinstance(fail, cmd.FailRun) and fail.seq == 2
    assert fail.error.type == f"{__name__}.Nope"
    assert fail.error.message == "nope"
    assert fail.error.traceback.startswith("Traceback (most recent call last):")
    assert 'raise Nope("nope")' in fail.error.traceback
    assert fail.error.traceback.endswith(f"{__name__}.Nope: nope\n")
    assert run.status is k.RunStatus.FAILED and run.error == fail.error
    assert run.history[-1] == ev.RunFailed(2, fail.error)


@k.workflow
async def bad_result() -> Any:
    return {"ok": [1, object()]}


def test_unserializable_result_fails_the_run_with_type_error() -> None:
    run = Run(bad_result)
    (fail,) = run.commands
    assert isinstance(fail, cmd.FailRun)
    assert fail.error.type == "TypeError"
    assert fail.error.message.startswith(
        "workflow result['ok'][1]: object of type builtins.object is not serializable"
    )
    assert run.status is k.RunStatus.FAILED


@k.workflow
async def uses_asyncio_sleep() -> None:
    await asyncio.sleep(1)


@k.workflow
async def uses_asyncio_sleep_zero() -> None:
    await asyncio.sleep(0)


@k.workflow
async def member_uses_asyncio_sleep() -> None:
    await k.all(fetch("x"), asyncio.sleep(1))


@pytest.mark.parametrize("wf", [uses_asyncio_sleep, uses_asyncio_sleep_zero])
def test_awaiting_asyncio_sleep_raises_workflow_error(wf: Any) -> None:
    m = k.Machine(wf)
    with pytest.raises(k.WorkflowError) as info:
        m.activate([started(wf)], time=T0)
    message = str(info.value)
    assert message.startswith(
        "workflow awaited asyncio.tasks.sleep, which is not a plait awaitable"
    )
    assert f"(at {site(wf, 'asyncio.sleep').split(' (in ')[0]})" in message
    assert m.status is k.RunStatus.RUNNING  # blocked, never failed
    assert not any(type(e) in ev.COMMAND_EVENTS for e in m.history)
    with pytest.raises(k.WorkflowError):
        k.Machine(wf, m.history)


def test_barrier_member_awaiting_asyncio_raises_workflow_error() -> None:
    m = k.Machine(member_uses_asyncio_sleep)
    with pytest.raises(k.WorkflowError, match=r"workflow awaited asyncio\.tasks\.sleep"):
        m.activate([started(member_uses_asyncio_sleep)], time=T0)


def test_awaiting_an_asyncio_future_raises_workflow_error() -> None:
    loop = asyncio.new_event_loop()
    try:
        future = loop.create_future()

        @k.workflow
        async def awaits_future() -> None:
            await future

        m = k.Machine(awaits_future)
        with pytest.raises(k.WorkflowError) as info:
            m.activate([started(awaits_future)], time=T0)
    finally:
        loop.close()
    assert str(info.value).startswith(
        f"workflow awaited {type(future).__module__}.Future, which is not a plait awaitable "
        f"(at {site(awaits_future, 'await future').split(' (in ')[0]})"
    )


def _drive(aw: Any) -> None:
    async def use() -> None:
        await aw

    use().send(None)


@pytest.mark.parametrize(
    ("what", "call"),
    [
        ("now", k.now),
        ("uuid4", k.uuid4),
        ("random", k.random),
        ("info", k.info),
        ("patched", lambda: k.patched("x")),
        ("hook", k.hook),
        ("continue_as_new", lambda: k.continue_as_new(1)),
        ("sleep", lambda: _drive(k.sleep(1))),
        ("signal", lambda: _drive(k.signal("x"))),
        ("resume_hook", lambda: _drive(k.resume_hook("t", 1))),
        ("child", lambda: _drive(k.child(kid, 1))),
        ("start_child", lambda: _drive(k.start_child(kid, 1))),
        ("all", lambda: _drive(k.all())),
        ("race", lambda: _drive(k.race())),
    ],
)
def test_api_outside_a_workflow_raises_workflow_error(what: str, call: Any) -> None:
    with pytest.raises(k.WorkflowError) as info:
        call()
    assert str(info.value) == f"plait.{what}() can only be used inside a workflow"


def test_in_workflow() -> None:
    @k.workflow
    async def inside() -> bool:
        return k.in_workflow()

    assert k.in_workflow() is False
    assert _result(inside) is True


def test_seed_defaults_to_the_run_id() -> None:
    with_seed = _result(two_hooks, seed=RUN_ID)
    without = _result(two_hooks, seed="")
    assert with_seed == without
    assert with_seed[:2] != _result(two_hooks, seed=SEED)[:2]


@k.workflow
async def closes_twice() -> list[str]:
    h = k.hook(token="t")
    try:
        await h
    except k.HookConflictError:
        pass
    h.close()
    h.close()  # closing is idempotent, also for a hook that lost its token
    return ["closed"]


def test_closing_a_hook_twice_disposes_it_once() -> None:
    run = Run(closes_twice)
    assert run.send(ev.HookConflict(1, "t")) == [
        cmd.DisposeHook(2, 1, "t"),
        cmd.CompleteRun(3, ["closed"]),
    ]


def test_a_second_cancel_request_does_not_interrupt_cleanup() -> None:
    run = Run(cleans_up, False)
    assert run.send(ev.CancelRequested("by user")) == [cmd.ScheduleStep(2, fetch.name, ["cleanup"])]
    # e.g. the parent's REQUEST_CANCEL close policy after it already asked once
    assert run.send(ev.CancelRequested("by parent")) == []
    assert run.send(ev.StepCompleted(2, "c")) == [cmd.CompleteRun(3, "cleaned")]


def test_two_cancel_requests_in_one_batch_cancel_once() -> None:
    run = Run(cleans_up, True)
    assert run.send(ev.CancelRequested("a"), ev.CancelRequested("b")) == [
        cmd.ScheduleStep(2, fetch.name, ["cleanup"])
    ]
    assert run.send(ev.StepCompleted(2, "c")) == [cmd.CancelRun(3)]


def test_a_terminated_history_replays_as_terminated() -> None:
    run = Run(one_step, "a")
    history = [
        *run.history,
        ev.RunTerminated("operator"),
        ev.ParentClosePolicyApplied("c", "abandon"),
    ]
    m = k.Machine(one_step, history)
    assert m.status is k.RunStatus.TERMINATED
    assert m.history == history
    assert m.activate([ev.StepCompleted(1, "late")], time=T0 + 9) == []
    assert m.new_events == []


def test_meta_events_after_close_replay() -> None:
    run = Run(one_step, "a")
    run.send(ev.StepCompleted(1, "aa"))
    history = [*run.history, ev.ParentClosePolicyFailed("c", "terminate", "gone")]
    m = k.Machine(one_step, history)
    assert (m.status, m.result, m.history) == (k.RunStatus.COMPLETED, "aa!", history)


@k.workflow
async def cleans_up_even_if_cancelled_at_once() -> str:
    try:
        await k.sleep(10)
    except k.Cancelled:
        await _cleanup_step("early")
        raise
    return "slept"


@k.step
async def _cleanup_step(why: str) -> str:
    raise AssertionError("steps never run inside the kernel")


def test_cancel_before_the_first_activation_still_reaches_the_first_await() -> None:
    m = k.Machine(cleans_up_even_if_cancelled_at_once)
    first = ev.RunStarted(run_id="r", workflow=cleans_up_even_if_cancelled_at_once.name, args=[])
    commands = m.activate([first, ev.CancelRequested("at once")], 0.0)
    kinds = [type(c).__name__ for c in commands]
    assert kinds == ["StartTimer", "CancelTimer", "ScheduleStep"]
    m.activate([ev.StepCompleted(3, "ok")], 1.0)
    assert m.status == "cancelled"
