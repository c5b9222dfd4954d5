"""The backend conformance suite: every guarantee of the ``Backend`` protocol as a pytest test.

Each test takes one fixture, ``conformance_backend``: an opened backend on a fresh, isolated
store (closed after the test). The tests call the protocol's methods directly with records and
kernel events they build themselves, so a failing test names the guarantee that broke.

Run it against your own backend (installed, with its scheme registered under the entry-point
group ``plait``)::

    pytest --pyargs plait.testing.conformance --plait-conformance='myscheme://{tmp}/store'

``{tmp}`` becomes a fresh temporary directory per test and ``{uuid}`` a fresh random hex string
(use it for a server-backed store: a schema, database or key prefix per test). Add
``-p plait.testing.pytest_plugin -p anyio.pytest_plugin`` when pytest's plugin autoloading is
disabled. Without ``--plait-conformance`` the suite runs on each ``--plait-backend`` (default:
the built-in ones).

To collect the suite inside your own test tree instead, star-import it into a test module::

    from plait.testing.conformance import *  # noqa: F403

The tests that race several backend objects or processes on one store are skipped for a store
private to one object (``memory://``). See ``docs/backends/writing-a-backend.md``.
"""

from __future__ import annotations

import pytest

from ._conformance_commit import *  # noqa: F403
from ._conformance_commit import __all__ as _commit_tests
from ._conformance_concurrency import *  # noqa: F403
from ._conformance_concurrency import __all__ as _concurrency_tests
from ._conformance_eager import *  # noqa: F403
from ._conformance_eager import __all__ as _eager_tests
from ._conformance_eager_start import *  # noqa: F403
from ._conformance_eager_start import __all__ as _eager_start_tests
from ._conformance_queues import *  # noqa: F403
from ._conformance_queues import __all__ as _queue_tests
from ._conformance_speculation import *  # noqa: F403
from ._conformance_speculation import __all__ as _speculation_tests
from ._conformance_start_commit import *  # noqa: F403
from ._conformance_start_commit import __all__ as _start_commit_tests
from ._conformance_store import *  # noqa: F403
from ._conformance_store import __all__ as _store_tests
from ._conformance_support import anyio_backend, conformance_backend, conformance_url

pytestmark = pytest.mark.anyio

TESTS: tuple[str, ...] = (
    *_store_tests,
    *_commit_tests,
    *_queue_tests,
    *_concurrency_tests,
    *_eager_tests,
    *_speculation_tests,
    *_eager_start_tests,
    *_start_commit_tests,
)
"""The names of the conformance tests, in suite order."""

OPTIONAL: tuple[str, ...] = (*_speculation_tests, *_eager_start_tests, *_start_commit_tests)
"""The tests of optional extensions, skipped for a backend without them (speculation, eager
start, start with commit)."""

__all__ = [
    "pytestmark",
    "anyio_backend",
    "conformance_url",
    "conformance_backend",
    "TESTS",
    "OPTIONAL",
    *TESTS,
]
