"""The plugin manager: loads the entry-point group ``plait`` and wraps hooks in typed calls.

Business code never calls ``pm.hook.*`` directly (it is untyped); it calls the functions here.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import pluggy

from . import hookspecs

__all__ = ["get_plugin_manager", "backend_factories", "backend_from_url", "Observers"]

log = logging.getLogger("plait.plugins")


@functools.cache
def get_plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.load_setuptools_entrypoints(hookspecs.PROJECT)
    return pm


def backend_factories() -> dict[str, Callable[[str], Any]]:
    """Scheme -> factory, from every plugin. The first registration of a scheme wins."""
    merged: dict[str, Callable[[str], Any]] = {}
    # pluggy calls the most recently registered plugin first; reverse for registration order.
    for mapping in reversed(get_plugin_manager().hook.plait_backend_schemes()):
        for scheme, factory in (mapping or {}).items():
            merged.setdefault(scheme, factory)
    return merged


def _scheme(url: str) -> str:
    if "://" not in url:
        raise ValueError(
            f"backend URL {url!r} has no scheme; expected e.g. memory://, sqlite:///path.db"
        )
    return url.split("://", 1)[0].lower()


def backend_from_url(url: str) -> Any:
    """The backend for ``url``; ``ValueError`` listing the schemes found if none matches."""
    scheme = _scheme(url)
    factories = backend_factories()
    factory = factories.get(scheme)
    if factory is None:
        found = ", ".join(f"{s}://" for s in sorted(factories)) or "none"
        raise ValueError(
            f"no plait backend handles {scheme}:// URLs (schemes found: {found}); "
            "install the package providing it, or check the URL"
        )
    return factory(url)


class Observers:
    """Typed calls of the observer hooks; a failing observer is logged, never fatal."""

    def __init__(self, pm: pluggy.PluginManager | None = None) -> None:
        self._pm = pm or get_plugin_manager()

    @property
    def active(self) -> bool:
        hooks = self._pm.hook
        return bool(
            hooks.plait_run_event.get_hookimpls() or hooks.plait_step_attempt.get_hookimpls()
        )

    def run_event(self, run_id: str, workflow: str, event: Any) -> None:
        try:
            self._pm.hook.plait_run_event(run_id=run_id, workflow=workflow, event=event)
        except Exception:  # an observer must not break a run
            log.exception("plait_run_event observer failed")

    def step_attempt(
        self,
        run_id: str,
        seq: int,
        step: str,
        attempt: int,
        outcome: str,
        duration: float,
        error: Any = None,
    ) -> None:
        try:
            self._pm.hook.plait_step_attempt(
                run_id=run_id,
                seq=seq,
                step=step,
                attempt=attempt,
                outcome=outcome,
                duration=duration,
                error=error,
            )
        except Exception:
            log.exception("plait_step_attempt observer failed")
