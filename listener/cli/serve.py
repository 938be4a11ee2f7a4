"""What ``pgwake run`` does once its options are parsed: read the settings, load the
handlers, and run the worker until SIGTERM/SIGINT. Nothing here imports typer: typer's
``run`` command (listener/cli/worker.py) and the quick start without it
(listener/cli/quick.py) both call :func:`run_worker`.

Invariants:
- The built-in handlers are loaded first and the application's modules after; an
  application's handler of a built-in kind replaces it (listener/registry.py).
- A restriction to some kinds (``--kinds``) fails before the database is reached when a
  kind has no handler (exit 3).
"""

from __future__ import annotations

import signal
from collections.abc import Mapping
from typing import Any

import anyio

from listener import logs
from listener.cli.database import Database
from listener.cli.support import guard, run_async
from listener.config import Settings
from listener.registry import DEFAULT_REGISTRY, load_modules

BUILTIN_HANDLERS = "handlers.builtin"


async def _serve(settings: Settings, dsn: str) -> None:
    from listener.service import Service  # noqa: PLC0415 - after the settings are read

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


def run_worker(db: Database, flags: Mapping[str, Any]) -> None:
    """Run the worker with the settings ``flags`` (those given on the command line)
    over the other sources; errors end the process with their exit code."""
    settings = db.settings(flags)
    logs.configure(settings.log_format, settings.log_level)
    guard(load_modules, [BUILTIN_HANDLERS, *settings.handlers])
    if settings.kinds:
        guard(DEFAULT_REGISTRY.restricted_to, settings.kinds)  # fail before connecting
    with db.url(announce=True) as url:
        guard(run_async, _serve, settings, url)
