"""Every child-workflow pattern from docs/children.md, runnable: ``python child_patterns.py``.

Each pattern runs in a TimeSkippingEnvironment on memory:// (pass a backend URL as the first
argument to use another one, e.g. ``sqlite:///patterns.db``).
"""

from __future__ import annotations

import sys

import anyio

import plait
from plait.testing import TimeSkippingEnvironment


@plait.step
async def work(doc: str) -> str:
    if doc.startswith("bad"):
        raise ValueError(f"cannot process {doc}")
    return doc.upper()


# -- 1. fan-out with completion hooks (Vercel's startAndWait) -----------------------------------


@plait.workflow
async def reporting_child(doc: str, report_to: str) -> str:
    result = await work(doc)
    await plait.resume_hook(report_to, {"doc": doc, "result": result})
    return result


@plait.workflow
async def hook_batch(docs: list[str]) -> dict[str, str]:
    done = plait.hook()
    await plait.all(*(plait.start_child(reporting_child, d, done.token) for d in docs))
    reports: dict[str, str] = {}
    async for report in done:
        reports[report["doc"]] = report["result"]
        if len(reports) == len(docs):
            done.close()
    return reports


# -- 2. a tolerant batch ------------------------------------------------------------------------


@plait.workflow
async def one(doc: str) -> str:
    return await work(doc)


@plait.workflow
async def tolerant_batch(docs: list[str]) -> dict[str, list[str]]:
    settled = await plait.all_settled(*(plait.child(one, d) for d in docs))
    ok = [s.value for s in settled if isinstance(s, plait.Ok)]
    failed = [d for d, s in zip(docs, settled, strict=True) if isinstance(s, plait.Err)]
    return {"ok": ok, "failed": failed}


# -- 3. retrying a failed child with a fresh key ------------------------------------------------


@plait.workflow
async def flaky_child(doc: str, attempt: int) -> str:
    return await work(doc if attempt > 1 else f"bad-{doc}")


@plait.workflow
async def retry_child(doc: str) -> str:
    for attempt in range(1, 4):
        try:
            return await plait.child(flaky_child, doc, attempt, key=f"{doc}-try-{attempt}")
        except plait.ChildFailed:
            continue
    raise RuntimeError("gave up")


# -- 4. chunked fan-out -------------------------------------------------------------------------


@plait.workflow
async def chunked(n: int, chunk: int) -> int:
    done = 0
    for start in range(0, n, chunk):
        batch = [f"d{i}" for i in range(start, min(n, start + chunk))]
        done += len(await plait.all(*(plait.child(one, d) for d in batch)))
    return done


# -- 5. direct await (inline) vs start_child (its own run) --------------------------------------


@plait.workflow
async def inline_vs_child(doc: str) -> dict[str, str]:
    inline = await one(doc)  # runs inline: its step joins this run's history
    handle = await plait.start_child(one, doc)  # its own run, with its own history
    return {"inline": inline, "child": await handle.result(), "child_run": handle.run_id}


# -- 6. fire-and-forget that outlives its parent ------------------------------------------------


@plait.workflow
async def slow(doc: str) -> str:
    await plait.sleep(3600)
    return await work(doc)


@plait.workflow
async def fire_and_forget(doc: str) -> str:
    h = await plait.start_child(slow, doc, parent_close=plait.ParentClose.ABANDON)
    return h.run_id


# -- 7. parallel children keep argument order ---------------------------------------------------


@plait.workflow
async def wait_then(doc: str, seconds: float) -> str:
    await plait.sleep(seconds)
    return doc


@plait.workflow
async def ordered() -> list[str]:
    return await plait.all(
        *(plait.child(wait_then, d, 60 - 10 * i) for i, d in enumerate(["a", "b", "c", "d"]))
    )


# -- 8. REQUEST_CANCEL: the child cleans up -----------------------------------------------------


@plait.workflow
async def cleaning_child(doc: str) -> str:
    try:
        await plait.sleep(86_400)
        return "finished"
    except plait.Cancelled:
        await work(f"cleanup-{doc}")
        raise


@plait.workflow
async def parent_with_cancel(doc: str) -> str:
    await plait.start_child(cleaning_child, doc, parent_close=plait.ParentClose.REQUEST_CANCEL)
    await plait.sleep(10)
    return "parent done"


# -- 9. failure caught and uncaught; signalling a child -----------------------------------------


@plait.workflow
async def catches(doc: str) -> str:
    try:
        return await plait.child(one, f"bad-{doc}")
    except plait.ChildFailed as exc:
        return f"child {exc.run_id[:8]} failed: {exc.cause.message}"


@plait.workflow
async def waits_for_go() -> int:
    return int(await plait.signal("go"))


@plait.workflow
async def signaller() -> int:
    h = await plait.start_child(waits_for_go)
    await h.signal("go", 42)
    return int(await h.result())


WORKFLOWS = [
    reporting_child,
    hook_batch,
    one,
    tolerant_batch,
    flaky_child,
    retry_child,
    chunked,
    inline_vs_child,
    slow,
    fire_and_forget,
    wait_then,
    ordered,
    cleaning_child,
    parent_with_cancel,
    catches,
    waits_for_go,
    signaller,
]
STEPS = [work]


async def main(backend: str) -> None:
    async with TimeSkippingEnvironment(backend, WORKFLOWS, STEPS) as env:

        async def show(name: str, wf: object, *args: object) -> object:
            value = await (await env.start(wf, *args)).result()
            print(f"{name:<18} {value}")
            return value

        await show("hook batch", hook_batch, ["a", "b", "c"])
        await show("tolerant batch", tolerant_batch, ["a", "bad-b", "c"])
        await show("retry child", retry_child, "x")
        await show("chunked fan-out", chunked, 120, 20)
        r = await show("inline vs child", inline_vs_child, "y")
        assert isinstance(r, dict)
        run_id = await show("fire and forget", fire_and_forget, "z")
        await env.sleep(3600)
        print(f"{'  abandoned child':<18} {(await env.get_run(str(run_id))).status}")
        await show("argument order", ordered)
        await show("request cancel", parent_with_cancel, "w")
        await env.sleep(0)  # let the child process its cancel request
        async for c in env.list_runs(workflow=cleaning_child.name):
            print(f"{'  cancelled child':<18} {c.status}")
        await show("failure caught", catches, "v")
        await show("signal a child", signaller)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1] if len(sys.argv) > 1 else "memory://")
