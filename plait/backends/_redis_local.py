"""What one process knows about a Redis store between round trips.

Every Redis backend object of one event loop that talks to the same store (server, db, prefix)
shares one ``Shared``: the local wake-ups, and a summary of each queue (workflow tasks ``w``,
steps ``s``, timers ``t``) that every script sends back with its answer. A claim or timer poll
that the summary shows to be empty is answered without a trip to Redis, and so is ``state``.

A summary is trusted only while nothing could have changed it:

* each kind has a version, bumped after every local call that changes that queue, after every
  wake-up message from another process naming it, and for every kind on any connection trouble
  or (re)subscription, since messages may have been missed;
* a summary is stored tagged with the version it was computed under, and only if no bump
  happened while its call was in flight (a concurrent change may or may not be in it);
* it describes the queue at one time ``now``; it holds for a later ``now`` only until the
  earliest ready time, lease expiry or fire time it lists, and for at most ``MAX_AGE`` seconds
  of real time (claims, renewals and heartbeats of other processes publish nothing);
* without a live subscription to the wake-up channel nothing is trusted.

Other processes' changes thus reach this process as fast as their wake-up message (the same
delay with which a waiting worker would notice them anyway); changes made in this process are
seen at once, so a single process behaves exactly like the memory backend.
"""

from __future__ import annotations

import asyncio
import time
import uuid
import weakref
from collections.abc import Sequence
from typing import Any, NamedTuple

import anyio

__all__ = [
    "Shared",
    "Summary",
    "Wakeups",
    "shared_for",
    "release",
    "KINDS",
    "MAX_AGE",
    "CLOSED_KEPT",
]

KINDS = "wst"
MAX_AGE = 1.0
CLOSED_KEPT = 1024


class Wakeups:
    """Local wake-ups that lose none: each waiting task remembers the change generation it
    last saw, and a wait returns at once if anything changed since (this backend's calls
    yield to the loop, so a change can land between a task's check and its wait)."""

    def __init__(self) -> None:
        self.generation = 0
        self._event: anyio.Event | None = None
        self._seen: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        # The next due time each task was last told by ``state`` (its wait is bounded by it).
        # A plain dict, asked after every change: finished tasks are dropped as they are met.
        self._expects: dict[asyncio.Task[Any], float | None] = {}

    def expect(self, next_due: float | None) -> None:
        """Remember that the current task was told ``next_due`` (it will wait until then)."""
        task = asyncio.current_task()
        if task is not None:
            self._expects[task] = next_due

    def sooner(self, due: float) -> bool:
        """True if some task was told of nothing due before ``due``."""
        for task, e in self._expects.items():
            if (e is None or due < e) and not task.done():
                return True
        done = [task for task in self._expects if task.done()]
        for task in done:
            del self._expects[task]
        return False

    def notify(self) -> None:
        self.generation += 1
        if self._event is not None:
            self._event.set()
            self._event = None

    async def wait(self, timeout: float) -> None:
        task = asyncio.current_task()
        if self._seen.get(task) != self.generation:
            self._seen[task] = self.generation
            await anyio.lowlevel.checkpoint()
            return
        if self._event is None:
            self._event = anyio.Event()
        event = self._event
        with anyio.move_on_after(max(0.0, timeout)):
            await event.wait()
        self._seen[task] = self.generation


class Summary(NamedTuple):
    """One queue at time ``now``: ready entries (due timers), leased entries (all timers), and
    the earliest future ready time, lease expiry or fire time. (A tuple: one is made for each
    queue after every call.)"""

    version: int
    now: float
    ready: int
    leased: int
    next_due: float | None
    stamp: float


class Shared:
    """Process-local state of one store, shared by its backend objects on one loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = weakref.ref(loop)
        self.origin = uuid.uuid4().hex
        self.wake = Wakeups()
        self.versions = dict.fromkeys(KINDS, 0)
        self.summaries: dict[str, Summary | None] = dict.fromkeys(KINDS)
        self.live = 0  # subscriptions to the wake-up channel that are up
        self.users = 0
        # Records of runs this process closed, newest last: a closed record never changes, so
        # a result waiter's ``get_run`` needs no trip. Forgotten on connection trouble (a
        # restart may have lost the close).
        self.closed: dict[str, Any] = {}

    def remember_closed(self, run_id: str, record: Any) -> None:
        self.closed[run_id] = record
        if len(self.closed) > CLOSED_KEPT:
            del self.closed[next(iter(self.closed))]

    def distrust(self) -> None:
        """Connection trouble: a restart may have lost writes, and messages were missed."""
        self.closed.clear()
        self.bump()

    def message(self, flags: str) -> str:
        """The wake-up message a call that changed the queues ``flags`` publishes."""
        return f"{max(self.live, 0)} {self.origin}:{flags}" if flags else ""

    def snapshot(self, kinds: str) -> list[int]:
        return [self.versions[k] for k in kinds]

    def bump(self, kinds: str = KINDS) -> None:
        for k in kinds:
            self.versions[k] += 1
            self.summaries[k] = None

    def learn(
        self, kinds: str, before: list[int], now: float, rows: Sequence[Any], changed: bool
    ) -> None:
        """Store the summaries a call returned (``changed``: the call changed those queues; a
        false row: it left that one as it was, and what was known of it still holds)."""
        stamp = time.monotonic()
        versions = self.versions
        summaries = self.summaries
        for k, v0, row in zip(kinds, before, rows, strict=True):
            if not row:
                continue
            ready, leased, later, first = row
            fresh = versions[k] == v0
            if changed:
                versions[k] += 1
            if not fresh:
                summaries[k] = None
                continue
            due = float(later) if later else None
            if first and (due is None or float(first) < due):
                due = float(first)
            summaries[k] = Summary(versions[k], now, ready, leased, due, stamp)

    def wakes_for(self, kind: str) -> bool:
        """Whether a local change to ``kind`` (just learned) must wake local waiters: its
        summary is unknown, shows ready work, or a due time sooner than a waiter expects."""
        s = self.summaries[kind]
        if s is None or s.ready:
            return True
        return s.next_due is not None and self.wake.sooner(s.next_due)

    def known(self, kind: str, now: float) -> Summary | None:
        """The summary of ``kind`` if it still holds at ``now``."""
        s = self.summaries[kind]
        if s is None or self.live <= 0 or s.version != self.versions[kind]:
            return None
        if now < s.now or (s.next_due is not None and now >= s.next_due):
            return None
        if time.monotonic() - s.stamp > MAX_AGE:
            return None
        return s

    def remote(self, data: str) -> bool:
        """Take a wake-up message; True if it came from another process."""
        origin, _, flags = data.partition(":")
        if origin == self.origin:
            return False
        self.bump(flags or KINDS)
        self.wake.notify()
        return True


_SHARED: dict[tuple[int, str, str], Shared] = {}


def shared_for(redis_url: str, prefix: str) -> tuple[tuple[int, str, str], Shared]:
    """The ``Shared`` of this store on the running loop (created on first use)."""
    loop = asyncio.get_running_loop()
    key = (id(loop), redis_url, prefix)
    shared = _SHARED.get(key)
    if shared is None or shared.loop() is not loop:
        shared = _SHARED[key] = Shared(loop)
    shared.users += 1
    return key, shared


def release(key: tuple[int, str, str], shared: Shared) -> None:
    shared.users -= 1
    if shared.users <= 0 and _SHARED.get(key) is shared:
        del _SHARED[key]
