"""What the command line prints of text from the database (issue 13, point 15), and
``jobs retry --failed`` when a unique key is taken (issue 13, point 16)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import asyncpg
import pytest

from listener import db
from listener.cli.terminal import shown, shown_lines
from tests.support.cli import pgwake
from tests.support.databases import as_user, fresh_role

HOSTILE = "report\x1b]0;owned\x07\nINJECTED LINE\u202e"
ESCAPED = "report\\x1b]0;owned\\x07\\nINJECTED LINE\\u202e"


def test_shown_escapes_controls_and_keeps_other_text() -> None:
    assert shown(HOSTILE) == ESCAPED
    assert shown("tab\there\r\x00\x7f\x9b") == "tab\\there\\r\\x00\\x7f\\x9b"
    assert shown("café 東京 🚀 a\\b") == "café 東京 🚀 a\\b"
    assert shown_lines("Traceback:\n  line \x1b[2J") == "  Traceback:\n    line \\x1b[2J"


def _clean(output: str) -> None:
    """No raw control character but line breaks, and no forged line (a multi-line error
    keeps its line breaks in ``jobs show``, every line indented under ``last_error:``)."""
    assert not [c for c in output if (ord(c) < 32 and c != "\n") or 0x7F <= ord(c) <= 0x9F]
    assert "\u202e" not in output
    assert not [line for line in output.splitlines() if line.startswith("INJECTED")]


@pytest.fixture
async def hostile_rows(
    server_dsn: str, dsn: str, conn: asyncpg.Connection
) -> AsyncIterator[dict[str, int]]:
    """A confined role (a real login) enqueues a job whose tenant and kind hold escape
    sequences, a line break and a bidi override; a failed job's error, a tenant's id and
    a schedule's name hold them too."""
    async with fresh_role(server_dsn, dsn, "hostile") as role:
        await conn.execute("SELECT pgwake.confine_role_to_tenant($1, $2)", role, HOSTILE)
        app = await db.connect(as_user(dsn, role))
        try:
            queued = await app.fetchval(
                "INSERT INTO pgwake.jobs (tenant_id, kind) VALUES ($1, $1) RETURNING id", HOSTILE
            )
        finally:
            await app.close()
        failed = await conn.fetchval(
            "INSERT INTO pgwake.jobs (tenant_id, kind, status, attempts, last_error, "
            "finished_at) VALUES ($1, $1, 'failed', 1, $1, now()) RETURNING id",
            HOSTILE,
        )
        await conn.execute("INSERT INTO pgwake.tenants (tenant_id) VALUES ($1)", HOSTILE)
        await conn.execute(
            "INSERT INTO pgwake.schedules (name, cron, kind, tenant_id, enabled, last_error) "
            "VALUES ($1, '* * * * *', $1, $1, false, $1)",
            HOSTILE,
        )
        yield {"queued": queued, "failed": failed}


async def test_text_from_the_database_is_printed_escaped(
    dsn: str, hostile_rows: dict[str, int]
) -> None:
    """Fails on 8feecbc: ``status``, ``jobs list``, ``jobs show``, ``tenants list``,
    ``tenants show`` and ``schedules list`` print the raw ESC ... BEL sequence (which
    retitles the terminal) and a forged ``INJECTED LINE``."""
    commands = [
        ["status"],
        ["jobs", "list"],
        ["jobs", "show", str(hostile_rows["queued"])],
        ["jobs", "show", str(hostile_rows["failed"])],
        ["tenants", "list"],
        ["tenants", "show", HOSTILE],
        ["schedules", "list"],
    ]
    for args in commands:
        done = pgwake(*args, dsn=dsn)
        # status: a job is queued and no worker runs, so it says unhealthy (exit 1).
        assert done.returncode == (1 if args == ["status"] else 0), (args, done.stderr)
        _clean(done.stdout + done.stderr)
        assert ESCAPED in done.stdout or ESCAPED[:16] in done.stdout, (args, done.stdout)
    # --json keeps the exact value (JSON escapes it).
    listed = pgwake("jobs", "list", "--json", dsn=dsn)
    assert {job["kind"] for job in json.loads(listed.stdout)["jobs"]} == {HOSTILE}
    # An error message naming such a value is escaped too.
    missing = pgwake("tenants", "show", HOSTILE + "x", dsn=dsn)
    assert missing.returncode == 1
    _clean(missing.stderr)


async def test_retry_failed_retries_what_it_can_and_names_the_rest(
    dsn: str, conn: asyncpg.Connection
) -> None:
    """Fails on 8feecbc: one failed job whose unique key an active job holds makes
    ``jobs retry --failed`` exit 1 with the raw constraint error (two lines, the row in
    the DETAIL) and retry none of the others."""
    rows = await conn.fetch(
        "INSERT INTO pgwake.jobs (kind, unique_key, status, attempts, finished_at) VALUES "
        "('sync', 'k1', 'failed', 1, now()), "  # its key is held by the queued job below
        "('sync', NULL, 'failed', 1, now()), "
        "('sync', 'k2', 'failed', 1, now()), "  # two failed jobs share k2: one goes
        "('sync', 'k2', 'failed', 1, now()), "
        "('sync', 'k3', 'failed', 1, now()) RETURNING id"
    )
    held_k1, plain, older_k2, newer_k2, free_k3 = (r["id"] for r in rows)
    holder = await conn.fetchval(
        "INSERT INTO pgwake.jobs (kind, unique_key) VALUES ('sync', 'k1') RETURNING id"
    )
    done = pgwake("jobs", "retry", "--failed", dsn=dsn)
    assert done.returncode == 1, done.stderr
    line = done.stderr.strip()
    assert len(line.splitlines()) == 1, line
    assert f"{held_k1} (its unique key is held by active job {holder})" in line
    assert f"{older_k2} (job {newer_k2}, with the same unique key, is retried instead)" in line
    assert "queued again: 3 job(s)" in done.stdout
    status = dict(await conn.fetch("SELECT id, status FROM pgwake.jobs"))
    assert status[held_k1] == "failed"
    assert status[older_k2] == "failed"
    assert status[plain] == status[newer_k2] == status[free_k3] == "queued"
    as_json = pgwake("jobs", "retry", str(held_k1), "--json", dsn=dsn)
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout) == {
        "retried": [],
        "not_retried": {str(held_k1): f"its unique key is held by active job {holder}"},
    }
