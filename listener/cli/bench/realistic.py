"""``warm-start``, ``defaults``, ``mixed`` and ``foreign-kinds``: pgwake as a new user
runs it, with the worker started first, the settings left alone, producers inserting
beside it, and tenants whose jobs it does not handle.

- ``warm-start``: a worker (default settings) starts on an empty queue; 20 single jobs
  arrive 0.1 s apart (the trickle), then N no-op jobs (default 100,000) over 100 tenants
  in one statement (the burst). Reports the burst's drain rate (first claim to last
  finish), the longest gap between two of its claims (an upper bound on the slowest
  claim: it also holds the running of the jobs of the claim before) and the slowest
  claim itself (the bound of the lowest bucket of the worker's
  ``pgwake_claim_duration_seconds`` that holds every claim), for that ``warm`` worker
  and for a ``fresh`` one started after the burst.
- ``defaults``: no setting changed. The drain of 20,000 no-op jobs over 10 tenants (and
  the same with the tuned drain settings, the best any setting gives); one tenant's
  backlog of 1 ms jobs (and the same with ``tenant_concurrency`` = ``concurrency``),
  and of 10 ms and 100 ms jobs, each also as a share of the rate the slots a lone
  tenant may use allow (``of_ideal``: jobs/s x the nominal job duration / those
  slots) and as the share of those slots its jobs kept busy (``busy``: jobs/s x the
  jobs' mean duration as the worker measured it / those slots; a sleep of 1 ms takes
  longer on any event loop);
  a small tenant's start latency while a big tenant's 20,000 jobs of 1 ms drain (as in
  ``fairness``); and the idle wake-up latency (as in ``latency``).
- ``mixed``: 8 producers insert single jobs as fast as they can for some seconds while
  one worker (default settings) runs them: the start latency of their jobs (producer's
  clock after commit to the handler's first line, p50 and p99) and their insert rate,
  beside the same producers' rate with no worker running, and beside the two raw-SQL
  reference workers of raw_worker.py (two writes per job, as a crash-safe queue must;
  one write, the bound of not writing claims), so that what the machine allows is
  measured in the same rounds. Also each worker process's own CPU time per job
  committed while the producers ran (its client side, not its database sessions'): a
  steadier figure than the share, which the machine's noise moves by several points
  from one run to the next.
- ``foreign-kinds``: 10,000 tenants hold one job each of a kind the worker has no
  handler for; jobs of a handled kind are then committed one at a time, each in one of
  those tenants, while the worker (default settings) idles: their start latency.

Invariant: as everywhere in the benchmarks, every run has a database of its own and
real ``pgwake run`` processes, and the figures are medians over interleaved rounds.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace

import anyio
import asyncpg

from listener import db
from listener.cli.bench.common import (
    BENCH_HANDLERS,
    bench_database,
    child_env,
    free_port,
    interleaved_medians,
    mean_observed,
    ms,
    percentile,
    process_cpu_seconds,
    scrape,
    slowest_bucket,
    stop_processes,
    wait_all_finished,
    wait_queue_empty,
    worker_processes,
)
from listener.cli.bench.fairness import fairness_run
from listener.cli.bench.latency import latency_run
from listener.cli.bench.queries import BENCH_QUERIES
from listener.config import Settings
from listener.errors import PgwakeError
from listener.shares import TenantShares

TRICKLE_JOBS = 20
TRICKLE_INTERVAL = 0.1
BURST_TENANTS = 100
# The tuned settings of the drain benchmark: the best drain any settings give.
TUNED: dict[str, int] = {"concurrency": 2000, "tenant_concurrency": 2000, "claim_batch": 1000}
SLEEP_1MS = {"seconds": 0.001}
# The lone-tenant drains of ``defaults``: each case's job duration (seconds). The 1 ms
# case drains ``--single-jobs`` jobs; the longer ones as many as the slots a lone tenant
# may use run in LONE_SECONDS at their ideal rate (4,500 of 10 ms, 450 of 100 ms), and
# never more than ``--single-jobs``.
LONE_SLEEPS = {"one-tenant": 0.001, "one-tenant-10ms": 0.01, "one-tenant-100ms": 0.1}
LONE_SECONDS = 1.5


# The settings a new user runs with.
DEFAULT_CONCURRENCY: int = Settings.model_fields["concurrency"].default
DEFAULT_TENANT_CONCURRENCY: int = Settings.model_fields["tenant_concurrency"].default


def lone_tenant_slots() -> int:
    """The slots a tenant alone with a backlog may use with the default settings:
    ``tenant_concurrency`` plus what it borrows (30 of 32)."""
    shares = TenantShares(
        concurrency=DEFAULT_CONCURRENCY, tenant_concurrency=DEFAULT_TENANT_CONCURRENCY
    )
    return DEFAULT_TENANT_CONCURRENCY + shares.lone_extra


@dataclass(frozen=True, slots=True)
class WarmStartRun:
    """The drain of a burst by a worker that saw the queue empty first, or by a fresh one."""

    worker: str
    jobs: int
    tenants: int
    seconds: float
    jobs_per_s: float
    longest_claim_gap_ms: float
    slowest_claim_ms: float


async def warm_start_run(server_dsn: str, worker: str, *, jobs: int) -> WarmStartRun:
    """``worker`` is ``warm`` (started on an empty queue, then a trickle, then the
    burst) or ``fresh`` (started after the burst)."""
    port = free_port()
    async with bench_database(server_dsn) as dsn:
        conn = await db.connect(dsn)
        try:
            if worker == "warm":
                async with worker_processes(dsn, metrics_addr=f"127.0.0.1:{port}"):
                    for _ in range(TRICKLE_JOBS):
                        await conn.execute(BENCH_QUERIES["job_enqueue_one"], "trickle")
                        await anyio.sleep(TRICKLE_INTERVAL)
                    await wait_queue_empty(conn, timeout=60)
                    await conn.execute(BENCH_QUERIES["job_enqueue_spread"], 0, jobs, BURST_TENANTS)
                    await wait_queue_empty(conn, timeout=1800)
                    metrics = await scrape(port)
            else:
                await conn.execute(BENCH_QUERIES["job_enqueue_spread"], 0, jobs, BURST_TENANTS)
                async with worker_processes(dsn, metrics_addr=f"127.0.0.1:{port}"):
                    await wait_queue_empty(conn, timeout=1800)
                    metrics = await scrape(port)
            seconds: float = await conn.fetchval(BENCH_QUERIES["job_measure_drain_of"], "bench-t")
            gap: float = await conn.fetchval(BENCH_QUERIES["job_measure_claim_gap"], "bench-t")
        finally:
            await conn.close()
    return WarmStartRun(
        worker=worker,
        jobs=jobs,
        tenants=BURST_TENANTS,
        seconds=round(seconds, 3),
        jobs_per_s=round(jobs / seconds),
        longest_claim_gap_ms=ms(gap),
        slowest_claim_ms=ms(slowest_bucket(metrics, "pgwake_claim_duration_seconds") * 1000),
    )


async def warm_start(server_dsn: str, *, jobs: int, repeat: int) -> list[WarmStartRun]:
    """Warm and fresh workers, ``repeat`` interleaved rounds, medians."""
    return await interleaved_medians(
        ("warm", "fresh"), repeat, lambda worker: warm_start_run(server_dsn, worker, jobs=jobs)
    )


def render_warm_start(runs: Sequence[WarmStartRun]) -> str:
    """Warm-start figures as a table."""
    head = (
        f"{'worker':<6} {'jobs':>7} {'tenants':>7} {'seconds':>8} {'jobs/s':>8} {'gap ms':>7} "
        f"{'slowest claim ms':>16}"
    )
    lines = [head]
    lines += [
        f"{r.worker:<6} {r.jobs:>7} {r.tenants:>7} {r.seconds:>8g} {r.jobs_per_s:>8g} "
        f"{r.longest_claim_gap_ms:>7g} {'<= ' + format(r.slowest_claim_ms, 'g'):>16}"
        for r in runs
    ]
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class DefaultsRun:
    """One case of the ``defaults`` workload: a rate, or latencies, or both."""

    case: str
    settings: str
    jobs: int
    jobs_per_s: float | None
    p50_ms: float | None
    p99_ms: float | None
    # A lone tenant's drain with the defaults as a share of (its slots / job duration),
    # and the share of its slots its jobs kept busy (by their measured duration).
    of_ideal: float | None = None
    busy: float | None = None


async def _drain(
    server_dsn: str,
    *,
    jobs: int,
    tenants: int,
    kind: str,
    payload: dict[str, float],
    settings: dict[str, int],
) -> tuple[float, float]:
    """Jobs/s of one worker draining ``jobs`` jobs over ``tenants`` tenants enqueued in
    one statement once it is ready, and the mean duration of those jobs (seconds, as
    the worker measured them)."""
    port = free_port()
    async with (
        bench_database(server_dsn) as dsn,
        worker_processes(dsn, 1, metrics_addr=f"127.0.0.1:{port}", **settings),
    ):
        conn = await db.connect(dsn)
        try:
            if tenants == 1:
                await conn.execute(
                    BENCH_QUERIES["job_enqueue_many"], "bench-t0", kind, jobs, payload
                )
            else:
                await conn.execute(BENCH_QUERIES["job_enqueue_spread"], 0, jobs, tenants)
            await wait_queue_empty(conn, timeout=1800)
            seconds: float = await conn.fetchval(BENCH_QUERIES["job_measure_drain"])
            mean = mean_observed(await scrape(port), "pgwake_job_duration_seconds")
        finally:
            await conn.close()
    return round(jobs / seconds), mean


DEFAULTS_CASES = (
    "drain",
    "drain-tuned",
    "one-tenant",
    "one-tenant-all-slots",
    "one-tenant-10ms",
    "one-tenant-100ms",
    "small-beside-big",
    "idle-wake",
)


async def defaults_run(
    server_dsn: str,
    case: str,
    *,
    jobs: int,
    single_jobs: int,
    big_jobs: int,
    small_jobs: int,
    wake_jobs: int,
) -> DefaultsRun:
    """One case of the ``defaults`` workload."""
    if case in ("drain", "drain-tuned"):
        tuned = TUNED if case == "drain-tuned" else {}
        rate, _ = await _drain(
            server_dsn, jobs=jobs, tenants=10, kind="noop", payload={}, settings=tuned
        )
        return DefaultsRun(case, "tuned" if tuned else "defaults", jobs, rate, None, None)
    if case == "one-tenant-all-slots":
        wide = {"tenant_concurrency": DEFAULT_CONCURRENCY}
        rate, _ = await _drain(
            server_dsn, jobs=single_jobs, tenants=1, kind="sleep", payload=SLEEP_1MS, settings=wide
        )
        return DefaultsRun(
            case, f"tenant_concurrency={wide['tenant_concurrency']}", single_jobs, rate, None, None
        )
    if case in LONE_SLEEPS:
        seconds = LONE_SLEEPS[case]
        slots = lone_tenant_slots()
        count = min(single_jobs, round(slots / seconds * LONE_SECONDS))
        rate, mean = await _drain(
            server_dsn,
            jobs=count,
            tenants=1,
            kind="sleep",
            payload={"seconds": seconds},
            settings={},
        )
        of_ideal = round(rate * seconds / slots, 3)
        busy = round(rate * mean / slots, 3)
        return DefaultsRun(case, "defaults", count, rate, None, None, of_ideal, busy)
    if case == "small-beside-big":
        run = await fairness_run(
            server_dsn,
            "fair",
            big_jobs=big_jobs,
            small_jobs=small_jobs,
            small_interval=0.1,
            concurrency=None,
        )
        return DefaultsRun(
            case,
            "defaults",
            run.small_jobs,
            None,
            run.small_during_drain_p50_ms,
            run.small_during_drain_p99_ms,
        )
    wake = await latency_run(server_dsn, jobs=wake_jobs, interval=0.05)
    return DefaultsRun(case, "defaults", wake.jobs, None, wake.p50_ms, wake.p99_ms)


async def defaults(
    server_dsn: str,
    *,
    jobs: int,
    single_jobs: int,
    big_jobs: int,
    small_jobs: int,
    wake_jobs: int,
    repeat: int,
) -> list[DefaultsRun]:
    """Every case, ``repeat`` interleaved rounds, medians."""
    return await interleaved_medians(
        DEFAULTS_CASES,
        repeat,
        lambda case: defaults_run(
            server_dsn,
            case,
            jobs=jobs,
            single_jobs=single_jobs,
            big_jobs=big_jobs,
            small_jobs=small_jobs,
            wake_jobs=wake_jobs,
        ),
    )


def render_defaults(runs: Sequence[DefaultsRun]) -> str:
    """The ``defaults`` cases as a table."""

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:g}"

    head = (
        f"{'case':<21} {'settings':<22} {'jobs':>6} {'jobs/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'of ideal':>8} {'busy':>6}"
    )
    lines = [head]
    lines += [
        f"{r.case:<21} {r.settings:<22} {r.jobs:>6} {fmt(r.jobs_per_s):>8} {fmt(r.p50_ms):>7} "
        f"{fmt(r.p99_ms):>7} {fmt(r.of_ideal):>8} {fmt(r.busy):>6}"
        for r in runs
    ]
    return "\n".join(lines)


# What runs the producers' jobs in ``mixed``: nothing, a pgwake worker with the defaults,
# or one of the raw-SQL reference workers (raw_worker.py).
MIXED_WORKERS = ("none", "pgwake", "two-writes", "one-write")


@dataclass(frozen=True, slots=True)
class MixedRun:
    """Producers inserting single jobs, with a worker running them or none.

    ``share`` is the producers' rate as a share of their rate with no worker (the
    medians of the same rounds); ``None`` for the run with no worker.
    ``worker_cpu_us_per_job`` is the CPU time the worker process used while the
    producers ran, in microseconds per job they committed (``None`` with no worker, or
    where ``/proc`` cannot tell)."""

    worker: str
    producers: int
    seconds: float
    inserted: int
    rows_per_s: float
    start_p50_ms: float | None
    start_p99_ms: float | None
    share: float | None = None
    worker_cpu_us_per_job: float | None = None


async def _produce(dsn: str, *, producers: int, seconds: float) -> dict[int, float]:
    """``producers`` connections insert one bench.started job per statement for
    ``seconds``; the wall-clock time right after each commit, by job id."""
    conns = [await db.connect(dsn) for _ in range(producers)]
    committed: dict[int, float] = {}
    try:
        deadline = time.monotonic() + seconds

        async def insert(conn: asyncpg.Connection, tenant: str) -> None:
            stmt = await conn.prepare(BENCH_QUERIES["job_enqueue_started"])
            while time.monotonic() < deadline:
                job_id = await stmt.fetchval(tenant, {})
                committed[job_id] = time.time()

        async with anyio.create_task_group() as tg:
            for i, conn in enumerate(conns):
                tg.start_soon(insert, conn, f"producer-{i}")
    finally:
        for conn in conns:
            await conn.close()
    return committed


@asynccontextmanager
async def _running(dsn: str, worker: str) -> AsyncIterator[int]:
    """The worker ``worker`` names, running on ``dsn`` for the duration; gives its
    process id."""
    if worker == "pgwake":
        async with worker_processes(dsn, handlers=BENCH_HANDLERS) as (proc,):
            yield proc.pid
        return
    proc = subprocess.Popen(  # noqa: ASYNC220 - starting a process is quick; it runs on its own
        [sys.executable, "-m", "listener.cli.bench.raw_worker", worker],
        env=child_env(dsn),
        stdout=subprocess.PIPE,
    )
    said = proc.stdout
    try:
        # Its first line says it is connected: the producers start only then, as they
        # do only once a pgwake worker is registered.
        if said is None or await anyio.to_thread.run_sync(said.readline) != b"ready\n":
            raise PgwakeError(f"the raw-SQL worker ({worker}) did not start")
        yield proc.pid
    finally:
        stop_processes([proc])
        if said is not None:
            said.close()


async def mixed_run(server_dsn: str, worker: str, *, producers: int, seconds: float) -> MixedRun:
    """One run with ``worker`` (one of MIXED_WORKERS) running the producers' jobs."""
    waits: list[float] = []
    cpu_per_job: float | None = None
    async with bench_database(server_dsn) as dsn:
        if worker == "none":
            committed = await _produce(dsn, producers=producers, seconds=seconds)
        else:
            async with _running(dsn, worker) as pid:
                before = process_cpu_seconds(pid)
                committed = await _produce(dsn, producers=producers, seconds=seconds)
                after = process_cpu_seconds(pid)
                if before is not None and after is not None and committed:
                    cpu_per_job = round((after - before) / len(committed) * 1e6, 1)
                conn = await db.connect(dsn)
                try:
                    await wait_all_finished(conn, len(committed), timeout=600)
                    rows = await conn.fetch(BENCH_QUERIES["job_list_started"])
                finally:
                    await conn.close()
            waits = [(r["started"] - committed[r["id"]]) * 1000 for r in rows]
    return MixedRun(
        worker=worker,
        producers=producers,
        seconds=seconds,
        inserted=len(committed),
        rows_per_s=round(len(committed) / seconds),
        start_p50_ms=ms(percentile(waits, 50)) if waits else None,
        start_p99_ms=ms(percentile(waits, 99)) if waits else None,
        worker_cpu_us_per_job=cpu_per_job,
    )


async def mixed(server_dsn: str, *, producers: int, seconds: float, repeat: int) -> list[MixedRun]:
    """No worker, pgwake's, and the raw-SQL references, ``repeat`` interleaved rounds,
    medians; each with its share of the no-worker rate."""
    runs = await interleaved_medians(
        MIXED_WORKERS,
        repeat,
        lambda worker: mixed_run(server_dsn, worker, producers=producers, seconds=seconds),
    )
    alone = next(r.rows_per_s for r in runs if r.worker == "none")
    return [
        r if r.worker == "none" else replace(r, share=round(r.rows_per_s / alone, 3)) for r in runs
    ]


def render_mixed(runs: Sequence[MixedRun]) -> str:
    """The ``mixed`` runs as a table."""

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:g}"

    head = (
        f"{'worker':<10} {'producers':>9} {'rows/s':>8} {'share':>6} "
        f"{'start p50 ms':>12} {'p99 ms':>7} {'worker cpu us/job':>17}"
    )
    lines = [head]
    lines += [
        f"{r.worker:<10} {r.producers:>9} {r.rows_per_s:>8g} {fmt(r.share):>6} "
        f"{fmt(r.start_p50_ms):>12} {fmt(r.start_p99_ms):>7} "
        f"{fmt(r.worker_cpu_us_per_job):>17}"
        for r in runs
    ]
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class ForeignKindsRun:
    """Start latency of handled jobs among tenants that hold only other kinds."""

    tenants: int
    jobs: int
    p50_ms: float
    p99_ms: float
    max_ms: float


async def foreign_kinds_run(
    server_dsn: str, *, tenants: int, jobs: int, interval: float
) -> ForeignKindsRun:
    """One run: ``tenants`` tenants of another kind, then ``jobs`` handled jobs, one
    every ``interval`` seconds, each in a random one of those tenants."""
    async with bench_database(server_dsn) as dsn:
        conn = await db.connect(dsn)
        try:
            await conn.execute(BENCH_QUERIES["job_enqueue_foreign"], tenants, "bench.elsewhere")
            await conn.execute(BENCH_QUERIES["job_analyze"])
            async with worker_processes(dsn, handlers=BENCH_HANDLERS):
                enqueue = await conn.prepare(BENCH_QUERIES["job_enqueue_started"])
                committed: dict[int, float] = {}
                picks = random.Random(jobs)
                start = time.monotonic()
                for i in range(jobs):
                    await anyio.sleep(max(0.0, start + i * interval - time.monotonic()))
                    tenant = f"foreign-{picks.randrange(tenants)}"
                    job_id = await enqueue.fetchval(tenant, {})
                    committed[job_id] = time.time()
                await wait_all_finished(conn, jobs, timeout=600)
                rows = await conn.fetch(BENCH_QUERIES["job_list_started"])
        finally:
            await conn.close()
    waits = [(r["started"] - committed[r["id"]]) * 1000 for r in rows]
    return ForeignKindsRun(
        tenants=tenants,
        jobs=len(waits),
        p50_ms=ms(percentile(waits, 50)),
        p99_ms=ms(percentile(waits, 99)),
        max_ms=ms(max(waits)),
    )


async def foreign_kinds(
    server_dsn: str, *, tenants: int, jobs: int, repeat: int
) -> list[ForeignKindsRun]:
    """``repeat`` runs, medians."""
    return await interleaved_medians(
        ("run",),
        repeat,
        lambda _: foreign_kinds_run(server_dsn, tenants=tenants, jobs=jobs, interval=0.1),
    )


def render_foreign_kinds(runs: Sequence[ForeignKindsRun]) -> str:
    """The ``foreign-kinds`` figures as a table."""
    lines = [f"{'tenants':>7} {'jobs':>5} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}"]
    lines += [
        f"{r.tenants:>7} {r.jobs:>5} {r.p50_ms:>7g} {r.p99_ms:>7g} {r.max_ms:>7g}" for r in runs
    ]
    return "\n".join(lines)
