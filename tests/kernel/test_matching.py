"""The matching rules of DESIGN §4: nondeterminism and corrupt-history detection.

Each case records a history with one version of a workflow and replays it with another that
shares its name; the error text must show the issued and the recorded event, the seq and the
source line of the call.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

import plait.kernel as k
from plait.kernel import codec
from plait.kernel import events as ev

from ._driver import RUN_ID, T0, Run, site, started


@k.step
async def fetch(doc: str) -> str:
    raise AssertionError("steps never run inside the kernel")


@k.step
async def other(doc: str) -> str:
    raise AssertionError("steps never run inside the kernel")


@k.workflow
async def kid(n: int) -> int:
    return n


def h(data: Any) -> str:
    return "#" + codec.payload_hash(data)


def step_desc(seq: int, name: str, args: list[Any]) -> str:
    return f"StepScheduled(seq={seq}, name={name!r}, args={h(args)})"


def nondeterminism(wf: Any, history: list[ev.Event]) -> str:
    with pytest.raises(k.NonDeterminismError) as info:
        k.Machine(wf, history)
    return str(info.value)


# -- rule 2: each command equals the recorded command event --------------------------------------


@k.workflow(name="m.step_name")
async def step_name_v1() -> str:
    return await fetch("a")


@k.workflow(name="m.step_name")
async def step_name_v2() -> str:
    return await other("a")


def test_different_step_name() -> None:
    history = Run(step_name_v1).history
    assert nondeterminism(step_name_v2, history) == (
        f"nondeterminism at seq 1: the workflow code issued {step_desc(1, other.name, ['a'])} "
        f"at {site(step_name_v2, 'await other')}, but history recorded "
        f"{step_desc(1, fetch.name, ['a'])}"
    )


@k.workflow(name="m.step_args")
async def step_args_v1() -> str:
    first = await fetch("a")
    return await fetch(first)


@k.workflow(name="m.step_args")
async def step_args_v2() -> str:
    first = await fetch("a")
    return await fetch(first + "?")


def test_different_step_args_in_a_later_batch() -> None:
    run = Run(step_args_v1)
    run.send(ev.StepCompleted(1, "aa"))
    assert nondeterminism(step_args_v2, run.history) == (
        f"nondeterminism at seq 2: the workflow code issued "
        f"{step_desc(2, fetch.name, ['aa?'])} at {site(step_args_v2, 'first + ')}, "
        f"but history recorded {step_desc(2, fetch.name, ['aa'])}"
    )
    assert h(["aa?"]) != h(["aa"])


@k.workflow(name="m.timer")
async def timer_v1() -> None:
    await k.sleep(10)


@k.workflow(name="m.timer")
async def timer_v2() -> None:
    await k.sleep(20)


def test_different_timer_duration() -> None:
    history = Run(timer_v1).history
    assert nondeterminism(timer_v2, history) == (
        "nondeterminism at seq 1: the workflow code issued "
        f"TimerStarted(seq=1, duration=20.0, fire_at={T0 + 20!r}) at "
        f"{site(timer_v2, 'k.sleep')}, but history recorded "
        f"TimerStarted(seq=1, duration=10.0, fire_at={T0 + 10!r})"
    )


def test_timer_fire_time_is_not_compared() -> None:
    history = Run(timer_v1).history
    # The same code replayed later computes another fire_at; the recorded one is kept.
    moved = [ev.Activated(T0 + 50) if isinstance(e, ev.Activated) else e for e in history]
    assert k.Machine(timer_v1, moved).history == moved


@k.workflow(name="m.child")
async def child_v1() -> int:
    return await k.child(kid, 1, key="a")


@k.workflow(name="m.child")
async def child_v2() -> int:
    return await k.child(kid, 1, key="b")


def test_different_child_key() -> None:
    history = Run(child_v1).history
    cid = k.derive_child_run_id(RUN_ID, 1)

    def desc(key: str) -> str:
        return (
            f"ChildScheduled(seq=1, workflow={kid.name!r}, args={h([1])}, "
            f"child_run_id={cid!r}, key={key!r}, parent_close='terminate', queue=None)"
        )

    assert nondeterminism(child_v2, history) == (
        f"nondeterminism at seq 1: the workflow code issued {desc('b')} at "
        f"{site(child_v2, 'k.child')}, but history recorded {desc('a')}"
    )


@k.workflow(name="m.hook")
async def hook_v1() -> Any:
    return await k.hook(token="a")


@k.workflow(name="m.hook")
async def hook_v2() -> Any:
    return await k.hook(token="b")


def test_different_hook_token() -> None:
    history = Run(hook_v1).history
    assert nondeterminism(hook_v2, history) == (
        "nondeterminism at seq 1: the workflow code issued HookCreated(seq=1, token='b') at "
        f"{site(hook_v2, 'k.hook')}, but history recorded HookCreated(seq=1, token='a')"
    )


@k.workflow(name="m.kind")
async def kind_v2() -> str:
    await k.sleep(5)
    return "x"


def test_kind_mismatch() -> None:
    history = Run(step_name_v1).history
    history = [started(kind_v2) if isinstance(e, ev.RunStarted) else e for e in history]
    assert nondeterminism(kind_v2, history) == (
        "nondeterminism at seq 1: the workflow code issued "
        f"TimerStarted(seq=1, duration=5.0, fire_at={T0 + 5!r}) at {site(kind_v2, 'k.sleep')}, "
        f"but history recorded {step_desc(1, fetch.name, ['a'])}"
    )


def test_seq_mismatch() -> None:
    history = [
        started(step_name_v1),
        ev.Activated(T0),
        ev.StepScheduled(5, fetch.name, ["a"]),
    ]
    assert nondeterminism(step_name_v1, history) == (
        f"nondeterminism at seq 1: the workflow code issued {step_desc(1, fetch.name, ['a'])} "
        f"at {site(step_name_v1, 'await fetch')}, but history recorded "
        f"{step_desc(5, fetch.name, ['a'])}"
    )


# Other command kinds: the fields that must agree (DESIGN §4 rule 2). ``CODE`` stands for the
# deployed code: a test changes one entry and replays the history recorded with the defaults.
CODE = {"patch": "p", "token": "tok", "signal": "sig", "next": "n", "payload": "x"}


@k.workflow(name="m.misc")
async def misc(*generation: str) -> None:
    if k.patched(CODE["patch"]):
        await k.resume_hook(CODE["token"], CODE["payload"])
    h = await k.start_child(kid, 1)
    await h.signal(CODE["signal"], CODE["payload"])
    k.continue_as_new(CODE["next"])


@pytest.fixture
def misc_history(monkeypatch: pytest.MonkeyPatch) -> list[ev.Event]:
    monkeypatch.setattr(sys.modules[__name__], "CODE", dict(CODE))
    run = Run(misc)
    run.send(ev.HookResumeResult(2, True))
    run.send(ev.ChildStarted(3, k.derive_child_run_id(RUN_ID, 3)))
    assert run.status is k.RunStatus.CONTINUED_AS_NEW
    return run.history


CID3 = k.derive_child_run_id(RUN_ID, 3)


@pytest.mark.parametrize(
    ("key", "issued", "recorded", "line"),
    [
        (
            "patch",
            f"ChildScheduled(seq=1, workflow={kid.name!r}, args={h([1])}, "
            f"child_run_id={k.derive_child_run_id(RUN_ID, 1)!r}, key=None, "
            "parent_close='terminate', queue=None)",
            "PatchMarker(seq=1, change_id='p')",
            "k.start_child",
        ),
        (
            "token",
            f"HookResumeSent(seq=2, token='changed', payload={h('x')})",
            f"HookResumeSent(seq=2, token='tok', payload={h('x')})",
            "k.resume_hook",
        ),
        (
            "signal",
            f"SignalSent(seq=4, run_id={CID3!r}, name='changed', payload={h('x')})",
            f"SignalSent(seq=4, run_id={CID3!r}, name='sig', payload={h('x')})",
            "h.signal",
        ),
        (
            "next",
            f"RunContinuedAsNew(seq=5, workflow='m.misc', args={h(['changed'])})",
            f"RunContinuedAsNew(seq=5, workflow='m.misc', args={h(['n'])})",
            "k.continue_as_new",
        ),
    ],
)
def test_other_command_fields_are_matched(
    misc_history: list[ev.Event], key: str, issued: str, recorded: str, line: str
) -> None:
    k.Machine(misc, misc_history)  # the same code replays cleanly
    CODE[key] = "changed"
    seq = recorded.split("seq=")[1].split(",")[0]
    assert nondeterminism(misc, misc_history) == (
        f"nondeterminism at seq {seq}: the workflow code issued {issued} at "
        f"{site(misc, line)}, but history recorded {recorded}"
    )


def test_signal_and_resume_payloads_are_not_matched(misc_history: list[ev.Event]) -> None:
    CODE["payload"] = "changed"
    assert k.Machine(misc, misc_history).history == misc_history


# -- rule 3: extra recorded events, extra commands -----------------------------------------------


@k.workflow(name="m.stops")
async def stops_v1() -> list[str]:
    return await k.all(fetch("a"), fetch("b"))


@k.workflow(name="m.stops")
async def stops_v2() -> list[str]:
    return [await fetch("a")]


def test_recorded_event_with_no_command() -> None:
    history = Run(stops_v1).history
    assert nondeterminism(stops_v2, history) == (
        f"nondeterminism at seq 2: history recorded {step_desc(2, fetch.name, ['b'])} but the "
        "workflow code issued no command for it (the code now stops earlier or takes another "
        f"branch; it waits at {site(stops_v2, 'await fetch')})"
    )


def test_command_past_the_end_of_the_recorded_batch() -> None:
    history = Run(stops_v2).history
    assert nondeterminism(stops_v1, history) == (
        f"nondeterminism at seq 2: the workflow code issued {step_desc(2, fetch.name, ['b'])} "
        f"at {site(stops_v1, 'k.all')}, but history recorded nothing "
        "(the recorded batch ended earlier)"
    )


@k.workflow(name="m.ends")
async def ends_v1() -> str:
    await fetch("a")
    return await fetch("b")


@k.workflow(name="m.ends")
async def ends_v2() -> str:
    return await fetch("a")


def test_code_that_now_returns_earlier() -> None:
    run = Run(ends_v1)
    run.send(ev.StepCompleted(1, "x"))
    fn = ends_v2.fn
    assert nondeterminism(ends_v2, run.history) == (
        f"nondeterminism at seq 2: the workflow code issued RunCompleted(seq=2, result={h('x')}) "
        f"at {fn.__code__.co_filename}:{fn.__code__.co_firstlineno} (end of ends_v2), "
        f"but history recorded {step_desc(2, fetch.name, ['b'])}"
    )


@k.workflow(name="m.catch")
async def catches_exception() -> str:
    try:
        return await other("a")
    except Exception:
        return "swallowed"


@k.workflow(name="m.catch")
async def catches_everything() -> str:
    try:
        return await other("a")
    except BaseException:
        return "swallowed"


@pytest.mark.parametrize("wf", [catches_exception, catches_everything])
def test_nondeterminism_is_not_catchable_by_workflow_code(wf: Any) -> None:
    history = Run(step_name_v1).history
    message = nondeterminism(wf, history)
    assert message.startswith(
        f"nondeterminism at seq 1: the workflow code issued {step_desc(1, other.name, ['a'])}"
    )
    assert issubclass(k.NonDeterminismError, k.PlaitError)
    assert not issubclass(k.NonDeterminismError, k.FatalError)


def test_replaying_a_matching_history_appends_the_recorded_events() -> None:
    run = Run(step_args_v1)
    run.send(ev.StepCompleted(1, "aa"))
    m = k.Machine(step_args_v1, run.history)
    assert m.history == run.history
    assert m.activate([ev.StepCompleted(2, "b")], time=T0 + 5) == [k.commands.CompleteRun(3, "b")]


# -- rule 4: corrupt histories -------------------------------------------------------------------


def test_inbound_event_for_an_unknown_seq() -> None:
    run = Run(step_name_v1)
    history = list(run.history)
    with pytest.raises(k.CorruptHistoryError) as info:
        run.m.activate([ev.StepCompleted(9, "x")], time=T0 + 1)
    assert str(info.value) == (
        f"StepCompleted(seq=9, result={h('x')}, attempts=1) refers to seq 9, which is no open "
        "command of this run"
    )
    recorded = [*history, ev.TimerFired(9), ev.Activated(T0 + 1)]
    with pytest.raises(k.CorruptHistoryError, match="TimerFired\\(seq=9\\) refers to seq 9"):
        k.Machine(step_name_v1, recorded)


def test_inbound_event_of_the_wrong_kind_for_its_seq() -> None:
    run = Run(step_name_v1)
    with pytest.raises(k.CorruptHistoryError) as info:
        run.m.activate([ev.TimerFired(1)], time=T0 + 1)
    assert str(info.value) == (
        "TimerFired arrived for step 1 in state SCHEDULED: no execution could produce this history"
    )


def test_duplicate_completion() -> None:
    run = Run(ends_v1)
    run.send(ev.StepCompleted(1, "x"))
    history = list(run.history)
    with pytest.raises(k.CorruptHistoryError) as info:
        run.m.activate([ev.StepCompleted(1, "x")], time=T0 + 2)
    assert str(info.value) == (
        "StepCompleted arrived for step 1 in state COMPLETED: "
        "no execution could produce this history"
    )
    duplicated = [*history, ev.StepFailed(1, k.ErrorInfo("E", "m")), ev.Activated(T0 + 2)]
    with pytest.raises(
        k.CorruptHistoryError, match="StepFailed arrived for step 1 in state COMPLETED"
    ):
        k.Machine(ends_v1, duplicated)


def test_command_events_are_not_inbound() -> None:
    run = Run(step_name_v1)
    with pytest.raises(k.CorruptHistoryError, match="^StepScheduled is not an inbound event$"):
        run.m.activate([ev.StepScheduled(2, fetch.name, [])], time=T0 + 1)
    with pytest.raises(k.CorruptHistoryError, match="^Activated is not an inbound event$"):
        run.m.activate([ev.Activated(T0)], time=T0 + 1)
    # Meta events are appended by the runtime after the run closed, never delivered to code.
    with pytest.raises(k.CorruptHistoryError, match="^RunTerminated is not an inbound event$"):
        run.m.activate([ev.RunTerminated("x")], time=T0 + 1)
    assert run.m.history == Run(step_name_v1).history  # nothing was appended


def test_structurally_corrupt_histories() -> None:
    start = started(step_name_v1)
    with pytest.raises(k.CorruptHistoryError, match="a second RunStarted in one history"):
        k.Machine(
            step_name_v1,
            [
                start,
                ev.Activated(T0),
                ev.StepScheduled(1, fetch.name, ["a"]),
                start,
                ev.Activated(T0),
            ],
        )
    with pytest.raises(
        k.CorruptHistoryError, match=r"history ends with 1 inbound event\(s\) and no Activated"
    ):
        k.Machine(step_name_v1, [start])
    with pytest.raises(k.CorruptHistoryError, match="precedes any Activated"):
        k.Machine(step_name_v1, [start, ev.StepScheduled(1, fetch.name, ["a"])])
    done = Run(kid, 3).history
    with pytest.raises(k.CorruptHistoryError, match="follows the run's close"):
        k.Machine(kid, [*done, ev.SignalReceived("x"), ev.Activated(T0 + 1)])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "history is not JSON: "),
        ('{"type": "Activated", "time": 1.0}', "history JSON is not a list of events"),
        ("[1]", "history entry is not a tagged event: 1"),
        ('[{"seq": 1}]', "history entry is not a tagged event: {'seq': 1}"),
        ('[{"type": "Nope"}]', "unknown event type 'Nope' in history"),
        ('[{"type": ["x"]}]', "unknown event type ['x'] in history"),
        ('[{"type": "Event"}]', "unknown event type 'Event' in history"),
        (
            '[{"type": "StepCompleted"}]',
            "malformed StepCompleted event {}: required field missing @ $.seq",
        ),
        (
            '[{"type": "StepScheduled", "seq": "1", "name": "a", "args": "abc"}]',
            "malformed StepScheduled event {'seq': '1', 'name': 'a', 'args': 'abc'}: "
            "invalid value for type, expected int @ $.seq; "
            "invalid value for type, expected list @ $.args",
        ),
        (
            '[{"type": "TimerFired", "seq": true}]',
            "malformed TimerFired event {'seq': True}: "
            "invalid value for type, expected int @ $.seq",
        ),
        (
            '[{"type": "TimerFired", "seq": 1, "sequence": 2}]',
            "malformed TimerFired event {'seq': 1, 'sequence': 2}: "
            "extra fields found (sequence) @ $",
        ),
        (
            '[{"type": "Activated", "time": "noon"}]',
            "malformed Activated event {'time': 'noon'}: invalid value for type, expected float "
            "@ $.time",
        ),
    ],
)
def test_malformed_history_json(text: str, message: str) -> None:
    with pytest.raises(k.CorruptHistoryError) as info:
        codec.loads_history(text)
    assert str(info.value).startswith(message), str(info.value)


def test_wellformed_history_json_is_accepted() -> None:
    run = Run(ends_v1)
    run.send(ev.StepCompleted(1, "x"))
    text = codec.dumps_history(run.history)
    assert codec.loads_history(text) == run.history
    assert json.loads(text)[1] == {"type": "Activated", "time": T0}
