"""Replay checks: rebuild runs from stored histories with the current code."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..kernel import events as ev
from ..kernel.codec import event_to_dict
from ..kernel.errors import CorruptHistoryError, NonDeterminismError
from ..kernel.machine import Machine
from ..kernel.registry import WorkflowFunction

__all__ = ["replay", "replay_all"]


def _by_name(workflows: Iterable[WorkflowFunction] | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(workflows, Mapping):
        return workflows
    return {w.name: w for w in workflows}


def replay(
    history: Sequence[ev.Event], workflows: Iterable[WorkflowFunction] | Mapping[str, Any]
) -> Machine | None:
    """Replay one run's history; ``NonDeterminismError`` with a readable diff on a mismatch.

    The rebuilt history must equal the stored one event for event (meta events included).
    A run terminated before any code ran (only meta events) has nothing to replay: None.
    """
    if history and all(type(e) in ev.META_EVENTS for e in history):
        return None  # terminated before its first activation: no code ever ran
    if not history or not isinstance(history[0], ev.RunStarted):
        raise CorruptHistoryError("a history must start with RunStarted")
    name = history[0].workflow
    fn = _by_name(workflows).get(name)
    if fn is None:
        raise LookupError(f"workflow {name!r} of run {history[0].run_id} is not in `workflows`")
    machine = Machine(fn, history)
    for i, (old, new) in enumerate(zip(history, machine.history, strict=False)):
        if old != new:
            raise NonDeterminismError(
                f"run {history[0].run_id}: replay differs at position {i}:\n"
                f"  recorded: {event_to_dict(old)}\n  replayed: {event_to_dict(new)}"
            )
    if len(machine.history) != len(history):
        raise NonDeterminismError(
            f"run {history[0].run_id}: replay produced {len(machine.history)} events, "
            f"history has {len(history)}"
        )
    return machine


def replay_all(
    histories: Iterable[Sequence[ev.Event]] | Mapping[str, Sequence[ev.Event]],
    workflows: Iterable[WorkflowFunction] | Mapping[str, Any],
) -> int:
    """Replay every history; raise on the first that does not replay. Returns how many."""
    table = _by_name(workflows)
    items = histories.values() if isinstance(histories, Mapping) else histories
    n = 0
    for history in items:
        replay(history, table)
        n += 1
    return n
