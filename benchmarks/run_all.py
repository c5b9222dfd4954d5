"""Run ``plait bench`` workloads on every backend in one process and print one table.

PostgreSQL and Redis come from ``plait.testing.servers`` (env URL, else throwaway local
servers), so this needs no setup beyond the test command's. Usage::

    python benchmarks/run_all.py [--repeat 5] [--backends memory,sqlite,postgres,redis]
                                 [--workloads sequential,concurrent,fanout,hooks] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile

import anyio

from plait._bench import bench
from plait.testing.servers import Unavailable, provide, release

# The issues' targets on this 2-core machine: steps/s to reach, or seconds not to exceed.
TARGETS: dict[tuple[str, str], tuple[str, float]] = {
    ("memory", "sequential"): ("steps_per_s", 10_000),
    ("sqlite", "sequential"): ("steps_per_s", 4_000),
    ("sqlite", "fanout"): ("seconds", 0.15),
    ("postgres", "sequential"): ("steps_per_s", 1_200),
    ("postgres", "concurrent"): ("steps_per_s", 2_500),
    ("postgres", "fanout"): ("seconds", 0.15),
    ("redis", "sequential"): ("steps_per_s", 3_000),
}


def verdicts(backend: str, results: dict[str, dict[str, object]]) -> list[str]:
    """One line per target of ``backend`` that this run measured: met or missed."""
    lines = []
    for (name, workload), (key, target) in TARGETS.items():
        if name != backend or workload not in results:
            continue
        value = float(results[workload]["median"][key])  # type: ignore[index]
        met = value >= target if key == "steps_per_s" else value <= target
        bound = ">=" if key == "steps_per_s" else "<="
        lines.append(
            f"  target {workload} {key} {bound} {target:g}: {value:,.3f} "
            f"({'met' if met else 'MISSED'})"
        )
    return lines


def url_for(name: str) -> str:
    if name == "memory":
        return "memory://"
    if name == "sqlite":
        return f"sqlite:///{tempfile.mkdtemp(prefix='plait-bench-')}/bench.db"
    base = provide(name)
    sep = "&" if "?" in base else "?"
    tag = os.urandom(4).hex()
    return f"{base}{sep}schema=bench_{tag}" if name == "postgres" else f"{base}{sep}prefix=b{tag}:"


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--backends", default="memory,sqlite,postgres,redis")
    p.add_argument("--workloads", default="sequential,concurrent,fanout,hooks")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    names = args.workloads.split(",")
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
        "python": platform.python_version(),
        "repeat": args.repeat,
        "backends": {},
    }
    print(
        f"plait benchmarks, median of {args.repeat} ({report['machine']}, "
        f"Python {report['python']})"
    )
    for backend in args.backends.split(","):
        try:
            url = url_for(backend)
        except Unavailable as exc:
            print(f"{backend}: skipped ({exc})")
            continue
        print(f"{backend}:")
        out = anyio.run(bench, url, names, args.repeat, None)
        release(backend)  # a server's background work must not slow the next backend's turn
        report["backends"][backend] = out["results"]
        for line in verdicts(backend, out["results"]):
            print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
