"""``claim`` and ``retention``: what one fair claim costs, at scale and beside pruning.

- ``claim``: the cost of one fair claim at a small scale and at a large one (by default
  1,000,000 queued jobs over 10,000 tenants), and at the large one again with 1,000 of
  the tenants rate-limited (5 jobs a second each, so that the claims fill their windows
  and then pass them over): wall-clock p50/p99 per claim, measured in this process, and
  the shared buffers one claim touches (EXPLAIN ANALYZE, BUFFERS).
- ``retention``: claim latency on a queue of 100,000 jobs beside 1,000,000 finished ones
  past their retention, first alone, then while the retention pruner deletes all
  1,000,000 in batches; also how long the pruning took.
- ``history`` (part of ``scale``): claim latency on a queue over 10,000 tenants, alone
  and beside 1,000,000 finished jobs of those tenants (not yet past their retention),
  in rounds that alternate between the two databases.

Invariant: the claims are the real claim statements a worker runs (``job_claim_plain``
where no rate limit is set, ``job_claim`` beside the rate-limited tenants; ``job_claim``
for retention and history) from a registered worker: each commits and marks its jobs
running, exactly as a worker's claim does.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import anyio
import asyncpg

from listener import db
from listener.cli.bench.common import bench_database, interleaved_medians, ms, percentile
from listener.cli.bench.queries import BENCH_QUERIES
from listener.queries import QUERIES


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
    conn: asyncpg.Connection,
    worker: uuid.UUID,
    *,
    count: int | None,
    until: anyio.Event | None,
    batch: int = 32,
) -> list[float]:
    """Claim ``batch`` jobs at a time, one claim after another, ``count`` times or until
    ``until`` is set; the wall-clock time of each claim in milliseconds."""
    claim = await conn.prepare(QUERIES["job_claim"])
    times: list[float] = []
    cursor = ""
    while (count is None or len(times) < count) and (until is None or not until.is_set()):
        began = time.perf_counter()
        rows = await claim.fetch(worker, ["noop"], batch, batch, [], [], cursor)
        times.append((time.perf_counter() - began) * 1000)
        cursor = rows[-1]["walk_end"] or ""
    return times


async def retention_cost(
    server_dsn: str, *, finished: int = 1_000_000, queued: int = 100_000
) -> list[RetentionRun]:
    """The retention workload (see the module docstring)."""
    from listener.jobs import FINISHED  # noqa: PLC0415
    from listener.maintenance.retention import Pruner  # noqa: PLC0415
    from listener.metrics import Metrics  # noqa: PLC0415 - only for this workload

    async with bench_database(server_dsn) as dsn:
        conn = await db.connect(dsn)
        pool = await db.create_pool(dsn, size=2)
        try:
            chunk = 100_000
            for first in range(0, finished, chunk):
                await conn.execute(
                    BENCH_QUERIES["job_insert_finished"], first, min(chunk, finished - first), 100
                )
            for first in range(0, queued, chunk):
                await conn.execute(
                    BENCH_QUERIES["job_enqueue_spread"], first, min(chunk, queued - first), 100
                )
            await conn.execute(BENCH_QUERIES["job_analyze"])
            worker = uuid.uuid4()
            await conn.execute(QUERIES["worker_register"], worker, "bench", 0, ["noop"], 32, None)
            alone = await _time_claims(conn, worker, count=300, until=None)
            pruner = Pruner(
                pool,
                Metrics(),
                dict.fromkeys(FINISHED, 86_400.0),
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
    rate_limited: int = 0


# Tenants rate-limited at the third scale of ``claim``, and their limit per second.
RATE_LIMITED_TENANTS = 1000
RATE_LIMIT_PER_SECOND = 5


async def _claim_at_scale(
    server_dsn: str,
    *,
    tenants: int,
    queued: int,
    claims: int,
    batch: int,
    rate_limited: int = 0,
) -> ClaimScale:
    async with bench_database(server_dsn) as dsn:
        conn = await db.connect(dsn)
        try:
            chunk = 100_000  # keeps each statement's transition table small
            for first in range(0, queued, chunk):
                count = min(chunk, queued - first)
                await conn.execute(BENCH_QUERIES["job_enqueue_spread"], first, count, tenants)
            await conn.execute(BENCH_QUERIES["job_analyze"])
            await conn.execute(
                BENCH_QUERIES["tenant_limit_rate_spread"],
                min(rate_limited, tenants),
                tenants,
                RATE_LIMIT_PER_SECOND,
            )
            worker = uuid.uuid4()
            await conn.execute(
                QUERIES["worker_register"], worker, "bench", 0, ["noop"], batch, None
            )
            # What a worker runs: the plain claim, or the full one beside rate limits.
            statement = QUERIES["job_claim"] if rate_limited else QUERIES["job_claim_plain"]
            claim = await conn.prepare(statement)
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
                "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statement,
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
        rate_limited=min(rate_limited, tenants),
    )


async def claim_cost(
    server_dsn: str, *, tenants: int, queued: int, claims: int, batch: int
) -> list[ClaimScale]:
    """Claim cost on a small queue (100 tenants, 100,000 jobs) and on the given one.

    The claims stay well inside either queue (``claims`` x ``batch`` jobs)."""
    scales = [(min(100, tenants), min(100_000, queued), 0), (tenants, queued, 0)]
    scales.append((tenants, queued, RATE_LIMITED_TENANTS))
    return [
        await _claim_at_scale(
            server_dsn, tenants=t, queued=q, claims=claims, batch=batch, rate_limited=r
        )
        for t, q, r in dict.fromkeys(scales)
    ]


def render_claim(scales: Sequence[ClaimScale]) -> str:
    """The claim-cost figures as a table."""
    header = (
        f"{'tenants':>8} {'limited':>7} {'queued':>10} {'claims':>6} {'batch':>5} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'buffers/claim':>13}"
    )
    lines = [header]
    lines += [
        f"{s.tenants:>8} {s.rate_limited:>7} {s.queued:>10} {s.claims:>6} {s.batch:>5} "
        f"{s.p50_ms:>7g} {s.p99_ms:>7g} {s.buffers_per_claim:>13}"
        for s in scales
    ]
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class HistoryRun:
    """Claim latency with ``finished`` finished jobs in the table."""

    finished: int
    tenants: int
    queued: int
    claims: int
    batch: int
    p50_ms: float
    p99_ms: float


async def claim_history(
    server_dsn: str,
    *,
    finished: int,
    tenants: int,
    claims: int,
    batch: int,
    repeat: int,
) -> list[HistoryRun]:
    """Claims on a queue alone and beside ``finished`` finished jobs; ``repeat`` rounds
    alternating between the two, medians of each round's p50 and p99."""
    queued = 2 * claims * batch * repeat
    chunk = 100_000  # keeps each statement's transition table small
    async with bench_database(server_dsn) as empty, bench_database(server_dsn) as full:
        conns = {0: await db.connect(empty), finished: await db.connect(full)}
        try:
            workers = {}
            for history, conn in conns.items():
                for first in range(0, history, chunk):
                    await conn.execute(
                        BENCH_QUERIES["job_insert_finished"],
                        first,
                        min(chunk, history - first),
                        tenants,
                    )
                for first in range(0, queued, chunk):
                    count = min(chunk, queued - first)
                    await conn.execute(BENCH_QUERIES["job_enqueue_spread"], first, count, tenants)
                await conn.execute(BENCH_QUERIES["job_analyze"])
                workers[history] = uuid.uuid4()
                await conn.execute(
                    QUERIES["worker_register"], workers[history], "bench", 0, ["noop"], batch, None
                )

            async def one_round(history: int) -> HistoryRun:
                times = await _time_claims(
                    conns[history], workers[history], count=claims, until=None, batch=batch
                )
                return HistoryRun(
                    finished=history,
                    tenants=tenants,
                    queued=queued,
                    claims=claims,
                    batch=batch,
                    p50_ms=ms(percentile(times, 50)),
                    p99_ms=ms(percentile(times, 99)),
                )

            return await interleaved_medians(conns, repeat, one_round)
        finally:
            for conn in conns.values():
                await conn.close()


def render_history(runs: Sequence[HistoryRun]) -> str:
    """Claim latency with and without finished history, as a table."""
    lines = [
        (
            f"{'finished':>9} {'tenants':>7} {'queued':>7} {'claims':>6} {'batch':>5} "
            f"{'p50 ms':>7} {'p99 ms':>7}"
        )
    ]
    lines += [
        f"{r.finished:>9} {r.tenants:>7} {r.queued:>7} {r.claims:>6} {r.batch:>5} "
        f"{r.p50_ms:>7g} {r.p99_ms:>7g}"
        for r in runs
    ]
    return "\n".join(lines)
