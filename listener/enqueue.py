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
  job_insert), ``enqueue_many`` any number of rows given as one JSON document of
  columns (job_insert_many), one round trip and one NOTIFY however many rows.
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
- ``depends_on`` (ids of jobs of the same tenant) and ``metadata`` (a JSON object) are
  sent as text, the ids as an array literal of ints checked here; the database checks
  them as for an INSERT (the dependencies trigger: they must exist in the job's
  tenant).
- ``enqueue_many`` sends one text parameter whatever the driver, never arrays: psycopg
  encodes an array element by element in Python, quoting each payload, which cost it
  a third of the rate of the bulk INSERT at 10,000 jobs; one JSON text costs either
  driver one ``json`` encoding.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
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
    depends_on: Sequence[int] = ()
    run_anyway: bool = False
    metadata: Mapping[str, Any] | None = None


_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"))


def payload_json(payload: Payload) -> str:
    """The payload as JSON object text; TypeError or ValueError for anything else."""
    return _object_json(payload, "payload")


def metadata_json(metadata: Mapping[str, Any] | None) -> str | None:
    """The metadata as JSON object text (None for None); TypeError or ValueError for
    anything else."""
    return None if metadata is None else _object_json(metadata, "metadata")


def _object_json(value: Payload, what: str) -> str:
    if value is None:
        return "{}"
    if isinstance(value, BaseModel):
        data: Any = value.model_dump(mode="json")
    elif isinstance(value, Mapping):
        data = value if isinstance(value, dict) else dict(value)
    else:
        subject = "a payload" if what == "payload" else what
        raise TypeError(
            f"{subject} is a mapping or a pydantic model instance, not {type(value).__name__}"
        )
    try:
        text = _ENCODER.encode(data)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"the {what} is not JSON: {exc}") from None
    _refuse_nul(text, what)
    return text


def _refuse_nul(text: str, what: str = "payload") -> None:
    if "\\u0000" in text:
        raise ValueError(f"the {what} holds a NUL character (\\u0000), which jsonb cannot store")


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


def depends_on_literal(depends_on: Sequence[int]) -> str:
    """``depends_on`` as a PostgreSQL array literal of ints (``{17,18}``); TypeError for
    anything but a sequence of ints."""
    if isinstance(depends_on, str | bytes) or not isinstance(depends_on, Sequence):
        raise TypeError(f"depends_on must be a sequence of ints, not {type(depends_on).__name__}")
    for value in depends_on:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"depends_on must hold ints, not {type(value).__name__}")
    # int.__repr__: the digits of the value itself, whatever an int subclass prints.
    return "{" + ",".join(int.__repr__(value) for value in depends_on) + "}"


def _bool(value: bool, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, not {type(value).__name__}")
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
        depends_on_literal(job.depends_on) if job.depends_on else None,
        True if _bool(job.run_anyway, "run_anyway") else None,
        metadata_json(job.metadata),
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
    depends_on: Sequence[int] = (),
    run_anyway: bool = False,
    metadata: Mapping[str, Any] | None = None,
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
    depends_on: Sequence[int] = (),
    run_anyway: bool = False,
    metadata: Mapping[str, Any] | None = None,
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
    depends_on: Sequence[int] = (),
    run_anyway: bool = False,
    metadata: Mapping[str, Any] | None = None,
) -> int | None:
    """Enqueue one job on ``conn`` (in its transaction, if one is open) and return its
    id; None when ``unique_key`` is given and taken.

    ``run_at``: when it may run (an aware datetime, or a timedelta from the database's
    now); ``priority`` -1000..1000, higher first; ``max_attempts`` (default 20);
    ``timeout`` per run (default 15 minutes); ``unique_key`` (and ``unique_for``): at
    most one active job (and one per window of that period) per tenant, kind and key;
    ``depends_on``: ids of jobs of the same tenant that must succeed first (the job
    waits, status ``waiting``; not with ``unique_key``), or with ``run_anyway`` finish
    whatever their outcome; ``metadata``: a JSON object of context that is not the
    handler's input (a request id, a batch, a user).
    """
    job = NewJob(
        kind,
        payload,
        tenant,
        run_at,
        priority,
        max_attempts,
        unique_key,
        unique_for,
        timeout,
        depends_on,
        run_anyway,
        metadata,
    )
    rows = await _fetch(conn, QUERIES["job_insert"], _row(job))
    return int(rows[0][0]) if rows else None


def _array(values: list[Any], convert: Any = None) -> str | None:
    """``values`` (converted one by one, None left as it is) as a JSON array; None when
    every value is None (a column of defaults only is left out of the document)."""
    if all(value is None for value in values):
        return None
    if convert is not None:
        values = [None if value is None else convert(value) for value in values]
    return _ENCODER.encode(values)


def _objects(values: list[Any], what: str) -> str | None:
    """JSON objects (payloads or metadata; None: the default) as one JSON array; None
    when every value is None. Plain dicts, the usual case, are encoded in one call (a
    sixth of the time of one call each at 10,000 jobs); anything else, or a value that
    fails, one by one, as :func:`enqueue` encodes it, so the error is the same."""
    if all(value is None for value in values):
        return None
    if all(type(value) is dict or value is None for value in values):
        try:
            text = _ENCODER.encode(
                [{} if value is None and what == "payload" else value for value in values]
            )
        except (TypeError, ValueError):
            pass  # encoded one by one below, which names the problem
        else:
            _refuse_nul(text, what)
            return text
    texts = [
        _object_json(value, what) if value is not None or what == "payload" else "null"
        for value in values
    ]
    return "[" + ",".join(texts) + "]"


def _utc_text(when: datetime) -> str:
    """An aware datetime as ISO 8601 text in UTC (an offset PostgreSQL reads, whatever
    the time zone's offset)."""
    return when.astimezone(UTC).isoformat()


def _document(jobs: list[NewJob]) -> str:
    """job_insert_many's parameter: the same values as :func:`_row` gives each job, as a
    JSON object of columns, built column by column (a tenth of the time of row by row
    at 10,000 jobs); a column of defaults only is left out."""
    encode = _ENCODER.encode
    tenants = [None if job.tenant == "default" else job.tenant for job in jobs]
    kinds = [job.kind for job in jobs]
    for name, column in (("tenant", tenants), ("kind", kinds)):
        if not all(isinstance(value, str) for value in column if value is not None):
            for value in column:
                _text(value, name)  # raises TypeError naming the type
    payloads = _objects([job.payload for job in jobs], "payload")
    priorities = [None if job.priority == 0 else _int(job.priority, "priority") for job in jobs]
    whens = [None if job.run_at is None else _when(job.run_at) for job in jobs]
    columns = {
        "tenant_id": _array(tenants),
        "kind": encode(kinds),
        "payload": payloads,
        "priority": _array(priorities),
        "run_at": _array([None if when is None else when[0] for when in whens], _utc_text),
        "delay": _array([None if when is None else when[1] for when in whens]),
        "max_attempts": _array(
            [job.max_attempts for job in jobs], lambda v: _int(v, "max_attempts")
        ),
        "unique_key": _array([job.unique_key for job in jobs], lambda v: _text(v, "unique_key")),
        "timeout": _array([job.timeout for job in jobs], lambda v: _seconds(v, "timeout")),
        "unique_for": _array([job.unique_for for job in jobs], lambda v: _seconds(v, "unique_for")),
        "depends_on": _array([job.depends_on or None for job in jobs], depends_on_literal),
        "run_anyway": _array(
            [None if job.run_anyway is False else job.run_anyway for job in jobs],
            lambda v: _bool(v, "run_anyway") or None,
        ),
        "metadata": _objects([job.metadata for job in jobs], "metadata"),
    }
    return "{" + ",".join(f'"{name}":{text}' for name, text in columns.items() if text) + "}"


async def enqueue_many(conn: Connection, jobs: Iterable[NewJob]) -> list[int]:
    """Enqueue every job of ``jobs`` in one statement on ``conn`` (in its transaction, if
    one is open); return the ids of the jobs inserted, in the order given (jobs
    skipped for a taken unique key have none)."""
    batch = list(jobs)
    if not batch:
        return []
    (row,) = await _fetch(conn, QUERIES["job_insert_many"], (_document(batch),))
    return list(row[0])
