"""Redis backend (``redis://`` and ``rediss://``) on redis-py's asyncio client.

Every mutating protocol call is one Lua function call (``_redis_lua``): FCALL of the function
library, loaded with FUNCTION LOAD when the server lacks it (Redis 7), else EVALSHA of scripts
loaded with SCRIPT LOAD; either is loaded again when the server lost it. A call runs whole or
not at all, and with AOF on it is persisted as one transaction, so a crash never leaves half a
commit behind. A step costs one call (``finish_step_and_commit``, speculative activation).
Python encodes every event and record (``_redis_codec``); Lua only stores, moves and indexes
strings and checks uniqueness and fencing. Semantics follow the memory backend operation by
operation.

URL: ``redis://[user:password@]host:port/<db>?prefix=plait:&retry_for=30``. ``prefix``
(default ``plait:``) namespaces every key, so several deployments share one Redis;
``retry_for`` is how many seconds a call rides out connection errors (a restart) before it
raises ``BackendError``. Other query options go to redis-py unchanged.

Wake-ups: each script that makes work ready PUBLISHes on ``<prefix>wake``; ``wait`` returns on
such a message from another process, on a local change, or after its timeout. Each script also
returns a summary of the queues it touched, so empty claims and ``state`` usually cost no trip
(``_redis_local``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import anyio

from ..kernel.events import Event
from ..kernel.status import RunStatus
from . import _redis_codec as codec
from ._redis_codec import RedisOptions, parse_url
from ._redis_local import KINDS, Shared, Wakeups, release, shared_for
from ._redis_lua import FUNCTIONS, LIBRARY, LIBRARY_NAME, SCRIPTS
from .base import (
    BackendError,
    BackendState,
    ClaimedRun,
    Commit,
    RunRecord,
    SchemaError,
    StepTask,
    check_start_commit,
)

__all__ = [
    "RedisBackend",
    "RedisBackendPlugin",
    "RedisOptions",
    "MissingRedisExtra",
    "parse_url",
    "SCHEMA_VERSION",
]

log = logging.getLogger("plait.backends.redis")

SCHEMA_VERSION = 1
MAGIC = "plait"
INSTALL_HINT = "pip install 'plait[redis]'"


class MissingRedisExtra(BackendError, ImportError):
    """The ``redis`` package (the ``plait[redis]`` extra) is not installed."""


def _import_redis() -> tuple[Any, Any]:
    try:
        import redis.asyncio as aioredis
        import redis.exceptions as errors
    except ImportError as exc:
        raise MissingRedisExtra(
            f"the Redis backend needs the redis package: {INSTALL_HINT} ({exc})"
        ) from exc
    return aioredis, errors


class RedisBackend:
    """``redis://host:port/db?prefix=plait:``: runs, histories and queues in Redis."""

    supports_eager = True
    """Round trips are what a step costs here: steps scheduled by a commit arrive pre-leased
    and ``finish_step_and_claim`` hands the run straight back (two trips per step, not four)."""

    supports_speculation = True
    """``finish_step_and_commit``: a run's only step finishes together with the activation it
    causes, in one script (one trip per step)."""

    supports_eager_start = True
    """``create_run_and_claim``: a run created already claimed for the starting engine's own
    worker, in one script (no claim trip, no wake-up)."""

    supports_start_commit = True
    """``create_run_and_commit``: a run created with its first activation's commit applied, in
    one script (starting a run costs one trip)."""

    def __init__(self, url: str) -> None:
        self._redis, errors = _import_redis()
        self.url = url
        self.options = parse_url(url)
        self.prefix = self.options.prefix
        self._client: Any = None
        self._free: list[Any] = []
        self._sha: dict[str, str] = {}
        # FCALL the function library (Redis 7); EVALSHA scripts on a Redis without functions.
        self._functions = True
        self._target: dict[str, tuple[str, str]] = {}
        self._key: tuple[int, str, str] | None = None
        self._shared: Shared | None = None
        self._wake = Wakeups()  # until open() joins the process-wide state of this store
        self._reader: asyncio.Task[None] | None = None
        self._subscribed = False
        self._closing = False
        self._retryable: tuple[type[BaseException], ...] = (
            errors.ConnectionError,
            errors.TimeoutError,
            OSError,
        )
        self._noscript: type[BaseException] = errors.NoScriptError
        self._response_error: type[BaseException] = errors.ResponseError
        self._noperm: type[BaseException] = errors.NoPermissionError

    @classmethod
    def from_url(cls, url: str) -> RedisBackend:
        return cls(url)

    def __repr__(self) -> str:
        return f"<RedisBackend {self.options.shown} prefix={self.prefix!r}>"

    # -- lifecycle -----------------------------------------------------------------------------

    async def open(self) -> None:
        if self._client is not None:
            return
        self._closing = False
        # No socket timeout by default: with one, redis-py wraps socket writes in
        # asyncio.wait_for, which on Python 3.11 can swallow a cancellation (and costs a
        # task per command). RESP2: its parser is the faster one. URL options still win.
        self._client = self._redis.Redis.from_url(
            self.options.redis_url,
            decode_responses=True,
            socket_timeout=None,
            socket_connect_timeout=5.0,
            socket_keepalive=True,
            protocol=2,
        )
        self._key, self._shared = shared_for(self.options.redis_url, self.prefix)
        self._wake = self._shared.wake
        try:
            await self._retrying(self._load_scripts)
            magic, version = await self._call("schema", "", "", 0.0, MAGIC, SCHEMA_VERSION)
            if magic != MAGIC:
                raise SchemaError(
                    f"Redis keys under prefix {self.prefix!r} are not a plait store "
                    f"({self.prefix}meta is a {version or 'foreign'} key); "
                    "choose another ?prefix="
                )
            if int(version) > SCHEMA_VERSION:
                raise SchemaError(
                    f"the plait store under prefix {self.prefix!r} has schema version "
                    f"{version}, newer than this plait's {SCHEMA_VERSION}: upgrade plait"
                )
        except BaseException:
            await self._drop_client()
            raise
        await self._check_eviction()
        self._reader = asyncio.get_running_loop().create_task(self._listen())

    async def _check_eviction(self) -> None:
        """Warn when Redis may evict keys: an evicted history or queue entry loses work."""
        try:
            reply = await self._exec("CONFIG", "GET", "maxmemory-policy")
        except Exception:  # CONFIG is often disabled on managed Redis
            return
        policy = reply[1] if isinstance(reply, list) and len(reply) == 2 else "noeviction"
        if policy != "noeviction":
            log.warning(
                "Redis at %s has maxmemory-policy %s: it may evict plait's keys and lose "
                "work; use noeviction (see docs/backends/redis.md)",
                self.options.shown,
                policy,
            )

    async def close(self) -> None:
        self._closing = True
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            await asyncio.wait([reader], timeout=2.0)
        await self._drop_client()

    async def _drop_client(self) -> None:
        client, self._client = self._client, None
        conns, self._free = self._free, []
        if self._shared is not None and self._key is not None:
            release(self._key, self._shared)
            self._shared, self._key = None, None
        if client is not None:
            for conn in conns:
                with contextlib.suppress(Exception):
                    await client.connection_pool.release(conn)
            with contextlib.suppress(Exception):
                await client.aclose()

    async def _load_scripts(self, replace: bool = False) -> None:
        """Make sure the server has our operations: the function library (loaded when it is
        missing, or ``replace`` after "Function not found"), else the scripts."""
        if self._functions:
            try:
                if replace or not await self._exec("FUNCTION", "LIST", "LIBRARYNAME", LIBRARY_NAME):
                    await self._exec("FUNCTION", "LOAD", "REPLACE", LIBRARY)
                self._target = {n: ("FCALL", f) for n, f in FUNCTIONS.items()}
                return
            except self._response_error as exc:  # before Redis 7, or not allowed
                expected = isinstance(exc, self._noperm) or "unknown command" in str(exc)
                (log.info if expected else log.warning)(
                    "Redis functions unavailable (%s): using EVALSHA scripts", exc
                )
                self._functions = False
        names = list(SCRIPTS)
        shas = await self._pipeline([("SCRIPT", "LOAD", SCRIPTS[n]) for n in names])
        self._sha.update(zip(names, shas, strict=True))
        self._target = {n: ("EVALSHA", self._sha[n]) for n in names}

    # -- round trips ---------------------------------------------------------------------------

    def _conn(self) -> Any:
        if self._client is None:
            raise BackendError(f"{self!r} is not open (use `async with Engine(...)`)")
        return self._free.pop() if self._free else None

    async def _exec(self, *command: Any) -> Any:
        return (await self._trip(_pack([command]), 1))[0]

    async def _pipeline(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        return await self._trip(_pack(commands), len(commands))

    async def _trip(self, packed: bytes, n: int) -> list[Any]:
        """Send ``n`` packed commands and read their replies, on a connection of our own free
        list (taken from redis-py's pool once and kept): the short path, without the pool's
        lock and per-command bookkeeping."""
        conn = self._conn() or await self._client.connection_pool.get_connection()
        try:
            await conn.send_packed_command(packed, check_health=False)
            if n == 1:  # the usual case, without a comprehension's frame
                replies = [await conn.read_response()]
            else:
                replies = [await conn.read_response() for _ in range(n)]
        except self._response_error:
            self._free.append(conn)  # a complete error reply: the connection is fine
            raise
        except BaseException:
            await conn.disconnect(nowait=True)  # state unknown: reconnect on next use
            self._free.append(conn)
            raise
        self._free.append(conn)
        return replies

    async def _retrying(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` (one round trip), riding out connection errors for ``retry_for``
        seconds. Every script is safe to send again after a lost reply: it finds its work
        done (fencing tokens, leases, request ids) or applies it once."""
        deadline: float | None = None
        delay = 0.02
        reload = False
        reloads = 0
        while True:
            try:
                if reload:  # the server lost our scripts or functions (a restart, a flush)
                    await self._load_scripts(replace=True)
                    reload = False
                return await fn()
            except self._response_error as exc:
                if not _lost_code(exc, self._noscript):
                    raise
                reloads += 1
                if reloads > 3:
                    raise
                reload = True
            except self._retryable as exc:
                if self._shared is not None:
                    self._shared.distrust()  # a restart may have lost writes
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.options.retry_for
                    log.warning("Redis unreachable (%s); retrying for %ss", exc, deadline - now)
                if now >= deadline:
                    raise BackendError(
                        f"Redis at {self.options.shown} unreachable for "
                        f"{self.options.retry_for}s: {exc}"
                    ) from exc
                await anyio.sleep(delay)
                delay = min(delay * 2, 0.5)

    async def _call(self, name: str, flags: str, kinds: str, now: float, *args: Any) -> Any:
        """EVALSHA the script ``name``. ``flags``: the queues it may make ready (published
        to other processes); ``kinds``: the queues it changes, whose summaries at ``now``
        come back and are remembered."""
        return (await self._call_rows(name, flags, kinds, now, *args))[0]

    async def _call_rows(
        self, name: str, flags: str, kinds: str, now: float, *args: Any
    ) -> tuple[Any, Any]:
        shared = self._shared
        message = shared.message(flags) if shared is not None else ""
        before = shared.snapshot(kinds) if shared is not None else []
        # Packed once: a reload brings back the same names (SHA1s, functions).
        call, target = self._target[name]
        packed = _pack([(call, target, 0, self.prefix, message, kinds, codec.ts(now), *args)])
        result, rows = json.loads((await self._retrying(lambda: self._trip(packed, 1)))[0])
        if shared is not None and shared is self._shared:
            shared.learn(kinds, before, now, rows, changed=name != "state")
        return result, rows

    async def _read(self, *command: Any) -> Any:
        return await self._retrying(lambda: self._exec(*command))

    def _empty(self, kind: str, now: float) -> bool:
        """True when this process knows that nothing of ``kind`` is ready at ``now``."""
        if self._shared is None:
            return False
        s = self._shared.known(kind, now)
        return s is not None and s.ready == 0

    def _changed(self, kinds: str) -> None:
        if self._shared is not None:
            self._shared.bump(kinds)
        self._wake.notify()

    def _poke(self, kinds: str) -> None:
        """Wake local waiters after a change to ``kinds``, unless the summaries it returned
        show that nothing became ready and nothing became due sooner than a waiter expects
        (e.g. a commit whose steps it leased to itself)."""
        shared = self._shared
        if shared is None:
            self._wake.notify()
            return
        for k in kinds:
            if shared.wakes_for(k):
                self._wake.notify()
                return

    # -- runs ----------------------------------------------------------------------------------

    async def create_run(
        self, record: RunRecord, inbox: Sequence[Event], now: float
    ) -> tuple[str, bool]:
        run_id, created = await self._call(
            "create_run", "w", "w", now, codec.dumps(codec.new_run(record, inbox)), codec.ts(now)
        )
        if created:
            self._poke("w")
        return run_id, bool(created)

    async def create_run_and_claim(
        self, record: RunRecord, inbox: Sequence[Event], now: float, lease_seconds: float
    ) -> tuple[str, bool, ClaimedRun | None]:
        """``create_run`` and, if it created the run, ``claim_workflow_task`` of that run, in one
        script. The task goes from nowhere to leased: nothing became ready, so the script
        publishes nothing and local waiters are not woken (the queue summary is still learned).

        Sent again after a lost reply (same request id), it creates nothing: it answers the same
        claim while that still holds (nobody claimed the task since), else (another worker took
        the task once the lost claim's lease expired) ``(run_id, False, None)``, as a resent
        ``create_run`` answers. Never two runs."""
        run_id, created, got = await self._call(
            "create_run_and_claim",
            "",
            "w",
            now,
            codec.dumps(codec.new_run(record, inbox)),
            codec.ts(now),
            codec.ts(now + lease_seconds),
            os.urandom(8).hex(),
        )
        if not created:
            return run_id, False, None
        return run_id, True, _claimed(got)

    async def create_run_and_commit(self, record: RunRecord, commit: Commit) -> tuple[str, bool]:
        """``create_run`` and, if it created the run, ``commit`` applied to it, in one script.
        Sent again after a lost reply (the commit's id is kept in the run), it finds its work
        done and answers as the first time. Never two runs."""
        check_start_commit(record, commit)
        kinds = codec.commit_kinds(commit)
        (run_id, got), rows = await self._call_rows(
            "create_run_and_commit",
            codec.speculative_flags(commit),
            kinds,
            commit.now,
            codec.dumps(codec.new_run(record, ())),
            *codec.commit_args(commit, speculative=True),
        )
        if not got:
            return run_id, False
        self._applied(commit, kinds, (got, rows))
        return run_id, True

    async def get_run(self, run_id: str) -> RunRecord | None:
        if self._shared is not None:
            closed = self._shared.closed.get(run_id)
            if closed is not None:
                return closed  # type: ignore[no-any-return]
        flat = await self._call("get_run", "", "", 0.0, run_id)
        return codec.record(run_id, codec.pairs(flat)) if flat else None

    async def list_runs(
        self,
        *,
        status: RunStatus | None = None,
        workflow: str | None = None,
        parent: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[RunRecord]:
        p = self.prefix
        # One index narrows the scan (parent, then status, then workflow); any further
        # filter is checked on the records themselves.
        want_status: RunStatus | None = None
        want_wf: str | None = None
        if parent is not None:
            index, want_status, want_wf = f"{p}kids:{parent}", status, workflow
        elif status is not None:
            index, want_wf = f"{p}st:{RunStatus(status).value}", workflow
        elif workflow is not None:
            index = f"{p}bywf:{workflow}"
        else:
            index = f"{p}runs"
        exact = want_status is None and want_wf is None
        out: list[RunRecord] = []
        skip = 0 if exact else offset
        start = offset if exact else 0
        chunk = max(limit, 100) if exact else 500
        while len(out) < limit:
            ids = await self._read("ZRANGE", index, start, start + chunk - 1)
            if not ids:
                break
            start += len(ids)
            for rec in await self._records(ids):
                if rec is None:
                    continue
                if want_status is not None and rec.status != want_status:
                    continue
                if want_wf is not None and rec.workflow != want_wf:
                    continue
                if skip > 0:
                    skip -= 1
                    continue
                out.append(rec)
                if len(out) == limit:
                    break
            if len(ids) < chunk:
                break
        return out

    async def _records(self, ids: Sequence[str]) -> list[RunRecord | None]:
        commands = [("HGETALL", f"{self.prefix}run:{i}") for i in ids]
        flats = await self._retrying(lambda: self._pipeline(commands))
        return [
            codec.record(i, codec.pairs(f)) if f else None for i, f in zip(ids, flats, strict=True)
        ]

    async def read_history(self, run_id: str) -> list[Event]:
        items = await self._read("LRANGE", f"{self.prefix}hist:{run_id}", 0, -1)
        return [codec.ev(text) for text in items]

    async def append_history(self, run_id: str, events: Sequence[Event]) -> None:
        if events:
            await self._call("append_history", "", "", 0.0, run_id, *[codec.ej(e) for e in events])

    async def append_inbox(self, run_id: str, events: Sequence[Event], now: float) -> bool:
        ok = await self._call(
            "append_inbox",
            "w",
            "w",
            now,
            run_id,
            uuid.uuid4().hex,
            codec.ts(now),
            *[codec.ej(e) for e in events],
        )
        if ok:
            self._poke("w")
        return bool(ok)

    # -- workflow tasks ------------------------------------------------------------------------

    async def claim_workflow_task(self, now: float, lease_seconds: float) -> ClaimedRun | None:
        if self._empty("w", now):
            return None
        got = await self._call(
            "claim_workflow", "", "w", now, codec.ts(now), codec.ts(now + lease_seconds)
        )
        return _claimed(got) if got else None

    async def renew_workflow_lease(
        self, run_id: str, lease: int, now: float, seconds: float
    ) -> bool:
        ok = await self._call(
            "renew_workflow", "", "w", now, run_id, lease, codec.ts(now + seconds)
        )
        return bool(ok)

    async def requeue_workflow_task(self, run_id: str, now: float) -> bool:
        ok = bool(await self._call("requeue_workflow", "w", "w", now, run_id, codec.ts(now)))
        if ok:
            self._poke("w")
        return ok

    async def apply_commit(self, commit: Commit) -> bool:
        kinds = codec.commit_kinds(commit)
        answer = await self._call_rows(
            "apply_commit", kinds, kinds, commit.now, *codec.commit_args(commit)
        )
        return self._applied(commit, kinds, answer)

    def _applied(self, commit: Commit, kinds: str, answer: tuple[Any, Any]) -> bool:
        """The answer of a commit: 0, 1, or the record of the run it closed (remembered),
        with summaries of the queues it changed. Steps it leased to the committer wake no
        local waiter: their leases expire long after any worker loop polls again."""
        got, rows = answer
        if not got:
            return False
        run_id = commit.run_id
        if isinstance(got, list) and self._shared is not None:
            self._shared.remember_closed(run_id, codec.record(run_id, codec.pairs(got)))
        own = not commit.unleased_steps
        self._poke(
            "".join(k for k, row in zip(kinds, rows, strict=True) if row and not (own and k == "s"))
        )
        return True

    # -- steps ---------------------------------------------------------------------------------

    async def claim_step_tasks(
        self, now: float, limit: int, lease_seconds: float
    ) -> list[StepTask]:
        if limit <= 0 or self._empty("s", now):
            return []
        rows = await self._call(
            "claim_steps", "", "s", now, codec.ts(now), limit, codec.ts(now + lease_seconds)
        )
        out = []
        for run_id, seq, data, attempt, ready_at, lease in rows:
            name, args = json.loads(data)
            out.append(
                StepTask(run_id, int(seq), name, args, int(attempt), float(ready_at), int(lease))
            )
        return out

    async def heartbeat_step(
        self, run_id: str, seq: int, lease: int, now: float, seconds: float
    ) -> bool:
        ok = await self._call(
            "heartbeat_step", "", "s", now, run_id, seq, lease, codec.ts(now + seconds)
        )
        return bool(ok)

    async def finish_step(
        self, run_id: str, seq: int, lease: int, outcome: Event, now: float
    ) -> bool:
        ok = await self._call(
            "finish_step",
            "w",
            "ws",
            now,
            run_id,
            seq,
            lease,
            codec.ej(outcome),
            codec.ts(now),
        )
        if ok:
            self._poke("ws")
        return bool(ok)

    async def finish_step_and_claim(
        self, run_id: str, seq: int, lease: int, outcome: Event, now: float, lease_seconds: float
    ) -> tuple[bool, ClaimedRun | None]:
        ok, got = await self._call(
            "finish_step_and_claim",
            "w",
            "ws",
            now,
            run_id,
            seq,
            lease,
            codec.ej(outcome),
            codec.ts(now),
            codec.ts(now + lease_seconds),
        )
        if not ok:
            return False, None
        self._poke("ws")
        return True, _claimed(got) if got else None

    async def finish_step_and_commit(
        self, run_id: str, seq: int, lease: int, commit: Commit, history_length: int
    ) -> bool:
        if commit.run_id != run_id:
            return False
        kinds = codec.commit_kinds(commit)
        if "s" not in kinds:  # the finished step leaves the step queue
            kinds = "ws" + kinds[1:]
        elif len(commit.steps) == 1 and commit.steps[0].pre_leased and not codec.closing(commit):
            # One held step for another: nothing became ready and as many are leased, so what
            # is known of the steps still holds (its next due time is at worst too early).
            kinds = kinds.replace("s", "")
        answer = await self._call_rows(
            "finish_step_and_commit",
            codec.speculative_flags(commit),
            kinds,
            commit.now,
            seq,
            str(lease),
            history_length,
            *codec.commit_args(commit, speculative=True),
        )
        return self._applied(commit, kinds, answer)

    async def retry_step(
        self, run_id: str, seq: int, lease: int, attempt: int, ready_at: float
    ) -> bool:
        # No ``now`` here to describe the queue at: forget what we knew of the steps instead.
        ok = await self._call(
            "retry_step", "s", "", 0.0, run_id, seq, lease, attempt, codec.ts(ready_at)
        )
        self._changed("s")
        return bool(ok)

    # -- timers and hooks ----------------------------------------------------------------------

    async def fire_due_timers(self, now: float, limit: int = 1000) -> int:
        if self._empty("t", now):
            return 0
        n = int(
            await self._call(
                "fire_timers", "w", "tw", now, codec.ts(now), limit, *codec.TIMER_FIRED
            )
        )
        if n:
            self._poke("tw")
        return n

    async def resume_hook(self, token: str, payload: Any, now: float) -> str | None:
        pre, post = codec.hook_received(payload)
        run_id = await self._call(
            "resume_hook", "w", "w", now, token, uuid.uuid4().hex, pre, post, codec.ts(now)
        )
        if run_id:
            self._poke("w")
        return run_id or None

    # -- idle detection ------------------------------------------------------------------------

    async def state(self, now: float) -> BackendState:
        shared = self._shared
        known = [shared.known(k, now) for k in KINDS] if shared is not None else []
        if len(known) == len(KINDS) and all(s is not None for s in known):
            due = [s.next_due for s in known if s is not None and s.next_due is not None]
            w, s, t = known
            assert w is not None and s is not None and t is not None
            self._wake.expect(min(due) if due else None)
            return BackendState(
                ready_workflow_tasks=w.ready,
                leased_workflow_tasks=w.leased,
                ready_steps=s.ready,
                leased_steps=s.leased,
                timers=t.leased,
                next_due=min(due) if due else None,
            )
        _, rows = await self._call_rows("state", "", KINDS, now)
        st = _state(rows)
        self._wake.expect(st.next_due)
        return st

    # -- wake-ups ------------------------------------------------------------------------------

    def notify(self) -> None:
        self._wake.notify()

    async def wait(self, timeout: float) -> None:
        # Without a live subscription a change elsewhere would go unseen: poll with a bound.
        await self._wake.wait(timeout if self._subscribed else min(timeout, 0.25))

    async def _listen(self) -> None:
        """Turn ``<prefix>wake`` messages from other processes into local wake-ups; resubscribe
        after connection loss (and trust no summary then: messages may have been missed)."""
        channel = f"{self.prefix}wake"
        delay = 0.05
        task = asyncio.current_task()
        assert task is not None
        while self._client is not None and not self._closing:
            shared = self._shared
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            up = False
            try:
                await pubsub.subscribe(channel)
                up = self._subscribed = True
                if shared is not None:
                    shared.live += 1
                    shared.bump()
                self._wake.notify()
                delay = 0.05
                while not self._closing:
                    msg = await pubsub.get_message(timeout=5.0)
                    if msg is not None and shared is not None:
                        shared.remote(str(msg.get("data", "")))
            except Exception as exc:
                # redis-py may turn a cancellation into a connection error: honour it.
                if task.cancelling() or self._closing:
                    raise asyncio.CancelledError() from exc
                log.debug("wake-up subscription lost: %s", exc)
                self._wake.notify()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
            finally:
                self._subscribed = False
                if up and shared is not None:
                    shared.live -= 1
                    shared.bump()
                with contextlib.suppress(BaseException):
                    await asyncio.shield(pubsub.aclose())


def _pack(commands: Sequence[Sequence[Any]]) -> bytes:
    """RESP-encode commands (str, int and float arguments)."""
    parts = []
    for command in commands:
        parts.append(f"*{len(command)}\r\n")
        for arg in command:
            text = arg if type(arg) is str else str(arg)
            parts.append(f"${len(text) if text.isascii() else len(text.encode())}\r\n{text}\r\n")
    return "".join(parts).encode()


def _lost_code(exc: BaseException, noscript: type[BaseException]) -> bool:
    """The server does not have the script (NOSCRIPT) or the function called."""
    return isinstance(exc, noscript) or "Function not found" in str(exc)


def _claimed(got: Sequence[Any]) -> ClaimedRun:
    run_id, fence, flat, inbox, history_length = got
    return ClaimedRun(
        run=codec.record(run_id, codec.pairs(flat)),
        lease=int(fence),
        inbox=tuple(codec.inbox_entry(text) for text in inbox),
        history_length=int(history_length),
    )


def _state(rows: Sequence[Any]) -> BackendState:
    (wr, wl, *wd), (sr, sl, *sd), (tr, tl, *td) = rows
    due = [float(v) for v in (*wd, *sd, *td) if v]
    return BackendState(
        ready_workflow_tasks=int(wr),
        leased_workflow_tasks=int(wl),
        ready_steps=int(sr),
        leased_steps=int(sl),
        timers=int(tl),
        next_due=min(due) if due else None,
    )


class RedisBackendPlugin:
    """Registers ``redis://`` and ``rediss://`` through the entry-point group ``plait``."""

    from ..plugins.hookspecs import hookimpl as _hookimpl

    @staticmethod
    @_hookimpl
    def plait_backend_schemes() -> dict[str, Callable[[str], Any]]:
        return {"redis": RedisBackend.from_url, "rediss": RedisBackend.from_url}
