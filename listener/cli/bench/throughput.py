"""``drain``, ``scale`` and ``ceiling``: how fast a backlog of no-op jobs goes through.

- ``drain``: one worker process is started and ready; N no-op jobs (default 20,000 over
  10 tenants) are enqueued in one statement; the rate is N over the time from the first
  claim to the last finish (``max(finished_at) - min(started_at)``, database clock).
- ``scale``: the same drain with 1, 2 and 4 worker processes.
- ``ceiling``: no pgwake worker at all, the raw-SQL bound of this machine: one
  connection in a loop takes up to ``batch`` queued jobs with ``SELECT ... FOR UPDATE
  SKIP LOCKED`` and deletes them in the same transaction (two statements, one commit),
  at batch sizes 1, 10, 100 and 1,000.
  pgwake's drain is reported as a share of this rate at batch 100, taken in the same run.

Invariant: every run drains a database of its own with the same jobs (tenants
``bench-t0``... , kind ``noop``, payload ``{}``), so the rates are comparable.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from listener import db
from listener.cli.bench.common import (
    bench_database,
    interleaved_medians,
    wait_queue_empty,
    worker_processes,
)
from listener.cli.bench.queries import BENCH_QUERIES

CEILING_BATCHES = (1, 10, 100, 1000)
# The ceiling loop takes at most this many batches per size (batch 1 at 20,000 jobs
# would only measure commit latency for many seconds).
CEILING_MAX_BATCHES = 1000


@dataclass(frozen=True, slots=True)
class DrainRun:
    """One drain of a backlog of no-op jobs (payloads of ``payload_bytes`` as text, 0 for
    ``{}``)."""

    processes: int
    jobs: int
    tenants: int
    concurrency: int
    claim_batch: int
    seconds: float
    jobs_per_s: float
    payload_bytes: int = 0


async def drain_run(
    server_dsn: str,
    *,
    jobs: int,
    tenants: int,
    processes: int,
    concurrency: int,
    claim_batch: int,
    payload_bytes: int = 0,
) -> DrainRun:
    """One drain with ``processes`` workers, each at ``concurrency`` (also per tenant)."""
    async with (
        bench_database(server_dsn) as dsn,
        worker_processes(
            dsn,
            processes,
            concurrency=concurrency,
            tenant_concurrency=concurrency,
            claim_batch=claim_batch,
        ),
    ):
        conn = await db.connect(dsn)
        try:
            if payload_bytes:
                await conn.execute(
                    BENCH_QUERIES["job_enqueue_spread_payload"], 0, jobs, tenants, payload_bytes
                )
            else:
                await conn.execute(BENCH_QUERIES["job_enqueue_spread"], 0, jobs, tenants)
            await wait_queue_empty(conn, timeout=600)
            seconds: float = await conn.fetchval(BENCH_QUERIES["job_measure_drain"])
        finally:
            await conn.close()
    return DrainRun(
        processes=processes,
        jobs=jobs,
        tenants=tenants,
        concurrency=concurrency,
        claim_batch=claim_batch,
        seconds=round(seconds, 3),
        jobs_per_s=round(jobs / seconds),
        payload_bytes=payload_bytes,
    )


async def drain(
    server_dsn: str,
    *,
    jobs: int,
    tenants: int,
    concurrency: int,
    claim_batch: int,
    repeat: int,
    processes: Sequence[int] = (1,),
    payload_bytes: int = 0,
) -> list[DrainRun]:
    """Drains with each number of ``processes``, ``repeat`` rounds (interleaved); one
    row per number of processes holding the medians."""
    return await interleaved_medians(
        processes,
        repeat,
        lambda count: drain_run(
            server_dsn,
            jobs=jobs,
            tenants=tenants,
            processes=count,
            concurrency=concurrency,
            claim_batch=claim_batch,
            payload_bytes=payload_bytes,
        ),
    )


def render_drain(runs: Sequence[DrainRun]) -> str:
    """Drain rates as a table."""
    lines = [
        (
            f"{'processes':>9} {'jobs':>7} {'tenants':>7} {'concurrency':>11} {'batch':>5} "
            f"{'payload':>8} {'seconds':>8} {'jobs/s':>8}"
        )
    ]
    lines += [
        f"{r.processes:>9} {r.jobs:>7} {r.tenants:>7} {r.concurrency:>11} {r.claim_batch:>5} "
        f"{r.payload_bytes:>8} {r.seconds:>8g} {r.jobs_per_s:>8g}"
        for r in runs
    ]
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class CeilingRun:
    """The raw claim-and-delete loop at one batch size."""

    batch: int
    jobs: int
    seconds: float
    jobs_per_s: float


async def ceiling_run(server_dsn: str, *, batch: int, jobs: int, tenants: int) -> CeilingRun:
    """Take-and-delete ``jobs`` queued jobs, ``batch`` at a time, from one connection."""
    jobs = min(jobs, batch * CEILING_MAX_BATCHES)
    async with bench_database(server_dsn) as dsn:
        conn = await db.connect(dsn)
        try:
            await conn.execute(BENCH_QUERIES["job_enqueue_spread"], 0, jobs, tenants)
            await conn.execute(BENCH_QUERIES["job_analyze"])
            claim = await conn.prepare(BENCH_QUERIES["bench_ceiling_claim"])
            delete = await conn.prepare(BENCH_QUERIES["bench_ceiling_delete"])
            taken = 0
            began = time.perf_counter()
            while True:
                async with conn.transaction():
                    rows = await claim.fetch(batch)
                    if not rows:
                        break
                    await delete.fetch([row["id"] for row in rows])
                taken += len(rows)
            seconds = time.perf_counter() - began
        finally:
            await conn.close()
    return CeilingRun(
        batch=batch, jobs=taken, seconds=round(seconds, 3), jobs_per_s=round(taken / seconds)
    )


async def ceiling(
    server_dsn: str,
    *,
    jobs: int,
    tenants: int,
    repeat: int,
    batches: Sequence[int] = CEILING_BATCHES,
) -> list[CeilingRun]:
    """The ceiling at each batch size, ``repeat`` rounds (interleaved), medians."""
    return await interleaved_medians(
        batches,
        repeat,
        lambda batch: ceiling_run(server_dsn, batch=batch, jobs=jobs, tenants=tenants),
    )


def render_ceiling(runs: Sequence[CeilingRun]) -> str:
    """Ceiling rates as a table."""
    lines = [f"{'batch':>5} {'jobs':>7} {'seconds':>8} {'jobs/s':>8}"]
    lines += [f"{r.batch:>5} {r.jobs:>7} {r.seconds:>8g} {r.jobs_per_s:>8g}" for r in runs]
    return "\n".join(lines)
