"""Handlers reach their tenant's own database through ctx.tenant_db(), end to end."""

from __future__ import annotations

import asyncpg

from listener import db
from tests.support.databases import database_name, fresh_database, fresh_databases
from tests.support.tenants import add_tenant, create_orders, writer_registry
from tests.support.waiting import eventually
from tests.support.workers import running_worker


async def test_handler_writes_into_its_tenants_database_and_a_down_one_fails_alone(
    server_dsn: str, dsn: str, conn: asyncpg.Connection, keyring_env: str
) -> None:
    async with (
        fresh_database(server_dsn, None) as shop_a,
        fresh_database(server_dsn, None) as shop_b,
    ):
        for shop in (shop_a, shop_b):
            await create_orders(shop)
        await add_tenant(conn, keyring_env, "a", shop_a)
        await add_tenant(conn, keyring_env, "b", shop_b)
        await add_tenant(conn, keyring_env, "down", "postgresql://u:hunter2@127.0.0.1:1/x")
        await conn.execute(
            "INSERT INTO pgwake.jobs (tenant_id, kind, payload, max_attempts) VALUES "
            "('a', 'order.import', '{\"n\": 1}', 3), ('b', 'order.import', '{\"n\": 2}', 3), "
            "('down', 'order.import', '{\"n\": 3}', 2), "
            "('nodb', 'order.import', '{\"n\": 4}', 3)"
        )
        async with running_worker(dsn, writer_registry(), retry_base=0.05):
            await eventually(
                lambda: conn.fetchval(
                    "SELECT count(*) = 4 FROM pgwake.jobs WHERE status IN ('succeeded', 'failed')"
                ),
                timeout=30,
            )
        rows = {r["tenant_id"]: r for r in await conn.fetch("SELECT * FROM pgwake.jobs")}
        assert rows["a"]["result"] == database_name(shop_a)
        assert rows["b"]["result"] == database_name(shop_b)
        for shop, n in ((shop_a, 1), (shop_b, 2)):
            c = await db.connect(shop)
            try:
                assert [r["n"] for r in await c.fetch("SELECT n FROM orders")] == [n]
            finally:
                await c.close()
        # Nothing was written centrally.
        assert await conn.fetchval("SELECT to_regclass('public.orders')") is None
        down = rows["down"]
        assert (down["status"], down["attempts"]) == ("failed", 2)
        assert "tenant 'down'" in down["last_error"]
        assert "hunter2" not in down["last_error"]
        nodb = rows["nodb"]
        assert (nodb["status"], nodb["attempts"]) == ("failed", 1)
        assert "tenant 'nodb' has no database of its own" in nodb["last_error"]


async def test_fifty_tenant_databases_under_a_cap_of_ten(
    server_dsn: str, dsn: str, conn: asyncpg.Connection, keyring_env: str
) -> None:
    async with fresh_databases(server_dsn, None, 50) as shops:
        names = [database_name(shop) for shop in shops]
        for i, shop in enumerate(shops):
            await create_orders(shop)
            await add_tenant(conn, keyring_env, f"shop{i:02d}", shop)
        await conn.execute(
            "INSERT INTO pgwake.jobs (tenant_id, kind, payload) "
            "SELECT 'shop' || lpad((i % 50)::text, 2, '0'), 'order.import', "
            "jsonb_build_object('n', i, 'hold', 0.01) FROM generate_series(0, 199) AS i"
        )
        samples: list[int] = []
        sampler = await asyncpg.connect(server_dsn)
        try:
            async with running_worker(
                dsn,
                writer_registry(),
                concurrency=32,
                tenant_concurrency=4,
                tenant_db_max_connections=10,
                tenant_db_per_tenant=2,
            ):

                async def done() -> bool:
                    samples.append(
                        await sampler.fetchval(
                            # Client sessions: an autovacuum worker visiting a tenant's
                            # database is listed too, and is no connection of the worker.
                            "SELECT count(*) FROM pg_stat_activity WHERE datname = ANY($1)"
                            " AND backend_type = 'client backend'",
                            names,
                        )
                    )
                    return bool(
                        await conn.fetchval(
                            "SELECT count(*) = 200 FROM pgwake.jobs WHERE status = 'succeeded'"
                        )
                    )

                await eventually(done, timeout=60, interval=0.01)
        finally:
            await sampler.close()
        assert max(samples) <= 10, max(samples)
        assert max(samples) >= 2
        total = 0
        for shop in shops:
            c = await db.connect(shop)
            try:
                total += await c.fetchval("SELECT count(*) FROM orders")
            finally:
                await c.close()
        assert total == 200
