"""Built-in observer plugins: register an instance with the plugin manager to use it.

```python
from plait.plugins import get_plugin_manager
from plait.plugins.observers import MetricsPlugin
metrics = MetricsPlugin()
get_plugin_manager().register(metrics)
```
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from .hookspecs import hookimpl

__all__ = ["MetricsPlugin", "TracingPlugin"]


class MetricsPlugin:
    """Counts history events by kind and step attempts by outcome, with step durations."""

    def __init__(self) -> None:
        self.events: Counter[str] = Counter()
        self.step_attempts: Counter[str] = Counter()
        self.step_seconds: dict[str, float] = {}

    @hookimpl
    def plait_run_event(self, run_id: str, workflow: str, event: Any) -> None:
        self.events[type(event).__name__] += 1

    @hookimpl
    def plait_step_attempt(
        self,
        run_id: str,
        seq: int,
        step: str,
        attempt: int,
        outcome: str,
        duration: float,
        error: Any,
    ) -> None:
        self.step_attempts[outcome] += 1
        self.step_seconds[step] = self.step_seconds.get(step, 0.0) + duration


class TracingPlugin:
    """Logs one line per history event and step attempt to the ``plait.trace`` logger."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.log = logger or logging.getLogger("plait.trace")

    @hookimpl
    def plait_run_event(self, run_id: str, workflow: str, event: Any) -> None:
        self.log.info("run %s %s %s", run_id, workflow, type(event).__name__)

    @hookimpl
    def plait_step_attempt(
        self,
        run_id: str,
        seq: int,
        step: str,
        attempt: int,
        outcome: str,
        duration: float,
        error: Any,
    ) -> None:
        self.log.info(
            "step %s#%d %s attempt %d %s in %.3fs%s",
            run_id,
            seq,
            step,
            attempt,
            outcome,
            duration,
            f": {error}" if error else "",
        )
