"""``plait demo``: a document batch that shows children, completion hooks, durable timers,
retries and a tolerant batch, on the embedded SQLite default."""

from __future__ import annotations

import hashlib
import sys
import time
from typing import Any, TextIO

import anyio

import plait

DOCS = 12


def _h(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


@plait.step(name="demo.extract")
async def extract(doc_id: str) -> dict[str, Any]:
    await anyio.sleep(0.01)  # pretend to fetch and parse
    return {"doc": doc_id, "words": 100 + _h(doc_id) % 900}


@plait.step(
    name="demo.classify",
    retry=plait.RetryPolicy(max_attempts=3, initial_interval=0.05, backoff=2.0),
)
async def classify(doc_id: str, words: int) -> str:
    info = plait.step_info()
    if _h(doc_id) % 3 == 0 and info.attempt == 1:
        raise ConnectionError(f"classifier busy for {doc_id}")  # retried
    return "long" if words > 500 else "short"


@plait.step(
    name="demo.audit",
    retry=plait.RetryPolicy(max_attempts=2, initial_interval=0.05, non_retryable=(ValueError,)),
)
async def audit(doc_id: str) -> str:
    if _h(doc_id + "audit") % 4 == 0:
        raise ValueError(f"{doc_id} failed the audit")
    return f"{doc_id} ok"


@plait.workflow(name="demo.document")
async def document(doc_id: str, report_to: str) -> dict[str, Any]:
    parsed = await extract(doc_id)
    await plait.sleep(0.3)  # a durable timer: survives a crash of the worker
    label = await classify(doc_id, parsed["words"])
    await plait.resume_hook(report_to, {"doc": doc_id, "label": label})  # completion hook
    return {"doc": doc_id, "label": label, "words": parsed["words"]}


@plait.workflow(name="demo.audit")
async def audited(doc_id: str) -> str:
    return await audit(doc_id)


@plait.workflow(name="demo.batch")
async def batch(doc_ids: list[str]) -> dict[str, Any]:
    done = plait.hook()  # each child reports here when it finishes
    prefix = plait.info().run_id[:8]
    await plait.all(
        *(plait.start_child(document, d, done.token, key=f"{prefix}-{d}") for d in doc_ids)
    )
    labels: dict[str, str] = {}
    async for report in done:
        labels[report["doc"]] = report["label"]
        if len(labels) == len(doc_ids):
            done.close()
    settled = await plait.all_settled(*(plait.child(audited, d) for d in doc_ids))
    return {
        "documents": len(labels),
        "long": sum(1 for v in labels.values() if v == "long"),
        "audits_ok": sum(1 for s in settled if isinstance(s, plait.Ok)),
        "audits_failed": sum(1 for s in settled if isinstance(s, plait.Err)),
    }


WORKFLOWS = [batch, document, audited]
STEPS = [extract, classify, audit]


async def _progress(engine: plait.Engine, run_id: str, started: float, out: TextIO) -> None:
    tty = out.isatty()
    last = ""
    while True:
        counts: dict[str, int] = {}
        async for child in engine.list_runs(parent=run_id):
            counts[child.status] = counts.get(child.status, 0) + 1
        total = sum(counts.values())
        line = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "starting"
        if tty:
            out.write(
                f"\r  {time.perf_counter() - started:5.2f}s  children: {total:3d} ({line})   "
            )
        elif line != last:
            out.write(f"  {time.perf_counter() - started:5.2f}s  children: {total:3d} ({line})\n")
        last = line
        out.flush()
        await anyio.sleep(0.2)


async def _tree(engine: plait.Engine, run_id: str, out: TextIO, indent: str = "") -> None:
    rec = await engine.get_run(run_id)
    took = f"{(rec.closed_at or rec.created_at) - rec.created_at:6.2f}s"
    extra = f"  {rec.error}" if rec.error else ""
    out.write(f"{indent}{rec.workflow:<16} {rec.status:<10} {took}  {rec.run_id}{extra}\n")
    async for child in engine.list_runs(parent=run_id):
        await _tree(engine, child.run_id, out, indent + "  ")


async def run_demo(backend: str, docs: int = DOCS, out: TextIO = sys.stdout) -> dict[str, Any]:
    ids = [f"doc-{i:03d}" for i in range(docs)]
    async with plait.Engine(backend) as engine:
        out.write(f"plait demo on {backend}: {docs} documents, each a child run\n")
        started = time.perf_counter()
        run = await engine.start(batch, ids)
        async with engine.worker(WORKFLOWS, STEPS, concurrency=32):
            async with anyio.create_task_group() as tg:
                tg.start_soon(_progress, engine, run.run_id, started, out)
                result = await run.result(timeout=120)
                tg.cancel_scope.cancel()
        elapsed = time.perf_counter() - started
        out.write(f"\n\nresult: {result}\n\nrun tree:\n")
        await _tree(engine, run.run_id, out, "  ")
        steps = 0
        async for child in engine.list_runs(parent=run.run_id):
            steps += sum(
                1 for e in await engine.history(child.run_id) if type(e).__name__ == "StepCompleted"
            )
        out.write(
            f"\ntimings: {elapsed:.2f}s wall, {steps} steps, "
            f"{docs * 2 + 1} runs, history of the batch: "
            f"{len(await engine.history(run.run_id))} events\n"
        )
        return dict(result)
