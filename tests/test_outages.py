"""A worker rides out what it cannot cause: its database dropped (``DROP DATABASE ...
WITH (FORCE)``) and recreated, then migrated, under it; its password changed and then
restored. Real worker processes throughout: each stays up, answers ``/readyz`` 503 with
the reason, and runs jobs again within seconds of the database's return; it stops
cleanly (exit 0) afterwards."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import anyio
import asyncpg

from tests.support.cli import pgwake
from tests.support.databases import database_name
from tests.support.http import http_get
from tests.support.private_server import PrivateServer, connect_when_up, free_port
from tests.support.waiting import eventually
from tests.support.workers import spawn_worker, stop_process


async def readyz(port: int) -> tuple[int, str]:
    return await anyio.to_thread.run_sync(http_get, port, "/readyz", 2.0)


async def wait_readyz(
    port: int, status: int, start: str = "", timeout: float = 30, *, saying: str = ""
) -> str:
    """Wait until /readyz answers ``status`` with a body that starts with ``start`` and
    contains ``saying``."""
    seen: list[tuple[int, str]] = []

    async def check() -> str | None:
        seen.append(await readyz(port))
        got, body = seen[-1]
        return body if got == status and body.startswith(start) and saying in body else None

    try:
        return await eventually(check, timeout=timeout, interval=0.05)
    except BaseException:
        print("seen:", sorted(set(seen)))
        raise


async def run_one_job(dsn: str, timeout: float = 30) -> float:
    """Insert an echo job; return the seconds until it succeeded (client clock)."""
    conn = await connect_when_up(dsn)
    try:
        began = time.monotonic()
        job_id = await conn.fetchval(
            "INSERT INTO pgwake.jobs (kind, payload) VALUES ('echo', '{\"x\": 1}') RETURNING id"
        )

        async def done() -> bool:
            status = await conn.fetchval("SELECT status FROM pgwake.jobs WHERE id = $1", job_id)
            return bool(status == "succeeded")

        await eventually(done, timeout=timeout)
        return time.monotonic() - began
    finally:
        await conn.close()


async def stays_up_not_ready(
    worker_poll: Callable[[], int | None], port: int, start: str, rounds: int = 30
) -> None:
    """For ``rounds`` looks 0.1 s apart: the process runs, /healthz answers 200, and
    /readyz 503 with a body starting ``start``."""
    for _ in range(rounds):
        assert worker_poll() is None, "the worker exited during the outage"
        status, body = await readyz(port)
        assert status == 503, body
        assert body.startswith(start), body
        health = await anyio.to_thread.run_sync(http_get, port, "/healthz", 2.0)
        assert health == (200, "ok\n"), health
        await anyio.sleep(0.1)


async def test_database_dropped_and_recreated_under_a_running_worker(
    server_dsn: str, dsn: str, tmp_path: Path
) -> None:
    name = database_name(dsn)
    port = free_port()
    log = (tmp_path / "worker.log").open("w")
    worker = spawn_worker(
        dsn,
        log=log,
        env={
            "PGWAKE_METRICS_ADDR": f"127.0.0.1:{port}",
            # Every loop runs often: schedules and recovery each second, samples too.
            "PGWAKE_METRICS_INTERVAL": "1",
        },
    )
    admin = await asyncpg.connect(server_dsn)
    try:
        await wait_readyz(port, 200, "ready")
        await run_one_job(dsn)

        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await wait_readyz(port, 503, "not ready: LISTEN connection down: ", saying="does not exist")
        # Every loop keeps retrying (the schedules, recovery, promotion and metrics
        # rounds, the heartbeat, the claimer): the worker stays up and says why.
        await stays_up_not_ready(worker.poll, port, "not ready: LISTEN connection down: ")

        # Back, but empty: the LISTEN connection works, claims cannot (no schema).
        await admin.execute(f'CREATE DATABASE "{name}"')
        await wait_readyz(
            port, 503, "not ready: claims cannot reach the database: ", saying="does not exist"
        )
        await stays_up_not_ready(worker.poll, port, "not ready: claims cannot reach the database")

        migrated = pgwake("migrate", dsn=dsn)
        assert migrated.returncode == 0, migrated.stderr
        back = time.monotonic()
        seconds = await run_one_job(dsn)
        print(
            f"a job ran {time.monotonic() - back:.2f}s after the migration "
            f"({seconds:.2f}s after its insert)"
        )
        await wait_readyz(port, 200, "ready")
        # The worker registered again in the new database.
        check = await asyncpg.connect(dsn)
        try:
            assert await check.fetchval("SELECT count(*) FROM pgwake.workers") == 1
        finally:
            await check.close()

        # Each loop that runs in rounds logged the outage once and its end once.
        loops = ("schedules round", "recovery round", "metrics sample")

        async def every_loop_back() -> bool:
            text = (tmp_path / "worker.log").read_text()
            return all(f"{loop} works again" in text for loop in loops)

        await eventually(every_loop_back)
    finally:
        await admin.close()
        code, _ = stop_process(worker)
        log.close()
    output = (tmp_path / "worker.log").read_text()
    assert code == 0, output
    assert "uncaught exception" not in output, output
    assert '"level": "critical"' not in output, output
    for loop in loops:
        assert output.count(f"{loop} failed; retrying until the database answers") == 1, loop


async def test_password_changed_then_restored_under_a_running_worker(
    private_server: PrivateServer,
) -> None:
    """A dedicated login role with a password, on a server of the test's own where that
    role must give it (scram-sha-256 in pg_hba.conf; the shared server trusts any
    password from 127.0.0.1)."""
    role, password = "pgwake_t_rotated", "first-pw-4d1c"
    admin = await asyncpg.connect(private_server.dsn)
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        for grant in (
            f"GRANT USAGE ON SCHEMA pgwake TO {role}",
            f"GRANT ALL ON ALL TABLES IN SCHEMA pgwake TO {role}",
            f"GRANT ALL ON ALL SEQUENCES IN SCHEMA pgwake TO {role}",
        ):
            await admin.execute(grant)
    finally:
        await admin.close()
    private_server.require_password(role)
    worker_dsn = f"postgresql://{role}:{password}@127.0.0.1:{private_server.port}/postgres"
    try:
        await asyncpg.connect(f"postgresql://{role}:wrong@127.0.0.1:{private_server.port}/postgres")
    except asyncpg.InvalidPasswordError:
        pass
    else:
        raise AssertionError("the server accepted a wrong password: the test would prove nothing")

    port = free_port()
    worker = spawn_worker(worker_dsn, env={"PGWAKE_METRICS_ADDR": f"127.0.0.1:{port}"})
    admin = await asyncpg.connect(private_server.dsn)
    try:
        await wait_readyz(port, 200, "ready")
        await run_one_job(private_server.dsn)

        # Rotated on the server before the worker's setting: every session is cut (as a
        # failover or a restart would) and none can be opened again.
        await admin.execute(f"ALTER ROLE {role} PASSWORD 'second-pw-93ab'")
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role
        )
        # First the cut, then the refusals of its reconnects.
        await wait_readyz(
            port,
            503,
            "not ready: LISTEN connection down: ",
            saying="password authentication failed",
        )
        await stays_up_not_ready(worker.poll, port, "not ready: LISTEN connection down: ")

        await admin.execute(f"ALTER ROLE {role} PASSWORD '{password}'")
        back = time.monotonic()
        seconds = await run_one_job(private_server.dsn)
        print(
            f"a job ran {time.monotonic() - back:.2f}s after the password was restored "
            f"({seconds:.2f}s after its insert)"
        )
        await wait_readyz(port, 200, "ready")
    finally:
        await admin.close()
        code, output = stop_process(worker)
        print(output[-5000:])
    assert code == 0, output
    assert "uncaught exception" not in output, output
    assert password not in output
