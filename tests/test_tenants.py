"""Tenant settings in the claim: pausing, weights, fleet-wide concurrency caps."""

from __future__ import annotations

import asyncio

import asyncpg

from listener import db
from tests.support.claims import claim, register
from tests.support.waiting import eventually
from tests.support.workers import spawn_worker, stop_process, wait_ready


async def test_paused_tenant_is_not_claimed_until_resumed(conn: asyncpg.Connection) -> None:
    await conn.execute(
        "INSERT INTO pgwake.jobs (tenant_id, kind) "
        "SELECT t, 'k' FROM unnest(ARRAY['a', 'b']) AS t, generate_series(1, 3)"
    )
    await conn.execute("INSERT INTO pgwake.tenants (tenant_id, paused) VALUES ('a', true)")
    worker = await register(conn)
    rows = await claim(conn, worker, 10)
    assert sorted(r["tenant_id"] for r in rows) == ["b", "b", "b"]
    await conn.execute("UPDATE pgwake.tenants SET paused = false WHERE tenant_id = 'a'")
    rows = await claim(conn, worker, 10)
    assert sorted(r["tenant_id"] for r in rows) == ["a", "a", "a"]


async def test_weight_gives_a_tenant_a_larger_share_of_each_claim(
    conn: asyncpg.Connection,
) -> None:
    await conn.execute(
        "INSERT INTO pgwake.jobs (tenant_id, kind) "
        "SELECT t, 'k' FROM unnest(ARRAY['heavy', 'light']) AS t, generate_series(1, 50)"
    )
    await conn.execute("INSERT INTO pgwake.tenants (tenant_id, weight) VALUES ('heavy', 3)")
    worker = await register(conn)
    rows = await claim(conn, worker, 8)
    counts = {t: sum(1 for r in rows if r["tenant_id"] == t) for t in ("heavy", "light")}
    assert counts == {"heavy": 6, "light": 2}


async def test_fleet_cap_holds_for_concurrent_claimers(dsn: str, conn: asyncpg.Connection) -> None:
    await conn.execute(
        "INSERT INTO pgwake.jobs (tenant_id, kind) "
        "SELECT 'capped', 'k' FROM generate_series(1, 100)"
    )
    await conn.execute(
        "INSERT INTO pgwake.tenants (tenant_id, max_concurrency) VALUES ('capped', 3)"
    )
    workers = [await register(conn) for _ in range(6)]
    conns = [await db.connect(dsn) for _ in workers]
    try:
        for _ in range(20):
            results = await asyncio.gather(
                *(claim(c, w, 10) for w, c in zip(workers, conns, strict=True))
            )
            assert sum(len(r) for r in results) <= 3
            running = await conn.fetchval(
                "SELECT count(*) FROM pgwake.jobs WHERE status = 'running'"
            )
            assert running <= 3
            # Finish what is running so the next round can claim again.
            await conn.execute(
                "UPDATE pgwake.jobs SET status = 'succeeded', claimed_by = NULL, "
                "finished_at = now() WHERE status = 'running'"
            )
    finally:
        for c in conns:
            await c.close()
    assert await conn.fetchval("SELECT count(*) FROM pgwake.jobs WHERE status = 'succeeded'") > 0


async def test_fleet_wide_cap_across_three_worker_processes(
    dsn: str, conn: asyncpg.Connection
) -> None:
    await conn.execute(
        "CREATE TABLE test_runs (id bigserial PRIMARY KEY, job_id bigint NOT NULL, "
        "tenant_id text NOT NULL, pid int NOT NULL, started_at timestamptz NOT NULL, "
        "ended_at timestamptz)"
    )
    await conn.execute(
        "INSERT INTO pgwake.tenants (tenant_id, max_concurrency) VALUES ('capped', 2)"
    )
    workers = [
        spawn_worker(
            dsn,
            "--handlers",
            "tests.support.recording_handlers",
            "--concurrency",
            "8",
            "--tenant-concurrency",
            "8",
        )
        for _ in range(3)
    ]
    samples: list[int] = []
    try:
        await wait_ready(conn, 3)
        await conn.execute(
            "INSERT INTO pgwake.jobs (tenant_id, kind, payload) "
            "SELECT t, 'track', '{\"sleep\": 0.05}' "
            "FROM unnest(ARRAY['capped', 'free']) AS t, generate_series(1, 60)"
        )
        sampler = await db.connect(dsn)
        try:

            async def finished() -> bool:
                samples.append(
                    await sampler.fetchval(
                        "SELECT count(*) FROM pgwake.jobs WHERE tenant_id = 'capped' "
                        "AND status = 'running'"
                    )
                )
                return bool(
                    await sampler.fetchval(
                        "SELECT count(*) = 120 FROM pgwake.jobs WHERE status = 'succeeded'"
                    )
                )

            await eventually(finished, timeout=120, interval=0.005)
        finally:
            await sampler.close()
    finally:
        outputs = [stop_process(w) for w in workers]
    for code, out in outputs:
        assert code == 0, out
    assert max(samples) <= 2, max(samples)
    # From the handlers' own records: the most capped runs overlapping at any start.
    overlap = await conn.fetchval(
        "SELECT max(n) FROM (SELECT (SELECT count(*) FROM test_runs b "
        "  WHERE b.tenant_id = 'capped' AND b.started_at <= a.started_at "
        "    AND b.ended_at > a.started_at) AS n "
        "  FROM test_runs a WHERE a.tenant_id = 'capped') AS o"
    )
    assert overlap == 2, overlap
    free_overlap = await conn.fetchval(
        "SELECT max(n) FROM (SELECT (SELECT count(*) FROM test_runs b "
        "  WHERE b.tenant_id = 'free' AND b.started_at <= a.started_at "
        "    AND b.ended_at > a.started_at) AS n "
        "  FROM test_runs a WHERE a.tenant_id = 'free') AS o"
    )
    assert free_overlap > 2, "the uncapped tenant should run wider than the cap"
    pids = await conn.fetchval("SELECT count(DISTINCT pid) FROM test_runs WHERE tenant_id='capped'")
    assert pids >= 2
