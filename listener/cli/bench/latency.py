"""``latency``: how soon an idle worker starts a job after the producer's commit.

A worker (default settings) waits idle; a producer commits one job every 50 ms, 300 in
all, and notes the wall-clock time right after each commit returned; the job's handler
(``bench.started``) returns the wall-clock time at which it started, which the worker
stores as the job's result. Reports enqueue-to-start p50/p95/p99/max in milliseconds.

Invariant: both times come from ``time.time()`` on the same host (the worker processes
run beside the benchmark), so they share one clock; the figure includes the NOTIFY, the
wake-up, the claim and the dispatch to the handler.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import anyio

from listener import db
from listener.cli.bench.common import (
    BENCH_HANDLERS,
    bench_database,
    median_run,
    ms,
    percentile,
    wait_all_finished,
    worker_processes,
)
from listener.cli.bench.queries import BENCH_QUERIES


@dataclass(frozen=True, slots=True)
class LatencyRun:
    """Enqueue-to-start latency on an idle worker."""

    jobs: int
    interval_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float


async def latency_run(server_dsn: str, *, jobs: int, interval: float) -> LatencyRun:
    """One run: ``jobs`` jobs committed ``interval`` seconds apart."""
    async with bench_database(server_dsn) as dsn, worker_processes(dsn, handlers=BENCH_HANDLERS):
        conn = await db.connect(dsn)
        try:
            enqueue = await conn.prepare(BENCH_QUERIES["job_enqueue_started"])
            committed: dict[int, float] = {}
            start = time.monotonic()
            for i in range(jobs):
                await anyio.sleep(max(0.0, start + i * interval - time.monotonic()))
                job_id = await enqueue.fetchval("latency", {})
                committed[job_id] = time.time()
            await wait_all_finished(conn, jobs, timeout=120)
            rows = await conn.fetch(BENCH_QUERIES["job_list_started"])
        finally:
            await conn.close()
    waits = [(row["started"] - committed[row["id"]]) * 1000 for row in rows]
    return LatencyRun(
        jobs=len(waits),
        interval_ms=interval * 1000,
        p50_ms=ms(percentile(waits, 50)),
        p95_ms=ms(percentile(waits, 95)),
        p99_ms=ms(percentile(waits, 99)),
        max_ms=ms(max(waits)),
    )


async def latency(server_dsn: str, *, jobs: int, interval: float, repeat: int) -> list[LatencyRun]:
    """``repeat`` runs; one row of medians."""
    runs = [await latency_run(server_dsn, jobs=jobs, interval=interval) for _ in range(repeat)]
    return [median_run(runs)]


def render_latency(runs: Sequence[LatencyRun]) -> str:
    """Latency figures as a table."""
    lines = [f"{'jobs':>5} {'every ms':>8} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'max ms':>7}"]
    lines += [
        f"{r.jobs:>5} {r.interval_ms:>8g} {r.p50_ms:>7g} {r.p95_ms:>7g} {r.p99_ms:>7g} "
        f"{r.max_ms:>7g}"
        for r in runs
    ]
    return "\n".join(lines)
