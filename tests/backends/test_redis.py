"""The Redis backend: URL forms and options, the missing extra, schema refusal, NOSCRIPT
reloads, exact times, the protocol's guarantees under concurrency (fencing, key and hook
uniqueness, claimers on separate backend objects), wake-ups between processes, three worker
processes on one store, a Redis restart (AOF on) in the middle of a batch, two deployments
under different prefixes in one Redis, and the query rate of an idle worker.

Needs a Redis server (``plait.testing.servers``): skipped without one unless
``PLAIT_REQUIRE_BACKENDS`` names redis.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import pytest

import plait
from plait.backends.base import (
    BackendError,
    Commit,
    Delivery,
    HookReg,
    SchemaError,
    StepTask,
    Timer,
)
from plait.kernel import events as ev
from plait.kernel.status import RunStatus
from plait.plugins.manager import backend_from_url
from plait.testing._conformance_support import (
    LEASE,
    T0,
    claim_run,
    commit,
    create,
    make_record,
    start_with,
    started,
)
from plait.testing.pytest_plugin import isolated_url
from plait.testing.replay import replay, replay_all

pytestmark = [pytest.mark.anyio, pytest.mark.backend("redis")]

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _redis_worker_script as wf  # noqa: E402

from plait.backends.redis import (  # noqa: E402
    INSTALL_HINT,
    MissingRedisExtra,
    RedisBackend,
    parse_url,
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def url(tmp_path: Path) -> str:
    return isolated_url("redis", tmp_path)


class _Opened:
    """``async with _Opened(url, n) as (b1, b2, ...)``: n backend objects on one store."""

    def __init__(self, url: str, n: int = 1) -> None:
        self.backends = [RedisBackend(url) for _ in range(n)]

    async def __aenter__(self) -> list[RedisBackend]:
        for b in self.backends:
            await b.open()
        return self.backends

    async def __aexit__(self, *exc: object) -> None:
        for b in self.backends:
            await b.close()


def _client(url: str) -> Any:
    import redis

    return redis.Redis.from_url(parse_url(url).redis_url, decode_responses=True)


def _elsewhere(url: str) -> str:
    """The same store spelled differently: a backend on it shares no process-local state with
    one on ``url``, so it behaves like a backend in another process (wake-ups by pub/sub)."""
    return f"{url}&health_check_interval=0"


# -- URLs, options, the extra ------------------------------------------------------------------


def test_url_options_are_stripped_and_the_rest_goes_to_redis_py() -> None:
    o = parse_url(
        "redis://u:p%40ss@cache.example:6380/3?prefix=jobs:&retry_for=2.5&ssl_cert_reqs=none"
    )
    assert (o.db, o.prefix, o.retry_for) == (3, "jobs:", 2.5)
    assert o.redis_url == "redis://u:p%40ss@cache.example:6380/3?ssl_cert_reqs=none"
    d = parse_url("redis://localhost")
    assert (d.db, d.prefix, d.retry_for, d.redis_url) == (0, "plait:", 30.0, "redis://localhost/0")
    t = parse_url("rediss://h:1/")
    assert (t.db, t.redis_url) == (0, "rediss://h:1/0")


@pytest.mark.parametrize(
    "bad",
    [
        "redis://h/abc",
        "redis://h/-1",
        "redis://h/0?prefix=",
        "redis://h/0?retry_for=soon",
        "http://h/0",
    ],
)
def test_bad_urls_are_refused(bad: str) -> None:
    with pytest.raises(BackendError):
        parse_url(bad)


def test_both_schemes_map_to_the_backend() -> None:
    for scheme in ("redis", "rediss"):
        b = backend_from_url(f"{scheme}://localhost:6379/2?prefix=x:")
        assert isinstance(b, RedisBackend)
        assert (b.options.db, b.prefix) == (2, "x:")
    assert "pw" not in repr(RedisBackend("redis://:pw@h/0"))


def test_missing_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # `import redis` raises ImportError
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    with pytest.raises(MissingRedisExtra, match=r"pip install 'plait\[redis\]'"):
        backend_from_url("redis://localhost/0")
    with pytest.raises(ImportError):  # it is an ImportError too
        RedisBackend("redis://localhost/0")
    assert "plait[redis]" in INSTALL_HINT


def test_the_module_imports_without_redis() -> None:
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "import plait.backends.redis as m\n"
        "from plait.plugins.manager import backend_factories\n"
        "assert {'redis', 'rediss'} <= set(backend_factories())\n"
        "try:\n"
        "    m.RedisBackend.from_url('redis://h/0')\n"
        "except Exception as e:\n"
        "    print(type(e).__name__, e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "MissingRedisExtra" in out.stdout and "pip install 'plait[redis]'" in out.stdout


async def test_an_unreachable_server_is_a_clear_error() -> None:
    b = RedisBackend("redis://127.0.0.1:1/0?retry_for=0.3")
    t0 = time.monotonic()
    with pytest.raises(BackendError, match="unreachable"):
        await b.open()
    assert time.monotonic() - t0 < 10


# -- the store ---------------------------------------------------------------------------------


async def test_a_foreign_or_newer_store_is_refused(url: str) -> None:
    prefix = parse_url(url).prefix
    c = _client(url)
    try:
        c.set(f"{prefix}meta", "someone else's")
        b = RedisBackend(url)
        with pytest.raises(SchemaError, match="not a plait store"):
            await b.open()
        await b.close()
        assert c.get(f"{prefix}meta") == "someone else's"
        c.delete(f"{prefix}meta")
        c.hset(f"{prefix}meta", mapping={"magic": "plait", "version": 99})
        b = RedisBackend(url)
        with pytest.raises(SchemaError, match="newer"):
            await b.open()
        await b.close()
    finally:
        c.close()


async def test_functions_are_reloaded_after_they_are_deleted(url: str) -> None:
    from plait.backends._redis_lua import LIBRARY_NAME

    async with _Opened(url) as (b,):
        if not b._functions:
            pytest.skip("a Redis before 7 has no functions")
        assert {call for call, _ in b._target.values()} == {"FCALL"}
        rec = await create(b)
        c = _client(url)
        try:
            c.function_delete(LIBRARY_NAME)  # as FUNCTION FLUSH or a restart without them
        finally:
            c.close()
        got = await claim_run(b, rec.run_id)  # "Function not found", reload, call again
        assert await b.apply_commit(commit(got, events=(ev.Activated(T0),)))
        assert await b.read_history(rec.run_id) == [ev.Activated(T0)]


def _scripts_only(url: str) -> RedisBackend:
    """A backend that calls EVALSHA scripts, as on a Redis without functions (before 7)."""
    b = RedisBackend(url)
    b._functions = False
    return b


async def test_script_replies_of_any_size_errors_and_broken_connections(url: str) -> None:
    async with _Opened(url) as (b,):
        big = "é" * 70_000 + "\r\n$5\r\n" + "x" * 70_000  # over one read, with RESP look-alikes
        rec = make_record()
        assert await b.create_run(rec, (started(rec, big),), T0) == (rec.run_id, True)
        got = await claim_run(b, rec.run_id)
        assert got.inbox[0].event == started(rec, big)
        with pytest.raises(b._response_error, match="nil value"):
            await b._call("get_run", "", "", 0.0)  # the script fails: an error reply
        assert await b.get_run(rec.run_id) is not None, "the connection did not survive it"
        conn = b._free[-1]
        conn._writer.transport.abort()  # the connection breaks between calls
        assert await b.get_run(rec.run_id) is not None, "a broken connection was not retried"


async def test_scripts_are_reloaded_after_script_flush(url: str) -> None:
    b = _scripts_only(url)
    await b.open()
    try:
        assert {call for call, _ in b._target.values()} == {"EVALSHA"}
        rec = await create(b)
        c = _client(url)
        try:
            c.script_flush()
            assert not any(c.script_exists(*b._sha.values()))
        finally:
            c.close()
        got = await claim_run(b, rec.run_id)  # NOSCRIPT, reload, call again
        assert await b.apply_commit(commit(got, events=(ev.Activated(T0),)))
        assert await b.read_history(rec.run_id) == [ev.Activated(T0)]
    finally:
        await b.close()


async def test_a_user_refused_functions_gets_scripts(url: str) -> None:
    c = _client(url)
    user = f"plait-nofn-{time.time_ns()}"
    try:
        c.execute_command("ACL", "SETUSER", user, "on", ">pw", "~*", "&*", "+@all", "-function")
        parts = urlsplit(url)
        limited = urlunsplit(parts._replace(netloc=f"{user}:pw@{parts.hostname}:{parts.port}"))
        async with _Opened(limited) as (b,):
            assert {call for call, _ in b._target.values()} == {"EVALSHA"}
            rec = await create(b)
            got = await claim_run(b, rec.run_id)
            assert await b.apply_commit(commit(got, events=(ev.Activated(T0),)))
    finally:
        c.execute_command("ACL", "DELUSER", user)
        c.close()


async def test_scripts_and_functions_run_one_store_together(url: str) -> None:
    """Every operation passes through both: one run moved on by each in turn."""
    async with _Opened(url) as (f,):
        s = _scripts_only(url)
        await s.open()
        try:
            rec = await start_with(f, steps=(StepTask("", 1, "s", [], 1, T0),))
            (task,) = await s.claim_step_tasks(T0, 5, LEASE)
            history = await f.read_history(rec.run_id)
            nxt = StepTask(rec.run_id, 2, "s", [], 1, T0 + 1, 77, T0 + 1 + LEASE)
            events = (ev.StepCompleted(1, "a"), ev.StepScheduled(2, "s", []))
            c = Commit(run_id=rec.run_id, lease=0, now=T0 + 1, events=events, steps=(nxt,))
            assert await s.finish_step_and_commit(rec.run_id, 1, task.lease, c, len(history))
            assert await f.heartbeat_step(rec.run_id, 2, 77, T0 + 2, LEASE)
            done = Commit(
                run_id=rec.run_id,
                lease=0,
                now=T0 + 3,
                events=(ev.StepCompleted(2, "b"),),
                status=RunStatus.COMPLETED,
                result="b",
            )
            assert await f.finish_step_and_commit(rec.run_id, 2, 77, done, len(history) + 2)
            got = await s.get_run(rec.run_id)
            assert got is not None and got.status is RunStatus.COMPLETED and got.result == "b"
            assert (await f.read_history(rec.run_id))[len(history) :] == [*events, *done.events]
        finally:
            await s.close()


async def test_times_are_stored_exactly(url: str) -> None:
    t = 1_767_225_600.123456  # 16 significant digits: a Lua number would keep 14
    async with _Opened(url) as (b,):
        rec = await create(b, make_record(created_at=t), now=t)
        assert (await b.get_run(rec.run_id)).created_at == t  # type: ignore[union-attr]
        got = await claim_run(b, rec.run_id, t)
        timer = Timer(rec.run_id, 1, t + 0.000001)
        retry = StepTask(rec.run_id, 2, "s", [], 1, t + 0.000002)
        assert await b.apply_commit(commit(got, t, timers=(timer,), steps=(retry,)))
        st = await b.state(t)
        assert st.next_due == t + 0.000001
        assert await b.fire_due_timers(t) == 0
        assert await b.fire_due_timers(t + 0.000001) == 1
        assert await b.claim_step_tasks(t + 0.000001, 5, LEASE) == []
        (task,) = await b.claim_step_tasks(t + 0.000002, 5, LEASE)
        assert task.ready_at == t + 0.000002


async def test_calls_resent_after_a_lost_reply_apply_once(url: str) -> None:
    from plait.backends import _redis_codec as codec

    async with _Opened(url) as (b,):
        rec = await create(b)
        got = await claim_run(b, rec.run_id)
        body = codec.commit_args(commit(got, events=(ev.Activated(T0),)))
        for _ in range(2):  # the retry of a commit whose reply was lost
            assert await b._call("apply_commit", "w", "w", T0, *body) == 1
        assert await b.read_history(rec.run_id) == [ev.Activated(T0)]
        signal = codec.ej(ev.SignalReceived("s", 1))
        for _ in range(2):  # the retry of a signal whose reply was lost
            args = (rec.run_id, "req-1", codec.ts(T0), signal)
            assert await b._call("append_inbox", "w", "w", T0, *args) == 1
        again = await claim_run(b, rec.run_id)
        assert [e.event for e in again.inbox] == [ev.SignalReceived("s", 1)]


async def test_a_speculative_commit_resent_after_a_lost_reply_applies_once(url: str) -> None:
    from plait.backends import _redis_codec as codec

    async with _Opened(url) as (b,):
        rec = await start_with(b, steps=(StepTask("", 1, "s", [], 1, T0),))
        (task,) = await b.claim_step_tasks(T0, 5, LEASE)
        length = len(await b.read_history(rec.run_id))
        events = (ev.StepCompleted(1, "r"), ev.Activated(T0 + 1))
        c = Commit(run_id=rec.run_id, lease=0, now=T0 + 1, events=events)
        args = (1, str(task.lease), length, *codec.commit_args(c, speculative=True))
        for _ in range(2):  # the step is gone the second time: the commit id answers
            assert await b._call("finish_step_and_commit", "", "ws", T0 + 1, *args) == 1
        assert (await b.read_history(rec.run_id))[length:] == list(events)
        assert not await b.heartbeat_step(rec.run_id, 1, task.lease, T0 + 2, LEASE)


@pytest.mark.parametrize("functions", [True, False], ids=["fcall", "evalsha"])
async def test_an_eager_start_is_one_quiet_round_trip(url: str, functions: bool) -> None:
    b = RedisBackend(url) if functions else _scripts_only(url)
    await b.open()
    c = _client(url)
    listener = c.pubsub(ignore_subscribe_messages=True)
    try:
        if functions and not b._functions:
            pytest.skip("a Redis before 7 has no functions")
        listener.subscribe(f"{b.prefix}wake")  # another process listens: wake-ups are published
        with anyio.fail_after(5):
            while not b._subscribed:
                await anyio.sleep(0.01)
        trips: list[bytes] = []
        real = b._trip

        async def counted(packed: bytes, n: int) -> list[Any]:
            trips.append(packed)
            return await real(packed, n)

        b._trip = counted  # type: ignore[method-assign]
        generation = b._wake.generation
        rec = make_record()
        run_id, created, got = await b.create_run_and_claim(rec, (started(rec),), T0, LEASE)
        assert (run_id, created) == (rec.run_id, True) and got is not None and got.lease == 1
        assert len(trips) == 1, "an eager start took more than one round trip"
        assert trips[0].split(b"\r\n")[2] == (b"FCALL" if functions else b"EVALSHA")
        assert b._wake.generation == generation, "an eager start woke local waiters"
        assert await b.claim_workflow_task(T0, LEASE) is None
        assert len(trips) == 1, "the claim after an eager start was not answered locally"
        st = await b.state(T0)
        assert (st.ready_workflow_tasks, st.leased_workflow_tasks) == (0, 1)
        await create(b)  # a plain start makes work ready: it publishes
        messages = []
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:  # (an ignored subscribe confirmation reads as None)
            msg = listener.get_message(timeout=0.05)
            if msg is not None:
                messages.append(msg)
        assert len(messages) == 1, f"expected only the plain start's wake-up: {messages}"
        assert await b.apply_commit(commit(got, events=(ev.Activated(T0),)))
    finally:
        listener.close()
        c.close()
        await b.close()


def _lossy(b: RedisBackend) -> tuple[list[bytes], Any, Any]:
    """A ``_trip`` for ``b`` that loses the reply of the first call it sends, after the server
    applied it (clear the list to lose the next one): (calls sent, the lossy trip, the real)."""
    import redis.exceptions

    real = b._trip
    sent: list[bytes] = []

    async def lossy(packed: bytes, n: int) -> list[Any]:
        replies = await real(packed, n)
        sent.append(packed)
        if len(sent) == 1:
            raise redis.exceptions.ConnectionError("the reply was lost")
        return replies

    return sent, lossy, real


async def test_an_eager_start_resent_after_a_lost_reply_creates_one_run(url: str) -> None:
    from plait.backends import _redis_codec as codec

    async with _Opened(url) as (b,):
        sent, lossy, real = _lossy(b)
        b._trip = lossy  # type: ignore[method-assign]
        rec = make_record(key="eager-resent")
        run_id, created, got = await b.create_run_and_claim(rec, (started(rec),), T0, LEASE)
        assert len(sent) == 2 and sent[0] == sent[1], "the call was not sent again"
        assert (run_id, created) == (rec.run_id, True), "the resend did not recognise its run"
        assert got is not None and got.lease == 1 and got.history_length == 0
        assert [e.event for e in got.inbox] == [started(rec)]
        b._trip = real  # type: ignore[method-assign]
        assert [r.run_id for r in await b.list_runs()] == [rec.run_id]
        assert await b.apply_commit(commit(got, events=(ev.Activated(T0),)))

        # Resent after the lease expired and another worker claimed the task: nothing created,
        # no claim (the other worker's holds).
        other = make_record()
        args = (codec.dumps(codec.new_run(other, (started(other),))), codec.ts(T0))
        call = ("create_run_and_claim", "", "w", T0, *args, codec.ts(T0 + LEASE), "req-1")
        first = await b._call(*call)
        assert first[:2] == [other.run_id, 1]
        taken = await claim_run(b, other.run_id, T0 + LEASE)
        assert await b._call(*call) == [other.run_id, 0, False]
        assert len(await b.list_runs()) == 2
        assert await b.apply_commit(commit(taken, T0 + LEASE, events=(ev.Activated(T0),)))


async def test_state_stays_right_across_speculations_that_hand_over_one_step(url: str) -> None:
    async with _Opened(url) as (b,):
        with anyio.fail_after(5):  # summaries are trusted only with a live subscription
            while not b._subscribed:
                await anyio.sleep(0.01)
        rec = await start_with(b, steps=(StepTask("", 1, "s", [], 1, T0),))
        (task,) = await b.claim_step_tasks(T0, 5, LEASE)
        for seq in range(2, 5):  # each commit finishes one held step and leases the next
            length = len(await b.read_history(rec.run_id))
            expires = T0 + seq + LEASE
            nxt = StepTask(rec.run_id, seq, "s", [], 1, T0 + seq, 100 + seq, expires)
            events = (ev.StepCompleted(seq - 1, "r"), ev.Activated(T0 + seq))
            c = Commit(run_id=rec.run_id, lease=0, now=T0 + seq, events=events, steps=(nxt,))
            assert await b.finish_step_and_commit(rec.run_id, seq - 1, task.lease, c, length)
            task = nxt
            st = await b.state(T0 + seq)
            assert (st.ready_steps, st.leased_steps) == (0, 1), f"after step {seq - 1}"
            assert st.next_due is not None and st.next_due <= expires
        assert await b.claim_step_tasks(T0 + 5, 5, LEASE) == []
        st = await b.state(T0 + 4 + LEASE)  # the last lease expired: its step is ready again
        assert (st.ready_steps, st.leased_steps) == (1, 0)
        (again,) = await b.claim_step_tasks(T0 + 4 + LEASE, 5, LEASE)
        assert again.seq == 4


async def test_a_start_with_commit_resent_after_a_lost_reply_creates_one_run(url: str) -> None:
    async with _Opened(url) as (b,):
        sent, lossy, real = _lossy(b)
        b._trip = lossy  # type: ignore[method-assign]
        rec = make_record(key="commit-resent")
        pre = StepTask(rec.run_id, 1, "s", [1], 1, T0, 99, T0 + LEASE)
        events = (started(rec), ev.Activated(T0), ev.StepScheduled(1, "s", [1]))
        c = Commit(run_id=rec.run_id, lease=None, now=T0, events=events, steps=(pre,))
        assert await b.create_run_and_commit(rec, c) == (rec.run_id, True)
        assert len(sent) == 2 and sent[0] == sent[1], "the call was not sent again"
        b._trip = real  # type: ignore[method-assign]
        assert [r.run_id for r in await b.list_runs()] == [rec.run_id]
        assert await b.read_history(rec.run_id) == list(events), "the commit applied twice"
        assert await b.heartbeat_step(rec.run_id, 1, 99, T0, LEASE)

        # A run that closed at once: the resend answers with its record, nothing twice.
        done = make_record(key="closed-resent")
        closes = Commit(
            run_id=done.run_id,
            lease=None,
            now=T0,
            events=(started(done), ev.Activated(T0)),
            status=RunStatus.COMPLETED,
            result=7,
        )
        sent.clear()
        b._trip = lossy  # type: ignore[method-assign]
        assert await b.create_run_and_commit(done, closes) == (done.run_id, True)
        b._trip = real  # type: ignore[method-assign]
        got = await b.get_run(done.run_id)
        assert got is not None and got.status is RunStatus.COMPLETED and got.result == 7
        assert len(await b.read_history(done.run_id)) == 2


async def test_a_start_with_commit_is_one_quiet_round_trip(url: str) -> None:
    async with _Opened(url) as (b,):
        trips: list[bytes] = []
        real = b._trip

        async def counted(packed: bytes, n: int) -> list[Any]:
            trips.append(packed)
            return await real(packed, n)

        b._trip = counted  # type: ignore[method-assign]
        generation = b._wake.generation
        rec = make_record()
        pre = StepTask(rec.run_id, 1, "s", [1], 1, T0, 5, T0 + LEASE)
        events = (started(rec), ev.Activated(T0), ev.StepScheduled(1, "s", [1]))
        c = Commit(run_id=rec.run_id, lease=None, now=T0, events=events, steps=(pre,))
        assert await b.create_run_and_commit(rec, c) == (rec.run_id, True)
        assert len(trips) == 1, "a start with commit took more than one round trip"
        assert b._wake.generation == generation, "a start with commit woke local waiters"
        assert await b.claim_workflow_task(T0, LEASE) is None, "the new run was queued"
        assert await b.claim_step_tasks(T0, 5, LEASE) == [], "its pre-leased step was claimable"


async def test_a_closed_run_is_read_from_what_its_commit_returned(url: str) -> None:
    async with _Opened(url) as (b,), _Opened(_elsewhere(url)) as (other,):
        rec = await create(b, key="k-closed")
        got = await claim_run(b, rec.run_id)
        assert await b.apply_commit(
            commit(got, events=(ev.Activated(T0),), status=RunStatus.COMPLETED, result=[1])
        )
        trips: list[Any] = []
        real = b._trip

        async def counted(packed: bytes, n: int) -> list[Any]:
            trips.append(packed)
            return await real(packed, n)

        b._trip = counted  # type: ignore[method-assign]
        mine = await b.get_run(rec.run_id)
        assert trips == [], "a run this process closed was read from Redis"
        assert mine is not None and mine == await other.get_run(rec.run_id)
        assert mine.closed and mine.result == [1] and mine.key == "k-closed"
        assert b._shared is not None
        b._shared.distrust()  # connection trouble: a restart may have lost the close
        assert await b.get_run(rec.run_id) == mine and len(trips) == 1


# -- protocol guarantees under concurrency -------------------------------------------------------


async def test_a_stale_lease_is_fenced_out(url: str) -> None:
    async with _Opened(url, 2) as (a, b):
        rec = await create(a)
        first = await claim_run(a, rec.run_id, T0)
        second = await claim_run(b, rec.run_id, T0 + LEASE + 1)  # the lease expired
        assert second.lease > first.lease
        assert not await a.renew_workflow_lease(rec.run_id, first.lease, T0 + 40, LEASE)
        assert not await a.apply_commit(commit(first, T0 + 41, events=(ev.Activated(T0),)))
        assert await a.read_history(rec.run_id) == []
        assert await b.apply_commit(commit(second, T0 + 42, events=(ev.Activated(T0 + 42),)))
        assert await a.read_history(rec.run_id) == [ev.Activated(T0 + 42)]
        # terminate (lease=None) fences out the holder of a live lease, too
        assert await a.append_inbox(rec.run_id, (ev.SignalReceived("s"),), T0 + 43)
        third = await claim_run(a, rec.run_id, T0 + 43)
        forced = Commit(
            run_id=rec.run_id,
            lease=None,
            now=T0 + 44,
            status=RunStatus.TERMINATED,
            events=(ev.RunTerminated("x"),),
        )
        assert await b.apply_commit(forced)
        assert not await a.apply_commit(commit(third, T0 + 45))
        assert (await a.get_run(rec.run_id)).status is RunStatus.TERMINATED  # type: ignore[union-attr]


async def test_racing_starters_with_one_key_create_one_run(url: str) -> None:
    async with _Opened(url, 2) as local, _Opened(_elsewhere(url), 2) as remote:
        backends = local + remote
        records = [make_record(key="order-42") for _ in range(8)]

        async def start(i: int) -> tuple[str, bool]:
            r = records[i]
            return await backends[i % 4].create_run(r, (started(r),), T0)

        results = await _gather(*(start(i) for i in range(len(records))))
        winners = [rid for rid, created in results if created]
        assert len(winners) == 1
        assert {rid for rid, _ in results} == set(winners)
        got = await claim_run(backends[0], winners[0])
        assert await backends[0].apply_commit(commit(got, status=RunStatus.COMPLETED))
        again = make_record(key="order-42")  # closing the run released the key
        assert await backends[3].create_run(again, (started(again),), T0) == (again.run_id, True)


async def test_racing_hooks_with_one_token_register_once(url: str) -> None:
    async with _Opened(url) as (a,), _Opened(_elsewhere(url)) as (b,):
        r1, r2 = await create(a), await create(b)
        c1 = await a.claim_workflow_task(T0, LEASE)
        c2 = await b.claim_workflow_task(T0, LEASE)
        assert c1 is not None and c2 is not None
        assert {c1.run.run_id, c2.run.run_id} == {r1.run_id, r2.run_id}

        def with_hook(c: Any, seq: int) -> Commit:
            conflict = Delivery(c.run.run_id, ev.HookConflict(seq, "tok"))
            return commit(c, hooks=(HookReg("tok", seq, conflict),))

        oks = await _gather(a.apply_commit(with_hook(c1, 1)), b.apply_commit(with_hook(c2, 2)))
        assert oks == [True, True]
        owner = await a.resume_hook("tok", {"x": 1}, T0 + 1)
        seq_of = {c1.run.run_id: 1, c2.run.run_id: 2}
        assert owner in seq_of
        loser = next(r for r in seq_of if r != owner)
        inboxes: dict[str, list[ev.Event]] = {}
        while (got := await a.claim_workflow_task(T0 + 2, LEASE)) is not None:
            inboxes[got.run.run_id] = [e.event for e in got.inbox]
        assert inboxes[loser] == [ev.HookConflict(seq_of[loser], "tok")]
        assert inboxes[owner] == [ev.HookReceived(seq_of[owner], {"x": 1})]


async def test_concurrent_claimers_never_share_a_task(url: str) -> None:
    n_runs = 40
    async with _Opened(url, 3) as local, _Opened(_elsewhere(url), 3) as remote:
        backends = local + remote
        for _ in range(n_runs):
            await create(backends[0])
        await anyio.sleep(0.1)  # let the wake-ups reach the "other process"

        async def claimer(b: RedisBackend) -> list[str]:
            out = []
            while (got := await b.claim_workflow_task(T0, LEASE)) is not None:
                out.append(got.run.run_id)
                await anyio.sleep(0)
            return out

        claimed = [rid for got in await _gather(*(claimer(b) for b in backends)) for rid in got]
        assert len(claimed) == n_runs == len(set(claimed))


async def test_concurrent_step_claimers_never_share_a_task(url: str) -> None:
    async with _Opened(url, 2) as local, _Opened(_elsewhere(url), 3) as remote:
        backends = local + remote
        rec = await create(backends[0])
        got = await claim_run(backends[0], rec.run_id)
        steps = tuple(StepTask(rec.run_id, i, "s", [i], 1, T0) for i in range(1, 61))
        assert await backends[0].apply_commit(commit(got, steps=steps))
        await anyio.sleep(0.1)

        async def claimer(b: RedisBackend) -> list[tuple[str, int]]:
            out = []
            while tasks := await b.claim_step_tasks(T0, 3, LEASE):
                out.extend((t.run_id, t.seq) for t in tasks)
                await anyio.sleep(0)
            return out

        seen = [s for got in await _gather(*(claimer(b) for b in backends)) for s in got]
        assert sorted(seen) == [(rec.run_id, i) for i in range(1, 61)]


async def test_racing_finishes_deliver_a_result_once(url: str) -> None:
    async with _Opened(url, 2) as local, _Opened(_elsewhere(url)) as remote:
        backends = local + remote
        rec = await start_with(backends[0], steps=(StepTask("", 1, "s", [], 1, T0),))
        (task,) = await backends[1].claim_step_tasks(T0, 1, LEASE)
        results = await _gather(
            *(
                b.finish_step(rec.run_id, 1, task.lease, ev.StepCompleted(1, "r"), T0)
                for b in backends
            )
        )
        assert sorted(results) == [False, False, True]
        got = await claim_run(backends[2], rec.run_id)
        assert [e.event for e in got.inbox] == [ev.StepCompleted(1, "r")]


async def test_a_write_in_another_process_wakes_a_waiter_and_is_claimable(url: str) -> None:
    async with _Opened(url) as (a,), _Opened(_elsewhere(url)) as (b,):
        assert await a.claim_workflow_task(T0, LEASE) is None  # a now knows "empty"
        woke = anyio.Event()

        async def waiter() -> None:
            await a.wait(0)  # a task's first wait returns at once (a change may have been missed)
            await a.wait(10)
            woke.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.sleep(0.2)
            assert not woke.is_set()
            t0 = time.monotonic()
            rec = await create(b)
            with anyio.fail_after(5):
                await woke.wait()
            assert time.monotonic() - t0 < 1.0
        got = await a.claim_workflow_task(T0, LEASE)
        assert got is not None and got.run.run_id == rec.run_id


async def _gather(*aws: Any) -> list[Any]:
    import asyncio

    return list(await asyncio.gather(*aws))


# -- through Engine and Worker -------------------------------------------------------------------


async def test_three_worker_processes_finish_300_runs_with_fan_out(
    url: str, tmp_path: Path
) -> None:
    stop = tmp_path / "stop"
    script = HERE / "_redis_worker_script.py"
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), url, str(stop)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    n = 75  # 75 parents with 3 children each: 300 runs
    try:
        async with plait.Engine(url) as engine:
            for p in procs:
                assert p.stdout is not None
                line = await anyio.to_thread.run_sync(p.stdout.readline)
                assert line.strip() == "ready", p.stderr.read() if p.stderr else line
            handles = [await engine.start(wf.fan, i) for i in range(n)]
            with anyio.fail_after(60):
                for i, h in enumerate(handles):
                    assert await h.result() == wf.fan_result(i)
            runs = [r async for r in engine.list_runs()]
            histories = {r.run_id: await engine.history(r.run_id) for r in runs}
    finally:
        stop.touch()
        outs = [p.communicate(timeout=30) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    stats = [json.loads(o[0].strip().splitlines()[-1]) for o in outs]

    assert len(runs) == 300 and all(r.status is RunStatus.COMPLETED for r in runs)
    children = [r for r in runs if r.parent_run_id is not None]
    assert len(children) == 225 == len({r.run_id for r in children})
    assert set(Counter(r.parent_run_id for r in children).values()) == {3}
    for run_id, history in histories.items():
        kinds = Counter(type(e).__name__ for e in history)
        assert kinds["RunStarted"] == 1 and kinds["RunCompleted"] == 1, run_id
        done = [e.seq for e in history if isinstance(e, ev.StepCompleted)]
        assert len(done) == len(set(done)), f"a step result twice in {run_id}"
    scheduled = [
        e.child_run_id for h in histories.values() for e in h if isinstance(e, ev.ChildScheduled)
    ]
    assert len(scheduled) == 225 == len(set(scheduled))
    assert replay_all(histories, wf.WORKFLOWS) == 300
    assert sum(s["activations"] for s in stats) >= 300
    assert sum(1 for s in stats if s["activations"] > 0) >= 2, stats


async def test_runs_complete_across_a_redis_restart(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    from plait.testing import servers

    if "redis" not in servers._SERVERS:
        pytest.skip("needs the throwaway local Redis of plait.testing.servers")
    n = 30
    async with plait.Engine(url) as engine:
        async with engine.worker(
            wf.WORKFLOWS,
            wf.STEPS,
            concurrency=8,
            lease_seconds=2.0,
            step_lease_seconds=2.0,
            poll_interval=0.2,
        ):
            handles = [await engine.start(wf.chain, 8) for _ in range(n)]
            handles += [await engine.start(wf.fan, 1000 + i) for i in range(n)]
            with anyio.fail_after(30):
                while (await engine.backend.state(engine.clock.now())).leased_steps == 0:
                    await anyio.sleep(0.01)
            await anyio.to_thread.run_sync(servers.restart_redis)
            open_after = [r async for r in engine.list_runs(status=RunStatus.RUNNING)]
            with anyio.fail_after(60):
                results = [await h.result() for h in handles]
    assert open_after, "the batch was already done: the restart tested nothing"
    assert any("Redis unreachable" in r.getMessage() for r in caplog.records)
    assert results == [8] * n + [wf.fan_result(1000 + i) for i in range(n)]
    # Everything acknowledged is in the AOF: restart once more and check the whole store.
    await anyio.to_thread.run_sync(servers.restart_redis)
    async with plait.Engine(url) as engine:
        runs = [r async for r in engine.list_runs()]
        assert len(runs) == n + 4 * n
        assert all(r.status is RunStatus.COMPLETED for r in runs)
        for r in runs:
            history = await engine.history(r.run_id)
            replay(history, wf.WORKFLOWS)  # nothing half-applied: it replays cleanly
            done = [e.seq for e in history if isinstance(e, ev.StepCompleted)]
            assert len(done) == len(set(done))
        st = await engine.backend.state(engine.clock.now())
        assert (st.ready_workflow_tasks, st.ready_steps, st.leased_steps, st.timers) == (0, 0, 0, 0)


async def test_two_prefixes_in_one_redis_do_not_see_each_other(url: str) -> None:
    other = url.replace(f"prefix={parse_url(url).prefix}", f"prefix=b{parse_url(url).prefix}")
    assert parse_url(other).prefix != parse_url(url).prefix
    async with _Opened(url) as (a,), _Opened(other) as (b,):
        ra = await create(a, key="shared-key")
        rb = await create(b, key="shared-key")  # the same key is free under the other prefix
        assert await a.get_run(rb.run_id) is None and await b.get_run(ra.run_id) is None
        assert [r.run_id for r in await a.list_runs()] == [ra.run_id]
        assert [r.run_id for r in await b.list_runs()] == [rb.run_id]
        ca, cb = await claim_run(a, ra.run_id), await claim_run(b, rb.run_id)
        assert await a.claim_workflow_task(T0, LEASE) is None
        hook = HookReg("tok", 1, Delivery(ra.run_id, ev.HookConflict(1, "tok")))
        assert await a.apply_commit(
            commit(ca, hooks=(hook,), steps=(StepTask(ra.run_id, 2, "s", [], 1, T0),))
        )
        hook_b = HookReg("tok", 1, Delivery(rb.run_id, ev.HookConflict(1, "tok")))
        assert await b.apply_commit(commit(cb, hooks=(hook_b,)))  # no conflict across prefixes
        assert await b.claim_step_tasks(T0, 10, LEASE) == []
        assert await b.resume_hook("tok", 1, T0) == rb.run_id
        assert await a.resume_hook("tok", 2, T0) == ra.run_id
        sa, sb = await a.state(T0), await b.state(T0)
        assert (sa.ready_steps, sa.ready_workflow_tasks) == (1, 1)
        assert (sb.ready_steps, sb.ready_workflow_tasks) == (0, 1)
    # and no key of one deployment starts with the other's prefix
    c = _client(url)
    try:
        pa, pb = parse_url(url).prefix, parse_url(other).prefix
        keys_a, keys_b = set(c.scan_iter(match=f"{pa}*")), set(c.scan_iter(match=f"{pb}*"))
        assert keys_a and keys_b and not keys_a & keys_b
    finally:
        c.close()


async def test_an_idle_worker_barely_calls_redis(url: str) -> None:
    calls = 0
    async with plait.Engine(url) as engine:
        backend = engine.backend
        assert isinstance(backend, RedisBackend)
        pipeline = backend._pipeline

        async def counting(*args: Any, **kw: Any) -> Any:
            nonlocal calls
            calls += 1
            return await pipeline(*args, **kw)

        backend._pipeline = counting  # type: ignore[method-assign]
        async with engine.worker(wf.WORKFLOWS, wf.STEPS, poll_interval=0.2):
            await anyio.sleep(1.0)
            calls = 0
            await anyio.sleep(3.0)
            idle_calls = calls
            # ...and it still notices new work at once
            t0 = time.monotonic()
            assert await (await engine.start(wf.child, 1)).result(timeout=10) == 3
            assert time.monotonic() - t0 < 1.0
    assert idle_calls / 3.0 <= 3.0, f"{idle_calls / 3:.1f} calls/s"


async def test_steps_leased_to_their_committer_do_not_wake_its_loop(url: str) -> None:
    from plait.runtime.worker import Worker

    ticks = 0
    original = Worker._tick

    async def counting(self: Worker, *args: Any, **kw: Any) -> Any:
        nonlocal ticks
        ticks += 1
        return await original(self, *args, **kw)

    async with plait.Engine(url) as engine:
        async with engine.worker(wf.WORKFLOWS, wf.STEPS, poll_interval=5.0) as worker:
            worker._tick = counting.__get__(worker)  # type: ignore[method-assign]
            await anyio.sleep(0.2)
            ticks = 0
            for i in range(10):
                assert await (await engine.start(wf.child, i)).result(timeout=10) == 2 * i + 1
    # One wake-up per run (its slot freed); a wake-up per step commit would make it two more.
    assert ticks <= 15, f"{ticks} loop ticks for 10 runs"
