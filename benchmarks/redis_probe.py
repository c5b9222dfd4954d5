#!/usr/bin/env python3
"""Throughput probe of the Redis backend against its target.

* ``sequential``: runs of 10 steps, one after another (each run started, then awaited), one
  worker. Target: at least 3,000 steps/s.
* ``concurrent``: 200 runs of 10 steps, 20 in flight at any time, one worker.
* ``fanout``: one parent starting 100 children (one step each) and awaiting them all with
  ``plait.all``; seconds from start to result.

Each measurement uses a fresh key prefix and is repeated (median and best reported). The
server is ``--url``, else ``$PLAIT_REDIS_URL``, else a throwaway local ``redis-server`` with AOF
on (``appendfsync everysec``, from ``plait.testing.servers``). ``--compare`` adds the same
workloads on ``memory://`` to separate the backend's cost from the runtime's. ``--trips``
counts the round trips to Redis per step (one extra run of each workload).

    python benchmarks/redis_probe.py                 # 5 repeats, table
    python benchmarks/redis_probe.py --compare --trips
    python benchmarks/redis_probe.py --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

try:
    import plait
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import plait

TARGETS: dict[str, float | None] = {"sequential": 3000.0, "concurrent": None, "fanout": None}


@plait.step(name="redis_probe.add")
async def add(a: int, b: int) -> int:
    return a + b


@plait.workflow(name="redis_probe.ten_steps")
async def ten_steps(n: int) -> int:
    total = 0
    for i in range(n):
        total = await add(total, i)
    return total


@plait.workflow(name="redis_probe.leaf")
async def leaf(i: int) -> int:
    return await add(i, 1)


@plait.workflow(name="redis_probe.fanout")
async def fanout(n: int) -> int:
    results = await plait.all(*(plait.child(leaf, i) for i in range(n)))
    return sum(results)


WORKFLOWS = [ten_steps, leaf, fanout]
STEPS = [add]


async def _with_worker(url: str, body: Callable[[plait.Engine], Awaitable[float]]) -> float:
    async with plait.Engine(url) as engine:
        async with engine.worker(WORKFLOWS, STEPS, concurrency=64):
            await (await engine.start(ten_steps, 10)).result(timeout=60)  # warm up
            return await body(engine)


async def sequential(url: str, runs: int = 100) -> float:
    async def body(engine: plait.Engine) -> float:
        t0 = time.perf_counter()
        for _ in range(runs):
            await (await engine.start(ten_steps, 10)).result(timeout=60)
        return runs * 10 / (time.perf_counter() - t0)

    return await _with_worker(url, body)


async def concurrent(url: str, runs: int = 200, width: int = 20) -> float:
    async def body(engine: plait.Engine) -> float:
        gate = anyio.Semaphore(width)

        async def one() -> None:
            async with gate:
                await (await engine.start(ten_steps, 10)).result(timeout=120)

        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(runs):
                tg.start_soon(one)
        return runs * 10 / (time.perf_counter() - t0)

    return await _with_worker(url, body)


async def fan_out(url: str, children: int = 100) -> float:
    async def body(engine: plait.Engine) -> float:
        t0 = time.perf_counter()
        total = await (await engine.start(fanout, children)).result(timeout=60)
        seconds = time.perf_counter() - t0
        assert total == sum(i + 1 for i in range(children))
        return seconds

    return await _with_worker(url, body)


WORKLOADS: dict[str, tuple[Callable[[str], Awaitable[float]], str, float]] = {
    "sequential": (sequential, "steps/s", 100 * 10),
    "concurrent": (concurrent, "steps/s", 200 * 10),
    "fanout": (fan_out, "s", 100),
}


def _server(args: argparse.Namespace) -> str:
    if args.url:
        return str(args.url)
    if os.environ.get("PLAIT_REDIS_URL"):
        return os.environ["PLAIT_REDIS_URL"]
    from plait.testing import servers

    return servers.provide("redis")


def _fresh(base: str) -> str:
    if base.startswith("memory:"):
        return base
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}prefix=probe{uuid.uuid4().hex[:10]}:"


def _drop_prefixes(base: str) -> None:
    """Remove the probe* keys this run created (best effort)."""
    try:
        import redis

        from plait.backends.redis import parse_url

        client = redis.Redis.from_url(parse_url(base).redis_url)
        for key in client.scan_iter(match="probe*", count=1000):
            client.delete(key)
        client.close()
    except Exception:
        pass


def _count_trips(base: str, name: str) -> float:
    """Round trips to Redis per step (or per child, for fanout) in one run of ``name``."""
    from plait.backends.redis import RedisBackend

    counter = {"n": 0}
    original = RedisBackend._pipeline

    async def counting(self: RedisBackend, commands: Any) -> Any:
        counter["n"] += 1
        return await original(self, commands)

    RedisBackend._pipeline = counting  # type: ignore[method-assign]
    try:
        fn, _, units = WORKLOADS[name]
        anyio.run(fn, _fresh(base))
    finally:
        RedisBackend._pipeline = original  # type: ignore[method-assign]
    warm_up = 10  # the warm-up run's steps are counted too
    return counter["n"] / (units + warm_up)


def measure(base: str, names: list[str], repeat: int, trips: bool) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        fn, unit, _ = WORKLOADS[name]
        values = [anyio.run(fn, _fresh(base)) for _ in range(repeat)]
        best = min(values) if unit == "s" else max(values)
        median = statistics.median(values)
        target = TARGETS[name]
        out[name] = {
            "unit": unit,
            "median": median,
            "best": best,
            "values": values,
            "target": target,
            "met": None
            if target is None
            else (median <= target if unit == "s" else median >= target),
        }
        if trips and not base.startswith("memory:"):
            out[name]["trips_per_unit"] = _count_trips(base, name)
    return out


def _fmt(value: float, unit: str) -> str:
    return f"{value:.3f} s" if unit == "s" else f"{value:,.0f} steps/s"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--url", help="Redis URL (a fresh key prefix is used per measurement)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--workloads", default="sequential,concurrent,fanout")
    ap.add_argument("--compare", action="store_true", help="also run on memory://")
    ap.add_argument("--trips", action="store_true", help="count round trips per step")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.workloads.split(",") if n.strip()]
    base = _server(args)
    report: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "load": os.getloadavg()[0],
        },
        "repeat": args.repeat,
        "redis": measure(base, names, args.repeat, args.trips),
    }
    _drop_prefixes(base)
    if args.compare:
        report["memory"] = measure("memory://", names, args.repeat, False)
    report["machine"]["load_after"] = os.getloadavg()[0]
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    shown = base.split("@")[-1]
    print(f"plait redis probe (median of {args.repeat}; {report['machine']})")
    for backend in [k for k in ("redis", "memory") if k in report]:
        print(f"{backend}: {shown if backend == 'redis' else 'memory://'}")
        print(f"  {'workload':<12} {'median':>16} {'best':>16}   trips   target")
        for name, r in report[backend].items():
            median, best = _fmt(r["median"], r["unit"]), _fmt(r["best"], r["unit"])
            line = f"  {name:<12} {median:>16} {best:>16}"
            trips = r.get("trips_per_unit")
            line += f"   {trips:5.2f}" if trips is not None else "        "
            if backend == "redis" and r["target"] is not None:
                target = ("<= " if r["unit"] == "s" else ">= ") + _fmt(r["target"], r["unit"])
                line += f"   {target} ({'met' if r['met'] else 'MISSED'})"
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
