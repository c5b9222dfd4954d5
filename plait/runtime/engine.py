"""``Engine``: the client. Starts runs, reads them, delivers hooks and signals, cancels and
terminates, and makes workers. The backend is chosen by URL through pluggy."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from ..backends.base import Backend, Commit, RunRecord
from ..kernel import events as ev
from ..kernel.codec import canonical_json, decode, encode, encode_args
from ..kernel.errors import (
    HookNotFound,
    PlaitError,
    RunCancelled,
    RunFailed,
    RunTerminated,
    Timeout,
)
from ..kernel.registry import StepFunction, WorkflowFunction
from ..kernel.status import RunStatus
from ..plugins.manager import Observers, backend_from_url
from ._commit import parent_notice
from .clock import Clock, RealClock

if TYPE_CHECKING:
    from .worker import Worker

__all__ = ["Engine", "RunHandle", "RunInfo", "RunNotFound", "PayloadTooLarge"]

RunInfo = RunRecord

_EAGER_OPEN_MAX = 10_000
"""What ``Engine.get_run`` returns: run_id, workflow, key, status, parent_run_id, result (JSON),
error (``ErrorInfo``), created_at, closed_at (epoch seconds), and ``continued_to``."""


class RunNotFound(PlaitError, LookupError):
    """No run has this id."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"no run with id {run_id!r}")
        self.run_id = run_id


class PayloadTooLarge(PlaitError, ValueError):
    """An encoded payload exceeds the engine's ``max_payload_bytes``; nothing was written."""


class _Driver(Protocol):
    async def wait_closed(self, run_id: str, timeout: float | None) -> RunRecord: ...


class RunHandle:
    """A started run: ``run_id`` and ``await result(timeout=None)``."""

    def __init__(self, engine: Engine, run_id: str, hint: Any = Any) -> None:
        self.engine = engine
        self.run_id = run_id
        self._hint = hint

    async def result(self, timeout: float | None = None) -> Any:
        """The run's value (following continue-as-new), or raise ``RunFailed``,
        ``RunCancelled``, ``RunTerminated``, or ``plait.Timeout``."""
        rec = await self.engine._wait_closed(self.run_id, timeout)
        if rec.status is RunStatus.COMPLETED:
            return decode(rec.result, self._hint, f"result of run {rec.run_id}")
        if rec.status is RunStatus.FAILED:
            assert rec.error is not None
            raise RunFailed(rec.run_id, rec.error)
        if rec.status is RunStatus.CANCELLED:
            raise RunCancelled(rec.run_id)
        raise RunTerminated(rec.run_id)

    def __repr__(self) -> str:
        return f"<RunHandle {self.run_id}>"


def _wf_name(wf: Any) -> tuple[str, Callable[..., Any] | None, Any]:
    if isinstance(wf, str):
        return wf, None, Any
    if isinstance(wf, WorkflowFunction):
        return wf.name, wf.fn, wf.result_hint
    raise TypeError(f"{wf!r} is not a @plait.workflow function or a workflow name")


class Engine:
    """The client of one backend (``"sqlite:///runs.db"``, ``"memory://"``, or an instance).

    ``async with engine:`` opens the backend and creates its schema if missing.
    """

    def __init__(
        self,
        backend: str | Backend = "memory://",
        *,
        clock: Clock | None = None,
        id_seed: str | None = None,
        max_payload_bytes: int = 2 * 1024 * 1024,
        observers: Observers | None = None,
        close_poll_interval: float = 0.25,
    ) -> None:
        self.backend: Backend = backend_from_url(backend) if isinstance(backend, str) else backend
        self.clock: Clock = clock or RealClock()
        self.max_payload_bytes = max_payload_bytes
        self.close_poll_interval = close_poll_interval
        self.observers = observers or Observers()
        self._id_seed = id_seed
        self._ids = 0
        self._driver: _Driver | None = None
        self._opened = 0
        self._closed_waiters: dict[str, anyio.Event] = {}
        self._workers: list[Worker] = []  # running local workers that take eager starts
        # Runs started eagerly whose local close has not been seen (see ``_wait_closed``).
        self._eager_open: OrderedDict[str, bool] = OrderedDict()

    # -- lifecycle -----------------------------------------------------------------------------

    async def open(self) -> None:
        if self._opened == 0:
            await self.backend.open()
        self._opened += 1

    async def close(self) -> None:
        if self._opened > 0:
            self._opened -= 1
            if self._opened == 0:
                await self.backend.close()

    async def __aenter__(self) -> Engine:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- ids -----------------------------------------------------------------------------------

    def _derived(self, kind: str) -> str:
        self._ids += 1
        digest = hashlib.sha256(f"{self._id_seed}/{kind}/{self._ids}".encode()).digest()
        return str(uuid.UUID(bytes=digest[:16], version=4))

    def new_run_id(self) -> str:
        return self._derived("run") if self._id_seed is not None else str(uuid.uuid4())

    def new_seed(self) -> str:
        if self._id_seed is not None:
            return self._derived("seed").replace("-", "")
        return secrets.token_hex(16)

    def check_size(self, data: Any, what: str) -> None:
        kind = type(data)
        if data is None or kind is bool or kind is float:
            return  # a few bytes
        if (kind is int or kind is str) and len(str(data)) * 6 + 2 <= self.max_payload_bytes:
            return  # under the limit however it is escaped (at most 6 bytes per character)
        size = len(canonical_json(data).encode())
        if size > self.max_payload_bytes:
            raise PayloadTooLarge(
                f"{what} is {size} bytes encoded, over the limit of {self.max_payload_bytes}"
            )

    # -- client API ----------------------------------------------------------------------------

    async def start(
        self, workflow: Any, *args: Any, key: str | None = None, queue: str | None = None
    ) -> RunHandle:
        """Start a run. With ``key``: while an open run holds the key, return that run."""
        name, fn, hint = _wf_name(workflow)
        data = encode_args(fn, args)  # TypeError naming the bad argument; nothing written
        self.check_size(data, f"arguments of {name}")
        now = self.clock.now()
        run_id = self.new_run_id()
        record = RunRecord(
            run_id=run_id,
            workflow=name,
            status=RunStatus.PENDING,
            created_at=now,
            key=key,
            queue=queue,
        )
        started = ev.RunStarted(
            run_id=run_id, workflow=name, args=data, key=key, seed=self.new_seed(), time=now
        )
        worker = next((w for w in self._workers if w._takes(name)), None)
        if worker is None:
            actual, _created = await self.backend.create_run(record, (started,), now)
            return RunHandle(self, actual, hint)
        backend: Any = self.backend
        first = worker._first_activation(record, started, now)
        if first is not None:
            # Start with commit: the run is created with its first activation applied, and
            # the steps that activation leased to the worker run at once.
            actual, created = await backend.create_run_and_commit(record, first[1])
            if created:
                self._opened_here(actual)
                await worker._start_committed(record, *first)
            return RunHandle(self, actual, hint)
        # Eager start: created already claimed for a local worker with a free slot.
        actual, _created, claim = await backend.create_run_and_claim(
            record, (started,), now, worker.lease_seconds
        )
        if claim is not None:
            if worker._adopt(claim):
                self._opened_here(actual)
            else:  # it began to stop meanwhile
                await self.backend.apply_commit(Commit(run_id=actual, lease=claim.lease, now=now))
        return RunHandle(self, actual, hint)

    def _opened_here(self, run_id: str) -> None:
        """A run started eagerly: open, held by a local worker (see ``_wait_closed``)."""
        self._eager_open[run_id] = True
        if len(self._eager_open) > _EAGER_OPEN_MAX:  # runs closed elsewhere, never read
            self._eager_open.popitem(last=False)

    def handle(self, run_id: str, workflow: Any = None) -> RunHandle:
        """A handle for an existing run (pass the workflow to decode its result)."""
        hint = _wf_name(workflow)[2] if workflow is not None else Any
        return RunHandle(self, run_id, hint)

    async def get_run(self, run_id: str) -> RunInfo:
        rec = await self.backend.get_run(run_id)
        if rec is None:
            raise RunNotFound(run_id)
        return rec

    async def list_runs(
        self,
        *,
        status: RunStatus | str | None = None,
        workflow: str | None = None,
        parent: str | None = None,
        page_size: int = 200,
    ) -> AsyncIterator[RunInfo]:
        st = RunStatus(status) if status is not None else None
        offset = 0
        while True:
            page = await self.backend.list_runs(
                status=st, workflow=workflow, parent=parent, limit=page_size, offset=offset
            )
            for rec in page:
                yield rec
            if len(page) < page_size:
                return
            offset += page_size

    async def history(self, run_id: str) -> list[ev.Event]:
        await self.get_run(run_id)
        return await self.backend.read_history(run_id)

    async def resume_hook(self, token: str, payload: Any = None) -> str:
        """Deliver ``payload`` to the open hook ``token``; ``HookNotFound`` if none. Returns
        the run id that received it."""
        data = encode(payload, Any, "hook payload")
        self.check_size(data, "hook payload")
        run_id = await self.backend.resume_hook(token, data, self.clock.now())
        if run_id is None:
            raise HookNotFound(token)
        return run_id

    async def signal(self, run_id: str, name: str, payload: Any = None) -> None:
        """Send signal ``name`` to an open run (buffered until the workflow waits for it)."""
        data = encode(payload, Any, f"signal {name!r} payload")
        self.check_size(data, f"signal {name!r} payload")
        ok = await self.backend.append_inbox(
            run_id, (ev.SignalReceived(name, data),), self.clock.now()
        )
        if not ok:
            await self.get_run(run_id)  # RunNotFound when missing
            raise PlaitError(f"run {run_id} is closed; signal {name!r} was not delivered")

    async def cancel(self, run_id: str, reason: str = "") -> bool:
        """Ask a run to cancel: it sees ``plait.Cancelled`` at its await points and may clean up.
        False if it was already closed."""
        ok = await self.backend.append_inbox(
            run_id, (ev.CancelRequested(reason),), self.clock.now()
        )
        if not ok:
            await self.get_run(run_id)
        return ok

    async def terminate(self, run_id: str, reason: str = "") -> bool:
        """Close a run now: no workflow code runs, an in-flight activation is fenced out, and
        its children get their parent-close policies. False if it was already closed."""
        rec = await self.get_run(run_id)
        if rec.closed:
            return False
        notice = parent_notice(rec, RunStatus.TERMINATED, reason=reason)
        commit = Commit(
            run_id=run_id,
            lease=None,
            now=self.clock.now(),
            events=(ev.RunTerminated(reason),),
            status=RunStatus.TERMINATED,
            deliveries=(notice,) if notice is not None else (),
        )
        if not await self.backend.apply_commit(commit):
            return False
        self.run_closed(run_id)
        await self.apply_parent_close(run_id)
        return True

    async def apply_parent_close(self, run_id: str) -> None:
        """Apply each open child's parent-close policy and record the outcome on the parent."""
        children = [c async for c in self.list_runs(parent=run_id) if not c.closed]
        meta: list[ev.Event] = []
        for c in children:
            policy = c.parent_close
            try:
                if policy == "terminate":
                    await self.terminate(c.run_id, reason=f"parent {run_id} closed")
                elif policy == "request_cancel":
                    await self.cancel(c.run_id, reason=f"parent {run_id} closed")
                meta.append(ev.ParentClosePolicyApplied(c.run_id, policy))
            except Exception as exc:  # record, never lose the parent's close
                meta.append(ev.ParentClosePolicyFailed(c.run_id, policy, str(exc)))
        if meta:
            await self.backend.append_history(run_id, meta)

    # -- waiting -------------------------------------------------------------------------------

    def run_closed(self, run_id: str) -> None:
        """Wake local ``result()`` waiters of ``run_id`` (workers call this after closing it)."""
        self._eager_open.pop(run_id, None)
        event = self._closed_waiters.pop(run_id, None)
        if event is not None:
            event.set()

    async def _wait_closed(self, run_id: str, timeout: float | None) -> RunRecord:
        if self._driver is not None:
            return await self._driver.wait_closed(run_id, timeout)
        deadline = None if timeout is None else anyio.current_time() + timeout
        # A run this engine started eagerly and its worker has not closed yet is open: the
        # first read is saved (the worker's close wakes us; polling still covers the rest).
        skip = self._eager_open.pop(run_id, False)
        while True:
            event = self._closed_waiters.setdefault(run_id, anyio.Event())
            if skip and not event.is_set():
                skip = False
            else:
                rec = await self.get_run(run_id)
                if rec.status is RunStatus.CONTINUED_AS_NEW and rec.continued_to:
                    run_id = rec.continued_to
                    continue
                if rec.closed:
                    return rec
            # Woken at once by a worker of this engine; runs closed by other processes are
            # seen by polling at a bounded interval.
            wait = self.close_poll_interval
            if deadline is not None:
                left = deadline - anyio.current_time()
                if left <= 0:
                    raise Timeout(f"run {run_id} did not close within {timeout}s")
                wait = min(wait, left)
            with anyio.move_on_after(wait):
                await event.wait()

    # -- workers -------------------------------------------------------------------------------

    def worker(
        self,
        workflows: Iterable[WorkflowFunction] | None = None,
        steps: Iterable[StepFunction] | None = None,
        *,
        concurrency: int = 64,
        **options: Any,
    ) -> Worker:
        """A worker for this engine (an async context manager that runs until exit)."""
        from .worker import Worker

        return Worker(self, workflows, steps, concurrency=concurrency, **options)
