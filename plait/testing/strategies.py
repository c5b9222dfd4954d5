"""Hypothesis strategies for workflow programs, completion orders and fault schedules.

A *program* is a JSON tree that ``interpret`` (one generic workflow) executes: steps, failing
steps (caught or not), sleeps, children, hooks (resumed by a child), signals (sent to a child),
deterministic randomness, and ``seq``/``all``/``all_settled``/``race`` over sub-programs.
``run_program`` runs one on any backend in a deterministic ``TimeSkippingEnvironment`` with an
optional fault schedule (the worker abandons chosen tasks, as a crashed worker would) and
returns every run's history, so properties can compare backends and schedules.
"""

from __future__ import annotations

import tempfile
from typing import Any

import attrs
from hypothesis import strategies as st

import plait

from ..backends.base import ClaimedRun, StepTask
from ..kernel.codec import history_to_json
from .env import TimeSkippingEnvironment

__all__ = [
    "programs",
    "fault_schedules",
    "interpret",
    "WORKFLOWS",
    "STEPS",
    "Outcome",
    "run_program",
]


@plait.step(name="strategies.work", retry=plait.RetryPolicy(max_attempts=2, initial_interval=5))
async def work(value: str) -> str:
    return f"r{value}"


@plait.step(name="strategies.broken", retry=plait.RetryPolicy(max_attempts=2, initial_interval=5))
async def broken(value: str) -> str:
    raise ValueError(f"broken {value}")


@plait.workflow(name="strategies.kid")
async def kid(n: int) -> int:
    await work(str(n))
    return n * 10


@plait.workflow(name="strategies.resumer")
async def resumer(token: str, payload: str) -> None:
    await plait.resume_hook(token, payload)


@plait.workflow(name="strategies.listener")
async def listener() -> str:
    return str(await plait.signal("go"))


async def run_op(op: list[Any]) -> Any:
    kind = op[0]
    if kind == "step":
        return await work(op[1])
    if kind == "fail":
        try:
            return await broken(op[1])
        except plait.StepFailed as e:
            if op[2]:
                return "caught " + e.cause.message
            raise
    if kind == "sleep":
        await plait.sleep(op[1])
        return "slept"
    if kind == "child":
        return await plait.child(kid, op[1])
    if kind == "hook":
        hook = plait.hook()
        await plait.start_child(resumer, hook.token, op[1])
        return await hook
    if kind == "signal":
        h = await plait.start_child(listener)
        await h.signal("go", op[1])
        return await h.result()
    if kind == "rand":
        return [plait.random().randint(0, 1000), str(plait.uuid4())]
    if kind == "seq":
        return [await run_op(o) for o in op[1]]
    barrier = getattr(plait, kind)
    try:
        result = await barrier(*(run_op(o) for o in op[1]))
    except plait.StepFailed as e:
        return f"{kind} failed: {e.cause.message}"
    if kind == "all_settled":
        return [
            ["ok", r.value] if isinstance(r, plait.Ok) else ["err", str(r.error)] for r in result
        ]
    return result


@plait.workflow(name="strategies.interpret")
async def interpret(program: list[Any]) -> Any:
    """Runs a generated program; on cancel, runs a cleanup step and re-raises."""
    try:
        return await run_op(program)
    except plait.Cancelled:
        await work("cleanup")
        raise


WORKFLOWS = [interpret, kid, resumer, listener]
STEPS = [work, broken]

_words = st.text("abc", min_size=1, max_size=3)
_leaves = st.one_of(
    st.tuples(st.just("step"), _words).map(list),
    st.tuples(st.just("fail"), _words, st.booleans()).map(list),
    st.tuples(st.just("sleep"), st.integers(0, 3600)).map(list),
    st.tuples(st.just("child"), st.integers(0, 9)).map(list),
    st.tuples(st.just("hook"), _words).map(list),
    st.tuples(st.just("signal"), _words).map(list),
    st.just(["rand"]),
)


def programs(max_leaves: int = 10) -> st.SearchStrategy[list[Any]]:
    """Programs: a ``seq`` of 1–4 trees mixing every primitive and barrier."""
    tree = st.recursive(
        _leaves,
        lambda inner: st.tuples(
            st.sampled_from(["seq", "all", "all_settled", "race"]),
            st.lists(inner, min_size=1, max_size=3),
        ).map(list),
        max_leaves=max_leaves,
    )
    return st.lists(tree, min_size=1, max_size=4).map(lambda ops: ["seq", ops])


def fault_schedules(max_tasks: int = 40) -> st.SearchStrategy[frozenset[int]]:
    """Which task executions (by index, counting activations and steps) a worker abandons."""
    return st.frozensets(st.integers(0, max_tasks), max_size=3)


@attrs.frozen
class Outcome:
    """What a program run produced: the root's status and result, and every run's history."""

    status: str
    result: Any
    histories: dict[str, list[dict[str, Any]]]


class _Faulty:
    """Wraps a worker: the task executions named in ``schedule`` are claimed, then abandoned
    (no commit, no outcome, lease held) exactly like a worker that crashed."""

    def __init__(self, env: TimeSkippingEnvironment, schedule: frozenset[int]) -> None:
        self.schedule, self.count = schedule, 0
        worker = env.worker
        activate, run_step = worker.activate, worker.run_step

        async def faulty_activate(claim: ClaimedRun) -> None:
            if self._crash():
                return
            await activate(claim)

        async def faulty_step(task: StepTask) -> None:
            if self._crash():
                return
            await run_step(task)

        worker.activate = faulty_activate  # type: ignore[method-assign]
        worker.run_step = faulty_step  # type: ignore[method-assign]

    def _crash(self) -> bool:
        self.count += 1
        return self.count - 1 in self.schedule


async def run_program(
    backend: str,
    program: list[Any],
    *,
    faults: frozenset[int] = frozenset(),
    cancel_after: float | None = None,
    seed: str = "strategies",
) -> Outcome:
    """Run ``program`` to completion on ``backend`` (``{tmp}`` → a fresh temp dir)."""
    url = backend.replace("{tmp}", tempfile.mkdtemp(prefix="plait-prop-"))
    async with TimeSkippingEnvironment(url, WORKFLOWS, STEPS, seed=seed) as env:
        _Faulty(env, faults)
        run = await env.start(interpret, program)
        if cancel_after is not None:
            await env.sleep(cancel_after)
            await env.cancel(run.run_id)
        result: Any = None
        try:
            result = await run.result(timeout=30 * 86_400)
        except plait.RunFailed as e:
            result = str(e.cause)
        except (plait.RunCancelled, plait.RunTerminated):
            pass
        root = await env.get_run(run.run_id)
        histories = {}
        async for rec in env.list_runs():
            histories[rec.run_id] = history_to_json(await env.history(rec.run_id))
        return Outcome(str(root.status), result, histories)
