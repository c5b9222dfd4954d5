"""URL parsing and the JSON encoding of records, events and commits for the Redis backend.

Python encodes everything; the Lua scripts (``_redis_lua``) only store and move these strings.
Times are sent as ``repr(float)`` strings so Redis parses them exactly.
"""

from __future__ import annotations

import json
import json.encoder
import random
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import attrs

from ..kernel.codec import event_from_dict, event_to_dict
from ..kernel.errors import ErrorInfo
from ..kernel.events import Event, HookReceived, TimerFired
from ..kernel.status import CLOSED_STATUSES, RunStatus
from .base import BackendError, Commit, Delivery, InboxEntry, RunRecord

__all__ = [
    "RedisOptions",
    "parse_url",
    "commit_args",
    "commit_kinds",
    "speculative_flags",
    "closing",
    "new_run",
    "record",
    "pairs",
    "inbox_entry",
    "ej",
    "ev",
    "ts",
    "dumps",
    "TIMER_FIRED",
    "hook_received",
]

_SENTINEL = -987654321


# -- URL -------------------------------------------------------------------------------------


@attrs.frozen
class RedisOptions:
    """A parsed backend URL: what redis-py gets, and plait's own options."""

    redis_url: str
    """The URL handed to redis-py: plait's options stripped, the database in the path."""
    db: int
    prefix: str = "plait:"
    retry_for: float = 30.0
    shown: str = ""
    """The server's address for messages, without the password."""


def parse_url(url: str) -> RedisOptions:
    """Split a ``redis://`` / ``rediss://`` URL into redis-py's URL and plait's options."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("redis", "rediss"):
        raise BackendError(f"not a Redis URL: {url!r} (expected redis:// or rediss://)")
    path = parts.path.strip("/")
    if path == "":
        db = 0
    else:
        try:
            db = int(path)
        except ValueError:
            raise BackendError(
                f"Redis URL {url!r}: the path must be a database number, got {path!r}"
            ) from None
        if db < 0:
            raise BackendError(f"Redis URL {url!r}: database number must be >= 0")
    prefix = "plait:"
    retry_for = 30.0
    rest: list[tuple[str, str]] = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name == "prefix":
            if not value:
                raise BackendError(f"Redis URL {url!r}: prefix must not be empty")
            prefix = value
        elif name == "retry_for":
            try:
                retry_for = float(value)
            except ValueError:
                raise BackendError(
                    f"Redis URL {url!r}: retry_for must be a number of seconds"
                ) from None
        else:
            rest.append((name, value))
    redis_url = urlunsplit(
        (parts.scheme, parts.netloc, f"/{db}", urlencode(rest, quote_via=quote), "")
    )
    netloc = parts.netloc
    if "@" in netloc:  # never show a password
        auth, host = netloc.rsplit("@", 1)
        user = auth.split(":", 1)[0]
        netloc = f"{user}:***@{host}" if ":" in auth else netloc
    shown = urlunsplit((parts.scheme, netloc, f"/{db}", "", ""))
    return RedisOptions(redis_url=redis_url, db=db, prefix=prefix, retry_for=retry_for, shown=shown)


# -- encoding --------------------------------------------------------------------------------


def _compact_encoder() -> Callable[[Any], str]:
    """Compact JSON, exactly as ``json.dumps(data, separators=(",", ":"), ensure_ascii=False,
    allow_nan=False)`` writes it, from one reusable C encoder where the stdlib has one:
    ``json.dumps`` builds a new encoder per call, which costs more than encoding an event."""
    plain = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return plain

    def default(o: Any) -> Any:
        raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")

    try:
        c = make(None, default, json.encoder.encode_basestring, None, ":", ",", False, False, False)
        probe = {"a": [1, 2.5, "é\n", None, True, {"b": -0.0}]}
        if "".join(c(probe, 0)) != plain(probe):
            return plain
    except Exception:
        return plain

    def dumps(data: Any) -> str:
        return "".join(c(data, 0))

    return dumps


dumps = _compact_encoder()


def ej(event: Event) -> str:
    return dumps(event_to_dict(event))


def ev(text: str) -> Event:
    return event_from_dict(json.loads(text))


def ts(value: float) -> str:
    """A time as Redis gets it: the exact ``repr`` of the float (never a Lua number)."""
    return repr(float(value))


def _split_template(event: Event) -> tuple[str, str]:
    """The JSON of ``event`` (built with the sentinel seq) split around its ``seq``."""
    text = ej(event)
    marker = f'"seq":{_SENTINEL}'
    i = text.index(marker)
    return text[: i + 6], text[i + len(marker) :]


TIMER_FIRED = _split_template(TimerFired(_SENTINEL))


def hook_received(payload_json: Any) -> tuple[str, str]:
    return _split_template(HookReceived(_SENTINEL, payload_json))


def _record_fields(r: RunRecord) -> list[Any]:
    f: list[Any] = ["w", r.workflow, "s", r.status.value, "c", ts(r.created_at)]
    f += ["pc", r.parent_close]
    if r.key is not None:
        f += ["k", r.key]
    if r.parent_run_id is not None:
        f += ["pr", r.parent_run_id]
    if r.parent_seq is not None:
        f += ["ps", r.parent_seq]
    if r.queue is not None:
        f += ["qu", r.queue]
    if r.result is not None:
        f += ["res", dumps(r.result)]
    if r.error is not None:
        f += ["err", dumps(attrs.asdict(r.error))]
    if r.closed_at is not None:
        f += ["ca", ts(r.closed_at)]
    if r.continued_to is not None:
        f += ["ct", r.continued_to]
    if r.block_reason is not None:
        f += ["br", r.block_reason]
    if r.closed:
        f += ["x", 1]
    return f


def new_run(record: RunRecord, inbox: Sequence[Event]) -> list[Any]:
    return [
        record.run_id,
        _record_fields(record),
        record.key if record.key is not None else False,
        record.status.value,
        record.workflow,
        record.parent_run_id if record.parent_run_id is not None else False,
        [ej(e) for e in inbox],
    ]


def _delivery(d: Delivery | None) -> Any:
    return [d.run_id, ej(d.event)] if d is not None else False


def record(run_id: str, h: dict[str, str]) -> RunRecord:
    """Decode a run hash (``HGETALL``) into a ``RunRecord``."""
    ps = h.get("ps")
    res = h.get("res")
    err = h.get("err")
    ca = h.get("ca")
    return RunRecord(
        run_id=run_id,
        workflow=h["w"],
        status=RunStatus(h["s"]),
        created_at=float(h["c"]),
        key=h.get("k"),
        parent_run_id=h.get("pr"),
        parent_seq=int(ps) if ps is not None else None,
        parent_close=h.get("pc", "terminate"),
        queue=h.get("qu"),
        result=json.loads(res) if res is not None else None,
        error=ErrorInfo(**json.loads(err)) if err is not None else None,
        closed_at=float(ca) if ca is not None else None,
        continued_to=h.get("ct"),
        block_reason=h.get("br"),
    )


def pairs(flat: Sequence[str]) -> dict[str, str]:
    it = iter(flat)
    return dict(zip(it, it, strict=True))


def inbox_entry(text: str) -> InboxEntry:
    i = text.index(" ")
    return InboxEntry(int(text[:i]), ev(text[i + 1 :]))


def closing(c: Commit) -> bool:
    return c.status is not None and c.status in CLOSED_STATUSES


def commit_kinds(c: Commit) -> str:
    """The queues a commit may change: workflow tasks always, steps and timers when it adds
    or cancels some or closes the run (which drops the run's own)."""
    closes = closing(c)
    return (
        "w"
        + ("s" if c.steps or closes else "")
        + ("t" if c.timers or c.cancel_timers or closes else "")
    )


def speculative_flags(c: Commit) -> str:
    """The queues a speculative commit may make ready for other processes (its wake-up
    message): workflow tasks when it delivers anything, steps when it schedules some it did not
    lease to the caller, timers when it sets some. Usually none: the step it finishes and the
    step it schedules are both held by the caller, and no message is published."""
    return (
        ("w" if c.delivers else "") + ("s" if c.unleased_steps else "") + ("t" if c.timers else "")
    )


def commit_args(c: Commit, speculative: bool = False) -> list[str]:
    """The arguments ``apply`` (``_redis_lua``) takes: the commit's head as JSON (parts that are
    empty left out), then each event's JSON, so Lua stores them without decoding them.
    ``speculative``: as with ``lease=None`` and ``inbox_upto=0`` (``finish_step_and_commit``
    and ``create_run_and_commit`` ignore both)."""
    head: dict[str, Any] = {
        "id": f"{random.getrandbits(128):032x}",  # unique, not secret: no syscall
        "r": c.run_id,
        "l": -1 if c.lease is None or speculative else c.lease,
        "now": ts(c.now),
    }
    if c.inbox_upto and not speculative:
        head["up"] = c.inbox_upto
    fields: list[Any] = []
    if c.status is not None:
        fields += ["s", c.status.value]
        head["s"] = c.status.value
    if c.result is not None:
        fields += ["res", dumps(c.result)]
    if c.error is not None:
        fields += ["err", dumps(attrs.asdict(c.error))]
    if c.continued_to is not None:
        fields += ["ct", c.continued_to]
    if fields:
        head["set"] = fields
    if c.block_reason is not None:
        head["br"] = c.block_reason
    if closing(c):
        head["cl"] = True
    if c.steps:
        head["st"] = [
            [
                s.run_id,
                s.seq,
                dumps([s.name, s.args]),
                s.attempt,
                ts(s.ready_at),
                str(s.lease),  # a string: Lua numbers are doubles, leases 62-bit
                ts(s.lease_expires) if s.lease_expires is not None else False,
            ]
            for s in c.steps
        ]
    if c.timers:
        head["tm"] = [[tm.run_id, tm.seq, ts(tm.fire_at)] for tm in c.timers]
    if c.cancel_timers:
        head["ct"] = list(c.cancel_timers)
    if c.dispose_hooks:
        head["dh"] = list(c.dispose_hooks)
    if c.hooks:
        head["hk"] = [[h.token, h.seq, _delivery(h.on_conflict)] for h in c.hooks]
    if c.new_runs:
        head["nr"] = [
            [*new_run(nr.record, nr.inbox), _delivery(nr.on_started), _delivery(nr.on_conflict)]
            for nr in c.new_runs
        ]
    if c.hook_resumes:
        head["hr"] = [
            [
                hr.token,
                *hook_received(hr.payload),
                _delivery(hr.on_delivered),
                _delivery(hr.on_missing),
            ]
            for hr in c.hook_resumes
        ]
    if c.deliveries:
        head["dl"] = [_delivery(d) for d in c.deliveries]
    if c.requeue:
        head["rq"] = True
    return [dumps(head), *[ej(e) for e in c.events]]
