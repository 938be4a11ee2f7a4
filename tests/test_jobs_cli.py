"""``pgwake jobs list/show/retry/purge`` (``cancel`` is in test_recovery.py) and the
psql views."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import subprocess
import sys

import anyio
import asyncpg

from tests.support.cli import pgwake
from tests.support.paths import ROOT


async def seed(conn: asyncpg.Connection) -> dict[str, int]:
    ids = {}
    for name, tenant, kind, status, extra in (
        ("queued", "acme", "email", "queued", ""),
        ("failed_email", "acme", "email", "failed", "boom\ntraceback line"),
        ("failed_sms", "globex", "sms", "failed", "no credit"),
        ("done", "globex", "sms", "succeeded", None),
        ("cancelled", "acme", "sms", "cancelled", "cancelled"),
    ):
        ids[name] = await conn.fetchval(
            "INSERT INTO pgwake.jobs (tenant_id, kind, payload, status, attempts, finished_at,"
            " last_error) VALUES ($1, $2, '{\"n\": 1}', $3, $4,"
            " CASE WHEN $3 IN ('failed', 'succeeded', 'cancelled') THEN now() END, $5)"
            " RETURNING id",
            tenant,
            kind,
            status,
            3 if status == "failed" else 0,
            extra or None,
        )
    await conn.execute(
        "UPDATE pgwake.jobs SET result = '{\"ok\": true}', progress = "
        '\'{"done": 3, "total": 3, "message": "sent"}\' WHERE id = $1',
        ids["done"],
    )
    return ids


async def test_list_filters_and_pages(dsn: str, conn: asyncpg.Connection) -> None:
    ids = await seed(conn)
    everything = pgwake("jobs", "list", "--json", dsn=dsn)
    assert everything.returncode == 0, everything.stderr
    listed = json.loads(everything.stdout)["jobs"]
    assert [j["id"] for j in listed] == sorted(ids.values(), reverse=True)
    failed = json.loads(pgwake("jobs", "list", "--status", "failed", "--json", dsn=dsn).stdout)
    assert {j["id"] for j in failed["jobs"]} == {ids["failed_email"], ids["failed_sms"]}
    # The first line of the error only.
    assert {j["error"] for j in failed["jobs"]} == {"boom", "no credit"}
    acme_sms = pgwake("jobs", "list", "--tenant", "acme", "--kind", "sms", "--json", dsn=dsn)
    assert [j["id"] for j in json.loads(acme_sms.stdout)["jobs"]] == [ids["cancelled"]]
    page1 = json.loads(pgwake("jobs", "list", "--limit", "2", "--json", dsn=dsn).stdout)
    page2 = json.loads(
        pgwake("jobs", "list", "--limit", "2", "--before", str(page1["next_before"]), "--json",
               dsn=dsn).stdout
    )  # fmt: skip
    assert len(page1["jobs"]) == len(page2["jobs"]) == 2
    assert page1["jobs"][-1]["id"] > page2["jobs"][0]["id"]
    old = json.loads(pgwake("jobs", "list", "--older-than", "3600", "--json", dsn=dsn).stdout)
    assert old["jobs"] == []
    text = pgwake("jobs", "list", "--limit", "2", dsn=dsn)
    assert f"(more: --before {page1['next_before']})" in text.stdout
    bad = pgwake("jobs", "list", "--status", "lost", dsn=dsn)
    assert bad.returncode == 2
    assert "--status must be one of waiting, scheduled, queued, running" in bad.stderr
    assert pgwake("jobs", "list", "--limit", "0", dsn=dsn).returncode == 2


async def test_show(dsn: str, conn: asyncpg.Connection) -> None:
    ids = await seed(conn)
    shown = pgwake("jobs", "show", str(ids["done"]), "--json", dsn=dsn)
    assert shown.returncode == 0, shown.stderr
    job = json.loads(shown.stdout)
    assert job["result"] == {"ok": True}
    assert job["progress"] == {"done": 3, "total": 3, "message": "sent"}
    assert job["payload"] == {"n": 1}
    text = pgwake("jobs", "show", str(ids["failed_email"]), dsn=dsn)
    assert "last_error:\n  boom\n  traceback line" in text.stdout
    missing = pgwake("jobs", "show", "999999", dsn=dsn)
    assert missing.returncode == 1
    assert "job 999999 not found" in missing.stderr
    assert pgwake("jobs", "show", "x", dsn=dsn).returncode == 2


async def test_retry(dsn: str, conn: asyncpg.Connection) -> None:
    ids = await seed(conn)
    one = pgwake("jobs", "retry", str(ids["cancelled"]), "--json", dsn=dsn)
    assert one.returncode == 0, one.stderr
    assert json.loads(one.stdout) == {"retried": [ids["cancelled"]]}
    by_kind = pgwake("jobs", "retry", "--failed", "--kind", "sms", dsn=dsn)
    assert by_kind.returncode == 0, by_kind.stderr
    assert f"queued again: 1 job(s) ({ids['failed_sms']})" in by_kind.stdout
    rows = {
        r["id"]: r
        for r in await conn.fetch("SELECT id, status, attempts, last_error FROM pgwake.jobs")
    }
    assert rows[ids["failed_sms"]]["status"] == "queued"
    assert rows[ids["failed_sms"]]["attempts"] == 0
    assert rows[ids["failed_sms"]]["last_error"] == "no credit"  # kept
    assert rows[ids["failed_email"]]["status"] == "failed"  # other kind untouched
    # A queued or succeeded job is not retried, and is named.
    refused = pgwake("jobs", "retry", str(ids["queued"]), str(ids["done"]), dsn=dsn)
    assert refused.returncode == 1
    assert f"not retried (not failed or cancelled, or not found): {ids['queued']}" in (
        refused.stderr
    )
    assert pgwake("jobs", "retry", dsn=dsn).returncode == 2
    both = pgwake("jobs", "retry", "1", "--failed", dsn=dsn)
    assert both.returncode == 2
    assert "not both" in both.stderr
    kind_with_ids = pgwake("jobs", "retry", "1", "--kind", "sms", dsn=dsn)
    assert kind_with_ids.returncode == 2


async def test_purge(dsn: str, conn: asyncpg.Connection) -> None:
    ids = await seed(conn)
    refused = pgwake("jobs", "purge", dsn=dsn)
    assert refused.returncode == 2
    assert "without --yes" in refused.stderr
    assert await conn.fetchval("SELECT count(*) FROM pgwake.jobs") == 5
    young = pgwake("jobs", "purge", "--older-than", "3600", "--yes", "--json", dsn=dsn)
    assert json.loads(young.stdout) == {"purged": 0, "kept_for_unique_window": 0}
    failed = pgwake("jobs", "purge", "--status", "failed", "--yes", dsn=dsn)
    assert "purged 2 job(s)" in failed.stdout
    rest = pgwake("jobs", "purge", "--yes", dsn=dsn)
    assert "purged 2 job(s)" in rest.stdout
    left = [r["id"] for r in await conn.fetch("SELECT id FROM pgwake.jobs")]
    assert left == [ids["queued"]]  # never an active job
    bad = pgwake("jobs", "purge", "--status", "queued", "--yes", dsn=dsn)
    assert bad.returncode == 2
    assert "--status must be one of succeeded, failed, cancelled" in bad.stderr


async def test_views(conn: asyncpg.Connection) -> None:
    ids = await seed(conn)
    await conn.execute(
        "INSERT INTO pgwake.jobs (tenant_id, kind, run_at) "
        "VALUES ('acme', 'email', now() + interval '1 hour')"
    )
    await conn.execute("INSERT INTO pgwake.tenants (tenant_id, paused) VALUES ('acme', true)")
    status = {
        (r["kind"], r["status"]): r["jobs"]
        for r in await conn.fetch("SELECT * FROM pgwake.queue_status")
    }
    assert status == {("email", "queued"): 1, ("email", "scheduled"): 1}
    failed = await conn.fetch("SELECT id, error FROM pgwake.failed_jobs")
    assert {(r["id"], r["error"]) for r in failed} == {
        (ids["failed_email"], "boom"),
        (ids["failed_sms"], "no credit"),
    }
    backlog = await conn.fetch("SELECT * FROM pgwake.tenant_backlog")
    assert [(r["tenant_id"], r["queued"], r["scheduled"], r["paused"]) for r in backlog] == [
        ("acme", 1, 1, True)
    ]


def purge_on_a_terminal(dsn: str, answer: str) -> tuple[int, str]:
    """``pgwake jobs purge`` with a pseudo-terminal as its stdin, answering ``answer``."""
    leader, follower = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGWAKE_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "listener", "jobs", "purge", "--status", "failed"],
        env={**env, "PGWAKE_DSN": dsn, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        stdin=follower,
        stdout=follower,
        stderr=follower,
    )
    os.close(follower)
    seen = b""
    try:
        while b"[y/N]" not in seen:
            seen += os.read(leader, 1024)
        os.write(leader, answer.encode() + b"\n")
        code = proc.wait(timeout=60)
        with contextlib.suppress(OSError):  # EIO once the child has closed the terminal
            while chunk := os.read(leader, 1024):
                seen += chunk
    finally:
        os.close(leader)
        if proc.poll() is None:
            proc.kill()
    return code, seen.decode()


async def test_purge_asks_on_a_terminal(dsn: str, conn: asyncpg.Connection) -> None:
    await seed(conn)
    code, output = await anyio.to_thread.run_sync(purge_on_a_terminal, dsn, "n")
    assert code == 1, output
    assert "Delete every failed job?" in output
    assert await conn.fetchval("SELECT count(*) FROM pgwake.jobs WHERE status = 'failed'") == 2
    code, output = await anyio.to_thread.run_sync(purge_on_a_terminal, dsn, "y")
    assert code == 0, output
    assert "purged 2 job(s)" in output
    assert await conn.fetchval("SELECT count(*) FROM pgwake.jobs WHERE status = 'failed'") == 0
