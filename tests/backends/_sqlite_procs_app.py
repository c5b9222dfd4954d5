"""Workflows for the multi-process SQLite tests, and a worker process entry point:
``python _sqlite_procs_app.py URL LOG STOPFILE STEP_LEASE MODE``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio

import plait

LOG = Path(os.environ.get("PLAIT_PROCS_LOG", "/dev/null"))
MODE = os.environ.get("PLAIT_PROCS_MODE", "fast")


@plait.step(name="procs.work")
async def work(i: int) -> int:
    info = plait.step_info()
    with LOG.open("a") as f:
        f.write(f"{os.getpid()} {info.run_id}:{info.seq} attempt={info.attempt}\n")
    if MODE == "hang":
        await anyio.sleep(3600)  # killed with SIGKILL while here
    # Long enough that one process cannot drain the batch before the other polls.
    await anyio.sleep(0.02)
    return i * 2


@plait.workflow(name="procs.child")
async def child(i: int) -> int:
    return await work(i)


@plait.workflow(name="procs.parent")
async def parent(n: int) -> int:
    return sum(await plait.all(*(plait.child(child, i) for i in range(n))))


@plait.workflow(name="procs.single")
async def single() -> int:
    return await work(21)


def main(url: str, stop: str, step_lease: float) -> None:
    async def run() -> None:
        async with plait.Engine(url) as engine:
            async with engine.worker(
                [child, parent, single],
                [work],
                concurrency=16,
                step_lease_seconds=step_lease,
                poll_interval=0.05,
            ):
                print("ready", flush=True)
                while not Path(stop).exists():
                    await anyio.sleep(0.05)

    anyio.run(run)


if __name__ == "__main__":
    os.environ.setdefault("PLAIT_PROCS_LOG", sys.argv[2])
    main(sys.argv[1], sys.argv[3], float(sys.argv[4]))
