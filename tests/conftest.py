"""Fixtures and hooks of the suite: a real PostgreSQL, a migrated template, a fresh
database per test, and the checks that run around every test. Helpers live in
tests/support/ (tests import them from there, never from here).

Which server: ``PGWAKE_TEST_DSN`` if set; else the server at ``PGWAKE_TEST_PROBE``
(default 127.0.0.1:5432) if it answers; else an embedded PostgreSQL started for the
session. Each test gets ``CREATE DATABASE ... TEMPLATE`` of a database migrated once
(made ahead, while the previous test runs: ``spare_clones``), and it is dropped
``WITH (FORCE)`` afterwards.

Scenarios that take minutes of wall-clock time run beside the suite from its start
(``background``, tests/support/background.py).

Cleanup is unconditional: every fixture that creates a database, a role, a process or
a directory removes it in a ``finally``, and a process a test started and did not stop
is killed when the test ends (``_no_process_left``), whether the test passed or failed
(tests/test_cleanup.py fails a test on purpose and checks that nothing is left).

Logs: the test process logs through pgwake's own pipeline (listener/logs.py, console
format), and tests/support/secret_watch.py collects every log of the session
(captured output, subprocess output, worker and server log files) and every secret the
tests use; the session fails if any secret appears in any log (see the hooks at the
end).
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from listener import db, logs
from listener.crypto import generate_key
from listener.db import with_database
from listener.migrate import migrate
from tests.support import processes, secret_watch
from tests.support.background import Background, Scenario, scenarios_of, session_environ
from tests.support.cli import pgwake
from tests.support.databases import SpareClones, fresh_database
from tests.support.private_server import PrivateServer

secret_watch.install()
logs.configure("console", "info")


def _probe(addr: str) -> bool:
    host, _, port = addr.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


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
    try:
        with embedded_postgres(base / "data") as dsn:
            yield dsn
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
async def template_db(server_dsn: str) -> AsyncIterator[str]:
    """A database migrated once; tests clone it."""
    name = f"pgwake_tpl_{os.getpid()}"
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            conn = await db.connect(with_database(server_dsn, name))
            try:
                await migrate(conn)
            finally:
                await conn.close()
            yield name
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(scope="session")
def spare_empty_databases(server_dsn: str) -> Iterator[SpareClones]:
    """Empty databases (copies of ``template1``, as a plain ``CREATE DATABASE`` makes)
    made ahead while tests run."""
    spares = SpareClones(server_dsn, "template1", depth=1)
    try:
        yield spares
    finally:
        spares.close()


@pytest.fixture
async def empty_dsn(server_dsn: str, spare_empty_databases: SpareClones) -> AsyncIterator[str]:
    """A fresh, empty database (not migrated)."""
    async with fresh_database(server_dsn, None, spares=spare_empty_databases) as url:
        yield url


@pytest.fixture(scope="session")
def spare_clones(server_dsn: str, template_db: str) -> Iterator[SpareClones]:
    """Clones of the template made ahead while tests run (tests/support/databases.py)."""
    spares = SpareClones(server_dsn, template_db)
    try:
        yield spares
    finally:
        spares.close()


@pytest.fixture
async def dsn(server_dsn: str, template_db: str, spare_clones: SpareClones) -> AsyncIterator[str]:
    """A fresh migrated database for one test."""
    async with fresh_database(server_dsn, template_db, spares=spare_clones) as url:
        yield url


@pytest.fixture
async def conn(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection to the test database (JSON codecs on)."""
    connection = await db.connect(dsn)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
def keyring_env(monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh encryption keyring in ``PGWAKE_ENCRYPTION_KEYS``; its text returned."""
    keys = generate_key("k1")
    monkeypatch.setenv("PGWAKE_ENCRYPTION_KEYS", keys)
    return keys


@pytest.fixture
def private_server() -> Iterator[PrivateServer]:
    """A migrated PostgreSQL of the test's own (tests/support/private_server.py), stopped
    and its directory removed afterwards."""
    # Not under pytest's tmp_path: its parents are private to root, and the server runs
    # as another user.
    root = Path(tempfile.mkdtemp(prefix="pgwake_faults_"))
    try:
        server = PrivateServer(root)
        try:
            server.init()
            server.start()
            done = pgwake("migrate", dsn=server.dsn)
            assert done.returncode == 0, done.stderr
            yield server
        finally:
            server.stop("immediate")  # harmless when it never started
    finally:
        shutil.rmtree(root, ignore_errors=True)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "background(scenario=function): the scenario runs beside the suite from the "
        "session's start; the test waits for its result (tests/support/background.py)",
    )


@pytest.fixture(scope="session", autouse=True)
def background(request: pytest.FixtureRequest) -> Iterator[Background]:
    """The scenarios of the selected tests marked ``background``, started before the
    first test (tests/support/background.py); cancelled at the end if still running."""
    runner = Background()
    try:
        functions = scenarios_of(request.session.items)
        if functions:
            scenario = Scenario(
                server_dsn=request.getfixturevalue("server_dsn"),
                template_db=request.getfixturevalue("template_db"),
                environ=session_environ(),
            )
            for function in functions:
                runner.start(function, scenario)
        yield runner
    finally:
        runner.close()


@pytest.fixture(autouse=True)
def _no_process_left() -> Iterator[None]:
    """Kill what the test started and did not stop (a worker it never reached
    ``stop_process`` for because it failed first), after its other fixtures."""
    before = processes.children()
    try:
        yield
    finally:
        processes.kill_new_children(before)


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
