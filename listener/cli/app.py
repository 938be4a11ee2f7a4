"""The ``pgwake`` command line (typer).

Exit codes: 0 success; 1 an unexpected error or a refused request; 2 bad arguments;
3 bad configuration; 4 database unreachable; 5 a schema this pgwake cannot run against
(older than its own, or newer with a migration marked breaking).
Errors print one line to stderr naming the problem; secrets are never printed.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

import anyio
import typer

from listener import __version__, logs
from listener.cli.bench.command import bench_cmd
from listener.cli.enqueue import enqueue_cmd
from listener.cli.jobs import jobs_app
from listener.cli.keys import keys_app
from listener.cli.limits import limits_app
from listener.cli.options import Database, database_options, settings_options
from listener.cli.schedules import schedules_app
from listener.cli.status import status_cmd
from listener.cli.support import (
    guard,
    migrate_dsn,
    run_async,
)
from listener.cli.tenants import tenants_app
from listener.cli.terminal import shown
from listener.config import Settings
from listener.migrate import latest_version
from listener.registry import DEFAULT_REGISTRY, load_modules

BUILTIN_HANDLERS = "handlers.builtin"

app = typer.Typer(
    name="pgwake",
    help="A PostgreSQL job worker: INSERT a row, NOTIFY wakes the worker, the handler runs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

app.add_typer(keys_app, name="keys")
app.add_typer(tenants_app, name="tenants")
app.add_typer(limits_app, name="limits")
app.add_typer(jobs_app, name="jobs")
app.add_typer(schedules_app, name="schedules")


@app.command("migrate")
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
    from listener.service import Service  # noqa: PLC0415 - keeps `pgwake --help` fast

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


@app.command("run")
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


app.command("enqueue")(enqueue_cmd)
app.command("status")(status_cmd)
app.command("bench")(bench_cmd)


@app.command("version")
def version_cmd() -> None:
    """Print pgwake's version and the schema version it needs."""
    typer.echo(f"pgwake {__version__} (schema {latest_version():04d})")


# click's exception classes, reached through typer's public BadParameter (typer vendors
# click in recent versions and depends on it in older ones).
_USAGE_ERROR: type[Exception] = next(
    cls for cls in typer.BadParameter.__mro__ if cls.__name__ == "UsageError"
)


def main() -> None:
    """Console-script entry point. A usage error (unknown option or command, a missing
    or malformed argument) is one line on stderr like every other error, exit 2."""
    try:
        code = app(standalone_mode=False)
    except KeyboardInterrupt:
        sys.exit(130)
    except typer.Abort:
        typer.echo("Aborted.", err=True)
        sys.exit(1)
    except _USAGE_ERROR as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":
            sys.exit(2)  # a group without a subcommand: its help was printed
        ctx = getattr(exc, "ctx", None)
        where = f" (see {ctx.command_path} --help)" if ctx is not None else ""
        message = exc.format_message()  # type: ignore[attr-defined]
        typer.echo(f"pgwake: error: {shown(message)}{where}", err=True)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)
