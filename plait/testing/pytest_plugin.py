"""pytest plugin for plait (entry point ``pytest11``).

* ``--plait-backend=memory,sqlite,postgres,redis`` picks the backends (default: all).
* ``plait_backend_url``: a fresh, isolated backend URL; a test using it runs once per backend.
* ``plait_env``: a ``TimeSkippingEnvironment`` on that backend (default registry).
* ``--plait-conformance=URL``: the backend under test for ``plait.testing.conformance``.

Postgres and Redis come from ``plait.testing.servers``. A backend that cannot be had is
skipped with the reason, unless ``PLAIT_REQUIRE_BACKENDS`` names it: then the test fails.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

ALL_BACKENDS = ("memory", "sqlite", "postgres", "redis")
_SCHEMES = {"memory": "memory", "sqlite": "sqlite", "postgres": "postgresql", "redis": "redis"}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("plait")
    group.addoption(
        "--plait-backend",
        default=None,
        help="comma-separated backends for plait tests (memory,sqlite,postgres,redis); "
        "default: all",
    )
    group.addoption(
        "--plait-conformance",
        default=None,
        metavar="URL",
        help="backend URL the plait.testing.conformance suite runs against; '{tmp}' in it is "
        "replaced by a fresh temporary directory per test",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "plait_backends(*names): run this test only on these backends"
    )


def selected_backends(config: pytest.Config) -> list[str]:
    raw = config.getoption("--plait-backend") or ",".join(ALL_BACKENDS)
    names = [n.strip() for n in raw.split(",") if n.strip()]
    unknown = [n for n in names if n not in ALL_BACKENDS]
    if unknown:
        raise pytest.UsageError(
            f"--plait-backend: unknown backend(s) {unknown}; choose from {ALL_BACKENDS}"
        )
    return names


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "plait_backend_name" not in metafunc.fixturenames:
        return
    names = selected_backends(metafunc.config)
    marker = metafunc.definition.get_closest_marker("plait_backends")
    if marker is not None:
        names = [n for n in names if n in marker.args]
    metafunc.parametrize("plait_backend_name", names, scope="function")


def _unavailable(name: str, reason: str) -> None:
    from .servers import required_backends

    if name in required_backends():
        pytest.fail(f"backend {name} is required by PLAIT_REQUIRE_BACKENDS: {reason}")
    pytest.skip(f"backend {name}: {reason}")


def isolated_url(name: str, tmp: Path) -> str:
    """A URL for a fresh, empty store of backend ``name``."""
    from ..plugins.manager import backend_factories
    from .servers import Unavailable, provide

    if _SCHEMES[name] not in backend_factories():
        _unavailable(name, "its plugin is not installed (pip install 'plait[...]')")
    tag = uuid.uuid4().hex[:10]
    if name == "memory":
        return "memory://"
    if name == "sqlite":
        return f"sqlite:///{tmp}/plait-{tag}.db"
    try:
        base = provide(name)
    except Unavailable as exc:
        _unavailable(name, str(exc))
        raise
    sep = "&" if "?" in base else "?"
    if name == "postgres":
        return f"{base}{sep}schema=t_{tag}"
    return f"{base}{sep}prefix=t{tag}:"


@pytest.fixture
def plait_backend_url(plait_backend_name: str, tmp_path: Path) -> str:
    """A fresh backend URL; the test runs once per selected backend."""
    return isolated_url(plait_backend_name, tmp_path)


@pytest.fixture
async def plait_env(plait_backend_url: str) -> AsyncIterator[object]:
    """A ``TimeSkippingEnvironment`` on ``plait_backend_url`` with the default registry."""
    from .env import TimeSkippingEnvironment

    async with TimeSkippingEnvironment(plait_backend_url) as env:
        yield env


@pytest.fixture
def plait_conformance_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL given with ``--plait-conformance`` (``{tmp}`` → a fresh directory)."""
    url = request.config.getoption("--plait-conformance")
    if not url:
        pytest.skip("no --plait-conformance=URL given")
    return str(url).replace("{tmp}", str(tmp_path))
