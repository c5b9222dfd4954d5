"""pluggy hookspecs, the plugin manager and entry-point discovery (group ``plait``)."""

from .hookspecs import hookimpl, hookspec
from .manager import Observers, backend_factories, backend_from_url, get_plugin_manager

__all__ = [
    "hookimpl",
    "hookspec",
    "Observers",
    "backend_factories",
    "backend_from_url",
    "get_plugin_manager",
]
