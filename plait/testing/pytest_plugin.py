"""pytest plugin for plait (entry point ``pytest11``).

* ``--plait-backend=memory,sqlite,postgres,redis`` picks the backends (default: the four
  built-in ones). Any other name is taken as the URL scheme of an installed third-party backend
  and gets a fresh directory store, ``NAME://<tmp>/store-<random>`` (``--plait-backend=jsonfile``).
* ``plait_backend_url``: a fresh, isolated backend URL; a test using it runs once per backend.
* ``plait_env``: a ``TimeSkippingEnvironment`` on that backend (default registry).
* ``--plait-conformance=URL``: the backend under test for ``plait.testing.conformance``; without
  it the conformance suite runs on every ``--plait-backend``. The one-liner for a backend author::

      pytest --pyargs plait.testing.conformance --plait-conformance='myscheme://{tmp}/store'

  With plugin autoloading disabled add ``-p plait.testing.pytest_plugin -p anyio.pytest_plugin``
  (the suite's tests are async and run through anyio's plugin). ``{tmp}`` in the URL becomes a
  fresh temporary directory per test, ``{uuid}`` a fresh random hex string (for a server-backed
  store: a new schema, database or key prefix per test).

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
        help="comma-separated backends for plait tests (memory,sqlite,postgres,redis, or the "
        "URL scheme of an installed third-party backend); default: the built-in ones",
    )
    group.addoption(
        "--plait-conformance",
        default=None,
        metavar="URL",
        help="backend URL the plait.testing.conformance suite runs against; '{tmp}' in it is "
        "replaced by a fresh temporary directory per test, '{uuid}' by a fresh random hex "
        "string",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "plait_backends(*names): run this test only on these backends"
    )


def selected_backends(config: pytest.Config) -> list[str]:
    """The ``--plait-backend`` names: built-in backends, or schemes of installed plugins."""
    raw = config.getoption("--plait-backend") or ",".join(ALL_BACKENDS)
    aliases = {scheme: name for name, scheme in _SCHEMES.items()}  # postgresql -> postgres
    names = [aliases.get(n.strip(), n.strip()) for n in raw.split(",") if n.strip()]
    unknown = [n for n in names if n not in ALL_BACKENDS and n not in third_party_schemes()]
    if unknown:
        raise pytest.UsageError(
            f"--plait-backend: unknown backend(s) {unknown}; choose from {ALL_BACKENDS} or the "
            f"scheme of an installed third-party backend (found: {third_party_schemes() or 'none'})"
        )
    return names


def third_party_schemes() -> list[str]:
    """URL schemes registered by installed plugins outside plait (e.g. ``jsonfile``)."""
    from ..plugins.manager import backend_factories

    return sorted(
        scheme
        for scheme, factory in backend_factories().items()
        if not str(getattr(factory, "__module__", "")).startswith("plait.")
    )


def _backend_names(metafunc: pytest.Metafunc) -> list[str]:
    names = selected_backends(metafunc.config)
    marker = metafunc.definition.get_closest_marker("plait_backends")
    if marker is not None:
        names = [n for n in names if n in marker.args]
    return names


CONFORMANCE_OPTION_TARGET = "--plait-conformance"
"""The value of ``plait_conformance_target`` when ``--plait-conformance=URL`` was given."""


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "plait_backend_name" in metafunc.fixturenames:
        metafunc.parametrize("plait_backend_name", _backend_names(metafunc), scope="function")
    if "plait_conformance_target" in metafunc.fixturenames:
        # The conformance suite: against --plait-conformance=URL when given, else once per
        # selected backend.
        if metafunc.config.getoption("--plait-conformance"):
            targets, ids = [CONFORMANCE_OPTION_TARGET], ["url"]
        else:
            targets = ids = _backend_names(metafunc)
        metafunc.parametrize("plait_conformance_target", targets, ids=ids, scope="function")


def _unavailable(name: str, reason: str) -> None:
    from .servers import required_backends

    if name in required_backends():
        pytest.fail(f"backend {name} is required by PLAIT_REQUIRE_BACKENDS: {reason}")
    pytest.skip(f"backend {name}: {reason}")


def isolated_url(name: str, tmp: Path) -> str:
    """A URL for a fresh, empty store of backend ``name``."""
    from ..plugins.manager import backend_factories
    from .servers import Unavailable, provide

    tag = uuid.uuid4().hex[:10]
    if name not in _SCHEMES:
        # A third-party backend, named by its URL scheme: a fresh directory store.
        if name not in third_party_schemes():
            _unavailable(name, f"no installed third-party plugin handles {name}:// URLs")
        return f"{name}://{tmp}/store-{tag}"
    if _SCHEMES[name] not in backend_factories():
        _unavailable(name, "its plugin is not installed (pip install 'plait[...]')")
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
    """The URL given with ``--plait-conformance`` (``{tmp}`` → a fresh directory, ``{uuid}`` →
    a fresh random hex string)."""
    url = request.config.getoption("--plait-conformance")
    if not url:
        pytest.skip("no --plait-conformance=URL given")
    return str(url).replace("{tmp}", str(tmp_path)).replace("{uuid}", uuid.uuid4().hex[:12])


@pytest.fixture
def plait_conformance_target() -> str:
    """Parametrised by ``pytest_generate_tests``: a backend name, or ``--plait-conformance``."""
    raise pytest.UsageError("plait_conformance_target is parametrised by the plait plugin")
