"""The ``pgwake`` command line (typer).

Exit codes: 0 success; 1 an unexpected error or a refused request; 2 bad arguments;
3 bad configuration; 4 database unreachable; 5 schema not at this pgwake's version.
Errors print one line to stderr naming the problem; secrets are never printed.
"""

from __future__ import annotations

import json
import signal
import sys
from typing import Annotated

import anyio
import typer

from listener import __version__, logs
from listener.cli.bench.command import bench_cmd
from listener.cli.jobs import jobs_app
from listener.cli.keys import keys_app
from listener.cli.schedules import schedules_app
from listener.cli.status import status_cmd
from listener.cli.support import (
    ConfigOpt,
    DataDirOpt,
    DsnOpt,
    database,
    fail,
    guard,
    migrate_dsn,
    name_problem,
    run_async,
    settings_from,
    with_connection,
)
from listener.cli.tenants import tenants_app
from listener.cli.terminal import shown
from listener.config import Settings
from listener.migrate import latest_version
from listener.queries import QUERIES
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
app.add_typer(jobs_app, name="jobs")
app.add_typer(schedules_app, name="schedules")


@app.command("migrate")
def migrate_cmd(dsn: DsnOpt = None, config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """Apply pending schema migrations (safe to run concurrently; idempotent)."""
    settings = settings_from(dsn=dsn, config=config, data_dir=data_dir)
    logs.configure(settings.log_format, settings.log_level)
    with database(settings, announce=True) as url:
        applied = guard(run_async, migrate_dsn, url)
    if applied:
        for name in applied:
            typer.echo(f"applied {name}")
    typer.echo(f"schema is at version {latest_version():04d}")


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
def run_cmd(
    dsn: DsnOpt = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    handlers: Annotated[
        list[str] | None,
        typer.Option(
            "--handlers", help="Handler module to import (repeatable).", show_default=False
        ),
    ] = None,
    kinds: Annotated[
        list[str] | None,
        typer.Option("--kinds", help="Only claim this kind (repeatable).", show_default=False),
    ] = None,
    concurrency: Annotated[int | None, typer.Option(help="Jobs run at once.")] = None,
    tenant_concurrency: Annotated[
        int | None, typer.Option(help="Jobs of one tenant run at once in this worker.")
    ] = None,
    claim_batch: Annotated[int | None, typer.Option(help="Most jobs per claim.")] = None,
    poll_interval: Annotated[
        float | None, typer.Option(help="Seconds between claims without NOTIFY.")
    ] = None,
    drain_timeout: Annotated[
        float | None, typer.Option(help="Seconds to finish running jobs on SIGTERM.")
    ] = None,
    retry_base: Annotated[float | None, typer.Option(help="First retry backoff, seconds.")] = None,
    retry_cap: Annotated[float | None, typer.Option(help="Longest retry backoff, seconds.")] = None,
    heartbeat_interval: Annotated[float | None, typer.Option(help="Heartbeat seconds.")] = None,
    heartbeat_timeout: Annotated[
        float | None, typer.Option(help="Seconds without a heartbeat before a worker is lost.")
    ] = None,
    maintenance_interval: Annotated[
        float | None, typer.Option(help="Seconds between recovery rounds.")
    ] = None,
    maintenance_lease: Annotated[
        float | None, typer.Option(help="Seconds a stalled maintenance leader keeps the lead.")
    ] = None,
    retention_succeeded: Annotated[
        float | None, typer.Option(help="Seconds to keep succeeded jobs.")
    ] = None,
    retention_failed: Annotated[
        float | None, typer.Option(help="Seconds to keep failed jobs.")
    ] = None,
    retention_cancelled: Annotated[
        float | None, typer.Option(help="Seconds to keep cancelled jobs.")
    ] = None,
    job_events: Annotated[
        bool | None,
        typer.Option(
            "--job-events/--no-job-events",
            help="NOTIFY pgwake_events on status changes.",
            show_default=False,
        ),
    ] = None,
    tenant_db_max_connections: Annotated[
        int | None, typer.Option(help="Most connections to tenants' own databases.")
    ] = None,
    tenant_db_per_tenant: Annotated[
        int | None, typer.Option(help="Most connections to one tenant's database.")
    ] = None,
    tenant_db_idle_ttl: Annotated[
        float | None, typer.Option(help="Seconds an unused tenant database pool stays open.")
    ] = None,
    metrics_addr: Annotated[
        str | None, typer.Option(help="host:port for /metrics, /healthz, /readyz.")
    ] = None,
    metrics_interval: Annotated[
        float | None, typer.Option(help="Seconds between queue-depth samples.")
    ] = None,
    metrics_top_tenants: Annotated[
        int | None, typer.Option(help="Tenants by backlog that get their own series.")
    ] = None,
    metrics_tenants: Annotated[
        list[str] | None,
        typer.Option(
            "--metrics-tenant",
            help="Tenant that always gets its own series (repeatable).",
            show_default=False,
        ),
    ] = None,
    claim_order: Annotated[
        str | None, typer.Option(help="fair (default) or fifo (comparison benchmarks only).")
    ] = None,
    log_format: Annotated[str | None, typer.Option(help="auto, json or console.")] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning, error.")] = None,
) -> None:
    """Run the worker until SIGTERM/SIGINT (a second signal skips the drain)."""
    settings = settings_from(
        dsn=dsn,
        config=config,
        data_dir=data_dir,
        handlers=handlers or None,
        kinds=kinds or None,
        concurrency=concurrency,
        tenant_concurrency=tenant_concurrency,
        claim_batch=claim_batch,
        poll_interval=poll_interval,
        drain_timeout=drain_timeout,
        retry_base=retry_base,
        retry_cap=retry_cap,
        heartbeat_interval=heartbeat_interval,
        heartbeat_timeout=heartbeat_timeout,
        maintenance_interval=maintenance_interval,
        maintenance_lease=maintenance_lease,
        job_events=job_events,
        retention_succeeded=retention_succeeded,
        retention_failed=retention_failed,
        retention_cancelled=retention_cancelled,
        tenant_db_max_connections=tenant_db_max_connections,
        tenant_db_per_tenant=tenant_db_per_tenant,
        tenant_db_idle_ttl=tenant_db_idle_ttl,
        metrics_addr=metrics_addr,
        metrics_interval=metrics_interval,
        metrics_top_tenants=metrics_top_tenants,
        metrics_tenants=metrics_tenants or None,
        claim_order=claim_order,
        log_format=log_format,
        log_level=log_level,
    )
    logs.configure(settings.log_format, settings.log_level)
    guard(load_modules, [BUILTIN_HANDLERS, *settings.handlers])
    if settings.kinds:
        guard(DEFAULT_REGISTRY.restricted_to, settings.kinds)  # fail before connecting
    with database(settings, announce=True) as url:
        guard(run_async, _serve, settings, url)


@app.command("enqueue")
def enqueue_cmd(
    kind: Annotated[str, typer.Argument(help="The job kind (handler name).")],
    tenant: Annotated[str, typer.Option(help="Tenant id.")] = "default",
    payload: Annotated[str, typer.Option(help="JSON object passed to the handler.")] = "{}",
    priority: Annotated[int, typer.Option(help="Higher runs first within a tenant.")] = 0,
    delay: Annotated[float, typer.Option(help="Seconds from now before it may run.")] = 0.0,
    max_attempts: Annotated[
        int | None, typer.Option(help="Attempts before failing (default 20).")
    ] = None,
    unique_key: Annotated[
        str | None, typer.Option(help="At most one active job per tenant, kind and key.")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(help="Seconds a run may take (default 900).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    dsn: DsnOpt = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Enqueue one job (applications can simply INSERT INTO pgwake.jobs)."""
    try:
        body = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise fail(f"--payload is not valid JSON: {exc}", 2) from None
    if not isinstance(body, dict):
        raise fail('--payload must be a JSON object, like \'{"to": "a@b.c"}\'', 2)
    for flag, value in (("KIND", kind), ("--tenant", tenant)):
        problem = name_problem(value)
        if problem is not None:
            raise fail(f"{flag} {problem}", 2)
    settings = settings_from(dsn=dsn, config=config, data_dir=data_dir)
    logs.configure(settings.log_format, settings.log_level)
    args = (tenant, kind, body, priority, delay, max_attempts, unique_key, timeout)
    with database(settings, announce=False) as url:
        row = with_connection(
            url, lambda conn: conn.fetchrow(QUERIES["job_enqueue"], *args), what="job"
        )
    if row is None:
        message = {"enqueued": False, "reason": "unique_key is taken by an active job"}
        if as_json:
            typer.echo(json.dumps(message))
        else:
            typer.echo(f"not enqueued: unique key {unique_key!r} is taken by an active job")
        raise typer.Exit(1)
    if as_json:
        typer.echo(json.dumps({"enqueued": True, "id": row["id"], "status": row["status"]}))
    else:
        typer.echo(f"enqueued job {row['id']} ({row['status']})")


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
