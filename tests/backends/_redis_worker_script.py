"""A worker process for ``test_redis.py``: ``python _redis_worker_script.py URL STOPFILE``.

Prints ``ready`` once its worker runs, works until STOPFILE exists, then prints its worker's
stats as JSON and exits. The workflows live here too (importable without side effects), so the
test process can start them by name and replay their histories.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import anyio

import plait


@plait.step(name="redistest.double")
async def double(x: int) -> int:
    return 2 * x


@plait.step(name="redistest.add")
async def add(a: int, b: int) -> int:
    return a + b


@plait.step(name="redistest.slow_inc")
async def slow_inc(x: int) -> int:
    await anyio.sleep(0.02)
    return x + 1


@plait.workflow(name="redistest.child")
async def child(i: int) -> int:
    y = await double(i)
    return await add(y, 1)


@plait.workflow(name="redistest.fan")
async def fan(n: int) -> int:
    """Fan-out of three children (one with a key), fan-in, one more step."""
    results = await plait.all(
        plait.child(child, 3 * n, key=f"redistest-{n}"),
        plait.child(child, 3 * n + 1),
        plait.child(child, 3 * n + 2),
    )
    return await add(sum(results), 0)


@plait.workflow(name="redistest.chain")
async def chain(n: int) -> int:
    x = 0
    for _ in range(n):
        x = await slow_inc(x)
    return x


WORKFLOWS = [child, fan, chain]
STEPS = [double, add, slow_inc]


def fan_result(n: int) -> int:
    """What ``fan(n)`` returns."""
    return sum(2 * i + 1 for i in (3 * n, 3 * n + 1, 3 * n + 2))


async def main(url: str, stop: Path) -> None:
    async with plait.Engine(url) as engine:
        async with engine.worker(WORKFLOWS, STEPS, concurrency=16, poll_interval=0.5) as w:
            print("ready", flush=True)
            while not stop.exists():
                await anyio.sleep(0.05)
            print(json.dumps(w.stats), flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    anyio.run(main, sys.argv[1], Path(sys.argv[2]))
