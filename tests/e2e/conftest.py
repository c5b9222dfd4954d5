"""End-to-end tests run once per backend through the pytest plugin's ``plait_backend_url``."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def backend_url(plait_backend_url: str) -> str:
    return plait_backend_url
