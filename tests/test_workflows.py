"""Fan-out and fan-in from handlers (issue 19): ``ctx.enqueue`` creates child jobs with
the parent's successful outcome, exactly once, across worker processes and a kill -9;
a final job that depends on them all runs once after them and reads their results
(``ctx.dependency_results``); a child that fails for good cancels it, unless it runs
anyway; an attempt that fails creates no children."""

from __future__ import annotations

import json
import os
import re
import signal
from typing import Any

import asyncpg
import pytest

from listener.api import JobContext, Registry
from listener.cli.bench.queries import BENCH_QUERIES
from tests.support.waiting import eventually
from tests.support.workers import running_worker, spawn_worker, stop_process, wait_ready
from tests.support.workflow_handlers import WORKFLOW, create_runs_table, workflow_registry


@pytest.fixture(autouse=True)
def handlers_dsn(dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """fan_in records its runs through PGWAKE_DSN (in process too)."""
    monkeypatch.setenv("PGWAKE_DSN", dsn)


FAST = ("--heartbeat-interval", "0.5", "--heartbeat-timeout", "3", "--poll-interval", "1")


async def enqueue_fan_out(conn: asyncpg.Connection, **payload: Any) -> int:
    job_id: int = await conn.fetchval(
        "INSERT INTO pgwake.jobs (kind, payload) VALUES ('fan_out', $1) RETURNING id", payload
    )
    return job_id


async def ended(conn: asyncpg.Connection, job_id: int) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT status, result, last_error, started_at FROM pgwake.jobs "
        "WHERE id = $1 AND status IN ('succeeded', 'failed', 'cancelled')",
        job_id,
    )
    return row


async def test_fan_out_and_fan_in_across_three_workers_with_one_killed(
    dsn: str, conn: asyncpg.Connection
) -> None:
    await create_runs_table(conn)
    workers = [
        spawn_worker(
            dsn, "--handlers", WORKFLOW, "--concurrency", "4", "--tenant-concurrency", "4", *FAST
        )
        for _ in range(3)
    ]
    killed = None
    try:
        await wait_ready(conn, 3)
        parent = await enqueue_fan_out(conn, children=100, child_sleep=0.3)
        done = await eventually(lambda: ended(conn, parent), timeout=30)
        assert done["status"] == "succeeded"
        final = done["result"]["final"]
        children = done["result"]["children"]

        async def a_third_done_and_one_worker_busy() -> int | None:
            n = await conn.fetchval(
                "SELECT count(*) FROM pgwake.jobs WHERE kind = 'fan_child' AND status = 'succeeded'"
            )
            pid = await conn.fetchval(
                "SELECT w.pid FROM pgwake.workers AS w JOIN pgwake.jobs AS j "
                "ON j.claimed_by = w.id AND j.status = 'running' LIMIT 1"
            )
            return pid if n >= 30 and pid is not None else None

        pid = await eventually(a_third_done_and_one_worker_busy, timeout=60, interval=0.005)
        assert await conn.fetchval("SELECT status FROM pgwake.jobs WHERE id = $1", final) == (
            "waiting"
        )
        killed = next(w for w in workers if w.pid == pid)
        os.kill(pid, signal.SIGKILL)
        killed.communicate(timeout=10)
        row = await eventually(lambda: ended(conn, final), timeout=90)
        assert row["status"] == "succeeded", row["last_error"]
        # No child was created twice, and each succeeded before the final job started.
        kids = await conn.fetch(
            "SELECT id, status, finished_at FROM pgwake.jobs WHERE kind = 'fan_child'"
        )
        assert sorted(k["id"] for k in kids) == sorted(children)
        assert {k["status"] for k in kids} == {"succeeded"}
        assert max(k["finished_at"] for k in kids) <= row["started_at"]
        # The final job ran exactly once and saw the 100 results.
        runs = await conn.fetch("SELECT job_id, seen, failed FROM test_fan_in_runs")
        assert [(r["job_id"], r["seen"], r["failed"]) for r in runs] == [(final, 100, [])]
        assert row["result"] == {"seen": 100, "failed": [], "sum": sum(i * i for i in range(100))}
        assert await conn.fetchval("SELECT count(*) FROM pgwake.jobs") == 102
        # Some child was recovered from the killed worker (its attempt counted).
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM pgwake.jobs WHERE kind = 'fan_child' "
                "AND last_error LIKE 'recovered:%'"
            )
            >= 0
        )
    finally:
        for w in workers:
            if w is not killed:
                code, output = stop_process(w)
                assert code == 0, output


async def test_a_child_failing_for_good_cancels_the_final_job_naming_it(
    dsn: str, conn: asyncpg.Connection
) -> None:
    await create_runs_table(conn)
    async with running_worker(dsn, workflow_registry(), poll_interval=3600):
        parent = await enqueue_fan_out(conn, children=5, fail_child=2)
        done = await eventually(lambda: ended(conn, parent), timeout=30)
        final, children = done["result"]["final"], done["result"]["children"]
        row = await eventually(lambda: ended(conn, final), timeout=30)
    assert row["status"] == "cancelled"
    assert row["last_error"] == f"cancelled: depends on job {children[2]}, which failed"
    assert await conn.fetchval("SELECT count(*) FROM test_fan_in_runs") == 0


async def test_with_run_anyway_the_final_job_runs_and_sees_which_failed(
    dsn: str, conn: asyncpg.Connection
) -> None:
    await create_runs_table(conn)
    async with running_worker(dsn, workflow_registry(), poll_interval=3600):
        parent = await enqueue_fan_out(conn, children=5, fail_child=2, run_anyway=True)
        done = await eventually(lambda: ended(conn, parent), timeout=30)
        final, children = done["result"]["final"], done["result"]["children"]
        row = await eventually(lambda: ended(conn, final), timeout=30)
    assert row["status"] == "succeeded", row["last_error"]
    assert row["result"] == {"seen": 5, "failed": [children[2]], "sum": 0 + 1 + 9 + 16}
    statuses = await conn.fetch(
        "SELECT status, count(*) FROM pgwake.jobs WHERE kind = 'fan_child' GROUP BY status"
    )
    assert dict(statuses) == {"succeeded": 4, "failed": 1}


async def test_an_attempt_that_fails_creates_no_children_and_its_retry_creates_them_once(
    dsn: str, conn: asyncpg.Connection
) -> None:
    await create_runs_table(conn)
    async with running_worker(dsn, workflow_registry(), poll_interval=3600):
        parent = await enqueue_fan_out(conn, children=3, fail_first_attempt=True)
        done = await eventually(lambda: ended(conn, parent), timeout=30)
        final = done["result"]["final"]
        await eventually(lambda: ended(conn, final), timeout=30)
    assert done["status"] == "succeeded"
    # The first attempt reserved ids (named in its error) that were never created.
    first = json.loads(re.search(r"attempt 1 reserved (\[.*\])", done["last_error"])[1])
    assert len(first) == 4
    assert await conn.fetchval("SELECT count(*) FROM pgwake.jobs WHERE id = ANY ($1)", first) == 0
    rows = await conn.fetch("SELECT kind, count(*) FROM pgwake.jobs GROUP BY kind")
    assert dict(rows) == {"fan_out": 1, "fan_child": 3, "fan_in": 1}
    assert await conn.fetchval("SELECT attempts FROM pgwake.jobs WHERE id = $1", parent) == 2
    assert await conn.fetchval("SELECT count(*) FROM test_fan_in_runs") == 1


async def test_a_chain_of_1000_inserted_in_one_statement_runs_in_order(
    dsn: str, conn: asyncpg.Connection
) -> None:
    """Each link starts after its predecessor's outcome (the figures of the gap come from
    ``python -m listener.cli.bench.chain``; this test checks the order only)."""
    worker = spawn_worker(dsn, *FAST)
    try:
        await wait_ready(conn)
        await conn.execute(BENCH_QUERIES["job_insert_chain"], 1000)
        assert (
            await conn.fetchval("SELECT count(*) FROM pgwake.jobs WHERE status = 'waiting'") == 999
        )

        async def all_succeeded() -> bool:
            n = await conn.fetchval("SELECT count(*) FROM pgwake.jobs WHERE status = 'succeeded'")
            return bool(n == 1000)

        await eventually(all_succeeded, timeout=120, interval=0.1)
    finally:
        code, output = stop_process(worker)
        assert code == 0, output
    rows = await conn.fetch(BENCH_QUERIES["job_list_chain_gaps"])
    assert len(rows) == 999
    assert all(r["in_order"] for r in rows)
    starts = await conn.fetch("SELECT id, started_at, attempts FROM pgwake.jobs ORDER BY id")
    assert [r["started_at"] for r in starts] == sorted(r["started_at"] for r in starts)
    assert {r["attempts"] for r in starts} == {1}


async def test_a_child_the_database_refuses_fails_its_parent_alone(
    dsn: str, conn: asyncpg.Connection
) -> None:
    """A handler that enqueues a child depending on another tenant's job: the insert
    refuses it, so the parent's outcome write fails; the completer records that parent
    failed with the database's message, creates none of its children, and the jobs
    written in the same batches are unaffected."""
    theirs = await conn.fetchval(
        "INSERT INTO pgwake.jobs (tenant_id, kind, status, finished_at) "
        "VALUES ('other', 'x', 'succeeded', now()) RETURNING id"
    )
    registry = Registry()

    @registry.handler("bad_parent")
    async def bad_parent(payload: dict[str, Any], ctx: JobContext) -> None:
        await ctx.enqueue("child", {})
        await ctx.enqueue("child", {}, depends_on=[theirs])

    @registry.handler("fine")
    async def fine(payload: dict[str, Any], ctx: JobContext) -> dict[str, int]:
        return {"ok": 1}

    async with running_worker(dsn, registry, poll_interval=3600):
        bad = await conn.fetchval(
            "INSERT INTO pgwake.jobs (kind, max_attempts) VALUES ('bad_parent', 1) RETURNING id"
        )
        await conn.execute(
            "INSERT INTO pgwake.jobs (kind) SELECT 'fine' FROM generate_series(1, 20)"
        )
        row = await eventually(lambda: ended(conn, bad), timeout=30)

        async def fine_done() -> bool:
            n = await conn.fetchval(
                "SELECT count(*) FROM pgwake.jobs WHERE kind = 'fine' AND status = 'succeeded'"
            )
            return bool(n == 20)

        await eventually(fine_done, timeout=30)
    assert row["status"] == "failed"
    assert "the database refused this job's outcome" in row["last_error"]
    assert f"job {theirs} does not" in row["last_error"]
    assert await conn.fetchval("SELECT count(*) FROM pgwake.jobs WHERE kind = 'child'") == 0
