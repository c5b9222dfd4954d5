"""The postgres backend: URL forms and options, schema creation and refusal, the missing extra,
the protocol's guarantees under concurrency (fencing, key and hook uniqueness, SKIP LOCKED
claimers), eager dispatch and speculative activation (one round trip, batching, what the backend
remembers), schema migrations, LISTEN/NOTIFY wake-ups, several worker processes on one database,
a server restart in the middle of a batch, and the query rate of an idle worker.

Needs a PostgreSQL server (``plait.testing.servers``): skipped without one unless
``PLAIT_REQUIRE_BACKENDS`` names postgres.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest

import plait
from plait.backends import _pg_schema
from plait.backends.base import (
    BackendError,
    Commit,
    Delivery,
    HookReg,
    NewRun,
    RunRecord,
    SchemaError,
    StepTask,
    Timer,
)
from plait.kernel import events as ev
from plait.kernel.codec import event_from_dict
from plait.kernel.status import RunStatus
from plait.plugins.manager import backend_from_url
from plait.testing._conformance_support import (
    LEASE,
    T0,
    claim_run,
    commit,
    create,
    make_record,
    started,
)
from plait.testing.pytest_plugin import isolated_url

pytestmark = [pytest.mark.anyio, pytest.mark.backend("postgres")]

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _pg_workflows as wf  # noqa: E402

from plait.backends.postgres import MISSING_EXTRA, PostgresBackend  # noqa: E402


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def url(tmp_path: Path) -> str:
    return isolated_url("postgres", tmp_path)


class _Opened:
    """``async with _Opened(url, n) as (b1, b2, ...)``: n backend objects on one store."""

    def __init__(self, url: str, n: int = 1) -> None:
        self.backends = [PostgresBackend(url) for _ in range(n)]

    async def __aenter__(self) -> list[PostgresBackend]:
        for b in self.backends:
            await b.open()
        return self.backends

    async def __aexit__(self, *exc: object) -> None:
        for b in self.backends:
            await b.close()


def _schema(url: str) -> str:
    return _pg_schema.parse_url(url).schema


def _sql(url: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(_pg_schema.parse_url(url).conninfo, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


# -- URLs, options, the extra ------------------------------------------------------------------


def test_url_options_are_stripped_and_the_rest_goes_to_libpq() -> None:
    o = _pg_schema.parse_url(
        "postgresql://u:p%40ss@db.example:6543/app?sslmode=require&schema=jobs&pool_min=2"
        "&pool_max=7&options=-c%20statement_timeout%3D5000"
    )
    assert (o.schema, o.pool_min, o.pool_max, o.channel) == ("jobs", 2, 7, "jobs_work")
    assert o.conninfo == (
        "postgresql://u:p%40ss@db.example:6543/app?sslmode=require"
        "&options=-c%20statement_timeout%3D5000"
    )
    d = _pg_schema.parse_url("postgres://localhost/db")
    assert (d.schema, d.pool_min, d.pool_max, d.conninfo) == (
        "plait",
        _pg_schema.DEFAULT_POOL_MIN,
        _pg_schema.DEFAULT_POOL_MAX,
        "postgres://localhost/db",
    )


@pytest.mark.parametrize(
    "query",
    [
        "schema=1abc",
        "schema=a-b",
        "schema=" + "x" * 59,
        "pool_min=x",
        "pool_min=5&pool_max=2",
        "pool_max=0",
    ],
)
def test_bad_options_are_refused(query: str) -> None:
    with pytest.raises(ValueError):
        _pg_schema.parse_url(f"postgresql://localhost/db?{query}")


def test_both_schemes_map_to_the_backend() -> None:
    for scheme in ("postgresql", "postgres", "POSTGRESQL"):
        b = backend_from_url(f"{scheme}://user@localhost/db?schema=s1")
        assert isinstance(b, PostgresBackend)
        assert b.options.schema == "s1"
    assert "pw" not in repr(PostgresBackend("postgresql://u:pw@h/db"))


def test_missing_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # `import psycopg` raises ImportError
    with pytest.raises(BackendError, match=r"pip install 'plait\[postgres\]'"):
        backend_from_url("postgresql://localhost/db")
    with pytest.raises(BackendError, match=r"pip install 'plait\[postgres\]'"):
        anyio.run(PostgresBackend("postgresql://localhost/db").open)
    assert "plait[postgres]" in MISSING_EXTRA


def test_the_module_imports_without_psycopg() -> None:
    code = (
        "import sys; sys.modules['psycopg'] = None; sys.modules['psycopg_pool'] = None\n"
        "import plait.backends.postgres as m\n"
        "from plait.plugins.manager import backend_factories\n"
        "assert {'postgres', 'postgresql'} <= set(backend_factories())\n"
        "try:\n"
        "    m.PostgresBackend.from_url('postgresql://h/db')\n"
        "except Exception as e:\n"
        "    print(type(e).__name__, e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "BackendError" in out.stdout and "pip install 'plait[postgres]'" in out.stdout


# -- schema --------------------------------------------------------------------------------------


async def test_schema_option_isolates_stores(url: str) -> None:
    other = url.replace(f"schema={_schema(url)}", f"schema={_schema(url)}_b")
    async with _Opened(url) as (a,), _Opened(other) as (b,):
        rec = await create(a)
        assert await a.get_run(rec.run_id) is not None
        assert await b.get_run(rec.run_id) is None
        assert await b.list_runs() == []
    tables = {
        r[0]
        for r in _sql(url, "SELECT tablename FROM pg_tables WHERE schemaname = %s", (_schema(url),))
    }
    assert {"runs", "history", "inbox", "steps", "timers", "hooks", "schema_version"} <= tables
    version = _sql(url, f'SELECT max(version) FROM "{_schema(url)}".schema_version')[0][0]
    assert version == _pg_schema.SCHEMA_VERSION


async def test_concurrent_openers_create_the_schema_once(url: str) -> None:
    backends = [PostgresBackend(url) for _ in range(5)]
    async with anyio.create_task_group() as tg:
        for b in backends:
            tg.start_soon(b.open)
    try:
        rows = _sql(url, f'SELECT version FROM "{_schema(url)}".schema_version ORDER BY 1')
        assert rows == [(v,) for v, _ in _pg_schema.MIGRATIONS]  # each version applied once
    finally:
        for b in backends:
            await b.close()


async def test_a_newer_schema_is_refused(url: str) -> None:
    async with _Opened(url):
        pass
    _sql(
        url,
        f'INSERT INTO "{_schema(url)}".schema_version (version) VALUES (%s)',
        (_pg_schema.SCHEMA_VERSION + 1,),
    )
    b = PostgresBackend(url)
    with pytest.raises(SchemaError, match="newer plait"):
        await b.open()
    await b.close()


async def test_a_foreign_schema_is_refused(url: str) -> None:
    s = _schema(url)
    _sql(url, f'CREATE SCHEMA "{s}"; CREATE TABLE "{s}".customers (id int)')
    b = PostgresBackend(url)
    with pytest.raises(SchemaError, match="not a plait store"):
        await b.open()
    await b.close()
    assert _sql(url, f'SELECT count(*) FROM "{s}".customers') == [(0,)]


async def test_an_unreachable_server_is_a_clear_error() -> None:
    b = PostgresBackend("postgresql://nobody@127.0.0.1:1/db?connect_timeout=2")
    with pytest.raises(BackendError, match="cannot connect to PostgreSQL"):
        await b.open()


# -- protocol guarantees under concurrency -------------------------------------------------------


async def test_a_stale_lease_is_fenced_out(url: str) -> None:
    async with _Opened(url, 2) as (a, b):
        rec = await create(a)
        first = await claim_run(a, rec.run_id, T0)
        # The lease expires; another backend object claims the run and bumps the fence.
        second = await claim_run(b, rec.run_id, T0 + LEASE + 1)
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
    async with _Opened(url, 4) as backends:
        records = [make_record(key="order-42") for _ in range(8)]
        results: list[tuple[str, bool]] = []

        async def start(i: int) -> None:
            r = records[i]
            results.append(await backends[i % 4].create_run(r, (started(r),), T0))

        async with anyio.create_task_group() as tg:
            for i in range(len(records)):
                tg.start_soon(start, i)
        winners = [rid for rid, created in results if created]
        assert len(winners) == 1
        assert {rid for rid, _ in results} == set(winners)
        # Closing the run releases the key.
        got = await claim_run(backends[0], winners[0])
        assert await backends[0].apply_commit(commit(got, status=RunStatus.COMPLETED))
        again = make_record(key="order-42")
        assert await backends[1].create_run(again, (started(again),), T0) == (again.run_id, True)


async def test_racing_hooks_with_one_token_register_once(url: str) -> None:
    async with _Opened(url, 2) as (a, b):
        r1, r2 = await create(a), await create(b)
        c1, c2 = await claim_run(a, r1.run_id), await claim_run(b, r2.run_id)

        def with_hook(c: Any, seq: int) -> Commit:
            conflict = Delivery(c.run.run_id, ev.HookConflict(seq, "tok"))
            return commit(c, hooks=(HookReg("tok", seq, conflict),))

        oks: list[bool] = []

        async def go(backend: PostgresBackend, c: Commit) -> None:
            oks.append(await backend.apply_commit(c))

        async with anyio.create_task_group() as tg:
            tg.start_soon(go, a, with_hook(c1, 1))
            tg.start_soon(go, b, with_hook(c2, 2))
        assert oks == [True, True]
        owner = await a.resume_hook("tok", {"x": 1}, T0 + 1)
        assert owner in (r1.run_id, r2.run_id)
        loser = r2.run_id if owner == r1.run_id else r1.run_id
        got = await claim_run(a, loser, T0 + 2)
        assert [e.event for e in got.inbox] == [
            ev.HookConflict(1 if loser == r1.run_id else 2, "tok")
        ]
        got = await claim_run(b, owner, T0 + 2)
        assert ev.HookReceived(1 if owner == r1.run_id else 2, {"x": 1}) in [
            e.event for e in got.inbox
        ]


async def test_skip_locked_claimers_never_share_a_task(url: str) -> None:
    n_runs, n_claimers = 40, 6
    async with _Opened(url, n_claimers) as backends:
        for _ in range(n_runs):
            await create(backends[0])
        claimed: list[str] = []

        async def claimer(b: PostgresBackend) -> None:
            while (got := await b.claim_workflow_task(T0, LEASE)) is not None:
                claimed.append(got.run.run_id)
                await anyio.sleep(0)

        async with anyio.create_task_group() as tg:
            for b in backends:
                tg.start_soon(claimer, b)
        assert len(claimed) == n_runs == len(set(claimed))


async def test_skip_locked_step_claimers_never_share_a_task(url: str) -> None:
    async with _Opened(url, 5) as backends:
        rec = await create(backends[0])
        got = await claim_run(backends[0], rec.run_id)
        steps = tuple(StepTask(rec.run_id, i, "s", [i], 1, T0) for i in range(1, 61))
        assert await backends[0].apply_commit(commit(got, steps=steps))
        seen: list[tuple[str, int]] = []

        async def claimer(b: PostgresBackend) -> None:
            while tasks := await b.claim_step_tasks(T0, 3, LEASE):
                seen.extend((t.run_id, t.seq) for t in tasks)
                await anyio.sleep(0)

        async with anyio.create_task_group() as tg:
            for b in backends:
                tg.start_soon(claimer, b)
        assert sorted(seen) == [(rec.run_id, i) for i in range(1, 61)]


async def test_racing_finishes_deliver_a_result_once(url: str) -> None:
    async with _Opened(url, 3) as backends:
        rec = await create(backends[0])
        got = await claim_run(backends[0], rec.run_id)
        assert await backends[0].apply_commit(
            commit(got, steps=(StepTask(rec.run_id, 1, "s", [], 1, T0),))
        )
        (task,) = await backends[1].claim_step_tasks(T0, 1, LEASE)
        results: list[bool] = []

        async def finish(b: PostgresBackend) -> None:
            results.append(
                await b.finish_step(rec.run_id, 1, task.lease, ev.StepCompleted(1, "r"), T0)
            )

        async with anyio.create_task_group() as tg:
            for b in backends:
                tg.start_soon(finish, b)
        assert sorted(results) == [False, False, True]
        got = await claim_run(backends[2], rec.run_id)
        assert [e.event for e in got.inbox] == [ev.StepCompleted(1, "r")]


async def test_a_write_wakes_a_waiter_on_another_backend(url: str) -> None:
    async with _Opened(url, 2) as (a, b):
        await a.claim_workflow_task(T0, LEASE)  # nothing yet: a now trusts "empty"
        woke = anyio.Event()

        async def waiter() -> None:
            await a.wait(10)
            woke.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.sleep(0.2)
            t0 = time.monotonic()
            await create(b)
            with anyio.fail_after(5):
                await woke.wait()
            assert time.monotonic() - t0 < 1.0
        assert (await a.claim_workflow_task(T0, LEASE)) is not None


# -- eager dispatch ------------------------------------------------------------------------------

TOKEN = 987_654_321_987  # a worker's own lease token for a step it pre-leases


def _pre(run_id: str, seq: int, now: float = T0, token: int = TOKEN) -> StepTask:
    """A step committed already leased to the committer, until ``now + LEASE``."""
    return StepTask(run_id, seq, "s", [seq], 1, now, token + seq, now + LEASE)


async def _with_pre_leased(b: PostgresBackend, *seqs: int) -> tuple[str, Any]:
    """A run whose first commit scheduled steps ``seqs`` pre-leased; its claim is spent."""
    rec = await create(b)
    got = await claim_run(b, rec.run_id)
    assert await b.apply_commit(commit(got, steps=tuple(_pre(rec.run_id, q) for q in seqs)))
    return rec.run_id, got


async def test_a_pre_leased_step_is_stored_leased_and_redelivered_after_its_lease(
    url: str,
) -> None:
    async with _Opened(url, 2) as (a, b):
        run_id, _ = await _with_pre_leased(a, 1)
        rows = _sql(
            url,
            f'SELECT lease, lease_expires FROM "{_schema(url)}".steps WHERE run_id = %s',
            (run_id,),
        )
        assert rows == [(TOKEN + 1, T0 + LEASE)]
        # Not claimable while leased, from this object (its memory) or another (the server).
        for backend in (a, b):
            assert await backend.claim_step_tasks(T0 + LEASE - 1, 10, LEASE) == []
            st = await backend.state(T0 + 1)
            assert (st.ready_steps, st.leased_steps, st.next_due) == (0, 1, T0 + LEASE)
        # The token works like a claimed task's: heartbeat, then one finish only.
        assert await a.heartbeat_step(run_id, 1, TOKEN + 1, T0 + 10, LEASE)
        assert await b.claim_step_tasks(T0 + LEASE + 1, 10, LEASE) == []  # extended
        (again,) = await b.claim_step_tasks(T0 + LEASE + 10, 10, LEASE)  # expired: redelivered
        assert (again.run_id, again.seq) == (run_id, 1) and again.lease != TOKEN + 1
        outcome = ev.StepCompleted(1, "x", 1)
        assert not await a.finish_step(run_id, 1, TOKEN + 1, outcome, T0 + 41)  # stale token
        assert await b.finish_step(run_id, 1, again.lease, outcome, T0 + 41)
        assert not await b.finish_step(run_id, 1, again.lease, outcome, T0 + 41)
        got = await claim_run(a, run_id, T0 + 42)
        assert [e.event for e in got.inbox] == [outcome]


async def test_a_pre_leased_step_finishes_once_with_its_token(url: str) -> None:
    async with _Opened(url) as (b,):
        run_id, _ = await _with_pre_leased(b, 1, 2)
        outcome = ev.StepCompleted(1, 1, 1)
        assert not await b.finish_step(run_id, 1, TOKEN + 2, outcome, T0 + 1)  # not its token
        assert await b.finish_step(run_id, 1, TOKEN + 1, outcome, T0 + 1)
        assert not await b.finish_step(run_id, 1, TOKEN + 1, outcome, T0 + 1)
        assert await b.retry_step(run_id, 2, TOKEN + 2, 2, T0 + 5)  # released for a retry
        assert not await b.heartbeat_step(run_id, 2, TOKEN + 2, T0 + 2, LEASE)
        (retried,) = await b.claim_step_tasks(T0 + 5, 10, LEASE)
        assert (retried.seq, retried.attempt) == (2, 2)


async def test_finish_step_and_claim_claims_and_fences_like_a_claim(url: str) -> None:
    async with _Opened(url, 2) as (a, b):
        run_id, first = await _with_pre_leased(a, 1)
        outcome = ev.StepCompleted(1, "r", 1)
        ok, got = await a.finish_step_and_claim(run_id, 1, TOKEN + 1, outcome, T0 + 1, LEASE)
        assert ok and got is not None
        assert got.run.run_id == run_id and got.run.status is RunStatus.RUNNING
        assert got.lease == first.lease + 1  # the fence was bumped
        assert [e.event for e in got.inbox] == [outcome]
        assert got.history_length == 0
        # Leased: no other claim gets it, and an older lease is fenced out.
        assert await b.claim_workflow_task(T0 + 2, LEASE) is None
        assert await a.claim_workflow_task(T0 + 2, LEASE) is None
        assert not await b.apply_commit(commit(first, T0 + 2))
        assert await a.renew_workflow_lease(run_id, got.lease, T0 + 3, LEASE)
        # After the lease expires another claim takes the run and fences this one out.
        late = await claim_run(b, run_id, T0 + 3 + LEASE + 1)
        assert late.lease == got.lease + 1
        assert [e.event for e in late.inbox] == [outcome]
        assert not await a.apply_commit(commit(got, T0 + 40))
        assert await b.apply_commit(commit(late, T0 + 41, events=(ev.Activated(T0 + 41),)))
        assert await a.read_history(run_id) == [ev.Activated(T0 + 41)]


async def test_finish_step_and_claim_refuses_a_stale_lease_and_changes_nothing(url: str) -> None:
    async with _Opened(url, 2) as (a, b):
        run_id, _ = await _with_pre_leased(a, 1)
        (again,) = await b.claim_step_tasks(T0 + LEASE, 10, LEASE)  # the pre-lease expired
        fence = _sql(url, f'SELECT fence FROM "{_schema(url)}".runs WHERE run_id = %s', (run_id,))
        outcome = ev.StepCompleted(1, "late", 1)
        res = await a.finish_step_and_claim(run_id, 1, TOKEN + 1, outcome, T0 + LEASE, LEASE)
        assert res == (False, None)
        assert (
            _sql(url, f'SELECT fence FROM "{_schema(url)}".runs WHERE run_id = %s', (run_id,))
            == fence
        )
        assert await a.claim_workflow_task(T0 + LEASE, LEASE) is None  # nothing delivered
        assert await b.heartbeat_step(run_id, 1, again.lease, T0 + LEASE, LEASE)
        ok, got = await b.finish_step_and_claim(
            run_id, 1, again.lease, ev.StepCompleted(1, "ok", 1), T0 + LEASE + 1, LEASE
        )
        assert ok and got is not None and [e.event.result for e in got.inbox] == ["ok"]  # type: ignore[attr-defined]


async def test_finish_step_and_claim_leaves_a_run_leased_elsewhere(url: str) -> None:
    async with _Opened(url, 2) as (a, b):
        run_id, _ = await _with_pre_leased(a, 1, 2)
        assert await a.finish_step(run_id, 1, TOKEN + 1, ev.StepCompleted(1, 1, 1), T0 + 1)
        holder = await claim_run(b, run_id, T0 + 1)  # another worker activates the run
        ok, got = await a.finish_step_and_claim(
            run_id, 2, TOKEN + 2, ev.StepCompleted(2, 2, 1), T0 + 2, LEASE
        )
        assert (ok, got) == (True, None)
        # The holder's lease is intact; the result waits in the inbox for the next activation.
        assert await b.apply_commit(commit(holder, T0 + 3))
        nxt = await claim_run(a, run_id, T0 + 4)
        assert [e.event for e in nxt.inbox] == [ev.StepCompleted(2, 2, 1)]
        assert nxt.lease == holder.lease + 1


async def test_finish_step_and_claim_leaves_a_task_not_ready_yet(url: str) -> None:
    async with _Opened(url) as (b,):
        run_id, _ = await _with_pre_leased(b, 1)
        # A signal from a host whose clock runs ahead queues the task for T0 + 100.
        assert await b.append_inbox(run_id, (ev.SignalReceived("s"),), T0 + 100)
        ok, claim = await b.finish_step_and_claim(
            run_id, 1, TOKEN + 1, ev.StepCompleted(1, 1, 1), T0 + 50, LEASE
        )
        assert (ok, claim) == (True, None)
        assert await b.claim_workflow_task(T0 + 99, LEASE) is None
        got = await claim_run(b, run_id, T0 + 100)
        assert [e.event for e in got.inbox] == [
            ev.SignalReceived("s"),
            ev.StepCompleted(1, 1, 1),
        ]


async def test_concurrent_finish_and_claims_are_batched_and_each_claims_its_run(
    url: str,
) -> None:
    async with _Opened(url) as (b,):
        runs = [(await _with_pre_leased(b, 1))[0] for _ in range(12)]
        got: dict[str, Any] = {}

        async def finish(run_id: str) -> None:
            got[run_id] = await b.finish_step_and_claim(
                run_id, 1, TOKEN + 1, ev.StepCompleted(1, run_id, 1), T0 + 1, LEASE
            )

        async with anyio.create_task_group() as tg:
            for run_id in runs:
                tg.start_soon(finish, run_id)
        assert all(ok and c is not None and c.run.run_id == r for r, (ok, c) in got.items())
        assert {r: [e.event for e in c.inbox] for r, (_, c) in got.items()} == {
            r: [ev.StepCompleted(1, r, 1)] for r in runs
        }
        assert await b.claim_workflow_task(T0 + 2, LEASE) is None


async def test_what_the_backend_remembers_matches_the_server(url: str) -> None:
    """After eager commits and finishes, a backend answers claims and ``state()`` from what it
    carried over locally; a fresh object on the same store asks the server. They agree."""
    async with _Opened(url) as (a,):
        runs = [(await _with_pre_leased(a, 1, 2))[0] for _ in range(3)]
        for i, run_id in enumerate(runs):
            ok, claim = await a.finish_step_and_claim(
                run_id, 1, TOKEN + 1, ev.StepCompleted(1, 1, 1), T0 + 1 + i, LEASE
            )
            assert ok and claim is not None
            if i < 2:  # two runs commit (one scheduling a pre-leased step), one stays leased
                steps = (_pre(run_id, 3, T0 + 2 + i),) if i == 0 else ()
                assert await a.apply_commit(commit(claim, T0 + 2 + i, steps=steps))
        assert await a.fire_due_timers(T0 + 5) == 0  # now it knows of every queue
        calls: list[str] = []
        run = a._run

        async def counting(name: str, *args: Any, **kw: Any) -> Any:
            calls.append(name)
            return await run(name, *args, **kw)

        a._run = counting  # type: ignore[method-assign]
        st = await a.state(T0 + 5)
        assert calls == [], "state() should have been answered from memory"
        assert (st.leased_workflow_tasks, st.leased_steps) == (1, 4)
        for now in (T0 + 5, T0 + LEASE + 0.5, T0 + LEASE + 2.5, T0 + 2 * LEASE):
            async with _Opened(url) as (fresh,):
                mine, theirs = await a.state(now), await fresh.state(now)
                assert mine == theirs, now


async def test_finish_step_and_claim_wakes_another_backend_like_finish_step(url: str) -> None:
    async with _Opened(url, 2) as (a, b):
        run_id, _ = await _with_pre_leased(a, 1)
        await b.claim_workflow_task(T0, LEASE)  # nothing claimable: b trusts "empty"
        woke = anyio.Event()

        async def waiter() -> None:
            await b.wait(10)
            woke.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.sleep(0.2)
            await a.finish_step_and_claim(
                run_id, 1, TOKEN + 1, ev.StepCompleted(1, 1, 1), T0 + 1, LEASE
            )
            with anyio.fail_after(5):
                await woke.wait()
        # b forgot "empty": its next claim asks the server (the run is leased: nothing)
        assert await b.claim_workflow_task(T0 + 2, LEASE) is None
        st = await b.state(T0 + 2)
        assert (st.ready_workflow_tasks, st.leased_workflow_tasks) == (0, 1)


# -- speculative activation ----------------------------------------------------------------------


def _spec_commit(run_id: str, now: float, seq: int = 1, **fields: Any) -> Commit:
    """The activation step ``seq``'s result causes, as a worker sends it speculatively."""
    fields.setdefault("events", (ev.StepCompleted(seq, seq, 1), ev.Activated(now)))
    fields.setdefault("status", RunStatus.RUNNING)
    return Commit(run_id=run_id, lease=0, now=now, **fields)


def _counting(b: PostgresBackend) -> list[str]:
    """The names of the statements ``b`` sends from now on (one per round trip)."""
    calls: list[str] = []
    run = b._run

    async def counting(name: str, *args: Any, **kw: Any) -> Any:
        calls.append(name)
        return await run(name, *args, **kw)

    b._run = counting  # type: ignore[method-assign]
    return calls


def _rows(url: str, run_id: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of ``run_id`` in every table, to compare before and after a refused call."""
    s = _schema(url)
    q = {
        "runs": f'SELECT * FROM "{s}".runs WHERE run_id = %s',
        "steps": f'SELECT * FROM "{s}".steps WHERE run_id = %s ORDER BY seq',
        "history": f'SELECT * FROM "{s}".history WHERE run_id = %s ORDER BY pos',
        "inbox": f'SELECT * FROM "{s}".inbox WHERE run_id = %s ORDER BY id',
    }
    return {k: _sql(url, sql, (run_id,)) for k, sql in q.items()}


async def test_finish_step_and_commit_is_one_round_trip(url: str) -> None:
    async with _Opened(url) as (b,):
        assert b.supports_speculation and b.supports_eager
        run_id, first = await _with_pre_leased(b, 1)
        calls = _counting(b)
        c = _spec_commit(run_id, T0 + 1, steps=(_pre(run_id, 2, T0 + 1),))
        assert await b.finish_step_and_commit(run_id, 1, TOKEN + 1, c, 0)
        done = _spec_commit(run_id, T0 + 2, 2, status=RunStatus.COMPLETED, result=3)
        assert await b.finish_step_and_commit(run_id, 2, TOKEN + 2, done, 2)
        assert calls == ["spec1", "spec1"]
        rows = _sql(
            url,
            f'SELECT fence, history_len, status, lease_expires, wf_ready_at FROM "{_schema(url)}"'
            ".runs WHERE run_id = %s",
            (run_id,),
        )
        assert rows == [(first.lease + 2, 4, "completed", None, None)]
        assert await b.read_history(run_id) == [*c.events, *done.events]
        assert _rows(url, run_id)["steps"] == [] and _rows(url, run_id)["inbox"] == []


async def test_a_refused_speculation_leaves_every_row_as_it_was(url: str) -> None:
    async with _Opened(url, 2) as (a, b):

        async def refused(run_id: str, lease: int, length: int, now: float) -> None:
            before = _rows(url, run_id)
            c = _spec_commit(run_id, now, steps=(_pre(run_id, 2, now),))
            assert not await a.finish_step_and_commit(run_id, 1, lease, c, length)
            assert _rows(url, run_id) == before

        run_id, _ = await _with_pre_leased(a, 1)
        await refused(run_id, TOKEN + 1, 1, T0 + 1)  # its history is not 1 event long
        await refused(run_id, TOKEN + 2, 0, T0 + 1)  # not the step's lease
        assert await b.requeue_workflow_task(run_id, T0 + 1)
        await claim_run(b, run_id, T0 + 1)
        await refused(run_id, TOKEN + 1, 0, T0 + 2)  # its workflow task is leased
        await refused(run_id, TOKEN + 1, 0, T0 + 1 + LEASE - 0.5)  # ... until the lease ends
        run_id, _ = await _with_pre_leased(a, 1)
        assert await b.append_inbox(run_id, [ev.SignalReceived("x")], T0 + 1)
        await refused(run_id, TOKEN + 1, 0, T0 + 2)  # its inbox holds an event
        assert await b.finish_step(run_id, 1, TOKEN + 1, ev.StepCompleted(1, 1, 1), T0 + 2)
        await refused(run_id, TOKEN + 1, 0, T0 + 2)  # the step is finished already


async def test_concurrent_speculations_are_batched_and_each_stands_alone(url: str) -> None:
    async with _Opened(url) as (b,):
        runs = [(await _with_pre_leased(b, 1))[0] for _ in range(8)]
        target = await create(b)  # receives a delivery from one speculation
        now = T0 + 1
        # run 0 is refused (wrong history length); run 1 delivers elsewhere (the general
        # path); run 2 closes; run 3 schedules a step of seq 1 again; the others go on.
        specs: dict[str, tuple[Commit, int]] = {}
        for i, run_id in enumerate(runs):
            fields: dict[str, Any] = {"steps": (_pre(run_id, 2, now),)}
            if i == 1:
                fields["deliveries"] = (Delivery(target.run_id, ev.SignalReceived(run_id)),)
            elif i == 2:
                fields = {"status": RunStatus.COMPLETED, "result": i}
            elif i == 3:
                fields["steps"] = (_pre(run_id, 1, now, TOKEN + 10),)
            specs[run_id] = (_spec_commit(run_id, now, **fields), 5 if i == 0 else 0)
        calls = _counting(b)
        got: dict[str, bool] = {}

        async def speculate(run_id: str) -> None:
            c, length = specs[run_id]
            got[run_id] = await b.finish_step_and_commit(run_id, 1, TOKEN + 1, c, length)

        async with anyio.create_task_group() as tg:
            for run_id in runs:
                tg.start_soon(speculate, run_id)
        assert "commit_batch2" in calls and len(calls) < len(runs), calls
        assert got == {r: i != 0 for i, r in enumerate(runs)}
        s = _schema(url)
        for i, run_id in enumerate(runs):
            history = await b.read_history(run_id)
            steps = _sql(
                url, f'SELECT seq, lease FROM "{s}".steps WHERE run_id = %s ORDER BY 1', (run_id,)
            )
            if i == 0:
                assert history == [] and steps == [(1, TOKEN + 1)]
                continue
            assert history == list(specs[run_id][0].events)
            if i == 2:
                rec = await b.get_run(run_id)
                assert rec is not None and rec.status is RunStatus.COMPLETED and rec.result == 2
                assert steps == []
            elif i == 3:
                assert steps == [(1, TOKEN + 11)]  # the row deleted, then scheduled anew
            else:
                assert steps == [(2, TOKEN + 2)]
        last = _rows(url, target.run_id)["inbox"][-1]
        assert event_from_dict(last[2]) == ev.SignalReceived(runs[1])


async def test_what_the_backend_remembers_after_speculations_matches_the_server(
    url: str,
) -> None:
    """Speculations change both queues (a leased step finished, steps added, a run's queued
    workflow task dropped): what the backend carries over agrees with the server."""
    far = T0 + 500  # the steps' leases outlast the queued task's ready time

    def leased(run_id: str, seq: int) -> StepTask:
        return StepTask(run_id, seq, "s", [seq], 1, T0, TOKEN + seq, far)

    async with _Opened(url) as (a,):
        runs = []
        for _ in range(3):
            rec = await create(a)
            got = await claim_run(a, rec.run_id)
            assert await a.apply_commit(commit(got, steps=(leased(rec.run_id, 1),)))
            runs.append(rec.run_id)
        plain, queued, closing = runs
        # queued: a workflow task waits for T0 + 100, its inbox empty, no lease
        assert await a.requeue_workflow_task(queued, T0 + 100)
        assert await a.claim_workflow_task(T0 + 1, LEASE) is None  # learns "empty until +100"
        assert await a.fire_due_timers(T0 + 1) == 0
        assert await a.claim_step_tasks(T0 + 1, 10, LEASE) == []
        c = _spec_commit(plain, T0 + 1, steps=(leased(plain, 2),))
        assert await a.finish_step_and_commit(plain, 1, TOKEN + 1, c, 0)
        c = _spec_commit(queued, T0 + 2, block_reason="waiting")
        assert await a.finish_step_and_commit(queued, 1, TOKEN + 1, c, 0)
        c = _spec_commit(closing, T0 + 3, status=RunStatus.FAILED)
        assert await a.finish_step_and_commit(closing, 1, TOKEN + 1, c, 0)
        for now in (T0 + 3, T0 + 50, T0 + 101, far + 1):
            async with _Opened(url) as (fresh,):
                mine, theirs = await a.state(now), await fresh.state(now)
                assert mine == theirs, now
        assert mine.leased_steps == 0 and mine.ready_steps == 1  # plain's step 2, expired


async def test_a_worker_speculates_on_postgres(url: str) -> None:
    async with plait.Engine(url) as engine:
        async with engine.worker(wf.WORKFLOWS, wf.STEPS, poll_interval=0.2) as w:
            handles = [await engine.start(wf.chain, 4) for _ in range(3)]
            with anyio.fail_after(30):
                assert [await h.result() for h in handles] == [4, 4, 4]
            stats = dict(w.stats)
    # each step but the first of a run's was reached without a claim, its finish carrying the
    # activation: the first activation is the claim's, then one speculation per step
    assert stats["speculations"] == 12 and stats["speculations_refused"] == 0, stats
    assert stats["activations"] == 15, stats


async def test_a_version_2_store_is_migrated_and_speculates(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store of schema version 2 (eager dispatch, no speculation) with a step in flight is
    migrated forward on open; that step then finishes speculatively."""
    s = _schema(url)
    monkeypatch.setattr(_pg_schema, "MIGRATIONS", _pg_schema.MIGRATIONS[:2])
    monkeypatch.setattr(_pg_schema, "SCHEMA_VERSION", 2)
    async with _Opened(url) as (old,):
        run_id, first = await _with_pre_leased(old, 1)
    monkeypatch.undo()
    assert _sql(url, f'SELECT max(version) FROM "{s}".schema_version') == [(2,)]
    spec = f'"{s}".spec1(jsonb, integer, bigint, integer, text, boolean, boolean)'
    assert _sql(url, "SELECT to_regprocedure(%s) IS NULL", (spec,)) == [(True,)]
    async with _Opened(url) as (b,):
        versions = _sql(url, f'SELECT version FROM "{s}".schema_version ORDER BY 1')
        assert versions == [(v,) for v, _ in _pg_schema.MIGRATIONS]
        assert versions == [(1,), (2,), (3,), (4,), (5,)]
        assert _sql(url, "SELECT to_regprocedure(%s) IS NULL", (spec,)) == [(False,)]
        c = _spec_commit(run_id, T0 + 1, status=RunStatus.COMPLETED, result="done")
        assert await b.finish_step_and_commit(run_id, 1, TOKEN + 1, c, 0)
        rec = await b.get_run(run_id)
        assert rec is not None and rec.status is RunStatus.COMPLETED and rec.result == "done"
        fence = _sql(url, f'SELECT fence FROM "{s}".runs WHERE run_id = %s', (run_id,))
        assert fence == [(first.lease + 1,)]


async def test_a_version_1_store_is_migrated(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store created by the plait before eager dispatch (schema version 1), with a run in
    flight, is migrated forward on open and keeps its data; its pending step then finishes
    through the eager calls."""
    import psycopg

    from plait.backends._pg_client import commit_doc, dumps, rec_doc

    s = _schema(url)
    monkeypatch.setattr(_pg_schema, "MIGRATIONS", _pg_schema.MIGRATIONS[:1])
    monkeypatch.setattr(_pg_schema, "SCHEMA_VERSION", 1)
    rec = make_record()
    with psycopg.connect(_pg_schema.parse_url(url).conninfo, autocommit=True) as conn:
        aconn = await psycopg.AsyncConnection.connect(
            _pg_schema.parse_url(url).conninfo, autocommit=True
        )
        try:
            await _pg_schema.migrate(aconn, s)
        finally:
            await aconn.close()
        conn.execute(
            f'SELECT "{s}".create_run(%s::jsonb, %s::jsonb, %s, %s)',
            (dumps(rec_doc(rec)), dumps([]), T0, "v1"),
        )
        conn.execute(f'SELECT "{s}".requeue(%s, %s, %s)', (rec.run_id, T0, "v1"))
        claims = conn.execute(f'SELECT "{s}".claim_wfs(%s, %s, 1)', (T0, LEASE)).fetchone()
        fence = claims[0][0][0][0][14]  # type: ignore[index]
        step = StepTask(rec.run_id, 1, "s", [], 1, T0)
        doc = commit_doc(Commit(run_id=rec.run_id, lease=fence, now=T0, steps=(step,)))
        conn.execute(
            f'SELECT "{s}".apply_commits(%s::jsonb, %s::text[], %s)',
            ("[" + doc + "]", [rec.run_id], "v1"),
        )
    monkeypatch.undo()
    assert _sql(url, f'SELECT max(version) FROM "{s}".schema_version') == [(1,)]
    async with _Opened(url, 2) as (a, b):
        versions = _sql(url, f'SELECT version FROM "{s}".schema_version ORDER BY 1')
        assert versions == [(v,) for v, _ in _pg_schema.MIGRATIONS]
        assert (await a.get_run(rec.run_id)) == rec
        (task,) = await a.claim_step_tasks(T0, 10, LEASE)
        ok, claim = await b.finish_step_and_claim(
            rec.run_id, 1, task.lease, ev.StepCompleted(1, 1, 1), T0 + 1, LEASE
        )
        assert ok and claim is not None and claim.run.run_id == rec.run_id
        assert claim.lease == fence + 1
        assert await b.apply_commit(commit(claim, T0 + 1, steps=(_pre(rec.run_id, 2, T0 + 1),)))
        assert await a.claim_step_tasks(T0 + 2, 10, LEASE) == []


# -- eager start ---------------------------------------------------------------------------------


def _run_row(url: str, run_id: str) -> list[tuple[Any, ...]]:
    return _sql(
        url,
        f'SELECT fence, lease_expires, wf_ready_at IS NOT NULL FROM "{_schema(url)}".runs'
        " WHERE run_id = %s",
        (run_id,),
    )


async def test_create_run_and_claim_is_one_round_trip(url: str) -> None:
    """One call of ``create_claim``; afterwards the backend knows, without asking, that the run
    has no history and that the workflow queue holds one more leased task (which a fresh
    backend object reading the server agrees with), claimable again when its lease expires."""
    async with _Opened(url) as (b,):
        assert b.supports_eager_start
        assert await b.claim_workflow_task(T0, LEASE) is None  # now it trusts "empty"
        assert await b.fire_due_timers(T0) == 0  # ... of every queue
        rec = make_record()
        first = started(rec, 1)
        calls = _counting(b)
        run_id, created, got = await b.create_run_and_claim(rec, (first,), T0, LEASE)
        assert calls == ["create_claim"]
        assert (run_id, created) == (rec.run_id, True) and got is not None
        assert (got.lease, got.history_length, got.run) == (1, 0, rec)
        assert [e.event for e in got.inbox] == [first]
        assert got.inbox[0].id == _sql(url, f'SELECT max(id) FROM "{_schema(url)}".inbox')[0][0]
        assert _run_row(url, run_id) == [(1, T0 + LEASE, True)]
        assert await b.claim_workflow_task(T0 + 1, LEASE) is None
        assert await b.read_history(run_id) == []
        st = await b.state(T0 + 1)
        assert calls == ["create_claim"], "answered from what the backend carried over"
        assert (st.ready_workflow_tasks, st.leased_workflow_tasks) == (0, 1)
        async with _Opened(url) as (fresh,):
            for now in (T0 + 1, T0 + LEASE):
                assert await b.state(now) == await fresh.state(now), now
        again = await b.claim_workflow_task(T0 + LEASE, LEASE)  # the lease expired
        assert again is not None and again.run.run_id == run_id and again.lease == 2
        # a held key: nothing created, nothing claimed, still one call
        calls.clear()
        other = make_record(key="k")
        assert await b.create_run(other, (started(other),), T0) == (other.run_id, True)
        dup = make_record(key="k")
        assert await b.create_run_and_claim(dup, (started(dup),), T0, LEASE) == (
            other.run_id,
            False,
            None,
        )
        assert await b.create_run_and_claim(rec, (first,), T0, LEASE) == (run_id, False, None)
        assert calls == ["create_run", "create_claim", "create_claim"]
        assert await b.get_run(dup.run_id) is None
        assert _run_row(url, other.run_id) == [(0, None, True)]  # its task still unclaimed


async def test_create_run_and_claim_wakes_nobody_but_others_learn_the_lease(url: str) -> None:
    """The new task is leased to its creator: no waiter (here or on another backend) wakes for
    it, but another backend forgets what it knew of the workflow queue (NOTIFY ``l``), so its
    ``state()`` counts the lease, and it claims the task once the lease expires."""
    async with _Opened(url, 2) as (a, b):
        assert await b.claim_workflow_task(T0, LEASE) is None  # b trusts "empty"
        assert (await b.state(T0)).leased_workflow_tasks == 0
        woke = {a: anyio.Event(), b: anyio.Event()}

        async def waiter(x: PostgresBackend) -> None:
            await x.wait(30)
            woke[x].set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter, a)
            tg.start_soon(waiter, b)
            await anyio.sleep(0.2)
            rec = make_record()
            _, created, got = await a.create_run_and_claim(rec, (started(rec),), T0, LEASE)
            assert created and got is not None
            with anyio.fail_after(5):
                while (await b.state(T0 + 1)).leased_workflow_tasks != 1:
                    await anyio.sleep(0.05)
            await anyio.sleep(0.2)
            assert not woke[a].is_set() and not woke[b].is_set()
            tg.cancel_scope.cancel()
        assert await b.claim_workflow_task(T0 + 1, LEASE) is None
        late = await b.claim_workflow_task(T0 + LEASE, LEASE)
        assert late is not None and late.run.run_id == rec.run_id and late.lease == got.lease + 1
        assert not await a.apply_commit(commit(got, T0 + LEASE)), "the stale eager claim"


async def test_a_version_3_store_is_migrated_and_starts_eagerly(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store of schema version 3 (no ``create_claim``) with a run in flight is migrated to
    version 4 on open; that run carries on, and a new one starts eagerly."""
    s = _schema(url)
    monkeypatch.setattr(_pg_schema, "MIGRATIONS", _pg_schema.MIGRATIONS[:3])
    monkeypatch.setattr(_pg_schema, "SCHEMA_VERSION", 3)
    async with _Opened(url) as (old,):
        run_id, _ = await _with_pre_leased(old, 1)
    monkeypatch.undo()
    assert _sql(url, f'SELECT max(version) FROM "{s}".schema_version') == [(3,)]
    fn = f'"{s}".create_claim(jsonb, jsonb, float8, float8, text)'
    assert _sql(url, "SELECT to_regprocedure(%s) IS NULL", (fn,)) == [(True,)]
    async with _Opened(url) as (b,):
        versions = _sql(url, f'SELECT version FROM "{s}".schema_version ORDER BY 1')
        assert versions == [(v,) for v, _ in _pg_schema.MIGRATIONS]
        assert versions == [(1,), (2,), (3,), (4,), (5,)]
        assert _sql(url, "SELECT to_regprocedure(%s) IS NULL", (fn,)) == [(False,)]
        settings = _sql(url, "SELECT proconfig FROM pg_proc WHERE oid = to_regprocedure(%s)", (fn,))
        assert settings == [(["enable_seqscan=off", "plan_cache_mode=force_generic_plan"],)]
        c = _spec_commit(run_id, T0 + 1, status=RunStatus.COMPLETED, result="done")
        assert await b.finish_step_and_commit(run_id, 1, TOKEN + 1, c, 0)
        rec = make_record()
        _, created, got = await b.create_run_and_claim(rec, (started(rec),), T0 + 2, LEASE)
        assert created and got is not None and got.lease == 1
        assert await b.apply_commit(commit(got, T0 + 3, status=RunStatus.COMPLETED, result=1))
        done = await b.get_run(rec.run_id)
        assert done is not None and done.status is RunStatus.COMPLETED


# -- start with commit ---------------------------------------------------------------------------


def _first_commit(rec: RunRecord, now: float = T0, **fields: Any) -> Commit:
    """The commit of ``rec``'s first activation, as ``Engine.start`` sends it."""
    fields.setdefault("events", (started(rec), ev.Activated(now)))
    fields.setdefault("status", RunStatus.RUNNING)
    return Commit(run_id=rec.run_id, lease=None, now=now, **fields)


def _store(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table of the store but ``listeners``, to compare before and after."""
    s = _schema(url)
    order = {
        "runs": "run_id",
        "history": "run_id, pos",
        "inbox": "id",
        "steps": "run_id, seq",
        "timers": "run_id, seq",
        "hooks": "token",
    }
    return {t: _sql(url, f'SELECT * FROM "{s}".{t} ORDER BY {o}') for t, o in order.items()}


async def test_create_run_and_commit_is_one_round_trip(url: str) -> None:
    """One call of ``create_commit`` stores the run with its first commit applied: fence 1 (0
    bumped once), no lease, no workflow task, its pre-leased step stored leased. Afterwards the
    backend knows without asking that nothing became claimable and that one more step is leased
    until its lease ends (a fresh backend object reading the server agrees), and keeps the
    run's record; another backend learns of the step through NOTIFY."""
    async with _Opened(url, 2) as (b, other):
        assert b.supports_start_commit
        for x in (b, other):
            assert await x.claim_workflow_task(T0, LEASE) is None  # now it trusts "empty"
            assert await x.claim_step_tasks(T0, 10, LEASE) == []  # ... of every queue
            assert await x.fire_due_timers(T0) == 0
        assert (await other.state(T0)).leased_steps == 0
        rec = make_record(key="started-with-a-commit")
        events = (started(rec), ev.Activated(T0), ev.StepScheduled(1, "s", [1]))
        c = _first_commit(rec, events=events, steps=(_pre(rec.run_id, 1),))
        calls = _counting(b)
        gen = b._waker.gen
        assert await b.create_run_and_commit(rec, c) == (rec.run_id, True)
        assert calls == ["create_commit"]
        assert b._waker.gen == gen, "a step leased to the caller woke local waiters"
        assert _run_row(url, rec.run_id) == [(1, None, False)]
        steps = _sql(
            url,
            f'SELECT seq, lease, lease_expires FROM "{_schema(url)}".steps WHERE run_id = %s',
            (rec.run_id,),
        )
        assert steps == [(1, TOKEN + 1, T0 + LEASE)]
        assert _sql(url, f'SELECT count(*) FROM "{_schema(url)}".inbox') == [(0,)]
        assert await b.claim_workflow_task(T0 + 1, LEASE) is None
        assert await b.claim_step_tasks(T0 + 1, 10, LEASE) == []
        st = await b.state(T0 + 1)
        got = await b.get_run(rec.run_id)
        assert calls == ["create_commit"], "answered from what the backend carried over"
        assert (st.ready_workflow_tasks, st.leased_workflow_tasks) == (0, 0)
        assert (st.ready_steps, st.leased_steps) == (0, 1)
        assert got == attrs.evolve(rec, status=RunStatus.RUNNING)
        async with _Opened(url) as (fresh,):
            for now in (T0 + 1, T0 + LEASE):
                assert await b.state(now) == await fresh.state(now), now
            assert await fresh.get_run(rec.run_id) == got
        with anyio.fail_after(5):
            while (await other.state(T0 + 1)).leased_steps != 1:
                await anyio.sleep(0.05)
        assert await b.read_history(rec.run_id) == list(events)
        (task,) = await other.claim_step_tasks(T0 + LEASE, 10, LEASE)  # its lease expired
        assert (task.run_id, task.seq) == (rec.run_id, 1) and task.lease != TOKEN + 1
        # a claim of the run fences like a second one
        assert await b.append_inbox(rec.run_id, [ev.SignalReceived("go")], T0 + 2)
        woke = await claim_run(b, rec.run_id, T0 + 2)
        assert (woke.lease, woke.history_length) == (2, 3)


async def test_create_run_and_commit_writes_elsewhere_in_the_same_call(url: str) -> None:
    """A first commit that delivers to another run and starts a child (the general path,
    ``commit_one``) is still one call; the work it queues wakes waiters here and elsewhere."""
    async with _Opened(url, 2) as (b, other):
        target = await create(b)
        assert await claim_run(b, target.run_id) is not None  # its task is leased
        assert await other.claim_workflow_task(T0, LEASE) is None  # other trusts "empty"
        rec = make_record()
        kid = make_record(parent=rec.run_id, parent_seq=2)
        c = _first_commit(
            rec,
            new_runs=(NewRun(kid, (started(kid),)),),
            deliveries=(Delivery(target.run_id, ev.SignalReceived("hi")),),
            timers=(Timer(rec.run_id, 3, T0 + 5),),
        )
        woke = anyio.Event()

        async def waiter() -> None:
            await other.wait(30)
            woke.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.sleep(0.2)
            calls = _counting(b)
            assert await b.create_run_and_commit(rec, c) == (rec.run_id, True)
            assert calls == ["create_commit"]
            with anyio.fail_after(5):
                await woke.wait()
        got = await other.claim_workflow_task(T0 + 1, LEASE)
        assert got is not None and got.run.run_id == kid.run_id
        assert [e.event for e in got.inbox] == [started(kid)]
        assert _run_row(url, rec.run_id) == [(1, None, False)]
        assert await other.fire_due_timers(T0 + 5) == 1
        late = await claim_run(other, rec.run_id, T0 + 5)
        assert [e.event for e in late.inbox] == [ev.TimerFired(3)]
        inbox = _rows(url, target.run_id)["inbox"]
        assert [event_from_dict(r[2]) for r in inbox] == [started(target), ev.SignalReceived("hi")]


async def test_a_refused_create_run_and_commit_writes_nothing(url: str) -> None:
    """A held key, an existing run id, or the same call sent again: ``create_run``'s answer in
    one call each, not one row of the store changed (not the commit's steps, timers, hooks,
    deliveries or new runs) and no local waiter woken."""
    async with _Opened(url) as (b,):
        holder = await create(b, key="held")
        target = await create(b)
        existing = await create(b)

        def everything(rec: RunRecord) -> Commit:
            kid = make_record(parent=rec.run_id, parent_seq=4)
            signal = Delivery(rec.run_id, ev.SignalReceived("dup"))
            return _first_commit(
                rec,
                status=RunStatus.COMPLETED,
                result=1,
                steps=(_pre(rec.run_id, 1), StepTask(rec.run_id, 2, "s", [2], 1, T0)),
                timers=(Timer(rec.run_id, 3, T0 + 5),),
                hooks=(HookReg("a-token", 5, signal),),
                new_runs=(NewRun(kid, (started(kid),)),),
                deliveries=(Delivery(target.run_id, ev.SignalReceived("x")),),
            )

        async def refused(rec: RunRecord, c: Commit, answer: str) -> None:
            before = _store(url)
            calls = _counting(b)
            gen = b._waker.gen
            assert await b.create_run_and_commit(rec, c) == (answer, False)
            assert calls == ["create_commit"]
            assert _store(url) == before
            assert b._waker.gen == gen
            b._run = PostgresBackend._run.__get__(b)  # type: ignore[method-assign]

        rec = make_record(key="held")
        await refused(rec, everything(rec), holder.run_id)
        assert await b.get_run(rec.run_id) is None
        await refused(existing, everything(existing), existing.run_id)
        # sent again (a caller's retry after a lost reply): no second run, nothing twice
        again = make_record(key="again")
        c = _first_commit(again, steps=(_pre(again.run_id, 1),))
        assert await b.create_run_and_commit(again, c) == (again.run_id, True)
        await refused(again, c, again.run_id)
        other = make_record(key="again")  # another start with that key: the run holds it
        await refused(other, _first_commit(other, steps=(_pre(other.run_id, 1),)), again.run_id)
        assert [r[0] for r in _store(url)["runs"]] == sorted(
            r.run_id for r in (holder, target, existing, again)
        )


async def test_a_version_4_store_is_migrated_and_starts_runs_with_a_commit(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store of schema version 4 (no ``create_commit``) with a run started eagerly in flight
    is migrated to version 5 on open; that run's claim still commits, and a new run starts with
    its first commit and carries on."""
    s = _schema(url)
    monkeypatch.setattr(_pg_schema, "MIGRATIONS", _pg_schema.MIGRATIONS[:4])
    monkeypatch.setattr(_pg_schema, "SCHEMA_VERSION", 4)
    early = make_record()
    async with _Opened(url) as (old,):
        _, created, claimed = await old.create_run_and_claim(early, (started(early),), T0, LEASE)
        assert created and claimed is not None
    monkeypatch.undo()
    assert _sql(url, f'SELECT max(version) FROM "{s}".schema_version') == [(4,)]
    fn = f'"{s}".create_commit(jsonb, jsonb, text[], text)'
    assert _sql(url, "SELECT to_regprocedure(%s) IS NULL", (fn,)) == [(True,)]
    async with _Opened(url) as (b,):
        versions = _sql(url, f'SELECT version FROM "{s}".schema_version ORDER BY 1')
        assert versions == [(v,) for v, _ in _pg_schema.MIGRATIONS]
        assert versions == [(1,), (2,), (3,), (4,), (5,)]
        assert _sql(url, "SELECT to_regprocedure(%s) IS NULL", (fn,)) == [(False,)]
        settings = _sql(url, "SELECT proconfig FROM pg_proc WHERE oid = to_regprocedure(%s)", (fn,))
        assert settings == [(["enable_seqscan=off", "plan_cache_mode=force_generic_plan"],)]
        assert await b.apply_commit(commit(claimed, T0 + 1, status=RunStatus.COMPLETED, result=0))
        rec = make_record()
        events = (started(rec), ev.Activated(T0 + 1), ev.StepScheduled(1, "s", [1]))
        c = _first_commit(rec, T0 + 1, events=events, steps=(_pre(rec.run_id, 1, T0 + 1),))
        assert await b.create_run_and_commit(rec, c) == (rec.run_id, True)
        done = _spec_commit(rec.run_id, T0 + 2, status=RunStatus.COMPLETED, result=2)
        assert await b.finish_step_and_commit(rec.run_id, 1, TOKEN + 1, done, len(events))
        for run_id, result in ((early.run_id, 0), (rec.run_id, 2)):
            got = await b.get_run(run_id)
            assert got is not None and got.status is RunStatus.COMPLETED and got.result == result
        assert _run_row(url, rec.run_id) == [(2, None, False)]


# -- through Engine and Worker -------------------------------------------------------------------


async def test_a_worker_starts_runs_eagerly_on_postgres(url: str) -> None:
    """``Engine.start`` with a local worker creates each run already claimed for it: no
    ``create_run`` and no workflow claim of the new runs. (Start with commit, which the engine
    prefers, is turned off here.)"""
    async with plait.Engine(url) as engine:
        backend = engine.backend
        assert isinstance(backend, PostgresBackend)
        backend.supports_start_commit = False  # type: ignore[misc]
        async with engine.worker(wf.WORKFLOWS, wf.STEPS, poll_interval=0.2) as w:
            calls = _counting(backend)
            handles = [await engine.start(wf.chain, 2) for _ in range(3)]
            with anyio.fail_after(30):
                assert [await h.result() for h in handles] == [2, 2, 2]
            stats = dict(w.stats)
    assert calls.count("create_claim") == 3 and "create_run" not in calls, calls
    assert stats["activations"] == 9, stats  # the eager claim's, then one speculation per step


async def test_a_worker_starts_runs_with_their_first_commit_on_postgres(url: str) -> None:
    """``Engine.start`` with a local worker runs each new run's first activation itself and
    stores the run with it: one ``create_commit`` per run, no ``create_run`` or
    ``create_claim``; the steps that commit leased to the worker run at once, and each finish
    carries the next activation."""
    async with plait.Engine(url) as engine:
        backend = engine.backend
        assert isinstance(backend, PostgresBackend)
        async with engine.worker(wf.WORKFLOWS, wf.STEPS, poll_interval=0.2) as w:
            calls = _counting(backend)
            handles = [await engine.start(wf.chain, 2) for _ in range(3)]
            with anyio.fail_after(30):
                assert [await h.result() for h in handles] == [2, 2, 2]
            stats = dict(w.stats)
    assert calls.count("create_commit") == 3, calls
    assert not {"create_run", "create_claim"} & set(calls), calls
    # the start's activation, then one speculation per step: no claim activated any of them
    assert stats["activations"] == 9 and stats["speculations"] == 6, stats
    assert stats["speculations_refused"] == 0 and stats["fenced"] == 0, stats


async def test_three_worker_processes_share_the_work(url: str, tmp_path: Path) -> None:
    stop = tmp_path / "stop"
    script = HERE / "_pg_worker_script.py"
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), url, str(stop)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    try:
        async with plait.Engine(url) as engine:  # opens (and creates) the schema first
            for p in procs:
                assert p.stdout is not None
                line = await anyio.to_thread.run_sync(p.stdout.readline)
                assert line.strip() == "ready", p.stderr.read() if p.stderr else line
            handles = [await engine.start(wf.parent, n) for n in range(100)]
            with anyio.fail_after(60):
                for n, h in enumerate(handles):
                    assert await h.result() == wf.parent_result(n)
            runs = [r async for r in engine.list_runs()]
            histories = {r.run_id: await engine.history(r.run_id) for r in runs}
    finally:
        stop.touch()
        outs = [p.communicate(timeout=30) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    stats = [json.loads(o[0].strip().splitlines()[-1]) for o in outs]

    assert len(runs) == 300 and all(r.status is RunStatus.COMPLETED for r in runs)
    children = [r for r in runs if r.parent_run_id is not None]
    assert len(children) == 200 == len({r.run_id for r in children})
    assert set(Counter(r.parent_run_id for r in children).values()) == {2}
    for run_id, history in histories.items():
        kinds = Counter(type(e).__name__ for e in history)
        assert kinds["RunStarted"] == 1 and kinds["RunCompleted"] == 1, run_id
        step_done = [e.seq for e in history if isinstance(e, ev.StepCompleted)]
        assert len(step_done) == len(set(step_done)), f"a step result twice in {run_id}"
    scheduled = [
        e.child_run_id for h in histories.values() for e in h if isinstance(e, ev.ChildScheduled)
    ]
    assert len(scheduled) == 200 == len(set(scheduled))
    assert sum(s["activations"] for s in stats) >= 300
    assert sum(1 for s in stats if s["activations"] > 0) >= 2, stats


async def test_runs_complete_across_a_server_restart(url: str) -> None:
    from plait.testing import servers

    if "postgres" not in servers._SERVERS:
        pytest.skip("needs the throwaway local PostgreSQL of plait.testing.servers")
    n = 40
    async with plait.Engine(url) as engine:
        async with engine.worker(
            wf.WORKFLOWS,
            wf.STEPS,
            concurrency=16,
            lease_seconds=2.0,
            step_lease_seconds=2.0,
            poll_interval=0.2,
        ):
            handles = [await engine.start(wf.chain, 5) for _ in range(n)]
            with anyio.fail_after(30):
                while (await engine.backend.state(engine.clock.now())).leased_steps == 0:
                    await anyio.sleep(0.01)
            await anyio.to_thread.run_sync(servers.restart_postgres, "fast")
            with anyio.fail_after(60):
                results = [await h.result() for h in handles]
    assert results == [5] * n
    async with plait.Engine(url) as engine:
        for h in handles:
            history = await engine.history(h.run_id)
            done = [e.seq for e in history if isinstance(e, ev.StepCompleted)]
            assert len(done) == 5 == len(set(done))


async def test_an_idle_worker_barely_queries(url: str) -> None:
    dbname = _sql(url, "SELECT current_database()")[0][0]

    def commits() -> int:
        return int(
            _sql(url, "SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (dbname,))[0][
                0
            ]
        )

    calls = 0
    async with plait.Engine(url) as engine:
        backend = engine.backend
        assert isinstance(backend, PostgresBackend)
        run = backend._run

        async def counting(*args: Any, **kw: Any) -> Any:
            nonlocal calls
            calls += 1
            return await run(*args, **kw)

        backend._run = counting  # type: ignore[method-assign]
        async with engine.worker(wf.WORKFLOWS, wf.STEPS, poll_interval=0.2):
            await anyio.sleep(1.5)  # settle, and let the server flush its statistics
            before, calls = commits(), 0
            await anyio.sleep(3.0)
            after, client_calls = commits(), calls
    server_rate = (after - before - 1) / 3.0  # minus the first measuring query's own commit
    assert server_rate <= 5.0, f"{server_rate:.1f} transactions/s"
    assert client_calls / 3.0 <= 5.0, f"{client_calls / 3:.1f} calls/s"
