"""Throwaway PostgreSQL and Redis servers for tests.

Order of preference for each: an explicit URL from the environment (``PLAIT_POSTGRES_URL``,
``PLAIT_REDIS_URL``), a server started from local binaries on a loopback port (removed
afterwards), testcontainers when a Docker engine answers. ``provide(name)`` returns a URL or
raises ``Unavailable`` with the reason.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["Unavailable", "provide", "release", "required_backends", "PG_BIN"]

PG_BIN = Path(os.environ.get("PLAIT_PG_BIN", "/usr/lib/postgresql/15/bin"))


class Unavailable(RuntimeError):
    """No server of this kind could be had; the message says why."""


def required_backends() -> set[str]:
    """Backends named by ``PLAIT_REQUIRE_BACKENDS``: unavailable ones fail instead of skip."""
    raw = os.environ.get("PLAIT_REQUIRE_BACKENDS", "")
    return {b.strip() for b in raw.split(",") if b.strip()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def _docker_answers() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env().ping()
        return True
    except Exception:
        return False


# -- PostgreSQL -------------------------------------------------------------------------------


def _pg_binary(name: str) -> str | None:
    p = PG_BIN / name
    if p.exists():
        return str(p)
    return shutil.which(name)


def _as_user() -> list[str]:
    """Prefix to run PostgreSQL binaries unprivileged (the server refuses to run as root)."""
    if os.geteuid() != 0:
        return []
    import pwd

    try:
        pwd.getpwnam("postgres")
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "postgres"], check=True, capture_output=True
        )
    return ["runuser", "-u", "postgres", "--"]


def _local_postgres() -> str:
    initdb, pg_ctl = _pg_binary("initdb"), _pg_binary("pg_ctl")
    if not initdb or not pg_ctl:
        raise Unavailable(f"no initdb/pg_ctl in {PG_BIN} or on PATH")
    base = Path(tempfile.mkdtemp(prefix="plait-pg-"))
    data = base / "data"
    prefix = _as_user()
    if prefix:
        shutil.chown(base, "postgres", "postgres")
    port = _free_port()
    run = subprocess.run(
        [
            *prefix,
            initdb,
            "-D",
            str(data),
            "-U",
            "plait",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ],
        capture_output=True,
        text=True,
    )
    if run.returncode != 0:
        raise Unavailable(f"initdb failed: {run.stderr.strip()[-300:]}")
    opts = (
        f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off "
        "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
    )
    start = subprocess.run(
        [*prefix, pg_ctl, "-D", str(data), "-o", opts, "-l", str(base / "log"), "-w", "start"],
        capture_output=True,
        text=True,
    )
    if start.returncode != 0:
        raise Unavailable(f"pg_ctl start failed: {start.stderr.strip()[-300:]}")

    def stop() -> None:
        subprocess.run(
            [*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True
        )
        shutil.rmtree(base, ignore_errors=True)

    atexit.register(stop)
    _STOPS["postgres"] = stop
    _SERVERS["postgres"] = {
        "data": str(data),
        "base": str(base),
        "port": str(port),
        "pg_ctl": pg_ctl,
        "opts": opts,
    }
    return f"postgresql://plait@127.0.0.1:{port}/postgres"


def restart_postgres(mode: str = "fast") -> None:
    """Restart the throwaway PostgreSQL started by ``provide`` (for outage tests)."""
    info = _SERVERS.get("postgres")
    if info is None:
        raise Unavailable("no local PostgreSQL was started by plait.testing.servers")
    subprocess.run(
        [
            *_as_user(),
            info["pg_ctl"],
            "-D",
            info["data"],
            "-o",
            info["opts"],
            "-m",
            mode,
            "-l",
            str(Path(info["base"]) / "log"),
            "-w",
            "restart",
        ],
        check=True,
        capture_output=True,
    )


def _container_postgres() -> str:
    from testcontainers.postgres import PostgresContainer  # type: ignore[import-untyped]

    container = PostgresContainer("postgres:15")
    container.start()
    atexit.register(container.stop)
    url: str = container.get_connection_url().replace("+psycopg2", "")
    return url


# -- Redis ------------------------------------------------------------------------------------


def _start_redis(binary: str, port: int, data_dir: str) -> subprocess.Popen[bytes]:
    """A redis-server on loopback ``port`` with AOF on (``appendfsync everysec``), no RDB."""
    return subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            data_dir,
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _local_redis() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise Unavailable("no redis-server binary on PATH (apt-get install redis-server)")
    base = Path(tempfile.mkdtemp(prefix="plait-redis-"))
    port = _free_port()
    proc = _start_redis(binary, port, str(base))
    if not _wait_port(port, 10):
        proc.kill()
        raise Unavailable("redis-server did not start listening within 10s")

    def stop() -> None:
        current = _PROCS.get("redis", proc)  # the one running now, after any restart
        current.terminate()
        try:
            current.wait(5)
        except subprocess.TimeoutExpired:
            current.kill()
        shutil.rmtree(base, ignore_errors=True)

    atexit.register(stop)
    _STOPS["redis"] = stop
    _SERVERS["redis"] = {
        "port": str(port),
        "dir": str(base),
        "binary": binary,
        "pid": str(proc.pid),
    }
    _PROCS["redis"] = proc
    return f"redis://127.0.0.1:{port}/0"


def restart_redis() -> None:
    """Kill and restart the throwaway Redis on the same port and data dir (AOF on)."""
    info = _SERVERS.get("redis")
    proc = _PROCS.get("redis")
    if info is None or proc is None:
        raise Unavailable("no local Redis was started by plait.testing.servers")
    proc.kill()
    proc.wait(5)
    port = int(info["port"])
    new = _start_redis(info["binary"], port, info["dir"])
    _PROCS["redis"] = new
    atexit.register(new.kill)
    if not _wait_port(port, 10):
        raise Unavailable("redis-server did not come back within 10s")


def _container_redis() -> str:
    from testcontainers.redis import RedisContainer  # type: ignore[import-untyped]

    container = RedisContainer("redis:7")
    container.start()
    atexit.register(container.stop)
    host = container.get_container_host_ip()
    port = container.get_exposed_port(6379)
    return f"redis://{host}:{port}/0"


_SERVERS: dict[str, dict[str, str]] = {}
_PROCS: dict[str, subprocess.Popen[bytes]] = {}
_CACHE: dict[str, str | Unavailable] = {}
_STOPS: dict[str, Callable[[], None]] = {}

_SOURCES: dict[str, tuple[str, Callable[[], str], Callable[[], str]]] = {
    "postgres": ("PLAIT_POSTGRES_URL", _local_postgres, _container_postgres),
    "redis": ("PLAIT_REDIS_URL", _local_redis, _container_redis),
}


def release(name: str) -> None:
    """Stop the throwaway local server of kind ``name`` that ``provide`` started (a server
    named by the environment or a container is left alone): its background work (a
    PostgreSQL autovacuum, say) must not compete with what runs next. ``provide`` starts a
    new one if asked again."""
    stop = _STOPS.pop(name, None)
    if stop is None:
        return
    stop()
    _SERVERS.pop(name, None)
    _PROCS.pop(name, None)
    _CACHE.pop(name, None)


def provide(name: str) -> str:
    """A URL for a server of kind ``name`` ("postgres" or "redis"), started once per process."""
    cached = _CACHE.get(name)
    if isinstance(cached, Unavailable):
        raise cached
    if cached is not None:
        return cached
    env_var, local, container = _SOURCES[name]
    reasons = []
    url = os.environ.get(env_var)
    if not url:
        try:
            url = local()
        except Exception as exc:
            reasons.append(f"local binaries: {exc}")
    if not url:
        if _docker_answers():
            try:
                url = container()
            except Exception as exc:
                reasons.append(f"testcontainers: {exc}")
        else:
            reasons.append("testcontainers: no Docker engine answers")
    if not url:
        error = Unavailable(f"{name}: no server ({env_var} unset; " + "; ".join(reasons) + ")")
        _CACHE[name] = error
        raise error
    _CACHE[name] = url
    return url
