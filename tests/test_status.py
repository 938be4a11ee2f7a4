"""``pgwake status`` as a real process: exact figures on a database with known jobs and
workers (a real worker and registered ones that are gone, hung and late), its JSON
shape, bad arguments, an unreachable or unmigrated database, and query plans that read
the partial indexes, never the finished history."""

from __future__ import annotations

import json
import re
import signal
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from listener.queries import QUERIES
from listener.redact import redact
from tests.support.cli import pgwake
from tests.support.plans import nodes
from tests.support.waiting import eventually
from tests.support.workers import spawn_worker, stop_process

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
-- Waits for one of beta's queued jobs: counted as waiting, never as queued.
INSERT INTO pgwake.jobs (tenant_id, kind, depends_on)
SELECT 'beta', 'report.build', ARRAY[max(id)] FROM pgwake.jobs
 WHERE tenant_id = 'beta' AND status = 'queued';
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
    # Unhealthy: hung-host is hung.
    assert done.returncode == 1, done.stderr
    assert done.stderr == (
        "pgwake: error: unhealthy: 1 worker(s) hung (no heartbeat for 1h00m or more): "
        "hung-host pid 4242\n"
    )
    status = json.loads(done.stdout)
    assert set(status) == {
        "database", "at", "totals", "oldest_queued_seconds", "kinds", "tenants",
        "active_tenants", "tenants_with_backlog", "workers", "unhandled_kinds",
        "lost_workers", "drain", "failures", "retrying", "held_back", "held_back_total", "health",
    }  # fmt: skip
    assert status["health"] == {
        "healthy": False,
        "problems": ["1 worker(s) hung (no heartbeat for 1h00m or more): hung-host pid 4242"],
    }
    assert status["lost_workers"] == []
    # The two failed report.build jobs ended just now: in the drain and the errors.
    assert status["drain"]["finished"] == {"succeeded": 0, "failed": 2, "cancelled": 0}
    assert status["drain"]["per_minute"][-1] == 2
    assert sum(status["drain"]["per_minute"]) == 2
    assert status["drain"]["by_kind"] == {
        "report.build": {"succeeded": 0, "failed": 2, "cancelled": 0}
    }
    ((failure),) = status["failures"]
    assert (failure["kind"], failure["tenant"], failure["error"]) == (
        "report.build",
        "acme",
        "boom",
    )
    assert failure["failed_in_window"] == 2
    assert status["totals"] == {
        "waiting": 1, "scheduled": 1, "queued": 15, "running": 2, "failed": 2
    }  # fmt: skip
    kinds = [
        (k["kind"], k["queued"], k["running"], k["scheduled"], k["waiting"], k["failed"])
        for k in status["kinds"]
    ]
    assert kinds == [
        ("email.send", 7, 0, 1, 0, 0),
        ("orphan.kind", 4, 0, 0, 0, 0),
        ("report.build", 3, 0, 0, 1, 2),
        ("sleep", 1, 2, 0, 0, 0),
    ]
    assert status["kinds"][0]["next_scheduled_at"] is not None
    assert all(k["oldest_queued_seconds"] >= 0 for k in status["kinds"])
    assert status["oldest_queued_seconds"] == max(
        k["oldest_queued_seconds"] for k in status["kinds"]
    )
    tenants = [
        (t["tenant"], t["queued"], t["running"], t["scheduled"], t["waiting"],
         t["max_concurrency"], t["weight"], t["paused"])
        for t in status["tenants"]
    ]  # fmt: skip
    assert tenants == [
        ("acme", 8, 0, 0, 0, 5, 3, False),
        ("gamma", 4, 0, 0, 0, None, 1, True),
        ("beta", 2, 0, 1, 1, None, 1, False),
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
    assert done.returncode == 1, done.stderr  # hung-host is hung
    out = done.stdout
    print(out)
    assert out.endswith(
        "health: UNHEALTHY\n"
        "  - 1 worker(s) hung (no heartbeat for 1h00m or more): hung-host pid 4242\n"
    ), out
    assert re.search(
        r"^drain: 2 jobs ended in the last 5 min \(0\.4/min; this minute so far 2\): "
        r"0 succeeded, 2 failed, 0 cancelled$",
        out,
        re.MULTILINE,
    ), out
    assert "last failures by kind (FAILED: in the last 5 min):" in out
    assert re.search(r"^report\.build\s+\S+ ago\s+2\s+\d+\s+acme\s+1\s+boom$", out, re.M), out
    assert (
        "jobs: 15 queued, 2 running, 1 scheduled, 1 waiting, 2 failed; oldest queued job due "
        in out
    )
    kinds = table_rows(out, "KIND")
    assert {k: v[:5] for k, v in kinds.items()} == {
        "email.send": ["7", "0", "1", "0", "0"],
        "orphan.kind": ["4", "0", "0", "0", "0"],
        "report.build": ["3", "0", "0", "1", "2"],
        "sleep": ["1", "2", "0", "0", "0"],
    }
    assert "tenants: 4 with queued jobs, 4 with active jobs; the top 3 by backlog:" in out
    tenants = table_rows(out, "TENANT")
    assert {t: v[:4] + v[5:] for t, v in tenants.items()} == {
        "acme": ["8", "0", "0", "0", "5", "3"],
        "gamma": ["4", "0", "0", "0", "-", "1", "paused"],
        "beta": ["2", "0", "1", "1", "-", "1"],
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
    assert (
        "jobs: 0 queued, 0 running, 0 scheduled, 0 waiting, 0 failed; nothing queued" in done.stdout
    )
    assert "drain: 0 jobs ended in the last 5 min" in done.stdout
    assert done.stdout.endswith("health: ok\n")
    assert "workers: 0 live of 0 registered" in done.stdout
    assert "KIND" not in done.stdout
    assert "no live worker" not in done.stdout
    as_json = json.loads(pgwake("status", "--json", dsn=dsn).stdout)
    assert as_json["kinds"] == as_json["tenants"] == as_json["workers"] == []
    assert as_json["oldest_queued_seconds"] is None
    assert as_json["health"] == {"healthy": True, "problems": []}
    assert as_json["drain"]["per_minute"] == [0] * 5
    assert as_json["failures"] == as_json["retrying"] == as_json["lost_workers"] == []


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


async def test_status_drain_last_errors_and_retries_of_a_real_worker(
    dsn: str, conn: asyncpg.Connection
) -> None:
    """A real worker succeeds, fails for good and retries: the drain counts each job that
    ended, by kind; the latest failure of each kind and the kinds waiting to retry show
    their errors; healthy (exit 0) until jobs are queued with no live worker."""
    worker = spawn_worker(
        dsn,
        "--handlers", "tests.support.logging_handlers",
        "--retry-base", "3600",  # a failed attempt waits an hour: retrying, not failed
        "--retry-cap", "3600",
    )  # fmt: skip
    try:
        await conn.execute(
            "INSERT INTO pgwake.jobs (tenant_id, kind, max_attempts) "
            "SELECT 'acme', 'echo', 20 FROM generate_series(1, 6) "
            "UNION ALL SELECT 'beta', 'log.permanent', 20 FROM generate_series(1, 2) "
            "UNION ALL SELECT 'beta', 'log.flaky', 5 FROM generate_series(1, 3)"
        )
        later = await conn.fetchval(
            "INSERT INTO pgwake.jobs (kind, run_at) VALUES ('echo', now() + interval '1 hour') "
            "RETURNING id"
        )
        assert await conn.fetchval("SELECT pgwake.cancel_job($1)", later)

        async def settled() -> bool:
            counts = dict(
                await conn.fetch(
                    "SELECT status || ':' || kind, count(*) FROM pgwake.jobs GROUP BY 1"
                )
            )
            return counts == {
                "succeeded:echo": 6,
                "failed:log.permanent": 2,
                "scheduled:log.flaky": 3,
                "cancelled:echo": 1,
            }

        await eventually(settled, timeout=30)
        done = pgwake("status", "--json", dsn=dsn)
        assert done.returncode == 0, done.stderr
        status = json.loads(done.stdout)
        assert status["health"] == {"healthy": True, "problems": []}
        drain = status["drain"]
        assert drain["window_seconds"] == 300
        assert drain["finished"] == {"succeeded": 6, "failed": 2, "cancelled": 1}
        assert sum(drain["per_minute"]) == 9
        assert drain["jobs_per_second"] == 9 / 300
        assert drain["by_kind"] == {
            "echo": {"succeeded": 6, "failed": 0, "cancelled": 1},
            "log.permanent": {"succeeded": 0, "failed": 2, "cancelled": 0},
        }
        ((failure),) = status["failures"]
        assert (failure["kind"], failure["tenant"], failure["attempts"]) == (
            "log.permanent", "beta", 1
        )  # fmt: skip
        assert failure["error"] == "PermanentError: the order does not exist"
        assert failure["failed_in_window"] == 2
        assert status["retrying"] == [
            {"kind": "log.flaky", "jobs": 3, "error": "RuntimeError: flaky dependency said: no"}
        ]
        text = pgwake("status", "--window", "2", dsn=dsn)
        assert text.returncode == 0, text.stderr
        out = text.stdout
        print(out)
        assert "drain: 9 jobs ended in the last 2 min (4.5/min; " in out
        assert re.search(
            r"^log\.permanent\s+\S+ ago\s+2\s+\d+\s+beta\s+1\s+PermanentError: the order does "
            r"not exist$",
            out,
            re.M,
        ), out
        assert "waiting to retry after a failed attempt:" in out
        assert re.search(r"^log\.flaky\s+3\s+RuntimeError: flaky dependency said: no$", out, re.M)
        assert out.endswith("health: ok\n")
    finally:
        code, output = stop_process(worker)
    assert code == 0, output
    # No live worker: the retrying jobs are scheduled, not queued, so still healthy...
    assert pgwake("status", dsn=dsn).returncode == 0
    # ...until a job is queued.
    await conn.execute("INSERT INTO pgwake.jobs (kind) VALUES ('echo')")
    done = pgwake("status", dsn=dsn)
    assert done.returncode == 1
    assert done.stderr == "pgwake: error: unhealthy: no live worker while 1 jobs are queued\n"
    assert done.stdout.endswith(
        "health: UNHEALTHY\n  - no live worker while 1 jobs are queued\n"
    ), done.stdout


async def test_status_unhealthy_when_the_oldest_queued_job_waits_too_long(
    dsn: str, conn: asyncpg.Connection
) -> None:
    await conn.execute(
        "INSERT INTO pgwake.jobs (kind, run_at) "
        "SELECT 'nobody.handles', now() - interval '10 minutes' FROM generate_series(1, 3)"
    )
    done = pgwake("status", "--json", dsn=dsn)
    assert done.returncode == 1
    problems = json.loads(done.stdout)["health"]["problems"]
    assert problems[0] == "no live worker while 3 jobs are queued"
    assert re.fullmatch(
        r"the oldest queued job has been due for 10m0\ds \(--max-wait 300s\)", problems[1]
    ), problems
    assert len(problems) == 2
    for max_wait in ("0", "3600"):
        done = pgwake("status", "--json", "--max-wait", max_wait, dsn=dsn)
        assert json.loads(done.stdout)["health"]["problems"] == [
            "no live worker while 3 jobs are queued"
        ]
    bad = pgwake("status", "--max-wait", "-1", dsn=dsn)
    assert bad.returncode == 2
    assert "--max-wait" in bad.stderr


async def test_status_shows_a_worker_declared_lost_that_is_still_connected(
    dsn: str, conn: asyncpg.Connection
) -> None:
    """A worker stopped (SIGSTOP) and declared lost (its row removed, as the maintenance
    leader does) keeps its sessions and the metrics lock: status lists it, exits 1, and
    is healthy again once the process is gone."""
    victim = spawn_worker(dsn, "--kinds", "sleep")
    try:
        await eventually(
            lambda: conn.fetchval(
                "SELECT count(*) = 1 FROM pg_locks WHERE locktype = 'advisory' "
                "AND classid = 1885828963 AND objid = 1 AND granted AND database = "
                "(SELECT oid FROM pg_database WHERE datname = current_database())"
            )
        )
        victim.send_signal(signal.SIGSTOP)
        assert await conn.fetchval(
            "DELETE FROM pgwake.workers WHERE pid = $1 RETURNING 1", victim.pid
        )
        done = pgwake("status", "--json", dsn=dsn)
        assert done.returncode == 1, done.stderr
        status = json.loads(done.stdout)
        assert status["workers"] == []
        ((lost),) = status["lost_workers"]
        assert (lost["hostname"], lost["pid"], lost["metrics_leader"]) == (
            socket.gethostname(), victim.pid, True
        )  # fmt: skip
        sessions = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 "
            "AND datname = current_database()",
            f"pgwake@{socket.gethostname()}:{victim.pid}",
        )
        assert lost["sessions"] == sessions >= 2  # its pool's, its heartbeat's, its LISTEN's
        assert status["health"]["problems"] == [
            (
                f"1 worker(s) declared lost still connected: {socket.gethostname()} pid "
                f"{victim.pid} ({sessions} session(s), holding the metrics lock)"
            )
        ]
        text = pgwake("status", dsn=dsn).stdout
        assert "workers declared lost but still connected (their jobs went to others):" in text
        assert re.search(rf"^\S+\s+{victim.pid}\s+{sessions}\s+held\s+\S+ ago\s+\S+$", text, re.M)
    finally:
        victim.send_signal(signal.SIGKILL)
        stop_process(victim, terminate=False)

    async def healthy() -> bool:
        return pgwake("status", dsn=dsn).returncode == 0

    await eventually(healthy, timeout=30)
