"""Cleanup does not depend on the test passing: a test that fails on purpose, run by
pytest in a process of its own with this suite's fixtures, leaves no database, no
role, no worker process, no private server and no directory behind."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import asyncpg

from tests.support.paths import ROOT

FAILING_TEST = """
from __future__ import annotations

import json
import os
from pathlib import Path

import asyncpg

from tests.support.databases import database_name, fresh_database, fresh_role
from tests.support.private_server import PrivateServer
from tests.support.workers import spawn_worker, wait_ready


async def test_fails_on_purpose_holding_everything(
    server_dsn: str,
    dsn: str,
    conn: asyncpg.Connection,
    template_db: str,
    private_server: PrivateServer,
) -> None:
    async with (
        fresh_database(server_dsn, None) as tenant_dsn,
        fresh_role(server_dsn, dsn, "cleanup") as role,
    ):
        await conn.execute(f'GRANT USAGE ON SCHEMA pgwake TO "{role}"')
        # On the private server: a worker rides out its server's stop, so only the
        # cleanup ends it. Never stopped by this test.
        worker = spawn_worker(private_server.dsn)
        own = await asyncpg.connect(private_server.dsn)
        try:
            await wait_ready(own)
        finally:
            await own.close()
        made = {
            "databases": [database_name(dsn), database_name(tenant_dsn), template_db],
            "role": role,
            "worker": worker.pid,
            "server_root": str(private_server.root),
            "server_port": private_server.port,
        }
        Path(os.environ["PGWAKE_CLEANUP_RECORD"]).write_text(json.dumps(made))
        raise AssertionError("failing on purpose")
"""


def alive(pid: int) -> bool:
    """A process ``pid`` exists and runs pgwake (not a later process with its number)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"listener" in cmdline


def gone(path: str) -> bool:
    return not Path(path).exists()


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


async def test_a_failing_test_leaves_nothing_behind(tmp_path: Path, server_dsn: str) -> None:
    test_file = tmp_path / "test_fails_on_purpose.py"
    test_file.write_text(FAILING_TEST)
    record = tmp_path / "made.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.conftest",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(ROOT),
            "-c",
            str(ROOT / "pyproject.toml"),
            "-q",
            str(test_file),
        ],
        env={
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "PGWAKE_TEST_DSN": server_dsn,
            "PGWAKE_CLEANUP_RECORD": str(record),
        },
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 1, output  # pytest's "tests failed"
    assert "AssertionError: failing on purpose" in output, output
    assert "1 failed" in output, output
    made = json.loads(record.read_text())

    admin = await asyncpg.connect(server_dsn)
    try:
        databases = await admin.fetchval(
            "SELECT count(*) FROM pg_database WHERE datname = any($1::text[])",
            made["databases"],
        )
        roles = await admin.fetchval(
            "SELECT count(*) FROM pg_roles WHERE rolname = $1", made["role"]
        )
    finally:
        await admin.close()
    assert databases == 0, made
    assert roles == 0, made
    assert not alive(made["worker"]), made
    assert not listening(made["server_port"]), made
    assert gone(made["server_root"]), made
