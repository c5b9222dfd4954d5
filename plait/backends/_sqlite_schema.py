"""The sqlite backend's plumbing: URL, connection setup, schema check, forward migrations, the
row layout (statements and codecs) and the one thread that owns the connection.

A database is plait's when its ``plait_meta`` table holds ``magic = 'plait'``. Anything else (a
file that is not SQLite, or an SQLite file holding other tables) is refused before a byte of it
is written: the check runs on a read-only connection first, and again inside the migration's
``BEGIN IMMEDIATE`` transaction (another process may be creating the schema at the same time).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote

import anyio
import attrs

from ..kernel.codec import event_from_dict, event_to_dict
from ..kernel.errors import ErrorInfo
from ..kernel.events import Event
from ..kernel.status import CLOSED_STATUSES, RunStatus
from .base import BackendError, RunRecord, SchemaError, StepTask

__all__ = [
    "SqliteOptions",
    "parse_url",
    "connect",
    "SCHEMA_VERSION",
    "MIGRATIONS",
    "MAGIC",
    "DbThread",
    "dump_event",
    "load_event",
    "encode_json",
    "record_params",
    "record_from_row",
    "CLOSED",
    "Hints",
    "earliest",
    "HINT_SCAN",
    "SCAN_WF",
    "SCAN_STEPS",
    "step_params",
    "LOAD_SEQ",
    "SAVE_SEQ",
    "STATE_WF",
    "STATE_STEPS",
    "STATE_TIMERS",
]

T = TypeVar("T")

MAGIC = "plait"

# (version, statements): applied in order, each version in the migration's one transaction.
# Never edit a released version; append a new one instead.
MIGRATIONS: list[tuple[int, tuple[str, ...]]] = [
    (
        1,
        (
            "CREATE TABLE plait_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
            "CREATE TABLE plait_counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)"
            " WITHOUT ROWID",
            # One global counter: enqueue order, inbox entry ids and step lease tokens.
            "INSERT INTO plait_counters (name, value) VALUES ('seq', 0)",
            # ``held_key`` is ``key`` while the run is open (NULL once closed): unique by
            # constraint, so key uniqueness among open runs holds across processes.
            """CREATE TABLE plait_runs (
                id INTEGER PRIMARY KEY,
                run_id TEXT NOT NULL UNIQUE,
                workflow TEXT NOT NULL,
                status TEXT NOT NULL,
                created_at REAL NOT NULL,
                key TEXT,
                parent_run_id TEXT,
                parent_seq INTEGER,
                parent_close TEXT NOT NULL,
                queue TEXT,
                result TEXT,
                error TEXT,
                closed_at REAL,
                continued_to TEXT,
                block_reason TEXT,
                held_key TEXT UNIQUE,
                fence INTEGER NOT NULL DEFAULT 0,
                lease_expires REAL,
                wf_ready_at REAL,
                wf_order INTEGER,
                history_len INTEGER NOT NULL DEFAULT 0
            )""",
            "CREATE INDEX plait_runs_wf_ready ON plait_runs (wf_ready_at, wf_order)"
            " WHERE wf_ready_at IS NOT NULL",
            "CREATE INDEX plait_runs_status ON plait_runs (status)",
            "CREATE INDEX plait_runs_workflow ON plait_runs (workflow)",
            "CREATE INDEX plait_runs_parent ON plait_runs (parent_run_id)"
            " WHERE parent_run_id IS NOT NULL",
            """CREATE TABLE plait_history (
                run_id TEXT NOT NULL,
                pos INTEGER NOT NULL,
                event TEXT NOT NULL,
                PRIMARY KEY (run_id, pos)
            ) WITHOUT ROWID""",
            """CREATE TABLE plait_inbox (
                run_id TEXT NOT NULL,
                id INTEGER NOT NULL,
                event TEXT NOT NULL,
                PRIMARY KEY (run_id, id)
            ) WITHOUT ROWID""",
            """CREATE TABLE plait_steps (
                run_id TEXT NOT NULL,
                seq INTEGER NOT NULL,
                name TEXT NOT NULL,
                args TEXT NOT NULL,
                attempt INTEGER NOT NULL,
                ready_at REAL NOT NULL,
                lease INTEGER NOT NULL,
                lease_expires REAL,
                ord INTEGER NOT NULL,
                PRIMARY KEY (run_id, seq)
            ) WITHOUT ROWID""",
            "CREATE INDEX plait_steps_ready ON plait_steps (ready_at, ord)",
            """CREATE TABLE plait_timers (
                run_id TEXT NOT NULL,
                seq INTEGER NOT NULL,
                fire_at REAL NOT NULL,
                ord INTEGER NOT NULL,
                PRIMARY KEY (run_id, seq)
            ) WITHOUT ROWID""",
            "CREATE INDEX plait_timers_due ON plait_timers (fire_at, ord)",
            """CREATE TABLE plait_hooks (
                token TEXT PRIMARY KEY,
                run_id TEXT NOT NULL,
                seq INTEGER NOT NULL
            ) WITHOUT ROWID""",
            "CREATE INDEX plait_hooks_run ON plait_hooks (run_id)",
        ),
    ),
]

SCHEMA_VERSION = MIGRATIONS[-1][0]

# Smaller than SQLite's 4096: every write transaction dirties one page of each of several small
# hot tables and indexes (run, inbox, steps, history, queue indexes, counter), and the WAL writes
# and checkpoints each whole page; 2048 makes a step's two transactions ~15% cheaper, also with
# events of a few KB (which then spill to overflow pages either way).
PAGE_SIZE = 2048

_SYNC = {"off": "OFF", "normal": "NORMAL", "full": "FULL", "extra": "EXTRA"}
_MEMORY = ("", ":memory:", "/:memory:")


@attrs.frozen
class SqliteOptions:
    """What a ``sqlite://`` URL asks for. ``path`` is None for an in-memory database."""

    path: str | None
    synchronous: str = "NORMAL"
    busy_timeout_ms: int = 5000
    inline: bool = True

    @property
    def runs_inline(self) -> bool:
        """Whether short calls may run on the event loop's thread: asked for, and no commit
        waits for the disk (``synchronous=full`` syncs every commit)."""
        return self.inline and self.synchronous != "FULL"


_SWITCH = {"on": True, "off": False, "1": True, "0": False, "true": True, "false": False}


def parse_url(url: str) -> SqliteOptions:
    """``sqlite:///rel.db``, ``sqlite:////abs.db``, ``sqlite://:memory:`` (or ``sqlite://``),
    with ``?synchronous=normal|full``, ``?busy_timeout=<ms>`` and ``?inline=on|off``."""
    scheme, sep, rest = url.partition("://")
    if scheme.lower() != "sqlite" or not sep:
        raise BackendError(f"not a sqlite URL: {url!r}")
    rest, _, query = rest.partition("?")
    options: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)):
        options[name.lower()] = value
    sync = options.pop("synchronous", "normal").lower()
    if sync not in _SYNC:
        raise BackendError(
            f"sqlite URL {url!r}: synchronous={sync!r} is not one of {', '.join(_SYNC)}"
        )
    raw_timeout = options.pop("busy_timeout", "5000")
    try:
        timeout = int(raw_timeout)
        if timeout < 0:
            raise ValueError
    except ValueError:
        raise BackendError(
            f"sqlite URL {url!r}: busy_timeout={raw_timeout!r} is not a number of milliseconds"
        ) from None
    raw_inline = options.pop("inline", "on").lower()
    if raw_inline not in _SWITCH:
        raise BackendError(f"sqlite URL {url!r}: inline={raw_inline!r} is not on or off")
    if options:
        raise BackendError(
            f"sqlite URL {url!r}: unknown option(s) {', '.join(sorted(options))}; "
            "expected synchronous, busy_timeout, inline"
        )
    if rest in _MEMORY:
        path = None
    elif rest.startswith("/"):
        path = unquote(rest[1:])
        if not path:
            raise BackendError(f"sqlite URL {url!r} has no path; expected sqlite:///file.db")
    else:
        raise BackendError(
            f"sqlite URL {url!r} names a host; expected sqlite:///relative.db, "
            "sqlite:////absolute/path.db or sqlite://:memory:"
        )
    return SqliteOptions(path, _SYNC[sync], timeout, _SWITCH[raw_inline])


# -- checking ----------------------------------------------------------------------------------


def _tables(con: sqlite3.Connection) -> set[str]:
    rows = con.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {r[0] for r in rows if not r[0].startswith("sqlite_")}


def _stored_version(con: sqlite3.Connection, where: str) -> int:
    """The schema version of a plait store (0 if empty); ``SchemaError`` if not plait's."""
    try:
        tables = _tables(con)
    except sqlite3.DatabaseError as exc:
        raise SchemaError(f"{where} is not a plait database: {exc}") from None
    if "plait_meta" not in tables:
        if tables:
            names = ", ".join(sorted(tables)[:5])
            raise SchemaError(
                f"{where} is not a plait database: it holds other tables ({names}); "
                "refusing to touch it"
            )
        return 0
    meta = dict(con.execute("SELECT key, value FROM plait_meta").fetchall())
    if meta.get("magic") != MAGIC:
        raise SchemaError(f"{where} is not a plait database: plait_meta has no plait marker")
    try:
        version = int(meta.get("schema_version", ""))
    except ValueError:
        raise SchemaError(f"{where}: unreadable plait schema version") from None
    if version > SCHEMA_VERSION:
        raise SchemaError(
            f"{where} was written by a newer plait (schema {version} > {SCHEMA_VERSION}); "
            "upgrade plait to open it"
        )
    return version


def _precheck(path: Path) -> None:
    """Refuse a foreign or newer file through a read-only connection (nothing is written)."""
    if path.is_dir():
        raise BackendError(f"{path} is a directory, not a sqlite database file")
    if not path.exists() or path.stat().st_size == 0:
        return
    # Without a -wal file every committed byte is in the main file: read it as immutable, which
    # creates no -wal/-shm side files either. With one, a read-only connection reads it too.
    wal = path.with_name(path.name + "-wal").exists()
    mode = "mode=ro" if wal else "immutable=1"
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?{mode}", uri=True)
    except sqlite3.Error as exc:
        raise BackendError(f"cannot open {path}: {exc}") from None
    try:
        _stored_version(con, str(path))
    except sqlite3.Error as exc:
        raise SchemaError(f"{path} is not a plait database: {exc}") from None
    finally:
        con.close()


def _migrate(con: sqlite3.Connection, where: str) -> None:
    con.execute("BEGIN IMMEDIATE")
    try:
        version = start = _stored_version(con, where)
        for target, statements in MIGRATIONS:
            if target <= version:
                continue
            for sql in statements:
                con.execute(sql)
            version = target
        if version != start:
            con.execute(
                "INSERT INTO plait_meta (key, value) VALUES ('magic', ?), ('schema_version', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (MAGIC, str(version)),
            )
        con.execute("COMMIT")
    except BaseException:
        if con.in_transaction:
            con.execute("ROLLBACK")
        raise


def connect(options: SqliteOptions) -> sqlite3.Connection:
    """Open (creating the file and its directory if missing), check, migrate, set pragmas."""
    if options.path is None:
        target, where = ":memory:", "sqlite://:memory:"
    else:
        path = Path(options.path)
        where = str(path)
        if not path.parent.exists():
            try:
                os.makedirs(path.parent, exist_ok=True)
            except OSError as exc:
                raise BackendError(f"cannot create directory {path.parent}: {exc}") from None
        _precheck(path)
        target = str(path)
    try:
        con = sqlite3.connect(
            target,
            timeout=options.busy_timeout_ms / 1000,
            isolation_level=None,
            check_same_thread=False,
            cached_statements=512,
        )
    except sqlite3.Error as exc:
        raise BackendError(f"cannot open {where}: {exc}") from None
    try:
        con.execute(f"PRAGMA busy_timeout = {options.busy_timeout_ms}")
        con.execute(f"PRAGMA page_size = {PAGE_SIZE}")  # only a new database takes it
        _migrate(con, where)
        if options.path is not None:
            mode = con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise BackendError(f"{where}: cannot switch to WAL mode (got {mode})")
        con.execute(f"PRAGMA synchronous = {options.synchronous}")
        if options.path is not None and options.runs_inline:
            # Checkpoints (disk syncs) run on the backend's thread, never inline in a commit.
            con.execute("PRAGMA wal_autocheckpoint = 0")
    except sqlite3.Error as exc:
        con.close()
        raise BackendError(f"cannot set up {where}: {exc}") from None
    except BaseException:
        con.close()
        raise
    return con


# -- row layout: statements and codecs shared by the store ---------------------------------

HINT_SCAN = 32  # a reading scans at most this many queued rows, else it says "unknown"

CLOSED = frozenset(s.value for s in CLOSED_STATUSES)
CLOSED_SQL = "(" + ", ".join(f"'{s}'" for s in sorted(CLOSED)) + ")"
encode_json = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode

RUN_COLS = (
    "run_id, workflow, status, created_at, key, parent_run_id, parent_seq, parent_close, "
    "queue, result, error, closed_at, continued_to, block_reason"
)
INSERT_RUN = (
    f"INSERT INTO plait_runs ({RUN_COLS}, held_key) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
LOAD_SEQ = "SELECT value FROM plait_counters WHERE name = 'seq'"
SAVE_SEQ = "UPDATE plait_counters SET value = ? WHERE name = 'seq'"
INSERT_INBOX = "INSERT INTO plait_inbox (run_id, id, event) VALUES (?, ?, ?)"
DELIVER = (
    "INSERT INTO plait_inbox (run_id, id, event) SELECT ?, ?, ? WHERE EXISTS "
    f"(SELECT 1 FROM plait_runs WHERE run_id = ? AND status NOT IN {CLOSED_SQL})"
)
QUEUE = (
    "UPDATE plait_runs SET wf_ready_at = ?, wf_order = ? WHERE run_id = ? AND wf_ready_at IS NULL"
)
NEXT_WF = (
    "SELECT id FROM plait_runs WHERE wf_ready_at IS NOT NULL AND wf_ready_at <= ? "
    "AND (lease_expires IS NULL OR lease_expires <= ?) ORDER BY wf_ready_at, wf_order LIMIT 2"
)
NEXT_STEPS = (
    "SELECT run_id, seq, name, args, attempt, ready_at FROM plait_steps WHERE ready_at <= ? "
    "AND (lease_expires IS NULL OR lease_expires <= ?) ORDER BY ready_at, ord LIMIT ?"
)
COMMIT_RUN = (
    "SELECT id, status, fence, lease_expires, history_len, "
    "EXISTS (SELECT 1 FROM plait_inbox WHERE run_id = ?1 AND id > ?2), "
    "(SELECT value FROM plait_counters WHERE name = 'seq') "
    "FROM plait_runs WHERE run_id = ?1"
)
_RECORD = (
    "result = coalesce(?, result), error = coalesce(?, error), "
    "continued_to = coalesce(?, continued_to), block_reason = ?, fence = ?, history_len = ?, "
)
# A closing commit writes its run's row first: closed, key released, lease and task dropped.
CLOSE_RUN = (
    f"UPDATE plait_runs SET status = ?, {_RECORD}closed_at = ?, held_key = NULL, "
    "lease_expires = NULL, wf_ready_at = NULL, wf_order = NULL WHERE id = ?"
)
# Any other commit writes it last: its fields, the lease released, the task queued or not.
RELEASE_RUN_SAME_STATUS = (
    f"UPDATE plait_runs SET {_RECORD}lease_expires = NULL, wf_ready_at = ?, wf_order = ? "
    "WHERE id = ?"
)
RELEASE_RUN = RELEASE_RUN_SAME_STATUS.replace("SET ", "SET status = ?, ", 1)
CLAIM_WF = "UPDATE plait_runs SET fence = fence + 1, lease_expires = ? WHERE id = ?"
# Claim one run's workflow task, queueing it first if it is not (finish_step_and_claim).
CLAIM_RUN = (
    "UPDATE plait_runs SET fence = fence + 1, lease_expires = ?, "
    "wf_ready_at = coalesce(wf_ready_at, ?), wf_order = coalesce(wf_order, ?) "
    "WHERE run_id = ? AND coalesce(wf_ready_at, ?) <= ? "
    "AND (lease_expires IS NULL OR lease_expires <= ?)"
)
HAS_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)
UPSERT_STEP = (
    "INSERT OR REPLACE INTO plait_steps "
    "(run_id, seq, name, args, attempt, ready_at, lease, lease_expires, ord) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
UPSERT_TIMER = "INSERT OR REPLACE INTO plait_timers (run_id, seq, fire_at, ord) VALUES (?, ?, ?, ?)"

# Counts and earliest future due time, as MemoryBackend.state computes them.
_LIVE = "(lease_expires IS NOT NULL AND lease_expires > :now)"
STATE_WF = (
    f"SELECT total({_LIVE}), total(NOT {_LIVE} AND wf_ready_at <= :now), "
    f"min(CASE WHEN {_LIVE} THEN lease_expires WHEN wf_ready_at > :now THEN wf_ready_at END) "
    "FROM plait_runs WHERE wf_ready_at IS NOT NULL"
)
STATE_STEPS = (
    f"SELECT total({_LIVE}), total(NOT {_LIVE} AND ready_at <= :now), "
    f"min(CASE WHEN {_LIVE} THEN lease_expires WHEN ready_at > :now THEN ready_at END) "
    "FROM plait_steps"
)
STATE_TIMERS = "SELECT count(*), min(CASE WHEN fire_at > :now THEN fire_at END) FROM plait_timers"

# What a reading of a queue looks at (see ``earliest``).
SCAN_WF = (
    "SELECT wf_ready_at, lease_expires FROM plait_runs WHERE wf_ready_at IS NOT NULL "
    f"LIMIT {HINT_SCAN + 1}"
)
SCAN_STEPS = f"SELECT ready_at, lease_expires FROM plait_steps LIMIT {HINT_SCAN + 1}"


def dump_event(event: Event) -> str:
    return encode_json(event_to_dict(event))


def load_event(text: str) -> Event:
    return event_from_dict(json.loads(text))


def record_params(r: RunRecord) -> tuple[Any, ...]:
    return (
        r.run_id,
        r.workflow,
        str(r.status),
        r.created_at,
        r.key,
        r.parent_run_id,
        r.parent_seq,
        r.parent_close,
        r.queue,
        None if r.result is None else encode_json(r.result),
        None if r.error is None else encode_json(attrs.asdict(r.error)),
        r.closed_at,
        r.continued_to,
        r.block_reason,
        r.key,
    )


def step_params(s: StepTask) -> tuple[Any, ...]:
    """The columns of ``UPSERT_STEP`` but ``ord``. A step with a lease token and an expiry
    arrives pre-leased (eager dispatch): it is stored leased, claimable once that expires."""
    expires = s.lease_expires if s.lease else None
    return (s.run_id, s.seq, s.name, encode_json(s.args), s.attempt, s.ready_at, s.lease, expires)


def record_from_row(row: Sequence[Any]) -> RunRecord:
    result, error = row[9], row[10]
    return RunRecord(
        run_id=row[0],
        workflow=row[1],
        status=RunStatus(row[2]),
        created_at=row[3],
        key=row[4],
        parent_run_id=row[5],
        parent_seq=row[6],
        parent_close=row[7],
        queue=row[8],
        result=None if result is None else json.loads(result),
        error=None if error is None else ErrorInfo(**json.loads(error)),
        closed_at=row[11],
        continued_to=row[12],
        block_reason=row[13],
    )


# -- the thread that owns the connection ------------------------------------------------------


class DbThread:
    """The one thread that runs a backend's sqlite calls, in submission order.

    With ``group`` (and its ``groupable`` test), jobs that are already queued when the thread
    takes one are handed to ``group`` together, up to ``MAX_GROUP`` of them, while they are
    groupable: the store runs them in one transaction (see ``Store.group``). Nothing is waited
    for to make a group; a lone job runs as it is.

    On asyncio the result comes back through ``call_soon_threadsafe`` (one hop each way); on
    other event loops an anyio worker thread waits for it.

    With ``inline``, a call made while the thread is idle runs on the caller's thread instead,
    through ``inline(fn, args)``, which must never wait (it returns ``INLINE_REFUSED`` when it
    would, e.g. on another process's lock); the call then goes to the thread as usual. The
    hop each way costs more than a short transaction, so a sequential workload gains most.
    """

    MAX_GROUP = 64

    def __init__(
        self,
        name: str,
        group: Callable[[list[tuple[Callable[..., Any], tuple[Any, ...]]]], list[Any]]
        | None = None,
        groupable: Callable[[Callable[..., Any]], bool] | None = None,
        inline: Callable[[Callable[..., Any], tuple[Any, ...]], Any] | None = None,
    ) -> None:
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._group = group
        self._groupable = groupable
        self._inline = inline
        self._lock = threading.Lock()  # held by whoever runs a job: the thread or a caller
        self._yielded = 0.0  # when an inline call last let other tasks run
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _take(self, first: Any) -> tuple[list[Any], Any]:
        """``first`` and the queued groupable jobs after it; and the job that ended the group
        (to run next), or ``_NOTHING``."""
        jobs = [first]
        while len(jobs) < self.MAX_GROUP:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is None or not self._groupable(job[0]):  # type: ignore[misc]
                return jobs, job
            if not job[2]():
                jobs.append(job)
        return jobs, _NOTHING

    def _main(self) -> None:
        carry: Any = _NOTHING
        while True:
            job = self._jobs.get() if carry is _NOTHING else carry
            carry = _NOTHING
            if job is None:
                return
            fn, args, skip, done = job
            if skip():
                continue
            # Callers hear of their results only after the lock is released: one that goes
            # on at once with another call finds the thread idle and may run it inline.
            with self._lock:
                jobs = [job]
                if self._group is not None and self._groupable is not None and self._groupable(fn):
                    jobs, carry = self._take(job)
                if len(jobs) > 1:
                    outcomes = self._group([(j[0], j[1]) for j in jobs])
                else:
                    try:
                        outcomes = [(fn(*args), None)]
                    except BaseException as exc:  # handed to the caller
                        outcomes = [(None, exc)]
            for j, (result, exc) in zip(jobs, outcomes, strict=True):
                j[3](result, exc)

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn`` for the thread without waiting for it (housekeeping)."""
        self._jobs.put((fn, args, lambda: False, lambda result, exc: None))

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._inline is not None and self._jobs.empty() and self._lock.acquire(False):
            try:
                result = self._inline(fn, args)
            finally:
                self._lock.release()
            if result is not INLINE_REFUSED:
                # A yield (where cancellation is delivered too) costs as much as a short
                # transaction: inline calls yield once per millisecond, so a task calling the
                # backend in a loop still lets the others run.
                now = time.monotonic()
                if now - self._yielded >= YIELD_EVERY:
                    self._yielded = now
                    await anyio.lowlevel.checkpoint()
                return result  # type: ignore[no-any-return]
        loop = _asyncio_loop()
        if loop is not None:
            fut: asyncio.Future[T] = loop.create_future()

            def done(result: Any, exc: BaseException | None) -> None:
                try:
                    loop.call_soon_threadsafe(_settle, fut, result, exc)
                except RuntimeError:  # the loop is closed: nobody waits any more
                    pass

            self._jobs.put((fn, args, fut.cancelled, done))
            return await fut
        cf: concurrent.futures.Future[T] = concurrent.futures.Future()

        def done_cf(result: Any, exc: BaseException | None) -> None:
            if exc is not None:
                cf.set_exception(exc)
            else:
                cf.set_result(result)

        self._jobs.put((fn, args, lambda: False, done_cf))
        return await anyio.to_thread.run_sync(cf.result)

    def stop(self) -> None:
        self._jobs.put(None)


_NOTHING = object()
YIELD_EVERY = 0.001
"""Seconds of inline calls after which the caller lets other tasks run (see ``DbThread``)."""
INLINE_REFUSED = object()
"""What a ``DbThread`` inline runner returns when the call must go to the thread."""


def _asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio loop, or None under another event loop (trio)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _settle(fut: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


# -- what a process knows of the queues ------------------------------------------------------

_INF = float("inf")


def earliest(rows: Sequence[tuple[float, float | None]], now: float) -> float:
    """The earliest time one of these queued (ready_at, lease_expires) rows can be claimed;
    -inf (unknown, so ask the database) when there are too many to look at."""
    if len(rows) > HINT_SCAN:
        return -_INF
    times = [expires if expires is not None and expires > now else ready for ready, expires in rows]
    return min(times, default=_INF)


class Hints:
    """What this process knows of each queue: no claim at ``now < until[q]`` finds work.

    A claim (and a commit, for workflow tasks) reads in its own transaction when the next one
    can succeed; every local write that may add work to a queue drops that queue's reading. So
    within this process a claim is skipped only when it would certainly find nothing. Writes of
    other processes are seen once a reading is ``max_age`` seconds old, the same bound as
    polling. Shared by the backend objects of one process that use the same file. (Real time
    only bounds staleness here; what is due is always decided with the runtime's ``now``.)
    """

    def __init__(self, max_age: float) -> None:
        self.max_age = max_age
        self.until = {"wf": -_INF, "steps": -_INF, "timers": -_INF}
        self.read_at = dict.fromkeys(self.until, 0.0)
        self.generation = 0

    def idle(self, queue: str, now: float) -> bool:
        return now < self.until[queue] and time.monotonic() - self.read_at[queue] < self.max_age

    def lower(self, queue: str, until: float) -> None:
        """Work may appear in ``queue`` at ``until`` (a lease a local write gave out expires
        then): keep no reading that promises otherwise."""
        if until < self.until[queue]:
            self.until[queue] = until

    def forget(self, queues: Sequence[str]) -> None:
        self.generation += 1
        for q in queues:
            self.until[q] = -_INF

    def settle(self, readings: dict[str, float], generation: int, read_at: float) -> None:
        """Keep the readings of an operation begun at ``generation`` (if no local write
        overlapped it); a reading of -inf means "there may be work now": forget the queue."""
        if generation == self.generation:
            for q, until in readings.items():
                if until != -_INF:
                    self.until[q] = until
                    self.read_at[q] = read_at
        unknown = [q for q, until in readings.items() if until == -_INF]
        if unknown:
            self.forget(unknown)
