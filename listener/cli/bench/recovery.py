"""``recovery``: how soon the jobs of a worker killed with SIGKILL run elsewhere.

One worker holds 20 running jobs (each sleeps 5 s); a second worker is started; the
first is killed with SIGKILL. Reports how long until the 20 jobs were put back
(detection) and until the second worker had finished them all, with the default
heartbeat and maintenance settings.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import anyio
import asyncpg

from listener import db
from listener.cli.bench.common import bench_database, wait_all_finished, worker_processes
from listener.cli.bench.queries import BENCH_QUERIES
from listener.config import Settings
from listener.errors import PgwakeError


@dataclass(frozen=True, slots=True)
class RecoveryRun:
    """One kill -9 of a worker holding jobs."""

    jobs: int
    detected_s: float
    finished_s: float


async def _held_by(conn: asyncpg.Connection, pid: int) -> int:
    held: int = await conn.fetchval(BENCH_QUERIES["job_count_held_by_pid"], pid)
    return held


async def recovery_run(server_dsn: str, *, jobs: int = 20, job_seconds: float = 5.0) -> RecoveryRun:
    """Kill -9 a worker holding ``jobs`` running jobs; time their recovery."""
    async with bench_database(server_dsn) as dsn:
        conn = await db.connect(dsn)
        try:
            settings = {"concurrency": jobs, "tenant_concurrency": jobs}
            async with worker_processes(dsn, **settings) as (victim,):
                await conn.execute(
                    BENCH_QUERIES["job_enqueue_many"], "t", "sleep", jobs, {"seconds": job_seconds}
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
                    await wait_all_finished(conn, jobs, timeout=120)
                    finished = time.monotonic() - killed
        finally:
            await conn.close()
    return RecoveryRun(jobs=jobs, detected_s=round(detected, 2), finished_s=round(finished, 2))


async def recovery(server_dsn: str, *, repeat: int) -> list[RecoveryRun]:
    """``repeat`` recovery runs, once the server has been up for the heartbeat timeout
    (before that, a killed worker is found only by the timeout: see worker_list_lost)."""
    conn = await db.connect(server_dsn)
    try:
        uptime: float = await conn.fetchval(BENCH_QUERIES["server_get_uptime"])
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
