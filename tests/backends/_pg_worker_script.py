"""A worker process for ``test_postgres.py``: ``python _pg_worker_script.py URL STOPFILE``.

Prints ``ready`` once its worker runs, works until STOPFILE exists, then prints its worker's
stats as JSON and exits.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _pg_workflows as wf  # noqa: E402

import plait  # noqa: E402


async def main(url: str, stop: Path) -> None:
    async with plait.Engine(url) as engine:
        async with engine.worker(wf.WORKFLOWS, wf.STEPS, concurrency=16, poll_interval=0.5) as w:
            print("ready", flush=True)
            while not stop.exists():
                await anyio.sleep(0.05)
            print(json.dumps(w.stats), flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    anyio.run(main, sys.argv[1], Path(sys.argv[2]))
