"""The anyio runtime: ``Engine`` (client), ``Worker``, clocks, and ``plait.run``."""

from ._context import StepInfo, engine, step_info
from .clock import Clock, RealClock, VirtualClock
from .engine import Engine, PayloadTooLarge, RunHandle, RunInfo, RunNotFound
from .run import run
from .worker import Worker

__all__ = [
    "Clock",
    "Engine",
    "PayloadTooLarge",
    "RealClock",
    "RunHandle",
    "RunInfo",
    "RunNotFound",
    "StepInfo",
    "VirtualClock",
    "Worker",
    "engine",
    "run",
    "step_info",
]
