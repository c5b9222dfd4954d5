"""The ``Backend`` protocol and the records it stores.

A backend stores, orders and applies atomically; it decides nothing. Every event it appends was
built by the runtime; where an outcome depends on a uniqueness check (a child's key, a hook's
token, a resumed token) the runtime hands over both prepared outcomes and the backend picks one
inside the same atomic step. A backend never reads a clock: each time-dependent call takes
``now`` (epoch seconds) from the runtime, so virtual time works on every backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import attrs

from ..kernel.errors import ErrorInfo
from ..kernel.events import Event
from ..kernel.status import CLOSED_STATUSES, RunStatus

__all__ = [
    "CLOSED_STATUSES",
    "ErrorInfo",
    "RunStatus",
    "Backend",
    "EagerBackend",
    "RunRecord",
    "Delivery",
    "NewRun",
    "HookReg",
    "HookResume",
    "StepTask",
    "Timer",
    "Commit",
    "ClaimedRun",
    "InboxEntry",
    "BackendState",
    "BackendError",
    "SchemaError",
]


class BackendError(Exception):
    """A backend cannot do what was asked (bad URL, unreachable server, broken storage)."""


class SchemaError(BackendError):
    """The storage is not a plait store, or was written by a newer plait."""


@attrs.frozen
class RunRecord:
    """One run as stored. ``continued_to`` links a continue-as-new chain."""

    run_id: str
    workflow: str
    status: RunStatus
    created_at: float
    key: str | None = None
    parent_run_id: str | None = None
    parent_seq: int | None = None
    parent_close: str = "terminate"
    queue: str | None = None
    result: Any = None
    error: ErrorInfo | None = None
    closed_at: float | None = None
    continued_to: str | None = None
    block_reason: str | None = None

    @property
    def closed(self) -> bool:
        return self.status in CLOSED_STATUSES


@attrs.frozen
class Delivery:
    """Append ``event`` to run ``run_id``'s inbox (dropped if that run is closed or missing)."""

    run_id: str
    event: Event


@attrs.frozen
class NewRun:
    """Create ``record`` with ``inbox`` unless an open run holds its key.

    Exactly one of ``on_started`` / ``on_conflict`` is delivered, in the same atomic step.
    A ``record.run_id`` that already exists is left alone and neither is delivered.
    """

    record: RunRecord
    inbox: tuple[Event, ...]
    on_started: Delivery | None = None
    on_conflict: Delivery | None = None


@attrs.frozen
class HookReg:
    """Register ``token`` for (commit's run, ``seq``) unless an open hook holds it."""

    token: str
    seq: int
    on_conflict: Delivery


@attrs.frozen
class HookResume:
    """Deliver ``payload`` to the open hook holding ``token``: the backend appends
    ``HookReceived(hook_seq, payload)`` to its run's inbox and then ``on_delivered``, or only
    ``on_missing`` when no open hook has the token."""

    token: str
    payload: Any
    on_delivered: Delivery | None = None
    on_missing: Delivery | None = None


@attrs.frozen
class StepTask:
    """A step to run. ``(run_id, seq)`` identifies it; ``lease`` is set when claimed.

    Eager dispatch: in a ``Commit`` to a backend with ``supports_eager``, a step with a
    non-zero ``lease`` and a ``lease_expires`` is stored already leased to the committer with
    that token (not claimable before ``lease_expires``), so the committing worker runs it
    without a claim round trip.
    """

    run_id: str
    seq: int
    name: str
    args: list[Any]
    attempt: int = 1
    ready_at: float = 0.0
    lease: int = 0
    lease_expires: float | None = None

    @property
    def pre_leased(self) -> bool:
        """Whether a commit hands this step over already leased to the committer."""
        return bool(self.lease) and self.lease_expires is not None


@attrs.frozen
class Timer:
    """Deliver ``TimerFired(seq)`` to ``run_id`` at ``fire_at``."""

    run_id: str
    seq: int
    fire_at: float


@attrs.frozen
class InboxEntry:
    """One inbound event waiting in a run's inbox; ``id`` grows in append order."""

    id: int
    event: Event


@attrs.frozen
class ClaimedRun:
    """A leased workflow task: the run, the fencing ``lease`` token, and the inbox snapshot."""

    run: RunRecord
    lease: int
    inbox: tuple[InboxEntry, ...]
    history_length: int


@attrs.frozen
class Commit:
    """Everything one activation changes, applied all or nothing.

    ``lease`` must equal the run's current fencing token, else nothing is applied and
    ``apply_commit`` returns False. ``lease=None`` forces the commit (terminate): it fences out
    any in-flight activation. Closing a run (``status`` in ``CLOSED_STATUSES``) also releases
    its key and hook tokens and drops its pending step tasks, timers and workflow task.

    Effects apply in this order, which is observable: events appended; inbox prefix up to
    ``inbox_upto`` consumed; record fields updated (``status``, ``result``, ``error`` and
    ``continued_to`` only when given; ``block_reason`` always, so a commit without one clears
    it); steps and timers added, ``cancel_timers`` removed; ``dispose_hooks`` released, then
    ``hooks`` registered (so a token closed and reopened in one activation moves to the new
    hook); if closing, pending work dropped and key and tokens released (so a continue-as-new
    run below can take the key); ``new_runs`` created; ``hook_resumes``; ``deliveries`` (those
    to a closed run are dropped); lease released; the run requeued if its inbox is not empty.
    """

    run_id: str
    lease: int | None
    now: float
    events: tuple[Event, ...] = ()
    inbox_upto: int = 0
    status: RunStatus | None = None
    result: Any = None
    error: ErrorInfo | None = None
    block_reason: str | None = None
    continued_to: str | None = None
    steps: tuple[StepTask, ...] = ()
    timers: tuple[Timer, ...] = ()
    cancel_timers: tuple[int, ...] = ()
    new_runs: tuple[NewRun, ...] = ()
    hooks: tuple[HookReg, ...] = ()
    dispose_hooks: tuple[str, ...] = ()
    hook_resumes: tuple[HookResume, ...] = ()
    deliveries: tuple[Delivery, ...] = ()
    requeue: bool = True

    @property
    def delivers(self) -> bool:
        """Whether it may put events in inboxes (deliveries, new runs and their notices, hook
        conflicts, hook resumes): workflow tasks it can make ready besides its own run's."""
        return bool(self.deliveries or self.new_runs or self.hooks or self.hook_resumes)

    @property
    def unleased_steps(self) -> bool:
        """Whether it schedules a step anyone may claim (one not pre-leased to the committer)."""
        return any(not s.pre_leased for s in self.steps)


def check_start_commit(record: RunRecord, commit: Commit) -> None:
    """``create_run_and_commit``'s argument check: the commit must be the record's run's."""
    if commit.run_id != record.run_id:
        raise ValueError(
            f"the commit is for run {commit.run_id!r}, the record for {record.run_id!r}"
        )


@attrs.frozen
class BackendState:
    """What is queued, for idle detection and time skipping."""

    ready_workflow_tasks: int
    leased_workflow_tasks: int
    ready_steps: int
    leased_steps: int
    timers: int
    next_due: float | None


@runtime_checkable
class Backend(Protocol):
    """Storage and queues for plait. Every method is a coroutine; see each for its guarantee."""

    url: str

    async def open(self) -> None:
        """Connect and create or migrate the schema. Refuse foreign or newer stores clearly."""

    async def close(self) -> None:
        """Release connections. Idempotent."""

    async def create_run(
        self, record: RunRecord, inbox: Sequence[Event], now: float
    ) -> tuple[str, bool]:
        """Create a run with its first inbox events and a ready workflow task, atomically.

        Key idempotency: if an open run holds ``record.key``, create nothing and return
        ``(that run's id, False)``; else ``(record.run_id, True)``.
        """
        ...

    async def get_run(self, run_id: str) -> RunRecord | None:
        """The run, or None."""
        ...

    async def list_runs(
        self,
        *,
        status: RunStatus | None = None,
        workflow: str | None = None,
        parent: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[RunRecord]:
        """Runs matching every given filter, in creation order."""
        ...

    async def read_history(self, run_id: str) -> list[Event]:
        """The run's history in append order ([] for an unknown run)."""
        ...

    async def append_history(self, run_id: str, events: Sequence[Event]) -> None:
        """Append (meta) events to a run's history, whatever its status."""
        ...

    async def append_inbox(self, run_id: str, events: Sequence[Event], now: float) -> bool:
        """Append to an open run's inbox (FIFO) and queue its workflow task if none is.

        Returns False, appending nothing, if the run is missing or closed.
        """
        ...

    async def claim_workflow_task(self, now: float, lease_seconds: float) -> ClaimedRun | None:
        """Lease the first ready workflow task (by ready time, then enqueue order) whose run
        has no live lease; an expired lease counts as none. Each claim bumps the run's fencing
        token. Two claimers never hold the same run at once."""
        ...

    async def renew_workflow_lease(
        self, run_id: str, lease: int, now: float, seconds: float
    ) -> bool:
        """Extend a held lease; False if ``lease`` is stale."""
        ...

    async def apply_commit(self, commit: Commit) -> bool:
        """Apply ``commit`` atomically with fencing (see ``Commit``). After it, the run's
        workflow task is released and queued again when its inbox is not empty (or when
        ``commit.requeue`` is False, left unqueued). False if fenced out."""
        ...

    async def requeue_workflow_task(self, run_id: str, now: float) -> bool:
        """Queue the workflow task of an open run (used to retry blocked runs)."""
        ...

    async def claim_step_tasks(
        self, now: float, limit: int, lease_seconds: float
    ) -> list[StepTask]:
        """Lease up to ``limit`` ready step tasks (ready time, then enqueue order); an expired
        lease makes a task claimable again (redelivery). Each returned task carries its new
        ``lease`` token; no task is handed to two live claimers."""
        ...

    async def heartbeat_step(
        self, run_id: str, seq: int, lease: int, now: float, seconds: float
    ) -> bool:
        """Extend a step lease; False if the lease is stale or the task is gone."""
        ...

    async def finish_step(
        self, run_id: str, seq: int, lease: int, outcome: Event, now: float
    ) -> bool:
        """Delete the step task and deliver ``outcome`` to its run's inbox, atomically, exactly
        once: False (nothing changed) if the task is gone or ``lease`` is stale."""
        ...

    async def retry_step(
        self, run_id: str, seq: int, lease: int, attempt: int, ready_at: float
    ) -> bool:
        """Release the step for another attempt at ``ready_at``; False if the lease is stale."""
        ...

    async def fire_due_timers(self, now: float, limit: int = 1000) -> int:
        """Deliver ``TimerFired`` for timers due at ``now`` (by fire time, then creation
        order) to their runs' inboxes, deleting them, atomically per timer. Returns how many."""
        ...

    async def resume_hook(self, token: str, payload: Any, now: float) -> str | None:
        """Append ``HookReceived`` to the inbox of the run holding open hook ``token``; its
        run id, or None if no open hook has the token."""
        ...

    async def state(self, now: float) -> BackendState:
        """Counts of queued work and the earliest future due time (timer, retry, ready time or
        lease expiry), for idle detection and time skipping."""
        ...

    def notify(self) -> None:
        """Wake local waiters (``wait``) after a change made outside this backend object."""

    async def wait(self, timeout: float) -> None:
        """Return when new work may exist (a local change, a server notification) or after
        ``timeout`` seconds of real time, whichever is first."""
        ...


@runtime_checkable
class EagerBackend(Backend, Protocol):
    """The optional eager-dispatch extension of ``Backend``.

    A backend whose round trips are costly implements it and sets ``supports_eager = True``:
    it stores steps that arrive pre-leased in a commit (see ``StepTask``), and it can finish a
    step and claim that run's workflow task in one call. The runtime then runs the steps it
    schedules without a claim, and the activation that follows a step without one either: two
    round trips instead of four per step.
    """

    supports_eager: bool

    async def finish_step_and_claim(
        self, run_id: str, seq: int, lease: int, outcome: Event, now: float, lease_seconds: float
    ) -> tuple[bool, ClaimedRun | None]:
        """Optional (when ``supports_eager``): ``finish_step`` and then, in the same atomic
        step, claim that run's workflow task exactly as ``claim_workflow_task`` would if it is
        ready and has no live lease. ``(False, None)`` and nothing changed when the finish is
        refused; ``(True, None)`` when the run's task cannot be claimed now."""
        ...


@runtime_checkable
class SpeculativeBackend(EagerBackend, Protocol):
    """The optional speculative-activation extension of ``EagerBackend``.

    A worker that ran a run's only outstanding step already knows the run's next activation:
    it feeds the step's outcome to its cached machine and sends the resulting commit together
    with the step's finish. When nothing else happened to the run meanwhile, a step then costs
    one round trip instead of two. A backend implements it and sets
    ``supports_speculation = True``.
    """

    supports_speculation: bool

    async def finish_step_and_commit(
        self, run_id: str, seq: int, lease: int, commit: Commit, history_length: int
    ) -> bool:
        """Optional (when ``supports_speculation``): finish step ``(run_id, seq)`` held with
        ``lease`` and apply ``commit`` to ``run_id`` in one atomic step, or change nothing.

        It applies only when the run is *quiet*: open, its inbox empty, its workflow task
        under no live lease, and its history exactly ``history_length`` events long. Then the
        step task is deleted (its outcome is the first of ``commit.events``, going straight
        to the history instead of the inbox) and ``commit`` is applied as ``apply_commit``
        applies a commit with ``lease=None``: the fencing token advances, so a stale holder of
        the run's lease is fenced out. ``commit.lease`` and ``commit.inbox_upto`` are ignored.
        False, with nothing changed, when the step lease is stale or the run is not quiet: the
        caller then finishes the step the ordinary way."""
        ...


@runtime_checkable
class EagerStartBackend(Backend, Protocol):
    """The optional eager-start extension of ``Backend``.

    An engine whose own worker has a free slot for the workflow creates a run already claimed
    for that worker, which activates it at once: no claim round trip and no wake-up of the
    worker's loop (Temporal's "eager workflow start"). A backend implements it and sets
    ``supports_eager_start = True``.
    """

    supports_eager_start: bool

    async def create_run_and_claim(
        self, record: RunRecord, inbox: Sequence[Event], now: float, lease_seconds: float
    ) -> tuple[str, bool, ClaimedRun | None]:
        """Optional (when ``supports_eager_start``): ``create_run``, and when it created the
        run, claim that run's workflow task in the same atomic step exactly as
        ``claim_workflow_task`` would (the fencing token advances; leased until
        ``now + lease_seconds``; the claim's inbox holds ``inbox`` with their entry ids and its
        ``history_length`` is 0). ``(run_id, True, claim)``; or, when nothing was created
        (the key is held, the id exists), ``create_run``'s answer with None."""
        ...


@runtime_checkable
class StartCommitBackend(Backend, Protocol):
    """The optional start-with-commit extension of ``Backend``.

    A new run's first activation needs nothing from storage: its only input is its
    ``RunStarted``. An engine whose own worker can take the workflow runs that activation before
    the run exists and stores both at once: the run is created with its first commit already
    applied, and the steps that commit leases to the worker run at once. Starting a run then
    costs one round trip, where eager start (``create_run_and_claim``) costs two. A backend
    implements it and sets ``supports_start_commit = True``.
    """

    supports_start_commit: bool

    async def create_run_and_commit(self, record: RunRecord, commit: Commit) -> tuple[str, bool]:
        """Optional (when ``supports_start_commit``): ``create_run(record, (), commit.now)``
        and, when it created the run, apply ``commit`` to it in the same atomic step as
        ``apply_commit`` applies a commit with ``lease=None`` (``commit.lease`` and
        ``commit.inbox_upto`` are ignored). The history is then ``commit.events`` (a
        ``RunStarted`` first), the inbox stays empty and no workflow task is queued unless the
        commit delivers to the run itself. ``(run_id, True)``; or, when nothing was created
        (the key is held, the id exists), ``create_run``'s answer, with nothing written.
        ``ValueError`` when ``commit.run_id`` is not ``record.run_id``."""
        ...
