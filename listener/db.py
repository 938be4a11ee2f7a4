"""Connections to the central database.

Invariants:
- Every connection pgwake opens decodes json/jsonb to Python objects and back, so
  payloads and results cross the boundary as dicts, never as JSON strings.
- Decoding never raises: a value PostgreSQL holds but Python's decoder refuses (a number
  of more than 4300 digits such as ``1e5000``, nesting deeper than the recursion limit)
  is decoded as an :class:`UndecodableJson` holding its text and the reason, so one such
  row never fails the statement that reads it (a claim, a listing) for the other rows.
  Whoever uses the value checks for it (the executor fails that one job for good).
- The LISTEN connection is separate from the pool (see notifications.py); pool connections
  are only borrowed for one statement or one short transaction.
- A transaction the worker's tasks open (:func:`transaction`) is rolled back before its
  connection goes back to the pool, even when the task is cancelled inside it (the
  shutdown): the rollback runs shielded from the cancellation, for at most
  ``ROLLBACK_TIMEOUT`` seconds. Otherwise the cancellation, which anyio delivers again at
  every await of the cancelled task, stopped the rollback too, and asyncpg reset the
  connection with the transaction still open, logging it as an error.
- :data:`DATABASE_ERRORS` is every error talking to PostgreSQL raises (the server's, the
  client library's, the network's, a timeout); :data:`CONNECTION_ERRORS` those of them
  that mean the connection failed, whatever the statement. Code that rides out a
  database problem catches these, never a list of its own.
- Errors that say nothing about the data (serialization failure, deadlock, shutdown,
  lost connection, authentication refused, the database or its schema missing:
  :func:`is_transient`) are *transient*: every loop of the worker waits them out with
  backoff, bookkeeping writes are retried on them, handlers are never re-run because of
  them. Any other error is the worker's own (its configuration, a privilege it lacks, a
  bug) and is not retried.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import anyio
import asyncpg

from listener.errors import DatabaseUnavailableError
from listener.redact import display_dsn, redact

# SQLSTATEs worth retrying a statement on: they say nothing about the statement or its
# data, only that the database cannot serve it now. A worker waits these out (every loop
# retries with backoff, /readyz says why it is not ready), whatever their number.
TRANSIENT_SQLSTATES = frozenset(
    {
        # The transaction lost a race; the same statement may well succeed.
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "55P03",  # lock_not_available
        "57014",  # query_canceled (a statement timeout, pg_cancel_backend)
        # The server is stopping, starting or out of room.
        "57P01",  # admin_shutdown (also: the database dropped WITH (FORCE))
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now
        "57P04",  # database_dropped
        "53000",  # insufficient_resources
        "53100",  # disk_full
        "53200",  # out_of_memory
        "53300",  # too_many_connections
        "58000",  # system_error
        "58030",  # io_error
        "25006",  # read_only_sql_transaction (a standby, in a failover)
        "55000",  # object_not_in_prerequisite_state: a database not accepting
        #           connections (ALTER DATABASE ... ALLOW_CONNECTIONS false, for upkeep)
        # The connection failed or was refused.
        "08000",  # connection_exception
        "08003",  # connection_does_not_exist
        "08006",  # connection_failure
        "08001",  # sqlclient_unable_to_establish_sqlconnection
        "08004",  # sqlserver_rejected_establishment_of_sqlconnection
        "28000",  # invalid_authorization_specification (no pg_hba entry, role missing)
        "28P01",  # invalid_password (a password rotated before the worker's setting)
        # The database is missing, or was recreated and is not migrated yet. At start
        # the schema is checked (migrate.check_schema), so later these mean the schema
        # went away under the worker, not a bug of its queries.
        "3D000",  # invalid_catalog_name (database does not exist)
        "3F000",  # invalid_schema_name
        "42P01",  # undefined_table
        "42883",  # undefined_function
    }
)


# The connection failed, whatever the statement was: the network (OSError, which
# includes ConnectionError), no answer in time, or the client library's own errors.
# InternalClientError: the server ended the session between two messages of the protocol
# (pg_terminate_backend, a restart), so no query can start on that connection; like a
# lost connection, the next attempt takes another one.
CONNECTION_ERRORS: Final = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)
# Everything talking to PostgreSQL raises: the server's errors and the connection's.
DATABASE_ERRORS: Final = (asyncpg.PostgresError, *CONNECTION_ERRORS)


def is_transient(exc: BaseException) -> bool:
    """True for errors after which the same statement may well succeed: a failed
    connection, or a server error whose SQLSTATE is in TRANSIENT_SQLSTATES."""
    if isinstance(exc, asyncpg.PostgresError):
        return getattr(exc, "sqlstate", None) in TRANSIENT_SQLSTATES
    return isinstance(exc, CONNECTION_ERRORS)


def with_database(dsn: str, name: str) -> str:
    """``dsn`` pointing at database ``name`` instead (also for unix-socket DSNs)."""
    return urlunsplit(urlsplit(dsn)._replace(path="/" + name))


# TCP settings for every connection to the central database, so that a peer that
# vanished without a FIN (a cut cable, a dropped route, a frozen host) is noticed:
# an idle connection is probed after KEEPALIVE_IDLE seconds, then every
# KEEPALIVE_INTERVAL seconds, and given up after KEEPALIVE_COUNT unanswered probes;
# data left unacknowledged for USER_TIMEOUT_MS aborts the connection. The server is
# asked to do the same on its side, so the sessions (and liveness locks) of a vanished
# worker end too.
KEEPALIVE_IDLE = 5
KEEPALIVE_INTERVAL = 2
KEEPALIVE_COUNT = 3
USER_TIMEOUT_MS = 15_000
SERVER_KEEPALIVES = {
    "tcp_keepalives_idle": str(KEEPALIVE_IDLE),
    "tcp_keepalives_interval": str(KEEPALIVE_INTERVAL),
    "tcp_keepalives_count": str(KEEPALIVE_COUNT),
}


def set_keepalive(conn: asyncpg.Connection) -> None:
    """Turn on TCP keepalives and a user timeout on ``conn``'s socket (TCP only)."""
    transport = getattr(conn, "_transport", None)  # asyncpg has no public accessor
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
        ("TCP_KEEPCNT", KEEPALIVE_COUNT),
        ("TCP_USER_TIMEOUT", USER_TIMEOUT_MS),
    ):
        if hasattr(socket, option):  # Linux; other systems keep their defaults
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


class UndecodableJson:
    """A json/jsonb value that Python's decoder refuses: ``text`` is the value as
    PostgreSQL printed it, ``reason`` says why it cannot be decoded. ``str()`` gives the
    text, so listings print it as it is stored."""

    __slots__ = ("reason", "text")

    def __init__(self, text: str, reason: str) -> None:
        self.text = text
        self.reason = reason

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"UndecodableJson({self.reason!r}, {len(self.text)} chars)"


# The decoder json.loads itself uses, and its scanner: the value at an offset and where
# it ends. PostgreSQL writes jsonb with no whitespace around the value, so the scanner
# alone decodes it (a fifth to a half of json.loads' cost, which matches whitespace
# twice with a regular expression); anything else takes json.loads' own path.
_DECODER = json.JSONDecoder()
_decode = _DECODER.decode
# (JSONDecoder sets scan_once on itself; typeshed does not declare it.)
_scan: Callable[[str, int], tuple[Any, int]] = vars(_DECODER)["scan_once"]


def decode_json(text: str) -> Any:
    """Decode one json/jsonb value, or say why Python cannot (never raises): the value
    json.loads gives, and for text it refuses, its reason."""
    try:
        value, end = _scan(text, 0)
        if end == len(text):
            return value
    except (StopIteration, RecursionError, ValueError):
        pass  # json.loads' path below says why
    try:
        return _decode(text)
    except RecursionError:
        return UndecodableJson(
            text, "JSON Python cannot decode: nested deeper than its decoder allows"
        )
    except ValueError as exc:
        # e.g. "Exceeds the limit (4300 digits) for integer string conversion: value has
        # 5001 digits; use sys.set_int_max_str_digits() ...": the advice is for whoever
        # runs Python, not for whoever reads last_error.
        reason = str(exc).split("; use ", 1)[0]
        return UndecodableJson(text, f"JSON Python cannot decode: {reason}")


# Seconds the rollback of a transaction left by an error or a cancellation may take.
ROLLBACK_TIMEOUT = 5.0


@contextlib.asynccontextmanager
async def transaction(conn: Any, **options: Any) -> AsyncIterator[None]:
    """``conn.transaction(**options)`` (a connection or a pool's proxy of one) for the
    block: committed when it ends, rolled back when it raises, and rolled back too when
    its task is cancelled inside it, shielded from the cancellation (see the module's
    invariants). A rollback that fails leaves the connection to the pool, which resets
    or closes it."""
    tx = conn.transaction(**options)
    await tx.start()
    try:
        yield
    except BaseException:
        with (
            anyio.CancelScope(shield=True),
            anyio.move_on_after(ROLLBACK_TIMEOUT),
            contextlib.suppress(Exception),
        ):
            await tx.rollback()
        raise
    await tx.commit()


async def init_connection(conn: asyncpg.Connection) -> None:
    """Per-connection setup: TCP keepalives, JSON codecs."""
    set_keepalive(conn)
    for typename in ("json", "jsonb"):
        await conn.set_type_codec(
            typename,
            schema="pg_catalog",
            encoder=json.dumps,
            decoder=decode_json,
            format="text",
        )


# Longest statement (bytes) a connection keeps prepared; above every query of pgwake.
MAX_CACHEABLE_STATEMENT = 64 * 1024


def _connect_kwargs(session_settings: dict[str, str] | None = None) -> dict[str, Any]:
    # application_name lets a DBA (and `pgwake status`, which finds the metrics leader
    # by it) tell pgwake's sessions apart in pg_stat_activity: host and worker pid.
    settings = {
        "application_name": f"pgwake@{socket.gethostname()}:{os.getpid()}",
        **SERVER_KEEPALIVES,
    }
    # The claim, with its comments, is longer than asyncpg's default limit for caching
    # a prepared statement (15 KiB): without this it would be parsed and planned anew
    # at every call.
    return {
        "server_settings": settings | (session_settings or {}),
        "max_cacheable_statement_size": MAX_CACHEABLE_STATEMENT,
    }


def unavailable(dsn: str, exc: BaseException) -> DatabaseUnavailableError:
    """The error to raise when connecting to ``dsn`` failed with ``exc``: names the
    server (password masked) and the cause, and says whether it can be waited out."""
    return DatabaseUnavailableError(
        f"cannot connect to {display_dsn(dsn)}: {type(exc).__name__}: {redact(str(exc))}",
        transient=is_transient(exc),
    )


async def connect(
    dsn: str, *, timeout: float = 10.0, session_settings: dict[str, str] | None = None
) -> asyncpg.Connection:
    """Open one connection with pgwake's setup; raise a clear error when unreachable.
    ``session_settings`` are run-time parameters for the session (for example
    ``pgwake.job_events``)."""
    try:
        conn: asyncpg.Connection = await asyncpg.connect(
            dsn, timeout=timeout, **_connect_kwargs(session_settings)
        )
    except DATABASE_ERRORS as exc:
        raise unavailable(dsn, exc) from None
    await init_connection(conn)
    return conn


def new_pool(
    dsn: str,
    *,
    size: int,
    timeout: float = 10.0,
    session_settings: dict[str, str] | None = None,
    min_size: int = 1,
) -> asyncpg.Pool:
    """A small pool for claims, acks and maintenance, not connected yet: parts can be
    built on it before ``open_pool`` connects it (inside the running event loop). With
    ``min_size=0``, ``open_pool`` opens no connection (so cannot fail): the first
    ``acquire`` does, and a failed acquire leaves the pool usable, where a failed first
    connection of a pool closes it for good."""
    return asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=size,
        init=init_connection,
        timeout=timeout,
        **_connect_kwargs(session_settings),
    )


async def open_pool(pool: asyncpg.Pool, dsn: str) -> None:
    """Connect a pool from ``new_pool``; raise a clear error when unreachable."""
    try:
        await pool
    except DATABASE_ERRORS as exc:
        raise unavailable(dsn, exc) from None


async def create_pool(
    dsn: str, *, size: int, timeout: float = 10.0, session_settings: dict[str, str] | None = None
) -> asyncpg.Pool:
    """A small pool for claims, acks and maintenance, connected."""
    pool = new_pool(dsn, size=size, timeout=timeout, session_settings=session_settings)
    await open_pool(pool, dsn)
    return pool
