"""The runnable examples under docs/examples run and print what the docs say they print."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"


def run_example(name: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=EXAMPLES.parent.parent,
    )
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_kernel_embed() -> None:
    out = run_example("kernel_embed.py")
    lines = out.splitlines()

    # The live run: the parent starts two children, each runs a step and a timer.
    assert lines[0] == "run:"
    assert "  batch-run-1   RunStarted -> StartChild, StartChild" in lines
    assert sum("RunStarted -> ScheduleStep" in line for line in lines) == 3  # 2 children + v3 run
    assert any("StepCompleted(attempts=3) -> StartTimer" in line for line in lines)  # retried
    assert "status: completed, result: {'processed': 2, 'chars': 18}" in lines

    # Replay of the saved JSON histories reproduces each run exactly.
    replays = [line for line in lines if "identical:" in line]
    assert len(replays) == 3
    assert all(line.endswith("completed, identical: True") for line in replays)

    # Changed code: an unguarded change blocks the run, a patched one replays.
    assert any(
        "v2 is blocked, not failed: NonDeterminismError: nondeterminism at seq 2" in line
        and "duration=3600.0" in line
        for line in lines
    )
    assert "  v3 (patched) replays the old history: completed" in lines
    assert "  new-run-1     StepCompleted -> RecordPatch, StartTimer" in lines
    assert lines[-1] == "  patch recorded: True"
