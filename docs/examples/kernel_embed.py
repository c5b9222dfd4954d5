"""Embedding the plait kernel: a tiny synchronous driver (see docs/kernel.md).

    python docs/examples/kernel_embed.py

The driver owns everything the kernel leaves out: it executes ``ScheduleStep`` by calling the
step function right here (with its retry policy, without waiting between attempts), fires each
timer at once by moving a virtual clock to the timer's due time, runs child runs to completion
recursively, and feeds every outcome back as the next activation. Then it saves the history as
JSON, replays it, and shows what happens when the workflow code changes under a recorded history.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

import plait
from plait.kernel import ErrorInfo, Machine, NonDeterminismError, codec
from plait.kernel import commands as cmd
from plait.kernel import events as ev

# -- user code -----------------------------------------------------------------------------------

ATTEMPTS: dict[str, int] = {}


@plait.step(name="example.fetch", retry=plait.RetryPolicy(max_attempts=3))
def fetch(doc_id: str) -> str:
    ATTEMPTS[doc_id] = ATTEMPTS.get(doc_id, 0) + 1
    if doc_id == "b" and ATTEMPTS[doc_id] < 3:  # flaky: succeeds on the third attempt
        raise ConnectionError(f"fetching {doc_id}: connection reset")
    return f"text of {doc_id}"


@plait.workflow(name="example.process")
async def process(doc_id: str) -> dict[str, Any]:
    text = await fetch(doc_id)
    await plait.sleep(3600)
    return {"doc": doc_id, "n": len(text), "at": plait.now().isoformat()}


@plait.workflow(name="example.batch")
async def batch(ids: list[str]) -> dict[str, Any]:
    results = await plait.all(*(plait.child(process, i, key=f"doc-{i}") for i in ids))
    return {"processed": len(results), "chars": sum(r["n"] for r in results)}


WORKFLOWS = {w.name: w for w in (process, batch)}
STEPS = {s.name: s for s in (fetch,)}

# -- the driver ----------------------------------------------------------------------------------


class Driver:
    """Runs workflows to completion in this thread; keeps every run's history."""

    def __init__(self, start_time: float = 1_800_000_000.0) -> None:
        self.now = start_time  # a virtual clock: firing a timer moves it forward
        self.histories: dict[str, list[ev.Event]] = {}

    def run(self, wf: Any, args: list[Any], run_id: str, **started: Any) -> Machine:
        m = Machine(wf, [])
        inbox: list[ev.Event] = [
            ev.RunStarted(
                run_id=run_id, workflow=wf.name, args=args, seed=f"seed/{run_id}", **started
            )
        ]
        while not m.closed:
            commands = m.activate(inbox, time=self.now)  # one batch in, commands out
            print(f"  {run_id[:13]:<13} {_names(inbox)} -> {_names(commands)}")
            inbox = [outcome for c in commands for outcome in self.execute(run_id, c)]
            if not inbox and not m.closed:
                raise RuntimeError(f"run {run_id} waits for something this driver cannot deliver")
        self.histories[run_id] = m.history
        return m

    def execute(self, run_id: str, c: cmd.Command) -> list[ev.Event]:
        """Carry out one command; return the inbound events it produced (in order)."""
        if isinstance(c, cmd.ScheduleStep):
            return [self.run_step(c)]
        if isinstance(c, cmd.StartTimer):
            self.now = max(self.now, c.fire_at)
            return [ev.TimerFired(c.seq)]
        if isinstance(c, cmd.CancelTimer):
            return []  # our timers have fired already; a late TimerFired is allowed anyway
        if isinstance(c, cmd.StartChild):
            child = self.run(
                WORKFLOWS[c.workflow],
                c.args,
                c.child_run_id,
                key=c.key,
                parent_run_id=run_id,
                parent_seq=c.seq,
            )
            if child.status == plait.RunStatus.COMPLETED:
                closed: ev.Event = ev.ChildCompleted(c.seq, child.result_data)
            else:
                assert child.error is not None
                closed = ev.ChildFailed(c.seq, child.error)
            return [ev.ChildStarted(c.seq, c.child_run_id), closed]
        if isinstance(c, cmd.RecordPatch):
            return []  # only recorded: nothing to do
        if isinstance(c, (cmd.CompleteRun, cmd.FailRun, cmd.CancelRun)):
            return []  # the machine's status, result and error are already set
        raise NotImplementedError(f"{type(c).__name__} is left out of this example")

    def run_step(self, c: cmd.ScheduleStep) -> ev.Event:
        step = STEPS[c.name]
        args = codec.decode_args(step.fn, c.args)
        attempt = 0
        while True:
            attempt += 1
            try:
                value = asyncio.run(step.fn(*args)) if step.is_async else step.fn(*args)
            except Exception as exc:
                if step.retry.should_retry(attempt, exc):
                    continue  # a real runtime would wait step.retry.delay(attempt) seconds
                return ev.StepFailed(c.seq, ErrorInfo.from_exception(exc), attempt)
            return ev.StepCompleted(c.seq, codec.encode(value, step.result_hint), attempt)


def _names(items: list[Any]) -> str:
    return (
        ", ".join(
            type(x).__name__ + (f"(attempts={x.attempts})" if getattr(x, "attempts", 1) > 1 else "")
            for x in items
        )
        or "nothing"
    )


# -- a changed deploy ----------------------------------------------------------------------------


@plait.workflow(name="example.process")
async def process_v2(doc_id: str) -> dict[str, Any]:
    text = await fetch(doc_id)
    await plait.sleep(60)  # changed: records a different timer than old histories hold
    return {"doc": doc_id, "n": len(text), "at": plait.now().isoformat()}


@plait.workflow(name="example.process")
async def process_v3(doc_id: str) -> dict[str, Any]:
    text = await fetch(doc_id)
    if plait.patched("shorter-sleep"):  # the same change, made safely
        await plait.sleep(60)
    else:
        await plait.sleep(3600)
    return {"doc": doc_id, "n": len(text), "at": plait.now().isoformat()}


def main() -> None:
    driver = Driver()
    print("run:")
    m = driver.run(batch, codec.encode_args(batch.fn, [["a", "b"]]), "batch-run-1")
    print(f"status: {m.status}, result: {m.result}")

    with tempfile.TemporaryDirectory() as tmp:
        # Save every history as JSON, as a backend would, and load them back.
        for run_id, history in driver.histories.items():
            (Path(tmp) / f"{run_id}.json").write_text(codec.dumps_history(history))
        loaded = {
            p.stem: codec.loads_history(p.read_text()) for p in sorted(Path(tmp).glob("*.json"))
        }

    print("replay:")
    for run_id, history in loaded.items():
        wf = WORKFLOWS[history[0].workflow]  # type: ignore[attr-defined]
        again = Machine(wf, history)  # replays; no command is returned or executed
        same = again.history == driver.histories[run_id]
        print(f"  {run_id[:13]:<13} {len(history)} events, {again.status}, identical: {same}")
        assert same and again.status == plait.RunStatus.COMPLETED

    _, child_history = next((k, h) for k, h in loaded.items() if k != "batch-run-1")
    print("changed code:")
    try:
        Machine(process_v2, child_history)
    except NonDeterminismError as exc:
        print(f"  v2 is blocked, not failed: {type(exc).__name__}: {exc}")
    replayed = Machine(process_v3, child_history)
    print(f"  v3 (patched) replays the old history: {replayed.status}")

    print("new run with v3:")
    fresh = Driver().run(process_v3, ["c"], "new-run-1")
    print(f"  patch recorded: {any(isinstance(e, ev.PatchMarker) for e in fresh.history)}")


if __name__ == "__main__":
    main()
