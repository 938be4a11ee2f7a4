"""Least privilege: an application role confined to its own tenant by row-level security."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from listener import db
from tests.support.databases import as_user, fresh_role


@pytest.fixture
async def app_conn(
    server_dsn: str, dsn: str, conn: asyncpg.Connection
) -> AsyncIterator[asyncpg.Connection]:
    """A connection as a fresh login role confined to tenant 'acme'."""
    async with fresh_role(server_dsn, dsn, "app") as role:
        await conn.execute("SELECT pgwake.confine_role_to_tenant($1, 'acme')", role)
        app = await db.connect(as_user(dsn, role))
        try:
            yield app
        finally:
            await app.close()


async def test_app_role_enqueues_only_for_its_tenant_and_sees_only_its_jobs(
    conn: asyncpg.Connection, app_conn: asyncpg.Connection
) -> None:
    await conn.execute("INSERT INTO pgwake.jobs (tenant_id, kind) VALUES ('other', 'secret')")
    own = await app_conn.fetchrow(
        "INSERT INTO pgwake.jobs (tenant_id, kind, payload, run_at) "
        "VALUES ('acme', 'email.send', '{\"to\": \"a@b.c\"}', now() + interval '1 hour') "
        "RETURNING id, tenant_id"
    )
    assert own["tenant_id"] == "acme"
    # The trigger ran with its owner's rights: the future job is scheduled.
    assert await conn.fetchval("SELECT status FROM pgwake.jobs WHERE id = $1", own["id"]) == (
        "scheduled"
    )
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
        await app_conn.execute("INSERT INTO pgwake.jobs (tenant_id, kind) VALUES ('other', 'x')")
    visible = await app_conn.fetch("SELECT tenant_id, kind FROM pgwake.jobs")
    assert [tuple(r) for r in visible] == [("acme", "email.send")]
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
        await app_conn.execute(
            "INSERT INTO pgwake.jobs (tenant_id, kind, status) VALUES ('acme', 'x', 'succeeded')"
        )
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
        await app_conn.execute("UPDATE pgwake.jobs SET priority = 5")
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
        await app_conn.execute("DELETE FROM pgwake.jobs")
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
        await app_conn.execute("INSERT INTO pgwake.tenant_roles VALUES (current_user, 'other')")
    counts = dict(await conn.fetch("SELECT tenant_id, count(*) FROM pgwake.jobs GROUP BY 1"))
    assert counts == {"acme": 1, "other": 1}
