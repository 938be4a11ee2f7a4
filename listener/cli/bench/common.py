"""What every benchmark workload shares: its own database, real worker processes,
percentiles and medians.

Invariants:
- A benchmark never touches real jobs: each run creates its own database on the server
  (``pgwake_bench_<random>``), migrates it, and drops it afterwards, also on failure.
- Workers run as real ``pgwake run`` processes (``python -m listener run``), configured
  only through the environment, exactly as a user runs them; none of the caller's
  ``PGWAKE_`` variables leak into them.
- A figure reported "over ``--repeat`` runs" is the median of that figure over the runs.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, TypeVar

import anyio
import asyncpg
from prometheus_client.parser import text_string_to_metric_families

from listener import db
from listener.cli.bench.queries import BENCH_QUERIES
from listener.errors import PgwakeError
from listener.migrate import migrate

# The job kinds of the benchmarks that need a handler of their own (see handlers.py).
BENCH_HANDLERS = "listener.cli.bench.handlers"

R = TypeVar("R")
K = TypeVar("K")


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (``pct`` in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def ms(value: float) -> float:
    """A duration in milliseconds, rounded for reporting."""
    return round(value, 2)


def median_run(runs: Sequence[R]) -> R:
    """One run (a dataclass) whose every numeric figure is the median of that figure over
    ``runs``; other fields (names, modes) are taken from the first run."""
    first: Any = runs[0]
    values: dict[str, Any] = {}
    for field in fields(first):
        column = [getattr(r, field.name) for r in runs]
        present = [v for v in column if v is not None]
        if present and all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
            median = statistics.median(present)
            values[field.name] = round(median, 3) if isinstance(median, float) else median
        else:
            values[field.name] = column[0]
    made: R = type(first)(**values)
    return made


async def interleaved_medians(
    variants: Iterable[K], repeat: int, run: Callable[[K], Awaitable[R]]
) -> list[R]:
    """``repeat`` rounds, each running every variant once, in order (so drift on the
    machine hits every variant alike); one run per variant holding the medians of its
    rounds (``median_run``)."""
    rounds: dict[K, list[R]] = {variant: [] for variant in variants}
    for _ in range(repeat):
        for variant, runs in rounds.items():
            runs.append(await run(variant))
    return [median_run(runs) for runs in rounds.values()]


def as_json(results: dict[str, Sequence[Any]]) -> str:
    """The results of each workload as JSON."""
    return json.dumps({name: [asdict(r) for r in rows] for name, rows in results.items()})


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
                    await conn.execute(BENCH_QUERIES["bench_create_fifo_index"])
            finally:
                await conn.close()
            yield url
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def process_cpu_seconds(pid: int) -> float | None:
    """The CPU time (user and system) process ``pid`` has used so far, in seconds: its
    main thread's, from ``/proc/<pid>/schedstat`` (nanoseconds), where the kernel keeps
    it; else the whole process's, from ``/proc/<pid>/stat`` (clock ticks, 10 ms as a
    rule). The workers measured with it do their work on the main thread (the event
    loop; the few helper threads idle). None where there is no such file (not Linux, or
    the process is gone)."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            # Fields after the command (in parentheses, which may hold spaces): utime and
            # stime are the 12th and 13th.
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def child_env(dsn: str) -> dict[str, str]:
    """The environment of a benchmark's child process: the caller's without its
    ``PGWAKE_`` variables, and the database's DSN in ``PGWAKE_DSN`` (never on the
    command line, which the process list shows)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGWAKE_")}
    env["PGWAKE_DSN"] = dsn
    return env


def stop_processes(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every process still running (a worker drains as in production), wait up
    to a minute for each, and kill any still left."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.asynccontextmanager
async def worker_processes(
    dsn: str, count: int = 1, *, expect_registered: int | None = None, **settings: Any
) -> AsyncIterator[list[subprocess.Popen[bytes]]]:
    """``count`` real worker processes on ``dsn``, stopped on exit (SIGTERM, so each
    drains as in production); on entry, wait until ``expect_registered`` workers
    (default ``count``) are registered in all. ``settings`` become ``PGWAKE_``
    variables."""
    env = child_env(dsn)
    env |= {"PGWAKE_LOG_LEVEL": "error", "PGWAKE_METRICS_ADDR": "127.0.0.1:0"}
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
            while await conn.fetchval(BENCH_QUERIES["worker_count_registered"]) < want:
                if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                    raise PgwakeError("benchmark workers did not start")
                await anyio.sleep(0.05)
        finally:
            await conn.close()
        yield procs
    finally:
        stop_processes(procs)


async def wait_all_finished(conn: asyncpg.Connection, total: int, timeout: float) -> None:
    """Wait until ``total`` jobs have succeeded or failed."""
    deadline = time.monotonic() + timeout
    while await conn.fetchval(BENCH_QUERIES["job_count_finished"]) < total:
        if time.monotonic() > deadline:
            raise PgwakeError(f"benchmark jobs did not finish within {timeout:.0f}s")
        await anyio.sleep(0.05)


async def wait_queue_empty(conn: asyncpg.Connection, timeout: float) -> None:
    """Wait until no job is scheduled, queued or running (probes of the partial indexes,
    cheap enough to poll often while a drain is timed)."""
    deadline = time.monotonic() + timeout
    while await conn.fetchval(BENCH_QUERIES["job_exists_active"]):
        if time.monotonic() > deadline:
            raise PgwakeError(f"benchmark jobs did not finish within {timeout:.0f}s")
        await anyio.sleep(0.02)


# The ports free_port gave in this process: never given twice.
_GIVEN: set[int] = set()


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now (for a worker's metrics),
    from below the kernel's range of ephemeral ports when one is free there. A port of
    that range (what binding port 0 gives) may be taken, before the worker binds it, as
    the local port of any outgoing connection, and the worker then stops at start
    ("Address already in use")."""
    low = _ephemeral_ports_start()
    below = range(max(1024, low - 10_000), low)
    for port in random.sample(below, min(200, len(below))):
        if port in _GIVEN:
            continue  # free again, but perhaps not yet bound by whom it was given to
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _GIVEN.add(port)
        return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        found: int = sock.getsockname()[1]
        return found


def _ephemeral_ports_start() -> int:
    """The first port of the kernel's ephemeral range (Linux's default when unknown)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


async def scrape(port: int) -> str:
    """The Prometheus text a worker serves on ``127.0.0.1:port``."""

    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            text: str = reply.read().decode()
            return text

    return await anyio.to_thread.run_sync(get)


def mean_observed(metrics: str, histogram: str) -> float:
    """The mean of every observation of ``histogram`` (in the Prometheus text
    ``metrics``), over all its label values; 0.0 when nothing was observed."""
    total = count = 0.0
    for family in text_string_to_metric_families(metrics):
        if family.name == histogram:
            for sample in family.samples:
                if sample.name == f"{histogram}_sum":
                    total += sample.value
                elif sample.name == f"{histogram}_count":
                    count += sample.value
    return total / count if count else 0.0


def slowest_bucket(metrics: str, histogram: str) -> float:
    """The upper bound (seconds) of the lowest bucket of ``histogram`` (an unlabelled
    histogram in the Prometheus text ``metrics``) that holds every observation: the
    slowest one took no longer. ``math.inf`` when only +Inf holds them all; 0.0 when
    nothing was observed."""
    buckets = [
        (float(sample.labels["le"]), sample.value)
        for family in text_string_to_metric_families(metrics)
        if family.name == histogram
        for sample in family.samples
        if sample.name == f"{histogram}_bucket"
    ]
    if not buckets:
        raise PgwakeError(f"the worker's metrics have no {histogram}")
    total = max(count for _, count in buckets)
    if total == 0:
        return 0.0
    return min(bound for bound, count in buckets if count == total)
