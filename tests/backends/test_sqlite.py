"""The sqlite backend: URL forms, refusing foreign stores, the protocol's guarantees operation by
operation, several processes sharing one file, and end-to-end runs through Engine and Worker."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

import plait
from plait.backends import _sqlite_schema as schema
from plait.backends._sqlite_store import Store
from plait.backends.base import (
    BackendError,
    Commit,
    Delivery,
    EagerBackend,
    HookReg,
    HookResume,
    NewRun,
    RunRecord,
    SchemaError,
    StepTask,
    Timer,
)
from plait.backends.memory import MemoryBackend
from plait.backends.sqlite import POLL_SECONDS, SqliteBackend
from plait.kernel import events as ev
from plait.kernel.errors import ErrorInfo
from plait.kernel.status import RunStatus
from plait.plugins.manager import backend_from_url
from plait.testing import TimeSkippingEnvironment

pytestmark = pytest.mark.backend("sqlite")

NOW = 1_000.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def url_of(path: Path, query: str = "") -> str:
    return f"sqlite:///{path}" + (f"?{query}" if query else "")


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "plait.db"


@pytest.fixture(params=["file", "in-memory", "reference"])
async def backend(request: pytest.FixtureRequest, db_path: Path) -> Any:
    """A sqlite backend on a file or in memory; "reference" runs the same test on the memory
    backend, so every expectation below is also checked against the reference behaviour."""
    if request.param == "reference":
        yield MemoryBackend()
        return
    b = SqliteBackend(url_of(db_path) if request.param == "file" else "sqlite://:memory:")
    await b.open()
    try:
        yield b
    finally:
        await b.close()


@pytest.fixture
async def file_backend(db_path: Path) -> Any:
    b = SqliteBackend(url_of(db_path))
    await b.open()
    try:
        yield b
    finally:
        await b.close()


def record(run_id: str, key: str | None = None, **kw: Any) -> RunRecord:
    kw.setdefault("workflow", "wf")
    return RunRecord(run_id=run_id, status=RunStatus.PENDING, created_at=NOW, key=key, **kw)


def started(run_id: str) -> ev.RunStarted:
    return ev.RunStarted(run_id=run_id, workflow="wf", args=[1, "two"], seed="s", time=NOW)


async def new_run(b: SqliteBackend, run_id: str, now: float = NOW, **kw: Any) -> None:
    assert await b.create_run(record(run_id, **kw), (started(run_id),), now) == (run_id, True)


async def claim_and_commit(b: SqliteBackend, run_id: str, now: float = NOW, **kw: Any) -> int:
    """Claim ``run_id`` (which must come first) and commit ``kw``; returns the inbox id used."""
    claim = await b.claim_workflow_task(now, 30)
    assert claim is not None and claim.run.run_id == run_id
    upto = claim.inbox[-1].id if claim.inbox else 0
    kw.setdefault("status", RunStatus.RUNNING)
    assert await b.apply_commit(Commit(run_id, claim.lease, now, inbox_upto=upto, **kw))
    return upto


# -- URLs and files ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///runs.db", "runs.db"),
        ("sqlite:///sub/dir/runs.db", "sub/dir/runs.db"),
        ("sqlite:////abs/path/runs.db", "/abs/path/runs.db"),
        ("SQLite:///runs.db", "runs.db"),
        ("sqlite:///with%20space.db", "with space.db"),
        ("sqlite://:memory:", None),
        ("sqlite://", None),
        ("sqlite:///:memory:", None),
    ],
)
def test_url_paths(url: str, path: str | None) -> None:
    opts = schema.parse_url(url)
    assert opts.path == path
    assert (opts.synchronous, opts.busy_timeout_ms) == ("NORMAL", 5000)


def test_url_options() -> None:
    opts = schema.parse_url("sqlite:///x.db?synchronous=full&busy_timeout=250")
    assert (opts.synchronous, opts.busy_timeout_ms) == ("FULL", 250)
    assert schema.parse_url("sqlite:///x.db?synchronous=NORMAL").synchronous == "NORMAL"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite://host/x.db", "names a host"),
        ("sqlite:///", "has no path"),
        ("sqlite:///x.db?synchronous=sometimes", "synchronous='sometimes'"),
        ("sqlite:///x.db?busy_timeout=-1", "busy_timeout='-1'"),
        ("sqlite:///x.db?busy_timeout=soon", "busy_timeout='soon'"),
        ("sqlite:///x.db?colour=red", "unknown option(s) colour"),
        ("postgres:///x.db", "not a sqlite URL"),
    ],
)
def test_bad_urls_are_refused_clearly(url: str, message: str) -> None:
    with pytest.raises(BackendError, match=None) as info:
        SqliteBackend(url)
    assert message in str(info.value)


def test_registered_through_the_plait_entry_point_group(db_path: Path) -> None:
    assert isinstance(backend_from_url(url_of(db_path)), SqliteBackend)
    assert isinstance(backend_from_url("sqlite://:memory:"), SqliteBackend)
    assert isinstance(plait.Engine(url_of(db_path)).backend, SqliteBackend)


async def _pragma(b: SqliteBackend, name: str) -> Any:
    con = b._store.con
    assert con is not None
    return await b._run(lambda: con.execute(f"PRAGMA {name}").fetchone()[0])


@pytest.mark.anyio
async def test_wal_normal_by_default_and_full_on_request(tmp_path: Path) -> None:
    b = SqliteBackend(url_of(tmp_path / "a.db"))
    await b.open()
    assert await _pragma(b, "journal_mode") == "wal"
    assert await _pragma(b, "synchronous") == 1  # NORMAL
    assert await _pragma(b, "busy_timeout") == 5000
    await b.close()
    b = SqliteBackend(url_of(tmp_path / "a.db", "synchronous=full&busy_timeout=1234"))
    await b.open()
    assert await _pragma(b, "synchronous") == 2  # FULL
    assert await _pragma(b, "busy_timeout") == 1234
    await b.close()


@pytest.mark.anyio
async def test_relative_path_and_missing_directories_are_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    b = SqliteBackend("sqlite:///rel/deeper/runs.db")
    await b.open()
    await new_run(b, "r1")
    await b.close()
    assert (tmp_path / "rel" / "deeper" / "runs.db").is_file()
    nested = tmp_path / "a" / "b" / "c" / "x.db"
    async with plait.Engine(url_of(nested)):
        pass
    assert nested.is_file()


@pytest.mark.anyio
async def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="is a directory"):
        await SqliteBackend(url_of(tmp_path)).open()


def _files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.parent.iterdir())}


@pytest.mark.anyio
async def test_a_file_that_is_not_sqlite_is_refused_unchanged(db_path: Path) -> None:
    db_path.write_bytes(b"name,amount\nalice,3\n" * 200)
    before = _files(db_path)
    b = SqliteBackend(url_of(db_path))
    with pytest.raises(SchemaError) as info:
        await b.open()
    message = str(info.value)
    assert str(db_path) in message and "not a plait database" in message
    assert "\n" not in message
    assert _files(db_path) == before


@pytest.mark.anyio
async def test_a_foreign_sqlite_database_is_refused_unchanged(db_path: Path) -> None:
    con = sqlite3.connect(db_path)
    con.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    con.execute("INSERT INTO users (name) VALUES ('alice')")
    con.commit()
    con.close()
    before = _files(db_path)
    with pytest.raises(SchemaError, match="other tables \\(users\\)") as info:
        await SqliteBackend(url_of(db_path)).open()
    assert str(db_path) in str(info.value)
    assert _files(db_path) == before
    con = sqlite3.connect(db_path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # not switched to WAL
    con.close()


@pytest.mark.anyio
async def test_a_plait_meta_without_the_marker_is_refused(db_path: Path) -> None:
    con = sqlite3.connect(db_path)
    con.execute("CREATE TABLE plait_meta (key TEXT PRIMARY KEY, value TEXT)")
    con.execute("INSERT INTO plait_meta VALUES ('schema_version', '1')")
    con.commit()
    con.close()
    before = _files(db_path)
    with pytest.raises(SchemaError, match="no plait marker"):
        await SqliteBackend(url_of(db_path)).open()
    assert _files(db_path) == before


@pytest.mark.anyio
async def test_a_newer_schema_is_refused_unchanged(db_path: Path) -> None:
    b = SqliteBackend(url_of(db_path))
    await new_run(b, "r1")  # opens lazily
    await b.close()
    con = sqlite3.connect(db_path)
    con.execute("UPDATE plait_meta SET value = '99' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    before = _files(db_path)
    with pytest.raises(SchemaError) as info:
        await SqliteBackend(url_of(db_path)).open()
    assert f"written by a newer plait (schema 99 > {schema.SCHEMA_VERSION})" in str(info.value)
    assert str(db_path) in str(info.value)
    assert _files(db_path) == before


@pytest.mark.anyio
async def test_an_empty_file_gets_the_schema(db_path: Path) -> None:
    db_path.touch()
    b = SqliteBackend(url_of(db_path))
    await new_run(b, "r1")
    await b.close()
    con = sqlite3.connect(db_path)
    meta = dict(con.execute("SELECT key, value FROM plait_meta"))
    con.close()
    assert meta == {"magic": "plait", "schema_version": str(schema.SCHEMA_VERSION)}


@pytest.mark.anyio
async def test_forward_migrations_apply_in_order(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = SqliteBackend(url_of(db_path))
    await new_run(b, "r1")
    await b.close()
    extra = [
        (schema.SCHEMA_VERSION + 1, ("CREATE TABLE plait_extra (x INTEGER)",)),
        (schema.SCHEMA_VERSION + 2, ("INSERT INTO plait_extra VALUES (42)",)),
    ]
    monkeypatch.setattr(schema, "MIGRATIONS", [*schema.MIGRATIONS, *extra])
    monkeypatch.setattr(schema, "SCHEMA_VERSION", schema.SCHEMA_VERSION + 2)
    b = SqliteBackend(url_of(db_path))
    assert (await b.get_run("r1")) is not None
    await b.close()
    con = sqlite3.connect(db_path)
    version = con.execute("SELECT value FROM plait_meta WHERE key = 'schema_version'").fetchone()
    assert int(version[0]) == schema.SCHEMA_VERSION
    assert con.execute("SELECT x FROM plait_extra").fetchall() == [(42,)]
    con.close()


@pytest.mark.anyio
async def test_in_memory_url_works() -> None:
    b = SqliteBackend("sqlite://:memory:")
    await new_run(b, "r1")
    claim = await b.claim_workflow_task(NOW, 30)
    assert claim is not None and [e.event for e in claim.inbox] == [started("r1")]
    await b.close()
    await b.close()  # idempotent


@pytest.mark.anyio
async def test_history_survives_close_and_reopen(db_path: Path) -> None:
    b = SqliteBackend(url_of(db_path))
    await new_run(b, "r1", key="k")
    events = (started("r1"), ev.Activated(NOW), ev.StepScheduled(1, "s", [1, {"a": [2]}]))
    await claim_and_commit(b, "r1", events=events)
    err = ErrorInfo("ValueError", "boom", "tb", non_retryable=True)
    await b.append_history("r1", [ev.StepFailed(1, err, 3)])
    rec = await b.get_run("r1")
    await b.close()
    b2 = SqliteBackend(url_of(db_path))
    assert await b2.read_history("r1") == [*events, ev.StepFailed(1, err, 3)]
    assert await b2.get_run("r1") == rec
    assert await b2.create_run(record("r2", key="k"), (), NOW) == ("r1", False)
    await b2.close()


# -- runs, inboxes, leases ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_key_uniqueness_among_open_runs(backend: SqliteBackend) -> None:
    b = backend
    await new_run(b, "r1", key="k")
    assert await b.create_run(record("r2", key="k"), (started("r2"),), NOW) == ("r1", False)
    assert await b.get_run("r2") is None
    assert await b.create_run(record("r1"), (), NOW) == ("r1", False)  # same id: left alone
    await claim_and_commit(b, "r1", status=RunStatus.COMPLETED, result={"ok": True})
    assert await b.create_run(record("r3", key="k"), (started("r3"),), NOW) == ("r3", True)
    done = await b.get_run("r1")
    assert done is not None and done.closed and done.closed_at == NOW
    assert done.result == {"ok": True} and done.key == "k"


@pytest.mark.anyio
async def test_get_and_list_runs(backend: SqliteBackend) -> None:
    b = backend
    assert await b.get_run("nope") is None
    assert await b.read_history("nope") == []
    await new_run(b, "p")
    for i in range(5):
        await new_run(b, f"c{i}", parent_run_id="p", parent_seq=i, workflow="child")
    await new_run(b, "other", workflow="child")
    children = await b.list_runs(parent="p")
    assert [r.run_id for r in children] == [f"c{i}" for i in range(5)]
    assert [r.parent_seq for r in children] == list(range(5))
    assert [r.run_id for r in await b.list_runs(workflow="child", limit=2, offset=4)] == [
        "c4",
        "other",
    ]
    assert [r.run_id for r in await b.list_runs(limit=3)] == ["p", "c0", "c1"]
    assert await b.list_runs(status=RunStatus.COMPLETED) == []
    assert len(await b.list_runs(status=RunStatus.PENDING, limit=100)) == 7
    assert await b.list_runs(limit=0) == []


@pytest.mark.anyio
async def test_append_inbox_only_to_open_runs(backend: SqliteBackend) -> None:
    b = backend
    assert not await b.append_inbox("ghost", [ev.CancelRequested()], NOW)
    await new_run(b, "r1")
    assert await b.append_inbox("r1", [ev.SignalReceived("a", 1), ev.SignalReceived("b", 2)], NOW)
    claim = await b.claim_workflow_task(NOW, 30)
    assert claim is not None
    assert [e.event for e in claim.inbox] == [
        started("r1"),
        ev.SignalReceived("a", 1),
        ev.SignalReceived("b", 2),
    ]
    ids = [e.id for e in claim.inbox]
    assert ids == sorted(ids) and len(set(ids)) == 3
    await b.apply_commit(
        Commit("r1", claim.lease, NOW, inbox_upto=ids[-1], status=RunStatus.CANCELLED)
    )
    assert not await b.append_inbox("r1", [ev.CancelRequested()], NOW)
    assert not await b.requeue_workflow_task("r1", NOW)


@pytest.mark.anyio
async def test_claim_order_is_ready_time_then_enqueue_order(backend: SqliteBackend) -> None:
    b = backend
    await new_run(b, "late", now=NOW + 5)
    await new_run(b, "first", now=NOW)
    await new_run(b, "second", now=NOW)
    await new_run(b, "future", now=NOW + 100)
    order = []
    while (claim := await b.claim_workflow_task(NOW + 10, 1000)) is not None:
        order.append(claim.run.run_id)
    assert order == ["first", "second", "late"]
    claim = await b.claim_workflow_task(NOW + 100, 1000)
    assert claim is not None and claim.run.run_id == "future"
    claim = await b.claim_workflow_task(NOW + 1011, 1000)  # first's lease expired first
    assert claim is not None and claim.run.run_id == "first"


@pytest.mark.anyio
async def test_fencing_of_a_stale_lease(backend: SqliteBackend) -> None:
    b = backend
    await new_run(b, "r1")
    first = await b.claim_workflow_task(NOW, 10)
    assert first is not None and first.history_length == 0
    assert await b.claim_workflow_task(NOW + 5, 10) is None  # live lease
    assert await b.renew_workflow_lease("r1", first.lease, NOW + 5, 10)  # now until NOW + 15
    assert await b.claim_workflow_task(NOW + 14, 10) is None
    second = await b.claim_workflow_task(NOW + 16, 10)  # expired: claimable again
    assert second is not None and second.run.run_id == "r1" and second.lease > first.lease
    assert [e.id for e in second.inbox] == [e.id for e in first.inbox]
    stale = Commit(
        "r1",
        first.lease,
        NOW + 17,
        events=(started("r1"), ev.Activated(NOW + 17)),
        inbox_upto=first.inbox[-1].id,
        status=RunStatus.COMPLETED,
        result=1,
        steps=(StepTask("r1", 1, "s", []),),
        timers=(Timer("r1", 2, NOW + 50),),
        hooks=(HookReg("tok", 3, Delivery("r1", ev.HookConflict(3, "tok"))),),
        deliveries=(Delivery("r1", ev.SignalReceived("x")),),
    )
    assert not await b.apply_commit(stale)
    assert not await b.renew_workflow_lease("r1", first.lease, NOW + 17, 10)
    rec = await b.get_run("r1")
    assert rec is not None and rec.status is RunStatus.PENDING and rec.result is None
    assert await b.read_history("r1") == []
    assert await b.claim_step_tasks(NOW + 100, 10, 30) == []
    assert await b.resume_hook("tok", None, NOW + 17) is None
    st = await b.state(NOW + 17)
    assert (st.timers, st.leased_workflow_tasks) == (0, 1)
    assert await b.apply_commit(
        Commit("r1", second.lease, NOW + 17, events=(started("r1"),), inbox_upto=99999)
    )
    assert await b.read_history("r1") == [started("r1")]
    assert not await b.apply_commit(Commit("r1", second.lease, NOW + 18))  # released
    assert await b.claim_workflow_task(NOW + 18, 10) is None  # inbox empty: not requeued


@pytest.mark.anyio
async def test_terminate_fences_out_an_inflight_activation(backend: SqliteBackend) -> None:
    b = backend
    await new_run(b, "r1", key="k")
    claim = await b.claim_workflow_task(NOW, 30)
    assert claim is not None
    terminate = Commit(
        "r1", None, NOW + 1, events=(ev.RunTerminated("bye"),), status=RunStatus.TERMINATED
    )
    assert await b.apply_commit(terminate)
    assert not await b.apply_commit(Commit("r1", claim.lease, NOW + 2, status=RunStatus.RUNNING))
    assert not await b.apply_commit(terminate)  # already closed
    rec = await b.get_run("r1")
    assert rec is not None and rec.status is RunStatus.TERMINATED and rec.closed_at == NOW + 1
    assert await b.read_history("r1") == [ev.RunTerminated("bye")]
    assert await b.claim_workflow_task(NOW + 100, 30) is None
    assert (await b.create_run(record("r2", key="k"), (), NOW))[1]


@pytest.mark.anyio
async def test_closing_releases_key_hooks_steps_timers_and_inbox(backend: SqliteBackend) -> None:
    b = backend
    await new_run(b, "r1", key="k")
    await claim_and_commit(
        b,
        "r1",
        steps=(StepTask("r1", 1, "s", [1]),),
        timers=(Timer("r1", 2, NOW + 60),),
        hooks=(HookReg("tok", 3, Delivery("r1", ev.HookConflict(3, "tok"))),),
    )
    st = await b.state(NOW)
    assert (st.ready_steps, st.timers, st.next_due) == (1, 1, NOW + 60)
    assert await b.append_inbox("r1", [ev.SignalReceived("late")], NOW)
    error = ErrorInfo("RuntimeError", "bad")
    await claim_and_commit(b, "r1", status=RunStatus.FAILED, error=error)
    rec = await b.get_run("r1")
    assert rec is not None and rec.status is RunStatus.FAILED and rec.error == error
    assert await b.claim_step_tasks(NOW, 10, 30) == []
    assert await b.fire_due_timers(NOW + 1000) == 0
    assert await b.resume_hook("tok", 1, NOW) is None
    st = await b.state(NOW)
    assert (st.ready_workflow_tasks, st.ready_steps, st.timers, st.next_due) == (0, 0, 0, None)
    assert (await b.create_run(record("r2", key="k"), (), NOW))[1]


@pytest.mark.anyio
async def test_hook_token_uniqueness(backend: SqliteBackend) -> None:
    b = backend
    await new_run(b, "a")
    await new_run(b, "b")
    mine = Delivery("a", ev.HookConflict(4, "tok"))
    await claim_and_commit(b, "a", hooks=(HookReg("tok", 4, mine),))
    clash = Delivery("b", ev.HookConflict(7, "tok"))
    await claim_and_commit(b, "b", hooks=(HookReg("tok", 7, clash),), dispose_hooks=("tok",))
    claim = await b.claim_workflow_task(NOW, 30)  # b got the conflict; a kept the token
    assert claim is not None and claim.run.run_id == "b"
    assert [e.event for e in claim.inbox] == [ev.HookConflict(7, "tok")]
    assert await b.apply_commit(Commit("b", claim.lease, NOW, inbox_upto=claim.inbox[-1].id))
    assert await b.resume_hook("tok", {"p": 1}, NOW) == "a"
    assert await b.resume_hook("nope", 1, NOW) is None
    claim = await b.claim_workflow_task(NOW, 30)
    assert claim is not None and claim.run.run_id == "a"
    assert [e.event for e in claim.inbox] == [ev.HookReceived(4, {"p": 1})]
    assert await b.apply_commit(
        Commit("a", claim.lease, NOW, inbox_upto=claim.inbox[-1].id, dispose_hooks=("tok",))
    )
    assert await b.resume_hook("tok", 2, NOW) is None


@pytest.mark.anyio
async def test_a_token_closed_and_reopened_in_one_commit_moves(backend: SqliteBackend) -> None:
    b = backend
    await new_run(b, "a")
    await claim_and_commit(b, "a", hooks=(HookReg("t", 1, Delivery("a", ev.HookConflict(1, "t"))),))
    await b.append_inbox("a", [ev.SignalReceived("x")], NOW)
    again = HookReg("t", 2, Delivery("a", ev.HookConflict(2, "t")))
    await claim_and_commit(b, "a", hooks=(again,), dispose_hooks=("t",))
    assert await b.resume_hook("t", "p", NOW) == "a"
    claim = await b.claim_workflow_task(NOW, 30)
    assert claim is not None and [e.event for e in claim.inbox] == [ev.HookReceived(2, "p")]


@pytest.mark.anyio
async def test_commit_effects_children_resumes_and_deliveries(backend: SqliteBackend) -> None:
    b = backend
    await new_run(b, "p")
    await new_run(b, "holder", key="busy")
    await new_run(b, "hooked")
    await claim_and_commit(b, "p")
    await claim_and_commit(b, "holder")
    await claim_and_commit(
        b, "hooked", hooks=(HookReg("h", 9, Delivery("hooked", ev.HookConflict(9, "h"))),)
    )
    child = record("p-c1", parent_run_id="p", parent_seq=1, key="fresh")
    clash = record("p-c2", parent_run_id="p", parent_seq=2, key="busy")
    again = record("holder")
    await b.append_inbox("p", [ev.SignalReceived("go")], NOW)
    claim = await b.claim_workflow_task(NOW, 30)
    assert claim is not None and claim.run.run_id == "p"
    commit = Commit(
        "p",
        claim.lease,
        NOW,
        inbox_upto=claim.inbox[-1].id,
        new_runs=(
            NewRun(
                child,
                (started("p-c1"),),
                Delivery("p", ev.ChildStarted(1, "p-c1")),
                Delivery("p", ev.ChildStartFailed(1, "fresh")),
            ),
            NewRun(
                clash,
                (started("p-c2"),),
                Delivery("p", ev.ChildStarted(2, "p-c2")),
                Delivery("p", ev.ChildStartFailed(2, "busy")),
            ),
            NewRun(again, (), Delivery("p", ev.ChildStarted(3, "x")), None),
        ),
        hook_resumes=(
            HookResume(
                "h",
                [1],
                Delivery("p", ev.HookResumeResult(4, True)),
                Delivery("p", ev.HookResumeResult(4, False)),
            ),
            HookResume(
                "none",
                [2],
                Delivery("p", ev.HookResumeResult(5, True)),
                Delivery("p", ev.HookResumeResult(5, False)),
            ),
        ),
        deliveries=(
            Delivery("holder", ev.SignalReceived("hi", 3)),
            Delivery("ghost", ev.SignalReceived("lost")),
        ),
    )
    assert await b.apply_commit(commit)
    assert await b.get_run("p-c2") is None
    got: dict[str, list[Any]] = {}
    while (c := await b.claim_workflow_task(NOW, 30)) is not None:
        got[c.run.run_id] = [e.event for e in c.inbox]
    assert got == {
        "p-c1": [started("p-c1")],
        "p": [
            ev.ChildStarted(1, "p-c1"),
            ev.ChildStartFailed(2, "busy"),
            ev.HookResumeResult(4, True),
            ev.HookResumeResult(5, False),
        ],
        "hooked": [ev.HookReceived(9, [1])],
        "holder": [ev.SignalReceived("hi", 3)],
    }
    assert list(got) == ["p-c1", "hooked", "holder", "p"]  # enqueue order; p requeued last


@pytest.mark.anyio
async def test_step_tasks_lease_redelivery_and_exactly_once_outcome(
    backend: SqliteBackend,
) -> None:
    b = backend
    await new_run(b, "r1")
    steps = tuple(StepTask("r1", seq, f"s{seq}", [seq], 1, NOW + (seq == 1)) for seq in (1, 2, 3))
    await claim_and_commit(b, "r1", steps=steps)
    first = await b.claim_step_tasks(NOW + 1, 2, 10)
    assert [(t.seq, t.args, t.name) for t in first] == [(2, [2], "s2"), (3, [3], "s3")]
    assert len({t.lease for t in first}) == 2 and all(t.lease > 0 for t in first)
    rest = await b.claim_step_tasks(NOW + 1, 10, 10)
    assert [t.seq for t in rest] == [1]
    assert await b.claim_step_tasks(NOW + 5, 10, 10) == []  # all leased
    assert await b.heartbeat_step("r1", 2, first[0].lease, NOW + 5, 10)  # until NOW + 15
    again = await b.claim_step_tasks(NOW + 12, 10, 10)  # 1 and 3 expired at NOW + 11
    assert sorted(t.seq for t in again) == [1, 3]
    old3 = first[1]
    new3 = next(t for t in again if t.seq == 3)
    assert new3.lease != old3.lease
    assert not await b.heartbeat_step("r1", 3, old3.lease, NOW + 12, 10)
    assert not await b.finish_step("r1", 3, old3.lease, ev.StepCompleted(3, "stale"), NOW + 12)
    assert not await b.retry_step("r1", 3, old3.lease, 2, NOW + 20)
    assert await b.finish_step("r1", 3, new3.lease, ev.StepCompleted(3, "ok"), NOW + 12)
    assert not await b.finish_step("r1", 3, new3.lease, ev.StepCompleted(3, "dup"), NOW + 12)
    new1 = next(t for t in again if t.seq == 1)
    assert await b.retry_step("r1", 1, new1.lease, 2, NOW + 30)
    assert await b.claim_step_tasks(NOW + 14, 10, 10) == []
    st = await b.state(NOW + 13)
    assert (st.ready_steps, st.leased_steps, st.next_due) == (0, 1, NOW + 15)
    assert await b.finish_step("r1", 2, first[0].lease, ev.StepFailed(2, ErrorInfo("E", "m")), NOW)
    st = await b.state(NOW + 13)
    assert (st.ready_steps, st.leased_steps, st.next_due) == (0, 0, NOW + 30)
    assert await b.claim_step_tasks(NOW + 29, 10, 10) == []
    [retried] = await b.claim_step_tasks(NOW + 30, 10, 10)
    assert (retried.seq, retried.attempt, retried.ready_at) == (1, 2, NOW + 30)
    claim = await b.claim_workflow_task(NOW + 30, 30)
    assert claim is not None
    assert [e.event for e in claim.inbox] == [
        ev.StepCompleted(3, "ok"),
        ev.StepFailed(2, ErrorInfo("E", "m")),
    ]


# -- eager dispatch --------------------------------------------------------------------------------

TOKEN = 7_000_000_001


def pre_leased(run_id: str, seq: int, expires: float, token: int = TOKEN) -> StepTask:
    return StepTask(run_id, seq, f"s{seq}", [seq], 1, NOW, token, expires)


def test_the_sqlite_backend_offers_eager_dispatch() -> None:
    b = SqliteBackend("sqlite://:memory:")
    assert b.supports_eager is True and isinstance(b, EagerBackend)


@pytest.mark.anyio
async def test_a_pre_leased_step_is_stored_leased_until_its_expiry(backend: SqliteBackend) -> None:
    b = backend
    await new_run(b, "r1")
    steps = (pre_leased("r1", 1, NOW + 10), StepTask("r1", 2, "s2", [2], 1, NOW))
    await claim_and_commit(b, "r1", steps=steps)
    [other] = await b.claim_step_tasks(NOW + 5, 10, 30)  # only the step not pre-leased
    assert other.seq == 2 and other.lease not in (0, TOKEN)
    st = await b.state(NOW + 5)
    assert (st.ready_steps, st.leased_steps, st.next_due) == (0, 2, NOW + 10)
    assert await b.heartbeat_step("r1", 1, TOKEN, NOW + 5, 10)  # now until NOW + 15
    assert await b.claim_step_tasks(NOW + 14, 10, 30) == []
    assert await b.finish_step("r1", 1, TOKEN, ev.StepCompleted(1, "ok"), NOW + 14)
    assert not await b.finish_step("r1", 1, TOKEN, ev.StepCompleted(1, "dup"), NOW + 14)
    claim = await b.claim_workflow_task(NOW + 14, 30)
    assert claim is not None and [e.event for e in claim.inbox] == [ev.StepCompleted(1, "ok")]


@pytest.mark.anyio
async def test_a_pre_leased_step_is_redelivered_once_its_lease_expires(
    backend: SqliteBackend,
) -> None:
    b = backend
    await new_run(b, "r1")
    await claim_and_commit(b, "r1", steps=(pre_leased("r1", 1, NOW + 10),))
    assert await b.claim_step_tasks(NOW + 9.9, 10, 30) == []
    [again] = await b.claim_step_tasks(NOW + 10, 10, 30)  # the committer is gone: redelivered
    assert (again.seq, again.attempt) == (1, 1) and again.lease not in (0, TOKEN)
    assert not await b.heartbeat_step("r1", 1, TOKEN, NOW + 11, 30)
    assert not await b.finish_step("r1", 1, TOKEN, ev.StepCompleted(1, "late"), NOW + 11)
    assert not await b.retry_step("r1", 1, TOKEN, 2, NOW + 20)
    assert await b.finish_step("r1", 1, again.lease, ev.StepCompleted(1, "ok"), NOW + 11)
    claim = await b.claim_workflow_task(NOW + 11, 30)
    assert claim is not None and [e.event for e in claim.inbox] == [ev.StepCompleted(1, "ok")]


@pytest.mark.anyio
async def test_a_pre_leased_step_retries_like_a_claimed_one(backend: SqliteBackend) -> None:
    b = backend
    await new_run(b, "r1")
    await claim_and_commit(b, "r1", steps=(pre_leased("r1", 1, NOW + 10),))
    assert await b.retry_step("r1", 1, TOKEN, 2, NOW + 20)  # released: no lease any more
    assert not await b.finish_step("r1", 1, TOKEN, ev.StepCompleted(1, "x"), NOW + 21)
    assert await b.claim_step_tasks(NOW + 19, 10, 30) == []
    [retried] = await b.claim_step_tasks(NOW + 20, 10, 30)
    assert (retried.attempt, retried.ready_at) == (2, NOW + 20)


@pytest.mark.anyio
async def test_finish_step_and_claim_claims_the_run_with_a_fencing_lease(
    backend: SqliteBackend,
) -> None:
    b = backend
    await new_run(b, "r1")
    first = await b.claim_workflow_task(NOW, 30)
    assert first is not None
    events = (started("r1"), ev.StepScheduled(1, "s1", [1]))
    commit = Commit(
        "r1",
        first.lease,
        NOW,
        events=events,
        inbox_upto=first.inbox[-1].id,
        status=RunStatus.RUNNING,
        steps=(pre_leased("r1", 1, NOW + 30),),
    )
    assert await b.apply_commit(commit)
    outcome = ev.StepCompleted(1, {"v": [1, 2]})
    ok, claim = await b.finish_step_and_claim("r1", 1, TOKEN, outcome, NOW + 1, 10)
    assert ok and claim is not None
    assert claim.run.run_id == "r1" and claim.run.status is RunStatus.RUNNING
    assert claim.lease > first.lease and claim.history_length == 2
    assert [e.event for e in claim.inbox] == [outcome]
    assert await b.claim_workflow_task(NOW + 1, 30) is None  # leased until NOW + 11
    assert await b.finish_step_and_claim("r1", 1, TOKEN, outcome, NOW + 1, 10) == (False, None)
    assert await b.renew_workflow_lease("r1", claim.lease, NOW + 5, 10)  # until NOW + 15
    assert await b.claim_workflow_task(NOW + 14, 30) is None
    again = await b.claim_workflow_task(NOW + 15, 30)  # expired: claimed again, fenced
    assert again is not None and again.lease > claim.lease
    assert [e.event for e in again.inbox] == [outcome]
    stale = Commit("r1", claim.lease, NOW + 16, inbox_upto=claim.inbox[-1].id)
    assert not await b.apply_commit(stale)
    assert not await b.renew_workflow_lease("r1", claim.lease, NOW + 16, 10)
    done = Commit(
        "r1",
        again.lease,
        NOW + 16,
        events=(ev.StepCompleted(1, "x"),),
        inbox_upto=again.inbox[-1].id,
        status=RunStatus.COMPLETED,
        result=1,
    )
    assert await b.apply_commit(done)
    assert await b.read_history("r1") == [*events, ev.StepCompleted(1, "x")]


@pytest.mark.anyio
async def test_finish_step_and_claim_refuses_a_stale_lease_and_changes_nothing(
    backend: SqliteBackend,
) -> None:
    b = backend
    await new_run(b, "r1")
    await claim_and_commit(b, "r1", steps=(pre_leased("r1", 1, NOW + 10),))
    [new] = await b.claim_step_tasks(NOW + 10, 10, 30)  # redelivered to someone else
    stale = await b.finish_step_and_claim("r1", 1, TOKEN, ev.StepCompleted(1, "old"), NOW + 11, 30)
    assert stale == (False, None)
    assert await b.claim_workflow_task(NOW + 11, 30) is None  # nothing delivered or queued
    st = await b.state(NOW + 11)
    assert (st.leased_steps, st.ready_workflow_tasks, st.leased_workflow_tasks) == (1, 0, 0)
    ok, claim = await b.finish_step_and_claim("r1", 1, new.lease, ev.StepCompleted(1), NOW + 12, 30)
    assert ok and claim is not None and claim.run.run_id == "r1"
    assert await b.finish_step_and_claim("r9", 1, 1, ev.StepCompleted(1), NOW, 30) == (False, None)


@pytest.mark.anyio
async def test_finish_step_and_claim_leaves_a_run_leased_by_another_alone(
    backend: SqliteBackend,
) -> None:
    b = backend
    await new_run(b, "r1")
    steps = (pre_leased("r1", 1, NOW + 30), pre_leased("r1", 2, NOW + 30, TOKEN + 1))
    await claim_and_commit(b, "r1", steps=steps)
    ok, holder = await b.finish_step_and_claim("r1", 1, TOKEN, ev.StepCompleted(1), NOW + 1, 30)
    assert ok and holder is not None
    two = ev.StepCompleted(2, "two")
    assert await b.finish_step_and_claim("r1", 2, TOKEN + 1, two, NOW + 2, 30) == (True, None)
    assert await b.claim_workflow_task(NOW + 2, 30) is None  # still the holder's
    upto = holder.inbox[-1].id
    assert await b.apply_commit(Commit("r1", holder.lease, NOW + 3, inbox_upto=upto))
    claim = await b.claim_workflow_task(NOW + 3, 30)  # requeued with the outcome it missed
    assert claim is not None and [e.event for e in claim.inbox] == [two]


@pytest.mark.anyio
async def test_finish_step_and_claim_does_not_claim_a_task_queued_for_later(
    backend: SqliteBackend,
) -> None:
    b = backend
    await new_run(b, "r1")
    await claim_and_commit(b, "r1", steps=(pre_leased("r1", 1, NOW + 30),))
    assert await b.requeue_workflow_task("r1", NOW + 50)  # queued, ready at NOW + 50
    assert await b.finish_step_and_claim("r1", 1, TOKEN, ev.StepCompleted(1), NOW + 1, 30) == (
        True,
        None,
    )
    assert await b.claim_workflow_task(NOW + 49, 30) is None
    claim = await b.claim_workflow_task(NOW + 50, 30)
    assert claim is not None and [e.event for e in claim.inbox] == [ev.StepCompleted(1)]


@pytest.mark.anyio
async def test_finish_step_and_claim_refuses_a_step_dropped_by_closing(
    backend: SqliteBackend,
) -> None:
    b = backend
    await new_run(b, "r1")
    await claim_and_commit(b, "r1", steps=(pre_leased("r1", 1, NOW + 30),))
    terminate = Commit("r1", None, NOW + 1, status=RunStatus.TERMINATED)
    assert await b.apply_commit(terminate)  # closing drops the step with the run's other work
    assert await b.finish_step_and_claim("r1", 1, TOKEN, ev.StepCompleted(1), NOW + 2, 30) == (
        False,
        None,
    )
    assert await b.claim_workflow_task(NOW + 2, 30) is None


@pytest.mark.anyio
async def test_eager_calls_keep_the_claim_hints_coherent(file_backend: SqliteBackend) -> None:
    """Claims answered locally after eager calls are only those that would find nothing."""
    b = file_backend
    store = b._store
    looks: list[str] = []
    original = store.claim

    def spy(fn: Any, *args: Any) -> Any:
        looks.append(fn.__name__)
        return original(fn, *args)

    store.claim = spy  # type: ignore[method-assign]
    await new_run(b, "r1")
    await claim_and_commit(b, "r1", steps=(pre_leased("r1", 1, NOW + 30),))
    looks.clear()
    assert await b.claim_step_tasks(NOW + 1, 10, 30) == []  # the commit read the step queue
    assert await b.claim_workflow_task(NOW + 1, 30) is None  # ...and the workflow queue
    assert looks == []
    ok, claim = await b.finish_step_and_claim("r1", 1, TOKEN, ev.StepCompleted(1), NOW + 2, 30)
    assert ok and claim is not None
    assert await b.claim_workflow_task(NOW + 3, 30) is None  # ours until NOW + 32: not asked
    assert looks == []
    again = await b.claim_workflow_task(NOW + 32, 30)  # the lease expired: asked, redelivered
    assert again is not None and again.lease > claim.lease and looks == ["claim_workflow_task"]
    assert await b.apply_commit(
        Commit("r1", again.lease, NOW + 33, steps=(pre_leased("r1", 2, NOW + 40),))
    )
    assert await b.claim_step_tasks(NOW + 39, 10, 30) == []
    [redelivered] = await b.claim_step_tasks(NOW + 40, 10, 30)  # known due at NOW + 40: asked
    assert redelivered.seq == 2 and looks[-1] == "claim_step_tasks"


@pytest.mark.anyio
async def test_a_commit_of_self_leased_steps_wakes_no_waiter(file_backend: SqliteBackend) -> None:
    """Only work someone else could take wakes ``wait``: not steps the committer leased."""
    b = file_backend
    await new_run(b, "r1")
    claim = await b.claim_workflow_task(NOW, 30)
    assert claim is not None
    before = b._changes
    commit = Commit(
        "r1",
        claim.lease,
        NOW,
        inbox_upto=claim.inbox[-1].id,
        steps=(pre_leased("r1", 1, NOW + 30),),
    )
    assert await b.apply_commit(commit)
    assert b._changes == before
    ok, mine = await b.finish_step_and_claim("r1", 1, TOKEN, ev.StepCompleted(1), NOW, 30)
    assert ok and mine is not None and b._changes == before
    commit = Commit(
        "r1", mine.lease, NOW, inbox_upto=mine.inbox[-1].id, steps=(StepTask("r1", 2, "s", []),)
    )
    assert await b.apply_commit(commit)  # a step anyone may claim: wake
    assert b._changes == before + 1


@pytest.mark.anyio
async def test_timers_fire_in_order_once_and_can_be_cancelled(backend: SqliteBackend) -> None:
    b = backend
    await new_run(b, "r1")
    timers = (Timer("r1", 1, NOW + 30), Timer("r1", 2, NOW + 10), Timer("r1", 3, NOW + 10))
    await claim_and_commit(b, "r1", timers=timers)
    await b.append_inbox("r1", [ev.SignalReceived("x")], NOW)
    await claim_and_commit(b, "r1", timers=(Timer("r1", 4, NOW + 20),), cancel_timers=(1,))
    st = await b.state(NOW)
    assert (st.timers, st.next_due) == (3, NOW + 10)
    assert await b.fire_due_timers(NOW + 9) == 0
    assert await b.fire_due_timers(NOW + 25, limit=2) == 2
    assert await b.fire_due_timers(NOW + 25) == 1
    assert await b.fire_due_timers(NOW + 1000) == 0
    claim = await b.claim_workflow_task(NOW + 25, 30)
    assert claim is not None
    assert [e.event for e in claim.inbox] == [ev.TimerFired(2), ev.TimerFired(3), ev.TimerFired(4)]


@pytest.mark.anyio
async def test_state_counts_and_next_due(backend: SqliteBackend) -> None:
    b = backend
    st = await b.state(NOW)
    assert st == type(st)(0, 0, 0, 0, 0, None)
    await new_run(b, "a")
    await new_run(b, "b", now=NOW + 50)
    assert await b.claim_workflow_task(NOW, 20) is not None
    st = await b.state(NOW)
    assert (st.ready_workflow_tasks, st.leased_workflow_tasks, st.next_due) == (0, 1, NOW + 20)
    st = await b.state(NOW + 30)  # a's lease expired: ready again
    assert (st.ready_workflow_tasks, st.leased_workflow_tasks, st.next_due) == (1, 0, NOW + 50)


@pytest.mark.anyio
async def test_blocked_run_requeue(backend: SqliteBackend) -> None:
    b = backend
    await new_run(b, "r1")
    claim = await b.claim_workflow_task(NOW, 30)
    assert claim is not None
    block = Commit(
        "r1", claim.lease, NOW, status=RunStatus.BLOCKED, block_reason="why", requeue=False
    )
    assert await b.apply_commit(block)
    rec = await b.get_run("r1")
    assert rec is not None and rec.status is RunStatus.BLOCKED and rec.block_reason == "why"
    assert await b.claim_workflow_task(NOW, 30) is None
    assert [r.run_id for r in await b.list_runs(status=RunStatus.BLOCKED)] == ["r1"]
    assert await b.requeue_workflow_task("r1", NOW + 1)
    claim = await b.claim_workflow_task(NOW + 1, 30)
    assert claim is not None and [e.event for e in claim.inbox] == [started("r1")]
    assert await b.apply_commit(Commit("r1", claim.lease, NOW + 1, status=RunStatus.RUNNING))
    rec = await b.get_run("r1")
    assert rec is not None and rec.block_reason is None and rec.status is RunStatus.RUNNING


# -- threads, waiting, several backend objects ---------------------------------------------------


def _spy_threads(store: Store, name: str) -> set[int]:
    """The threads that ran ``store.<name>`` from now on."""
    threads: set[int] = set()
    original = getattr(store, name)

    def spy(*args: Any) -> Any:
        threads.add(threading.get_ident())
        return original(*args)

    setattr(store, name, spy)
    if name in ("write", "claim"):
        store._groupable = (store.write, store.claim)
    return threads


@pytest.mark.anyio
async def test_with_inline_off_sqlite_work_runs_off_the_event_loop_thread(db_path: Path) -> None:
    b = SqliteBackend(url_of(db_path) + "?inline=off")
    threads = _spy_threads(b._store, "write")
    try:
        await new_run(b, "r1")
        assert await b.claim_workflow_task(NOW, 30) is not None
    finally:
        await b.close()
    assert len(threads) == 1 and threading.get_ident() not in threads


@pytest.mark.anyio
async def test_short_calls_run_inline_and_scans_on_the_thread(file_backend: SqliteBackend) -> None:
    writes = _spy_threads(file_backend._store, "write")
    scans = _spy_threads(file_backend._store, "state")
    await new_run(file_backend, "r1")
    await file_backend.state(NOW)
    assert writes == {threading.get_ident()}, "a short write went to the thread"
    assert scans and threading.get_ident() not in scans, "a scan ran on the event loop"


@pytest.mark.anyio
async def test_an_inline_call_never_waits_for_another_connections_lock(
    file_backend: SqliteBackend, db_path: Path
) -> None:
    await new_run(file_backend, "r0")
    other = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.sleep(0.01)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            threading.Timer(0.4, other.rollback).start()
            t0 = time.monotonic()
            await new_run(file_backend, "r1")  # refused inline; waits on the thread
            waited = time.monotonic() - t0
            tg.cancel_scope.cancel()
    finally:
        other.close()
    assert waited >= 0.3, "the write did not wait for the lock"
    assert ticks >= 10, f"the event loop was blocked while the write waited ({ticks} ticks)"
    assert (await file_backend.get_run("r1")) is not None


@pytest.mark.anyio
async def test_a_task_polling_inline_still_lets_others_run(file_backend: SqliteBackend) -> None:
    await new_run(file_backend, "r1")
    done = anyio.Event()

    async def other() -> None:
        await anyio.sleep(0)
        done.set()

    polls = 0
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(other)
            while not done.is_set():  # never awaits anything but the backend
                await file_backend.get_run("r1")
                polls += 1
    assert polls > 1


@pytest.mark.anyio
async def test_inline_backends_checkpoint_off_the_loop_and_the_db_thread(
    file_backend: SqliteBackend, db_path: Path
) -> None:
    from plait.backends.sqlite import CHECKPOINT_EVERY

    store = file_backend._store
    assert store._con().execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    checkpoints = _spy_threads(store, "checkpoint")
    for i in range(CHECKPOINT_EVERY + 5):
        await new_run(file_backend, f"r{i}")
    thread = file_backend._checkpointing
    assert thread is not None
    thread.join(10)
    assert len(checkpoints) == 1
    assert threading.get_ident() not in checkpoints
    assert file_backend._thread is not None
    assert file_backend._thread._thread.ident not in checkpoints
    wal = Path(f"{db_path}-wal")
    assert wal.exists()
    con = sqlite3.connect(db_path)  # everything was copied back: nothing left to checkpoint
    busy, pages, done = con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    con.close()
    assert busy == 0 and done == pages


@pytest.mark.anyio
async def test_wait_returns_on_local_change_and_polls_a_file(file_backend: SqliteBackend) -> None:
    t0 = time.monotonic()
    await file_backend.wait(10)  # a file may change under us: bounded by the poll interval
    assert time.monotonic() - t0 < POLL_SECONDS + 0.5
    memory = SqliteBackend("sqlite://:memory:")
    t0 = time.monotonic()
    await memory.wait(0.2)  # nothing else can write an in-memory database: no polling
    assert time.monotonic() - t0 >= 0.19
    async with anyio.create_task_group() as tg:
        tg.start_soon(memory.wait, 30)
        await anyio.sleep(0.01)
        t0 = time.monotonic()
        memory.notify()
    assert time.monotonic() - t0 < 5  # woken, not timed out
    await memory.close()


@pytest.mark.anyio
async def test_wait_does_not_miss_a_change_made_while_looking(file_backend: SqliteBackend) -> None:
    async def other_task_changes() -> None:
        await new_run(file_backend, "r1")

    await file_backend.get_run("r1")  # look...
    async with anyio.create_task_group() as tg:
        tg.start_soon(other_task_changes)
    t0 = time.monotonic()
    await file_backend.wait(10)  # ...the change landed before we waited: return at once
    assert time.monotonic() - t0 < 0.5


@pytest.mark.anyio
async def test_a_tasks_own_change_does_not_cut_its_wait_short() -> None:
    memory = SqliteBackend("sqlite://:memory:")
    await new_run(memory, "r1")  # notifies, from this very task
    memory.notify()
    t0 = time.monotonic()
    await memory.wait(0.1)  # as on the memory backend: nothing new for *this* task
    assert time.monotonic() - t0 >= 0.09
    await memory.close()


@pytest.mark.anyio
async def test_two_backend_objects_on_one_file_see_each_other_at_once(db_path: Path) -> None:
    a, b = SqliteBackend(url_of(db_path)), SqliteBackend(url_of(db_path))
    try:
        assert await a.claim_workflow_task(NOW, 30) is None
        assert await a.claim_step_tasks(NOW, 5, 30) == []
        assert await a.fire_due_timers(NOW) == 0
        await new_run(b, "r1")
        claim = await a.claim_workflow_task(NOW, 30)
        assert claim is not None
        timer = Timer("r1", 1, NOW)
        assert await a.apply_commit(
            Commit("r1", claim.lease, NOW, steps=(StepTask("r1", 2, "s", []),), timers=(timer,))
        )
        assert await b.fire_due_timers(NOW) == 1
        assert len(await b.claim_step_tasks(NOW, 5, 30)) == 1
    finally:
        await a.close()
        await b.close()


@pytest.mark.anyio
async def test_claims_skip_the_database_only_when_nothing_can_be_found(
    file_backend: SqliteBackend,
) -> None:
    b = file_backend
    store = b._store
    looks: list[str] = []
    original = store.claim

    def spy(fn: Any, *args: Any) -> Any:
        looks.append(fn.__name__)
        return original(fn, *args)

    store.claim = spy  # type: ignore[method-assign]
    assert await b.claim_workflow_task(NOW, 30) is None
    assert await b.claim_workflow_task(NOW + 1, 30) is None  # known idle: not asked
    assert looks == ["claim_workflow_task"]
    await new_run(b, "r1", now=NOW + 5)  # a local write: ask again
    assert await b.claim_workflow_task(NOW + 1, 30) is None  # not ready before NOW + 5
    assert await b.claim_workflow_task(NOW + 4, 30) is None  # known: not asked
    claim = await b.claim_workflow_task(NOW + 5, 30)
    assert claim is not None
    assert looks == ["claim_workflow_task"] * 3
    assert await b.claim_workflow_task(NOW + 34, 30) is None  # leased until NOW + 35
    assert len(looks) == 3
    again = await b.claim_workflow_task(NOW + 35, 30)  # the lease expired: redelivered
    assert again is not None and again.lease > claim.lease


@pytest.mark.anyio
async def test_a_locked_database_raises_backend_error(db_path: Path) -> None:
    b = SqliteBackend(url_of(db_path, "busy_timeout=50"))
    await b.open()
    other = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(BackendError, match="locked"):
            await new_run(b, "r1")
        assert await b.get_run("r1") is None  # readers are not blocked in WAL mode
    finally:
        other.execute("ROLLBACK")
        other.close()
    await new_run(b, "r1")
    await b.close()


@pytest.mark.anyio
async def test_works_without_an_asyncio_loop_too(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under another event loop (trio) results come back through an anyio worker thread."""
    monkeypatch.setattr(schema, "_asyncio_loop", lambda: None)
    b = SqliteBackend(url_of(db_path))
    await new_run(b, "r1")
    claim = await b.claim_workflow_task(NOW, 30)
    assert claim is not None and claim.run.run_id == "r1"
    await b.close()


@pytest.mark.anyio
async def test_a_cancelled_caller_leaves_the_backend_usable(backend: SqliteBackend) -> None:
    with anyio.move_on_after(0):
        await new_run(backend, "r1")
    await new_run(backend, "r2")
    runs = {r.run_id for r in await backend.list_runs()}
    assert "r2" in runs


# -- transactions: groups, upgrades, RETURNING ---------------------------------------------------


def open_store(path: Path, query: str = "") -> Store:
    store = Store(schema.parse_url(url_of(path, query)))
    store.open()
    return store


def test_a_group_is_one_transaction_and_a_failing_job_rolls_back_alone(db_path: Path) -> None:
    store = open_store(db_path)
    try:
        assert store.write(store.create_run, record("r1"), (started("r1"),), NOW) == ("r1", True)
        claim, _ = store.claim(store.claim_workflow_task, NOW, 30)
        assert claim is not None
        # Fails half way: after appending its events, on a result that JSON cannot hold.
        bad = Commit(
            "r1",
            claim.lease,
            NOW,
            events=(ev.Activated(NOW),),
            status=RunStatus.COMPLETED,
            result=float("nan"),
        )
        statements: list[str] = []
        assert store.con is not None
        store.con.set_trace_callback(statements.append)
        write, take = store.write, store.claim
        outcomes = store.group(
            [
                (write, (store.create_run, record("r2"), (started("r2"),), NOW)),
                (write, (store.apply_commit, bad)),
                (write, (store.append_inbox, "r1", (ev.SignalReceived("x"),), NOW)),
                (take, (store.claim_workflow_task, NOW, 30)),
            ]
        )
        store.con.set_trace_callback(None)
        assert statements.count("BEGIN IMMEDIATE") == 1 and statements.count("COMMIT") == 1
        assert outcomes[0] == (("r2", True), None)
        assert outcomes[1][0] is None and isinstance(outcomes[1][1], ValueError)
        assert outcomes[2] == (True, None)
        other, _ = outcomes[3][0]
        assert other is not None and other.run.run_id == "r2"  # r1 is still leased
        assert store.read(store.read_history, "r1") == []  # the failed commit left nothing
        upto = claim.inbox[-1].id
        ok, _ = store.write(store.apply_commit, Commit("r1", claim.lease, NOW, inbox_upto=upto))
        assert ok  # the lease survived the failed commit
        again, _ = store.claim(store.claim_workflow_task, NOW, 30)
        assert again is not None and [e.event for e in again.inbox] == [ev.SignalReceived("x")]
        assert again.inbox[0].id > upto
    finally:
        store.close()


def test_a_group_that_cannot_begin_fails_every_job_and_applies_none(db_path: Path) -> None:
    store = open_store(db_path, "busy_timeout=50")
    other = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    try:
        jobs = [(store.write, (store.create_run, record(r), (), NOW)) for r in ("a", "b")]
        outcomes = store.group(jobs)
        assert [type(exc) for _, exc in outcomes] == [sqlite3.OperationalError] * 2
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert store.get_run("a") is None and store.get_run("b") is None
    store.close()


@pytest.mark.anyio
async def test_queued_writes_share_a_transaction_in_submission_order(db_path: Path) -> None:
    b = SqliteBackend(url_of(db_path))
    sizes: list[int] = []
    original = b._store.group

    def spy(jobs: Any) -> Any:
        sizes.append(len(jobs))
        return original(jobs)

    b._store.group = spy  # type: ignore[method-assign]
    await b.open()
    assert b._thread is not None
    gate = threading.Event()
    seen: dict[str, Any] = {}

    async def look(run_id: str) -> None:
        seen[run_id] = await b.get_run(run_id)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(b._thread.call, gate.wait)  # holds the thread while the rest queue
            await anyio.sleep(0.05)
            for run_id in ("a", "b"):
                tg.start_soon(new_run, b, run_id)
            tg.start_soon(look, "b")  # not groupable: ends the first group, runs after it
            for run_id in ("c", "d", "e"):
                tg.start_soon(new_run, b, run_id)
            await anyio.sleep(0.05)
            gate.set()
        assert sizes == [2, 3]
        assert seen["b"] is not None and seen["b"].run_id == "b"
        assert [r.run_id for r in await b.list_runs()] == ["a", "b", "c", "d", "e"]
    finally:
        await b.close()


def test_a_claim_whose_snapshot_went_stale_is_made_again_under_the_write_lock(
    db_path: Path,
) -> None:
    store, other = open_store(db_path), open_store(db_path)
    try:
        store.write(store.create_run, record("r1"), (started("r1"),), NOW)
        attempts: list[bool] = []

        def racing(now: float, lease_seconds: float) -> Any:
            assert store.con is not None
            attempts.append(store.con.in_transaction)
            if len(attempts) == 1:  # our snapshot is taken, then another connection writes
                store.con.execute("SELECT count(*) FROM plait_runs").fetchone()
                other.write(other.append_inbox, "r1", (ev.SignalReceived("x"),), NOW)
            return store.claim_workflow_task(now, lease_seconds)

        claim, _ = store.claim(racing, NOW, 30)
        assert len(attempts) == 2  # the upgrade was refused; the claim was made again
        assert claim is not None and claim.lease == 1
        assert [e.event for e in claim.inbox] == [started("r1"), ev.SignalReceived("x")]
    finally:
        store.close()
        other.close()


@pytest.mark.anyio
@pytest.mark.parametrize("returning", [True, False])
async def test_claims_with_and_without_update_returning(db_path: Path, returning: bool) -> None:
    """SQLite before 3.35 has no ``UPDATE ... RETURNING``: claims read the row back then."""
    b = SqliteBackend(url_of(db_path))
    b._store.returning = returning and schema.HAS_RETURNING
    try:
        await new_run(b, "r1")
        first = await b.claim_workflow_task(NOW, 30)
        assert first is not None and first.lease == 1 and first.history_length == 0
        commit = Commit(
            "r1",
            first.lease,
            NOW,
            events=(started("r1"),),
            inbox_upto=first.inbox[-1].id,
            status=RunStatus.RUNNING,
            steps=(pre_leased("r1", 1, NOW + 30),),
        )
        assert await b.apply_commit(commit)
        ok, claim = await b.finish_step_and_claim("r1", 1, TOKEN, ev.StepCompleted(1), NOW, 30)
        assert ok and claim is not None
        assert (claim.lease, claim.history_length, claim.run.status) == (2, 1, RunStatus.RUNNING)
        assert [e.event for e in claim.inbox] == [ev.StepCompleted(1)]
    finally:
        await b.close()


# -- several processes -----------------------------------------------------------------------


CLAIMER = """
import asyncio, json, os, sys, time
from plait.backends.sqlite import SqliteBackend

async def main(url, go, out):
    b = SqliteBackend(url)
    await b.open()
    while not os.path.exists(go):
        time.sleep(0.001)
    runs, steps = [], []
    while True:
        claim = await b.claim_workflow_task(1000.0, 1e6)
        tasks = await b.claim_step_tasks(1000.0, 3, 1e6)
        if claim is not None:
            runs.append([claim.run.run_id, claim.lease])
        steps.extend([t.run_id, t.seq, t.lease] for t in tasks)
        if claim is None and not tasks:
            break
    await b.close()
    with open(out, "w") as f:
        json.dump({"runs": runs, "steps": steps}, f)

asyncio.run(main(*sys.argv[1:]))
"""


def _spawn(code: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _finish(proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err.decode()[-3000:]


@pytest.mark.anyio
async def test_processes_sharing_a_file_never_claim_the_same_task(tmp_path: Path) -> None:
    url = url_of(tmp_path / "shared.db")
    b = SqliteBackend(url)
    n = 60
    for i in range(n):
        await new_run(b, f"r{i:03}")
    for i in range(n):  # give every run two steps, then queue its workflow task again
        steps = (StepTask(f"r{i:03}", 1, "s", []), StepTask(f"r{i:03}", 2, "s", []))
        await claim_and_commit(b, f"r{i:03}", steps=steps)
    for i in range(n):
        assert await b.append_inbox(f"r{i:03}", [ev.SignalReceived("again")], NOW)
    await b.close()
    go = tmp_path / "go"
    outs = [tmp_path / f"out{k}.json" for k in range(4)]
    procs = [_spawn(CLAIMER, url, str(go), str(out)) for out in outs]
    await anyio.sleep(1.0)  # let them start and open the file
    go.touch()
    for p in procs:
        await anyio.to_thread.run_sync(_finish, p)
    results = [json.loads(out.read_text()) for out in outs]
    runs = [r[0] for res in results for r in res["runs"]]
    steps = [(s[0], s[1]) for res in results for s in res["steps"]]
    leases = [s[2] for res in results for s in res["steps"]]
    assert sorted(runs) == [f"r{i:03}" for i in range(n)]  # each exactly once
    assert sorted(steps) == sorted((f"r{i:03}", seq) for i in range(n) for seq in (1, 2))
    assert len(set(leases)) == len(leases)


SECOND_PROCESS_WRITER = """
import asyncio, sys
from plait.backends.base import RunRecord
from plait.backends.sqlite import SqliteBackend
from plait.kernel import events as ev
from plait.kernel.status import RunStatus

async def main(url):
    b = SqliteBackend(url)
    rec = RunRecord(run_id="remote", workflow="wf", status=RunStatus.PENDING, created_at=1000.0)
    assert (await b.create_run(rec, (ev.CancelRequested("hi"),), 1000.0))[1]
    await b.close()

asyncio.run(main(sys.argv[1]))
"""


@pytest.mark.anyio
async def test_changes_of_another_process_are_seen_within_the_poll_interval(
    db_path: Path,
) -> None:
    b = SqliteBackend(url_of(db_path))
    try:
        assert await b.claim_workflow_task(NOW, 30) is None  # this process now believes idle
        await anyio.to_thread.run_sync(_finish, _spawn(SECOND_PROCESS_WRITER, url_of(db_path)))
        t0 = time.monotonic()
        claim = None
        while claim is None and time.monotonic() - t0 < 5:
            await b.wait(1.0)
            claim = await b.claim_workflow_task(NOW, 30)
        assert claim is not None and claim.run.run_id == "remote"
        assert time.monotonic() - t0 < POLL_SECONDS + 0.5
    finally:
        await b.close()


WORKER_PROCESS = """
import anyio, os, sys
import plait

LOG = sys.argv[2]

@plait.step(name="mp.work")
async def work(run: str, i: int) -> int:
    with open(LOG, "a") as f:
        f.write(f"{run}:{i}\\n")
    return i

@plait.workflow(name="mp.child")
async def child(n: int) -> int:
    return await work(plait.info().run_id, n)

@plait.workflow(name="mp.flow")
async def flow(n: int) -> int:
    a = await work(plait.info().run_id, 0)
    await plait.sleep(0.05)
    kids = await plait.all(*(plait.child(child, i) for i in range(n)))
    return a + sum(kids)

async def main(url, stop):
    async with plait.Engine(url) as engine:
        async with engine.worker(concurrency=8, poll_interval=0.05):
            while not os.path.exists(stop):
                await anyio.sleep(0.02)

anyio.run(main, sys.argv[1], sys.argv[3])
"""


@pytest.mark.anyio
async def test_two_worker_processes_share_one_file(tmp_path: Path) -> None:
    url = url_of(tmp_path / "mp.db")
    stop = tmp_path / "stop"
    logs = [tmp_path / "w1.log", tmp_path / "w2.log"]
    async with plait.Engine(url) as engine:
        handles = [await engine.start("mp.flow", 3) for _ in range(12)]
        procs = [_spawn(WORKER_PROCESS, url, str(log), str(stop)) for log in logs]
        try:
            with anyio.fail_after(90):
                results = [await h.result() for h in handles]
        finally:
            stop.touch()
            for p in procs:
                await anyio.to_thread.run_sync(_finish, p)
        assert results == [0 + 0 + 1 + 2] * 12
        runs = [r async for r in engine.list_runs()]
        assert len(runs) == 12 * 4 and all(r.status is RunStatus.COMPLETED for r in runs)
    lines = [line for log in logs if log.exists() for line in log.read_text().splitlines()]
    assert len(lines) == len(set(lines)) == 12 * 4  # no step ran twice (leases are long)


# -- end to end ----------------------------------------------------------------------------------


@plait.step(name="sqlite_e2e.fetch")
async def fetch(doc_id: str) -> str:
    return doc_id * 3


@plait.workflow(name="sqlite_e2e.process")
async def process(doc_id: str) -> dict[str, Any]:
    text = await fetch(doc_id)
    await plait.sleep(0.01)
    return {"doc": doc_id, "n": len(text)}


@plait.workflow(name="sqlite_e2e.batch")
async def batch(ids: list[str]) -> dict[str, Any]:
    results = await plait.all(*(plait.child(process, i, key=f"doc-{i}") for i in ids))
    return {"processed": len(results), "r": results}


@pytest.mark.anyio
async def test_engine_and_worker_end_to_end(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/x.db"
    ids = ["a", "bb", "ccc", "dddd"]
    async with plait.Engine(url) as engine:
        handle = await engine.start(batch, ids)
        async with engine.worker([batch, process], [fetch], poll_interval=0.05):
            with anyio.fail_after(30):
                result = await handle.result()
        assert result == {
            "processed": 4,
            "r": [{"doc": i, "n": 3 * len(i)} for i in ids],
        }
        children = [r async for r in engine.list_runs(parent=handle.run_id)]
        assert sorted(c.key or "" for c in children) == [f"doc-{i}" for i in ids]
        assert all(c.status is RunStatus.COMPLETED for c in children)
    async with plait.Engine(url) as engine:  # reopened: everything is still there
        history = await engine.history(handle.run_id)
        assert isinstance(history[0], ev.RunStarted) and isinstance(history[-1], ev.RunCompleted)


def test_plait_run_on_sqlite(tmp_path: Path) -> None:
    result = plait.run(
        batch,
        ["x", "yy"],
        backend=f"sqlite:///{tmp_path}/run.db",
        timeout=30,
        workflows=[batch, process],
        steps=[fetch],
    )
    assert result["processed"] == 2


@plait.step(name="sqlite_diff.double", retry=plait.RetryPolicy(max_attempts=3, initial_interval=2))
async def double(x: int) -> int:
    if plait.step_info().attempt == 1 and x % 2 == 1:
        raise RuntimeError("flaky")
    return 2 * x


@plait.workflow(name="sqlite_diff.child")
async def diff_child(i: int) -> int:
    value = await double(i)
    await plait.sleep(1 + i)
    return value


@plait.workflow(name="sqlite_diff.waiter")
async def waiter() -> str:
    await plait.sleep(3600)
    return "late"


@plait.workflow(name="sqlite_diff.parent")
async def diff_parent(n: int) -> dict[str, Any]:
    values = await plait.all(*(plait.child(diff_child, i, key=f"c-{i}") for i in range(n)))
    holder = await plait.start_child(waiter, key="w")
    try:
        await plait.child(diff_child, 99, key="w")
        conflict = False
    except plait.KeyConflict:
        conflict = True
    payload = await plait.hook("tok")
    signal = await plait.signal("go")
    try:
        await plait.wait_for(plait.sleep(100), 5)
        timed_out = False
    except plait.Timeout:
        timed_out = True
    return {
        "values": values,
        "conflict": conflict,
        "payload": payload,
        "signal": signal,
        "timed_out": timed_out,
        "holder": holder.run_id,
    }


async def _scenario(url: str) -> tuple[Any, list[Any]]:
    workflows, steps = [diff_parent, diff_child, waiter], [double]
    async with TimeSkippingEnvironment(url, workflows, steps, seed="same") as env:
        handle = await env.start(diff_parent, 4)
        await env.sleep(30)
        await env.resume_hook("tok", {"x": 1})
        await env.signal(handle.run_id, "go", 7)
        result = await handle.result()
        cancelled = await env.start(waiter)
        await env.sleep(1)
        await env.cancel(cancelled.run_id)
        await env.sleep(1)
        terminated = await env.start(waiter)
        await env.sleep(1)
        await env.terminate(terminated.run_id, "bye")
        runs = []
        async for r in env.list_runs():
            runs.append((r, await env.history(r.run_id)))
        return result, runs


@pytest.mark.anyio
@pytest.mark.parametrize("where", ["file", "memory"])
async def test_same_histories_as_the_memory_backend(tmp_path: Path, where: str) -> None:
    url = url_of(tmp_path / "diff.db") if where == "file" else "sqlite://:memory:"
    expected = await _scenario("memory://")
    got = await _scenario(url)
    assert got[0] == expected[0]
    assert got[0]["conflict"] and got[0]["timed_out"] and got[0]["values"] == [0, 2, 4, 6]
    assert [r for r, _ in got[1]] == [r for r, _ in expected[1]]
    for (run, history), (_, want) in zip(got[1], expected[1], strict=True):
        assert history == want, run.run_id
    assert {r.status for r, _ in got[1]} >= {RunStatus.CANCELLED, RunStatus.TERMINATED}
