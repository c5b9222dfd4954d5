"""Purpose-built broken backends: each breaks one guarantee of the ``Backend`` protocol.

They wrap ``MemoryBackend`` (so everything else is right) and register the URL schemes
``nofence://``, ``halfcommit://`` and ``doubleclaim://`` through ``BrokenBackendsPlugin``, a pluggy
plugin a test registers on plait's plugin manager, exactly as a third-party backend would be found.
``test_suite_catches_broken.py`` checks that the conformance suite names each bug.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from plait.backends.base import ClaimedRun, Commit, StepTask
from plait.backends.memory import MemoryBackend
from plait.plugins import hookimpl


class NoFencingBackend(MemoryBackend):
    """``apply_commit`` ignores ``lease``: every commit is applied as if it were forced, so a
    worker whose lease expired (and was claimed by another) still gets its commit in."""

    async def apply_commit(self, c: Commit) -> bool:
        return await super().apply_commit(attrs.evolve(c, lease=None))


class HalfCommitBackend(MemoryBackend):
    """``apply_commit`` appends the events, consumes the inbox and updates the run record, then
    "crashes" before the effects (steps, timers, new runs, hooks, deliveries) and returns True."""

    async def apply_commit(self, c: Commit) -> bool:
        half = Commit(
            run_id=c.run_id,
            lease=c.lease,
            now=c.now,
            events=c.events,
            inbox_upto=c.inbox_upto,
            status=c.status,
            result=c.result,
            error=c.error,
            block_reason=c.block_reason,
            continued_to=c.continued_to,
            requeue=c.requeue,
        )
        return await super().apply_commit(half)


class DoubleClaimBackend(MemoryBackend):
    """Claims hand tasks out without keeping their lease: a claimed workflow or step task is
    claimable again at once, so two claimers get the same task."""

    async def claim_workflow_task(self, now: float, lease_seconds: float) -> ClaimedRun | None:
        got = await super().claim_workflow_task(now, lease_seconds)
        if got is not None:
            self._wf_lease[got.run.run_id] = now  # expires immediately
        return got

    async def claim_step_tasks(
        self, now: float, limit: int, lease_seconds: float
    ) -> list[StepTask]:
        tasks = await super().claim_step_tasks(now, limit, lease_seconds)
        for t in tasks:
            self._steps[(t.run_id, t.seq)].expires = None
        return tasks


BROKEN: dict[str, type[MemoryBackend]] = {
    "nofence": NoFencingBackend,
    "halfcommit": HalfCommitBackend,
    "doubleclaim": DoubleClaimBackend,
}


class BrokenBackendsPlugin:
    """Registers the broken backends' schemes (``nofence://`` ...)."""

    @staticmethod
    @hookimpl
    def plait_backend_schemes() -> dict[str, Callable[[str], Any]]:
        return {scheme: cls for scheme, cls in BROKEN.items()}
