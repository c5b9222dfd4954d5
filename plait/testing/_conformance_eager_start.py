"""Conformance: the optional eager start (``create_run_and_claim``).

Skipped for a backend without ``create_run_and_claim``: eager start is optional.
"""

from __future__ import annotations

import pytest

from ..backends.base import Backend
from ..kernel import events as ev
from ..kernel.status import RunStatus
from ._conformance_support import (
    LEASE,
    T0,
    claim,
    commit,
    create,
    inbox_events,
    make_record,
    started,
)

__all__ = [
    "test_create_run_and_claim_creates_the_run_claimed",
    "test_create_run_and_claim_claim_fences_like_any_claim",
    "test_create_run_and_claim_with_a_held_key_claims_nothing",
]


def _needs_eager_start(b: Backend) -> None:
    if not hasattr(b, "create_run_and_claim"):
        pytest.skip("the backend has no eager start (optional)")


async def test_create_run_and_claim_creates_the_run_claimed(conformance_backend: Backend) -> None:
    b = conformance_backend
    _needs_eager_start(b)
    rec = make_record()
    first = started(rec, 1)
    run_id, created, got = await b.create_run_and_claim(rec, (first,), T0, LEASE)  # type: ignore[attr-defined]
    assert (run_id, created) == (rec.run_id, True)
    assert got is not None and got.run.run_id == rec.run_id and got.history_length == 0
    assert got.run.status is RunStatus.PENDING
    assert inbox_events(got.inbox) == [first]
    assert await claim(b, T0 + 1) is None, "the eagerly claimed run was claimed again"
    assert await b.apply_commit(commit(got, T0 + 1, events=(first, ev.Activated(T0 + 1))))
    assert await claim(b, T0 + 2) is None, "the consumed inbox queued the run again"
    assert await b.read_history(rec.run_id) == [first, ev.Activated(T0 + 1)]


async def test_create_run_and_claim_claim_fences_like_any_claim(
    conformance_backend: Backend,
) -> None:
    b = conformance_backend
    _needs_eager_start(b)
    rec = make_record()
    _, _, got = await b.create_run_and_claim(rec, (started(rec),), T0, LEASE)  # type: ignore[attr-defined]
    assert got is not None
    again = await claim(b, T0 + LEASE)  # the lease expired: the task is claimable again
    assert again is not None and again.run.run_id == rec.run_id and again.lease != got.lease
    assert not await b.apply_commit(commit(got, T0 + LEASE)), "a stale eager claim committed"
    assert await b.apply_commit(commit(again, T0 + LEASE))


async def test_create_run_and_claim_with_a_held_key_claims_nothing(
    conformance_backend: Backend,
) -> None:
    b = conformance_backend
    _needs_eager_start(b)
    holder = await create(b, key="eager-key")
    rec = make_record(key="eager-key")
    answer = await b.create_run_and_claim(rec, (started(rec),), T0, LEASE)  # type: ignore[attr-defined]
    assert answer == (holder.run_id, False, None)
    assert await b.get_run(rec.run_id) is None
    got = await claim(b, T0)  # the holder's own task is still there, unclaimed
    assert got is not None and got.run.run_id == holder.run_id
