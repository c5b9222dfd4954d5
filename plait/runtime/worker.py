"""``Worker``: claims workflow and step tasks and runs them.

A workflow task replays (or reuses from the sticky cache) the run's ``Machine``, feeds it the
inbox, and commits one atomic ``Commit``. A step task runs the step with its retry policy,
timeout and heartbeats, and delivers its outcome exactly once. Waiting workflows hold no slot:
only running activations and steps count against ``concurrency``.
"""

from __future__ import annotations

import contextvars
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup

from ..backends.base import ClaimedRun, Commit, RunRecord, StepTask
from ..kernel import events as ev
from ..kernel.codec import decode_args, encode
from ..kernel.errors import ErrorInfo, FatalError, NonDeterminismError, WorkflowError
from ..kernel.machine import Machine
from ..kernel.registry import StepFunction, WorkflowFunction, default_registry
from ..kernel.status import RunStatus
from ._commit import build_commit
from ._context import _ENGINE, _STEP, StepInfo

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["Worker"]

log = logging.getLogger("plait.worker")

_BLOCKING = (NonDeterminismError, FatalError, WorkflowError, AssertionError)

_Spec = tuple[RunRecord, Machine, int]
"""A step whose run waits on it alone: the run, its cached machine and that machine's length."""


def _index(items: Iterable[Any], kind: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        other = out.get(item.name)
        if other is not None and other is not item and other.fn is not item.fn:
            raise ValueError(
                f"two different {kind}s are named {item.name!r} in one worker; "
                f"give one of them name=..."
            )
        out[item.name] = item
    return out


class Worker:
    """Runs workflow and step tasks of one engine. Use ``async with engine.worker(...)``."""

    def __init__(
        self,
        engine: Engine,
        workflows: Iterable[WorkflowFunction] | None = None,
        steps: Iterable[StepFunction] | None = None,
        *,
        concurrency: int = 64,
        lease_seconds: float = 30.0,
        step_lease_seconds: float = 30.0,
        poll_interval: float = 1.0,
        cache_size: int = 1000,
        shutdown_timeout: float = 10.0,
        max_backoff: float = 5.0,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.engine = engine
        self.backend = engine.backend
        self.clock = engine.clock
        self.workflows: dict[str, WorkflowFunction] = _index(
            default_registry.workflows if workflows is None else workflows, "workflow"
        )
        self.steps: dict[str, StepFunction] = _index(
            default_registry.steps if steps is None else steps, "step"
        )
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds
        self.step_lease_seconds = step_lease_seconds
        self.poll_interval = poll_interval
        self.cache_size = cache_size
        self.shutdown_timeout = shutdown_timeout
        self.max_backoff = max_backoff
        self._cache: OrderedDict[str, Machine] = OrderedDict()
        self._inflight = 0
        self._ticking = False
        self._epoch = 0  # bumped whenever the worker may have changed the backend's state
        self._due: float | None = None  # the earliest due time known (see ``_idle_wait``)
        self._state_read = -float("inf")
        self._stopping = False
        self._tg: TaskGroup | None = None
        self._drained: anyio.Event | None = None
        self._running: dict[tuple[str, int], int] = {}
        self._eager = False  # set in __aenter__: the deterministic test mode never uses it
        self._speculative = False  # likewise
        self._start_commit = False  # likewise
        # Steps that may finish with a speculative activation: the run, its machine, its length.
        self._spec: dict[tuple[str, int], _Spec] = {}
        self.stats = {
            "activations": 0,
            "steps": 0,
            "replays": 0,
            "fenced": 0,
            "blocked": 0,
            "backend_errors": 0,
            "speculations": 0,
            "speculations_refused": 0,
        }

    # -- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> Worker:
        await self.engine.open()
        self._eager = bool(getattr(self.backend, "supports_eager", False))
        self._start_commit = self._eager and bool(
            getattr(self.backend, "supports_start_commit", False)
        )
        if self._start_commit or getattr(self.backend, "supports_eager_start", False):
            self.engine._workers.append(self)
        self._speculative = self._eager and bool(
            getattr(self.backend, "supports_speculation", False)
        )
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._loop)
        self._tg.start_soon(self._heartbeats)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._tg is not None
        self._stopping = True
        if self in self.engine._workers:
            self.engine._workers.remove(self)
        self.backend.notify()
        if self._inflight:
            self._drained = anyio.Event()
            with anyio.move_on_after(self.shutdown_timeout):
                await self._drained.wait()
        self._tg.cancel_scope.cancel()
        try:
            await self._tg.__aexit__(None, None, None)
        finally:
            self._tg = None
            await self.engine.close()

    @property
    def idle(self) -> bool:
        return self._inflight == 0

    @property
    def activity(self) -> tuple[int, int, bool]:
        """A token that changes whenever this worker may have changed the backend's state.

        Equal tokens, idle, around a backend read mean the read saw the worker quiescent: the
        time-skipping environment relies on it to never skip time past work in flight."""
        return (self._epoch, self._inflight, self._ticking)

    def _takes(self, workflow: str) -> bool:
        """Whether a new run of ``workflow`` may be handed to this worker now (eager start)."""
        return (
            not self._stopping and self._inflight < self.concurrency and workflow in self.workflows
        )

    def _adopt(self, item: ClaimedRun | StepTask) -> bool:
        """Run, in a slot of its own, a claim made for this worker elsewhere (eager start) or a
        step a commit leased to it; False if stopping."""
        if self._stopping or self._tg is None:
            return False
        self._inflight += 1
        self._epoch += 1
        self._tg.start_soon(self._guard, item)
        return True

    async def _release(self, task: StepTask) -> None:
        """Give back a step leased to this worker that it will not run (it is stopping)."""
        await self.backend.retry_step(
            task.run_id, task.seq, task.lease, task.attempt, self.clock.now()
        )

    def _first_activation(
        self, record: RunRecord, started: ev.RunStarted, now: float
    ) -> tuple[Machine, Commit] | None:
        """A new run's first activation, run before the run exists (start with commit): its
        machine and commit. None when the backend cannot store it that way, or when the
        activation fails (the ordinary path then blocks the run as usual)."""
        if not self._start_commit:
            return None
        machine = Machine(self.workflows[record.workflow])
        try:
            commands = machine.activate([started], now)
        except _BLOCKING:
            return None
        commit = build_commit(
            record,
            None,
            now,
            machine.new_events,
            commands,
            0,
            self.engine.new_seed,
            self._leaser(now, held=0),
        )
        return machine, commit

    async def _start_committed(self, record: RunRecord, machine: Machine, commit: Commit) -> None:
        """Take over a run created with its first commit (``_first_activation``)."""
        self._epoch += 1
        step = await self._committed(record, machine, commit)
        if step is not None and not self._adopt(step):
            await self._release(step)

    async def requeue_blocked(self) -> int:
        """Queue every blocked run once: a new deploy may replay it cleanly."""
        n = 0
        async for rec in self.engine.list_runs(status=RunStatus.BLOCKED):
            if rec.workflow in self.workflows:
                n += await self.backend.requeue_workflow_task(rec.run_id, self.clock.now())
        return n

    async def _loop(self) -> None:
        """Claim and dispatch until stopped. A backend error (a lost connection, a restarting
        server) is logged and retried with capped exponential backoff: the loop never dies,
        and leases make sure nothing in flight is lost meanwhile."""
        assert self._tg is not None
        backoff = 0.0
        requeued = False
        while not self._stopping:
            try:
                progressed = await self._tick(self._tg, requeue=not requeued)
                requeued = True
                backoff = 0.0
                if progressed:
                    await anyio.lowlevel.checkpoint()
                    continue
                await self.backend.wait(await self._idle_wait())
            except Exception:
                backoff = min(self.max_backoff, max(0.05, backoff * 2))
                log.exception("plait worker: backend call failed; retrying in %.2fs", backoff)
                self.stats["backend_errors"] += 1
                await anyio.sleep(backoff)

    async def _idle_wait(self) -> float:
        """How long the loop may wait for a notification when nothing was claimable: until
        the next due time it knows of, at most ``poll_interval``.

        Due times of timers and retries this worker made are noted as it makes them; the
        backend's ``state`` (a scan on some backends) is asked at most once per
        ``poll_interval`` for the others (other processes' timers, lease expiries)."""
        wait = self.poll_interval
        if self.clock.virtual:
            return wait
        now = self.clock.now()
        if time.monotonic() - self._state_read >= self.poll_interval:
            self._state_read = time.monotonic()
            st = await self.backend.state(now)
            self._note_due(st.next_due)
        due = self._due
        if due is not None:
            if due <= now:  # reached: one more look at once, then it is forgotten
                self._due = None
                return 0.0
            wait = min(wait, due - now)
        return wait

    def _note_due(self, at: float | None) -> None:
        if at is not None and (self._due is None or at < self._due):
            self._due = at

    async def _tick(self, tg: TaskGroup, requeue: bool = False) -> bool:
        self._ticking = True
        self._epoch += 1
        try:
            if requeue:
                await self.requeue_blocked()
            return await self._claim_into(tg)
        finally:
            self._ticking = False
            self._epoch += 1

    async def _claim_into(self, tg: TaskGroup) -> bool:
        now = self.clock.now()
        progressed = await self.backend.fire_due_timers(now) > 0
        while self._inflight < self.concurrency and not self._stopping:
            claim = await self.backend.claim_workflow_task(now, self.lease_seconds)
            if claim is None:
                break
            self._inflight += 1
            tg.start_soon(self._guard, claim)
            progressed = True
        free = self.concurrency - self._inflight
        if free > 0 and not self._stopping:
            for task in await self.backend.claim_step_tasks(now, free, self.step_lease_seconds):
                self._inflight += 1
                tg.start_soon(self._guard, task)
                progressed = True
        return progressed

    async def _guard(self, item: ClaimedRun | StepTask | None) -> None:
        """Run ``item``, then keep this slot busy: with the follow-up work it handed back
        (eager dispatch), else with the next ready task, instead of returning the slot to the
        loop. A sequential run then costs no task spawn or wake-up per step."""
        try:
            while item is not None and not self._stopping:
                if isinstance(item, ClaimedRun):
                    item = await self._activate(item)
                else:
                    item = await self._run_step(item)
                if item is None and not self._stopping:
                    item = await self._claim_one()
        except Exception:
            log.exception("plait worker task failed")
        finally:
            self._inflight -= 1
            self._epoch += 1
            if self._inflight == 0 and self._drained is not None:
                self._drained.set()
            self.backend.notify()

    async def _claim_one(self) -> ClaimedRun | StepTask | None:
        now = self.clock.now()
        claim = await self.backend.claim_workflow_task(now, self.lease_seconds)
        if claim is not None:
            return claim
        tasks = await self.backend.claim_step_tasks(now, 1, self.step_lease_seconds)
        return tasks[0] if tasks else None

    async def run_one(self) -> bool:
        """Do the next piece of work in claim order, inline (the deterministic test mode):
        fire due timers, else one workflow task, else one step. False when nothing was ready."""
        now = self.clock.now()
        if await self.backend.fire_due_timers(now):
            return True
        claim = await self.backend.claim_workflow_task(now, self.lease_seconds)
        if claim is not None:
            await self.activate(claim)
            return True
        tasks = await self.backend.claim_step_tasks(now, 1, self.step_lease_seconds)
        if tasks:
            await self.run_step(tasks[0])
            return True
        return False

    # -- workflow tasks ------------------------------------------------------------------------

    async def _block(self, claim: ClaimedRun, reason: str) -> None:
        self.stats["blocked"] += 1
        log.warning("run %s blocked: %s", claim.run.run_id, reason)
        await self.backend.apply_commit(
            Commit(
                run_id=claim.run.run_id,
                lease=claim.lease,
                now=self.clock.now(),
                status=RunStatus.BLOCKED,
                block_reason=reason,
                requeue=False,
            )
        )

    async def _machine(self, claim: ClaimedRun, wf: WorkflowFunction) -> Machine:
        run_id = claim.run.run_id
        m = self._cache.pop(run_id, None)
        if m is not None and len(m.history) == claim.history_length:
            return m
        self.stats["replays"] += 1  # a machine rebuilt (not from the sticky cache)
        if claim.history_length == 0:
            return Machine(wf)  # a new run: nothing to read or replay
        return Machine(wf, await self.backend.read_history(run_id))

    async def activate(self, claim: ClaimedRun) -> None:
        """Process one claimed workflow task (no eager follow-up: claim order is kept)."""
        await self._activate(claim, eager=False)

    async def run_step(self, task: StepTask) -> None:
        """Run one claimed step task (no eager follow-up: claim order is kept)."""
        await self._run_step(task, eager=False)

    def _leaser(self, now: float, held: int = 1) -> Callable[[], tuple[int, float] | None]:
        """Leases for the steps a commit schedules, handed to this worker up to its free
        slots (and the ``held`` one of the activation), so they run without a claim round trip
        (only on backends with ``supports_eager``); None once the slots are used up."""
        budget = self.concurrency - self._inflight + held
        expires = now + self.step_lease_seconds

        def lease() -> tuple[int, float] | None:
            nonlocal budget
            if budget <= 0:
                return None
            budget -= 1
            # A fencing token guards no secret: ``random`` (seeded from the OS, reseeded in a
            # forked child) is enough, and far cheaper than ``secrets``.
            return random.getrandbits(62) | 1, expires

        return lease

    async def _activate(self, claim: ClaimedRun, eager: bool = True) -> StepTask | None:
        eager = eager and self._eager
        run = claim.run
        wf = self.workflows.get(run.workflow)
        if wf is None:
            await self._block(claim, f"unknown workflow {run.workflow!r}: no worker has it")
            return
        try:
            machine = await self._machine(claim, wf)
        except _BLOCKING as exc:
            await self._block(claim, f"{type(exc).__name__}: {exc}")
            return
        now = self.clock.now()
        inbound = [entry.event for entry in claim.inbox]
        if not inbound and not machine.closed and run.status is not RunStatus.PENDING:
            # Nothing to deliver (e.g. a blocked run requeued that now replays cleanly).
            ok = await self.backend.apply_commit(
                Commit(
                    run_id=run.run_id,
                    lease=claim.lease,
                    now=now,
                    status=RunStatus.RUNNING,
                )
            )
            if ok:
                self._remember(run.run_id, machine)
            return
        try:
            commands = machine.activate(inbound, now)
        except _BLOCKING as exc:
            await self._block(claim, f"{type(exc).__name__}: {exc}")
            return
        commit = build_commit(
            run,
            claim.lease,
            now,
            machine.new_events,
            commands,
            claim.inbox[-1].id if claim.inbox else 0,
            self.engine.new_seed,
            self._leaser(now) if eager else None,
        )
        if not await self.backend.apply_commit(commit):
            self.stats["fenced"] += 1
            log.info("commit for run %s was fenced out (stale lease)", run.run_id)
            return
        return await self._committed(run, machine, commit)

    async def _committed(self, run: RunRecord, machine: Machine, commit: Commit) -> StepTask | None:
        """What follows an applied commit: observers, close handling, the sticky cache, and
        the steps it leased to this worker (the first returned for this slot to run next)."""
        self.stats["activations"] += 1
        for t in commit.timers:
            self._note_due(t.fire_at)
        if self.engine.observers.active:
            for e in machine.new_events:
                self.engine.observers.run_event(run.run_id, run.workflow, e)
        if machine.closed:
            self.engine.run_closed(run.run_id)
            if machine.status is not RunStatus.CONTINUED_AS_NEW and machine.started_children:
                await self.engine.apply_parent_close(run.run_id)
        else:
            self._remember(run.run_id, machine)
        leased = [st for st in commit.steps if st.lease]
        if not leased:
            return None
        if self._speculative and len(commit.steps) == 1 and not machine.closed:
            # The run waits on this one step: its result can carry the next activation.
            self._spec[(run.run_id, leased[0].seq)] = (run, machine, len(machine.history))
        for st in leased[1:]:  # the others get slots of their own
            if not self._adopt(st):
                await self._release(st)
        return leased[0]

    async def _speculate(
        self, task: StepTask, outcome: ev.Event, spec: _Spec
    ) -> tuple[Machine, Commit] | None:
        """Finish ``task`` together with the activation its outcome causes, in one backend
        call (``SpeculativeBackend``). None, with nothing changed, when the cached machine
        moved on or the backend refused (the run was not quiet): the caller then finishes the
        step the ordinary way, and the run is replayed from its stored history."""
        run, machine, length = spec
        if self._cache.get(run.run_id) is not machine or len(machine.history) != length:
            return None
        del self._cache[run.run_id]  # advanced below: only a stored commit may put it back
        now = self.clock.now()
        try:
            commands = machine.activate([outcome], now)
        except _BLOCKING:
            return None  # the ordinary path replays the run and blocks it
        commit = build_commit(
            run, 0, now, machine.new_events, commands, 0, self.engine.new_seed, self._leaser(now)
        )
        backend: Any = self.backend
        if not await backend.finish_step_and_commit(
            task.run_id, task.seq, task.lease, commit, length
        ):
            self.stats["speculations_refused"] += 1
            return None
        self.stats["speculations"] += 1
        return machine, commit

    def _remember(self, run_id: str, machine: Machine) -> None:
        self._cache[run_id] = machine
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    # -- step tasks ----------------------------------------------------------------------------

    async def _run_step(self, task: StepTask, eager: bool = True) -> ClaimedRun | StepTask | None:
        eager = eager and self._eager
        spec = self._spec.pop((task.run_id, task.seq), None) if eager else None
        step = self.steps.get(task.name)
        started = time.perf_counter()
        if step is None:
            error = ErrorInfo(
                "plait.UnknownStep", f"no worker has step {task.name!r}", non_retryable=True
            )
            await self.backend.finish_step(
                task.run_id,
                task.seq,
                task.lease,
                ev.StepFailed(task.seq, error, task.attempt),
                self.clock.now(),
            )
            return
        deadline = None if step.timeout is None else self.clock.now() + step.timeout
        info = StepInfo(
            task.run_id, task.seq, task.name, task.attempt, f"{task.run_id}:{task.seq}", deadline
        )
        try:
            value = await self._call(step, task, info)
        except Exception as exc:
            await self._failed(step, task, exc, time.perf_counter() - started)
            return
        try:  # a result that cannot be stored fails the same way on every attempt
            data = encode(value, step.result_hint, f"result of step {step.name}")
            self.engine.check_size(data, f"result of step {step.name}")
        except (TypeError, ValueError) as exc:
            await self._failed(step, task, _Unretryable(str(exc)), time.perf_counter() - started)
            return
        self.stats["steps"] += 1
        outcome = ev.StepCompleted(task.seq, data, task.attempt)
        follow: ClaimedRun | None = None
        done = None if spec is None else await self._speculate(task, outcome, spec)
        if done is None and eager:
            _, follow = await self.backend.finish_step_and_claim(
                task.run_id, task.seq, task.lease, outcome, self.clock.now(), self.lease_seconds
            )
        elif done is None:
            await self.backend.finish_step(
                task.run_id, task.seq, task.lease, outcome, self.clock.now()
            )
        if self.engine.observers.active:
            self.engine.observers.step_attempt(
                task.run_id,
                task.seq,
                task.name,
                task.attempt,
                "completed",
                time.perf_counter() - started,
            )
        if done is not None:
            assert spec is not None
            return await self._committed(spec[0], *done)
        return follow

    async def _call(self, step: StepFunction, task: StepTask, info: StepInfo) -> Any:
        args = decode_args(step.fn, task.args)
        step_token = _STEP.set(info)
        engine_token = _ENGINE.set(self.engine)
        self._running[(task.run_id, task.seq)] = task.lease
        try:
            with anyio.fail_after(step.timeout) if step.timeout else _nullcontext():
                if step.is_async:
                    return await step.fn(*args)
                ctx = contextvars.copy_context()
                return await anyio.to_thread.run_sync(
                    ctx.run, step.fn, *args, abandon_on_cancel=True
                )
        finally:
            self._running.pop((task.run_id, task.seq), None)
            _STEP.reset(step_token)
            _ENGINE.reset(engine_token)

    async def _heartbeats(self) -> None:
        """Renew the leases of all running steps, every third of the lease (one loop for all,
        not a task per step)."""
        while True:
            await anyio.sleep(self.step_lease_seconds / 3)
            for (run_id, seq), lease in list(self._running.items()):
                try:
                    await self.backend.heartbeat_step(
                        run_id, seq, lease, self.clock.now(), self.step_lease_seconds
                    )
                except Exception:  # the lease may lapse; redelivery covers it
                    log.exception("plait worker: heartbeat for %s#%d failed", run_id, seq)

    async def _failed(
        self, step: StepFunction, task: StepTask, exc: Exception, duration: float
    ) -> None:
        non_retryable = isinstance(exc, step.retry.non_retryable) or isinstance(exc, _Unretryable)
        error = ErrorInfo.from_exception(exc, non_retryable=non_retryable)
        now = self.clock.now()
        if not non_retryable and step.retry.should_retry(task.attempt, exc):
            outcome = "retrying"
            ready_at = now + step.retry.delay(task.attempt)
            await self.backend.retry_step(
                task.run_id, task.seq, task.lease, task.attempt + 1, ready_at
            )
            self._note_due(ready_at)
        else:
            outcome = "failed"
            await self.backend.finish_step(
                task.run_id, task.seq, task.lease, ev.StepFailed(task.seq, error, task.attempt), now
            )
        if self.engine.observers.active:
            self.engine.observers.step_attempt(
                task.run_id, task.seq, task.name, task.attempt, outcome, duration, error
            )


class _Unretryable(Exception):
    """A step outcome no retry can change (its result cannot be stored)."""


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
