"""The kept connection: its own run-time parameters, set when it borrows a pool
connection and gone once the connection is back in the pool (listener/kept_connection.py),
and the claims' session that commits without waiting for a disk flush
(listener/claimer.py: CLAIM_SESSION)."""

from __future__ import annotations

import uuid

from listener import db
from listener.claimer import CLAIM_SESSION
from listener.kept_connection import KeptConnection
from listener.queries import QUERIES


async def test_kept_settings_hold_while_kept_and_are_reset_when_given_back(dsn: str) -> None:
    pool = await db.create_pool(dsn, size=1)
    try:
        kept = KeptConnection(pool, {"synchronous_commit": "off", "work_mem": "8MB"})
        rows = await kept.fetch(
            "SELECT current_setting('synchronous_commit') AS commit, "
            "current_setting('work_mem') AS mem, pg_backend_pid() AS pid"
        )
        assert (rows[0]["commit"], rows[0]["mem"]) == ("off", "8MB")
        # Still set for the next statement on the same kept session.
        again = await kept.fetch("SELECT current_setting('synchronous_commit') AS commit")
        assert again[0]["commit"] == "off"
        await kept.release()
        # The pool has one connection: the same session, reset on its way back.
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") == rows[0]["pid"]
            assert await conn.fetchval("SELECT current_setting('synchronous_commit')") == "on"
            assert await conn.fetchval("SELECT current_setting('work_mem')") != "8MB"
    finally:
        await pool.close()


async def test_a_kept_connection_without_settings_leaves_the_session_alone(dsn: str) -> None:
    pool = await db.create_pool(dsn, size=1)
    try:
        kept = KeptConnection(pool)
        rows = await kept.fetch("SELECT current_setting('synchronous_commit') AS commit")
        assert rows[0]["commit"] == "on"
        await kept.release()
    finally:
        await pool.close()


async def test_claims_commit_without_a_flush_and_their_jobs_are_claimed(dsn: str) -> None:
    """The claims' session: each claim's transaction commits asynchronously (what the
    claimer's KeptConnection sets), and the claimed job is running for that worker as
    seen from another session at once."""
    assert CLAIM_SESSION == {"synchronous_commit": "off"}
    pool = await db.create_pool(dsn, size=1)
    admin = await db.connect(dsn)
    try:
        worker = uuid.uuid4()
        await admin.execute(QUERIES["worker_register"], worker, "kept", 1, ["k"], 8, None)
        job = await admin.fetchval("INSERT INTO pgwake.jobs (kind) VALUES ('k') RETURNING id")
        kept = KeptConnection(pool, CLAIM_SESSION)
        rows = await kept.fetch(QUERIES["job_claim_plain"], worker, ["k"], 8, 8, [], [], "")
        assert [r["id"] for r in rows if r["id"] is not None] == [job]
        status = await admin.fetchrow(
            "SELECT status, claimed_by FROM pgwake.jobs WHERE id = $1", job
        )
        assert (status["status"], status["claimed_by"]) == ("running", worker)
        setting = await kept.fetch("SELECT current_setting('synchronous_commit') AS commit")
        assert setting[0]["commit"] == "off"
        await kept.release()
    finally:
        await admin.close()
        await pool.close()
