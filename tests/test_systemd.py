"""The systemd units, checked by systemd-analyze and run by a real systemd.

The default suite verifies the unit files with ``systemd-analyze verify`` (on copies whose
ExecStart names this checkout's ``pgwake``: verify insists the binary exists) and checks
their sandbox's exposure score. With ``PGWAKE_SYSTEMD_TEST=1``, a Debian system boots in
systemd-nspawn (tests/support/nspawn.py), pgwake is installed in it as docs/operations.md
says, and the unchanged units run there against the tests' PostgreSQL (the container
shares the host's network, so the DSNs the fixtures hand out work as they are).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from listener import db
from listener.cli.bench.common import free_port
from listener.config import load_settings
from listener.crypto import generate_key, load_keyring
from listener.migrate import latest_version
from listener.service import RELEASE_MARGIN
from tests.support.databases import fresh_database
from tests.support.nspawn import Container, booted
from tests.support.paths import ROOT
from tests.support.waiting import eventually
from tests.support.workers import wait_ready

UNITS = ROOT / "systemd"
INSTALLED_PGWAKE = "/opt/pgwake/bin/pgwake"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze is not installed (apt-get install systemd)"
)
SYSTEMD_TEST = os.environ.get("PGWAKE_SYSTEMD_TEST") == "1"
MAX_EXPOSURE = 2.0


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run([ANALYZE, *args], capture_output=True, text=True, check=False)


def _unit_copies(directory: Path) -> list[Path]:
    """The units with ExecStart pointing at this virtualenv's pgwake."""
    here = Path(sys.prefix) / "bin" / "pgwake"
    copies = []
    for unit in sorted(UNITS.glob("*.service")):
        text = unit.read_text()
        assert text.count(f"ExecStart={INSTALLED_PGWAKE} ") == 1, unit.name
        copy = directory / unit.name
        copy.write_text(text.replace(INSTALLED_PGWAKE, str(here)))
        copies.append(copy)
    return copies


def _exposure(output: str) -> float:
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", output)
    assert match is not None, output
    return float(match.group(1))


def _directives(unit: Path) -> list[str]:
    """The unit's settings and section headers, without comments and blank lines."""
    lines = (line.strip() for line in unit.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _sandbox(unit: Path) -> list[str]:
    """The sandbox settings: from DynamicUser= to the end of [Service]."""
    lines = _directives(unit)
    start = lines.index("DynamicUser=yes")
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("[")), len(lines))
    return lines[start:end]


@needs_analyze
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    copies = _unit_copies(tmp_path)
    assert {c.name for c in copies} == {
        "pgwake.service",
        "pgwake@.service",
        "pgwake-migrate.service",
        "pgwake-migrate@.service",
    }
    done = _analyze("verify", "--recursive-errors=no", *map(str, copies))
    assert (done.returncode, done.stderr, done.stdout) == (0, "", "")


@needs_analyze
@pytest.mark.parametrize("unit", ["pgwake.service", "pgwake-migrate.service"])
def test_sandbox_exposure_is_low(unit: str, tmp_path: Path) -> None:
    copy = next(c for c in _unit_copies(tmp_path) if c.name == unit)
    done = _analyze("security", "--offline=yes", str(copy))
    exposure = _exposure(done.stdout)
    print(f"systemd-analyze security --offline=yes {unit}: {exposure}")
    assert exposure < MAX_EXPOSURE, done.stdout


def test_instance_and_migrate_units_keep_in_step_with_the_worker_unit() -> None:
    worker = _directives(UNITS / "pgwake.service")
    instance = [
        line.replace("pgwake-migrate@%i.service", "pgwake-migrate.service")
        .replace("/etc/pgwake/%i.env", "/etc/pgwake/pgwake.env")
        .replace("LoadCredential=pgwake-keys:pgwake-keys.%i", "LoadCredential=pgwake-keys")
        .replace("Description=pgwake job worker %i", "Description=pgwake job worker")
        for line in _directives(UNITS / "pgwake@.service")
    ]
    assert instance == worker
    migrate = _directives(UNITS / "pgwake-migrate.service")
    migrate_instance = [
        line.replace("/etc/pgwake/%i.env", "/etc/pgwake/pgwake.env").replace(
            "migrations for %i", "migrations"
        )
        for line in _directives(UNITS / "pgwake-migrate@.service")
    ]
    assert migrate_instance == migrate
    assert _sandbox(UNITS / "pgwake-migrate.service") == _sandbox(UNITS / "pgwake.service")


def test_stop_timeout_covers_the_default_drain() -> None:
    settings = dict(
        line.split("=", 1) for line in _directives(UNITS / "pgwake.service") if "=" in line
    )
    drain = load_settings({}, env={}).drain_timeout
    assert float(settings["TimeoutStopSec"]) >= drain + RELEASE_MARGIN


# ---- A real systemd, booted in systemd-nspawn (PGWAKE_SYSTEMD_TEST=1) --------------------

WORKER = "pgwake.service"
HANDLERS_INSIDE = "/opt/pgwake-tests"
# The first test to run also boots the container (and may build its root).
nspawn_test = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def container(tmp_path_factory: pytest.TempPathFactory, server_dsn: str) -> Iterator[Container]:
    if not SYSTEMD_TEST:
        pytest.skip("set PGWAKE_SYSTEMD_TEST=1 to boot systemd in systemd-nspawn")
    if os.geteuid() != 0:
        pytest.skip("systemd-nspawn needs root")
    if urlsplit(server_dsn).hostname is None:
        pytest.skip("the container reaches PostgreSQL over TCP only")
    workdir = tmp_path_factory.mktemp("nspawn")
    with booted(ROOT, workdir, {ROOT / "tests": f"{HANDLERS_INSIDE}/tests"}) as booted_container:
        yield booted_container


@pytest.fixture
def systemd(container: Container) -> Iterator[Container]:
    """The container, with every pgwake unit stopped and its settings removed after the test."""
    try:
        yield container
    finally:
        container.run("systemctl", "stop", "pgwake*", check=False)
        container.run("systemctl", "reset-failed", "pgwake*", check=False)
        container.run("sh", "-c", "rm -rf /etc/pgwake /etc/credstore /etc/systemd/system/pgwake*.d")
        container.run("systemctl", "daemon-reload")


def configure(container: Container, dsn: str, name: str = "pgwake", **settings: str) -> int:
    """Write /etc/pgwake/NAME.env (mode 0600) for ``dsn``; returns its metrics port."""
    port = free_port()
    env = {
        "PGWAKE_DSN": dsn,
        "PGWAKE_METRICS_ADDR": f"127.0.0.1:{port}",
        "PGWAKE_HANDLERS": "tests.support.recording_handlers",
        "PYTHONPATH": HANDLERS_INSIDE,
        **settings,
    }
    container.write(
        f"/etc/pgwake/{name}.env", "".join(f"{k}={v}\n" for k, v in env.items()), "0600"
    )
    return port


def drop_in(container: Container, unit: str, text: str) -> None:
    """A drop-in for ``unit`` (as ``systemctl edit`` makes), then daemon-reload."""
    container.write(f"/etc/systemd/system/{unit}.d/test.conf", text)
    container.run("systemctl", "daemon-reload")


def readyz(port: int) -> int:
    """The HTTP status of the worker's /readyz (the container shares our network)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
        status: int = response.status
    return status


def results(container: Container, unit: str, cursor: str) -> list[str]:
    """The results systemd recorded for ``unit`` since ``cursor`` (UNIT_RESULT= of its
    "Failed with result ..." messages), in order."""
    return [e["UNIT_RESULT"] for e in container.journal(unit, cursor) if "UNIT_RESULT" in e]


async def job_status(conn: asyncpg.Connection, job_id: int) -> str:
    status: str = await conn.fetchval("SELECT status FROM pgwake.jobs WHERE id = $1", job_id)
    return status


async def enqueue(
    conn: asyncpg.Connection, kind: str, payload: dict[str, object], tenant: str = "default"
) -> int:
    job_id: int = await conn.fetchval(
        "INSERT INTO pgwake.jobs (tenant_id, kind, payload) VALUES ($1, $2, $3) RETURNING id",
        tenant,
        kind,
        payload,
    )
    return job_id


@nspawn_test
def test_installed_units_verify_in_place(systemd: Container) -> None:
    # The unit files exactly as shipped, where docs/operations.md installs them, with
    # /opt/pgwake/bin/pgwake really there.
    units = [f"/etc/systemd/system/{u.name}" for u in sorted(UNITS.glob("*.service"))]
    done = systemd.run("systemd-analyze", "verify", "--recursive-errors=no", *units, check=False)
    assert (done.returncode, done.stderr, done.stdout) == (0, "", "")
    security = systemd.run("systemd-analyze", "security", WORKER, check=False)
    exposure = _exposure(security.stdout)
    print(f"systemd-analyze security {WORKER} (loaded unit, in the container): {exposure}")
    assert exposure < MAX_EXPOSURE, security.stdout


@nspawn_test
async def test_start_waits_for_ready_and_the_worker_runs_sandboxed(
    systemd: Container, dsn: str, conn: asyncpg.Connection
) -> None:
    port = configure(systemd, dsn)
    # Hold the worker before it registers (and so before LISTEN and READY=1).
    blocker = await db.connect(dsn)
    hold = blocker.transaction()
    await hold.start()
    await blocker.execute("LOCK TABLE pgwake.workers IN ACCESS EXCLUSIVE MODE")
    start = subprocess.Popen(
        systemd.command("systemctl", "start", WORKER),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        await eventually(
            lambda: conn.fetchval(
                "SELECT count(*) > 0 FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'"
            ),
            timeout=60,
        )
        waiting = systemd.show(WORKER, "ActiveState", "SubState", "MainPID", "StatusText")
        assert waiting["ActiveState"] == "activating", waiting
        assert waiting["SubState"] == "start", waiting
        assert waiting["MainPID"] != "0", waiting
        assert waiting["StatusText"] == "", waiting  # nothing heard from the worker yet
        assert start.poll() is None, "systemctl start returned before READY=1"
    finally:
        await hold.rollback()
        await blocker.close()
    out, _ = start.communicate(timeout=60)
    assert start.returncode == 0, out
    up = systemd.show(WORKER, "ActiveState", "SubState", "MainPID", "StatusText", "NRestarts")
    assert (up["ActiveState"], up["SubState"], up["NRestarts"]) == ("active", "running", "0"), up
    assert up["StatusText"].startswith("ready: 0/32 running;"), up
    assert readyz(port) == 200

    # It works, in its sandbox: a dynamic user, no capabilities, seccomp, no new privileges,
    # no W+X memory (the job below ran on CPython, asyncpg, uvloop under it).
    job_id = await enqueue(conn, "echo", {"hello": "systemd"})
    await eventually(
        lambda: conn.fetchval("SELECT status = 'succeeded' FROM pgwake.jobs WHERE id = $1", job_id)
    )
    status = dict(
        line.split(":", 1)
        for line in systemd.run("cat", f"/proc/{up['MainPID']}/status").stdout.splitlines()
    )
    assert status["Uid"].split()[0] != "0", status["Uid"]
    assert status["CapEff"].strip() == "0000000000000000"
    assert status["NoNewPrivs"].strip() == "1"
    assert status["Seccomp"].strip() == "2"
    sandbox = systemd.show(
        WORKER, "DynamicUser", "MemoryDenyWriteExecute", "ProtectSystem", "PrivateUsers"
    )
    assert sandbox == {
        "DynamicUser": "yes",
        "MemoryDenyWriteExecute": "yes",
        "ProtectSystem": "strict",
        "PrivateUsers": "yes",
    }
    # No key in the credential store: LoadCredential=pgwake-keys did not stop the start.
    assert systemd.run("test", "-e", "/etc/credstore/pgwake-keys", check=False).returncode == 1


@nspawn_test
async def test_watchdog_restarts_a_worker_whose_event_loop_is_blocked(
    systemd: Container, dsn: str, conn: asyncpg.Connection
) -> None:
    configure(systemd, dsn)
    drop_in(systemd, WORKER, "[Service]\nWatchdogSec=3\n")
    cursor = systemd.journal_cursor()
    systemd.run("systemctl", "start", WORKER)
    before = systemd.show(
        WORKER, "MainPID", "NRestarts", "WatchdogUSec", "WatchdogTimestampMonotonic"
    )
    assert before["WatchdogUSec"] == "3s", before

    async def pinged() -> bool:
        now = systemd.show(WORKER, "WatchdogTimestampMonotonic")["WatchdogTimestampMonotonic"]
        return now != before["WatchdogTimestampMonotonic"]

    await eventually(pinged)  # WATCHDOG=1 reaches systemd
    # A handler that blocks the loop (a synchronous sleep) far longer than WatchdogSec.
    job_id = await enqueue(conn, "stall", {"block": 60})
    await eventually(lambda: _restarted(systemd, before), timeout=60)
    assert results(systemd, WORKER, cursor) == ["watchdog"]
    messages = [e.get("MESSAGE", "") for e in systemd.journal(WORKER, cursor)]
    assert any("Watchdog timeout (limit 3s)!" in m for m in messages), messages
    # The stalled job is recovered and finished by the new worker (its second attempt).
    await eventually(lambda: _succeeded(conn, job_id), timeout=60)
    row = await conn.fetchrow("SELECT attempts, result FROM pgwake.jobs WHERE id = $1", job_id)
    new_pid = systemd.show(WORKER, "MainPID")["MainPID"]
    assert row["attempts"] == 2
    assert row["result"] == {"pid": int(new_pid), "attempt": 2}


@nspawn_test
async def test_a_crashed_worker_is_restarted(
    systemd: Container, dsn: str, conn: asyncpg.Connection
) -> None:
    configure(systemd, dsn)
    cursor = systemd.journal_cursor()
    systemd.run("systemctl", "start", WORKER)
    for signal_name in ("SEGV", "KILL"):
        before = systemd.show(WORKER, "MainPID", "NRestarts")
        systemd.run("sh", "-c", f"kill -{signal_name} {before['MainPID']}")  # the builtin
        await eventually(lambda before=before: _restarted(systemd, before), timeout=60)
    # SIGSEGV ends as core-dump when a core is written, else as signal.
    recorded = results(systemd, WORKER, cursor)
    assert len(recorded) == 2
    assert recorded[0] in {"core-dump", "signal"}
    assert recorded[1] == "signal"
    # Each restart ran the migrations first, as the first start did.
    migrations = [
        e["MESSAGE"]
        for e in systemd.journal("pgwake-migrate.service", cursor)
        if e.get("MESSAGE", "").startswith("Finished pgwake-migrate.service")
    ]
    assert len(migrations) == 3, migrations
    job_id = await enqueue(conn, "echo", {})
    await eventually(lambda: _succeeded(conn, job_id))


@nspawn_test
async def test_a_crash_loop_ends_in_failed(systemd: Container, dsn: str) -> None:
    """A worker that cannot start for its own configuration fails at once (exit 3 is
    not restarted); one that keeps crashing is restarted until the start limit, then
    the unit is failed too, so `systemctl --failed` shows both."""
    configure(systemd, dsn, PGWAKE_CONCURRENCY="lots")
    systemd.run("systemctl", "start", WORKER, check=False)
    shown = systemd.show(WORKER, "ActiveState", "Result", "ExecMainStatus", "NRestarts")
    assert shown == {
        "ActiveState": "failed",
        "Result": "exit-code",
        "ExecMainStatus": "3",
        "NRestarts": "0",
    }, shown
    assert WORKER in systemd.run("systemctl", "--failed", "--plain", "--no-legend").stdout

    systemd.run("systemctl", "reset-failed", WORKER)
    configure(systemd, dsn)
    drop_in(systemd, WORKER, "[Service]\nRestartSec=1\n")
    cursor = systemd.journal_cursor()
    systemd.run("systemctl", "start", WORKER)
    killed: set[str] = set()  # main processes killed, each once

    async def failed_after_crashes() -> bool:
        now = systemd.show(WORKER, "ActiveState", "MainPID")
        if now["ActiveState"] == "failed":
            return True
        if now["ActiveState"] == "active" and now["MainPID"] not in killed | {"0"}:
            systemd.run("sh", "-c", f"kill -KILL {now['MainPID']}", check=False)
            killed.add(now["MainPID"])
        return False

    await eventually(failed_after_crashes, timeout=120, interval=0.5)
    shown = systemd.show(WORKER, "ActiveState", "Result", "NRestarts")
    kills = len(killed)
    print(f"killed {kills} times; then {shown}")
    # Five runs (StartLimitBurst=5), each killed; the restart after the fifth is refused.
    assert kills == 5, (kills, shown)
    assert shown["ActiveState"] == "failed", shown
    messages = [e.get("MESSAGE", "") for e in systemd.journal(WORKER, cursor)]
    assert any("Start request repeated too quickly." in m for m in messages), messages
    assert WORKER in systemd.run("systemctl", "--failed", "--plain", "--no-legend").stdout


@nspawn_test
async def test_a_worker_started_while_its_database_is_missing_waits_for_it(
    systemd: Container, server_dsn: str, template_db: str
) -> None:
    """No crash loop for a database that is away at start: the unit stays activating
    (its start timeout extended at each attempt; the status says what it waits for),
    and becomes active, never restarted, once the database is there (created migrated,
    from the tests' template: a database created empty would stop the worker with exit
    5, and the restart would migrate it first)."""
    name = f"pgwake_t_late_{uuid.uuid4().hex[:8]}"
    late_dsn = db.with_database(server_dsn, name)
    port = configure(systemd, late_dsn)
    cursor = systemd.journal_cursor()
    systemd.run("systemctl", "start", "--no-block", WORKER)

    async def waiting() -> bool:
        now = systemd.show(WORKER, "ActiveState", "StatusText")
        return (
            now["ActiveState"] == "activating" and "waiting for the database" in now["StatusText"]
        )

    await eventually(waiting, timeout=60, interval=0.5)
    assert "does not exist" in systemd.show(WORKER, "StatusText")["StatusText"]
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
        try:

            async def active() -> bool:
                return systemd.show(WORKER, "ActiveState")["ActiveState"] == "active"

            await eventually(active, timeout=60, interval=0.5)
            assert readyz(port) == 200
            # One start, never restarted: no result recorded, no restart counted.
            messages = [e.get("MESSAGE", "") for e in systemd.journal(WORKER, cursor)]
            assert results(systemd, WORKER, cursor) == [], messages
            assert systemd.show(WORKER, "NRestarts") == {"NRestarts": "0"}
            assert any("reaching the database at start failed" in m for m in messages)
        finally:
            systemd.run("systemctl", "stop", WORKER, check=False)
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@nspawn_test
async def test_stop_drains_then_exits_cleanly(
    systemd: Container, dsn: str, conn: asyncpg.Connection
) -> None:
    configure(systemd, dsn, PGWAKE_DRAIN_TIMEOUT="8")
    systemd.run("systemctl", "start", WORKER)
    short = await enqueue(conn, "sleep", {"seconds": 3})
    long = await enqueue(conn, "sleep", {"seconds": 600})
    await eventually(
        lambda: conn.fetchval("SELECT count(*) = 2 FROM pgwake.jobs WHERE status = 'running'")
    )
    cursor = systemd.journal_cursor()
    systemd.run("systemctl", "stop", "--no-block", WORKER)

    async def draining() -> dict[str, str] | None:
        state = systemd.show(WORKER, "ActiveState", "StatusText")
        return state if state["ActiveState"] == "deactivating" else None

    state = await eventually(draining)
    assert state["StatusText"].startswith("draining: "), state  # STOPPING=1 with its status

    async def stopped() -> dict[str, str] | None:
        state = systemd.show(WORKER, "ActiveState", "Result", "ExecMainStatus")
        return state if state["ActiveState"] in {"inactive", "failed"} else None

    final = await eventually(stopped, timeout=60)
    assert final == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}
    messages = [e.get("MESSAGE", "") for e in systemd.journal(WORKER, cursor)]
    # The worker exited by itself, not killed at the stop timeout.
    assert f"{WORKER}: Deactivated successfully." in messages, messages
    assert not [m for m in messages if "timed out" in m or "Killing" in m], messages
    assert any('"put back unfinished jobs"' in m for m in messages), messages
    assert any('"worker stopped"' in m for m in messages), messages
    assert await job_status(conn, short) == "succeeded"  # finished within the drain
    put_back = await conn.fetchrow("SELECT status, attempts FROM pgwake.jobs WHERE id = $1", long)
    assert (put_back["status"], put_back["attempts"]) == (
        "queued",
        0,
    )  # put back, attempt given back
    assert await conn.fetchval("SELECT count(*) FROM pgwake.workers") == 0


@nspawn_test
async def test_the_worker_extends_a_short_stop_timeout_to_its_drain(
    systemd: Container, dsn: str, conn: asyncpg.Connection
) -> None:
    # TimeoutStopSec=2 would kill the drain; STOPPING=1 comes with EXTEND_TIMEOUT_USEC.
    configure(systemd, dsn, PGWAKE_DRAIN_TIMEOUT="20")
    drop_in(systemd, WORKER, "[Service]\nTimeoutStopSec=2\n")
    systemd.run("systemctl", "start", WORKER)
    job_id = await enqueue(conn, "sleep", {"seconds": 5})
    await eventually(
        lambda: conn.fetchval("SELECT status = 'running' FROM pgwake.jobs WHERE id = $1", job_id)
    )
    systemd.run("systemctl", "stop", WORKER)
    final = systemd.show(WORKER, "Result", "ExecMainStatus")
    assert final == {"Result": "success", "ExecMainStatus": "0"}
    assert await job_status(conn, job_id) == "succeeded"


@nspawn_test
async def test_instances_run_side_by_side_each_migrated_first(
    systemd: Container, server_dsn: str
) -> None:
    async with fresh_database(server_dsn, None) as a, fresh_database(server_dsn, None) as b:
        ports = {"a": configure(systemd, a, "a"), "b": configure(systemd, b, "b")}
        systemd.run("systemctl", "start", "pgwake@a.service", "pgwake@b.service")
        for name, url in (("a", a), ("b", b)):
            worker = systemd.show(
                f"pgwake@{name}.service", "ActiveState", "ExecMainStartTimestampMonotonic"
            )
            migrate = systemd.show(
                f"pgwake-migrate@{name}.service",
                "Result",
                "ExecMainStatus",
                "ExecMainExitTimestampMonotonic",
            )
            assert worker["ActiveState"] == "active"
            assert (migrate["Result"], migrate["ExecMainStatus"]) == ("success", "0")
            # The migrations ran, and finished before the worker started.
            assert int(migrate["ExecMainExitTimestampMonotonic"]) <= int(
                worker["ExecMainStartTimestampMonotonic"]
            )
            assert readyz(ports[name]) == 200
            conn = await db.connect(url)
            try:
                assert (
                    await conn.fetchval("SELECT max(version) FROM pgwake.schema_migrations")
                    == latest_version()
                )
                await wait_ready(conn)
                job_id = await enqueue(conn, "echo", {"instance": name})
                await eventually(lambda conn=conn, job_id=job_id: _succeeded(conn, job_id))
            finally:
                await conn.close()
        systemd.run("systemctl", "stop", "pgwake@a.service", "pgwake@b.service")


@nspawn_test
async def test_encryption_keys_come_from_the_credential_store(
    systemd: Container, server_dsn: str, dsn: str, conn: asyncpg.Connection
) -> None:
    keys = generate_key("k1")
    keyring = load_keyring({"PGWAKE_ENCRYPTION_KEYS": keys})
    assert keyring is not None
    async with fresh_database(server_dsn, None) as shop:
        await conn.execute(
            "INSERT INTO pgwake.tenants (tenant_id, db_dsn_encrypted) VALUES ('acme', $1)",
            keyring.encrypt("acme", shop),
        )
        systemd.run("install", "-d", "-m", "0700", "/etc/credstore")
        systemd.write("/etc/credstore/pgwake-keys", keys + "\n", "0600")
        configure(systemd, dsn)
        cursor = systemd.journal_cursor()
        systemd.run("systemctl", "start", WORKER)
        job_id = await enqueue(conn, "tenant.database", {}, tenant="acme")
        await eventually(lambda: _succeeded(conn, job_id))
        # The dynamic user decrypted the tenant's DSN with the root-only key systemd handed over.
        assert (
            await conn.fetchval("SELECT result FROM pgwake.jobs WHERE id = $1", job_id)
            == shop.rsplit("/", 1)[1]
        )
        systemd.run("systemctl", "stop", WORKER)
        journal = systemd.run("journalctl", f"--after-cursor={cursor}", "--no-pager").stdout
        assert keys.split(":", 1)[1] not in journal


async def _succeeded(conn: asyncpg.Connection, job_id: int) -> bool:
    return await job_status(conn, job_id) == "succeeded"


async def _restarted(container: Container, before: dict[str, str]) -> bool:
    """Restarted once more than ``before``, with a new main process, and up again."""
    now = container.show(WORKER, "MainPID", "NRestarts", "ActiveState")
    return (
        int(now["NRestarts"]) == int(before["NRestarts"]) + 1
        and now["MainPID"] not in {"0", before["MainPID"]}
        and now["ActiveState"] == "active"
    )


@nspawn_test
async def test_journald_files_each_line_at_its_priority(
    systemd: Container, dsn: str, conn: asyncpg.Connection
) -> None:
    """``journalctl -p err -u pgwake`` shows a job that failed for good, with its
    traceback, and a start-up error (bad configuration), each a JSON line; a job's start
    and success are filed at info, below it."""
    configure(systemd, dsn, PGWAKE_HANDLERS="tests.support.logging_handlers")
    cursor = systemd.journal_cursor()
    since = int(systemd.run("date", "+%s%6N").stdout)
    systemd.run("systemctl", "start", WORKER)
    ok = await enqueue(conn, "echo", {})
    failed = await enqueue(conn, "log.permanent", {})
    await eventually(lambda: _succeeded(conn, ok))
    await eventually(lambda: _has_status(conn, failed, "failed"))

    def errors() -> list[dict[str, Any]]:
        """What ``journalctl -p err -u pgwake`` lists (of this test: the container's
        journal holds the earlier tests' entries too)."""
        out = systemd.run(
            "journalctl", "-p", "err", f"--unit={WORKER}", "--output=json", "--no-pager"
        ).stdout
        entries = [json.loads(line) for line in out.splitlines() if line.strip()]
        return [e for e in entries if int(e["__REALTIME_TIMESTAMP"]) >= since]

    async def logged_failure() -> list[dict[str, Any]]:
        return [
            e for e in systemd.journal(WORKER, cursor) if '"job failed"' in e.get("MESSAGE", "")
        ]

    (entry,) = await eventually(logged_failure, timeout=30)
    assert entry["PRIORITY"] == "3", entry
    assert entry["__CURSOR"] in {e["__CURSOR"] for e in errors()}
    line = json.loads(entry["MESSAGE"])  # the prefix was taken off
    assert (line["job_id"], line["level"]) == (failed, "error")
    assert line["error"] == "PermanentError: the order does not exist"
    assert "Traceback (most recent call last):" in line["exception"]
    # The job lines at info are there, filed at 6, and not among the errors.
    everything = systemd.journal(WORKER, cursor)
    started = [e for e in everything if '"job started"' in e.get("MESSAGE", "")]
    assert {e["PRIORITY"] for e in started} == {"6"}
    assert len(started) == 2
    assert all('"job started"' not in e.get("MESSAGE", "") for e in errors())

    # A bad setting: the start fails (exit 3, not restarted), its error a JSON line at 3.
    systemd.run("systemctl", "stop", WORKER)
    configure(
        systemd, dsn, PGWAKE_HANDLERS="tests.support.logging_handlers", PGWAKE_CONCURRENCY="0"
    )
    since = int(systemd.run("date", "+%s%6N").stdout)
    systemd.run("systemctl", "start", WORKER, check=False)
    (bad,) = [e for e in errors() if '"invalid configuration' in e.get("MESSAGE", "")]
    assert bad["PRIORITY"] == "3"
    event = json.loads(bad["MESSAGE"])
    assert (event["level"], event["exit_code"]) == ("error", 3)
    assert event["event"].startswith("invalid configuration: concurrency (from environment)")


async def _has_status(conn: asyncpg.Connection, job_id: int, status: str) -> bool:
    return await job_status(conn, job_id) == status
