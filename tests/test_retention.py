"""Retention: finished jobs past their status's retention are deleted in batches; no
other job is ever touched."""

from __future__ import annotations

import asyncpg

from listener import db
from listener.jobs import Status
from listener.maintenance.retention import Pruner
from listener.metrics import Metrics

RETENTION = {Status.SUCCEEDED: 3600.0, Status.FAILED: 7200.0, Status.CANCELLED: 60.0}


async def test_prune_deletes_only_what_is_past_its_time(dsn: str, conn: asyncpg.Connection) -> None:
    # (status, finished how long ago, expected to survive)
    cases = [
        ("succeeded", "2 hours", False),
        ("succeeded", "30 minutes", True),
        ("failed", "3 hours", False),
        ("failed", "90 minutes", True),
        ("cancelled", "2 minutes", False),
        ("cancelled", "30 seconds", True),
    ]
    ids = {}
    for status, ago, survives in cases:
        for _ in range(3):  # three of each, so batches of 2 need several rounds
            job_id = await conn.fetchval(
                "INSERT INTO pgwake.jobs (kind, status, finished_at) "
                f"VALUES ('k', $1, now() - interval '{ago}') RETURNING id",
                status,
            )
            ids[job_id] = survives
    # Active jobs, however old, are never pruned.
    worker = await conn.fetchval(
        "INSERT INTO pgwake.workers (id, hostname, pid, kinds, concurrency) "
        "VALUES (gen_random_uuid(), 'h', 1, '{k}', 1) RETURNING id"
    )
    for status in ("queued", "scheduled", "running"):
        job_id = await conn.fetchval(
            "INSERT INTO pgwake.jobs (kind, created_at, run_at) "
            "VALUES ('k', now() - interval '30 days', now() - interval '30 days') RETURNING id"
        )
        await conn.execute(
            "UPDATE pgwake.jobs SET status = $1, claimed_by = $2, "
            "started_at = now() - interval '30 days' WHERE id = $3",
            status,
            worker if status == "running" else None,
            job_id,
        )
        ids[job_id] = True
    pool = await db.create_pool(dsn, size=2)
    metrics = Metrics()
    try:
        pruner = Pruner(pool, metrics, RETENTION, batch=2)
        assert await pruner.prune() == 9
        assert await pruner.prune() == 0
    finally:
        await pool.close()
    left = {r["id"] for r in await conn.fetch("SELECT id FROM pgwake.jobs")}
    assert left == {job_id for job_id, survives in ids.items() if survives}
    sample = metrics.registry.get_sample_value
    for status in RETENTION:
        assert sample("pgwake_jobs_pruned_total", {"status": status}) == 3


async def test_prune_skips_while_another_worker_prunes(dsn: str, conn: asyncpg.Connection) -> None:
    await conn.execute(
        "INSERT INTO pgwake.jobs (kind, status, finished_at) "
        "VALUES ('k', 'succeeded', now() - interval '1 day')"
    )
    pool = await db.create_pool(dsn, size=2)
    try:
        async with conn.transaction():
            # Another worker is in the middle of a batch: it holds the retention lock.
            await conn.execute(
                "SELECT 1 FROM pgwake.leaders WHERE name = 'retention' FOR NO KEY UPDATE"
            )
            assert await Pruner(pool, Metrics(), RETENTION).prune() == 0
        assert await Pruner(pool, Metrics(), RETENTION).prune() == 1
    finally:
        await pool.close()
