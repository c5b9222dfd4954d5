"""Clocks. All time in plait's runtime comes from one of these, never from ``time`` directly."""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["Clock", "RealClock", "VirtualClock"]


class Clock(Protocol):
    """Epoch seconds. ``virtual`` clocks only move when told to."""

    virtual: bool

    def now(self) -> float: ...


class RealClock:
    virtual = False

    def now(self) -> float:
        return time.time()


class VirtualClock:
    """Stands still until ``advance_to``; used by the time-skipping environment."""

    virtual = True

    def __init__(self, start: float = 1_767_225_600.0) -> None:  # 2026-01-01T00:00:00Z
        self._now = float(start)

    def now(self) -> float:
        return self._now

    def advance_to(self, t: float) -> None:
        if t > self._now:
            self._now = float(t)
