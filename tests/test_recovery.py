"""Crash safety with real processes and real faults: a worker killed with SIGKILL, a
worker whose event loop is blocked past the heartbeat timeout, the maintenance leader
changing hands, and running jobs cancelled from SQL."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from typing import Any

import asyncpg
import pytest

from listener import db
from listener.api import JobContext
from listener.config import load_settings
from listener.maintenance.recovery import Recoverer
from listener.metrics import Metrics
from listener.queries import QUERIES
from listener.registry import Registry
from listener.service import session_settings
from tests.support.cli import pgwake
from tests.support.recording_handlers import RECORDING, create_executions_table
from tests.support.waiting import eventually
from tests.support.workers import running_worker, spawn_worker, stop_process, wait_ready

# Fast enough for tests, still well above scheduling noise.
FAST = ("--heartbeat-interval", "0.5", "--heartbeat-timeout", "3", "--poll-interval", "60")


async def worker_id_of(conn: asyncpg.Connection, pid: int) -> uuid.UUID:
    async def registered() -> uuid.UUID | None:
        found: uuid.UUID | None = await conn.fetchval(
            "SELECT id FROM pgwake.workers WHERE pid = $1", pid
        )
        return found

    return await eventually(registered, timeout=30)


async def test_killed_worker_jobs_are_finished_by_another_worker(
    dsn: str, conn: asyncpg.Connection
) -> None:
    await create_executions_table(conn)
    victim = spawn_worker(
        dsn, "--handlers", RECORDING, "--concurrency", "20", "--tenant-concurrency", "20", *FAST
    )
    survivor = None
    try:
        victim_id = await worker_id_of(conn, victim.pid)
        await conn.execute(
            "INSERT INTO pgwake.jobs (kind, payload) "
            "SELECT 'record', '{\"sleep\": 6}' FROM generate_series(1, 20)"
        )

        async def all_held_by_victim() -> bool:
            n = await conn.fetchval(
                "SELECT count(*) FROM pgwake.jobs WHERE status = 'running' AND claimed_by = $1",
                victim_id,
            )
            return bool(n == 20)

        await eventually(all_held_by_victim, timeout=30)
        survivor = spawn_worker(
            dsn, "--handlers", RECORDING, "--concurrency", "20", "--tenant-concurrency", "20", *FAST
        )
        await wait_ready(conn, 2)
        os.kill(victim.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        victim.communicate(timeout=10)

        async def recovered() -> bool:
            n = await conn.fetchval(
                "SELECT count(*) FROM pgwake.jobs WHERE claimed_by = $1", victim_id
            )
            return n == 0

        await eventually(recovered, timeout=30, interval=0.05)
        detection = time.monotonic() - killed_at

        async def all_succeeded() -> bool:
            n = await conn.fetchval("SELECT count(*) FROM pgwake.jobs WHERE status = 'succeeded'")
            return bool(n == 20)

        await eventually(all_succeeded, timeout=60)
        rows = await conn.fetch("SELECT attempts, last_error FROM pgwake.jobs")
        # The killed attempt counted; its reason is kept.
        assert {r["attempts"] for r in rows} == {2}
        assert all("died (its liveness lock was released)" in r["last_error"] for r in rows)
        assert all(str(victim_id) in r["last_error"] for r in rows)
        executions = await conn.fetch("SELECT pid, attempt FROM test_executions")
        assert len(executions) == 20  # each exactly once (primary key on job_id)
        assert {e["pid"] for e in executions} == {survivor.pid}
        # The lost worker's row is gone; the survivor is the only one registered.
        workers = await conn.fetch("SELECT pid FROM pgwake.workers")
        assert [w["pid"] for w in workers] == [survivor.pid]
        print(f"\nkill -9 detected and 20 jobs put back after {detection:.2f}s")
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.communicate()
        if survivor is not None:
            code, output = stop_process(survivor)
            assert code == 0, output
            assert "recovered jobs of lost workers" in output or "recovered" in output


async def test_hung_worker_loses_its_job_and_its_late_writes_change_nothing(
    dsn: str, conn: asyncpg.Connection
) -> None:
    workers = [spawn_worker(dsn, "--handlers", RECORDING, *FAST) for _ in range(2)]
    try:
        await wait_ready(conn, 2)
        job_id = await conn.fetchval(
            "INSERT INTO pgwake.jobs (kind, payload) VALUES ('stall', '{\"block\": 8}') "
            "RETURNING id"
        )

        async def first_holder() -> uuid.UUID | None:
            holder: uuid.UUID | None = await conn.fetchval(
                "SELECT claimed_by FROM pgwake.jobs WHERE id = $1 AND attempts = 1", job_id
            )
            return holder

        hung_id = await eventually(first_holder, timeout=30)
        claimed_at = time.monotonic()
        hung_pid = await conn.fetchval("SELECT pid FROM pgwake.workers WHERE id = $1", hung_id)

        async def taken_away() -> bool:
            holder = await conn.fetchval("SELECT claimed_by FROM pgwake.jobs WHERE id = $1", job_id)
            return holder != hung_id

        await eventually(taken_away, timeout=30, interval=0.05)
        detected = time.monotonic() - claimed_at

        async def finished() -> asyncpg.Record | None:
            row: asyncpg.Record | None = await conn.fetchrow(
                "SELECT status, attempts, result, last_error FROM pgwake.jobs "
                "WHERE id = $1 AND status = 'succeeded'",
                job_id,
            )
            return row

        # The other worker recovers the job after the heartbeat timeout and runs it.
        done = await eventually(finished, timeout=30)
        assert done["attempts"] == 2
        assert done["result"]["attempt"] == 2
        assert done["result"]["pid"] != hung_pid
        assert "sent no heartbeat" in done["last_error"]
        assert str(hung_id) in done["last_error"]

        # The hung worker wakes: its handler returns for attempt 1, its heartbeat finds it
        # was declared lost, and it registers again.
        async def re_registered() -> bool:
            n = await conn.fetchval(
                "SELECT count(*) FROM pgwake.workers WHERE id = $1 AND heartbeat_at > now() "
                "- interval '2 seconds'",
                hung_id,
            )
            return bool(n)

        await eventually(re_registered, timeout=30)
        after = await conn.fetchrow(
            "SELECT status, attempts, result, last_error FROM pgwake.jobs WHERE id = $1", job_id
        )
        assert dict(after) == dict(done)
        # It works again: a new job is run (by one of the two).
        await conn.execute(
            "INSERT INTO pgwake.jobs (kind, payload) VALUES ('stall', '{\"block\": 0}')"
        )

        async def second_done() -> bool:
            n = await conn.fetchval("SELECT count(*) FROM pgwake.jobs WHERE status = 'succeeded'")
            return bool(n == 2)

        await eventually(second_done, timeout=30)
    finally:
        outputs = [stop_process(w) for w in workers]
    print(f"\nhung worker (heartbeat timeout 3 s) lost its job {detected:.2f}s after the claim")
    hung_output = next(
        out for w, (_, out) in zip(workers, outputs, strict=True) if w.pid == hung_pid
    )
    assert "this worker was declared lost" in hung_output
    events = [json.loads(line) for line in hung_output.splitlines() if line.startswith("{")]
    assert any(e.get("event", "").startswith("this worker was declared lost") for e in events)
    for code, output in outputs:
        assert code == 0, output


async def test_cancel_running_job_from_sql_stops_its_handler(
    dsn: str, conn: asyncpg.Connection
) -> None:
    await create_executions_table(conn)
    worker = spawn_worker(dsn, "--handlers", RECORDING, *FAST)
    try:
        await wait_ready(conn, 1)
        job_id = await conn.fetchval(
            "INSERT INTO pgwake.jobs (kind, payload, max_attempts) "
            "VALUES ('record', '{\"sleep\": 60}', 5) RETURNING id"
        )

        async def running() -> bool:
            status = await conn.fetchval("SELECT status FROM pgwake.jobs WHERE id = $1", job_id)
            return status == "running"

        await eventually(running, timeout=30)
        assert await conn.fetchval("SELECT pgwake.cancel_job($1)", job_id) is True
        asked = time.monotonic()

        async def cancelled() -> asyncpg.Record | None:
            row: asyncpg.Record | None = await conn.fetchrow(
                "SELECT status, attempts, last_error, finished_at FROM pgwake.jobs "
                "WHERE id = $1 AND status = 'cancelled'",
                job_id,
            )
            return row

        row = await eventually(cancelled, timeout=10, interval=0.01)
        stopped_after = time.monotonic() - asked
        assert row["attempts"] == 1
        assert row["last_error"] == "cancelled: requested while running"
        # No retry: a job inserted after it runs to its end, and the worker beats its
        # heart after that, while it stays cancelled and the handler never recorded it.
        marker = await conn.fetchval(
            "INSERT INTO pgwake.jobs (kind) VALUES ('record') RETURNING id"
        )

        async def marker_done_then_a_heartbeat() -> bool:
            return bool(
                await conn.fetchval(
                    "SELECT j.status = 'succeeded' AND w.heartbeat_at > j.finished_at "
                    "FROM pgwake.jobs AS j, pgwake.workers AS w WHERE j.id = $1",
                    marker,
                )
            )

        await eventually(marker_done_then_a_heartbeat, timeout=30)
        assert await conn.fetchval("SELECT status FROM pgwake.jobs WHERE id = $1", job_id) == (
            "cancelled"
        )
        assert await conn.fetchval("SELECT array_agg(job_id) FROM test_executions") == [marker]
        # A finished job cannot be cancelled again.
        assert await conn.fetchval("SELECT pgwake.cancel_job($1)", job_id) is False
        print(f"\nrunning job cancelled {stopped_after:.3f}s after pgwake.cancel_job")
    finally:
        code, output = stop_process(worker)
    assert code == 0, output


async def test_claim_whose_reply_was_lost_is_put_back_and_run(
    dsn: str, conn: asyncpg.Connection
) -> None:
    registry = Registry()

    @registry.handler("echo")
    async def echo(payload: dict[str, Any], _ctx: JobContext) -> dict[str, Any]:
        return payload

    async with running_worker(
        dsn, registry, heartbeat_interval=0.2, heartbeat_timeout=5, poll_interval=3600
    ) as service:
        job_id = await conn.fetchval(
            "INSERT INTO pgwake.jobs (kind, payload, run_at) "
            "VALUES ('echo', '{\"x\": 1}', now() + interval '1 hour') RETURNING id"
        )
        # What a claim that committed on the server looks like when its reply never
        # reached the worker: the row says running, held by this worker, attempt 1.
        await conn.execute(
            "UPDATE pgwake.jobs SET status = 'running', claimed_by = $1, attempts = 1, "
            "started_at = now(), run_at = now() WHERE id = $2",
            service.worker_id,
            job_id,
        )

        async def succeeded() -> asyncpg.Record | None:
            row: asyncpg.Record | None = await conn.fetchrow(
                "SELECT attempts, result FROM pgwake.jobs WHERE id = $1 AND status = 'succeeded'",
                job_id,
            )
            return row

        row = await eventually(succeeded, timeout=15)
        # Put back with the attempt given back (no handler ran), then claimed and run once.
        assert row["attempts"] == 1
        assert row["result"] == {"x": 1}


async def test_maintenance_goes_on_when_the_workers_that_led_it_die(
    dsn: str, conn: asyncpg.Connection
) -> None:
    """Two of three workers are killed at once, both holding jobs; the third, whoever led
    maintenance before, takes the next rounds and recovers all of them."""
    await create_executions_table(conn)
    args = ("--handlers", RECORDING, "--concurrency", "10", "--tenant-concurrency", "10", *FAST)
    victims = []
    survivor = None
    try:
        for tenant in ("a", "b"):
            victim = spawn_worker(dsn, *args)
            victims.append(victim)
            victim_id = await worker_id_of(conn, victim.pid)
            await conn.execute(
                "INSERT INTO pgwake.jobs (tenant_id, kind, payload) "
                "SELECT $1, 'record', '{\"sleep\": 6}' FROM generate_series(1, 10)",
                tenant,
            )

            async def holds_ten(worker: uuid.UUID = victim_id) -> bool:
                n = await conn.fetchval(
                    "SELECT count(*) FROM pgwake.jobs WHERE claimed_by = $1", worker
                )
                return bool(n == 10)

            await eventually(holds_ten, timeout=30)
        # Room for all 20 jobs at once: the recovered jobs run side by side (6 s, not 12).
        survivor = spawn_worker(
            dsn, "--handlers", RECORDING, "--concurrency", "20", "--tenant-concurrency", "10", *FAST
        )
        await wait_ready(conn, 3)
        # Both may have led maintenance rounds so far; both die together.
        for victim in victims:
            os.kill(victim.pid, signal.SIGKILL)
        for victim in victims:
            victim.communicate(timeout=10)

        async def all_succeeded() -> bool:
            n = await conn.fetchval("SELECT count(*) FROM pgwake.jobs WHERE status = 'succeeded'")
            return bool(n == 20)

        await eventually(all_succeeded, timeout=60)
        executions = await conn.fetch("SELECT pid FROM test_executions")
        assert len(executions) == 20
        assert {e["pid"] for e in executions} == {survivor.pid}
        assert [r["pid"] for r in await conn.fetch("SELECT pid FROM pgwake.workers")] == [
            survivor.pid
        ]
    finally:
        for victim in victims:
            if victim.poll() is None:
                victim.kill()
                victim.communicate()
        if survivor is not None:
            code, output = stop_process(survivor)
            assert code == 0, output
    assert "recovered jobs of lost workers" in output


async def test_jobs_cancel_cli(dsn: str, conn: asyncpg.Connection) -> None:
    await create_executions_table(conn)
    queued = await conn.fetchval(
        "INSERT INTO pgwake.jobs (kind, run_at) VALUES ('record', now() + interval '1 hour') "
        "RETURNING id"
    )
    worker = spawn_worker(dsn, "--handlers", RECORDING, *FAST)
    try:
        running = await conn.fetchval(
            "INSERT INTO pgwake.jobs (kind, payload) VALUES ('record', '{\"sleep\": 60}') "
            "RETURNING id"
        )

        async def is_running() -> bool:
            status = await conn.fetchval("SELECT status FROM pgwake.jobs WHERE id = $1", running)
            return status == "running"

        await eventually(is_running, timeout=30)
        done = pgwake("jobs", "cancel", str(queued), str(running), "--json", dsn=dsn)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {str(queued): "cancelled", str(running): "requested"}

        async def both_cancelled() -> bool:
            n = await conn.fetchval(
                "SELECT count(*) FROM pgwake.jobs WHERE id = ANY($1) AND status = 'cancelled'",
                [queued, running],
            )
            return bool(n == 2)

        await eventually(both_cancelled, timeout=10)
        again = pgwake("jobs", "cancel", str(running), "999999", dsn=dsn)
        assert again.returncode == 1
        assert f"job {running}: finished" in again.stdout
        assert "job 999999: not found" in again.stdout
        assert f"could not cancel job(s) {running} (finished), 999999 (not found)" in again.stderr
        bad = pgwake("jobs", "cancel", "abc", dsn=dsn)
        assert bad.returncode == 2
    finally:
        code, output = stop_process(worker)
    assert code == 0, output


async def test_recovery_round_requeues_or_fails_and_keeps_the_reason(
    dsn: str, conn: asyncpg.Connection
) -> None:
    """One round of the leader, on rows as a dead and a hung worker leave them."""
    timeout = 20.0
    uptime = await conn.fetchval("SELECT extract(epoch FROM now() - pg_postmaster_start_time())")
    if uptime < timeout + 1:  # a freshly started server judges only by the timeout
        await asyncio.sleep(timeout + 1 - uptime)
    dead, hung = uuid.uuid4(), uuid.uuid4()
    for worker, host, age in ((dead, "h1", "2 seconds"), (hung, "h2", "1 hour")):
        await conn.execute(
            "INSERT INTO pgwake.workers (id, hostname, pid, kinds, concurrency, heartbeat_at) "
            f"VALUES ($1, $2, 7, '{{k}}', 4, now() - interval '{age}')",
            worker,
            host,
        )
    # The hung worker's process is alive: its liveness lock is held (here, by us, as
    # its heartbeat session).
    hung_key = await conn.fetchval("SELECT lock_key FROM pgwake.workers WHERE id = $1", hung)
    assert await conn.fetchval(QUERIES["worker_lock"], hung_key)
    await conn.execute(
        "UPDATE pgwake.workers SET session_pid = pg_backend_pid() WHERE id = $1", hung
    )
    jobs = {}
    for name, worker, max_attempts in (
        ("dead_retry", dead, 3),
        ("dead_last", dead, 1),
        ("hung_retry", hung, 3),
    ):
        jobs[name] = await conn.fetchval(
            "INSERT INTO pgwake.jobs (kind, max_attempts) VALUES ('k', $1) RETURNING id",
            max_attempts,
        )
        await conn.execute(
            "UPDATE pgwake.jobs SET status = 'running', claimed_by = $1, attempts = 1 "
            "WHERE id = $2",
            worker,
            jobs[name],
        )
    pool = await db.create_pool(dsn, size=2)
    metrics = Metrics()
    try:
        recoverer = Recoverer(
            pool, metrics, interval=1, heartbeat_interval=0.5, heartbeat_timeout=timeout
        )
        done = await recoverer.round()
    finally:
        await pool.close()
    assert (done.leader, done.lost_workers, done.recovered) == (True, 2, 3)
    rows = {
        r["id"]: r
        for r in await conn.fetch("SELECT id, status, attempts, last_error FROM pgwake.jobs")
    }
    assert rows[jobs["dead_retry"]]["status"] == "queued"
    assert rows[jobs["dead_last"]]["status"] == "failed"
    assert rows[jobs["hung_retry"]]["status"] == "queued"
    assert {r["attempts"] for r in rows.values()} == {1}  # the lost attempt counts
    assert "died (its liveness lock was released)" in rows[jobs["dead_last"]]["last_error"]
    assert "sent no heartbeat for" in rows[jobs["hung_retry"]]["last_error"]
    assert await conn.fetchval("SELECT count(*) FROM pgwake.workers") == 0
    sample = metrics.registry.get_sample_value
    assert sample("pgwake_workers_lost_total", {"why": "gone"}) == 1
    assert sample("pgwake_workers_lost_total", {"why": "hung"}) == 1
    assert sample("pgwake_jobs_recovered_total", {"why": "gone", "status": "failed"}) == 1
    assert sample("pgwake_jobs_recovered_total", {"why": "gone", "status": "queued"}) == 1
    assert sample("pgwake_jobs_recovered_total", {"why": "hung", "status": "queued"}) == 1


async def test_why_a_worker_was_lost_is_told_by_its_lock_not_its_silence(
    dsn: str, conn: asyncpg.Connection
) -> None:
    """Three workers silent for an hour: one whose process died (no lock) and nothing
    started on its host since, one that died and whose host started a new worker after
    its last heartbeat (a restart), one whose heartbeat session still holds its lock
    (alive but silent). Only the last is ``hung``; the restart is told apart from the
    plain death, however long the leader took to notice."""
    timeout = 20.0
    uptime = await conn.fetchval("SELECT extract(epoch FROM now() - pg_postmaster_start_time())")
    if uptime < timeout + 1:  # a freshly started server judges only by the timeout
        await asyncio.sleep(timeout + 1 - uptime)
    dead, restarted, successor, hung = (uuid.uuid4() for _ in range(4))
    for worker, host, age in (
        (dead, "h-dead", "1 hour"),
        (restarted, "h-restart", "1 hour"),
        (successor, "h-restart", "0 seconds"),
        (hung, "h-hung", "1 hour"),
    ):
        await conn.execute(
            "INSERT INTO pgwake.workers (id, hostname, pid, kinds, concurrency, heartbeat_at, "
            f"started_at) VALUES ($1, $2, 7, '{{k}}', 4, now() - interval '{age}', "
            f"now() - interval '{age}')",
            worker,
            host,
        )
    # The successor and the hung worker hold their locks from this session, as their
    # heartbeat sessions would.
    for worker in (successor, hung):
        key = await conn.fetchval("SELECT lock_key FROM pgwake.workers WHERE id = $1", worker)
        assert await conn.fetchval(QUERIES["worker_lock"], key)
        await conn.execute(
            "UPDATE pgwake.workers SET session_pid = pg_backend_pid() WHERE id = $1", worker
        )
    job = await conn.fetchval(
        "INSERT INTO pgwake.jobs (kind, status, claimed_by, attempts) "
        "VALUES ('k', 'running', $1, 1) RETURNING id",
        restarted,
    )
    pool = await db.create_pool(dsn, size=2)
    metrics = Metrics()
    try:
        recoverer = Recoverer(
            pool, metrics, interval=1, heartbeat_interval=0.5, heartbeat_timeout=timeout
        )
        done = await recoverer.round()
    finally:
        await pool.close()
    assert (done.leader, done.lost_workers, done.recovered) == (True, 3, 1)
    remaining = await conn.fetchval("SELECT array_agg(id) FROM pgwake.workers")
    assert remaining == [successor]
    sample = metrics.registry.get_sample_value
    assert sample("pgwake_workers_lost_total", {"why": "gone"}) == 1
    assert sample("pgwake_workers_lost_total", {"why": "restarted"}) == 1
    assert sample("pgwake_workers_lost_total", {"why": "hung"}) == 1
    assert sample("pgwake_jobs_recovered_total", {"why": "restarted", "status": "queued"}) == 1
    error = await conn.fetchval("SELECT last_error FROM pgwake.jobs WHERE id = $1", job)
    assert "a new worker has started on its host since" in error
    assert "hung" not in error


async def test_a_leader_stalled_inside_a_round_loses_the_lead_after_the_lease(
    dsn: str, conn: asyncpg.Connection
) -> None:
    """A leader whose event loop stalls inside a round's transaction holds the
    maintenance lock; the server ends its session after ``maintenance_lease`` and the
    next round goes to another worker, which recovers the jobs waiting for it."""
    settings = load_settings({"maintenance_lease": 1.5}, env={})
    stalled = await db.connect(dsn, session_settings=session_settings(settings))
    try:
        # What a leader's round holds when its loop blocks: an open transaction with the
        # maintenance lock taken (and nothing sent afterwards).
        transaction = stalled.transaction()
        await transaction.start()
        assert await stalled.fetchval(QUERIES["leader_elect_maintenance"])
        orphan = await conn.fetchval(
            "INSERT INTO pgwake.jobs (kind, status, claimed_by, attempts, started_at) "
            "VALUES ('k', 'running', $1, 1, now()) RETURNING id",
            uuid.uuid4(),
        )
        registry = Registry()

        @registry.handler("other")
        async def other(payload: dict[str, Any], ctx: JobContext) -> None:
            return None

        stalled_at = time.monotonic()
        async with running_worker(dsn, registry, maintenance_lease=1.5, maintenance_interval=0.2):

            async def recovered() -> bool:
                status = await conn.fetchval("SELECT status FROM pgwake.jobs WHERE id = $1", orphan)
                return status == "queued"

            await eventually(recovered, timeout=30, interval=0.05)
            took = time.monotonic() - stalled_at
        # The stalled session was ended by the server, not by us.
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
            await stalled.fetchval("SELECT 1")
    finally:
        stalled.terminate()
    print(f"\nstalled leader (lease 1.5 s) replaced; job recovered {took:.2f}s after it stalled")
