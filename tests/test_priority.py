"""Priority across tenants with a real worker process: with concurrency 1 and a backlog
of low-priority jobs of tenants b00..b19, a high-priority job of tenant a inserted later
starts next (the round-robin alone would reach a only after the b tenants past its
cursor)."""

from __future__ import annotations

import asyncpg

from tests.support.waiting import eventually
from tests.support.workers import spawn_worker, stop_process, wait_ready


async def test_a_later_high_priority_job_of_another_tenant_starts_next(
    dsn: str, conn: asyncpg.Connection
) -> None:
    worker = spawn_worker(
        dsn, "--concurrency", "1", "--tenant-concurrency", "1", "--poll-interval", "3600"
    )
    try:
        await wait_ready(conn)
        await conn.execute(
            "INSERT INTO pgwake.jobs (tenant_id, kind, priority, payload) "
            "SELECT 'b' || lpad((i % 20)::text, 2, '0'), 'sleep', -10, '{\"seconds\": 0.05}' "
            "FROM generate_series(1, 60) AS i"
        )

        async def b_started(n: int) -> bool:
            return bool(
                await conn.fetchval(
                    "SELECT count(*) >= $1 FROM pgwake.jobs WHERE started_at IS NOT NULL", n
                )
            )

        await eventually(lambda: b_started(3), timeout=30, interval=0.01)
        urgent = await conn.fetchval(
            "INSERT INTO pgwake.jobs (tenant_id, kind, priority, payload) "
            "VALUES ('a', 'sleep', 100, '{\"seconds\": 0}') RETURNING id"
        )

        async def urgent_done() -> bool:
            return bool(
                await conn.fetchval(
                    "SELECT status = 'succeeded' FROM pgwake.jobs WHERE id = $1", urgent
                )
            )

        await eventually(urgent_done, timeout=30, interval=0.01)
    finally:
        code, out = stop_process(worker)
    assert code == 0, out[-3000:]
    # Of b's jobs, only those started before the urgent one was inserted (and at most
    # the one running or claimed then) started before it.
    before = await conn.fetchval(
        "SELECT count(*) FROM pgwake.jobs AS b, pgwake.jobs AS a "
        "WHERE a.id = $1 AND b.tenant_id LIKE 'b%' AND b.started_at < a.started_at "
        "  AND b.created_at < a.created_at AND b.started_at > a.created_at",
        urgent,
    )
    assert before <= 1, before
