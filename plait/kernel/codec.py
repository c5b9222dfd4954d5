"""Conversion of payloads and of history to JSON-safe values.

Two cattrs converters, as attrs/cattrs advise: one for payloads (arguments, results, hook and
signal payloads), driven by the type hints of the functions that send and receive them, and one
for history events. Nothing here ever pickles.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import inspect
import json
import math
import typing
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import cattrs

from . import events as ev
from .errors import CorruptHistoryError, ErrorInfo

__all__ = [
    "payload_converter",
    "encode",
    "decode",
    "encode_args",
    "decode_args",
    "return_hint",
    "canonical_json",
    "payload_hash",
    "event_to_dict",
    "event_from_dict",
    "history_to_json",
    "history_from_json",
    "dumps_history",
    "loads_history",
]

JSON = Any


def _make_payload_converter() -> cattrs.Converter:
    conv = cattrs.Converter()
    conv.register_unstructure_hook(_dt.datetime, lambda d: d.isoformat())
    conv.register_structure_hook(_dt.datetime, lambda v, _: _dt.datetime.fromisoformat(v))
    conv.register_unstructure_hook(_dt.date, lambda d: d.isoformat())
    conv.register_structure_hook(_dt.date, lambda v, _: _dt.date.fromisoformat(v))
    conv.register_unstructure_hook(_dt.timedelta, lambda d: d.total_seconds())
    conv.register_structure_hook(_dt.timedelta, lambda v, _: _dt.timedelta(seconds=v))
    conv.register_unstructure_hook(uuid.UUID, str)
    conv.register_structure_hook(uuid.UUID, lambda v, _: uuid.UUID(v))
    conv.register_unstructure_hook(bytes, lambda b: b.hex())
    conv.register_structure_hook(bytes, lambda v, _: bytes.fromhex(v))
    # ``-> None`` functions: get_type_hints gives NoneType, which cattrs has no hook for.
    conv.register_structure_hook(type(None), _structure_none)
    return conv


def _structure_none(value: Any, _: Any) -> None:
    if value is not None:
        raise ValueError(f"expected None, got {value!r}")
    return None


payload_converter: cattrs.Converter = _make_payload_converter()
"""The converter for payloads. Register hooks on it for your own types."""


def _jsonable(value: Any, path: str) -> JSON:
    """Return ``value`` as plain JSON types, or raise ``TypeError`` naming the bad path."""
    if value is None or type(value) in (str, bool, int):
        return value
    # Subclasses the converter let through (StrEnum members): keep only the plain value.
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return int.__int__(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"{path}: {value!r} is not serializable to JSON")
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(item, f"{path}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for k, item in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{path}: dict key {k!r} is not a string; JSON needs string keys")
            out[k] = _jsonable(item, f"{path}[{k!r}]")
        return out
    raise TypeError(
        f"{path}: object of type {type(value).__module__}.{type(value).__qualname__} "
        "is not serializable (payloads are JSON: use attrs classes, dataclasses, enums, "
        "datetimes, UUIDs, containers, or register a hook on plait.kernel.codec.payload_converter)"
    )


def encode(value: Any, hint: Any = Any, path: str = "value") -> JSON:
    """Unstructure ``value`` as ``hint`` into JSON-safe data; ``TypeError`` names a bad path."""
    # Exact types only: an IntEnum or StrEnum member must become its plain value.
    if value is None or type(value) in (str, bool, int):
        return value
    try:
        if hint is Any or hint is None or hint is inspect.Parameter.empty:
            raw = payload_converter.unstructure(value)
        else:
            raw = payload_converter.unstructure(value, unstructure_as=hint)
    except Exception as exc:  # cattrs raises many kinds; name the path
        raise TypeError(f"{path}: cannot serialize {type(value).__qualname__}: {exc}") from exc
    return _jsonable(raw, path)


_PLAIN = (int, str, float, bool)


def decode(data: JSON, hint: Any = Any, path: str = "value") -> Any:
    """Structure JSON-safe ``data`` into ``hint``."""
    if hint is Any or hint is None or hint is inspect.Parameter.empty or hint is object:
        return data
    if type(data) is hint and hint in _PLAIN:  # already what it should be: cattrs would copy it
        return data
    try:
        return payload_converter.structure(data, hint)
    except Exception as exc:
        raise TypeError(f"{path}: cannot convert {data!r} to {hint!r}: {exc}") from exc


_HINTS: dict[Callable[..., Any], dict[str, Any]] = {}
_PARAM_HINTS: dict[tuple[Callable[..., Any], int], list[tuple[str, Any]]] = {}


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    # Resolving hints (and signatures) costs far more than replaying an event: do it once.
    # A failure (a forward reference not defined yet) is not cached: it may resolve later.
    cached = _HINTS.get(fn)
    if cached is None:
        try:
            cached = _HINTS[fn] = typing.get_type_hints(fn)
        except Exception:
            return {}
    return cached


def _param_hints(fn: Callable[..., Any], n: int) -> list[tuple[str, Any]]:
    """The (name, hint) of the first ``n`` positional arguments of ``fn`` (cached)."""
    key = (fn, n)
    cached = _PARAM_HINTS.get(key)
    if cached is None:
        cached = _compute_param_hints(fn, n)
        if fn in _HINTS:  # only once the hints resolved
            _PARAM_HINTS[key] = cached
    return cached


def _compute_param_hints(fn: Callable[..., Any], n: int) -> list[tuple[str, Any]]:
    hints = _hints(fn)
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return [(f"args[{i}]", Any) for i in range(n)]
    out: list[tuple[str, Any]] = []
    for i in range(n):
        if i < len(params) and params[i].kind in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            out.append((params[i].name, hints.get(params[i].name, Any)))
        else:
            star = next((p for p in params if p.kind is inspect.Parameter.VAR_POSITIONAL), None)
            if star is None:
                raise TypeError(
                    f"{getattr(fn, '__qualname__', fn)!r} takes {len(params)} positional "
                    f"argument(s) but {n} were given"
                )
            out.append((star.name, hints.get(star.name, Any)))
    return out


def encode_args(fn: Callable[..., Any] | None, args: Sequence[Any]) -> list[JSON]:
    """Encode positional ``args`` for a call of ``fn`` using its parameter hints."""
    if fn is None:
        return [encode(a, Any, f"args[{i}]") for i, a in enumerate(args)]
    return [
        encode(a, hint, f"args[{i}] ({name})")
        for i, (a, (name, hint)) in enumerate(zip(args, _param_hints(fn, len(args)), strict=True))
    ]


def decode_args(fn: Callable[..., Any], data: Sequence[JSON]) -> tuple[Any, ...]:
    """Decode stored arguments for a call of ``fn``."""
    return tuple(
        decode(d, hint, f"args[{i}] ({name})")
        for i, (d, (name, hint)) in enumerate(zip(data, _param_hints(fn, len(data)), strict=True))
    )


def return_hint(fn: Callable[..., Any] | None) -> Any:
    """The declared return type of ``fn`` (``Any`` when missing)."""
    if fn is None:
        return Any
    return _hints(fn).get("return", Any)


def canonical_json(data: JSON) -> str:
    """One spelling per value: sorted keys, no spaces, no NaN."""
    return json.dumps(
        data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def payload_hash(data: JSON) -> str:
    """Short stable hash of encoded data, used to compare arguments on replay."""
    return hashlib.sha256(canonical_json(data).encode()).hexdigest()[:16]


# -- history ---------------------------------------------------------------------------------

_EVENT_TYPES: dict[str, type[ev.Event]] = {
    name: getattr(ev, name)
    for name in ev.__all__
    if isinstance(getattr(ev, name), type)
    and issubclass(getattr(ev, name), ev.Event)
    and getattr(ev, name) is not ev.Event
}


def _exactly(kind: type, *also: type) -> Callable[[Any, Any], Any]:
    """A strict structure hook: cattrs would coerce ``"abc"`` to a list or ``1.5`` to an int."""

    def structure(value: Any, _: Any) -> Any:
        if isinstance(value, bool) is not (kind is bool) or not isinstance(value, (kind, *also)):
            raise TypeError(f"expected {kind.__name__}, got {value!r}")
        return kind(value)

    return structure


# Strict: a history no execution could produce is corrupt, never silently coerced.
_history_converter = cattrs.Converter(forbid_extra_keys=True)
# Payload fields hold JSON already: pass them through untouched.
_history_converter.register_structure_hook(Any, lambda v, _: v)
for _kind, _also in ((int, ()), (float, (int,)), (str, ()), (bool, ())):
    _history_converter.register_structure_hook(_kind, _exactly(_kind, *_also))


def _is_list(hint: Any) -> bool:
    origin: Any = typing.get_origin(hint)
    return origin is list


_history_converter.register_structure_hook_func(_is_list, _exactly(list))


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def event_to_dict(event: ev.Event) -> dict[str, JSON]:
    """Encode one event as a dict tagged with ``"type"``."""
    cls = type(event)
    names = _FIELD_NAMES.get(cls)
    if names is None:  # once per event class: attrs' field lookup costs more than the copy
        names = _FIELD_NAMES[cls] = tuple(a.name for a in attrs.fields(cls))  # type: ignore[arg-type]
    data: dict[str, JSON] = {"type": cls.__name__}
    for name in names:
        value = getattr(event, name)
        if isinstance(value, ErrorInfo):
            value = attrs.asdict(value)
        data[name] = value
    return data


def event_from_dict(data: dict[str, JSON]) -> ev.Event:
    """Decode one tagged event dict; ``CorruptHistoryError`` for anything unknown or malformed."""
    if not isinstance(data, dict) or "type" not in data:
        raise CorruptHistoryError(f"history entry is not a tagged event: {data!r}")
    cls = _EVENT_TYPES.get(data["type"]) if isinstance(data["type"], str) else None
    if cls is None:
        raise CorruptHistoryError(f"unknown event type {data['type']!r} in history")
    body = {k: v for k, v in data.items() if k != "type"}
    try:
        return _history_converter.structure(body, cls)
    except Exception as exc:
        detail = (
            "; ".join(cattrs.transform_error(exc))
            if isinstance(exc, cattrs.BaseValidationError)
            else exc
        )
        raise CorruptHistoryError(f"malformed {data['type']} event {body!r}: {detail}") from exc


def history_to_json(events: Sequence[ev.Event]) -> list[dict[str, JSON]]:
    return [event_to_dict(e) for e in events]


def history_from_json(data: Sequence[dict[str, JSON]]) -> list[ev.Event]:
    return [event_from_dict(d) for d in data]


def dumps_history(events: Sequence[ev.Event]) -> str:
    return json.dumps(history_to_json(events), separators=(",", ":"))


def loads_history(text: str) -> list[ev.Event]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise CorruptHistoryError(f"history is not JSON: {exc}") from exc
    if not isinstance(data, list):
        raise CorruptHistoryError("history JSON is not a list of events")
    return history_from_json(data)
