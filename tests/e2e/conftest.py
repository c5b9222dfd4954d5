"""One fixture parametrises the backends; every end-to-end test runs on each of them."""

from __future__ import annotations

import os

import pytest

from plait.plugins import backend_factories

BACKENDS = ["memory", "sqlite"]


def _available(name: str) -> bool:
    return name in backend_factories()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=BACKENDS)
def backend_url(request: pytest.FixtureRequest, tmp_path: object) -> str:
    name = request.param
    if not _available(name):
        required = {b.strip() for b in os.environ.get("PLAIT_REQUIRE_BACKENDS", "").split(",")}
        if name in required:
            pytest.fail(f"backend {name} is required (PLAIT_REQUIRE_BACKENDS) but not installed")
        pytest.skip(f"backend {name} is not installed")
    if name == "memory":
        return "memory://"
    return f"sqlite:///{tmp_path}/plait.db"
