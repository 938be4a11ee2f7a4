"""``pgwake status`` as a real process: exact figures on a database with known jobs and
workers (a real worker and registered ones that are gone, hung and late), its JSON
shape, bad arguments, an unreachable or unmigrated database, and query plans that read
the partial indexes, never the finished history."""

from __future__ import annotations

import json
import re
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from listener.queries import QUERIES
from listener.redact import redact
from tests.conftest import eventually, spawn_worker, stop_process
from tests.test_claim_plan import nodes
from tests.test_cli import pgwake

JOBS = """
INSERT INTO pgwake.jobs (tenant_id, kind, run_at)
SELECT 'acme', 'email.send', now() FROM generate_series(1, 5)
UNION ALL SELECT 'beta', 'email.send', now() FROM generate_series(1, 2)
UNION ALL SELECT 'beta', 'email.send', now() + interval '1 hour'
UNION ALL SELECT 'acme', 'report.build', now() FROM generate_series(1, 3)
UNION ALL SELECT 'gamma', 'orphan.kind', now() FROM generate_series(1, 4);
INSERT INTO pgwake.jobs (tenant_id, kind, status, attempts, finished_at, last_error)
SELECT 'acme', 'report.build', 'failed', 1, now(), 'boom' FROM generate_series(1, 2);
INSERT INTO pgwake.jobs (tenant_id, kind, payload)
SELECT 'ops', 'sleep', '{"seconds": 600}' FROM generate_series(1, 3);
INSERT INTO pgwake.tenants (tenant_id, max_concurrency, weight) VALUES ('acme', 5, 3);
INSERT INTO pgwake.tenants (tenant_id, paused) VALUES ('gamma', true);
"""


async def register(
    conn: asyncpg.Connection, host: str, kinds: list[str], heartbeat_age: float
) -> int:
    """A worker row (as a worker registers it) whose last heartbeat is this old."""
    worker_id = uuid.uuid4()
    key: int = await conn.fetchval(
        QUERIES["worker_register"], worker_id, host, 4242, kinds, 8, None
    )
    await conn.execute(
        "UPDATE pgwake.workers SET heartbeat_at = now() - make_interval(secs => $2) WHERE id = $1",
        worker_id,
        heartbeat_age,
    )
    return key


@pytest.fixture
async def known_queue(dsn: str, conn: asyncpg.Connection) -> AsyncIterator[dict[str, Any]]:
    """The jobs above; a real worker running two of the three sleep jobs; a worker that
    is gone (no lock), one hung (lock held, heartbeat an hour old) and one late (lock
    held, heartbeat 10 s old)."""
    await conn.execute(JOBS)
    worker = spawn_worker(
        dsn,
        "--kinds", "sleep",
        "--concurrency", "2",
        "--tenant-concurrency", "2",
        "--maintenance-interval", "3600",  # no recovery round would remove the gone one
        "--drain-timeout", "0",
    )  # fmt: skip
    locks = await asyncpg.connect(dsn)
    try:
        await eventually(
            lambda: conn.fetchval("SELECT count(*) = 2 FROM pgwake.jobs WHERE status = 'running'")
        )
        # The real worker, alone, takes the metrics lock at its start.
        await eventually(
            lambda: conn.fetchval(
                "SELECT count(*) = 1 FROM pg_locks WHERE locktype = 'advisory' "
                "AND classid = 1885828963 AND objid = 1 AND granted AND database = "
                "(SELECT oid FROM pg_database WHERE datname = current_database())"
            )
        )
        await register(conn, "ghost", ["orphan.kind"], 3600)
        for host, kinds, age in (
            ("hung-host", ["report.build"], 3600),
            ("late-host", ["email.send"], 10),
        ):
            key = await register(conn, host, kinds, age)
            assert await locks.fetchval(QUERIES["worker_lock"], key)
            # The lock counts only in the session the worker's row names (as a beat
            # from that session records it).
            await conn.execute(
                "UPDATE pgwake.workers SET session_pid = $2 WHERE lock_key = $1",
                key,
                locks.get_server_pid(),
            )
        yield {"pid": worker.pid}
    finally:
        await locks.close()
        stop_process(worker)


def table_rows(text: str, header: str) -> dict[str, list[str]]:
    """The rows of the table whose header line starts with ``header``, by first cell."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows: dict[str, list[str]] = {}
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        cells = re.split(r"\s{2,}", line.strip())
        rows[cells[0]] = cells[1:]
    return rows


async def test_status_json_has_the_exact_figures(dsn: str, known_queue: dict[str, Any]) -> None:
    done = pgwake("status", "--json", "--tenants", "3", dsn=dsn)
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert set(status) == {
        "database", "at", "totals", "oldest_queued_seconds", "kinds", "tenants",
        "active_tenants", "tenants_with_backlog", "workers", "unhandled_kinds",
    }  # fmt: skip
    assert status["totals"] == {"scheduled": 1, "queued": 15, "running": 2, "failed": 2}
    kinds = [
        (k["kind"], k["queued"], k["running"], k["scheduled"], k["failed"]) for k in status["kinds"]
    ]
    assert kinds == [
        ("email.send", 7, 0, 1, 0),
        ("orphan.kind", 4, 0, 0, 0),
        ("report.build", 3, 0, 0, 2),
        ("sleep", 1, 2, 0, 0),
    ]
    assert status["kinds"][0]["next_scheduled_at"] is not None
    assert all(k["oldest_queued_seconds"] >= 0 for k in status["kinds"])
    assert status["oldest_queued_seconds"] == max(
        k["oldest_queued_seconds"] for k in status["kinds"]
    )
    tenants = [
        (t["tenant"], t["queued"], t["running"], t["scheduled"], t["max_concurrency"],
         t["weight"], t["paused"])
        for t in status["tenants"]
    ]  # fmt: skip
    assert tenants == [
        ("acme", 8, 0, 0, 5, 3, False),
        ("gamma", 4, 0, 0, None, 1, True),
        ("beta", 2, 0, 1, None, 1, False),
    ]
    assert (status["active_tenants"], status["tenants_with_backlog"]) == (4, 4)
    workers = {
        w["hostname"]: (
            w["state"], w["live"], w["running"], w["concurrency"], w["kinds"], w["metrics_leader"]
        )
        for w in status["workers"]
    }  # fmt: skip
    assert workers == {
        socket.gethostname(): ("ok", True, 2, 2, ["sleep"], True),
        "ghost": ("gone", False, 0, 8, ["orphan.kind"], False),
        "hung-host": ("hung", False, 0, 8, ["report.build"], False),
        "late-host": ("late", True, 0, 8, ["email.send"], False),
    }
    (real,) = [w for w in status["workers"] if w["pid"] == known_queue["pid"]]
    assert real["heartbeat_age_seconds"] < 30
    assert [k["kind"] for k in status["unhandled_kinds"]] == ["orphan.kind", "report.build"]
    assert status["database"] == redact(dsn)  # the test's DSN, any password masked


async def test_status_tables(dsn: str, known_queue: dict[str, Any]) -> None:
    done = pgwake("status", "--tenants", "3", dsn=dsn)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    print(out)
    assert "jobs: 15 queued, 2 running, 1 scheduled, 2 failed; oldest queued job due " in out
    kinds = table_rows(out, "KIND")
    assert {k: v[:4] for k, v in kinds.items()} == {
        "email.send": ["7", "0", "1", "0"],
        "orphan.kind": ["4", "0", "0", "0"],
        "report.build": ["3", "0", "0", "2"],
        "sleep": ["1", "2", "0", "0"],
    }
    assert "tenants: 4 with queued jobs, 4 with active jobs; the top 3 by backlog:" in out
    tenants = table_rows(out, "TENANT")
    assert {t: v[:3] + v[4:] for t, v in tenants.items()} == {
        "acme": ["8", "0", "0", "5", "3"],
        "gamma": ["4", "0", "0", "-", "1", "paused"],
        "beta": ["2", "0", "1", "-", "1"],
    }
    host = socket.gethostname()
    assert (
        f"workers: 2 live of 4 registered; metrics leader: {host} pid {known_queue['pid']}" in out
    )
    workers = table_rows(out, "HOST")
    assert workers[socket.gethostname()][:2] == [str(known_queue["pid"]), "ok"]
    assert workers[socket.gethostname()][3:] == ["2/2", workers[socket.gethostname()][4], "sleep"]
    assert [workers[h][1] for h in ("ghost", "hung-host", "late-host")] == ["gone", "hung", "late"]
    assert workers["hung-host"][2] == "1h00m ago"
    assert "queued jobs no live worker claims:" in out
    assert re.search(r"^  orphan\.kind: 4 queued, oldest due \S+ ago$", out, re.MULTILINE), out
    assert re.search(r"^  report\.build: 3 queued, oldest due \S+ ago$", out, re.MULTILINE), out


async def test_status_of_an_empty_queue(dsn: str) -> None:
    done = pgwake("status", dsn=dsn)
    assert done.returncode == 0, done.stderr
    assert "jobs: 0 queued, 0 running, 0 scheduled, 0 failed; nothing queued" in done.stdout
    assert "workers: 0 live of 0 registered" in done.stdout
    assert "KIND" not in done.stdout
    assert "no live worker" not in done.stdout
    as_json = json.loads(pgwake("status", "--json", dsn=dsn).stdout)
    assert as_json["kinds"] == as_json["tenants"] == as_json["workers"] == []
    assert as_json["oldest_queued_seconds"] is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tenants", "0"], "--tenants"),
        (["--tenants", "many"], "--tenants"),
        (["--tenants", "1001"], "--tenants"),
        (["--bogus"], "--bogus"),
        (["extra"], "extra"),
    ],
)
def test_status_bad_arguments_exit_2(args: list[str], message: str) -> None:
    done = pgwake("status", *args, dsn="postgresql://postgres@127.0.0.1:1/unused")
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr


def test_status_unreachable_database_exits_4_without_the_password() -> None:
    done = pgwake("status", dsn="postgresql://app:status-secret-pw@127.0.0.1:1/app")
    assert done.returncode == 4, done.stderr
    assert "pgwake: error: cannot connect to postgresql://app:***@127.0.0.1:1/app" in done.stderr
    assert "status-secret-pw" not in done.stdout + done.stderr


def test_status_of_an_unmigrated_database_exits_5(empty_dsn: str) -> None:
    done = pgwake("status", dsn=empty_dsn)
    assert done.returncode == 5, done.stderr
    assert "pgwake migrate" in done.stderr


async def test_status_queries_and_views_read_indexes_not_the_history(
    conn: asyncpg.Connection,
) -> None:
    await conn.execute(
        "INSERT INTO pgwake.jobs (tenant_id, kind, status, attempts, finished_at) "
        "SELECT 't' || (i % 500), 'k' || (i % 10), 'succeeded', 1, now() "
        "FROM generate_series(1, 100000) AS i"
    )
    await conn.execute(
        "INSERT INTO pgwake.jobs (tenant_id, kind, status, claimed_by, attempts) "
        "SELECT 't' || (i % 50), 'k' || (i % 10), s, "
        "       CASE WHEN s = 'running' THEN gen_random_uuid() END, "
        "       CASE WHEN s = 'running' THEN 1 ELSE 0 END "
        "FROM generate_series(1, 300) AS i, "
        "     unnest(ARRAY['queued', 'running', 'scheduled', 'failed']) AS s"
    )
    await conn.execute("ANALYZE pgwake.jobs")
    # The CLI's queries, the leader's metrics samples, and the psql views.
    statements = {
        name: (QUERIES[name], args)
        for name, args in (
            ("job_count_by_kind", ()),
            ("tenant_list_backlog", (10,)),
            ("worker_list", ()),
            ("job_count_active", ()),
            ("tenant_count_queued", (5, ["t1"])),
        )
    }
    for view in ("queue_status", "tenant_backlog", "failed_jobs"):
        statements[view] = (f"SELECT * FROM pgwake.{view}", ())
    for name, (sql, args) in statements.items():
        plan = (await conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args))[0]
        scans = [n for n in nodes(plan["Plan"]) if n.get("Relation Name") == "jobs"]
        assert all(n["Node Type"] != "Seq Scan" for n in scans), (name, json.dumps(plan))
        if name != "worker_list":  # no worker registered: its subplan is not needed
            assert scans, name
