"""Rolling upgrades with real processes of two releases (tests/support/releases.py).

The previous release is this code; the next is this code plus a migration of the test's
own (the next number) in its sql/migrations. Through a migration marked compatible, workers of the
previous release keep running while the next release migrates and its worker starts,
are stopped one by one, and every job runs exactly once. A migration marked breaking
stops a running worker of the previous release (exit 5, after its drain) and is
refused by one that starts, and by its `pgwake migrate`, with a message naming it.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import anyio
import asyncpg
import pytest

from listener.api import JobContext
from listener.config import load_settings
from listener.errors import SchemaMismatchError
from listener.migrate import latest_version, load_migrations
from listener.registry import Registry
from listener.service import Service
from tests.support.databases import as_user, fresh_role
from tests.support.http import http_get
from tests.support.recording_handlers import RECORDING
from tests.support.releases import Release, make_release
from tests.support.waiting import eventually
from tests.support.workers import stop_process

NEXT = latest_version() + 1

# A migration of the next release that only adds: a column and an index no worker of
# this release reads, and a view. Workers of this release keep running against it.
COMPATIBLE = f"""-- pgwake: compatible
-- {NEXT:04d}_job_notes: (a test's migration) notes on jobs, for people; workers of
-- {NEXT - 1:04d} never read them, so they keep running against it.
ALTER TABLE pgwake.jobs ADD COLUMN notes text;
CREATE INDEX jobs_notes_idx ON pgwake.jobs (tenant_id) WHERE notes IS NOT NULL;
CREATE VIEW pgwake.job_notes WITH (security_invoker = true) AS
SELECT id, tenant_id, notes FROM pgwake.jobs WHERE notes IS NOT NULL;
"""
COMPATIBLE_NAME = f"{NEXT:04d}_job_notes"

# A migration of the next release that workers of this one cannot live with: from it
# on, a worker must record its release when it registers, which they do not.
BREAKING = f"""-- pgwake: breaking
-- {NEXT:04d}_workers_release: (a test's migration) workers record the release they run;
-- workers of {NEXT - 1:04d} do not, so it breaks them.
ALTER TABLE pgwake.workers ADD COLUMN release text;
"""
BREAKING_NAME = f"{NEXT:04d}_workers_release"

# Settings of every worker here: a heartbeat (and schema check) every half second, a
# drain long enough for any job of these tests.
WORKER_ENV = {"PGWAKE_HEARTBEAT_INTERVAL": "0.5", "PGWAKE_DRAIN_TIMEOUT": "30"}
WORKER_ARGS = ("--handlers", RECORDING, "--kinds", "effect", "--concurrency", "4")
WORKER_ARGS += ("--tenant-concurrency", "4")


@pytest.fixture
def logs(tmp_path: Path) -> Iterator[dict[str, IO[str]]]:
    """Log files of the test's workers, by name, closed afterwards."""
    opened: dict[str, IO[str]] = {}
    try:
        yield opened
    finally:
        for log in opened.values():
            log.close()


def open_log(logs: dict[str, IO[str]], directory: Path, name: str) -> IO[str]:
    logs[name] = (directory / f"{name}.log").open("w+", encoding="utf-8")
    return logs[name]


def log_events(log: IO[str]) -> list[dict[str, object]]:
    """The JSON lines a worker wrote to ``log`` so far (other lines skipped)."""
    events = []
    for line in Path(log.name).read_text(encoding="utf-8").splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line being written
    return events


def last_line(log: IO[str]) -> str:
    """The last line a process wrote to ``log``."""
    return Path(log.name).read_text(encoding="utf-8").splitlines()[-1]


def event(log: IO[str], text: str) -> dict[str, object] | None:
    """The first log event whose message is ``text``."""
    return next((e for e in log_events(log) if e.get("event") == text), None)


async def create_effects_table(conn: asyncpg.Connection) -> None:
    """``effect`` writes one row per run here; a job run twice leaves two."""
    await conn.execute(
        "CREATE TABLE soak_effects (job_id bigint NOT NULL, attempt int NOT NULL, pid int NOT NULL)"
    )


async def runs_by(conn: asyncpg.Connection, pids: list[int]) -> int:
    n = await conn.fetchval("SELECT count(*) FROM soak_effects WHERE pid = ANY($1)", pids)
    return int(n)


async def wait_registered(conn: asyncpg.Connection, proc: subprocess.Popen[str]) -> None:
    async def registered() -> bool:
        assert proc.poll() is None, f"worker {proc.pid} exited with {proc.returncode}"
        n = await conn.fetchval("SELECT count(*) FROM pgwake.workers WHERE pid = $1", proc.pid)
        return bool(n)

    await eventually(registered, timeout=30)


def version_of(release: Release, dsn: str) -> str:
    done = release.command(dsn, "version")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


async def test_workers_of_the_previous_release_run_through_a_compatible_migration(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path, logs: dict[str, IO[str]]
) -> None:
    """Jobs are inserted throughout. Two workers of the previous release run them; the
    next release migrates (the next number, compatible) under them, and they go on; the previous
    release's `pgwake migrate` accepts the newer schema and one of its workers starts
    on it; the next release's worker starts; the old workers are stopped one by one
    (SIGTERM, exit 0). Every job inserted succeeds, with exactly one run."""
    old = make_release(tmp_path / "old")
    new = make_release(tmp_path / "new", {f"{COMPATIBLE_NAME}.sql": COMPATIBLE})
    assert version_of(old, dsn).endswith(f"(schema {NEXT - 1:04d})")
    assert version_of(new, dsn).endswith(f"(schema {NEXT:04d})")
    await create_effects_table(conn)

    inserted: list[int] = []
    stop_inserting = anyio.Event()

    async def insert_throughout() -> None:
        feeder = await asyncpg.connect(dsn)
        try:
            while not stop_inserting.is_set():
                rows = await feeder.fetch(
                    "INSERT INTO pgwake.jobs (kind, payload) SELECT 'effect', "
                    "'{\"sleep\": 0.05}' FROM generate_series(1, 3) RETURNING id"
                )
                inserted.extend(r["id"] for r in rows)
                await anyio.sleep(0.03)  # pacing the feed, not a wait for an outcome
        finally:
            await feeder.close()

    figures: dict[str, int | float] = {}
    async with anyio.create_task_group() as tg:
        tg.start_soon(insert_throughout)
        try:
            olds = [
                old.spawn_worker(
                    dsn, open_log(logs, tmp_path, f"old{i}"), *WORKER_ARGS, env=WORKER_ENV
                )
                for i in (1, 2)
            ]
            for proc in olds:
                await wait_registered(conn, proc)
            old_pids = [p.pid for p in olds]
            await eventually(lambda: _at_least(conn, old_pids, 30))

            # The next release migrates while the old workers run and jobs come in.
            started = time.monotonic()
            migrated = new.command(dsn, "migrate")
            figures["migrate_seconds"] = round(time.monotonic() - started, 2)
            assert migrated.returncode == 0, migrated.stderr
            assert migrated.stdout.splitlines() == [
                f"applied {COMPATIBLE_NAME}",
                f"schema is at version {NEXT:04d}",
            ]
            assert (
                await conn.fetchval(
                    "SELECT breaking FROM pgwake.schema_migrations WHERE version = $1", NEXT
                )
                is False
            )
            at_migration = await runs_by(conn, old_pids)
            figures["old_runs_before_migration"] = at_migration
            # The old workers go on claiming and finishing jobs on the new schema.
            await eventually(lambda: _at_least(conn, old_pids, at_migration + 30))
            assert all(p.poll() is None for p in olds)
            for name in ("old1", "old2"):
                noticed = await eventually(
                    lambda name=name: _event_async(
                        logs[name],
                        "a compatible migration was applied under this worker; running on",
                    )
                )
                assert noticed["worker_schema"] == f"{NEXT - 1:04d}"
                assert noticed["database_schema"] == f"{NEXT:04d}"
                assert noticed["migrations"] == [COMPATIBLE_NAME]

            # An old worker's unit migrates before each (re)start: that must pass, and
            # the old worker must start on the newer schema.
            remigrated = old.command(dsn, "migrate")
            assert remigrated.returncode == 0, remigrated.stderr
            assert remigrated.stdout.strip() == (
                f"schema is at version {NEXT:04d}, newer than this pgwake's "
                f"({NEXT - 1:04d}) and compatible with it"
            )
            late_old = old.spawn_worker(
                dsn, open_log(logs, tmp_path, "old3"), *WORKER_ARGS, env=WORKER_ENV
            )
            await wait_registered(conn, late_old)
            said = event(
                logs["old3"], "running against a newer schema, compatible with this worker"
            )
            assert said is not None
            assert (said["worker_schema"], said["database_schema"]) == (
                f"{NEXT - 1:04d}",
                f"{NEXT:04d}",
            )
            await eventually(lambda: _at_least(conn, [late_old.pid], 5))
            olds.append(late_old)

            # The next release's worker starts beside them.
            fresh = new.spawn_worker(
                dsn, open_log(logs, tmp_path, "new"), *WORKER_ARGS, env=WORKER_ENV
            )
            await wait_registered(conn, fresh)
            await eventually(lambda: _at_least(conn, [fresh.pid], 5))
            assert (
                event(logs["new"], "running against a newer schema, compatible with this worker")
                is None
            )

            # The old workers are stopped one by one; the others carry the flow.
            for proc in olds:
                before = await runs_by(conn, [fresh.pid])
                code, _ = stop_process(proc)
                assert code == 0
                await eventually(lambda before=before: _at_least(conn, [fresh.pid], before + 10))
            figures["old_runs_in_all"] = await runs_by(conn, [p.pid for p in olds])
        finally:
            stop_inserting.set()

    async def all_succeeded() -> bool:
        n = await conn.fetchval(
            "SELECT count(*) FROM pgwake.jobs WHERE id = ANY($1) AND status = 'succeeded'",
            inserted,
        )
        return bool(n == len(inserted))

    await eventually(all_succeeded, timeout=60)
    code, _ = stop_process(fresh)
    assert code == 0
    runs = await conn.fetch(
        "SELECT job_id, count(*) AS n FROM soak_effects GROUP BY job_id HAVING count(*) <> 1"
    )
    assert runs == []
    ran = {r["job_id"] for r in await conn.fetch("SELECT job_id FROM soak_effects")}
    assert ran == set(inserted)
    assert await conn.fetchval("SELECT count(*) FROM pgwake.jobs") == len(inserted)
    assert await conn.fetchval("SELECT count(*) FROM pgwake.workers") == 0
    figures["jobs"] = len(inserted)
    figures["new_runs"] = await runs_by(conn, [fresh.pid])
    print(f"\nrolling upgrade: {figures}")


async def _at_least(conn: asyncpg.Connection, pids: list[int], n: int) -> bool:
    return await runs_by(conn, pids) >= n


async def _event_async(log: IO[str], text: str) -> dict[str, object] | None:
    return event(log, text)


async def test_a_breaking_migration_stops_old_workers_and_is_refused_at_their_start(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path, logs: dict[str, IO[str]]
) -> None:
    """The next release applies a migration marked breaking while a worker of the
    previous one runs a job: that worker finishes the job, stops claiming and exits 5 with the
    reason. A worker of the previous release that starts afterwards, its `pgwake
    migrate` and its `pgwake status` are refused (exit 5) with a message naming the
    migration; the next release's worker runs the jobs."""
    old = make_release(tmp_path / "old")
    new = make_release(tmp_path / "new", {f"{BREAKING_NAME}.sql": BREAKING})
    await create_effects_table(conn)
    running = old.spawn_worker(dsn, open_log(logs, tmp_path, "old"), *WORKER_ARGS, env=WORKER_ENV)
    await wait_registered(conn, running)
    long_job = await conn.fetchval(
        "INSERT INTO pgwake.jobs (kind, payload) VALUES ('effect', '{\"sleep\": 2}') RETURNING id"
    )

    async def long_job_running() -> bool:
        status = await conn.fetchval("SELECT status FROM pgwake.jobs WHERE id = $1", long_job)
        return bool(status == "running")

    await eventually(long_job_running)
    migrated = new.command(dsn, "migrate")
    applied_at, applied_wall = time.monotonic(), time.time()
    assert migrated.returncode == 0, migrated.stderr
    assert f"applied {BREAKING_NAME}" in migrated.stdout.splitlines()

    refusal = (
        f"the database schema is at version {NEXT:04d}, newer than this pgwake knows "
        f"({NEXT - 1:04d}), and migration {BREAKING_NAME} is marked breaking for older "
        "workers; upgrade pgwake"
    )
    code, _ = stop_process(running, terminate=False)
    noticed_after = round(time.monotonic() - applied_at, 2)
    assert code == 5
    stopped = event(
        logs["old"], "a migration that breaks this worker was applied under it; stopping (exit 5)"
    )
    assert stopped is not None
    assert stopped["error"] == refusal
    assert stopped["level"] == "error"
    assert refusal in last_line(logs["old"])
    # It drained: the job it held ran once, to success; it claimed nothing after.
    assert await conn.fetchval("SELECT status FROM pgwake.jobs WHERE id = $1", long_job) == (
        "succeeded"
    )
    assert await conn.fetchval("SELECT count(*) FROM soak_effects") == 1
    assert await conn.fetchval("SELECT count(*) FROM pgwake.workers") == 0

    # A worker of the previous release that starts now, and its other commands.
    later = await conn.fetchval(
        "INSERT INTO pgwake.jobs (kind, payload) VALUES ('effect', '{}') RETURNING id"
    )
    started = old.command(dsn, "run", *WORKER_ARGS, env=WORKER_ENV)
    assert started.returncode == 5
    assert refusal in started.stderr
    for command in ("migrate", "status"):
        done = old.command(dsn, command)
        assert done.returncode == 5, (command, done.stdout, done.stderr)
        assert refusal in done.stderr, command
    assert await conn.fetchval("SELECT status FROM pgwake.jobs WHERE id = $1", later) == "queued"

    upgraded = new.spawn_worker(dsn, open_log(logs, tmp_path, "new"), *WORKER_ARGS, env=WORKER_ENV)

    async def later_done() -> bool:
        status = await conn.fetchval("SELECT status FROM pgwake.jobs WHERE id = $1", later)
        return bool(status == "succeeded")

    await eventually(later_done, timeout=30)
    code, _ = stop_process(upgraded)
    assert code == 0
    noticed = datetime.fromisoformat(str(stopped["timestamp"])).timestamp() - applied_wall
    print(
        f"\nbreaking migration: the running old worker stopped claiming {noticed:.2f} s "
        f"after migrate returned (heartbeat interval 0.5 s) and exited 5 after "
        f"{noticed_after} s, once its 2 s job was done"
    )


async def test_no_role_without_pgwake_privileges_can_stop_the_fleet_with_a_mark(
    server_dsn: str, dsn: str, conn: asyncpg.Connection
) -> None:
    """Workers stop on a row of pgwake.schema_migrations marked breaking past their
    schema. An application role (confined to its tenant, or granted what an app needs
    to enqueue) can neither add such a row nor flip a recorded mark: only pgwake's own
    role writes that table."""
    async with (
        fresh_role(server_dsn, dsn, "confined") as confined,
        fresh_role(server_dsn, dsn, "enqueuer") as enqueuer,
    ):
        await conn.execute("SELECT pgwake.confine_role_to_tenant($1, 'acme')", confined)
        await conn.execute(f'GRANT USAGE ON SCHEMA pgwake TO "{enqueuer}"')
        await conn.execute(f'GRANT SELECT, INSERT ON pgwake.jobs TO "{enqueuer}"')
        for role in (confined, enqueuer):
            hostile = await asyncpg.connect(as_user(dsn, role))
            try:
                add = "INSERT INTO pgwake.schema_migrations (version, name, checksum, breaking) "
                add += f"VALUES ({NEXT}, 'stop_everyone', 'x', true)"
                for sql in (
                    add,
                    "UPDATE pgwake.schema_migrations SET breaking = true",
                    "DELETE FROM pgwake.schema_migrations",
                ):
                    with pytest.raises(asyncpg.InsufficientPrivilegeError):
                        await hostile.execute(sql)
            finally:
                await hostile.close()
    rows = await conn.fetch("SELECT version, breaking FROM pgwake.schema_migrations")
    assert [r["version"] for r in rows] == list(range(1, NEXT))
    assert [r["breaking"] for r in rows] == [m.breaking for m in load_migrations()]


async def test_a_worker_under_which_a_breaking_migration_lands_drains_and_says_why(
    dsn: str, conn: asyncpg.Connection
) -> None:
    """In one process: a migration recorded past the worker's schema, marked compatible,
    changes nothing; one marked breaking makes /readyz answer 503 with the reason while
    the running job finishes, no job is claimed after it, and the worker's run raises
    the SchemaMismatchError (exit 5 in the CLI) once the drain is over."""
    release = anyio.Event()
    started: list[int] = []
    reg = Registry()

    @reg.handler("hold")
    async def hold(_payload: dict[str, Any], ctx: JobContext) -> None:
        started.append(ctx.job.id)
        await release.wait()

    settings = load_settings(
        {"metrics_addr": "127.0.0.1:0", "heartbeat_interval": 0.2, "drain_timeout": 30},
        env={},
    )
    service = Service(settings, reg, dsn)
    add = "INSERT INTO pgwake.schema_migrations (version, name, checksum, breaking) "
    add += "VALUES ($1, $2, 'x', $3)"
    ids: dict[str, int] = {}

    async def scenario() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(service.run)
            ids["held"] = await conn.fetchval(
                "INSERT INTO pgwake.jobs (kind) VALUES ('hold') RETURNING id"
            )

            async def held_started() -> bool:
                return started == [ids["held"]]

            await eventually(held_started)
            await conn.execute(add, NEXT, "adds_a_table", False)
            assert await service.schema_watch.check() is False  # what each round does
            assert service.is_ready()
            await conn.execute(add, NEXT + 1, "renames_a_column", True)
            reason = (
                f"not ready: stopping: the database schema is at version {NEXT + 1:04d}, "
                f"newer than this pgwake knows ({NEXT - 1:04d}), and migration "
                f"{NEXT + 1:04d}_renames_a_column is marked breaking for older workers; "
                "upgrade pgwake\n"
            )
            port = service.http.port

            async def says_why() -> bool:
                answer = await anyio.to_thread.run_sync(http_get, port, "/readyz")
                return answer == (503, reason)

            await eventually(says_why)
            ids["late"] = await conn.fetchval(
                "INSERT INTO pgwake.jobs (kind) VALUES ('hold') RETURNING id"
            )
            release.set()
            await service.stopped.wait()

    with pytest.raises(ExceptionGroup) as ended:
        await scenario()
    [error] = ended.value.exceptions
    assert isinstance(error, SchemaMismatchError)
    assert error.exit_code == 5
    assert f"{NEXT + 1:04d}_renames_a_column is marked breaking" in str(error)
    held, late = ids["held"], ids["late"]
    assert started == [held]
    status = "SELECT id, status FROM pgwake.jobs ORDER BY id"
    assert [tuple(r) for r in await conn.fetch(status)] == [
        (held, "succeeded"),
        (late, "queued"),
    ]
    assert await conn.fetchval("SELECT count(*) FROM pgwake.workers") == 0
