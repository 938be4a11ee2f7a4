"""Workers for tests: in this process (``running_worker``) or in a process of their own
(``spawn_worker``, ``stop_process``), and waiting until they have registered.

A worker process a test forgets to stop (because it failed first) is killed at the
end of the test by the ``_no_process_left`` fixture in conftest.py (see
tests/support/processes.py).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import IO, Any

import anyio
import asyncpg
import pytest

from listener.config import load_settings
from listener.registry import Registry
from listener.service import Service
from tests.support import secret_watch
from tests.support.paths import ROOT
from tests.support.waiting import eventually


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
    dsn: str,
    *args: str,
    env: dict[str, str] | None = None,
    log: IO[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> subprocess.Popen[str]:
    """A worker in its own process (``python -m listener run``), DSN passed by env. Its
    output goes to ``log``, or else to an anonymous temporary file that ``stop_process``
    reads (never to a pipe: a worker logs a line per job start and end, and a full pipe
    nobody reads would block its event loop). Its environment is ``environ`` (default
    ``os.environ``) with the settings above and ``env`` over it."""
    output: Path | None = None
    fd = -1
    if log is not None:
        secret_watch.current().add_log_file(Path(log.name), f"worker log {log.name}")
    else:
        fd, name = tempfile.mkstemp(prefix="pgwake-worker-", suffix=".log")
        output = Path(name)
    full_env = {
        **(os.environ if environ is None else environ),
        "PGWAKE_DSN": dsn,
        "PYTHONPATH": str(ROOT),
        "PGWAKE_LOG_FORMAT": "json",
        "PGWAKE_METRICS_ADDR": "127.0.0.1:0",
        **(env or {}),
    }
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "listener", "run", *args],
            env=full_env,
            cwd=ROOT,
            stdout=fd if log is None else log,
            stderr=subprocess.STDOUT,
            text=True,
        )
    finally:
        if log is None:
            os.close(fd)
    if output is not None:
        # Read by stop_process (then deleted); the watch reads it at the end of the test
        # if nobody does.
        watch, what = getattr(proc, "_secret_watch", (secret_watch.current(), "worker output"))
        watch.add_log_file(output, what)
    proc._pgwake_output = output  # type: ignore[attr-defined]
    return proc


def _output(proc: subprocess.Popen[str], piped: str | None) -> str:
    """What ``proc`` wrote: its pipe's text, or the temporary file of ``spawn_worker``
    (checked by the secret watch like any output a test reads)."""
    output: Path | None = getattr(proc, "_pgwake_output", None)
    if output is None:
        return piped or ""
    watch, _ = getattr(proc, "_secret_watch", (secret_watch.current(), ""))
    watch.read_files()  # checks it before it goes
    text = output.read_text(encoding="utf-8", errors="replace")
    output.unlink(missing_ok=True)
    return text


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
        pytest.fail(f"process did not stop within {timeout}s:\n{_output(proc, out)}")
    return proc.returncode, _output(proc, out)


async def wait_ready(conn: asyncpg.Connection, count: int = 1, timeout: float = 30.0) -> None:
    """Wait until ``count`` workers have registered."""

    async def registered() -> bool:
        n = await conn.fetchval("SELECT count(*) FROM pgwake.workers")
        return bool(n >= count)

    await eventually(registered, timeout=timeout)
