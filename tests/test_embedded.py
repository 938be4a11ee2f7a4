"""Zero-config: no DSN anywhere, an embedded PostgreSQL is started, used and stopped."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import pytest

from listener.embedded import clear_dead_pids
from tests.support.paths import ROOT
from tests.support.waiting import eventually
from tests.support.workers import stop_process


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGWAKE_")}
    env["PYTHONPATH"] = str(ROOT)
    env["PGWAKE_METRICS_ADDR"] = "127.0.0.1:0"
    return env


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Short path: the server's unix socket lives in it.
    base = Path(tempfile.mkdtemp(prefix="pgwe-", dir="/tmp"))
    try:
        yield base / "pgdata"
    finally:
        # An embedded server (or initdb) a failed test left running in it: SIGQUIT is
        # PostgreSQL's immediate shutdown, which takes its backends down with it.
        for proc in processes_under(base):
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGQUIT)
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


def pgwake(*args: str, **kwargs: Any) -> subprocess.Popen[str]:
    """``python -m listener ARGS`` without a DSN, output piped (stderr to stdout)."""
    return subprocess.Popen(
        [sys.executable, "-m", "listener", *args],
        env=clean_env(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def processes_under(root: Path) -> list[psutil.Process]:
    """Processes whose command line names a path under ``root`` (initdb, postgres)."""
    found = []
    for proc in psutil.process_iter(attrs=("cmdline",)):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if str(root) in cmdline and proc.pid != os.getpid() and "pytest" not in cmdline:
            found.append(proc)
    return found


async def in_initdb(root: Path) -> bool:
    """True once initdb (under ``root``) runs its own backend (bootstrap or single-user,
    which takes the data directory from the environment, not its command line)."""
    for initdb in processes_under(root):
        with contextlib.suppress(psutil.Error):
            if "initdb" not in initdb.name():
                continue
            for child in initdb.children():
                command = " ".join(child.cmdline())
                if "--boot" in command or "--single" in command:
                    return True
    return False


def normal_start(data_dir: Path) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "listener", "migrate", "--data-dir", str(data_dir)],
        env=clean_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


async def test_a_start_killed_during_initdb_recovers_on_the_next_start(data_dir: Path) -> None:
    """The first start is killed (SIGKILL to its whole process group, initdb included)
    while initdb runs; the next normal start comes up, with a message saying what it
    mended.

    Fails on 8feecbc: the kill left PG_VERSION and a postmaster.pid holding initdb's
    negative pid in the data directory, and every later start failed with a traceback."""
    first = pgwake("migrate", "--data-dir", str(data_dir), start_new_session=True)
    try:
        await eventually(lambda: in_initdb(data_dir.parent), timeout=90, interval=0.01)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.communicate()
    code, out = normal_start(data_dir)
    assert code == 0, out
    assert "schema is at version" in out
    assert "half-done initdb" in out or "never finished" in out, out
    assert "Traceback" not in out
    assert not (data_dir / "postmaster.pid").exists(), "the embedded server was not stopped"


async def test_sigterm_during_an_embedded_start_stops_what_it_started(data_dir: Path) -> None:
    """SIGTERM while the embedded server's cluster is being made: the start stops
    initdb, exits 143 (documented) with one line, leaves no process behind, and the
    next start comes up.

    Fails on 8feecbc: the default SIGTERM action killed pgwake alone and left initdb
    running as an orphan (and, later in the start, the embedded postmaster)."""
    worker = pgwake("run", "--data-dir", str(data_dir))
    try:
        await eventually(lambda: in_initdb(data_dir.parent), timeout=90, interval=0.01)
    finally:
        code, out = stop_process(worker, timeout=60)
    assert code == 143, out
    errors = [line for line in out.splitlines() if line.startswith("pgwake: error:")]
    assert errors == [
        "pgwake: error: SIGTERM while starting the embedded PostgreSQL: stopped what was started"
    ], out
    assert "Traceback" not in out

    async def none_left() -> bool:
        return not processes_under(data_dir.parent)

    await eventually(none_left, timeout=30)
    code, out = normal_start(data_dir)
    assert code == 0, out


def test_a_data_dir_that_is_a_file_is_one_line_and_exit_4(tmp_path: Path) -> None:
    """Fails on 8feecbc: a 50-line traceback and exit 1."""
    not_a_dir = tmp_path / "pgdata"
    not_a_dir.write_text("")
    code, out = normal_start(not_a_dir)
    assert code == 4, out
    assert out.splitlines()[-1] == (
        f"pgwake: error: cannot start the embedded PostgreSQL: {not_a_dir} is not a directory; "
        "point --data-dir (or PGWAKE_DATA_DIR) at a directory"
    ), out
    assert "Traceback" not in out
