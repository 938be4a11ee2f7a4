"""The archive of retention (issue 19): with ``retention_archive`` on, finished jobs past
their retention move into pgwake.jobs_archive, each exactly once (never in both tables,
never lost), archived jobs go after ``retention_archived``; ``pgwake jobs list
--archived`` and ``pgwake jobs show`` read them; a confined role reads only its own."""

from __future__ import annotations

import json

import asyncpg
import pytest

from listener import db
from listener.jobs import Status
from listener.maintenance.retention import Pruner
from listener.metrics import Metrics
from tests.support.cli import pgwake
from tests.support.databases import as_user, fresh_role

RETENTION = {Status.SUCCEEDED: 3600.0, Status.FAILED: 7200.0, Status.CANCELLED: 60.0}


async def test_retention_moves_finished_jobs_into_the_archive_once(
    dsn: str, conn: asyncpg.Connection
) -> None:
    old = [
        await conn.fetchval(
            "INSERT INTO pgwake.jobs (tenant_id, kind, status, finished_at, result, metadata) "
            "VALUES ('acme', 'k', $1, now() - interval '3 hours', '{\"r\": 1}', "
            '\'{"batch": "b1"}\') RETURNING id',
            status,
        )
        for status in ("succeeded", "failed", "cancelled", "succeeded", "succeeded")
    ]
    recent = await conn.fetchval(
        "INSERT INTO pgwake.jobs (kind, status, finished_at) "
        "VALUES ('k', 'succeeded', now()) RETURNING id"
    )
    queued = await conn.fetchval("INSERT INTO pgwake.jobs (kind) VALUES ('k') RETURNING id")
    before = {r["id"]: dict(r) for r in await conn.fetch("SELECT * FROM pgwake.jobs")}
    pool = await db.create_pool(dsn, size=2)
    try:
        pruner = Pruner(pool, Metrics(), RETENTION, batch=2, archive=True, archived=3600)
        assert await pruner.prune() == 5
        assert await pruner.prune() == 0
    finally:
        await pool.close()
    left = {r["id"] for r in await conn.fetch("SELECT id FROM pgwake.jobs")}
    assert left == {recent, queued}
    archived = {r["id"]: dict(r) for r in await conn.fetch("SELECT * FROM pgwake.jobs_archive")}
    assert set(archived) == set(old)
    for job_id in old:
        # Every column the archive has is the job's as it was.
        row = archived[job_id]
        assert {k: v for k, v in row.items() if k != "archived_at"} == {
            k: before[job_id][k] for k in row if k != "archived_at"
        }
    # Archived jobs go once archived for retention_archived seconds.
    await conn.execute(
        "UPDATE pgwake.jobs_archive SET archived_at = now() - interval '2 hours' WHERE id = $1",
        old[0],
    )
    pool = await db.create_pool(dsn, size=2)
    try:
        pruner = Pruner(pool, Metrics(), RETENTION, batch=2, archive=True, archived=3600)
        await pruner.prune()
    finally:
        await pool.close()
    assert await conn.fetchval("SELECT count(*) FROM pgwake.jobs_archive") == 4
    assert (
        await conn.fetchval("SELECT count(*) FROM pgwake.jobs_archive WHERE id = $1", old[0]) == 0
    )
    # The command line reads the archive.
    listed = json.loads(pgwake("jobs", "list", "--archived", "--json", dsn=dsn).stdout)
    assert sorted(j["id"] for j in listed["jobs"]) == sorted(old[1:])
    failed = pgwake("jobs", "list", "--archived", "--status", "failed", "--json", dsn=dsn)
    assert [j["id"] for j in json.loads(failed.stdout)["jobs"]] == [old[1]]
    meta = pgwake("jobs", "list", "--archived", "--meta", "batch=b1", "--json", dsn=dsn)
    assert len(json.loads(meta.stdout)["jobs"]) == 4
    shown = json.loads(pgwake("jobs", "show", str(old[1]), "--json", dsn=dsn).stdout)
    assert (shown["status"], shown["result"], shown["metadata"]) == (
        "failed",
        {"r": 1},
        {"batch": "b1"},
    )
    assert shown["archived_at"] is not None
    bad = pgwake("jobs", "list", "--archived", "--status", "queued", dsn=dsn)
    assert bad.returncode == 2


async def test_a_confined_role_reads_only_its_tenants_archived_jobs(
    server_dsn: str, dsn: str, conn: asyncpg.Connection
) -> None:
    for tenant in ("acme", "other"):
        await conn.execute(
            "INSERT INTO pgwake.jobs (tenant_id, kind, status, finished_at) "
            "VALUES ($1, 'k', 'succeeded', now() - interval '3 hours')",
            tenant,
        )
    pool = await db.create_pool(dsn, size=2)
    try:
        await Pruner(pool, Metrics(), RETENTION, archive=True).prune()
    finally:
        await pool.close()
    async with fresh_role(server_dsn, dsn, "archive") as role:
        await conn.execute("SELECT pgwake.confine_role_to_tenant($1, 'acme')", role)
        app = await db.connect(as_user(dsn, role))
        try:
            rows = await app.fetch("SELECT tenant_id FROM pgwake.jobs_archive")
            assert [r["tenant_id"] for r in rows] == ["acme"]
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await app.execute("DELETE FROM pgwake.jobs_archive")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await app.execute(
                    "INSERT INTO pgwake.jobs_archive (id, tenant_id, kind, payload, priority, "
                    "run_at, max_attempts, status, attempts, created_at, run_anyway, "
                    "created_by) VALUES (1, 'acme', 'k', '{}', 0, now(), 1, 'succeeded', 1, "
                    "now(), false, 'x')"
                )
        finally:
            await app.close()
