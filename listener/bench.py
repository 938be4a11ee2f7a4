"""``pgwake bench``: workloads that measure what users care about.

Invariants:
- A benchmark never touches real jobs: it creates its own database on the server
  (``pgwake_bench_<random>``), migrates it, and drops it afterwards, also on failure.
- Workers run as real ``pgwake run`` processes, configured only through the
  environment, exactly as a user runs them.
- Latencies come from the database clock on both ends (``created_at`` at insert,
  ``started_at`` at claim), so producer and worker clocks cannot skew them.

Workloads:
- ``fairness``: tenant ``big`` enqueues N jobs that each sleep 1 ms in one statement;
  then tenant ``small`` enqueues one job every 100 ms. Reports small's enqueue-to-start
  p50/p99 (all of them, and those enqueued while big was still draining) and big's
  drain time, for the fair claim, the FIFO claim, and small alone on an idle queue.
- ``claim``: the cost of one fair claim at a small scale and at a large one (by
  default 1,000,000 queued jobs over 10,000 tenants): wall-clock p50/p99 per claim,
  measured in this process, and the shared buffers one claim touches (EXPLAIN
  ANALYZE, BUFFERS). The claims are real: each commits and marks its jobs running.
- ``retention``: claim latency on a queue of 100,000 jobs beside 1,000,000 finished
  ones past their retention, first alone, then while the retention pruner deletes all
  1,000,000 in batches; also how long the pruning took.
- ``recovery``: one worker holds 20 running jobs (each sleeps 5 s); a second worker is
  started; the first is killed with SIGKILL. Reports how long until the 20 jobs were
  put back (detection) and until the second worker had finished them all, with the
  default heartbeat and maintenance settings.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import anyio
import asyncpg

from listener import db
from listener.config import Settings
from listener.errors import PgwakeError
from listener.migrate import migrate
from listener.queries import QUERIES

SLEEP_1MS = {"seconds": 0.001}


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (``pct`` in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


@contextlib.asynccontextmanager
async def bench_database(server_dsn: str, *, fifo_index: bool = False) -> AsyncIterator[str]:
    """A fresh migrated database for one benchmark run; dropped afterwards.

    ``fifo_index`` adds the index only the FIFO comparison claim uses; other runs go
    without it so that it cannot sway their plans."""
    name = f"pgwake_bench_{uuid.uuid4().hex[:10]}"
    admin = await db.connect(server_dsn)
    try:
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        except asyncpg.InsufficientPrivilegeError:
            raise PgwakeError(
                "pgwake bench needs a role that may CREATE DATABASE: it runs in a database of "
                "its own so that it never touches real jobs"
            ) from None
        url = db.with_database(server_dsn, name)
        try:
            conn = await db.connect(url)
            try:
                await migrate(conn)
                if fifo_index:
                    await conn.execute(QUERIES["bench_create_fifo_index"])
            finally:
                await conn.close()
            yield url
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def worker_processes(
    dsn: str, count: int = 1, *, expect_registered: int | None = None, **settings: Any
) -> AsyncIterator[list[subprocess.Popen[bytes]]]:
    """``count`` real worker processes on ``dsn``, stopped on exit; on entry, wait until
    ``expect_registered`` workers (default ``count``) are registered in all."""
    # Only the benchmark's own settings: none of the caller's PGWAKE_ variables.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGWAKE_")}
    env |= {"PGWAKE_DSN": dsn, "PGWAKE_LOG_LEVEL": "error", "PGWAKE_METRICS_ADDR": "127.0.0.1:0"}
    for key, value in settings.items():
        env[f"PGWAKE_{key.upper()}"] = str(value)
    procs = [
        subprocess.Popen(  # noqa: ASYNC220 - starting a process is quick; it runs on its own
            [sys.executable, "-m", "listener", "run"], env=env, stdout=subprocess.DEVNULL
        )
        for _ in range(count)
    ]
    try:
        conn = await db.connect(dsn)
        try:
            deadline = time.monotonic() + 60
            want = count if expect_registered is None else expect_registered
            while await conn.fetchval(QUERIES["bench_workers_registered"]) < want:
                if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                    raise PgwakeError("benchmark workers did not start")
                await anyio.sleep(0.05)
        finally:
            await conn.close()
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def _wait_all_finished(conn: asyncpg.Connection, total: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while await conn.fetchval(QUERIES["bench_finished"]) < total:
        if time.monotonic() > deadline:
            raise PgwakeError(f"benchmark jobs did not finish within {timeout:.0f}s")
        await anyio.sleep(0.05)


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
    concurrency: int,
) -> FairnessRun:
    """One fairness run: ``mode`` is fair, fifo or idle (small alone)."""
    async with bench_database(server_dsn, fifo_index=mode == "fifo") as dsn:
        order = "fifo" if mode == "fifo" else "fair"
        async with worker_processes(
            dsn,
            concurrency=concurrency,
            tenant_concurrency=concurrency,
            claim_batch=concurrency,
            claim_order=order,
        ):
            conn = await db.connect(dsn)
            try:
                if mode != "idle":
                    await conn.execute(
                        QUERIES["bench_enqueue_many"], "big", "sleep", big_jobs, SLEEP_1MS
                    )
                    # Fresh statistics, as autovacuum would give a queue this size, so
                    # neither claim runs on the plan for an empty table.
                    await conn.execute(QUERIES["bench_analyze"])
                start = time.monotonic()
                for i in range(small_jobs):
                    await anyio.sleep(max(0.0, start + i * small_interval - time.monotonic()))
                    await conn.execute(
                        QUERIES["bench_enqueue_many"], "small", "sleep", 1, SLEEP_1MS
                    )
                total = small_jobs + (0 if mode == "idle" else big_jobs)
                await _wait_all_finished(conn, total, timeout=600)
                rows = await conn.fetch(QUERIES["bench_job_times"])
            finally:
                await conn.close()
    small = [r for r in rows if r["tenant_id"] == "small"]
    big = [r for r in rows if r["tenant_id"] == "big"]
    waits = [r["wait_ms"] for r in small]
    big_drain: float | None = None
    during: list[float] = []
    if big:
        big_end = max(r["finished_at"] for r in big)
        big_drain = (big_end - min(r["created_at"] for r in big)).total_seconds()
        during = [r["wait_ms"] for r in small if r["created_at"] < big_end]
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
    rounds: dict[str, list[FairnessRun]] = {"idle": [], "fair": [], "fifo": []}
    for _ in range(repeat):
        for mode, runs in rounds.items():
            runs.append(
                await fairness_run(
                    server_dsn,
                    mode,
                    big_jobs=big_jobs,
                    small_jobs=small_jobs,
                    small_interval=small_interval,
                    concurrency=concurrency,
                )
            )
    return [median_run(runs) for runs in rounds.values()]


def median_run(runs: Sequence[FairnessRun]) -> FairnessRun:
    """One run whose every figure is the median of that figure over ``runs``."""

    def med(values: list[Any]) -> Any:
        present = [v for v in values if v is not None]
        return round(statistics.median(present), 3) if present else None

    fields = asdict(runs[0])
    return FairnessRun(
        **{
            name: (fields[name] if name == "mode" else med([getattr(r, name) for r in runs]))
            for name in fields
        }
    )


@dataclass(frozen=True, slots=True)
class RetentionRun:
    """Claim latency with and without retention pruning alongside."""

    finished: int
    queued: int
    claims_alone: int
    alone_p50_ms: float
    alone_p99_ms: float
    claims_while_pruning: int
    pruning_p50_ms: float
    pruning_p99_ms: float
    pruning_max_ms: float
    pruned: int
    pruning_s: float


async def _time_claims(
    conn: asyncpg.Connection, worker: uuid.UUID, *, count: int | None, until: anyio.Event | None
) -> list[float]:
    """Claim 32 jobs at a time, one claim after another, ``count`` times or until
    ``until`` is set; the wall-clock time of each claim in milliseconds."""
    claim = await conn.prepare(QUERIES["job_claim"])
    times: list[float] = []
    cursor = ""
    while (count is None or len(times) < count) and (until is None or not until.is_set()):
        began = time.perf_counter()
        rows = await claim.fetch(worker, ["noop"], 32, 32, [], [], cursor)
        times.append((time.perf_counter() - began) * 1000)
        cursor = rows[-1]["walk_end"] or ""
    return times


async def retention_cost(
    server_dsn: str, *, finished: int = 1_000_000, queued: int = 100_000
) -> list[RetentionRun]:
    """The retention workload (see the module docstring)."""
    from listener.metrics import Metrics  # noqa: PLC0415 - only for this workload
    from listener.retention import Pruner  # noqa: PLC0415

    async with bench_database(server_dsn) as dsn:
        conn = await db.connect(dsn)
        pool = await db.create_pool(dsn, size=2)
        try:
            chunk = 100_000
            for first in range(0, finished, chunk):
                await conn.execute(
                    QUERIES["bench_insert_finished"], first, min(chunk, finished - first), 100
                )
            for first in range(0, queued, chunk):
                await conn.execute(
                    QUERIES["bench_enqueue_spread"], first, min(chunk, queued - first), 100
                )
            await conn.execute(QUERIES["bench_analyze"])
            worker = uuid.uuid4()
            await conn.execute(QUERIES["worker_register"], worker, "bench", 0, ["noop"], 32, None)
            alone = await _time_claims(conn, worker, count=300, until=None)
            pruner = Pruner(
                pool,
                Metrics(),
                {"succeeded": 86_400.0, "failed": 86_400.0, "cancelled": 86_400.0},
            )
            done = anyio.Event()
            pruned = 0
            began = time.monotonic()

            async def prune() -> None:
                nonlocal pruned
                try:
                    pruned = await pruner.prune()
                finally:
                    done.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(prune)
                during = await _time_claims(conn, worker, count=None, until=done)
            pruning_s = time.monotonic() - began
        finally:
            await pool.close()
            await conn.close()
    return [
        RetentionRun(
            finished=finished,
            queued=queued,
            claims_alone=len(alone),
            alone_p50_ms=round(percentile(alone, 50), 2),
            alone_p99_ms=round(percentile(alone, 99), 2),
            claims_while_pruning=len(during),
            pruning_p50_ms=round(percentile(during, 50), 2),
            pruning_p99_ms=round(percentile(during, 99), 2),
            pruning_max_ms=round(max(during), 2),
            pruned=pruned,
            pruning_s=round(pruning_s, 1),
        )
    ]


def render_retention(runs: Sequence[RetentionRun]) -> str:
    """The retention figures as a table."""
    lines = []
    for r in runs:
        lines += [
            f"{r.finished} finished jobs past retention, {r.queued} queued",
            (
                f"claims alone:        {r.claims_alone:>6}  p50 {r.alone_p50_ms:g} ms  "
                f"p99 {r.alone_p99_ms:g} ms"
            ),
            (
                f"claims while pruning: {r.claims_while_pruning:>5}  p50 {r.pruning_p50_ms:g} ms  "
                f"p99 {r.pruning_p99_ms:g} ms  max {r.pruning_max_ms:g} ms"
            ),
            f"pruned {r.pruned} in {r.pruning_s:g} s",
        ]
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class RecoveryRun:
    """One kill -9 of a worker holding jobs."""

    jobs: int
    detected_s: float
    finished_s: float


async def _held_by(conn: asyncpg.Connection, pid: int) -> int:
    held: int = await conn.fetchval(QUERIES["bench_jobs_held_by_pid"], pid)
    return held


async def recovery_run(server_dsn: str, *, jobs: int = 20, job_seconds: float = 5.0) -> RecoveryRun:
    """Kill -9 a worker holding ``jobs`` running jobs; time their recovery."""
    async with bench_database(server_dsn) as dsn:
        conn = await db.connect(dsn)
        try:
            settings = {"concurrency": jobs, "tenant_concurrency": jobs}
            async with worker_processes(dsn, **settings) as (victim,):
                await conn.execute(
                    QUERIES["bench_enqueue_many"], "t", "sleep", jobs, {"seconds": job_seconds}
                )
                deadline = time.monotonic() + 30
                while await _held_by(conn, victim.pid) < jobs:
                    if time.monotonic() > deadline:
                        raise PgwakeError("the first benchmark worker did not claim its jobs")
                    await anyio.sleep(0.01)
                async with worker_processes(dsn, expect_registered=2, **settings):
                    victim.kill()
                    killed = time.monotonic()
                    while await _held_by(conn, victim.pid):
                        if time.monotonic() > killed + 120:
                            raise PgwakeError("the killed worker's jobs were not recovered")
                        await anyio.sleep(0.01)
                    detected = time.monotonic() - killed
                    await _wait_all_finished(conn, jobs, timeout=120)
                    finished = time.monotonic() - killed
        finally:
            await conn.close()
    return RecoveryRun(jobs=jobs, detected_s=round(detected, 2), finished_s=round(finished, 2))


async def recovery(server_dsn: str, *, repeat: int) -> list[RecoveryRun]:
    """``repeat`` recovery runs, once the server has been up for the heartbeat timeout
    (before that, a killed worker is found only by the timeout: see workers_lost)."""
    conn = await db.connect(server_dsn)
    try:
        uptime: float = await conn.fetchval(QUERIES["bench_server_uptime"])
    finally:
        await conn.close()
    await anyio.sleep(max(0.0, Settings().heartbeat_timeout + 1 - uptime))
    return [await recovery_run(server_dsn) for _ in range(repeat)]


def render_recovery(runs: Sequence[RecoveryRun]) -> str:
    """The recovery runs as a table."""
    lines = [f"{'run':>3} {'jobs':>4} {'detected s':>10} {'all finished s':>14}"]
    lines += [
        f"{i:>3} {r.jobs:>4} {r.detected_s:>10g} {r.finished_s:>14g}" for i, r in enumerate(runs, 1)
    ]
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class ClaimScale:
    """Claim cost at one queue size."""

    tenants: int
    queued: int
    claims: int
    batch: int
    claimed: int
    p50_ms: float
    p99_ms: float
    buffers_per_claim: int


async def _claim_at_scale(
    server_dsn: str, *, tenants: int, queued: int, claims: int, batch: int
) -> ClaimScale:
    async with bench_database(server_dsn) as dsn:
        conn = await db.connect(dsn)
        try:
            chunk = 100_000  # keeps each statement's transition table small
            for first in range(0, queued, chunk):
                count = min(chunk, queued - first)
                await conn.execute(QUERIES["bench_enqueue_spread"], first, count, tenants)
            await conn.execute(QUERIES["bench_analyze"])
            worker = uuid.uuid4()
            await conn.execute(
                QUERIES["worker_register"], worker, "bench", 0, ["noop"], batch, None
            )
            claim = await conn.prepare(QUERIES["job_claim"])
            args: tuple[object, ...] = (worker, ["noop"], batch, batch, [], [])
            cursor = ""
            times: list[float] = []
            claimed = 0
            for _ in range(claims):
                began = time.perf_counter()
                rows = await claim.fetch(*args, cursor)
                times.append((time.perf_counter() - began) * 1000)
                summary = rows[-1]
                cursor = summary["walk_end"] or ""
                claimed += len(rows) - 1
            plan = await conn.fetchval(
                "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + QUERIES["job_claim"],
                *args,
                cursor,
            )
        finally:
            await conn.close()
    top = json.loads(plan)[0]["Plan"] if isinstance(plan, str) else plan[0]["Plan"]
    buffers = int(top.get("Shared Hit Blocks", 0)) + int(top.get("Shared Read Blocks", 0))
    return ClaimScale(
        tenants=tenants,
        queued=queued,
        claims=claims,
        batch=batch,
        claimed=claimed,
        p50_ms=round(percentile(times, 50), 2),
        p99_ms=round(percentile(times, 99), 2),
        buffers_per_claim=buffers,
    )


async def claim_cost(
    server_dsn: str, *, tenants: int, queued: int, claims: int, batch: int
) -> list[ClaimScale]:
    """Claim cost on a small queue (100 tenants, 100,000 jobs) and on the given one.

    The claims stay well inside either queue (``claims`` x ``batch`` jobs)."""
    scales = [(min(100, tenants), min(100_000, queued)), (tenants, queued)]
    return [
        await _claim_at_scale(server_dsn, tenants=t, queued=q, claims=claims, batch=batch)
        for t, q in dict.fromkeys(scales)
    ]


def render_claim(scales: Sequence[ClaimScale]) -> str:
    """The claim-cost figures as a table."""
    header = (
        f"{'tenants':>8} {'queued':>10} {'claims':>6} {'batch':>5} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'buffers/claim':>13}"
    )
    lines = [header]
    lines += [
        f"{s.tenants:>8} {s.queued:>10} {s.claims:>6} {s.batch:>5} "
        f"{s.p50_ms:>7g} {s.p99_ms:>7g} {s.buffers_per_claim:>13}"
        for s in scales
    ]
    return "\n".join(lines)


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


def as_json(
    results: dict[str, Sequence[Any]],
) -> str:
    """The results of each workload as JSON."""
    return json.dumps({name: [asdict(r) for r in rows] for name, rows in results.items()})
