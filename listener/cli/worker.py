"""``pgwake migrate`` and ``pgwake run``: the commands that put a worker to work.

Invariants:
- ``run`` loads the built-in handlers first and the application's modules after; an
  application's handler of a built-in kind replaces it (listener/registry.py).
- A restriction to some kinds (``--kinds``) fails before the database is reached when a
  kind has no handler (exit 3).
"""

from __future__ import annotations

import signal
from typing import Any

import anyio
import typer

from listener import logs
from listener.cli.options import Database, database_options, settings_options
from listener.cli.support import guard, migrate_dsn, run_async
from listener.config import Settings
from listener.migrate import latest_version
from listener.registry import DEFAULT_REGISTRY, load_modules

BUILTIN_HANDLERS = "handlers.builtin"


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


async def _serve(settings: Settings, dsn: str) -> None:
    from listener.service import Service  # noqa: PLC0415 - `pgwake migrate` needs none of it

    service = Service(settings, DEFAULT_REGISTRY, dsn)
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with anyio.create_task_group() as tg:

            async def watch_signals() -> None:
                count = 0
                async for _sig in signals:
                    count += 1
                    service.stop(now=count > 1)

            tg.start_soon(watch_signals)
            await service.run()
            tg.cancel_scope.cancel()


@settings_options
@database_options
def run_cmd(*, db: Database, flags: dict[str, Any]) -> None:
    """Run the worker until SIGTERM/SIGINT (a second signal skips the drain)."""
    settings = db.settings(flags)
    logs.configure(settings.log_format, settings.log_level)
    guard(load_modules, [BUILTIN_HANDLERS, *settings.handlers])
    if settings.kinds:
        guard(DEFAULT_REGISTRY.restricted_to, settings.kinds)  # fail before connecting
    with db.url(announce=True) as url:
        guard(run_async, _serve, settings, url)
