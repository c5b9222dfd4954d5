"""plait's pluggy hook specifications. A plugin implements any of them with ``@hookimpl``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

PROJECT = "plait"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def plait_backend_schemes() -> dict[str, Callable[[str], Any]]:  # type: ignore[empty-body]
    """Return URL scheme -> factory(url) -> Backend. Later plugins cannot shadow a scheme."""


@hookspec
def plait_run_event(run_id: str, workflow: str, event: Any) -> None:
    """Observe each event appended to a run's history (after its commit succeeded)."""


@hookspec
def plait_step_attempt(
    run_id: str,
    seq: int,
    step: str,
    attempt: int,
    outcome: str,
    duration: float,
    error: Any,
) -> None:
    """Observe one step attempt: ``outcome`` is "completed", "retrying" or "failed"."""
