"""``fairness``: does a tenant with one job wait behind a tenant with 20,000?

Tenant ``big`` enqueues N jobs that each sleep 1 ms in one statement; then tenant
``small`` enqueues one job every 100 ms. Reports small's enqueue-to-start p50/p99 (all of
them, and those enqueued while big was still draining) and big's drain time, for the
fair claim, the FIFO claim, and small alone on an idle queue.

Invariant: small's wait is measured as in ``latency``: from the producer's wall clock
right after its insert committed to the wall clock at which the handler
(``bench.started``, sleeping 1 ms) started, both ``time.time()`` on this host. A job
cannot be claimed before its insert commits, so the producer's own commit (an fsync,
which this machine's disk now and then stretches to hundreds of milliseconds) is not
counted as time spent waiting in the queue. Big's drain time and whether a small job
came while big drained use the database clock (``created_at``, ``finished_at``).
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
    interleaved_medians,
    percentile,
    wait_all_finished,
    worker_processes,
)
from listener.cli.bench.queries import BENCH_QUERIES

SLEEP_1MS = {"seconds": 0.001}


@dataclass(frozen=True, slots=True)
class FairnessRun:
    """One run of the fairness workload."""

    mode: str
    small_jobs: int
    small_p50_ms: float
    small_p99_ms: float
    small_max_ms: float
    small_during_drain: int
    small_during_drain_p50_ms: float | None
    small_during_drain_p99_ms: float | None
    big_jobs: int
    big_drain_s: float | None


async def fairness_run(
    server_dsn: str,
    mode: str,
    *,
    big_jobs: int,
    small_jobs: int,
    small_interval: float,
    concurrency: int | None,
) -> FairnessRun:
    """One fairness run: ``mode`` is fair, fifo or idle (small alone). ``concurrency``
    None: the worker runs with the default settings."""
    async with bench_database(server_dsn, fifo_index=mode == "fifo") as dsn:
        order = "fifo" if mode == "fifo" else "fair"
        tuned = (
            {}
            if concurrency is None
            else {
                "concurrency": concurrency,
                "tenant_concurrency": concurrency,
                "claim_batch": concurrency,
            }
        )
        async with worker_processes(dsn, handlers=BENCH_HANDLERS, claim_order=order, **tuned):
            conn = await db.connect(dsn)
            try:
                if mode != "idle":
                    await conn.execute(
                        BENCH_QUERIES["job_enqueue_many"], "big", "sleep", big_jobs, SLEEP_1MS
                    )
                    # Fresh statistics, as autovacuum would give a queue this size, so
                    # neither claim runs on the plan for an empty table.
                    await conn.execute(BENCH_QUERIES["job_analyze"])
                enqueue = await conn.prepare(BENCH_QUERIES["job_enqueue_started"])
                committed: dict[int, float] = {}
                start = time.monotonic()
                for i in range(small_jobs):
                    await anyio.sleep(max(0.0, start + i * small_interval - time.monotonic()))
                    job_id = await enqueue.fetchval("small", SLEEP_1MS)
                    committed[job_id] = time.time()
                total = small_jobs + (0 if mode == "idle" else big_jobs)
                await wait_all_finished(conn, total, timeout=600)
                rows = await conn.fetch(BENCH_QUERIES["job_list_times"])
                started = {
                    r["id"]: r["started"]
                    for r in await conn.fetch(BENCH_QUERIES["job_list_started"])
                }
            finally:
                await conn.close()
    small = [r for r in rows if r["tenant_id"] == "small"]
    big = [r for r in rows if r["tenant_id"] == "big"]
    wait_ms = {r["id"]: (started[r["id"]] - committed[r["id"]]) * 1000 for r in small}
    waits = list(wait_ms.values())
    big_drain: float | None = None
    during: list[float] = []
    if big:
        big_end = max(r["finished_at"] for r in big)
        big_drain = (big_end - min(r["created_at"] for r in big)).total_seconds()
        during = [wait_ms[r["id"]] for r in small if r["created_at"] < big_end]
    return FairnessRun(
        mode=mode,
        small_jobs=len(small),
        small_p50_ms=round(percentile(waits, 50), 2),
        small_p99_ms=round(percentile(waits, 99), 2),
        small_max_ms=round(max(waits), 2),
        small_during_drain=len(during),
        small_during_drain_p50_ms=round(percentile(during, 50), 2) if during else None,
        small_during_drain_p99_ms=round(percentile(during, 99), 2) if during else None,
        big_jobs=len(big),
        big_drain_s=round(big_drain, 3) if big_drain is not None else None,
    )


async def fairness(
    server_dsn: str,
    *,
    big_jobs: int,
    small_jobs: int,
    small_interval: float,
    concurrency: int,
    repeat: int = 1,
) -> list[FairnessRun]:
    """The fairness workload in its three modes, ``repeat`` rounds of all three
    (interleaved, so drift on the machine hits every mode alike); one run per mode
    holding the median of each figure over the rounds."""
    return await interleaved_medians(
        ("idle", "fair", "fifo"),
        repeat,
        lambda mode: fairness_run(
            server_dsn,
            mode,
            big_jobs=big_jobs,
            small_jobs=small_jobs,
            small_interval=small_interval,
            concurrency=concurrency,
        ),
    )


def render_fairness(runs: Sequence[FairnessRun]) -> str:
    """The runs as a table."""

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:g}"

    header = (
        f"{'mode':<6} {'small p50 ms':>12} {'small p99 ms':>12} {'max ms':>8} "
        f"{'during drain p50/p99 ms':>24} {'big drain s':>11}"
    )
    lines = [header]
    for run in runs:
        during = f"{fmt(run.small_during_drain_p50_ms)}/{fmt(run.small_during_drain_p99_ms)}"
        during = f"{during} (n={run.small_during_drain})"
        lines.append(
            f"{run.mode:<6} {run.small_p50_ms:>12g} {run.small_p99_ms:>12g} "
            f"{run.small_max_ms:>8g} {during:>24} {fmt(run.big_drain_s):>11}"
        )
    return "\n".join(lines)
