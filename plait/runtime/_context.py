"""What a running step can see: ``plait.step_info()`` and ``plait.engine()``."""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING

import attrs

from ..kernel.errors import WorkflowError

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["StepInfo", "step_info", "engine"]


@attrs.frozen
class StepInfo:
    """The current step attempt. ``idempotency_key`` is stable across attempts and workers."""

    run_id: str
    seq: int
    step: str
    attempt: int
    idempotency_key: str
    deadline: float | None


_STEP: ContextVar[StepInfo | None] = ContextVar("plait_step", default=None)
_ENGINE: ContextVar[Engine | None] = ContextVar("plait_engine", default=None)


def step_info() -> StepInfo:
    """The current step attempt's info; ``WorkflowError`` outside a step."""
    info = _STEP.get()
    if info is None:
        raise WorkflowError("plait.step_info() can only be called inside a running step")
    return info


def engine() -> Engine:
    """The engine running the current step (to start runs or resume hooks from a step)."""
    eng = _ENGINE.get()
    if eng is None:
        raise WorkflowError("plait.engine() can only be called inside a running step")
    return eng
