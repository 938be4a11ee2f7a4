"""Soak under chaos: several worker processes run N jobs while a chaos loop kills
workers with SIGKILL (replacing them) and crash-restarts PostgreSQL at random.

Every job must end in a terminal state with its side effect recorded; none may be
lost. Duplicates (a side effect recorded twice) are allowed only for jobs whose worker
was killed while running them, and are counted. The size is a parameter:
PGWAKE_SOAK_JOBS (default 3000), PGWAKE_SOAK_SLEEP (seconds each job works, default
0.2) and PGWAKE_SOAK_SEED (chaos randomness)."""

from __future__ import annotations

import os
import random
import subprocess
import time

import anyio
import asyncpg
import pytest

from tests.support.private_server import PrivateServer, connect_when_up
from tests.support.recording_handlers import RECORDING
from tests.support.workers import spawn_worker

JOBS = int(os.environ.get("PGWAKE_SOAK_JOBS", "3000"))
SLEEP = float(os.environ.get("PGWAKE_SOAK_SLEEP", "0.2"))
SEED = int(os.environ.get("PGWAKE_SOAK_SEED", str(random.randrange(1_000_000))))
WORKERS = 3
WORKER_ARGS = (
    "--handlers",
    RECORDING,
    "--concurrency",
    "16",
    "--tenant-concurrency",
    "16",
    "--heartbeat-interval",
    "0.5",
    "--heartbeat-timeout",
    "5",
    "--retry-base",
    "0.1",
    "--retry-cap",
    "2",
)


async def unfinished(dsn: str) -> int | None:
    try:
        conn = await asyncpg.connect(dsn, timeout=2)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
        return None
    try:
        left: int = await conn.fetchval(
            "SELECT count(*) FROM pgwake.jobs WHERE status NOT IN ('succeeded', 'failed')"
        )
    finally:
        await conn.close()
    return left


# The run's own deadline below is the real limit; pytest's default timeout is not.
@pytest.mark.timeout(int(900 + JOBS * SLEEP / 10))
async def test_soak_under_chaos(private_server: PrivateServer) -> None:
    dsn = private_server.dsn
    rng = random.Random(SEED)
    conn = await connect_when_up(dsn)
    try:
        await conn.execute(
            "CREATE TABLE soak_effects (job_id bigint NOT NULL, attempt int NOT NULL,"
            " pid int NOT NULL)"
        )
        await conn.execute(
            "INSERT INTO pgwake.jobs (tenant_id, kind, payload) "
            "SELECT 't' || (i % 7), 'effect', jsonb_build_object('sleep', $2::float8) "
            "FROM generate_series(1, $1::int) AS i",
            JOBS,
            SLEEP,
        )
    finally:
        await conn.close()
    # Worker output goes to one file: a pipe nobody reads during the run would fill up.
    log = (private_server.root / "workers.log").open("w")

    def spawn() -> subprocess.Popen[str]:
        return spawn_worker(dsn, *WORKER_ARGS, log=log)

    workers = [spawn() for _ in range(WORKERS)]
    killed: set[int] = set()
    kills = restarts = 0
    started = time.monotonic()
    try:
        while True:
            await anyio.sleep(rng.uniform(1.0, 3.0))
            left = await unfinished(dsn)
            if left == 0:
                break
            assert time.monotonic() - started < 600 + JOBS * SLEEP / 10, "soak did not finish"
            print(f"soak: {left} unfinished after {time.monotonic() - started:.0f}s", flush=True)
            if rng.random() < 0.7:
                victim = rng.choice(workers)
                victim.kill()
                victim.wait()
                killed.add(victim.pid)
                kills += 1
                workers[workers.index(victim)] = spawn()
            else:
                private_server.restart_immediate()
                restarts += 1
        elapsed = time.monotonic() - started
        conn = await connect_when_up(dsn)
        try:
            status = dict(
                await conn.fetch("SELECT status, count(*) FROM pgwake.jobs GROUP BY status")
            )
            effects = await conn.fetch(
                "SELECT job_id, count(*) AS n, array_agg(pid) AS pids, "
                "array_agg(attempt) AS attempts "
                "FROM soak_effects GROUP BY job_id"
            )
            missing = await conn.fetchval(
                "SELECT count(*) FROM pgwake.jobs AS j WHERE j.status = 'succeeded' "
                "AND NOT EXISTS (SELECT 1 FROM soak_effects AS e WHERE e.job_id = j.id)"
            )
        finally:
            await conn.close()
    finally:
        for worker in workers:
            worker.terminate()
        codes = [worker.wait(timeout=60) for worker in workers]
        log.close()
    assert codes == [0] * WORKERS, (codes, (private_server.root / "workers.log").read_text())
    duplicated = [e for e in effects if e["n"] > 1]
    duplicates = sum(e["n"] - 1 for e in duplicated)
    # A job runs twice when a worker running it was killed, or when the handler's own
    # write committed while a PostgreSQL restart cut its reply: the handler saw an
    # error and the job was retried (in the same process). Anything else is a bug.
    after_kill = [e for e in duplicated if set(e["pids"]) & killed]
    after_restart = [e for e in duplicated if not set(e["pids"]) & killed]
    # Lost: enqueued but not ended in a terminal state (or gone from the table).
    lost = JOBS - sum(status.get(s, 0) for s in ("succeeded", "failed", "cancelled"))
    print(
        f"\nsoak: {JOBS} jobs, {WORKERS} workers, {kills} kills, {restarts} restarts of "
        f"PostgreSQL in {elapsed:.0f}s; statuses {status}; lost {lost}; missing effects "
        f"{missing}; "
        f"duplicates {duplicates} in {len(duplicated)} jobs: {len(after_kill)} whose worker "
        f"was killed, {len(after_restart)} retried after a restart (seed {SEED})"
    )
    assert lost == 0, status
    assert status == {"succeeded": JOBS}, status
    assert missing == 0
    assert len(effects) == JOBS
    # No attempt ever ran twice: every repeat was a new attempt.
    for job in duplicated:
        assert len(set(job["attempts"])) == len(job["attempts"]), dict(job)
    assert restarts > 0 or not after_restart, [dict(e) for e in after_restart]
