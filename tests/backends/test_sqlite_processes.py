"""Several worker processes on one SQLite file: fan-out without duplicates, and a worker killed
with SIGKILL mid-step whose run another worker finishes after the lease expires."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import anyio
import pytest

import plait
from plait.kernel.status import RunStatus

sys.path.insert(0, str(Path(__file__).parent))
import _sqlite_procs_app as app  # noqa: E402

pytestmark = pytest.mark.anyio
SCRIPT = Path(__file__).parent / "_sqlite_procs_app.py"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def spawn(url: str, log: Path, stop: Path, lease: float, mode: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PLAIT_PROCS_LOG": str(log), "PLAIT_PROCS_MODE": mode}
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), url, str(log), str(stop), str(lease)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read() if proc.stderr else ""
    return proc


async def test_two_worker_processes_finish_200_runs_with_fan_out(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/two.db"
    log, stop = tmp_path / "steps.log", tmp_path / "stop"
    async with plait.Engine(url) as engine:
        procs = [spawn(url, log, stop, 30.0, "fast") for _ in range(2)]
        try:
            handles = [await engine.start(app.parent, 3) for _ in range(50)]  # 50 + 150 runs
            with anyio.fail_after(120):
                results = [await h.result() for h in handles]
        finally:
            stop.touch()
            for p in procs:
                p.wait(30)
        assert results == [0 + 2 + 4] * 50
        runs = [r async for r in engine.list_runs()]
        assert len(runs) == 200
        assert all(r.status is RunStatus.COMPLETED for r in runs)
        children = [r for r in runs if r.parent_run_id is not None]
        assert len({c.run_id for c in children}) == 150
        assert Counter(c.parent_run_id for c in children) == {h.run_id: 3 for h in handles}
    lines = log.read_text().splitlines()
    pids = {line.split()[0] for line in lines}
    step_ids = [line.split()[1] for line in lines]
    assert len(step_ids) == len(set(step_ids)) == 150, "a step ran twice"
    assert len(pids) == 2, "both processes should have done work"


async def test_a_killed_worker_is_replaced_after_its_lease_expires(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/kill.db"
    log, stop = tmp_path / "steps.log", tmp_path / "stop"
    async with plait.Engine(url) as engine:
        handle = await engine.start(app.single)
        first = spawn(url, log, stop, 2.0, "hang")
        deadline = time.monotonic() + 30
        while not (log.exists() and log.read_text()):
            assert time.monotonic() < deadline, "the first worker never started the step"
            await anyio.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        killed_at = time.monotonic()
        second = spawn(url, log, stop, 2.0, "fast")
        try:
            with anyio.fail_after(60):
                assert await handle.result() == 42
        finally:
            stop.touch()
            second.wait(30)
        assert time.monotonic() - killed_at >= 1.0  # it waited for the lease to lapse
        history = await engine.history(handle.run_id)
        kinds = [type(e).__name__ for e in history]
        assert kinds.count("StepScheduled") == 1 and kinds.count("StepCompleted") == 1
    attempts = log.read_text().splitlines()
    assert len(attempts) == 2  # at-least-once: started twice, recorded once
    assert attempts[0].split()[0] != attempts[1].split()[0]
