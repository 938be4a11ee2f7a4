"""Real worker processes: exactly-once across processes, SIGTERM drain, exit codes."""

from __future__ import annotations

import json

import asyncpg

from tests.support.recording_handlers import RECORDING, create_executions_table
from tests.support.waiting import eventually
from tests.support.workers import spawn_worker, stop_process, wait_ready


async def test_four_processes_run_every_job_exactly_once(
    dsn: str, conn: asyncpg.Connection
) -> None:
    await create_executions_table(conn)
    workers = [
        spawn_worker(
            dsn,
            "--handlers",
            RECORDING,
            "--concurrency",
            "16",
            "--tenant-concurrency",
            "16",
            "--poll-interval",
            "60",
        )
        for _ in range(4)
    ]
    try:
        await wait_ready(conn, 4)
        await conn.execute(
            "INSERT INTO pgwake.jobs (tenant_id, kind) "
            "SELECT 't' || (i % 20), 'record' FROM generate_series(1, 5000) AS i"
        )

        async def all_finished() -> bool:
            return bool(
                await conn.fetchval(
                    "SELECT count(*) = 5000 FROM pgwake.jobs "
                    "WHERE status IN ('succeeded', 'failed')"
                )
            )

        await eventually(all_finished, timeout=120, interval=0.2)
    finally:
        outputs = [stop_process(w) for w in workers]
    for code, out in outputs:
        assert code == 0, out
    assert (
        await conn.fetchval("SELECT count(*) FROM pgwake.jobs WHERE status = 'succeeded'") == 5000
    )
    assert await conn.fetchval("SELECT max(attempts) FROM pgwake.jobs") == 1
    assert await conn.fetchval("SELECT count(*) FROM test_executions") == 5000
    assert await conn.fetchval("SELECT count(DISTINCT job_id) FROM test_executions") == 5000
    pids = await conn.fetchval("SELECT count(DISTINCT pid) FROM test_executions")
    assert pids >= 2, "the work should spread over the worker processes"


async def test_sigterm_finishes_in_flight_jobs_and_exits_zero(
    dsn: str, conn: asyncpg.Connection
) -> None:
    await create_executions_table(conn)
    worker = spawn_worker(dsn, "--handlers", RECORDING, "--drain-timeout", "30")
    try:
        await wait_ready(conn)
        await conn.execute(
            "INSERT INTO pgwake.jobs (kind, payload) "
            "SELECT 'record', '{\"sleep\": 1.0}' FROM generate_series(1, 5)"
        )
        await eventually(
            lambda: conn.fetchval("SELECT count(*) = 5 FROM pgwake.jobs WHERE status = 'running'")
        )
    finally:
        code, out = stop_process(worker)
    assert code == 0, out
    assert await conn.fetchval("SELECT count(*) FROM pgwake.jobs WHERE status = 'succeeded'") == 5
    assert await conn.fetchval("SELECT count(*) FROM test_executions") == 5
    assert await conn.fetchval("SELECT count(*) FROM pgwake.workers") == 0
    events = [json.loads(line)["event"] for line in out.splitlines() if line.startswith("{")]
    assert "stopping: no new claims; draining" in events
    assert events[-1] == "worker stopped"


async def test_sigterm_after_drain_timeout_puts_jobs_back(
    dsn: str, conn: asyncpg.Connection
) -> None:
    worker = spawn_worker(dsn, "--drain-timeout", "0.5")
    try:
        await wait_ready(conn)
        await conn.execute(
            "INSERT INTO pgwake.jobs (kind, payload) "
            "SELECT 'sleep', '{\"seconds\": 600}' FROM generate_series(1, 3)"
        )
        await eventually(
            lambda: conn.fetchval("SELECT count(*) = 3 FROM pgwake.jobs WHERE status = 'running'")
        )
    finally:
        code, out = stop_process(worker)
    assert code == 0, out
    rows = await conn.fetch("SELECT status, attempts, claimed_by, last_error FROM pgwake.jobs")
    assert len(rows) == 3
    for row in rows:
        assert (row["status"], row["attempts"], row["claimed_by"]) == ("queued", 0, None)
        assert "put back" in row["last_error"]


async def test_worker_refuses_to_start_on_unmigrated_database(empty_dsn: str) -> None:
    code, out = stop_process(spawn_worker(empty_dsn), terminate=False)
    assert code == 5
    assert "run `pgwake migrate`" in out
