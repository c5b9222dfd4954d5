"""Conformance: the optional eager-dispatch calls (pre-leased steps, finish_step_and_claim).

Skipped for a backend without ``finish_step_and_claim``: eager dispatch is optional.
"""

from __future__ import annotations

import pytest

from ..backends.base import Backend
from ..kernel import events as ev
from ._conformance_support import (
    LEASE,
    T0,
    claim,
    claim_run,
    commit,
    inbox_events,
    start_with,
    step,
)

__all__ = [
    "test_a_pre_leased_step_is_not_claimable_before_its_lease_expires",
    "test_finish_step_and_claim_delivers_once_and_claims_the_run",
    "test_finish_step_and_claim_refuses_a_stale_lease",
    "test_finish_step_and_claim_leaves_a_leased_run_alone",
]

TOKEN = 7_777_777


def _needs_eager(b: Backend) -> None:
    if not hasattr(b, "finish_step_and_claim"):
        pytest.skip("the backend has no eager dispatch (optional)")


async def test_a_pre_leased_step_is_not_claimable_before_its_lease_expires(
    conformance_backend: Backend,
) -> None:
    b = conformance_backend
    _needs_eager(b)
    pre = step(1).__class__("", 1, "conformance.step", [1], 1, T0, TOKEN, T0 + LEASE)
    rec = await start_with(b, steps=(pre,))
    assert await b.claim_step_tasks(T0 + 1, 10, LEASE) == [], "a pre-leased step was claimed"
    assert await b.heartbeat_step(rec.run_id, 1, TOKEN, T0 + 1, LEASE)  # now until T0+1+LEASE
    assert await b.claim_step_tasks(T0 + LEASE + 0.5, 10, LEASE) == []
    (again,) = await b.claim_step_tasks(T0 + 1 + LEASE, 10, LEASE)  # expired: redelivered
    assert again.lease != TOKEN
    assert not await b.finish_step(rec.run_id, 1, TOKEN, ev.StepCompleted(1, 1), T0 + 50)


async def test_finish_step_and_claim_delivers_once_and_claims_the_run(
    conformance_backend: Backend,
) -> None:
    b = conformance_backend
    _needs_eager(b)
    rec = await start_with(b, steps=(step(1),))
    (task,) = await b.claim_step_tasks(T0, 10, LEASE)
    outcome = ev.StepCompleted(1, "done", 1)
    ok, got = await b.finish_step_and_claim(rec.run_id, 1, task.lease, outcome, T0 + 1, LEASE)  # type: ignore[attr-defined]
    assert ok is True and got is not None and got.run.run_id == rec.run_id
    assert inbox_events(got.inbox) == [outcome]
    assert await claim(b, T0 + 2) is None, "the eagerly claimed run was claimed again"
    again = await b.finish_step_and_claim(rec.run_id, 1, task.lease, outcome, T0 + 2, LEASE)  # type: ignore[attr-defined]
    assert again == (False, None)
    assert await b.apply_commit(commit(got, T0 + 2))
    # The lease fences like any claim: after expiry a new claim makes it stale.
    assert await claim(b, T0 + 3) is None


async def test_finish_step_and_claim_refuses_a_stale_lease(conformance_backend: Backend) -> None:
    b = conformance_backend
    _needs_eager(b)
    rec = await start_with(b, steps=(step(1),))
    (old,) = await b.claim_step_tasks(T0, 10, LEASE)
    (new,) = await b.claim_step_tasks(T0 + LEASE, 10, LEASE)
    res = await b.finish_step_and_claim(
        rec.run_id, 1, old.lease, ev.StepCompleted(1, 0), T0 + LEASE, LEASE
    )  # type: ignore[attr-defined]
    assert res == (False, None)
    assert await claim(b, T0 + LEASE) is None, "the stale finish delivered its outcome"
    assert await b.heartbeat_step(rec.run_id, 1, new.lease, T0 + LEASE, LEASE)


async def test_finish_step_and_claim_leaves_a_leased_run_alone(
    conformance_backend: Backend,
) -> None:
    b = conformance_backend
    _needs_eager(b)
    rec = await start_with(b, steps=(step(1), step(2)))
    t1, t2 = sorted(await b.claim_step_tasks(T0, 10, LEASE), key=lambda t: t.seq)
    assert await b.finish_step(rec.run_id, 1, t1.lease, ev.StepCompleted(1, 1), T0 + 1)
    holder = await claim_run(b, rec.run_id, T0 + 1)  # someone else holds the run now
    ok, got = await b.finish_step_and_claim(
        rec.run_id, 2, t2.lease, ev.StepCompleted(2, 2), T0 + 2, LEASE
    )  # type: ignore[attr-defined]
    assert ok is True and got is None
    assert await b.apply_commit(commit(holder, T0 + 2))  # the holder's lease is still good
    got2 = await claim_run(b, rec.run_id, T0 + 3)
    assert inbox_events(got2.inbox) == [ev.StepCompleted(2, 2)]
