"""Schedules inserted directly as rows, for tests of the scheduler and the CLI."""

from __future__ import annotations

import asyncpg


async def add_schedule(conn: asyncpg.Connection, name: str, **values: object) -> None:
    row = {"cron": "* * * * *", "kind": "tick", "tenant_id": "acme", "missed": "skip"}
    row.update(values)
    columns = ", ".join(["name", *row])
    params = ", ".join(f"${i}" for i in range(1, len(row) + 2))
    await conn.execute(
        f"INSERT INTO pgwake.schedules ({columns}) VALUES ({params})", name, *row.values()
    )
