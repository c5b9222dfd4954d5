"""Backends: the ``Backend`` protocol and its implementations, one module each."""

from .base import (
    Backend,
    BackendError,
    BackendState,
    ClaimedRun,
    Commit,
    Delivery,
    EagerBackend,
    HookReg,
    HookResume,
    InboxEntry,
    NewRun,
    RunRecord,
    SchemaError,
    SpeculativeBackend,
    StepTask,
    Timer,
)

__all__ = [
    "Backend",
    "BackendError",
    "BackendState",
    "EagerBackend",
    "ClaimedRun",
    "Commit",
    "Delivery",
    "HookReg",
    "HookResume",
    "InboxEntry",
    "NewRun",
    "RunRecord",
    "SchemaError",
    "SpeculativeBackend",
    "StepTask",
    "Timer",
]
