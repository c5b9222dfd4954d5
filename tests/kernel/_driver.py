"""Shared helpers for the kernel tests: start events, a live driver that checks replay."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import plait.kernel as k
from plait.kernel import commands as cmd
from plait.kernel import events as ev
from plait.kernel.machine import command_event

RUN_ID = "run-1"
SEED = "seed-1"
T0 = 1_000.0


def started(wf: Any, *args: Any, **fields: Any) -> ev.RunStarted:
    """``RunStarted`` for ``wf`` with already-encoded ``args``."""
    fields.setdefault("run_id", RUN_ID)
    fields.setdefault("seed", SEED)
    return ev.RunStarted(workflow=wf.name, args=list(args), **fields)


def events_of(commands: Sequence[cmd.Command]) -> list[ev.Event]:
    """The command events that record ``commands``."""
    return [command_event(c) for c in commands]


def command_events(history: Sequence[ev.Event]) -> list[ev.Event]:
    return [e for e in history if type(e) in ev.COMMAND_EVENTS]


class Run:
    """Drives one ``Machine`` live, one activation per ``send``.

    After every activation a fresh ``Machine`` replays the whole history and must reproduce it
    (same events, status, result, error), so every test also checks replay.
    """

    def __init__(self, wf: Callable[..., Any], *args: Any, time: float = T0, **fields: Any) -> None:
        self.wf = wf
        self.time = time
        self.m = k.Machine(wf)
        self.commands = self.m.activate([started(wf, *args, **fields)], time=time)
        self.check_replay()

    def send(self, *events: ev.Event, time: float | None = None) -> list[cmd.Command]:
        """One activation with ``events``; time moves one second unless given."""
        self.time = self.time + 1.0 if time is None else time
        self.commands = self.m.activate(list(events), time=self.time)
        self.check_replay()
        return self.commands

    def check_replay(self) -> k.Machine:
        replayed = k.Machine(self.wf, self.m.history)
        assert replayed.history == self.m.history
        assert replayed.status == self.m.status
        assert replayed.result_data == self.m.result_data
        assert replayed.error == self.m.error
        return replayed

    @property
    def history(self) -> list[ev.Event]:
        return self.m.history

    @property
    def status(self) -> k.RunStatus:
        return self.m.status

    @property
    def result(self) -> Any:
        return self.m.result

    @property
    def error(self) -> k.ErrorInfo | None:
        return self.m.error


def site(wf: Any, text: str) -> str:
    """``file:line (in qualname)`` of the first line of ``wf`` containing ``text``."""
    fn = getattr(wf, "fn", wf)
    lines, first = inspect.getsourcelines(fn)
    offset = next(i for i, line in enumerate(lines) if text in line)
    return f"{fn.__code__.co_filename}:{first + offset} (in {fn.__qualname__})"
