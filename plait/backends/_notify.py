"""Local wake-ups: a waiter returns when anything changed or its timeout passed."""

from __future__ import annotations

import anyio


class Notifier:
    """A generation counter with an event per generation, safe to create outside a loop."""

    def __init__(self) -> None:
        self._event: anyio.Event | None = None

    def notify(self) -> None:
        if self._event is not None:
            self._event.set()
            self._event = None

    async def wait(self, timeout: float) -> None:
        if self._event is None:
            self._event = anyio.Event()
        event = self._event
        with anyio.move_on_after(max(0.0, timeout)):
            await event.wait()
