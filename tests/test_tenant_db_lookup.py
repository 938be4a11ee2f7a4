"""Looking up a tenant's database: a database registered a moment ago is used by the
tenant's next job (issue 13, point 12); a connect that times out says what and after
how long (issue 15, point 7)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from listener.tenant_pools import TenantDatabaseError, TenantPools
from tests.support.databases import fresh_database
from tests.support.tenants import add_tenant, create_orders, writer_registry
from tests.support.waiting import eventually
from tests.support.workers import running_worker


async def _final(conn: asyncpg.Connection, job_id: int) -> asyncpg.Record:
    async def done() -> asyncpg.Record | None:
        row: asyncpg.Record | None = await conn.fetchrow(
            "SELECT status, last_error FROM pgwake.jobs WHERE id = $1 "
            "AND status IN ('succeeded', 'failed')",
            job_id,
        )
        return row

    return await eventually(done, timeout=30)


async def test_a_database_registered_just_now_serves_the_tenants_next_job(
    server_dsn: str, dsn: str, conn: asyncpg.Connection, keyring_env: str
) -> None:
    """Fails on 8feecbc: the worker cached "no database" for 30 s, so the job after the
    registration failed for good with ``ConfigurationError: tenant 'late' has no
    database of its own`` (configuration errors are not retried)."""
    insert = (
        "INSERT INTO pgwake.jobs (tenant_id, kind, payload, max_attempts) "
        "VALUES ('late', 'order.import', '{\"n\": 1}', 1) RETURNING id"
    )
    async with fresh_database(server_dsn, None) as shop:
        await create_orders(shop)
        async with running_worker(dsn, writer_registry()):
            before = await _final(conn, await conn.fetchval(insert))
            assert before["status"] == "failed"
            assert "has no database of its own" in before["last_error"]
            await add_tenant(conn, keyring_env, "late", shop)
            after = await _final(conn, await conn.fetchval(insert))
            assert after["status"] == "succeeded", after["last_error"]


async def test_a_connect_timeout_says_what_timed_out_and_after_how_long() -> None:
    """Fails on 8feecbc: the error read ``TimeoutError: `` with nothing after it."""
    held: list[asyncio.StreamWriter] = []

    async def never_answer(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accept the connection, say nothing

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pools = TenantPools(connect_timeout=0.5)
    try:
        with pytest.raises(TenantDatabaseError) as failed:
            async with pools.connection("slow", f"postgresql://app:Secret9Pw@127.0.0.1:{port}/x"):
                pass
    finally:
        await pools.aclose()
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
    message = str(failed.value)
    assert message == (
        "tenant 'slow': cannot connect to its database: no connection within the connect "
        "timeout (0.5s)"
    )
