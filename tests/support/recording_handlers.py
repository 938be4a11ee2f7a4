"""Handlers that record their runs in the database, for multi-process tests.

``record`` inserts (job_id, attempt, pid) into ``test_executions``, whose primary key on
job_id makes a second execution of the same job fail loudly. The table is created by
the test; the DSN comes from PGWAKE_DSN, as for the worker itself.
"""

from __future__ import annotations

import os
import time
from typing import Any

import anyio
import asyncpg
from pydantic import BaseModel

from listener.api import JobContext, handler

_pool: asyncpg.Pool | None = None
_lock = anyio.Lock()

# The value of --handlers for a worker process that loads this module.
RECORDING = "tests.support.recording_handlers"


async def create_executions_table(conn: asyncpg.Connection) -> None:
    """The table ``record`` writes into (a second run of one job breaks its key)."""
    await conn.execute(
        "CREATE TABLE test_executions ("
        " job_id bigint PRIMARY KEY, attempt int NOT NULL, pid int NOT NULL)"
    )


async def _get_pool() -> asyncpg.Pool:
    global _pool  # noqa: PLW0603 - one pool per worker process
    async with _lock:
        if _pool is None:
            _pool = await asyncpg.create_pool(os.environ["PGWAKE_DSN"], min_size=1, max_size=4)
    assert _pool is not None
    return _pool


class RecordPayload(BaseModel):
    """Optional sleep before recording, to keep jobs in flight."""

    sleep: float = 0.0


@handler("record")
async def record(payload: RecordPayload, ctx: JobContext) -> dict[str, Any]:
    """Record this execution; a duplicate raises (primary key)."""
    if payload.sleep:
        await anyio.sleep(payload.sleep)
    pool = await _get_pool()
    await pool.execute(
        "INSERT INTO test_executions (job_id, attempt, pid) VALUES ($1, $2, $3)",
        ctx.job.id,
        ctx.attempt,
        os.getpid(),
    )
    return {"pid": os.getpid()}


class TrackPayload(BaseModel):
    """How long to hold the job."""

    sleep: float = 0.05


@handler("track")
async def track(payload: TrackPayload, ctx: JobContext) -> None:
    """Record when this run started and ended (database clock) in ``test_runs``."""
    pool = await _get_pool()
    run_id = await pool.fetchval(
        "INSERT INTO test_runs (job_id, tenant_id, pid, started_at) "
        "VALUES ($1, $2, $3, clock_timestamp()) RETURNING id",
        ctx.job.id,
        ctx.tenant,
        os.getpid(),
    )
    await anyio.sleep(payload.sleep)
    await pool.execute("UPDATE test_runs SET ended_at = clock_timestamp() WHERE id = $1", run_id)


class StallPayload(BaseModel):
    """How long the first attempt blocks the whole event loop."""

    block: float


@handler("stall")
async def stall(payload: StallPayload, ctx: JobContext) -> dict[str, Any]:
    """On the first attempt, block the event loop (a synchronous sleep: no heartbeat, no
    claims, nothing runs in this process meanwhile); later attempts return at once. The
    result names the process and attempt that produced it."""
    if ctx.attempt == 1:
        time.sleep(payload.block)  # noqa: ASYNC251 - blocking the loop is the point
    return {"pid": os.getpid(), "attempt": ctx.attempt}


class EffectPayload(BaseModel):
    """How long the job works before its side effect."""

    sleep: float = 0.0


@handler("effect")
async def effect(payload: EffectPayload, ctx: JobContext) -> None:
    """Work a while, then record the side effect in ``soak_effects`` (no primary key:
    a job that runs twice leaves two rows, which the soak test counts)."""
    if payload.sleep:
        await anyio.sleep(payload.sleep)
    pool = await _get_pool()
    await pool.execute(
        "INSERT INTO soak_effects (job_id, attempt, pid) VALUES ($1, $2, $3)",
        ctx.job.id,
        ctx.attempt,
        os.getpid(),
    )


@handler("tenant.database")
async def tenant_database(payload: dict[str, Any], ctx: JobContext) -> str:
    """The name of the tenant's own database, asked through ``ctx.tenant_db()``."""
    async with ctx.tenant_db() as conn:
        return str(await conn.fetchval("SELECT current_database()"))
