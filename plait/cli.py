"""The ``plait`` command. User mistakes are one line on stderr and exit 1, never a traceback."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import anyio

DEFAULT_BACKEND = "sqlite:///./.plait/plait.db"


class CliError(Exception):
    """A user-facing error: printed as one line."""


def _backend(args: argparse.Namespace) -> str:
    return args.backend or os.environ.get("PLAIT_BACKEND") or DEFAULT_BACKEND


def _ts(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")


async def _with_engine(args: argparse.Namespace, fn: Any) -> Any:
    from .runtime.engine import Engine

    async with Engine(_backend(args)) as engine:
        return await fn(engine)


def cmd_demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    anyio.run(run_demo, _backend(args), args.docs)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    import signal

    from .kernel.registry import default_registry

    target = args.target
    module_name, _, attr = target.partition(":")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CliError(f"cannot import {module_name!r}: {exc}") from exc
    items: Any = None
    if attr:
        if not hasattr(module, attr):
            raise CliError(f"module {module_name!r} has no attribute {attr!r}")
        items = getattr(module, attr)
        if not isinstance(items, (list, tuple)):
            items = [items]
    from .kernel.registry import StepFunction, WorkflowFunction

    workflows = (
        default_registry.workflows
        if items is None
        else [i for i in items if isinstance(i, WorkflowFunction)]
    )
    steps = (
        default_registry.steps
        if items is None
        else [i for i in items if isinstance(i, StepFunction)]
    )

    async def main() -> None:
        from .runtime.engine import Engine

        async with Engine(_backend(args)) as engine:
            async with engine.worker(workflows, steps, concurrency=args.concurrency):
                print(
                    f"plait worker: {len(workflows)} workflows, {len(steps)} steps, "
                    f"concurrency {args.concurrency}, backend {_backend(args)}",
                    flush=True,
                )
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        print("plait worker: shutting down", flush=True)
                        return

    anyio.run(main)
    return 0


def cmd_runs_list(args: argparse.Namespace) -> int:
    async def go(engine: Any) -> None:
        rows = [
            r
            async for r in engine.list_runs(
                status=args.status, workflow=args.workflow, parent=args.parent
            )
        ]
        print(f"{'RUN ID':<36}  {'WORKFLOW':<24} {'STATUS':<16} {'CREATED':<19}  PARENT")
        for r in rows:
            print(
                f"{r.run_id:<36}  {r.workflow:<24} {r.status:<16} {_ts(r.created_at)}  "
                f"{r.parent_run_id or '-'}"
            )
        print(f"({len(rows)} runs)")

    anyio.run(_with_engine, args, go)
    return 0


def cmd_runs_show(args: argparse.Namespace) -> int:
    async def go(engine: Any) -> None:
        r = await engine.get_run(args.run_id)
        print(f"run:       {r.run_id}\nworkflow:  {r.workflow}\nstatus:    {r.status}")
        print(f"key:       {r.key or '-'}\nparent:    {r.parent_run_id or '-'}")
        print(f"created:   {_ts(r.created_at)}\nclosed:    {_ts(r.closed_at)}")
        if r.status == "completed":
            print(f"result:    {json.dumps(r.result)}")
        if r.error is not None:
            print(f"error:     {r.error}")
        if r.block_reason:
            print(f"blocked:   {r.block_reason}")
        if r.continued_to:
            print(f"continued: {r.continued_to}")
        children = [c async for c in engine.list_runs(parent=r.run_id)]
        print(f"children:  {len(children)}")
        for c in children:
            print(f"  {c.run_id}  {c.workflow:<24} {c.status}")

    anyio.run(_with_engine, args, go)
    return 0


def cmd_runs_history(args: argparse.Namespace) -> int:
    from .kernel.codec import event_to_dict

    async def go(engine: Any) -> None:
        events = await engine.history(args.run_id)
        if args.json:
            print(json.dumps([event_to_dict(e) for e in events], indent=2))
            return
        for i, e in enumerate(events):
            d = event_to_dict(e)
            kind = d.pop("type")
            body = " ".join(f"{k}={json.dumps(v)}" for k, v in d.items())
            print(f"{i:4d}  {kind:<26} {body}")

    anyio.run(_with_engine, args, go)
    return 0


def cmd_hooks_resume(args: argparse.Namespace) -> int:
    try:
        payload = json.loads(args.payload)
    except ValueError as exc:
        raise CliError(f"payload is not valid JSON: {exc}") from exc

    async def go(engine: Any) -> None:
        run_id = await engine.resume_hook(args.token, payload)
        print(f"delivered to run {run_id}")

    anyio.run(_with_engine, args, go)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    async def go(engine: Any) -> None:
        ok = await engine.cancel(args.run_id, args.reason)
        print("cancel requested" if ok else "run is already closed")

    anyio.run(_with_engine, args, go)
    return 0


def cmd_terminate(args: argparse.Namespace) -> int:
    async def go(engine: Any) -> None:
        ok = await engine.terminate(args.run_id, args.reason)
        print("terminated" if ok else "run is already closed")

    anyio.run(_with_engine, args, go)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from ._bench import WORKLOADS, main_bench

    names = args.workloads.split(",") if args.workloads else list(WORKLOADS)
    backend = args.backend or os.environ.get("PLAIT_BACKEND") or "sqlite:///./.plait/bench.db"
    return main_bench(backend, names, args.repeat, args.size, args.json)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="plait", description="durable workflows for Python")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--backend", help=f"backend URL (default $PLAIT_BACKEND or {DEFAULT_BACKEND})"
    )
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", parents=[common], help="run the demo document batch")
    d.add_argument("--docs", type=int, default=12, help="number of documents (default 12)")
    d.set_defaults(fn=cmd_demo)

    b = sub.add_parser("bench", parents=[common], help="run benchmark workloads")
    b.add_argument(
        "--workloads",
        help="comma-separated (sequential,concurrent,fanout,timers,hooks,replay); default all",
    )
    b.add_argument("--repeat", type=int, default=5, help="runs per workload (median reported)")
    b.add_argument("--size", type=int, default=None, help="override the workload size")
    b.add_argument("--json", action="store_true", help="print the report as JSON")
    b.set_defaults(fn=cmd_bench)

    w = sub.add_parser("worker", parents=[common], help="run a worker for MODULE[:ATTR]")
    w.add_argument("target", metavar="MODULE[:ATTR]")
    w.add_argument("--concurrency", type=int, default=64)
    w.set_defaults(fn=cmd_worker)

    runs = sub.add_parser("runs", help="inspect runs")
    rs = runs.add_subparsers(dest="runs_command", required=True)
    rl = rs.add_parser("list", parents=[common], help="list runs")
    rl.add_argument("--status")
    rl.add_argument("--workflow")
    rl.add_argument("--parent")
    rl.set_defaults(fn=cmd_runs_list)
    rsh = rs.add_parser("show", parents=[common], help="show one run")
    rsh.add_argument("run_id")
    rsh.set_defaults(fn=cmd_runs_show)
    rh = rs.add_parser("history", parents=[common], help="print a run's history")
    rh.add_argument("run_id")
    rh.add_argument("--json", action="store_true")
    rh.set_defaults(fn=cmd_runs_history)

    hooks = sub.add_parser("hooks", help="hooks")
    hs = hooks.add_subparsers(dest="hooks_command", required=True)
    hr = hs.add_parser("resume", parents=[common], help="resume a hook with a JSON payload")
    hr.add_argument("token")
    hr.add_argument("payload", metavar="JSON")
    hr.set_defaults(fn=cmd_hooks_resume)

    c = sub.add_parser("cancel", parents=[common], help="request cancellation of a run")
    c.add_argument("run_id")
    c.add_argument("--reason", default="")
    c.set_defaults(fn=cmd_cancel)
    t = sub.add_parser("terminate", parents=[common], help="terminate a run now")
    t.add_argument("run_id")
    t.add_argument("--reason", default="")
    t.set_defaults(fn=cmd_terminate)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from .backends.base import BackendError
    from .kernel.errors import PlaitError

    args = build_parser().parse_args(argv)
    if args.command == "runs" and getattr(args, "status", None):
        from .kernel.status import RunStatus

        valid = [s.value for s in RunStatus]
        if args.status not in valid:
            print(
                f"plait: error: unknown status {args.status!r} (one of {', '.join(valid)})",
                file=sys.stderr,
            )
            return 1
    try:
        return int(args.fn(args))
    except (CliError, PlaitError, BackendError, ValueError, LookupError, TypeError, OSError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"plait: error: {msg}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
