"""Test fixtures: a real PostgreSQL, a migrated template, a fresh database per test.

Which server: ``PGWAKE_TEST_DSN`` if set; else the server at ``PGWAKE_TEST_PROBE``
(default 127.0.0.1:5432) if it answers; else an embedded PostgreSQL started for the
session. Each test gets ``CREATE DATABASE ... TEMPLATE`` of a database migrated once,
and it is dropped ``WITH (FORCE)`` afterwards.

Logs: the test process logs through pgwake's own pipeline (listener/logs.py, console
format), and tests/secret_watch.py collects every log of the session (captured output,
subprocess output, worker and server log files) and every secret the tests use; the
session fails if any secret appears in any log (see the hooks at the end).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import urlsplit

import anyio
import asyncpg
import pytest

from listener import db, logs
from listener.config import load_settings
from listener.db import with_database
from listener.migrate import migrate
from listener.registry import Registry
from listener.service import Service
from tests import secret_watch

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")

secret_watch.install()
logs.configure("console", "info")


def _probe(addr: str) -> bool:
    host, _, port = addr.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


def database_name(dsn: str) -> str:
    """The database a DSN names (also for unix-socket DSNs with ?host=...)."""
    return urlsplit(dsn).path.lstrip("/")


@pytest.fixture(scope="session")
def server_dsn() -> Iterator[str]:
    """DSN of the server the whole session uses (see the module docstring)."""
    explicit = os.environ.get("PGWAKE_TEST_DSN")
    if explicit:
        yield explicit
        return
    probe = os.environ.get("PGWAKE_TEST_PROBE", "127.0.0.1:5432")
    if _probe(probe):
        host, _, port = probe.rpartition(":")
        yield f"postgresql://postgres@{host}:{port}/postgres"
        return
    from listener.embedded import embedded_postgres

    # A short path: the unix socket lives in the data directory (108-byte limit).
    base = Path(tempfile.mkdtemp(prefix="pgwt-", dir="/tmp"))
    print(f"\npgwake tests: no server at {probe}; embedded PostgreSQL in {base}", file=sys.stderr)
    with embedded_postgres(base / "data") as dsn:
        yield dsn


async def _admin(server_dsn: str) -> asyncpg.Connection:
    return await asyncpg.connect(server_dsn)


@pytest.fixture(scope="session")
async def template_db(server_dsn: str) -> AsyncIterator[str]:
    """A database migrated once; tests clone it."""
    name = f"pgwake_tpl_{os.getpid()}"
    admin = await _admin(server_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
        conn = await db.connect(with_database(server_dsn, name))
        try:
            await migrate(conn)
        finally:
            await conn.close()
        yield name
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def fresh_database(server_dsn: str, template: str | None) -> AsyncIterator[str]:
    """Create a uniquely named database (a copy of ``template`` when given), yield its
    DSN, drop it afterwards."""
    name = f"pgwake_t_{uuid.uuid4().hex[:12]}"
    clause = f' TEMPLATE "{template}"' if template else ""
    admin = await _admin(server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"{clause}')
        yield with_database(server_dsn, name)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def empty_dsn(server_dsn: str) -> AsyncIterator[str]:
    """A fresh, empty database (not migrated)."""
    async with fresh_database(server_dsn, None) as url:
        yield url


@pytest.fixture
async def dsn(server_dsn: str, template_db: str) -> AsyncIterator[str]:
    """A fresh migrated database for one test."""
    async with fresh_database(server_dsn, template_db) as url:
        yield url


@pytest.fixture
async def conn(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection to the test database (JSON codecs on)."""
    connection = await db.connect(dsn)
    try:
        yield connection
    finally:
        await connection.close()


async def eventually(
    check: Callable[[], Awaitable[T]], *, timeout: float = 15.0, interval: float = 0.02
) -> T:
    """Poll ``check`` until it returns a truthy value; fail with its last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = await check()
        if last:
            return last
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s; last value: {last!r}")
        await asyncio.sleep(interval)


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, str]:
    """Status and body of GET ``path`` on 127.0.0.1:``port``; (0, reason) when nothing
    answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        return 0, str(exc)


@contextlib.asynccontextmanager
async def running_worker(dsn: str, registry: Registry, **overrides: Any) -> AsyncIterator[Service]:
    """An in-process worker, ready (listening) on entry, stopped cleanly on exit."""
    settings = load_settings({"metrics_addr": "127.0.0.1:0", **overrides}, env={})
    service = Service(settings, registry, dsn)
    async with anyio.create_task_group() as tg:
        await tg.start(service.run)
        try:
            yield service
        finally:
            service.stop()
    assert service.stopped.is_set()


def spawn_worker(
    dsn: str, *args: str, env: dict[str, str] | None = None, log: IO[str] | None = None
) -> subprocess.Popen[str]:
    """A worker in its own process (``python -m listener run``), DSN passed by env. Its
    output is piped (read it with ``stop_process``), or written to ``log`` for long
    runs whose output could fill a pipe."""
    if log is not None:
        secret_watch.current().add_log_file(Path(log.name), f"worker log {log.name}")
    full_env = {
        **os.environ,
        "PGWAKE_DSN": dsn,
        "PYTHONPATH": str(ROOT),
        "PGWAKE_LOG_FORMAT": "json",
        "PGWAKE_METRICS_ADDR": "127.0.0.1:0",
        **(env or {}),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "listener", "run", *args],
        env=full_env,
        cwd=ROOT,
        stdout=subprocess.PIPE if log is None else log,
        stderr=subprocess.STDOUT,
        text=True,
    )


def stop_process(
    proc: subprocess.Popen[str], timeout: float = 30.0, *, terminate: bool = True
) -> tuple[int, str]:
    """SIGTERM ``proc`` (unless ``terminate`` is false), wait, return (exit code, output);
    SIGKILL and fail if it does not exit in time."""
    if terminate and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"process did not stop within {timeout}s:\n{out}")
    return proc.returncode, out


async def wait_ready(conn: asyncpg.Connection, count: int = 1, timeout: float = 30.0) -> None:
    """Wait until ``count`` workers have registered."""

    async def registered() -> bool:
        n = await conn.fetchval("SELECT count(*) FROM pgwake.workers")
        return bool(n >= count)

    await eventually(registered, timeout=timeout)


# --- The secret watch: no DSN password or key in any log of the session --------------


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    try:
        return (yield)
    finally:
        # Keys and DSNs a test put in the environment (monkeypatch.setenv...).
        secret_watch.SESSION.harvest_env(os.environ, f"environment during {item.nodeid}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    secret_watch.SESSION.read_files()  # before fixtures delete their directories
    return (yield)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "teardown":  # its sections hold those of every phase
        for title, content in report.sections:
            secret_watch.SESSION.add_log(f"{report.nodeid}: {title}", content)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    if session.config.option.collectonly:
        return
    leaks = secret_watch.SESSION.leaks()
    report = secret_watch.SESSION.report(leaks)
    if session.config.getoption("capture") == "no":
        report += " (run with -s: the test process's own output was not captured)"
    session.config.stash[_WATCH_REPORT] = report
    if leaks:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    report = config.stash.get(_WATCH_REPORT, None)
    if report is not None:
        terminalreporter.write_line(report, red="LEAK" in report, bold="LEAK" in report)


_WATCH_REPORT = pytest.StashKey[str]()
