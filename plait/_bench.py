"""``plait bench``: named workloads on a backend, figures as a table and JSON.

Workloads (DESIGN §8): ``sequential`` (runs of 10 steps, one after another), ``concurrent``
(20 runs of 10 steps at once), ``fanout`` (one parent, N children, fan-in with ``all``),
``timers`` (time-skipped hourly sleeps), ``hooks`` (resume latency), ``replay`` (kernel events/s).
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

import plait
from plait.kernel import events as ev
from plait.kernel.machine import Machine

WORKLOADS = ("sequential", "concurrent", "fanout", "timers", "hooks", "replay")


@plait.step(name="bench.noop")
async def noop(i: int) -> int:
    return i


@plait.workflow(name="bench.ten_steps")
async def ten_steps(n: int) -> int:
    total = 0
    for i in range(n):
        total += await noop(i)
    return total


@plait.workflow(name="bench.leaf")
async def leaf(i: int) -> int:
    return await noop(i)


@plait.workflow(name="bench.fanout")
async def fanout(n: int) -> int:
    results = await plait.all(*(plait.child(leaf, i) for i in range(n)))
    return sum(results)


@plait.workflow(name="bench.hourly")
async def hourly(hours: int) -> int:
    for _ in range(hours):
        await plait.sleep(3600)
    return hours


@plait.workflow(name="bench.wait_hook")
async def wait_hook(token: str) -> Any:
    return await plait.hook(token=token)


WORKFLOWS = [ten_steps, leaf, fanout, hourly, wait_hook]
STEPS = [noop]


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def _run_figures(runs: int, wall: float, latencies: list[float]) -> dict[str, Any]:
    """Figures of a workload of ``runs`` ten-step runs that took ``wall`` seconds."""
    return {
        "runs": runs,
        "steps": runs * 10,
        "seconds": wall,
        "runs_per_s": runs / wall,
        "steps_per_s": runs * 10 / wall,
        "p50_ms": _pct(latencies, 50) * 1e3,
        "p99_ms": _pct(latencies, 99) * 1e3,
    }


async def _sequential(engine: plait.Engine, runs: int) -> dict[str, Any]:
    lat: list[float] = []
    t0 = time.perf_counter()
    for _ in range(runs):
        s = time.perf_counter()
        h = await engine.start(ten_steps, 10)
        await h.result(timeout=60)
        lat.append(time.perf_counter() - s)
    wall = time.perf_counter() - t0
    return _run_figures(runs, wall, lat)


async def _concurrent(engine: plait.Engine, runs: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    handles = [await engine.start(ten_steps, 10) for _ in range(runs)]
    lat: list[float] = []

    async def wait(h: plait.RunHandle) -> None:
        await h.result(timeout=120)
        lat.append(time.perf_counter() - t0)

    async with anyio.create_task_group() as tg:
        for h in handles:
            tg.start_soon(wait, h)
    wall = time.perf_counter() - t0
    return _run_figures(runs, wall, lat)


async def _fanout(engine: plait.Engine, children: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    h = await engine.start(fanout, children)
    await h.result(timeout=120)
    wall = time.perf_counter() - t0
    return {
        "children": children,
        "seconds": wall,
        "runs_per_s": (children + 1) / wall,
        "steps_per_s": children / wall,
    }


async def _hooks(engine: plait.Engine, n: int) -> dict[str, Any]:
    lat: list[float] = []
    for i in range(n):
        token = f"bench-{time.time_ns()}-{i}"
        h = await engine.start(wait_hook, token)
        while True:  # wait until the hook exists
            try:
                s = time.perf_counter()
                await engine.resume_hook(token, i)
                break
            except plait.HookNotFound:
                await anyio.sleep(0.001)
        await h.result(timeout=30)
        lat.append(time.perf_counter() - s)
    return {"resumes": n, "p50_ms": _pct(lat, 50) * 1e3, "p99_ms": _pct(lat, 99) * 1e3}


async def _timers(backend: str, hours: int) -> dict[str, Any]:
    from plait.testing import TimeSkippingEnvironment

    url = backend
    async with TimeSkippingEnvironment(url, WORKFLOWS, STEPS) as env:
        t0 = time.perf_counter()
        h = await env.start(hourly, hours)
        await h.result()
        wall = time.perf_counter() - t0
    return {
        "timers": hours,
        "virtual_days": hours / 24,
        "seconds": wall,
        "timers_per_s": hours / wall,
    }


def _replay(steps: int) -> dict[str, Any]:
    m = Machine(ten_steps, [])
    cmds = m.activate([ev.RunStarted(run_id="bench", workflow=ten_steps.name, args=[steps])], 0.0)
    while cmds and not m.closed:
        c = cmds[0]
        cmds = m.activate([ev.StepCompleted(c.seq, getattr(c, "args", [0])[0])], 0.0)
    history = m.history
    times = []
    for _ in range(5):
        s = time.perf_counter()
        Machine(ten_steps, history)
        times.append(time.perf_counter() - s)
    best = statistics.median(times)
    return {"events": len(history), "seconds": best, "events_per_s": len(history) / best}


async def run_workload(name: str, backend: str, size: int | None = None) -> dict[str, Any]:
    if name == "replay":
        return _replay(size or 3333)
    if name == "timers":
        return await _timers(backend, size or 720)
    async with plait.Engine(backend) as engine:
        async with engine.worker(WORKFLOWS, STEPS, concurrency=64, poll_interval=0.2):
            fn: Callable[[plait.Engine, int], Awaitable[dict[str, Any]]] = {
                "sequential": _sequential,
                "concurrent": _concurrent,
                "fanout": _fanout,
                "hooks": _hooks,
            }[name]
            default = {"sequential": 50, "concurrent": 20, "fanout": 100, "hooks": 50}[name]
            await fn(engine, 2)  # warm up: schema, caches, imports
            return await fn(engine, size or default)


def _fresh(backend: str, name: str, i: int) -> str:
    """A fresh store per measurement: a new file for sqlite, the same URL otherwise."""
    if backend.startswith("sqlite:///") and not backend.endswith(":memory:"):
        base = backend[len("sqlite:///") :]
        stem = base[:-3] if base.endswith(".db") else base
        return f"sqlite:///{stem}-{name}-{i}.db"
    return backend


async def bench(
    backend: str, names: list[str], repeat: int, size: int | None, out: Any = sys.stdout
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name in names:
        samples = []
        for i in range(repeat):
            samples.append(await run_workload(name, _fresh(backend, name, i), size))
        key = next(
            k
            for k in ("steps_per_s", "events_per_s", "timers_per_s", "p50_ms", "seconds")
            if k in samples[0]
        )
        samples.sort(key=lambda s: s[key])
        med = samples[len(samples) // 2]
        results[name] = {"median": med, "samples": len(samples)}
        out.write(
            f"  {name:<11} "
            + "  ".join(
                f"{k}={v:,.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in med.items()
            )
            + "\n"
        )
        out.flush()
    return {
        "backend": backend,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cpus",
        "repeat": repeat,
        "results": results,
    }


def main_bench(backend: str, names: list[str], repeat: int, size: int | None, as_json: bool) -> int:
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise ValueError(f"unknown workload(s) {unknown}; choose from {', '.join(WORKLOADS)}")
    if not as_json:
        sys.stdout.write(f"plait bench on {backend} (median of {repeat})\n")
    report = anyio.run(
        bench, backend, names, repeat, size, open("/dev/null", "w") if as_json else sys.stdout
    )
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        try:
            import dbos  # type: ignore[import-not-found]  # noqa: F401

            print("  (DBOS is installed: see benchmarks/peers.md for the comparison run)")
        except ImportError:
            print("  (DBOS is not installed here: no peer comparison in this run)")
    return 0
