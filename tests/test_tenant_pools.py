"""TenantPools against real tenant databases: routing, the total cap, idle expiry,
unreachable tenants, LRU eviction, DSN changes.

Each test creates its own tenant databases (``fresh_database``, a table ``t(x int)`` in
each) and counts their sessions in the server's ``pg_stat_activity``.
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import AsyncIterator

import anyio
import asyncpg
import pytest

from listener.tenant_pools import TenantDatabaseError, TenantPools
from tests.support.databases import database_name, fresh_databases
from tests.support.waiting import eventually


@contextlib.asynccontextmanager
async def tenant_databases(server_dsn: str, count: int) -> AsyncIterator[list[str]]:
    """``count`` fresh databases, each with an empty table ``t(x int)``; their DSNs."""
    async with fresh_databases(server_dsn, None, count) as dsns:
        for dsn in dsns:
            conn = await asyncpg.connect(dsn)
            try:
                await conn.execute("CREATE TABLE t (x int)")
            finally:
                await conn.close()
        # A closed connection's server process exits after close() returns: wait until
        # these set-up sessions are gone, so the tests count only the pools' sessions.
        watcher = await asyncpg.connect(server_dsn)
        try:

            async def no_sessions() -> bool:
                return await sessions(watcher, dsns) == {}

            await eventually(no_sessions)
        finally:
            await watcher.close()
        yield dsns


@contextlib.asynccontextmanager
async def admin(server_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(server_dsn)
    try:
        yield conn
    finally:
        await conn.close()


async def sessions(conn: asyncpg.Connection, dsns: list[str]) -> dict[str, int]:
    """Client sessions per database among ``dsns`` (databases without one are left
    out). Only client backends: an autovacuum worker visiting a tenant's database is
    listed in pg_stat_activity with its name too, and is no connection of the pools."""
    rows = await conn.fetch(
        "SELECT datname, count(*) AS n FROM pg_stat_activity"
        " WHERE datname = ANY($1::text[]) AND backend_type = 'client backend'"
        " GROUP BY datname",
        [database_name(d) for d in dsns],
    )
    return {r["datname"]: r["n"] for r in rows}


async def rows_in(dsn: str) -> list[int]:
    conn = await asyncpg.connect(dsn)
    try:
        return [r["x"] for r in await conn.fetch("SELECT x FROM t ORDER BY x")]
    finally:
        await conn.close()


async def test_connection_reaches_its_tenants_database(server_dsn):
    async with tenant_databases(server_dsn, 2) as (dsn_a, dsn_b):
        pools = TenantPools(max_connections=4, per_tenant=2)
        try:
            async with pools.connection("a", dsn_a) as conn:
                await conn.execute("INSERT INTO t VALUES (1)")
                # JSON codecs as everywhere in pgwake.
                assert await conn.fetchval("SELECT $1::jsonb", {"k": 1}) == {"k": 1}
            async with pools.connection("b", dsn_b) as conn:
                await conn.execute("INSERT INTO t VALUES (2)")
            async with pools.connection("a", dsn_a) as conn:
                await conn.execute("INSERT INTO t VALUES (3)")
            assert pools.pool_count() == 2
            assert pools.sizes() == {"a": 1, "b": 1}
            assert pools.open_connections() == 2
        finally:
            await pools.aclose()
        assert await rows_in(dsn_a) == [1, 3]
        assert await rows_in(dsn_b) == [2]
        assert pools.open_connections() == 0
        assert pools.pool_count() == 0
        async with admin(server_dsn) as conn:
            assert await sessions(conn, [dsn_a, dsn_b]) == {}
        with pytest.raises(TenantDatabaseError, match="closed"):
            async with pools.connection("a", dsn_a):
                pass


async def test_total_cap_holds_with_many_tenants(server_dsn):
    tenants, cap, per_tenant, lanes, writes = 50, 10, 3, 4, 3
    async with tenant_databases(server_dsn, tenants) as dsns, admin(server_dsn) as watcher:
        pools = TenantPools(max_connections=cap, per_tenant=per_tenant)
        observed = {"total": 0, "per_db": 0, "client": 0, "samples": 0}
        done = anyio.Event()

        async def sample() -> None:
            while not done.is_set():
                counts = await sessions(watcher, dsns)
                observed["total"] = max(observed["total"], sum(counts.values()))
                observed["per_db"] = max(observed["per_db"], *counts.values(), 0)
                observed["client"] = max(observed["client"], pools.open_connections())
                observed["samples"] += 1
                await anyio.sleep(0.001)

        async def lane(i: int, lane_no: int) -> None:
            for w in range(writes):
                async with pools.connection(f"tenant-{i}", dsns[i]) as conn:
                    await conn.execute("INSERT INTO t VALUES ($1)", lane_no * 100 + w)
                    assert pools.open_connections() <= cap
                    assert pools.sizes()[f"tenant-{i}"] <= per_tenant
                    await anyio.sleep(0.005)

        async def tenant(i: int) -> None:
            async with anyio.create_task_group() as tg:
                for lane_no in range(lanes):
                    tg.start_soon(lane, i, lane_no)

        try:
            with anyio.fail_after(60):
                async with anyio.create_task_group() as outer:
                    outer.start_soon(sample)
                    async with anyio.create_task_group() as tg:
                        for i in range(tenants):
                            tg.start_soon(tenant, i)
                    done.set()
        finally:
            await pools.aclose()

        print(f"\nmax connections seen: {observed}")
        assert observed["samples"] > 10
        assert 0 < observed["total"] <= cap
        assert observed["per_db"] <= per_tenant
        assert observed["client"] <= cap
        expected = sorted(lane_no * 100 + w for lane_no in range(lanes) for w in range(writes))
        for dsn in dsns:
            assert await rows_in(dsn) == expected
        assert pools.open_connections() == 0
        assert await sessions(watcher, dsns) == {}


async def test_per_tenant_limit(server_dsn):
    async with tenant_databases(server_dsn, 1) as (dsn,), admin(server_dsn) as watcher:
        pools = TenantPools(max_connections=10, per_tenant=2)
        holding, peak = 0, 0

        async def lane(n: int) -> None:
            nonlocal holding, peak
            async with pools.connection("solo", dsn) as conn:
                holding += 1
                peak = max(peak, holding)
                assert pools.sizes()["solo"] <= 2
                await conn.execute("INSERT INTO t VALUES ($1)", n)
                await anyio.sleep(0.01)
                holding -= 1

        try:
            with anyio.fail_after(20):
                async with anyio.create_task_group() as tg:
                    for n in range(6):
                        tg.start_soon(lane, n)
            assert peak == 2
            assert pools.sizes() == {"solo": 2}
            assert await sessions(watcher, [dsn]) == {database_name(dsn): 2}
        finally:
            await pools.aclose()
        assert await rows_in(dsn) == list(range(6))


async def test_idle_pools_are_closed_after_ttl(server_dsn):
    async with tenant_databases(server_dsn, 3) as dsns, admin(server_dsn) as watcher:
        pools = TenantPools(max_connections=5, per_tenant=2, idle_ttl=0.2)
        async with anyio.create_task_group() as tg:
            await tg.start(pools.run)
            for i, dsn in enumerate(dsns):
                async with pools.connection(str(i), dsn) as conn:
                    await conn.execute("INSERT INTO t VALUES (1)")
            assert pools.pool_count() == 3
            await eventually(lambda: _true(pools.pool_count() == 0))
            assert pools.open_connections() == 0
            assert pools.sizes() == {}

            async def none_left() -> bool:
                return await sessions(watcher, dsns) == {}

            await eventually(none_left)
            # A tenant comes back after its pool expired: a new pool.
            async with pools.connection("0", dsns[0]) as conn:
                await conn.execute("INSERT INTO t VALUES (2)")
            assert pools.pool_count() == 1
            tg.cancel_scope.cancel()
        # run() closes everything on its way out.
        assert pools.pool_count() == 0
        assert pools.open_connections() == 0
        assert await rows_in(dsns[0]) == [1, 2]


async def _true(value: bool) -> bool:
    return value


async def test_unreachable_tenant_raises_and_releases_capacity(server_dsn):
    secret = "s3cr3t-pa55word"
    bad = f"postgresql://postgres:{secret}@127.0.0.1:1/postgres"
    async with tenant_databases(server_dsn, 1) as (good,):
        pools = TenantPools(max_connections=1, per_tenant=1, connect_timeout=5)
        try:
            for _ in range(3):
                with pytest.raises(TenantDatabaseError) as info:
                    async with pools.connection("acme-store", bad):
                        pytest.fail("connected to an unreachable database")
                error = info.value
                text = "".join(traceback.format_exception(error))
                assert "acme-store" in str(error)
                assert error.tenant_id == "acme-store"
                assert "cannot connect" in str(error)
                assert secret not in text
                assert bad not in text
                assert pools.open_connections() == 0
                assert pools.waiting() == 0
            # The only slot is free: another tenant still gets a connection.
            with anyio.fail_after(10):
                async with pools.connection("ok", good) as conn:
                    await conn.execute("INSERT INTO t VALUES (7)")
            assert pools.sizes() == {"ok": 1}
        finally:
            await pools.aclose()
        assert await rows_in(good) == [7]


async def test_least_recently_used_idle_pool_is_evicted(server_dsn):
    async with tenant_databases(server_dsn, 3) as dsns, admin(server_dsn) as watcher:
        a, b, c = dsns
        pools = TenantPools(max_connections=2, per_tenant=1)
        try:
            for tenant, dsn in [("a", a), ("b", b), ("a", a)]:
                async with pools.connection(tenant, dsn) as conn:
                    await conn.execute("INSERT INTO t VALUES (1)")
            assert pools.sizes() == {"a": 1, "b": 1}
            # "b" is the least recently used: a third tenant evicts it, not "a".
            async with pools.connection("c", c) as conn:
                await conn.execute("INSERT INTO t VALUES (1)")
            assert pools.sizes() == {"a": 1, "c": 1}
            assert pools.pool_count() == 2
            assert await sessions(watcher, dsns) == {database_name(a): 1, database_name(c): 1}
            # And "b" coming back evicts "a" now.
            async with pools.connection("b", b) as conn:
                await conn.execute("INSERT INTO t VALUES (2)")
            assert pools.sizes() == {"b": 1, "c": 1}
            assert await sessions(watcher, dsns) == {database_name(b): 1, database_name(c): 1}
        finally:
            await pools.aclose()
        assert [await rows_in(d) for d in dsns] == [[1, 1], [1, 2], [1]]


async def test_waits_at_the_cap_until_a_connection_is_given_back(server_dsn):
    async with tenant_databases(server_dsn, 2) as (a, b), admin(server_dsn) as watcher:
        pools = TenantPools(max_connections=1, per_tenant=1)
        got_b = anyio.Event()

        async def use_b() -> None:
            async with pools.connection("b", b) as conn:
                got_b.set()
                await conn.execute("INSERT INTO t VALUES (2)")

        try:
            with anyio.fail_after(20):
                async with anyio.create_task_group() as tg:
                    async with pools.connection("a", a) as conn:
                        tg.start_soon(use_b)
                        await eventually(lambda: _true(pools.waiting() == 1))
                        assert not got_b.is_set()
                        assert pools.open_connections() == 1
                        await conn.execute("INSERT INTO t VALUES (1)")
                    # Given back while "b" waits: closed, its slot goes to "b".
                    await got_b.wait()
            assert pools.open_connections() == 1
            assert pools.sizes() == {"a": 0, "b": 1}
            assert await sessions(watcher, [a, b]) == {database_name(b): 1}
        finally:
            await pools.aclose()
        assert await rows_in(a) == [1]
        assert await rows_in(b) == [2]


async def test_dsn_change_replaces_the_pool(server_dsn):
    async with tenant_databases(server_dsn, 2) as (old, new), admin(server_dsn) as watcher:
        pools = TenantPools(max_connections=4, per_tenant=2)
        try:
            async with pools.connection("moved", old) as conn:
                await conn.execute("INSERT INTO t VALUES (1)")
            async with pools.connection("moved", new) as conn:
                await conn.execute("INSERT INTO t VALUES (2)")
            assert pools.pool_count() == 1
            assert pools.sizes() == {"moved": 1}
            assert await sessions(watcher, [old, new]) == {database_name(new): 1}
        finally:
            await pools.aclose()
        assert await rows_in(old) == [1]
        assert await rows_in(new) == [2]
