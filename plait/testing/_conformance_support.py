"""Fixtures and record builders shared by the conformance suite (``plait.testing.conformance``).

Every test gets ``conformance_backend``: an opened backend on a fresh, empty store, closed after
the test. Tests that need a second object on the same store (or another process) also take
``conformance_url``, the URL that store was opened from.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest

from ..backends.base import (
    Backend,
    ClaimedRun,
    Commit,
    Delivery,
    InboxEntry,
    RunRecord,
    StepTask,
    Timer,
)
from ..kernel import events as ev
from ..kernel.status import RunStatus
from ..plugins.manager import backend_from_url

__all__ = [
    "T0",
    "LEASE",
    "anyio_backend",
    "conformance_url",
    "conformance_backend",
    "open_backend",
    "close_backend",
    "new_id",
    "make_record",
    "started",
    "create",
    "claim",
    "claim_run",
    "commit",
    "drain_all",
    "drain_inbox",
    "inbox_events",
    "start_with",
    "signal",
    "deliver",
    "step",
    "store_is_shared",
]

T0 = 1_700_000_000.0
"""Virtual time the tests start at (epoch seconds); backends never read a clock."""

LEASE = 30.0
"""Lease length used for workflow and step tasks."""

CLOSE_TIMEOUT = 30.0
"""Real seconds ``open()`` and ``close()`` may take before the test fails."""

_ids = itertools.count(1)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def conformance_url(
    plait_conformance_target: str, request: pytest.FixtureRequest, tmp_path: Path
) -> str:
    """The URL of this test's fresh store: ``--plait-conformance`` or an isolated built-in."""
    from .pytest_plugin import CONFORMANCE_OPTION_TARGET, isolated_url

    if plait_conformance_target == CONFORMANCE_OPTION_TARGET:
        return str(request.getfixturevalue("plait_conformance_url"))
    return isolated_url(plait_conformance_target, tmp_path)


async def open_backend(url: str) -> Backend:
    """A backend object for ``url``, opened."""
    backend = backend_from_url(url)
    await backend.open()
    return backend  # type: ignore[no-any-return]


async def close_backend(backend: Backend) -> None:
    """``backend.close()``, failing (instead of hanging the suite) if it does not return."""
    try:
        with anyio.fail_after(CLOSE_TIMEOUT):
            await backend.close()
    except TimeoutError:
        pytest.fail(f"close() of {backend.url} did not return within {CLOSE_TIMEOUT}s")


@pytest.fixture
async def conformance_backend(conformance_url: str) -> AsyncIterator[Backend]:
    """The backend under test: opened on a fresh, isolated store; closed after the test."""
    with anyio.fail_after(CLOSE_TIMEOUT):
        backend = await open_backend(conformance_url)
    try:
        yield backend
    finally:
        await close_backend(backend)


# -- builders ----------------------------------------------------------------------------------


def new_id(prefix: str = "run") -> str:
    """A run id that sorts neither by creation nor alphabetically in a helpful way."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}-{next(_ids)}"


def make_record(
    run_id: str | None = None,
    *,
    workflow: str = "conformance.wf",
    key: str | None = None,
    parent: str | None = None,
    parent_seq: int | None = None,
    created_at: float = T0,
    status: RunStatus = RunStatus.PENDING,
) -> RunRecord:
    return RunRecord(
        run_id=run_id or new_id(),
        workflow=workflow,
        status=status,
        created_at=created_at,
        key=key,
        parent_run_id=parent,
        parent_seq=parent_seq,
    )


def started(record: RunRecord, *args: Any) -> ev.RunStarted:
    return ev.RunStarted(
        run_id=record.run_id,
        workflow=record.workflow,
        args=list(args),
        key=record.key,
        parent_run_id=record.parent_run_id,
        parent_seq=record.parent_seq,
        seed="seed",
        time=record.created_at,
    )


async def create(
    backend: Backend,
    record: RunRecord | None = None,
    *,
    now: float = T0,
    **fields: Any,
) -> RunRecord:
    """Create a run (asserting it was created) and return its record."""
    rec = record or make_record(**fields)
    run_id, created = await backend.create_run(rec, (started(rec),), now)
    assert (run_id, created) == (rec.run_id, True), "create_run did not create a fresh run"
    return rec


async def claim(backend: Backend, now: float = T0, lease: float = LEASE) -> ClaimedRun | None:
    return await backend.claim_workflow_task(now, lease)


async def claim_run(
    backend: Backend, run_id: str, now: float = T0, lease: float = LEASE
) -> ClaimedRun:
    """Claim the next workflow task and check it is ``run_id``'s."""
    got = await backend.claim_workflow_task(now, lease)
    assert got is not None, f"no workflow task ready for {run_id} at {now}"
    assert got.run.run_id == run_id, f"claimed {got.run.run_id}, expected {run_id}"
    return got


def commit(claimed: ClaimedRun, now: float = T0, *, consume: bool = True, **fields: Any) -> Commit:
    """A commit for ``claimed`` under its lease, consuming its whole inbox snapshot."""
    upto = claimed.inbox[-1].id if (consume and claimed.inbox) else 0
    fields.setdefault("inbox_upto", upto)
    fields.setdefault("status", RunStatus.RUNNING)
    return Commit(run_id=claimed.run.run_id, lease=claimed.lease, now=now, **fields)


def inbox_events(entries: Sequence[InboxEntry]) -> list[ev.Event]:
    return [e.event for e in entries]


async def drain_inbox(backend: Backend, run_id: str, now: float = T0) -> list[ev.Event]:
    """Claim ``run_id``'s workflow task, return its inbox events and consume them.

    [] when the run has no ready workflow task at ``now``.
    """
    got = await backend.claim_workflow_task(now, LEASE)
    if got is None:
        return []
    assert got.run.run_id == run_id, f"claimed {got.run.run_id}, expected {run_id}"
    assert await backend.apply_commit(commit(got, now, status=None))
    return inbox_events(got.inbox)


async def drain_all(backend: Backend, now: float) -> dict[str, list[ev.Event]]:
    """Claim every ready workflow task at ``now``: run id -> its inbox events (consumed)."""
    out: dict[str, list[ev.Event]] = {}
    for _ in range(1000):
        got = await backend.claim_workflow_task(now, LEASE)
        if got is None:
            return out
        out.setdefault(got.run.run_id, []).extend(inbox_events(got.inbox))
        assert await backend.apply_commit(commit(got, now, status=None))
    raise AssertionError("workflow tasks keep coming back after their inbox was consumed")


async def start_with(
    backend: Backend,
    *,
    now: float = T0,
    steps: Sequence[StepTask] = (),
    timers: Sequence[Timer] = (),
    events: Sequence[ev.Event] = (),
    **fields: Any,
) -> RunRecord:
    """Create a run, claim it and commit its first activation (consuming RunStarted).

    ``steps`` and ``timers`` may carry any ``run_id`` (e.g. ""): the new run's is put in.
    """
    rec = await create(backend, now=now, **fields)
    got = await claim_run(backend, rec.run_id, now)
    rid = rec.run_id
    ok = await backend.apply_commit(
        commit(
            got,
            now,
            events=(got.inbox[0].event, ev.Activated(now), *events),
            steps=tuple(attrs.evolve(s, run_id=rid) for s in steps),
            timers=tuple(attrs.evolve(t, run_id=rid) for t in timers),
        )
    )
    assert ok, "the first commit of a freshly claimed run was rejected"
    return rec


def step(seq: int, ready_at: float = T0, name: str = "conformance.step") -> StepTask:
    """A step task template for ``start_with`` / ``Commit.steps`` (``run_id`` filled later)."""
    return StepTask("", seq, name, [seq], 1, ready_at)


def signal(name: str, payload: Any = None) -> ev.SignalReceived:
    return ev.SignalReceived(name, payload)


def deliver(run_id: str, name: str, payload: Any = None) -> Delivery:
    return Delivery(run_id, ev.SignalReceived(name, payload))


async def store_is_shared(url: str, run_id: str) -> bool:
    """Whether a second backend object on ``url`` sees run ``run_id`` (memory:// does not)."""
    if url.split("://", 1)[0].lower() == "memory":
        return False
    other = await open_backend(url)
    try:
        return await other.get_run(run_id) is not None
    finally:
        await close_backend(other)
