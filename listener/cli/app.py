"""The ``pgwake`` command line (typer).

Exit codes: 0 success; 1 an unexpected error or a refused request; 2 bad arguments;
3 bad configuration; 4 database unreachable; 5 a schema this pgwake cannot run against
(older than its own, or newer with a migration marked breaking); ``exec`` adds 6 to 9
for the outcome of the handler it ran (listener/cli/execute.py: OUTCOME_CODES).
Errors print one line to stderr naming the problem; secrets are never printed.

Only ``version`` is defined here; every other command lives in a module of its own,
imported when it runs (listener/cli/lazy.py), so ``pgwake version`` and ``pgwake
--help`` import no database driver, no settings model and no benchmark code.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import ClassVar

import typer

from listener import __version__
from listener.cli.lazy import LazyCommand, LazyGroup, LightCommand
from listener.cli.terminal import shown
from listener.paths import known_schema_version


class Commands(LazyGroup):
    """pgwake's commands, each imported only when it runs (listener/cli/lazy.py)."""

    ORDER = (
        "migrate", "run", "exec", "enqueue", "status", "bench", "version",
        "keys", "tenants", "limits", "jobs", "schedules",
    )  # fmt: skip
    LAZY: ClassVar[Mapping[str, LazyCommand]] = {
        "migrate": LazyCommand(
            "listener.cli.worker:migrate_cmd",
            "Apply pending schema migrations (safe to run concurrently; idempotent).",
        ),
        "run": LazyCommand(
            "listener.cli.worker:run_cmd",
            "Run the worker until SIGTERM/SIGINT (a second signal skips the drain).",
        ),
        "enqueue": LazyCommand(
            "listener.cli.enqueue:enqueue_cmd",
            "Enqueue one job (applications can simply INSERT INTO pgwake.jobs).",
        ),
        "exec": LazyCommand(
            "listener.cli.execute:exec_cmd",
            "Run one job's handler once in this process (no worker needed) and print how it\n"
            "ended; the exit code says how (0 succeeded, 6 to retry, 7 failed, 8 cancelled, 9\n"
            "snoozed).",
        ),
        "status": LazyCommand(
            "listener.cli.status:status_cmd",
            "Queue health: jobs by kind and status, the drain, tenants, workers, the last\n"
            "errors by kind.",
        ),
        "bench": LazyCommand(
            "listener.cli.bench.command:bench_cmd",
            "Run benchmark workloads in databases of their own and print the figures.",
        ),
        "keys": LazyCommand(
            "listener.cli.keys:keys_app", "Encryption keys for tenant database DSNs."
        ),
        "tenants": LazyCommand(
            "listener.cli.tenants:tenants_app",
            "Per-tenant settings: fleet-wide caps, weights, pausing, own databases.",
        ),
        "limits": LazyCommand(
            "listener.cli.limits:limits_app",
            "Rate limits per kind: at most N jobs of a kind started per period.",
        ),
        "jobs": LazyCommand(
            "listener.cli.jobs:jobs_app",
            "Look at and act on jobs: list, show, retry, cancel, purge.",
        ),
        "schedules": LazyCommand(
            "listener.cli.schedules:schedules_app",
            "Cron schedules that enqueue jobs: add, list, remove.",
        ),
    }


app = typer.Typer(
    name="pgwake",
    help="A PostgreSQL job worker: INSERT a row, NOTIFY wakes the worker, the handler runs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=Commands,
)


@app.callback()
def _group() -> None:
    # A callback keeps ``app`` a group: typer makes a Typer of one command that command.
    pass


@app.command("version", cls=LightCommand)
def version_cmd() -> None:
    """Print pgwake's version and the schema version it needs."""
    typer.echo(f"pgwake {__version__} (schema {known_schema_version():04d})")


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
