"""Run statuses."""

from __future__ import annotations

import enum

__all__ = ["RunStatus", "CLOSED_STATUSES"]


class RunStatus(enum.StrEnum):
    """Where a run is. A ``StrEnum``, so ``info.status == "completed"`` holds."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TERMINATED = "terminated"
    CONTINUED_AS_NEW = "continued_as_new"
    BLOCKED = "blocked"


CLOSED_STATUSES: frozenset[RunStatus] = frozenset(
    {
        RunStatus.COMPLETED,
        RunStatus.FAILED,
        RunStatus.CANCELLED,
        RunStatus.TERMINATED,
        RunStatus.CONTINUED_AS_NEW,
    }
)
