"""The postgres backend's URL options and schema migrations.

Everything lives in one PostgreSQL schema (``?schema=``, default ``plait``), created and
migrated forward on open under an advisory lock; the SQL of each version is in ``_pg_sql``.
"""

from __future__ import annotations

import hashlib
import re
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import attrs

from ._pg_sql import V1, V2, V3, V4, V5
from .base import BackendError, SchemaError

__all__ = [
    "PgOptions",
    "parse_url",
    "SCHEMA_VERSION",
    "migrate",
    "quote_ident",
]

DEFAULT_SCHEMA = "plait"
DEFAULT_POOL_MIN = 1
DEFAULT_POOL_MAX = 10
_SCHEMA_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,57}$")  # + "_work" fits in 63 bytes
_OPTIONS = ("schema", "pool_min", "pool_max")


@attrs.frozen
class PgOptions:
    conninfo: str  # the URL psycopg gets: plait's options removed
    schema: str
    pool_min: int
    pool_max: int

    @property
    def channel(self) -> str:
        return f"{self.schema}_work"


def parse_url(url: str) -> PgOptions:
    """Split ``postgresql://...?schema=s&pool_min=1&pool_max=10`` into plait's options and the
    conninfo handed to psycopg (every other query parameter is libpq's, e.g. ``sslmode``)."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("postgresql", "postgres"):
        raise ValueError(f"not a PostgreSQL URL: {url!r} (expected postgresql://...)")
    ours: dict[str, str] = {}
    rest: list[tuple[str, str]] = []
    for k, v in parse_qsl(parts.query, keep_blank_values=True):
        if k in _OPTIONS:
            ours[k] = v
        else:
            rest.append((k, v))
    schema = ours.get("schema", DEFAULT_SCHEMA)
    if not _SCHEMA_RE.match(schema):
        raise ValueError(
            f"schema={schema!r}: a schema name is a letter or underscore followed by up to 57 "
            "letters, digits or underscores"
        )

    def _int(name: str, default: int) -> int:
        raw = ours.get(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"{name}={raw!r} is not an integer") from None
        return value

    pool_min = _int("pool_min", DEFAULT_POOL_MIN)
    pool_max = _int("pool_max", max(DEFAULT_POOL_MAX, pool_min))
    if pool_min < 0 or pool_max < 1 or pool_min > pool_max:
        raise ValueError(
            f"pool_min={pool_min}, pool_max={pool_max}: need 0 <= pool_min <= pool_max, "
            "pool_max >= 1"
        )
    conninfo = urlunsplit(parts._replace(query=urlencode(rest, quote_via=quote)))
    return PgOptions(conninfo=conninfo, schema=schema, pool_min=pool_min, pool_max=pool_max)


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# (version, script): applied in order inside one transaction under an advisory lock.
MIGRATIONS: list[tuple[int, str]] = [(1, V1), (2, V2), (3, V3), (4, V4), (5, V5)]
SCHEMA_VERSION = MIGRATIONS[-1][0]


def listener_lock(schema: str) -> int:
    """The advisory lock key guarding listener registration (stable across processes)."""
    digest = hashlib.sha256(f"plait.listeners:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _render(script: str, schema: str) -> str:
    return script.format(s=quote_ident(schema), chan=f"{schema}_work", lock=listener_lock(schema))


async def migrate(conn: object, schema: str) -> int:
    """Create or migrate ``schema`` on an autocommit psycopg ``AsyncConnection``.

    Runs in one transaction under ``pg_advisory_xact_lock`` keyed by the schema name, so
    concurrent starters wait for each other instead of racing. Returns the version found
    before migrating (0 for a new store). ``SchemaError`` for a foreign or newer schema.
    """
    c: object = conn
    async with c.transaction():  # type: ignore[attr-defined]
        await c.execute(  # type: ignore[attr-defined]
            "SELECT pg_advisory_xact_lock(hashtext(%s))", (f"plait.schema:{schema}",)
        )
        cur = await c.execute(  # type: ignore[attr-defined]
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = %s),"
            " to_regclass(%s) IS NOT NULL,"
            " (SELECT count(*) FROM pg_class k JOIN pg_namespace n ON n.oid = k.relnamespace"
            "   WHERE n.nspname = %s)",
            (schema, f"{quote_ident(schema)}.schema_version", schema),
        )
        row = await cur.fetchone()
        assert row is not None
        exists, versioned, relations = row
        current = 0
        if exists and not versioned:
            if relations:
                raise SchemaError(
                    f"PostgreSQL schema {schema!r} holds {relations} relation(s) but is not a "
                    "plait store (no schema_version table); pick another with ?schema=..."
                )
        elif versioned:
            cur = await c.execute(  # type: ignore[attr-defined]
                f"SELECT coalesce(max(version), 0) FROM {quote_ident(schema)}.schema_version"
            )
            got = await cur.fetchone()
            current = int(got[0]) if got else 0
            if current > SCHEMA_VERSION:
                raise SchemaError(
                    f"PostgreSQL schema {schema!r} was written by a newer plait (schema version "
                    f"{current}; this plait knows up to {SCHEMA_VERSION}): upgrade plait"
                )
        if current < SCHEMA_VERSION:
            if not exists:
                await c.execute(f"CREATE SCHEMA {quote_ident(schema)}")  # type: ignore[attr-defined]
            for version, script in MIGRATIONS:
                if version > current:
                    await c.execute(_render(script, schema))  # type: ignore[attr-defined]
                    await c.execute(  # type: ignore[attr-defined]
                        f"INSERT INTO {quote_ident(schema)}.schema_version (version) VALUES (%s)",
                        (version,),
                    )
        return current


def connect_error(url: str, exc: BaseException) -> BackendError:
    return BackendError(f"cannot connect to PostgreSQL at {redact(url)}: {exc}")


def redact(url: str) -> str:
    """The URL with its password hidden (for messages)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
