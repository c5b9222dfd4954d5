"""Hints that name a class defined after the decorated function still resolve."""

from __future__ import annotations

import attrs

import plait.kernel as k
from plait.kernel import events as ev


@k.step
async def make(n: int) -> Later:
    raise AssertionError("never runs in the kernel")


@k.workflow
async def uses_later(n: int) -> Later:
    return await make(n)


@attrs.frozen
class Later:
    n: int


def test_result_hint_defined_after_the_step_is_structured() -> None:
    m = k.Machine(uses_later)
    m.activate([ev.RunStarted(run_id="r", workflow=uses_later.name, args=[1])], 0.0)
    m.activate([ev.StepCompleted(1, {"n": 5})], 0.0)
    assert m.result == Later(5)
    assert m.result_data == {"n": 5}
