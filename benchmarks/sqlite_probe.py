#!/usr/bin/env python3
"""Quick throughput probe of the sqlite backend against its targets.

* ``sequential``: runs of 10 steps, one after another (each run started, then awaited), on a
  worker of concurrency 1 and on one of concurrency 64 (the ``plait bench`` setting). Target:
  at least 4,000 steps/s.
* ``fanout``: one parent starting 100 children (one step each) and awaiting them all with
  ``plait.all``. Target: at most 0.15 s.

Each measurement uses a fresh database file in a temporary directory and is repeated; the
median and the best are reported. ``--backend memory://`` (or ``--compare``) gives the same
figures for the reference backend, to separate the backend's cost from the runtime's.

    python benchmarks/sqlite_probe.py                 # sqlite file, 5 repeats
    python benchmarks/sqlite_probe.py --compare       # ... and memory:// and sqlite://:memory:
    python benchmarks/sqlite_probe.py --json
"""

from __future__ import annotations

import argparse
import json
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

try:
    import plait
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import plait

TARGET_STEPS_PER_S = 4000.0
TARGET_FANOUT_S = 0.15


@plait.step(name="sqlite_probe.add")
async def add(a: int, b: int) -> int:
    return a + b


@plait.workflow(name="sqlite_probe.ten_steps")
async def ten_steps(n: int) -> int:
    total = 0
    for i in range(n):
        total = await add(total, i)
    return total


@plait.workflow(name="sqlite_probe.leaf")
async def leaf(i: int) -> int:
    return await add(i, 1)


@plait.workflow(name="sqlite_probe.fanout")
async def fanout(n: int) -> int:
    results = await plait.all(*(plait.child(leaf, i) for i in range(n)))
    return sum(results)


WORKFLOWS: list[Any] = [ten_steps, leaf, fanout]
STEPS: list[Any] = [add]


async def _sequential(url: str, runs: int, concurrency: int) -> float:
    async with plait.Engine(url) as engine:
        async with engine.worker(WORKFLOWS, STEPS, concurrency=concurrency, poll_interval=0.2):
            await (await engine.start(ten_steps, 10)).result(timeout=60)  # warm up
            t0 = time.perf_counter()
            for _ in range(runs):
                await (await engine.start(ten_steps, 10)).result(timeout=60)
            return runs * 10 / (time.perf_counter() - t0)


async def _fanout(url: str, children: int) -> float:
    async with plait.Engine(url) as engine:
        async with engine.worker(WORKFLOWS, STEPS, concurrency=64, poll_interval=0.2):
            await (await engine.start(fanout, 5)).result(timeout=60)  # warm up
            t0 = time.perf_counter()
            result = await (await engine.start(fanout, children)).result(timeout=120)
            elapsed = time.perf_counter() - t0
    assert result == sum(range(1, children + 1))
    return elapsed


def _url(backend: str, tmp: Path, i: int) -> str:
    return f"sqlite:///{tmp}/probe-{i}.db" if backend == "sqlite" else backend


def measure(backend: str, repeat: int, runs: int, children: int) -> dict[str, Any]:
    seq1: list[float] = []
    seq64: list[float] = []
    fan: list[float] = []
    with tempfile.TemporaryDirectory(prefix="plait-probe-") as tmp:
        for i in range(repeat):
            seq1.append(anyio.run(_sequential, _url(backend, Path(tmp), 3 * i), runs, 1))
            seq64.append(anyio.run(_sequential, _url(backend, Path(tmp), 3 * i + 1), runs, 64))
            fan.append(anyio.run(_fanout, _url(backend, Path(tmp), 3 * i + 2), children))
    return {
        "backend": backend if backend != "sqlite" else "sqlite:///<tmp>/probe.db",
        "sequential_c1_steps_per_s": {"median": statistics.median(seq1), "best": max(seq1)},
        "sequential_c64_steps_per_s": {"median": statistics.median(seq64), "best": max(seq64)},
        "fanout_seconds": {"median": statistics.median(fan), "best": min(fan)},
        "runs": runs,
        "children": children,
        "repeat": repeat,
    }


def _line(r: dict[str, Any]) -> str:
    s1, s64, f = (
        r["sequential_c1_steps_per_s"],
        r["sequential_c64_steps_per_s"],
        r["fanout_seconds"],
    )
    return (
        f"{r['backend']}\n"
        f"  sequential, concurrency 1   {s1['median']:9,.0f} steps/s (best {s1['best']:,.0f})\n"
        f"  sequential, concurrency 64  {s64['median']:9,.0f} steps/s (best {s64['best']:,.0f})"
        f"   target >= {TARGET_STEPS_PER_S:,.0f}\n"
        f"  fan-out of {r['children']} children      {f['median']:9.3f} s (best {f['best']:.3f})"
        f"       target <= {TARGET_FANOUT_S}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="sqlite", help="'sqlite' (a fresh file) or a URL")
    parser.add_argument("--compare", action="store_true", help="also memory:// and :memory:")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--runs", type=int, default=100, help="sequential runs of 10 steps")
    parser.add_argument("--children", type=int, default=100)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    backends = [args.backend]
    if args.compare:
        backends += [b for b in ("sqlite://:memory:", "memory://") if b not in backends]
    results = [measure(b, args.repeat, args.runs, args.children) for b in backends]
    env = {
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "machine": platform.machine(),
    }
    if args.json:
        print(json.dumps({"environment": env, "results": results}, indent=2))
    else:
        print(f"plait sqlite probe (median of {args.repeat}; {env})")
        for r in results:
            print(_line(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
