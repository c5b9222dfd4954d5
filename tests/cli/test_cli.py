"""The real ``plait`` command, in a subprocess, on a SQLite file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio
import pytest

import plait

PLAIT = [sys.executable, "-m", "plait.cli"]


def plait_cmd(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PLAIT, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("demo")
    out = plait_cmd("demo", "--docs", "4", cwd=d)
    assert out.returncode == 0, out.stderr
    return d


def test_demo_runs_on_the_default_sqlite_file(demo_dir: Path) -> None:
    assert (demo_dir / ".plait" / "plait.db").exists()
    out = plait_cmd("runs", "list", "--workflow", "demo.batch", cwd=demo_dir)
    assert out.returncode == 0
    assert "completed" in out.stdout and "(1 runs)" in out.stdout


def test_demo_output_has_progress_result_tree_and_timings(tmp_path: Path) -> None:
    out = plait_cmd("demo", "--docs", "3", "--backend", f"sqlite:///{tmp_path}/d.db", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "children:" in out.stdout
    assert "result: {'documents': 3" in out.stdout
    assert "run tree:" in out.stdout and "demo.document" in out.stdout
    assert "timings:" in out.stdout


def test_runs_show_and_history(demo_dir: Path) -> None:
    listed = plait_cmd("runs", "list", "--workflow", "demo.batch", cwd=demo_dir).stdout
    run_id = listed.splitlines()[1].split()[0]
    show = plait_cmd("runs", "show", run_id, cwd=demo_dir)
    assert show.returncode == 0
    assert "status:    completed" in show.stdout
    assert "children:  8" in show.stdout  # 4 documents + 4 audits
    hist = plait_cmd("runs", "history", run_id, "--json", cwd=demo_dir)
    events = json.loads(hist.stdout)
    assert events[0]["type"] == "RunStarted" and events[-1]["type"] == "RunCompleted"
    text = plait_cmd("runs", "history", run_id, cwd=demo_dir).stdout
    assert "ChildScheduled" in text


def test_list_filters_by_status_and_parent(demo_dir: Path) -> None:
    listed = plait_cmd("runs", "list", "--workflow", "demo.batch", cwd=demo_dir).stdout
    run_id = listed.splitlines()[1].split()[0]
    kids = plait_cmd("runs", "list", "--parent", run_id, cwd=demo_dir).stdout
    assert "(8 runs)" in kids
    failed = plait_cmd("runs", "list", "--status", "failed", cwd=demo_dir).stdout
    assert all("failed" in line for line in failed.splitlines()[1:-1])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["runs", "show", "nope"], "no run with id 'nope'"),
        (["cancel", "nope"], "no run with id 'nope'"),
        (["terminate", "nope"], "no run with id 'nope'"),
        (["hooks", "resume", "no-such-token", "{}"], "no open hook has token"),
        (["hooks", "resume", "t", "{not json"], "payload is not valid JSON"),
        (["runs", "list", "--status", "weird"], "unknown status 'weird'"),
        (["runs", "list", "--backend", "bogus://x"], "no plait backend handles bogus://"),
    ],
)
def test_user_mistakes_are_one_line_and_exit_1(
    demo_dir: Path, args: list[str], message: str
) -> None:
    out = plait_cmd(*args, cwd=demo_dir)
    assert out.returncode == 1
    assert out.stderr.startswith("plait: error: ") and message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert "Traceback" not in out.stderr


def test_a_file_that_is_not_a_plait_database_is_refused_unchanged(tmp_path: Path) -> None:
    f = tmp_path / "notes.db"
    f.write_text("these are my notes, not a database\n")
    before = f.read_bytes()
    out = plait_cmd("runs", "list", "--backend", f"sqlite:///{f}", cwd=tmp_path)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert f.read_bytes() == before


def test_backend_from_environment_variable(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/env.db"
    out = plait_cmd("runs", "list", cwd=tmp_path, env={"PLAIT_BACKEND": url})
    assert out.returncode == 0 and "(0 runs)" in out.stdout
    assert (tmp_path / "env.db").exists()


def test_cancel_terminate_and_resume_hook_commands(tmp_path: Path) -> None:
    (tmp_path / "cliwf.py").write_text(
        textwrap.dedent("""
        import plait

        @plait.workflow(name="cli.waiter")
        async def waiter() -> str:
            return await plait.hook(token="cli-token")

        @plait.workflow(name="cli.sleeper")
        async def sleeper() -> None:
            await plait.sleep(86_400)
    """)
    )
    url = f"sqlite:///{tmp_path}/w.db"
    sys.path.insert(0, str(tmp_path))
    try:
        import cliwf  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(tmp_path))

    async def start() -> list[str]:
        async with plait.Engine(url) as engine:
            return [(await engine.start(wf)).run_id for wf in (cliwf.waiter, cliwf.sleeper)]

    a, b = anyio.run(start)
    worker = subprocess.Popen(
        [*PLAIT, "worker", "cliwf", "--backend", url],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert worker.stdout is not None
        assert "plait worker:" in worker.stdout.readline()
        deadline = time.monotonic() + 30
        while True:  # the hook exists once the worker ran the first activation
            out = plait_cmd(
                "hooks", "resume", "cli-token", '"approved"', "--backend", url, cwd=tmp_path
            )
            if out.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert out.returncode == 0, out.stderr
        assert (
            plait_cmd(
                "terminate", b, "--reason", "ops", "--backend", url, cwd=tmp_path
            ).stdout.strip()
            == "terminated"
        )
        deadline = time.monotonic() + 30
        while (
            "completed" not in plait_cmd("runs", "show", a, "--backend", url, cwd=tmp_path).stdout
        ):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        show = plait_cmd("runs", "show", a, "--backend", url, cwd=tmp_path).stdout
        assert 'result:    "approved"' in show
        assert "terminated" in plait_cmd("runs", "show", b, "--backend", url, cwd=tmp_path).stdout
        assert (
            plait_cmd("cancel", a, "--backend", url, cwd=tmp_path).stdout.strip()
            == "run is already closed"
        )
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
    assert worker.returncode == 0
