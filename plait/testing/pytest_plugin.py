"""pytest plugin for plait (entry point ``pytest11``): backend selection and fixtures."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("plait")
    group.addoption(
        "--plait-backend",
        default=None,
        help="comma-separated backends to run plait tests on (memory,sqlite,postgres,redis)",
    )
