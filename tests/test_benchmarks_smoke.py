"""Smoke test of benchmarks/kernel_replay.py on tiny histories (no timing assertions)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from plait.kernel import Machine, codec
from plait.kernel import events as ev

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "kernel_replay.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_plait_bench_kernel_replay", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("shape", ["sequential", "fanout"])
def test_replay_reproduces_history(bench: ModuleType, shape: str) -> None:
    wf, history = bench.SHAPES[shape](200)
    assert 100 <= len(history) <= 400
    assert isinstance(history[0], ev.RunStarted)
    assert isinstance(history[-1], ev.RunCompleted)

    m = bench.replay(wf, history)
    assert m.history == history
    assert m.status == "completed"

    # Through the JSON codec too, as a worker would load it.
    again = Machine(wf, codec.loads_history(codec.dumps_history(history)))
    assert again.history == history
    assert again.result == m.result


def test_fanout_exercises_barriers_and_timers(bench: ModuleType) -> None:
    _, history = bench.build_fanout(200)
    kinds = {type(e) for e in history}
    assert {ev.StepScheduled, ev.StepCompleted, ev.TimerStarted, ev.TimerFired} <= kinds
    assert ev.TimerCancelled in kinds  # the wait_for timer lost to its step
    # Completions were delivered in batches, so there are far fewer activations than steps.
    steps = sum(1 for e in history if type(e) is ev.StepScheduled)
    activations = sum(1 for e in history if type(e) is ev.Activated)
    assert activations < steps


def test_measure_and_json_output(bench: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    wf, history = bench.build_sequential(60)
    result = bench.measure(wf, history, runs=2)
    assert result["events"] == len(history) and result["runs"] == 2

    assert bench.main(["--events", "200", "--runs", "1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc["results"]) == {"sequential", "fanout"}
    assert all(r["events"] > 0 for r in doc["results"].values())
