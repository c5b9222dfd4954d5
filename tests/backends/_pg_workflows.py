"""Workflows shared by ``test_postgres.py`` and the worker processes it starts
(``_pg_worker_script.py``). Names are explicit so both sides agree whatever the module path."""

from __future__ import annotations

import anyio

import plait


@plait.step(name="pgtest.double")
async def double(x: int) -> int:
    return 2 * x


@plait.step(name="pgtest.add")
async def add(a: int, b: int) -> int:
    return a + b


@plait.step(name="pgtest.slow_inc")
async def slow_inc(x: int) -> int:
    await anyio.sleep(0.03)
    return x + 1


@plait.workflow(name="pgtest.child")
async def child(i: int) -> int:
    y = await double(i)
    return await add(y, 1)


@plait.workflow(name="pgtest.parent")
async def parent(n: int) -> int:
    a, b = await plait.all(
        plait.child(child, 2 * n, key=f"pgtest-{n}-a"), plait.child(child, 2 * n + 1)
    )
    return await add(a, b)


@plait.workflow(name="pgtest.chain")
async def chain(n: int) -> int:
    x = 0
    for _ in range(n):
        x = await slow_inc(x)
    return x


WORKFLOWS = [child, parent, chain]
STEPS = [double, add, slow_inc]


def parent_result(n: int) -> int:
    """What ``parent(n)`` returns."""
    return (2 * (2 * n) + 1) + (2 * (2 * n + 1) + 1)
