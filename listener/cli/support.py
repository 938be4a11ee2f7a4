"""Shared pieces of the command line: the database (a DSN or the embedded server),
running async code, and turning errors into exit codes (the options commands share are
in :mod:`.options`).

Invariant: every command reports a failure as one line on stderr,
``pgwake: error: <message>``, with secrets masked and control characters escaped (text
from the database may hold any), and exits with the error's code; with the log format
``json`` the line is a JSON log line at level error instead (listener/logs.py). A statement the
database refuses is reported by its one-line message (never its DETAIL, which holds
the whole row): exit 2 when the values given were refused (a CHECK or NOT NULL
constraint, a data exception), else 1.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import anyio
import asyncpg

from listener import db, logs
from listener.cli.terminal import shown
from listener.config import Settings
from listener.errors import PgwakeError
from listener.logs import LogFormat
from listener.migrate import migrate, schema_version
from listener.redact import redact

T = TypeVar("T")


def fail(message: str, code: int, *, log_format: LogFormat | None = None) -> SystemExit:
    """Print ``message`` as an error (a JSON line when the log format, ``log_format`` or
    the one configured, is ``json``: listener/logs.py); return the exit to raise (a
    ``SystemExit``, so that ``pgwake run`` needs no typer to fail: listener/cli/quick.py)."""
    line = f"pgwake: error: {shown(redact(message))}"
    logs.report_error(message, code, line, fmt=log_format)
    return SystemExit(code)


@contextlib.contextmanager
def database(settings: Settings, *, announce: bool) -> Iterator[str]:
    """Yield the configured DSN, or that of the embedded server, started (or joined) and
    migrated for the occasion, and stopped after when no other pgwake process uses it."""
    if settings.dsn is not None:
        yield settings.dsn.get_secret_value()
        return
    from listener.embedded import embedded_postgres  # noqa: PLC0415 - only without a DSN

    if announce:
        print(  # a line for whoever started it, not a log line
            f"pgwake: no DSN given; using the embedded PostgreSQL in {settings.data_dir}",
            file=sys.stderr,
            flush=True,
        )
    with contextlib.ExitStack() as stack:
        try:
            dsn = stack.enter_context(embedded_postgres(settings.data_dir))
        except PgwakeError as exc:  # cannot start (exit 4), or a signal during the start
            raise fail(str(exc), exc.exit_code) from None
        guard(run_async, migrate_dsn, dsn)  # zero-config: always at this pgwake's schema
        yield dsn


def run_async(fn: Any, *args: Any) -> Any:
    """Run an async function to completion (on uvloop when installed)."""
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


def guard(fn: Any, *args: Any) -> Any:
    """Run ``fn`` and turn pgwake errors into a message and an exit code."""
    try:
        return fn(*args)
    except (PgwakeError, BaseExceptionGroup) as exc:
        found = _pgwake_error(exc)
        if found is None:
            raise
        raise fail(str(found), found.exit_code) from None


async def migrate_dsn(dsn: str) -> tuple[list[str], int]:
    """Apply pending migrations; the names of those applied, and the database's schema
    version after (newer than this pgwake's when a newer compatible one was there)."""
    conn = await db.connect(dsn)
    try:
        applied = [m.label for m in await migrate(conn)]
        return applied, await schema_version(conn)
    finally:
        await conn.close()


def echo_result(data: Any, as_json: bool, text: str) -> None:
    """Print a command's result: ``data`` as JSON with ``--json``, else ``text``."""
    import typer  # noqa: PLC0415 - not on the way of `pgwake run`

    typer.echo(json.dumps(data, default=str) if as_json else text)


def with_connection(
    dsn: str, fn: Callable[[asyncpg.Connection], Awaitable[T]], *, what: str = "request"
) -> T:
    """Open a connection, run ``fn`` with it, close it; errors become exit codes, and a
    statement the database refuses exits 1 with the database's message."""

    async def body() -> T:
        conn = await db.connect(dsn)
        try:
            return await fn(conn)
        finally:
            await conn.close()

    try:
        result: T = guard(run_async, body)
    except asyncpg.PostgresError as exc:
        raise fail(f"the database refused the {what}: {refusal(exc)}", refusal_code(exc)) from None
    return result


# Tenant ids, kinds and schedule names: what the tables' CHECK constraints allow.
MAX_NAME_CHARS = 200


def name_problem(value: str) -> str | None:
    """None when ``value`` is a tenant id, kind or schedule name the tables accept (1 to
    200 characters, not all blank), else what is wrong with it."""
    if not value.strip():
        return "must not be empty or blank"
    if len(value) > MAX_NAME_CHARS:
        return f"must be at most {MAX_NAME_CHARS} characters; got {len(value)}"
    return None


def payload_object(payload: str, flag: str = "--payload") -> dict[str, Any]:
    """``--payload`` (or the option ``flag``) read as a JSON object; anything else exits
    2."""
    try:
        body = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise fail(f"{flag} is not valid JSON: {exc}", 2) from None
    if not isinstance(body, dict):
        raise fail(f'{flag} must be a JSON object, like \'{{"to": "a@b.c"}}\'', 2)
    return body


# SQLSTATEs of a value refused: not_null_violation, check_violation; and class 22.
_BAD_VALUE_SQLSTATES = frozenset({"23502", "23514"})


def refusal(exc: asyncpg.PostgresError) -> str:
    """The database's one-line message for ``exc``, without its DETAIL (a refused row
    is shown whole there, payload included)."""
    message = getattr(exc, "message", None) or str(exc)
    return str(message).split("\n", 1)[0]


def refusal_code(exc: asyncpg.PostgresError) -> int:
    """2 when the database refused the values given (bad arguments), else 1."""
    sqlstate = str(getattr(exc, "sqlstate", "") or "")
    return 2 if sqlstate.startswith("22") or sqlstate in _BAD_VALUE_SQLSTATES else 1
