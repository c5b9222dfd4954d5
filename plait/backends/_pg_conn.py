"""Connections of the postgres backend: opening (schema migration, LISTEN), the pool and the
connections kept between calls, running one statement with retries, and the LISTEN loop that
reconnects when the server goes away. ``PostgresBackend`` builds the protocol on top."""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import anyio
import attrs

from . import _pg_schema as schema_mod
from ._pg_client import Waker, import_psycopg
from .base import BackendError

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

__all__ = ["PgConnections", "quiet_close"]

log = logging.getLogger("plait.backends.postgres")

_RETRY_WINDOW = 30.0  # seconds a safe (idempotent or read-only) call keeps retrying
_DEADLOCK_RETRIES = 8
_HOLD_SECONDS = 60.0  # a kept connection goes back to the pool after this long


@attrs.define
class _Held:
    """A connection taken from the pool and kept between calls, with its cursor."""

    conn: Any
    cur: Any
    epoch: int
    since: float


class PgConnections:
    """Connection handling for ``PostgresBackend``; subclasses provide ``_statements()``,
    ``_forget()`` (drop what was learnt without asking) and ``_on_notify(payload)``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.options = schema_mod.parse_url(url)
        self._s = schema_mod.quote_ident(self.options.schema)
        self._origin = secrets.token_hex(6)
        self._waker = Waker()
        self._pool: AsyncConnectionPool | None = None
        self._psycopg: Any = None
        self._listener: Any = None
        self._listen_task: asyncio.Task[None] | None = None
        self._listening = False
        self._epoch = 0  # bumped whenever the LISTEN connection is (re)established or lost
        self._closing = False
        self._opened = False
        self._checking = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._held: list[_Held] = []
        self._slots = asyncio.Semaphore(self.options.pool_max)
        self._pool_epoch = 0
        self._sql: dict[str, str] = {}

    def _forget(self) -> None:
        raise NotImplementedError

    def _on_notify(self, payload: str) -> None:
        raise NotImplementedError

    # -- lifecycle -----------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, create or migrate the schema (under an advisory lock), start listening."""
        if self._opened:
            return
        psycopg, psycopg_pool = import_psycopg()
        self._psycopg = psycopg
        self._closing = False
        self._slots = asyncio.Semaphore(self.options.pool_max)  # bound to this event loop
        opts = self.options
        try:
            conn = await psycopg.AsyncConnection.connect(opts.conninfo, **self._listen_kwargs())
        except psycopg.Error as exc:
            raise schema_mod.connect_error(self.url, exc) from exc
        try:
            await schema_mod.migrate(conn, opts.schema)
            await self._subscribe(conn)
        except psycopg.Error as exc:
            await quiet_close(conn)
            raise BackendError(
                f"cannot create or open the plait schema {opts.schema!r} at "
                f"{schema_mod.redact(self.url)}: {exc}"
            ) from exc
        except BaseException:
            await quiet_close(conn)
            raise
        self._set_listener(conn)
        self._pool = psycopg_pool.AsyncConnectionPool(
            opts.conninfo,
            min_size=opts.pool_min,
            max_size=opts.pool_max,
            kwargs={"autocommit": True, **self._app_name()},
            open=False,
            name=f"plait-{opts.schema}",
        )
        try:
            await self._pool.open(wait=opts.pool_min > 0, timeout=30.0)
        except BaseException:
            await self._pool.close()
            self._pool = None
            await quiet_close(conn)
            raise
        self._listen_task = asyncio.get_running_loop().create_task(self._listen_loop(conn))
        self._opened = True

    async def close(self) -> None:
        """Stop listening (deregistering), return connections, close the pool. Idempotent."""
        if not self._opened:
            return
        self._opened = False
        self._closing = True
        self._listening = False
        # Deregister first (over a pooled connection: the LISTEN one is busy waiting), so
        # writers stop notifying us; then closing the LISTEN connection ends its loop.
        if self._pool is not None:
            try:
                with anyio.fail_after(5):
                    held = await self._acquire()  # kept connections count against the pool
                    try:
                        await held.cur.execute(
                            f"DELETE FROM {self._s}.listeners WHERE origin = %s", (self._origin,)
                        )
                    finally:
                        await self._release(held, False)
            except Exception:  # a stale row only costs others a NOTIFY; cleaned up later
                pass
        listener, self._listener = self._listener, None
        if listener is not None:
            await quiet_close(listener)
        task, self._listen_task = self._listen_task, None
        if task is not None:
            with anyio.move_on_after(2):
                await asyncio.shield(task)
            if not task.done():
                task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        held, self._held = self._held, []
        for h in held:
            await self._give_back(h)
        for t in list(self._tasks):
            t.cancel()
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()
        self._waker.notify_all()

    def _app_name(self) -> dict[str, Any]:
        return {} if "application_name" in self.options.conninfo else {"application_name": "plait"}

    def _listen_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"autocommit": True, **self._app_name()}
        if "keepalives" not in self.options.conninfo:
            # A dead peer (not a restart, which closes the socket) is noticed within ~25 s.
            kw.update(keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3)
        if "connect_timeout" not in self.options.conninfo:
            kw["connect_timeout"] = 10
        return kw

    # -- listening -----------------------------------------------------------------------------

    async def _subscribe(self, conn: Any) -> None:
        """LISTEN, then register this backend as a listener (so writers start notifying)."""
        await conn.execute(f"LISTEN {schema_mod.quote_ident(self.options.channel)}")
        await conn.execute(f"SELECT {self._s}.register_listener(%s)", (self._origin,))

    def _set_listener(self, conn: Any) -> None:
        self._listener = conn
        self._epoch += 1
        self._listening = True
        self._forget()

    def _lost_listener(self) -> None:
        self._listening = False
        self._epoch += 1
        self._forget()
        self._waker.notify_all()

    async def _listen_loop(self, conn: Any) -> None:
        psycopg = self._psycopg
        delay = 0.05
        while not self._closing:
            if conn is None:
                try:
                    conn = await psycopg.AsyncConnection.connect(
                        self.options.conninfo, **self._listen_kwargs()
                    )
                    await self._subscribe(conn)
                except psycopg.Error as exc:
                    if conn is not None:
                        await quiet_close(conn)
                        conn = None
                    log.debug("LISTEN connection failed (%s); retrying in %.2fs", exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
                    continue
                delay = 0.05
                self._set_listener(conn)
                log.info("LISTEN connection to PostgreSQL re-established")
                self._waker.notify_all()  # work may have been created while nobody listened
            try:
                async for n in conn.notifies():
                    self._on_notify(n.payload)
            except psycopg.Error as exc:
                if self._closing:
                    return
                log.warning("lost the LISTEN connection to PostgreSQL: %s", exc)
            await quiet_close(conn)
            conn = None
            self._listener = None
            self._lost_listener()
            self._refresh_pool()

    def _refresh_pool(self) -> None:
        """The server went away: replace every pooled connection (idle ones now, busy ones when
        returned) instead of letting later calls find them dead one by one."""
        pool = self._pool
        if pool is None:
            return
        self._pool_epoch += 1
        drain = getattr(pool, "drain", None)
        self._background(drain() if drain is not None else pool.check())

    def _check_pool(self) -> None:
        """A call lost its connection: test the idle ones (at most one check at a time)."""
        pool = self._pool
        if pool is None or self._checking:
            return
        self._pool_epoch += 1
        self._checking = True

        async def run() -> None:
            try:
                await pool.check()
            finally:
                self._checking = False

        self._background(run())

    def _background(self, coro: Any) -> None:
        async def run() -> None:
            try:
                await coro
            except Exception as exc:  # best effort
                log.debug("pool maintenance failed: %s", exc)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- calls ---------------------------------------------------------------------------------

    def _cut(self) -> Exception:
        return self._psycopg.OperationalError(
            "interrupted: the call carrying this one to the server was cancelled"
        )

    async def _run(  # type: ignore[no-untyped-def]
        self,
        name: str,
        params: Sequence[Any],
        *,
        safe: bool,
        rows: bool = False,
        dml: bool = False,
    ):
        """Run one statement; return its first row (or all rows, or the rowcount for DML).

        A transaction PostgreSQL rolled back (deadlock, serialization) is retried. A lost
        connection raises psycopg's ``OperationalError``, unless the call is ``safe`` (a read,
        a claim, or idempotent): then it is retried for up to ``_RETRY_WINDOW`` seconds.
        """
        if self._pool is None:
            raise BackendError(f"{self!r} is not open (use `async with Engine(...)`)")
        psycopg = self._psycopg
        sql = self._sql[name]
        deadline: float | None = None
        delay = 0.05
        deadlocks = 0
        while True:
            try:
                held = await self._acquire()
                ok = False
                try:
                    cur = held.cur
                    await cur.execute(sql, params)
                    if dml:
                        out = cur.rowcount
                    elif rows:
                        out = await cur.fetchall()
                    else:
                        out = await cur.fetchone()
                    ok = True
                    return out
                finally:
                    await self._release(held, ok)
            except psycopg.errors.TransactionRollback:
                deadlocks += 1
                if deadlocks > _DEADLOCK_RETRIES:
                    raise
                await asyncio.sleep(random.uniform(0.0, 0.01 * deadlocks))
            except psycopg.OperationalError as exc:
                self._check_pool()
                if not safe or self._closing:
                    raise
                now = time.monotonic()
                if deadline is None:
                    deadline = now + _RETRY_WINDOW
                if now >= deadline:
                    raise
                log.warning("%s failed (%s); retrying in %.2fs", name, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _acquire(self) -> _Held:
        """A connection for one statement: the last one released if still good, else one from
        the pool. Keeping a few between calls (and reusing their cursors) saves the pool's
        bookkeeping on every call; ``_release`` hands them back to the pool now and then so
        its lifetime and health rules still apply."""
        # At most pool_max calls hold a connection (in use or kept), so a call that finds no
        # kept connection always finds one in the pool (or room for the pool to open one).
        await self._slots.acquire()
        try:
            held = self._held
            while held:
                h = held.pop()
                if h.epoch == self._pool_epoch and not h.conn.closed:
                    return h
                await self._give_back(h)
            pool = self._pool
            if pool is None:
                raise BackendError(f"{self!r} is closed")
            conn = await pool.getconn()
            return _Held(conn, conn.cursor(), self._pool_epoch, time.monotonic())
        except BaseException:
            self._slots.release()
            raise

    async def _release(self, h: _Held, ok: bool) -> None:
        try:
            if (
                ok
                and not self._closing
                and h.epoch == self._pool_epoch
                and h.conn.pgconn.transaction_status == 0  # IDLE
                and time.monotonic() - h.since < _HOLD_SECONDS
            ):
                self._held.append(h)
            else:
                await self._give_back(h)
        finally:
            self._slots.release()

    async def _give_back(self, h: _Held) -> None:
        pool = self._pool
        if pool is None:
            await quiet_close(h.conn)
            return
        try:
            await pool.putconn(h.conn)
        except Exception:  # the pool closed meanwhile
            await quiet_close(h.conn)


async def quiet_close(conn: Any) -> None:
    try:
        await conn.close()
    except Exception:
        pass
