"""Zero-config: no DSN anywhere, an embedded PostgreSQL is started, used and stopped."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from listener.embedded import clear_dead_pids
from tests.conftest import ROOT, eventually, stop_process


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGWAKE_")}
    env["PYTHONPATH"] = str(ROOT)
    env["PGWAKE_METRICS_ADDR"] = "127.0.0.1:0"
    return env


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Short path: the server's unix socket lives in it.
    base = Path(tempfile.mkdtemp(prefix="pgwe-", dir="/tmp"))
    yield base / "pgdata"
    shutil.rmtree(base, ignore_errors=True)


async def test_run_without_dsn_starts_uses_and_stops_an_embedded_server(data_dir: Path) -> None:
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "listener",
            "run",
            "--data-dir",
            str(data_dir),
            "--log-format",
            "json",
        ],
        env=clean_env(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    socket_dsn = f"postgresql://postgres@/postgres?host={data_dir}"
    conn: asyncpg.Connection | None = None
    try:

        async def connected() -> asyncpg.Connection | None:
            try:
                return await asyncpg.connect(socket_dsn)
            except (OSError, asyncpg.PostgresError):
                return None

        conn = await eventually(connected, timeout=60, interval=0.2)

        async def registered() -> bool:
            try:
                return bool(await conn.fetchval("SELECT count(*) FROM pgwake.workers"))
            except asyncpg.UndefinedTableError:
                return False

        await eventually(registered, timeout=60)
        # A second pgwake process without a DSN joins the same embedded server.
        enqueue = subprocess.run(
            [
                sys.executable,
                "-m",
                "listener",
                "enqueue",
                "echo",
                "--data-dir",
                str(data_dir),
                "--payload",
                '{"hello": "embedded"}',
                "--json",
            ],
            env=clean_env(),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert enqueue.returncode == 0, enqueue.stderr
        job_id = json.loads(enqueue.stdout)["id"]

        async def succeeded() -> bool:
            status = await conn.fetchval("SELECT status FROM pgwake.jobs WHERE id=$1", job_id)
            return bool(status == "succeeded")

        await eventually(succeeded)
        result = await conn.fetchval("SELECT result::text FROM pgwake.jobs WHERE id=$1", job_id)
        assert result == '{"hello": "embedded"}'
    finally:
        if conn is not None:
            await conn.close()
        code, out = stop_process(worker, timeout=60)
    assert code == 0, out
    assert f"using the embedded PostgreSQL in {data_dir}" in out
    assert not (data_dir / "postmaster.pid").exists(), "the embedded server was not stopped"


def test_dead_pids_are_cleared(tmp_path: Path) -> None:
    handles = tmp_path / ".handle_pids.json"
    gone = 2**22 + 12345  # above the default pid_max: never a live process
    handles.write_text(json.dumps([os.getpid(), gone]))
    assert clear_dead_pids(tmp_path) == [gone]
    assert json.loads(handles.read_text()) == [os.getpid()]
    assert clear_dead_pids(tmp_path) == []


def test_suite_falls_back_to_embedded_when_no_server_answers() -> None:
    """The README's test command works on a machine without a server on 5432: point
    the probe at a closed port, unset the DSN, and run a slice of the suite."""
    env = clean_env()
    env["PGWAKE_TEST_PROBE"] = "127.0.0.1:1"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-s",
            "tests/test_sql_contract.py::test_ten_thousand_row_insert_sends_exactly_one_notification",
            "tests/test_worker.py::test_insert_from_plain_connection_wakes_idle_worker",
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no server at 127.0.0.1:1; embedded PostgreSQL in" in done.stderr + done.stdout
    assert "2 passed" in done.stdout
