"""The two converters: history events to JSON and back, and payloads by type hint."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import uuid
from typing import Any

import attrs
import pytest

import plait.kernel as k
from plait.kernel import codec
from plait.kernel import commands as cmd
from plait.kernel import events as ev

from ._driver import T0, Run

ERROR = k.ErrorInfo("pkg.Boom", "it broke", "Traceback (most recent call last):\n...", True)

# One instance of every event class, every field set away from its default.
EVENTS: list[ev.Event] = [
    ev.RunStarted("r", "wf", [1, {"a": [None, 2.5]}], "key", "parent", 3, "seed", 2, 12.5),
    ev.Activated(1000.25),
    ev.StepScheduled(1, "step", ["x", 1]),
    ev.StepCompleted(1, {"ok": True}, 3),
    ev.StepFailed(1, ERROR, 4),
    ev.TimerStarted(2, 1.5, 1001.75),
    ev.TimerFired(2),
    ev.TimerCancelled(3, 2),
    ev.ChildScheduled(4, "child", [1], "child-run", "k", "abandon", "queue"),
    ev.ChildStarted(4, "child-run"),
    ev.ChildStartFailed(4, "k", "other"),
    ev.ChildCompleted(4, [1, 2]),
    ev.ChildFailed(4, ERROR),
    ev.ChildCancelled(4),
    ev.ChildTerminated(4, "why"),
    ev.ChildCancelRequested(5, 4, "child-run"),
    ev.HookCreated(6, "tok"),
    ev.HookConflict(6, "tok"),
    ev.HookReceived(6, {"p": 1}),
    ev.HookDisposed(7, 6),
    ev.HookResumeSent(8, "other-tok", "payload"),
    ev.HookResumeResult(8, True),
    ev.SignalReceived("go", [1]),
    ev.SignalSent(9, "run-x", "go", {"n": 1}),
    ev.CancelRequested("please"),
    ev.RunCompleted(10, "done"),
    ev.RunFailed(10, ERROR),
    ev.RunCancelled(10),
    ev.RunTerminated("operator"),
    ev.RunContinuedAsNew(10, "wf", [2]),
    ev.PatchMarker(11, "v2"),
    ev.ParentClosePolicyApplied("child-run", "terminate"),
    ev.ParentClosePolicyFailed("child-run", "request_cancel", "gone"),
]


def event_classes() -> set[type[ev.Event]]:
    return {
        obj
        for name in ev.__all__
        if isinstance(obj := getattr(ev, name), type)
        and issubclass(obj, ev.Event)
        and obj is not ev.Event
    }


def test_every_event_class_has_an_instance() -> None:
    assert {type(e) for e in EVENTS} == event_classes()
    assert len(EVENTS) == len(event_classes())


def test_the_event_families_partition_the_classes() -> None:
    families = [ev.INBOUND_EVENTS, ev.COMMAND_EVENTS, ev.META_EVENTS]
    assert set().union(*families) | {ev.Activated} == event_classes()
    assert sum(len(f) for f in families) + 1 == len(event_classes())


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_event_dict_round_trip(event: ev.Event) -> None:
    data = codec.event_to_dict(event)
    assert data["type"] == type(event).__name__
    assert set(data) == {"type"} | {a.name for a in attrs.fields(type(event))}
    assert json.loads(json.dumps(data)) == data  # plain JSON
    assert codec.event_from_dict(data) == event
    assert codec.event_from_dict(json.loads(json.dumps(data))) == event


def test_error_info_is_a_nested_dict() -> None:
    data = codec.event_to_dict(ev.StepFailed(1, ERROR, 4))
    assert data == {
        "type": "StepFailed",
        "seq": 1,
        "error": {
            "type": "pkg.Boom",
            "message": "it broke",
            "traceback": "Traceback (most recent call last):\n...",
            "non_retryable": True,
        },
        "attempts": 4,
    }


def test_history_round_trip() -> None:
    text = codec.dumps_history(EVENTS)
    assert codec.loads_history(text) == EVENTS
    assert codec.history_from_json(codec.history_to_json(EVENTS)) == EVENTS
    assert [d["type"] for d in json.loads(text)] == [type(e).__name__ for e in EVENTS]


def test_defaults_may_be_left_out() -> None:
    assert codec.event_from_dict({"type": "StepCompleted", "seq": 3}) == ev.StepCompleted(3)
    assert codec.event_from_dict(
        {"type": "RunStarted", "run_id": "r", "workflow": "w", "args": []}
    ) == ev.RunStarted("r", "w", [])


def test_a_real_history_round_trips_and_replays() -> None:
    run = Run(payload_wf, {"name": "n", "color": "red", "tags": ["a"], "when": None})
    run.send(ev.StepCompleted(1, {"x": 1, "when": "2024-01-02T03:04:05+00:00"}))
    loaded = codec.loads_history(codec.dumps_history(run.history))
    assert loaded == run.history
    assert k.Machine(payload_wf, loaded).history == run.history


# -- payloads ------------------------------------------------------------------------------------


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Mode(enum.StrEnum):
    FAST = "fast"


@dataclasses.dataclass
class Stamp:
    x: int
    when: dt.datetime


@attrs.frozen
class Doc:
    name: str
    color: Color
    tags: list[str]
    when: dt.datetime | None = None


@attrs.frozen
class Everything:
    doc: Doc
    stamps: dict[str, list[Stamp]]
    ids: tuple[uuid.UUID, ...]
    day: dt.date
    span: dt.timedelta
    raw: bytes
    level: Level
    mode: Mode
    maybe: int | None = None


WHEN = dt.datetime(2024, 1, 2, 3, 4, 5, 600000, tzinfo=dt.UTC)
EVERYTHING = Everything(
    doc=Doc("d", Color.BLUE, ["a", "b"], WHEN),
    stamps={"k": [Stamp(1, WHEN), Stamp(2, WHEN.replace(tzinfo=None))]},
    ids=(uuid.UUID(int=1), uuid.UUID(int=2)),
    day=dt.date(2024, 2, 29),
    span=dt.timedelta(minutes=90),
    raw=b"\x00\xff",
    level=Level.HIGH,
    mode=Mode.FAST,
)
EVERYTHING_DATA = {
    "doc": {"name": "d", "color": "blue", "tags": ["a", "b"], "when": WHEN.isoformat()},
    "stamps": {
        "k": [
            {"x": 1, "when": "2024-01-02T03:04:05.600000+00:00"},
            {"x": 2, "when": "2024-01-02T03:04:05.600000"},
        ]
    },
    "ids": ["00000000-0000-0000-0000-000000000001", "00000000-0000-0000-0000-000000000002"],
    "day": "2024-02-29",
    "span": 5400.0,
    "raw": "00ff",
    "level": 2,
    "mode": "fast",
    "maybe": None,
}


def test_payload_round_trip_of_structured_values() -> None:
    data = codec.encode(EVERYTHING, Everything)
    assert data == EVERYTHING_DATA
    assert json.loads(codec.canonical_json(data)) == data
    assert codec.decode(data, Everything) == EVERYTHING
    # Without a hint the value is unstructured by its runtime type.
    assert codec.encode(EVERYTHING) == EVERYTHING_DATA


@pytest.mark.parametrize(
    ("value", "data"),
    [
        (Level.LOW, 1),
        (Mode.FAST, "fast"),
        (Color.RED, "red"),
        ([Mode.FAST, {"k": Level.HIGH}], ["fast", {"k": 2}]),
        ((1, "a"), [1, "a"]),
        (uuid.UUID(int=3), "00000000-0000-0000-0000-000000000003"),
        (WHEN, "2024-01-02T03:04:05.600000+00:00"),
        (1.5, 1.5),
        (True, True),
        (None, None),
    ],
)
def test_payloads_become_plain_json_types(value: Any, data: Any) -> None:
    encoded = codec.encode(value)
    assert encoded == data
    assert json.dumps(encoded) == json.dumps(data)
    assert type(encoded) is type(data)


def test_decode_without_a_hint_passes_data_through() -> None:
    data = {"a": [1, 2]}
    assert codec.decode(data) is data
    assert codec.decode(data, object) is data
    assert codec.decode(None, type(None)) is None


def typed(doc: Doc, counts: dict[str, int], *rest: Level) -> Everything:
    raise AssertionError("only its hints are used")


def test_encode_and_decode_args_use_parameter_hints() -> None:
    args = (Doc("n", Color.RED, []), {"a": 1}, Level.LOW, Level.HIGH)
    data = codec.encode_args(typed, args)
    assert data == [
        {"name": "n", "color": "red", "tags": [], "when": None},
        {"a": 1},
        1,
        2,
    ]
    assert codec.decode_args(typed, data) == args
    assert codec.return_hint(typed) is Everything
    assert codec.return_hint(None) is Any


def test_too_many_args() -> None:
    def one(a: int) -> None: ...

    with pytest.raises(
        TypeError, match=r"^'.*one' takes 1 positional argument\(s\) but 2 were given$"
    ):
        codec.encode_args(one, [1, 2])


def doc_step(doc: dict[str, Any]) -> None: ...


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            [{"items": [1, object()]}],
            "args[0] (doc)['items'][1]: object of type builtins.object is not serializable",
        ),
        ([{"items": {1: "a"}}], "args[0] (doc)['items']: dict key 1 is not a string"),
        ([{"x": float("nan")}], "args[0] (doc)['x']: nan is not serializable to JSON"),
        ([{"s": {1, 2}}], "args[0] (doc)['s']: object of type builtins.set is not serializable"),
    ],
)
def test_unserializable_values_name_their_path(args: list[Any], message: str) -> None:
    with pytest.raises(TypeError) as info:
        codec.encode_args(doc_step, args)
    assert str(info.value).startswith(message), str(info.value)


def test_unserializable_values_without_a_function() -> None:
    with pytest.raises(TypeError, match=r"^args\[1\]\[0\]: object of type builtins.object"):
        codec.encode_args(None, [1, [object()]])


def test_decode_errors_name_their_path() -> None:
    with pytest.raises(TypeError) as info:
        codec.decode_args(typed, [{"name": "n", "color": "green", "tags": []}, {}])
    assert str(info.value).startswith(
        "args[0] (doc): cannot convert {'name': 'n', 'color': 'green'"
    )
    with pytest.raises(TypeError, match=r"^value: cannot convert 'x' to <class 'int'>"):
        codec.decode("x", int)
    with pytest.raises(TypeError, match=r"^value: cannot convert 3 to <class 'NoneType'>"):
        codec.decode(3, type(None))


def test_canonical_json_and_payload_hash() -> None:
    a = {"b": [1, {"y": 2, "x": 1}], "a": "é"}
    b = {"a": "é", "b": [1, {"x": 1, "y": 2}]}
    assert codec.canonical_json(a) == '{"a":"é","b":[1,{"x":1,"y":2}]}'
    assert codec.payload_hash(a) == codec.payload_hash(b)
    assert len(codec.payload_hash(a)) == 16
    assert codec.payload_hash(a) != codec.payload_hash({"a": "e", "b": [1, {"x": 1, "y": 2}]})
    with pytest.raises(ValueError):
        codec.canonical_json(float("inf"))


# -- payloads through a machine ------------------------------------------------------------------


@k.step
async def stamp(doc: Doc) -> Stamp:
    raise AssertionError("steps never run inside the kernel")


@k.workflow
async def payload_wf(doc: Doc) -> list[Any]:
    assert isinstance(doc, Doc) and doc.color is Color.RED
    s = await stamp(doc)
    assert isinstance(s, Stamp) and s.when.tzinfo is dt.UTC
    return [s, doc]


def test_workflow_args_step_args_and_results_are_converted() -> None:
    doc = {"name": "n", "color": "red", "tags": ["a"], "when": None}
    run = Run(payload_wf, doc)
    assert run.commands == [cmd.ScheduleStep(1, stamp.name, [doc])]
    assert run.send(ev.StepCompleted(1, {"x": 1, "when": "2024-01-02T03:04:05+00:00"})) == [
        cmd.CompleteRun(2, [{"x": 1, "when": "2024-01-02T03:04:05+00:00"}, doc])
    ]
    assert run.result == [
        Stamp(1, dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)),
        Doc("n", Color.RED, ["a"]),
    ]


def test_bad_workflow_args_fail_the_run() -> None:
    run = Run(payload_wf, {"name": "n"})
    (fail,) = run.commands
    assert isinstance(fail, cmd.FailRun)
    assert fail.error.type == "TypeError"
    assert fail.error.message.startswith("args[0] (doc): cannot convert {'name': 'n'}")


def test_bad_step_result_raises_type_error_in_the_workflow() -> None:
    run = Run(payload_wf, {"name": "n", "color": "red", "tags": []})
    (fail,) = run.send(ev.StepCompleted(1, {"x": "not a number"}))
    assert isinstance(fail, cmd.FailRun)
    assert fail.error.type == "TypeError"
    assert fail.error.message.startswith(f"result of step {stamp.name}: cannot convert")


def test_time_of_activation_is_kept_as_given() -> None:
    assert codec.event_from_dict(codec.event_to_dict(ev.Activated(T0 + 0.1))) == ev.Activated(
        T0 + 0.1
    )
