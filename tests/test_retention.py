"""Retention: finished jobs past their status's retention are deleted in batches; no
other job is ever touched."""

from __future__ import annotations

import asyncpg

from listener import db
from listener.jobs import Status
from listener.maintenance.retention import Pruner
from listener.metrics import Metrics
from listener.queries import QUERIES
from tests.support.claims import register

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


async def test_prune_deletes_the_windows_of_rate_limit_keys_idle_for_a_whole_period(
    dsn: str, conn: asyncpg.Connection
) -> None:
    """A rate limit key's row in pgwake.rate_windows goes once the key has started
    nothing for its period and a second, is not full, and no claim holds it; a claim
    makes it again, and the limit still holds. Rows of keys with a start (or a pruned
    start) inside the period, a full key, a row a claim holds, and a row whose limit
    cannot be found are kept.

    Fails on 9075abe: no row of pgwake.rate_windows was ever deleted while its limit
    existed, so a limit per tenant kept a row for every tenant it had ever served."""
    await conn.execute(
        "INSERT INTO pgwake.tenants (tenant_id, rate_limit, rate_period) "
        "VALUES ('idle-t', 5, interval '1 hour'), ('busy-t', 5, interval '1 hour')"
    )
    await conn.execute(
        "INSERT INTO pgwake.limits (kind, per_tenant, rate_limit, rate_period) "
        "VALUES ('sync', true, 2, interval '1 minute'), ('bulk', false, 10, interval '1 minute')"
    )
    # (scope, kind, tenant, starts ago, pruned ago, full for, expected to survive);
    # written after the limits, whose triggers reset the windows.
    cases = [
        ("tenant", "", "idle-t", "2 hours", None, None, False),
        ("tenant", "", "busy-t", "30 minutes", None, None, True),
        ("kind_tenant", "sync", "a", "5 minutes", None, None, False),
        ("kind_tenant", "sync", "b", "10 seconds", None, None, True),
        ("kind_tenant", "sync", "c", None, "30 seconds", None, True),
        ("kind_tenant", "sync", "d", None, "5 minutes", None, False),
        ("kind_tenant", "sync", "e", "5 minutes", None, "10 seconds", True),
        ("kind_tenant", "sync", "held", "5 minutes", None, None, True),
        ("kind", "bulk", "", "5 minutes", None, None, False),
        # No tenant row, so no period to measure idleness by: kept.
        ("tenant", "", "no-such-tenant", "2 hours", None, None, True),
    ]
    for scope, kind, tenant, ago, pruned, full, _ in cases:
        await conn.execute(
            "INSERT INTO pgwake.rate_windows "
            "(scope, kind, tenant_id, started_at, started, pruned_until, full_until) "
            "VALUES ($1, $2, $3, "
            "CASE WHEN $4::text IS NULL THEN '{}' ELSE ARRAY[now() - $4::text::interval] END, "
            "CASE WHEN $4::text IS NULL THEN '{}' ELSE ARRAY[1] END, "
            "now() - $5::text::interval, now() + $6::text::interval)",
            scope,
            kind,
            tenant,
            ago,
            pruned,
            full,
        )

    async def keys() -> set[tuple[str, str, str]]:
        rows = await conn.fetch("SELECT scope, kind, tenant_id FROM pgwake.rate_windows")
        return {(r["scope"], r["kind"], r["tenant_id"]) for r in rows}

    holder = await db.connect(dsn)
    pool = await db.create_pool(dsn, size=2)
    try:
        async with holder.transaction():
            # A claim serving the key holds its row.
            await holder.execute(
                "SELECT 1 FROM pgwake.rate_windows WHERE tenant_id = 'held' FOR NO KEY UPDATE"
            )
            await Pruner(pool, Metrics(), RETENTION, batch=2).prune()
        assert await keys() == {(s, k, t) for s, k, t, _, _, _, survives in cases if survives}
        # Released, and still idle: it goes at the next round.
        await Pruner(pool, Metrics(), RETENTION, batch=2).prune()
        assert ("kind_tenant", "sync", "held") not in await keys()
    finally:
        await pool.close()
        await holder.close()
    # A claim makes a deleted key's row again, and its limit holds.
    await conn.execute(
        "INSERT INTO pgwake.jobs (tenant_id, kind) SELECT 'a', 'sync' FROM generate_series(1, 5)"
    )
    worker = await register(conn)
    for _ in range(3):
        await conn.fetch(QUERIES["job_claim"], worker, ["sync"], 10, 1000, [], [], "")
    assert (
        await conn.fetchval(
            "SELECT count(*) FROM pgwake.jobs WHERE tenant_id = 'a' AND status = 'running'"
        )
        == 2
    )
    assert ("kind_tenant", "sync", "a") in await keys()
