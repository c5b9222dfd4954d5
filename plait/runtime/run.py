"""``plait.run``: start a workflow, run a worker until it closes, return its result."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import anyio

from ..kernel.registry import StepFunction, WorkflowFunction
from .engine import Engine


def run(
    workflow: WorkflowFunction,
    *args: Any,
    backend: str = "memory://",
    key: str | None = None,
    timeout: float | None = None,
    workflows: Iterable[WorkflowFunction] | None = None,
    steps: Iterable[StepFunction] | None = None,
    concurrency: int = 64,
) -> Any:
    """One synchronous call: open ``backend``, start ``workflow(*args)``, run a worker until
    the run closes and return its result (or raise ``RunFailed`` and friends)."""

    async def main() -> Any:
        async with Engine(backend) as engine:
            handle = await engine.start(workflow, *args, key=key)
            async with engine.worker(workflows, steps, concurrency=concurrency):
                return await handle.result(timeout=timeout)

    return anyio.run(main)
