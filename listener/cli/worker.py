"""``pgwake migrate`` and ``pgwake run``: the commands that put a worker to work.
``run``'s work is in listener/cli/serve.py, which the quick start of ``pgwake run``
without typer (listener/cli/quick.py) calls too.
"""

from __future__ import annotations

from typing import Any

import typer

from listener import logs
from listener.cli.options import Database, database_options, settings_options
from listener.cli.serve import run_worker
from listener.cli.support import guard, migrate_dsn, run_async
from listener.migrate import latest_version


@database_options
def migrate_cmd(*, db: Database) -> None:
    """Apply pending schema migrations (safe to run concurrently; idempotent)."""
    settings = db.settings()
    logs.configure(settings.log_format, settings.log_level)
    with db.url(announce=True) as url:
        applied, version = guard(run_async, migrate_dsn, url)
    for name in applied:
        typer.echo(f"applied {name}")
    known = latest_version()
    if version > known:
        # A newer pgwake migrated it, and every migration past ours is compatible.
        typer.echo(
            f"schema is at version {version:04d}, newer than this pgwake's ({known:04d}) "
            "and compatible with it"
        )
    else:
        typer.echo(f"schema is at version {version:04d}")


@settings_options
@database_options
def run_cmd(*, db: Database, flags: dict[str, Any]) -> None:
    """Run the worker until SIGTERM/SIGINT (a second signal skips the drain)."""
    run_worker(db, flags)
