"""``enqueue``: what an INSERT into pgwake.jobs costs, and what the NOTIFY trigger adds.

Two ways of enqueuing, each with the insert trigger on and with it disabled (so the
NOTIFY and job-event cost is visible), no worker running:

- ``single``: ``connections`` (default 8) concurrent connections each insert one job per
  statement (autocommit, a prepared plain INSERT, as an application does) for
  ``seconds``: rows/s over all of them.
- ``bulk``: one INSERT of ``rows`` (default 10,000) jobs sent as arrays (``unnest``), as an
  application enqueuing a batch does: rows/s of that statement, median of 5.

Invariant: the trigger is disabled only in the benchmark's own database (``ALTER TABLE
... DISABLE TRIGGER``), never anywhere else.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import anyio

from listener import db
from listener.bench.common import bench_database, median_run
from listener.queries import QUERIES

BULK_STATEMENTS = 5


@dataclass(frozen=True, slots=True)
class EnqueueRun:
    """Enqueue rates with the trigger on or off."""

    trigger: bool
    connections: int
    seconds: float
    single_rows: int
    single_rows_per_s: float
    bulk_rows: int
    bulk_rows_per_s: float


async def _single(dsn: str, *, connections: int, seconds: float) -> int:
    """Rows inserted one per statement by ``connections`` connections in ``seconds``."""
    conns = [await db.connect(dsn) for _ in range(connections)]
    counts = [0] * connections
    try:
        deadline = time.monotonic() + seconds

        async def insert(i: int) -> None:
            stmt = await conns[i].prepare(QUERIES["bench_enqueue_one"])
            tenant = f"bench-t{i}"
            while time.monotonic() < deadline:
                await stmt.fetch(tenant)
                counts[i] += 1

        async with anyio.create_task_group() as tg:
            for i in range(connections):
                tg.start_soon(insert, i)
    finally:
        for conn in conns:
            await conn.close()
    return sum(counts)


async def _bulk(dsn: str, *, rows: int) -> float:
    """Rows/s of one INSERT of ``rows`` jobs (median of BULK_STATEMENTS)."""
    conn = await db.connect(dsn)
    try:
        stmt = await conn.prepare(QUERIES["bench_enqueue_arrays"])
        tenants = [f"bench-t{i % 10}" for i in range(rows)]
        payloads = [{"n": i} for i in range(rows)]
        rates = []
        for _ in range(BULK_STATEMENTS):
            began = time.perf_counter()
            await stmt.fetch(tenants, "noop", payloads)
            rates.append(rows / (time.perf_counter() - began))
    finally:
        await conn.close()
    return statistics.median(rates)


async def enqueue_run(
    server_dsn: str, *, trigger: bool, connections: int, seconds: float, rows: int
) -> EnqueueRun:
    """Both ways of enqueuing with the trigger on or off, in a fresh database."""
    async with bench_database(server_dsn) as dsn:
        if not trigger:
            conn = await db.connect(dsn)
            try:
                await conn.execute(QUERIES["bench_disable_insert_trigger"])
            finally:
                await conn.close()
        single = await _single(dsn, connections=connections, seconds=seconds)
        bulk = await _bulk(dsn, rows=rows)
    return EnqueueRun(
        trigger=trigger,
        connections=connections,
        seconds=seconds,
        single_rows=single,
        single_rows_per_s=round(single / seconds),
        bulk_rows=rows,
        bulk_rows_per_s=round(bulk),
    )


async def enqueue(
    server_dsn: str, *, connections: int, seconds: float, rows: int, repeat: int
) -> list[EnqueueRun]:
    """With and without the trigger, ``repeat`` rounds (interleaved), medians."""
    rounds: dict[bool, list[EnqueueRun]] = {True: [], False: []}
    for _ in range(repeat):
        for trigger, runs in rounds.items():
            runs.append(
                await enqueue_run(
                    server_dsn, trigger=trigger, connections=connections, seconds=seconds, rows=rows
                )
            )
    return [median_run(runs) for runs in rounds.values()]


def render_enqueue(runs: Sequence[EnqueueRun]) -> str:
    """Enqueue rates as a table."""
    lines = [
        (
            f"{'trigger':<8} {'single-row inserts/s':>20} {'(connections)':>13} "
            f"{'bulk rows/s':>12} {'(rows)':>8}"
        )
    ]
    lines += [
        f"{'on' if r.trigger else 'off':<8} {r.single_rows_per_s:>20g} {r.connections:>13} "
        f"{r.bulk_rows_per_s:>12g} {r.bulk_rows:>8}"
        for r in runs
    ]
    return "\n".join(lines)
