#!/usr/bin/env python3
"""Kernel replay throughput: how many history events per second ``Machine(fn, history)`` replays.

Each workload first builds a real history by driving a ``plait.kernel.Machine`` live with a tiny
synchronous driver (steps "run" by calling their function, timers fire as soon as no step is
pending), then times a fresh ``Machine(fn, history)`` several times. That is the cost a worker
pays on a sticky-cache miss (not counting the JSON decode of the stored history).

Shapes:

* ``sequential``: one step after another; each step adds ``StepCompleted``, ``Activated`` and
  ``StepScheduled`` (3 events, one activation and one code resumption per step).
* ``fanout``: rounds of ``plait.all`` over ``width`` steps (completions arrive in shuffled
  batches of 50), then ``plait.all`` over ``width // 10`` timers of mixed durations, then a
  ``plait.wait_for(step, 60)`` whose step wins (its timer is cancelled).

    python benchmarks/kernel_replay.py                  # ~10,000 events per shape, 7 runs
    python benchmarks/kernel_replay.py --json           # the same, as JSON on stdout
    python benchmarks/kernel_replay.py --profile        # plus a cProfile of one replay per shape
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

try:
    import plait
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import plait

from plait.kernel import Machine, codec
from plait.kernel import commands as cmd
from plait.kernel import events as ev

TARGET_EVENTS_PER_SECOND = 100_000
BATCH = 50  # fan-out completions delivered per activation

# -- workflows -------------------------------------------------------------------------------


@plait.step(name="bench.add")
def add(a: int, b: int) -> int:
    return a + b


@plait.step(name="bench.work")
def work(r: int, i: int) -> dict[str, int]:
    return {"round": r, "item": i, "value": r * 1_000_003 + i}


@plait.workflow(name="bench.sequential")
async def sequential(n: int) -> int:
    total = 0
    for i in range(n):
        total = await add(total, i)
    return total


@plait.workflow(name="bench.fanout")
async def fanout(rounds: int, width: int) -> int:
    checksum = 0
    for r in range(rounds):
        results = await plait.all(*(work(r, i) for i in range(width)))
        checksum += sum(x["value"] for x in results) % 1_000_000_007
        await plait.all(*(plait.sleep(1 + i % 7) for i in range(max(1, width // 10))))
        last = await plait.wait_for(work(r, width), 60)
        checksum += last["item"]
    return checksum


STEPS: dict[str, Callable[..., Any]] = {s.name: s.fn for s in (add, work)}

# -- a tiny synchronous driver -----------------------------------------------------------------


def drive(
    wf: Any, args: list[Any], *, batch: int = BATCH, seed: int = 0, run_id: str = "bench-run"
) -> list[ev.Event]:
    """Run ``wf`` to completion on a live ``Machine``; return its history.

    Pending steps complete in shuffled batches of ``batch`` (one activation per batch); timers
    fire, grouped by due time, only when no step is pending; cancelled timers never fire.
    """
    rng = random.Random(seed)
    now = 1_800_000_000.0
    m = Machine(wf, [])
    start = ev.RunStarted(run_id=run_id, workflow=wf.name, args=args, seed=f"seed-{seed}")
    commands = m.activate([start], time=now)
    steps: dict[int, cmd.ScheduleStep] = {}
    timers: dict[int, cmd.StartTimer] = {}
    while not m.closed:
        for c in commands:
            if isinstance(c, cmd.ScheduleStep):
                steps[c.seq] = c
            elif isinstance(c, cmd.StartTimer):
                timers[c.seq] = c
            elif isinstance(c, cmd.CancelTimer):
                timers.pop(c.timer_seq, None)
        inbound: list[ev.Event] = []
        if steps:
            chosen = list(steps)
            rng.shuffle(chosen)
            for seq in chosen[:batch]:
                c = steps.pop(seq)
                result = codec.encode(STEPS[c.name](*c.args))
                inbound.append(ev.StepCompleted(seq, result))
            now += 0.001
        elif timers:
            due = min(t.fire_at for t in timers.values())
            for seq in [s for s, t in timers.items() if t.fire_at == due]:
                del timers[seq]
                inbound.append(ev.TimerFired(seq))
            now = max(now, due)
        else:
            raise RuntimeError(f"run is stuck: status {m.status}, nothing pending")
        commands = m.activate(inbound, time=now)
    if m.status != plait.RunStatus.COMPLETED:
        raise RuntimeError(f"run ended {m.status}: {m.error}")
    return m.history


def build_sequential(events: int = 10_000) -> tuple[Any, list[ev.Event]]:
    """A history of about ``events`` events: ``(events - 3) // 3`` sequential steps."""
    n = max(1, (events - 3) // 3)
    return sequential, drive(sequential, [n])


def _fanout_round_events(width: int) -> int:
    timers = max(1, width // 10)
    # steps + completions + their batches; timers + fired + 7 due-time batches;
    # wait_for: StepScheduled, TimerStarted, StepCompleted, Activated, TimerCancelled.
    return 2 * width + math.ceil(width / BATCH) + 2 * timers + min(7, timers) + 5


def build_fanout(events: int = 10_000, width: int = 1_000) -> tuple[Any, list[ev.Event]]:
    """A history of about ``events`` events: rounds of a ``width``-wide fan-out, timers, a race."""
    width = max(2, min(width, events // 10))
    rounds = max(1, round(events / _fanout_round_events(width)))
    return fanout, drive(fanout, [rounds, width])


SHAPES: dict[str, Callable[[int], tuple[Any, list[ev.Event]]]] = {
    "sequential": build_sequential,
    "fanout": build_fanout,
}

# -- measurement -----------------------------------------------------------------------------


def replay(wf: Any, history: Sequence[ev.Event]) -> Machine:
    """Replay ``history`` on a fresh machine (what is timed)."""
    return Machine(wf, history)


def measure(wf: Any, history: list[ev.Event], runs: int = 7) -> dict[str, Any]:
    """Time ``runs`` replays of ``history``; check that each reproduces it exactly."""
    timings: list[float] = []
    for _ in range(runs):
        gc.collect()
        t0 = time.perf_counter()
        m = replay(wf, history)
        t1 = time.perf_counter()
        if m.history != history or m.status != plait.RunStatus.COMPLETED:
            raise AssertionError("replay did not reproduce the recorded history")
        timings.append(t1 - t0)
    n = len(history)
    median = statistics.median(timings)
    best = min(timings)
    return {
        "events": n,
        "activations": sum(1 for e in history if type(e) is ev.Activated),
        "runs": runs,
        "median_s": median,
        "best_s": best,
        "median_events_per_s": n / median,
        "best_events_per_s": n / best,
    }


def profile(wf: Any, history: list[ev.Event], top: int = 25) -> str:
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    replay(wf, history)
    prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    return out.getvalue()


def environment() -> dict[str, Any]:
    import os

    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000, help="history size per shape")
    parser.add_argument("--runs", type=int, default=7, help="timed replays per shape")
    parser.add_argument(
        "--shape", action="append", choices=sorted(SHAPES), help="only these shapes"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--profile", action="store_true", help="cProfile one replay per shape")
    opts = parser.parse_args(argv)

    results: dict[str, dict[str, Any]] = {}
    profiles: dict[str, str] = {}
    for name in opts.shape or list(SHAPES):
        wf, history = SHAPES[name](opts.events)
        results[name] = measure(wf, history, opts.runs)
        if opts.profile:
            profiles[name] = profile(wf, history)

    if opts.json:
        doc = {
            "benchmark": "kernel_replay",
            "target_events_per_s": TARGET_EVENTS_PER_SECOND,
            "environment": environment(),
            "results": results,
        }
        print(json.dumps(doc, indent=2))
    else:
        env = environment()
        print(f"kernel replay — Python {env['python']} on {env['machine']}, {env['cpus']} CPUs")
        header = f"{'shape':<12}{'events':>8}{'acts':>7}{'runs':>6}"
        header += f"{'median ms':>11}{'median ev/s':>13}{'best ev/s':>12}"
        print(header)
        print("-" * len(header))
        for name, r in results.items():
            print(
                f"{name:<12}{r['events']:>8}{r['activations']:>7}{r['runs']:>6}"
                f"{r['median_s'] * 1e3:>11.1f}{r['median_events_per_s']:>13,.0f}"
                f"{r['best_events_per_s']:>12,.0f}"
            )
        slow = [
            n for n, r in results.items() if r["median_events_per_s"] < TARGET_EVENTS_PER_SECOND
        ]
        target = f"{TARGET_EVENTS_PER_SECOND:,} events/s"
        print(f"target {target}: " + (f"MISSED by {', '.join(slow)}" if slow else "met"))
    for name, text in profiles.items():
        print(f"\n== profile: {name} ==\n{text}", file=sys.stderr if opts.json else sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
