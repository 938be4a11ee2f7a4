"""/readyz of a real worker process: not ready before the worker listens, not ready
while its database is stopped or its claims cannot reach the database, ready again when
the database is back; /healthz answers 200 throughout."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import anyio
import asyncpg
import pytest

from tests.support.databases import as_user, fresh_role
from tests.support.http import http_get
from tests.support.private_server import PrivateServer, free_port, probe_start_seconds
from tests.support.waiting import eventually
from tests.support.workers import spawn_worker, stop_process


async def probe(port: int, path: str = "/readyz") -> tuple[int, str]:
    return await anyio.to_thread.run_sync(http_get, port, path, 2.0)


async def answers(port: int, expected: tuple[int, str], timeout: float = 60) -> None:
    """Wait until ``/readyz`` answers ``expected`` (a body ending in ``...\n`` is a
    prefix: the line goes on with the error); once the endpoint is up, /healthz must
    answer 200 at every poll."""

    seen: list[tuple[int, str]] = []

    def matches(got: tuple[int, str]) -> bool:
        if expected[1].endswith("...\n"):
            return got[0] == expected[0] and got[1].startswith(expected[1][:-4])
        return got == expected

    async def check() -> bool:
        seen.append(await probe(port))
        if seen[-1][0] == 0:
            return False  # the process has not bound its port yet
        assert await probe(port, "/healthz") == (200, "ok\n")
        return matches(seen[-1])

    try:
        await eventually(check, timeout=timeout, interval=0.05)
    except pytest.fail.Exception:
        pytest.fail(f"/readyz did not answer {expected}; it answered {sorted(set(seen))}")


READY = (200, "ready\n")


async def test_readyz_follows_the_database_through_an_outage(
    private_server: PrivateServer,
) -> None:
    port = free_port()
    worker = spawn_worker(private_server.dsn, env={"PGWAKE_METRICS_ADDR": f"127.0.0.1:{port}"})
    try:
        await answers(port, READY)
        private_server.stop("fast")  # stopped, and it stays down for a while
        await answers(port, (503, "not ready: LISTEN connection down: ...\n"))
        # It stays not ready (and alive) while the server is down, through the
        # listener's and the claimer's retries, and says why.
        for _ in range(20):
            status, body = await probe(port)
            assert status == 503, body
            assert body.startswith("not ready: LISTEN connection down: "), body
            assert await probe(port, "/healthz") == (200, "ok\n")
            await anyio.sleep(0.1)
        assert worker.poll() is None, "the worker died while the database was down"
        private_server.start()
        await answers(port, READY)
        # Ready means it claims: a new job starts, woken by NOTIFY.
        assert await probe_start_seconds(private_server.dsn) < 30
    finally:
        code, output = stop_process(worker)
    assert code == 0, output
    assert output.count("listener disconnected") == 1, output
    assert output.count("listener reconnected") == 1, output


async def test_readyz_is_503_before_the_worker_reaches_its_database() -> None:
    """The HTTP endpoint comes up first: a worker whose database does not answer yet
    is alive and not ready; when the connection fails it stays up, not ready with the
    error (the password masked), and retries until SIGTERM, which stops it cleanly."""
    port = free_port()
    with socket.socket() as silent:  # accepts connections (in its backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        db_port = silent.getsockname()[1]
        dsn = f"postgresql://app:never-shown-pw@127.0.0.1:{db_port}/app"
        worker = spawn_worker(dsn, env={"PGWAKE_METRICS_ADDR": f"127.0.0.1:{port}"})
        try:
            await answers(port, (503, "not ready: starting\n"), timeout=30)
            assert await probe(port, "/healthz") == (200, "ok\n")
            assert worker.poll() is None
        except BaseException:
            stop_process(worker)
            raise
    try:
        # The listening socket is closed: the connection in its backlog is reset, and
        # the next attempts are refused. The worker waits for its database.
        await answers(
            port, (503, "not ready: starting: waiting for the database: ...\n"), timeout=30
        )
        _, body = await probe(port)
        assert "cannot connect to postgresql://app:***@127.0.0.1" in body, body
        assert worker.poll() is None
    finally:
        code, output = stop_process(worker)
    assert code == 0, output
    assert "reaching the database at start failed; retrying" in output, output
    assert "cannot connect to postgresql://app:***@127.0.0.1" in output, output
    assert "never-shown-pw" not in output


@pytest.fixture
async def limited_role(
    server_dsn: str, dsn: str, conn: asyncpg.Connection
) -> AsyncIterator[tuple[str, asyncpg.Connection]]:
    """A login role that may run a worker in the test database (not a superuser, so a
    connection limit applies to it), and an admin connection to the server."""
    async with fresh_role(server_dsn, dsn, "readyz") as role:
        admin = await asyncpg.connect(server_dsn)
        try:
            for grant in (
                f'GRANT USAGE ON SCHEMA pgwake TO "{role}"',
                f'GRANT ALL ON ALL TABLES IN SCHEMA pgwake TO "{role}"',
                f'GRANT ALL ON ALL SEQUENCES IN SCHEMA pgwake TO "{role}"',
            ):
                await conn.execute(grant)
            yield role, admin
        finally:
            await admin.close()


async def test_readyz_falls_when_claims_cannot_reach_the_database(
    dsn: str, conn: asyncpg.Connection, limited_role: tuple[str, asyncpg.Connection]
) -> None:
    """The LISTEN connection stays up, but the claimer's connections are cut and new
    ones refused (the role's connection limit is reached): not ready until claims
    reach the database again."""
    role, admin = limited_role
    port = free_port()
    # A poll far longer than the test: the failed claim is retried on its own, not at
    # the next poll.
    worker = spawn_worker(
        as_user(dsn, role),
        "--poll-interval",
        "300",
        env={"PGWAKE_METRICS_ADDR": f"127.0.0.1:{port}"},
    )
    try:
        await answers(port, READY)
        await admin.execute(f'ALTER ROLE "{role}" CONNECTION LIMIT 1')
        # Every session of the worker but the LISTEN one (whose last statement is a
        # LISTEN, its self-notification probe, or a start or stop of waiting).
        cut = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE usename = $1 AND query NOT LIKE 'LISTEN %' "
            "AND query NOT LIKE '%pg_notify($1, $2)%' "
            "AND query NOT SIMILAR TO '%pgwake.(start_waiting|transactions_open|stop_waiting)%'",
            role,
        )
        assert cut >= 2, cut  # the heartbeat's and the pool's
        job_id = await conn.fetchval(
            "INSERT INTO pgwake.jobs (kind) VALUES ('noop') RETURNING id"
        )  # NOTIFY: the claimer tries at once
        await answers(port, (503, "not ready: claims cannot reach the database: ...\n"))
        assert await conn.fetchval("SELECT status FROM pgwake.jobs WHERE id = $1", job_id) == (
            "queued"
        )
        await admin.execute(f'ALTER ROLE "{role}" CONNECTION LIMIT -1')
        await answers(port, READY)

        async def done() -> bool:
            status = await conn.fetchval("SELECT status FROM pgwake.jobs WHERE id = $1", job_id)
            return bool(status == "succeeded")

        await eventually(done)
    finally:
        code, output = stop_process(worker)
        print(output)  # shown when the test fails
    assert code == 0, output
    assert "listener disconnected" not in output, output
    assert "claim failed" in output, output
