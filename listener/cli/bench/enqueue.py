"""``enqueue``: what an INSERT into pgwake.jobs costs, and what the NOTIFY trigger adds.

Two ways of enqueuing, each with the insert trigger on (with job events on, as by
default, and off for the inserting sessions) and with the trigger disabled, so the cost
of the NOTIFY (and of the job events, one NOTIFY per row) is visible; no worker runs:

- ``single``: ``connections`` (default 8) concurrent connections each insert one job per
  statement (autocommit, a prepared plain INSERT, as an application does) for
  ``seconds``: rows/s over all of them.
- ``bulk``: one INSERT of ``rows`` (default 10,000) jobs sent as arrays (``unnest``), as an
  application enqueuing a batch does: rows/s of that statement, median of 5.
- ``api``: the same jobs through the Python API's ``enqueue_many`` (listener/enqueue.py,
  ``NewJob`` objects in, ids out, on a plain asyncpg connection), the same 5 times,
  each right after a ``bulk`` statement: rows/s, median of 5, the time to encode the
  objects included; and on a psycopg 3 connection too when psycopg is installed (it
  is not a dependency of pgwake; the test extra installs it).

Invariant: the trigger is disabled only in the benchmark's own database (``ALTER TABLE
... DISABLE TRIGGER``), never anywhere else.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import asyncpg

from listener import db
from listener.cli.bench.common import bench_database, interleaved_medians
from listener.cli.bench.queries import BENCH_QUERIES
from listener.enqueue import NewJob, enqueue_many

BULK_STATEMENTS = 5


@dataclass(frozen=True, slots=True)
class EnqueueRun:
    """Enqueue rates with the trigger on or off, and job events on or off."""

    trigger: bool
    events: bool
    connections: int
    seconds: float
    single_rows: int
    single_rows_per_s: float
    bulk_rows: int
    bulk_rows_per_s: float
    api_rows_per_s: float
    # None when psycopg is not installed.
    api_psycopg_rows_per_s: float | None = None


def _session(events: bool) -> dict[str, str]:
    return {} if events else {"pgwake.job_events": "off"}


async def _single(dsn: str, *, connections: int, seconds: float, events: bool) -> int:
    """Rows inserted one per statement by ``connections`` connections in ``seconds``."""
    conns = [await db.connect(dsn, session_settings=_session(events)) for _ in range(connections)]
    counts = [0] * connections
    try:
        deadline = time.monotonic() + seconds

        async def insert(i: int) -> None:
            stmt = await conns[i].prepare(BENCH_QUERIES["job_enqueue_one"])
            tenant = f"bench-t{i}"
            while time.monotonic() < deadline:
                await stmt.fetch(tenant)
                counts[i] += 1

        async with anyio.create_task_group() as tg:
            for i in range(connections):
                tg.start_soon(insert, i)
    finally:
        for conn in conns:
            await conn.close()
    return sum(counts)


async def _psycopg(dsn: str, events: bool) -> Any:
    """An autocommit psycopg 3 connection, as an application opens one; None without
    psycopg."""
    try:
        import psycopg  # noqa: PLC0415 - optional
    except ImportError:
        return None
    options = "" if events else "-c pgwake.job_events=off"
    return await psycopg.AsyncConnection.connect(dsn, autocommit=True, options=options)


async def _bulk(dsn: str, *, rows: int, events: bool) -> tuple[float, float, float | None]:
    """Rows/s of one INSERT of ``rows`` jobs, and of ``enqueue_many`` of as many on
    asyncpg and psycopg (medians of BULK_STATEMENTS, taken in turns)."""
    conn = await db.connect(dsn, session_settings=_session(events))
    app = await asyncpg.connect(dsn, server_settings=_session(events))
    papp = await _psycopg(dsn, events)
    try:
        stmt = await conn.prepare(BENCH_QUERIES["job_enqueue_arrays"])
        tenants = [f"bench-t{i % 10}" for i in range(rows)]
        payloads = [{"n": i} for i in range(rows)]
        jobs = [NewJob("noop", {"n": i}, tenant=f"bench-t{i % 10}") for i in range(rows)]
        rates: list[float] = []
        api_rates: list[float] = []
        psycopg_rates: list[float] = []
        for _ in range(BULK_STATEMENTS):
            began = time.perf_counter()
            await stmt.fetch(tenants, "noop", payloads)
            rates.append(rows / (time.perf_counter() - began))
            began = time.perf_counter()
            await enqueue_many(app, jobs)
            api_rates.append(rows / (time.perf_counter() - began))
            if papp is not None:
                began = time.perf_counter()
                await enqueue_many(papp, jobs)
                psycopg_rates.append(rows / (time.perf_counter() - began))
    finally:
        if papp is not None:
            await papp.close()
        await app.close()
        await conn.close()
    return (
        statistics.median(rates),
        statistics.median(api_rates),
        statistics.median(psycopg_rates) if psycopg_rates else None,
    )


async def enqueue_run(
    server_dsn: str, *, trigger: bool, events: bool, connections: int, seconds: float, rows: int
) -> EnqueueRun:
    """Both ways of enqueuing with the trigger and job events on or off, in a fresh
    database."""
    async with bench_database(server_dsn) as dsn:
        if not trigger:
            conn = await db.connect(dsn)
            try:
                await conn.execute(BENCH_QUERIES["job_disable_insert_trigger"])
            finally:
                await conn.close()
        single = await _single(dsn, connections=connections, seconds=seconds, events=events)
        bulk, api, api_psycopg = await _bulk(dsn, rows=rows, events=events)
    return EnqueueRun(
        trigger=trigger,
        events=events,
        connections=connections,
        seconds=seconds,
        single_rows=single,
        single_rows_per_s=round(single / seconds),
        bulk_rows=rows,
        bulk_rows_per_s=round(bulk),
        api_rows_per_s=round(api),
        api_psycopg_rows_per_s=None if api_psycopg is None else round(api_psycopg),
    )


async def enqueue(
    server_dsn: str, *, connections: int, seconds: float, rows: int, repeat: int
) -> list[EnqueueRun]:
    """With the trigger (job events on, then off) and without it, ``repeat`` rounds
    (interleaved), medians."""
    modes = ((True, True), (True, False), (False, False))
    return await interleaved_medians(
        modes,
        repeat,
        lambda mode: enqueue_run(
            server_dsn,
            trigger=mode[0],
            events=mode[1],
            connections=connections,
            seconds=seconds,
            rows=rows,
        ),
    )


def render_enqueue(runs: Sequence[EnqueueRun]) -> str:
    """Enqueue rates as a table."""
    lines = [
        (
            f"{'trigger':<7} {'events':<6} {'single-row inserts/s':>20} {'(connections)':>13} "
            f"{'bulk rows/s':>12} {'(rows)':>7} {'enqueue_many rows/s':>19} {'(psycopg)':>9}"
        )
    ]
    lines += [
        f"{'on' if r.trigger else 'off':<7} {'on' if r.events else 'off':<6} "
        f"{r.single_rows_per_s:>20g} {r.connections:>13} {r.bulk_rows_per_s:>12g} {r.bulk_rows:>7}"
        f" {r.api_rows_per_s:>19g}"
        f" {'-' if r.api_psycopg_rows_per_s is None else f'{r.api_psycopg_rows_per_s:g}':>9}"
        for r in runs
    ]
    return "\n".join(lines)
