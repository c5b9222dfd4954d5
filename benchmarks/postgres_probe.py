#!/usr/bin/env python3
"""Throughput probe of the postgres backend against its targets.

* ``sequential``: runs of 10 steps, one after another (each run started, then awaited), one
  worker. Target: at least 1,200 steps/s.
* ``concurrent``: 200 runs of 10 steps, 20 in flight at any time, one worker. Target: at least
  2,500 steps/s.
* ``fanout``: one parent starting 100 children (one step each) and awaiting them all with
  ``plait.all``; seconds from start to result. Target: at most 0.15 s.

Each measurement uses a fresh schema and is repeated (median and best reported). The server is
``--url``, else ``$PLAIT_POSTGRES_URL``, else a throwaway local one (``plait.testing.servers``).
``--socket`` talks to that throwaway server over its Unix socket instead of TCP loopback.
``--compare`` adds the same workloads on ``memory://`` to separate the backend's cost from the
runtime's.

    python benchmarks/postgres_probe.py                 # 5 repeats, table
    python benchmarks/postgres_probe.py --socket --compare
    python benchmarks/postgres_probe.py --json
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

TARGETS = {"sequential": 1200.0, "concurrent": 2500.0, "fanout": 0.15}


@plait.step(name="postgres_probe.add")
async def add(a: int, b: int) -> int:
    return a + b


@plait.workflow(name="postgres_probe.ten_steps")
async def ten_steps(n: int) -> int:
    total = 0
    for i in range(n):
        total = await add(total, i)
    return total


@plait.workflow(name="postgres_probe.leaf")
async def leaf(i: int) -> int:
    return await add(i, 1)


@plait.workflow(name="postgres_probe.fanout")
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


async def sequential(url: str, runs: int = 50) -> float:
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


WORKLOADS: dict[str, tuple[Callable[[str], Awaitable[float]], str]] = {
    "sequential": (sequential, "steps/s"),
    "concurrent": (concurrent, "steps/s"),
    "fanout": (fan_out, "s"),
}


def _server(args: argparse.Namespace) -> str:
    if args.url:
        return str(args.url)
    if os.environ.get("PLAIT_POSTGRES_URL"):
        return os.environ["PLAIT_POSTGRES_URL"]
    from plait.testing import servers

    url = servers.provide("postgres")
    info = servers._SERVERS.get("postgres")
    if args.socket and info is not None:
        return f"postgresql://plait@/postgres?host={info['base']}&port={info['port']}"
    return url


def _fresh(base: str) -> str:
    if base.startswith("memory:"):
        return base
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}schema=probe_{uuid.uuid4().hex[:10]}"


def _drop_schemas(base: str) -> None:
    """Remove the probe_* schemas this run created (best effort)."""
    try:
        import psycopg

        from plait.backends._pg_schema import parse_url

        with psycopg.connect(parse_url(base).conninfo, autocommit=True) as conn:
            names = [
                r[0]
                for r in conn.execute(
                    "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'probe\\_%'"
                )
            ]
            for name in names:
                conn.execute(f'DROP SCHEMA "{name}" CASCADE')
    except Exception:
        pass


def measure(base: str, names: list[str], repeat: int) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        fn, unit = WORKLOADS[name]
        values = [anyio.run(fn, _fresh(base)) for _ in range(repeat)]
        best = min(values) if unit == "s" else max(values)
        out[name] = {
            "unit": unit,
            "median": statistics.median(values),
            "best": best,
            "values": values,
            "target": TARGETS[name],
            "met": (statistics.median(values) <= TARGETS[name])
            if unit == "s"
            else (statistics.median(values) >= TARGETS[name]),
        }
    return out


def _fmt(value: float, unit: str) -> str:
    return f"{value:.3f} s" if unit == "s" else f"{value:,.0f} steps/s"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--url", help="PostgreSQL URL (a fresh schema is used per measurement)")
    ap.add_argument("--socket", action="store_true", help="Unix socket of the local server")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--workloads", default="sequential,concurrent,fanout")
    ap.add_argument("--compare", action="store_true", help="also run on memory://")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.workloads.split(",") if n.strip()]
    base = _server(args)
    report: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
        },
        "repeat": args.repeat,
        "postgres": measure(base, names, args.repeat),
    }
    _drop_schemas(base)
    if args.compare:
        report["memory"] = measure("memory://", names, args.repeat)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    shown = base.split("@")[-1]
    print(f"plait postgres probe (median of {args.repeat}; {report['machine']})")
    for backend in [k for k in ("postgres", "memory") if k in report]:
        print(f"{backend}: {shown if backend == 'postgres' else 'memory://'}")
        print(f"  {'workload':<12} {'median':>16} {'best':>16}   target")
        for name, r in report[backend].items():
            target = ("<= " if r["unit"] == "s" else ">= ") + _fmt(r["target"], r["unit"])
            mark = "met" if r["met"] else "MISSED"
            line = (
                f"  {name:<12} {_fmt(r['median'], r['unit']):>16} {_fmt(r['best'], r['unit']):>16}"
            )
            print(line + (f"   {target} ({mark})" if backend == "postgres" else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
