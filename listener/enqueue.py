"""Enqueue from Python on the application's own connection, inside its own transaction.

    from listener.api import enqueue, enqueue_many, NewJob

    async with conn.transaction():                 # asyncpg (psycopg 3: the same)
        order_id = await save_order(conn, ...)
        job_id = await enqueue(conn, "invoice.send", Invoice(order_id=order_id),
                               tenant="acme", priority=10)

Invariants:
- A job exists if and only if the transaction it was enqueued in commits: these
  functions run one INSERT on the connection they are given and never commit, open or
  end a transaction themselves (the insert trigger's NOTIFY is sent at commit, so no
  worker wakes for a job that is rolled back).
- One statement per call: ``enqueue`` inserts one row (sql/queries/api.sql:
  job_insert), ``enqueue_many`` any number of rows as arrays (job_insert_many), one
  round trip and one NOTIFY however many rows.
- A payload is a JSON object: a mapping, or a pydantic model instance (serialised with
  ``model_dump(mode="json")``, so the handler's own model round-trips), or None for
  ``{}``. Anything else is refused before the database is reached (TypeError), as is a
  value JSON cannot hold (NaN, a set...) or jsonb cannot (NUL). Every rule of the table
  (kind and tenant not blank, priority range, payload size...) is checked by the
  database, whose error names the constraint.
- A job with a ``unique_key`` whose key is taken is skipped, not an error: ``enqueue``
  returns None for it (its type says so only when a key is given) and ``enqueue_many``
  leaves its id out.
- The connection is asyncpg's (a ``Connection`` or a pool's connection) or psycopg 3's
  ``AsyncConnection``; both get the same SQL text (``$n`` placeholders, through
  psycopg's raw cursor) and the same parameter types. psycopg is imported only when a
  psycopg connection is given.
- The columns that the dependencies and metadata work adds (``depends_on``,
  ``metadata``) are not here yet; they are keyword arguments to add beside the others.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeAlias, TypeGuard, cast, overload

from pydantic import BaseModel

from listener.queries import QUERIES

if TYPE_CHECKING:
    import asyncpg
    import psycopg
    from asyncpg.pool import PoolConnectionProxy

    Connection: TypeAlias = asyncpg.Connection | PoolConnectionProxy | psycopg.AsyncConnection[Any]
else:
    Connection = Any

Payload: TypeAlias = Mapping[str, Any] | BaseModel | None
"""A job's payload: a JSON object as a mapping, or the handler's pydantic model."""

Seconds: TypeAlias = timedelta | float
"""A duration: a timedelta, or seconds."""


@dataclass(frozen=True, slots=True)
class NewJob:
    """One job for :func:`enqueue_many`; the fields are :func:`enqueue`'s arguments."""

    kind: str
    payload: Payload = None
    tenant: str = "default"
    run_at: datetime | timedelta | None = None
    priority: int = 0
    max_attempts: int | None = None
    unique_key: str | None = None
    unique_for: Seconds | None = None
    timeout: Seconds | None = None


_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"))


def payload_json(payload: Payload) -> str:
    """The payload as JSON object text; TypeError or ValueError for anything else."""
    if payload is None:
        return "{}"
    if isinstance(payload, BaseModel):
        data: Any = payload.model_dump(mode="json")
    elif isinstance(payload, Mapping):
        data = payload if isinstance(payload, dict) else dict(payload)
    else:
        raise TypeError(
            f"a payload is a mapping or a pydantic model instance, not {type(payload).__name__}"
        )
    try:
        text = _ENCODER.encode(data)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"the payload is not JSON: {exc}") from None
    _refuse_nul(text)
    return text


def _refuse_nul(text: str) -> None:
    if "\\u0000" in text:
        raise ValueError("the payload holds a NUL character (\\u0000), which jsonb cannot store")


def _seconds(value: Seconds | None, name: str) -> float | None:
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if not math.isfinite(seconds):
        raise ValueError(f"{name} must be a finite duration, not {value!r}")
    return seconds


def _when(run_at: datetime | timedelta | None) -> tuple[datetime | None, float | None]:
    """``run_at`` as (a time, seconds after it): a timedelta counts from the database's
    ``now()``, so the application's clock does not matter."""
    if run_at is None:
        return None, None
    if isinstance(run_at, timedelta):
        return None, run_at.total_seconds()
    if run_at.tzinfo is None:
        raise ValueError("run_at must be an aware datetime (with a time zone)")
    return run_at, None


def _int(value: int | None, name: str) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    return value


def _text(value: str | None, name: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    return value


def _row(job: NewJob) -> tuple[Any, ...]:
    """The query's parameters for one job, in order."""
    run_at, delay = _when(job.run_at)
    # The defaults travel as NULL (the query's coalesce gives them back): a column of
    # defaults only is then sent as one NULL by enqueue_many.
    return (
        None if job.tenant == "default" else _text(job.tenant, "tenant"),
        _text(job.kind, "kind"),
        payload_json(job.payload),
        None if job.priority == 0 else _int(job.priority, "priority"),
        run_at,
        delay,
        _int(job.max_attempts, "max_attempts"),
        _text(job.unique_key, "unique_key"),
        _seconds(job.timeout, "timeout"),
        _seconds(job.unique_for, "unique_for"),
    )


def _is_psycopg(conn: Connection) -> TypeGuard[psycopg.AsyncConnection[Any]]:
    return type(conn).__module__.split(".")[0] == "psycopg"


async def _fetch(conn: Connection, query: str, args: Sequence[Any]) -> list[Any]:
    """Run ``query`` with ``args`` on either driver; its rows (indexable by position)."""
    if _is_psycopg(conn):
        from psycopg import AsyncRawCursor  # noqa: PLC0415 - psycopg is optional

        async with AsyncRawCursor(conn) as cursor:
            await cursor.execute(query, args)
            return list(await cursor.fetchall())
    asyncpg_conn = cast("asyncpg.Connection | PoolConnectionProxy", conn)
    return list(await asyncpg_conn.fetch(query, *args))


@overload
async def enqueue(
    conn: Connection,
    kind: str,
    payload: Payload = None,
    *,
    tenant: str = "default",
    run_at: datetime | timedelta | None = None,
    priority: int = 0,
    max_attempts: int | None = None,
    unique_key: None = None,
    unique_for: None = None,
    timeout: Seconds | None = None,
) -> int: ...


@overload
async def enqueue(
    conn: Connection,
    kind: str,
    payload: Payload = None,
    *,
    tenant: str = "default",
    run_at: datetime | timedelta | None = None,
    priority: int = 0,
    max_attempts: int | None = None,
    unique_key: str,
    unique_for: Seconds | None = None,
    timeout: Seconds | None = None,
) -> int | None: ...


async def enqueue(
    conn: Connection,
    kind: str,
    payload: Payload = None,
    *,
    tenant: str = "default",
    run_at: datetime | timedelta | None = None,
    priority: int = 0,
    max_attempts: int | None = None,
    unique_key: str | None = None,
    unique_for: Seconds | None = None,
    timeout: Seconds | None = None,
) -> int | None:
    """Enqueue one job on ``conn`` (in its transaction, if one is open) and return its
    id; None when ``unique_key`` is given and taken.

    ``run_at``: when it may run (an aware datetime, or a timedelta from the database's
    now); ``priority`` -1000..1000, higher first; ``max_attempts`` (default 20);
    ``timeout`` per run (default 15 minutes); ``unique_key`` (and ``unique_for``): at
    most one active job (and one per window of that period) per tenant, kind and key.
    """
    job = NewJob(
        kind, payload, tenant, run_at, priority, max_attempts, unique_key, unique_for, timeout
    )
    rows = await _fetch(conn, QUERIES["job_insert"], _row(job))
    return int(rows[0][0]) if rows else None


def _column(values: list[Any], convert: Any) -> list[Any] | None:
    """``values`` converted one by one; None when every value is None (a column of
    defaults only: unnest pads it with NULLs, at no cost to encode or decode)."""
    if all(value is None for value in values):
        return None
    return [None if value is None else convert(value) for value in values]


def _columns(jobs: list[NewJob]) -> list[list[Any] | None]:
    """job_insert_many's arrays: the same values as :func:`_row` gives each job, built
    column by column (a tenth of the time of row by row at 10,000 jobs)."""
    encode = _ENCODER.encode
    tenants = [None if job.tenant == "default" else job.tenant for job in jobs]
    kinds = [job.kind for job in jobs]
    for name, column in (("tenant", tenants), ("kind", kinds)):
        if not all(isinstance(value, str) for value in column if value is not None):
            for value in column:
                _text(value, name)  # raises TypeError naming the type
    try:
        payloads = [encode(job.payload) if type(job.payload) is dict else None for job in jobs]
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"the payload is not JSON: {exc}") from None
    for i, text in enumerate(payloads):
        if text is None:  # not a plain dict: a model, another mapping, None or a mistake
            payloads[i] = payload_json(jobs[i].payload)
        else:
            _refuse_nul(text)
    priorities = [None if job.priority == 0 else _int(job.priority, "priority") for job in jobs]
    whens = [None if job.run_at is None else _when(job.run_at) for job in jobs]
    return [
        None if all(value is None for value in tenants) else tenants,
        kinds,
        payloads,
        None if all(value is None for value in priorities) else priorities,
        _column(whens, lambda when: when[0]),
        _column(whens, lambda when: when[1]),
        _column([job.max_attempts for job in jobs], lambda v: _int(v, "max_attempts")),
        _column([job.unique_key for job in jobs], lambda v: _text(v, "unique_key")),
        _column([job.timeout for job in jobs], lambda v: _seconds(v, "timeout")),
        _column([job.unique_for for job in jobs], lambda v: _seconds(v, "unique_for")),
    ]


async def enqueue_many(conn: Connection, jobs: Iterable[NewJob]) -> list[int]:
    """Enqueue every job of ``jobs`` in one statement on ``conn`` (in its transaction, if
    one is open); return the ids of the jobs inserted, in the order given (jobs
    skipped for a taken unique key have none)."""
    batch = list(jobs)
    if not batch:
        return []
    (row,) = await _fetch(conn, QUERIES["job_insert_many"], _columns(batch))
    return list(row[0])
