"""Tenants with databases of their own: a handler that writes into its tenant's
database, and tenant rows whose DSN is encrypted with a test keyring."""

from __future__ import annotations

from typing import Any

import anyio
import asyncpg

from listener import db
from listener.api import JobContext, Registry
from listener.crypto import load_keyring


def writer_registry() -> Registry:
    registry = Registry()

    @registry.handler("order.import")
    async def import_order(payload: dict[str, Any], ctx: JobContext) -> str:
        async with ctx.tenant_db() as conn:
            await conn.execute("INSERT INTO orders (n) VALUES ($1)", payload["n"])
            await anyio.sleep(payload.get("hold", 0))
            return str(await conn.fetchval("SELECT current_database()"))

    return registry


async def add_tenant(conn: asyncpg.Connection, keys: str, tenant: str, dsn: str) -> None:
    keyring = load_keyring({"PGWAKE_ENCRYPTION_KEYS": keys})
    assert keyring is not None
    await conn.execute(
        "INSERT INTO pgwake.tenants (tenant_id, db_dsn_encrypted) VALUES ($1, $2)",
        tenant,
        keyring.encrypt(tenant, dsn),
    )


async def create_orders(dsn: str) -> None:
    c = await db.connect(dsn)
    try:
        await c.execute("CREATE TABLE orders (n int NOT NULL)")
    finally:
        await c.close()
