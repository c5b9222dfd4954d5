"""The product's promise: the same program and schedule give the same history on every backend,
every final history replays exactly, and crashes lose nothing and duplicate nothing."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plait.kernel.codec import history_from_json
from plait.testing import replay_all
from plait.testing.pytest_plugin import isolated_url, selected_backends
from plait.testing.strategies import WORKFLOWS, Outcome, fault_schedules, programs, run_program


@pytest.fixture(scope="module")
def urls(request: pytest.FixtureRequest) -> list[str]:
    """One isolated-URL maker per selected, available backend (skips the unavailable)."""
    out = []
    for name in selected_backends(request.config):
        try:
            out.append(name)
            isolated_url(name, Path(tempfile.mkdtemp()))
        except pytest.skip.Exception:
            out.pop()
    return out


def _run(
    urls: list[str], program: list[Any], faults: frozenset[int], cancel_after: float | None
) -> dict[str, Outcome]:
    async def main() -> dict[str, Outcome]:
        return {
            name: await run_program(
                isolated_url(name, Path(tempfile.mkdtemp())),
                program,
                faults=faults,
                cancel_after=cancel_after,
            )
            for name in urls
        }

    return anyio.run(main)


def _check_replay_and_uniqueness(outcome: Outcome) -> None:
    histories = {r: history_from_json(h) for r, h in outcome.histories.items()}
    assert replay_all(histories, WORKFLOWS) == len(histories)
    scheduled = [e for h in histories.values() for e in h if type(e).__name__ == "ChildScheduled"]
    child_ids = [e.child_run_id for e in scheduled]
    assert len(child_ids) == len(set(child_ids)), "a child was created twice"
    assert set(child_ids) <= set(histories), "a scheduled child has no run"
    tokens = [e.token for h in histories.values() for e in h if type(e).__name__ == "HookCreated"]
    assert len(tokens) == len(set(tokens)), "a hook was created twice"


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    program=programs(),
    faults=fault_schedules(),
    cancel_after=st.one_of(st.none(), st.none(), st.integers(0, 7200).map(float)),
)
def test_same_history_on_every_backend(
    urls: list[str], program: list[Any], faults: frozenset[int], cancel_after: float | None
) -> None:
    outcomes = _run(urls, program, faults, cancel_after)
    first_name, first = next(iter(outcomes.items()))
    for name, outcome in outcomes.items():
        assert outcome.status == first.status, (name, first_name)
        assert outcome.result == first.result, (name, first_name)
        assert outcome.histories == first.histories, f"{name} differs from {first_name}"
    _check_replay_and_uniqueness(first)


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(program=programs(), faults=fault_schedules().filter(bool))
def test_crashes_lose_nothing_and_duplicate_nothing(
    program: list[Any], faults: frozenset[int]
) -> None:
    calm = _run(["memory"], program, frozenset(), None)["memory"]
    crashed = _run(["memory"], program, faults, None)["memory"]
    # A crash changes completion order, so a race may pick another winner; without races the
    # outcome must not change at all.
    if not _contains(program, "race"):
        assert crashed.status == calm.status
        assert crashed.result == calm.result
        assert set(crashed.histories) == set(calm.histories)
    assert crashed.status in ("completed", "failed")
    _check_replay_and_uniqueness(crashed)


def _contains(program: Any, kind: str) -> bool:
    return isinstance(program, list) and (
        program[:1] == [kind] or any(_contains(p, kind) for p in program)
    )
