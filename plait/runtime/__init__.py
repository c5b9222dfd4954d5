"""The anyio runtime: ``Engine`` (client), ``Worker``, clocks, and ``plait.run``."""

from . import _context
from ._context import StepInfo, step_info
from .clock import Clock, RealClock, VirtualClock
from .engine import Engine, PayloadTooLarge, RunHandle, RunInfo, RunNotFound
from .run import run
from .worker import Worker

# Importing the submodule ``.engine`` binds it as this package's attribute ``engine``; the
# public ``engine`` is the step-context function (``plait.engine()``), so bind it last.
engine = _context.engine

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
