"""The claim query called directly, as a worker calls it, for tests of the SQL contract."""

from __future__ import annotations

import uuid

import asyncpg

from listener.queries import QUERIES


async def claim(
    conn: asyncpg.Connection,
    worker: uuid.UUID,
    limit: int,
    *,
    kinds: list[str] | None = None,
    tenant_cap: int = 1000,
    busy: dict[str, int] | None = None,
    cursor: str = "",
) -> list[asyncpg.Record]:
    busy = busy or {}
    rows = await conn.fetch(
        QUERIES["job_claim"],
        worker,
        kinds or ["k"],
        limit,
        tenant_cap,
        list(busy),
        list(busy.values()),
        cursor,
    )
    return [r for r in rows if r["id"] is not None]  # without the walk summary row


async def register(conn: asyncpg.Connection) -> uuid.UUID:
    worker = uuid.uuid4()
    await conn.execute(QUERIES["worker_register"], worker, "test", 1, ["k"], 10, None)
    return worker
