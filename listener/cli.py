"""The ``pgwake`` command line (typer).

Exit codes: 0 success; 1 an unexpected error or a refused request; 2 bad arguments;
3 bad configuration; 4 database unreachable; 5 schema not at this pgwake's version.
Errors print one line to stderr naming the problem; secrets are never printed.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import anyio
import asyncpg
import typer

from listener import __version__, db, logs
from listener.config import Settings, load_settings
from listener.errors import PgwakeError
from listener.keys_cli import keys_app
from listener.migrate import latest_version, migrate
from listener.proctitle import scrub_argv
from listener.queries import QUERIES
from listener.redact import redact
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

DsnOpt = Annotated[
    str | None,
    typer.Option(
        "--dsn",
        help="libpq URL of the database (prefer PGWAKE_DSN: argv is visible to other users). "
        "Without one, an embedded PostgreSQL is used.",
        show_default=False,
    ),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", help="TOML config file (also PGWAKE_CONFIG).", show_default=False),
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="Embedded PostgreSQL data directory (no DSN only).", show_default=False
    ),
]


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"pgwake: error: {redact(message)}", err=True)
    return typer.Exit(code)


def _settings(**flags: Any) -> Settings:
    config = flags.pop("config", None)
    if flags.get("dsn") is not None:
        scrub_argv()
    try:
        return load_settings(flags, config_file=config)
    except PgwakeError as exc:
        raise _fail(str(exc), exc.exit_code) from None


@contextlib.contextmanager
def _database(settings: Settings, *, announce: bool) -> Iterator[str]:
    """Yield the configured DSN, or that of the embedded server, started (or joined) and
    migrated for the occasion, and stopped after when no other pgwake process uses it."""
    if settings.dsn is not None:
        yield settings.dsn.get_secret_value()
        return
    from listener.embedded import embedded_postgres  # noqa: PLC0415 - only without a DSN

    if announce:
        typer.echo(
            f"pgwake: no DSN given; using the embedded PostgreSQL in {settings.data_dir}", err=True
        )
    with embedded_postgres(settings.data_dir) as dsn:
        _guard(_run_async, _migrate, dsn)  # zero-config: always at this pgwake's schema
        yield dsn


def _run_async(fn: Any, *args: Any) -> Any:
    try:
        import uvloop  # noqa: F401, PLC0415 - optional speed-up
    except ImportError:
        return anyio.run(fn, *args)
    return anyio.run(fn, *args, backend_options={"use_uvloop": True})


def _pgwake_error(exc: BaseException) -> PgwakeError | None:
    """The PgwakeError in ``exc``, looking inside task-group exception groups."""
    if isinstance(exc, PgwakeError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _pgwake_error(inner)
            if found is not None:
                return found
    return None


def _guard(fn: Any, *args: Any) -> Any:
    """Run ``fn`` and turn pgwake errors into a message and an exit code."""
    try:
        return fn(*args)
    except (PgwakeError, BaseExceptionGroup) as exc:
        found = _pgwake_error(exc)
        if found is None:
            raise
        raise _fail(str(found), found.exit_code) from None


async def _migrate(dsn: str) -> list[str]:
    conn = await db.connect(dsn)
    try:
        return [f"{m.version:04d}_{m.name}" for m in await migrate(conn)]
    finally:
        await conn.close()


@app.command("migrate")
def migrate_cmd(dsn: DsnOpt = None, config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """Apply pending schema migrations (safe to run concurrently; idempotent)."""
    settings = _settings(dsn=dsn, config=config, data_dir=data_dir)
    logs.configure(settings.log_format, settings.log_level)
    with _database(settings, announce=True) as url:
        applied = _guard(_run_async, _migrate, url)
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
    log_format: Annotated[str | None, typer.Option(help="auto, json or console.")] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning, error.")] = None,
) -> None:
    """Run the worker until SIGTERM/SIGINT (a second signal skips the drain)."""
    settings = _settings(
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
        log_format=log_format,
        log_level=log_level,
    )
    logs.configure(settings.log_format, settings.log_level)
    _guard(load_modules, [BUILTIN_HANDLERS, *settings.handlers])
    if settings.kinds:
        _guard(DEFAULT_REGISTRY.restricted_to, settings.kinds)  # fail before connecting
    with _database(settings, announce=True) as url:
        _guard(_run_async, _serve, settings, url)


async def _enqueue(dsn: str, args: tuple[Any, ...]) -> Any:
    conn = await db.connect(dsn)
    try:
        return await conn.fetchrow(QUERIES["job_enqueue"], *args)
    finally:
        await conn.close()


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
        raise _fail(f"--payload is not valid JSON: {exc}", 2) from None
    if not isinstance(body, dict):
        raise _fail('--payload must be a JSON object, like \'{"to": "a@b.c"}\'', 2)
    settings = _settings(dsn=dsn, config=config, data_dir=data_dir)
    logs.configure(settings.log_format, settings.log_level)
    args = (tenant, kind, body, priority, delay, max_attempts, unique_key, timeout)
    with _database(settings, announce=False) as url:
        try:
            row = _guard(_run_async, _enqueue, url, args)
        except asyncpg.PostgresError as exc:
            raise _fail(f"the database refused the job: {exc}", 1) from None
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


@app.command("version")
def version_cmd() -> None:
    """Print pgwake's version and the schema version it needs."""
    typer.echo(f"pgwake {__version__} (schema {latest_version():04d})")


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
