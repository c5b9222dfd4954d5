"""Plugin discovery and observers."""

from __future__ import annotations

import logging

import pluggy
import pytest

import plait
from plait.plugins import Observers, backend_factories, backend_from_url, hookimpl
from plait.plugins.hookspecs import PROJECT
from plait.plugins.observers import MetricsPlugin, TracingPlugin
from plait.testing import TimeSkippingEnvironment

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@plait.step(retry=plait.RetryPolicy(max_attempts=2, initial_interval=1))
async def sometimes(x: int) -> int:
    if plait.step_info().attempt == 1 and x == 0:
        raise RuntimeError("first attempt fails")
    return x


@plait.workflow
async def observed(n: int) -> int:
    return sum([await sometimes(i) for i in range(n)])


def _pm(*plugins: object) -> pluggy.PluginManager:
    from plait.plugins import hookspecs

    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    for p in plugins:
        pm.register(p)
    return pm


def test_memory_is_discovered_through_the_entry_point_group() -> None:
    from importlib.metadata import entry_points

    names = {ep.name for ep in entry_points(group="plait")}
    assert "memory" in names
    assert "memory" in backend_factories()


def test_unknown_scheme_lists_the_schemes_found() -> None:
    with pytest.raises(ValueError, match=r"no plait backend handles nope:// URLs.*memory://"):
        backend_from_url("nope://x")
    with pytest.raises(ValueError, match="has no scheme"):
        backend_from_url("just-a-path.db")


def test_a_plugin_can_add_a_scheme() -> None:
    class Plugin:
        @staticmethod
        @hookimpl
        def plait_backend_schemes() -> dict[str, object]:
            return {"custom": lambda url: ("custom-backend", url)}

    from plait.plugins import get_plugin_manager

    pm = get_plugin_manager()
    plugin = Plugin()
    pm.register(plugin)
    try:
        assert backend_from_url("custom://x") == ("custom-backend", "custom://x")
    finally:
        pm.unregister(plugin)
    assert "custom" not in backend_factories()


async def test_observers_see_events_and_step_attempts(caplog: pytest.LogCaptureFixture) -> None:
    metrics, tracing = MetricsPlugin(), TracingPlugin()
    async with TimeSkippingEnvironment(workflows=[observed], steps=[sometimes]) as env:
        env.engine.observers = Observers(_pm(metrics, tracing))
        with caplog.at_level(logging.INFO, logger="plait.trace"):
            assert await (await env.start(observed, 3)).result() == 3
    assert metrics.events["StepScheduled"] == 3
    assert metrics.events["StepCompleted"] == 3
    assert metrics.events["RunCompleted"] == 1
    assert metrics.step_attempts == {"completed": 3, "retrying": 1}
    assert any("RunCompleted" in r.getMessage() for r in caplog.records)
    assert any("retrying" in r.getMessage() for r in caplog.records)


async def test_a_failing_observer_never_breaks_a_run(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        @hookimpl
        def plait_run_event(self, run_id: str, workflow: str, event: object) -> None:
            raise RuntimeError("observer bug")

    async with TimeSkippingEnvironment(workflows=[observed], steps=[sometimes]) as env:
        env.engine.observers = Observers(_pm(Broken()))
        assert await (await env.start(observed, 2)).result() == 1
    assert "plait_run_event observer failed" in caplog.text
