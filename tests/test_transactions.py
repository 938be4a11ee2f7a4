"""The transactions the worker's tasks open (``listener.db.transaction``): committed when
the block ends, rolled back when it raises, and rolled back too when the task is
cancelled inside it, as every task is at shutdown, before the connection goes back to
the pool."""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import asyncpg
import pytest

from listener import db


@pytest.fixture
async def pool(dsn: str) -> Any:
    pool = await db.create_pool(dsn, size=1)
    try:
        yield pool
    finally:
        await pool.close()


async def _marks(conn: asyncpg.Connection) -> list[str]:
    await conn.execute("CREATE TABLE IF NOT EXISTS tx_marks (mark text)")
    return [r["mark"] for r in await conn.fetch("SELECT mark FROM tx_marks ORDER BY mark")]


async def test_committed_when_the_block_ends_and_rolled_back_when_it_raises(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    await _marks(conn)
    async with pool.acquire() as c, db.transaction(c):
        await c.execute("INSERT INTO tx_marks VALUES ('kept')")

    async def insert_then_fail() -> None:
        async with pool.acquire() as c, db.transaction(c):
            await c.execute("INSERT INTO tx_marks VALUES ('dropped')")
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        await insert_then_fail()
    assert await _marks(conn) == ["kept"]


async def test_a_task_cancelled_inside_rolls_back_before_the_connection_goes_back(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    """Cancelled while a statement runs: the statement is cancelled, the transaction
    rolled back (its insert is gone), and the pool's one connection comes back with no
    transaction open, so asyncpg has nothing to reset: no "Resetting connection with an
    active transaction" error reaches the event loop's handler.

    Fails on ba69dad (``async with conn.transaction()``): anyio delivers the
    cancellation again at every await of the cancelled task, so the rollback was
    cancelled too, and asyncpg reset the connection on release, reporting that error,
    which the worker logged at every shutdown that caught a maintenance round."""
    await _marks(conn)
    reported: list[str] = []
    asyncio.get_running_loop().set_exception_handler(
        lambda _loop, context: reported.append(str(context.get("message")))
    )
    try:
        started = anyio.Event()

        async def round_in_progress() -> None:
            async with pool.acquire() as c, db.transaction(c):
                await c.execute("INSERT INTO tx_marks VALUES ('cut short')")
                started.set()
                await c.execute("SELECT pg_sleep(30)")

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(round_in_progress)
                await started.wait()
                await anyio.sleep(0.1)
                tg.cancel_scope.cancel()
        async with pool.acquire() as c:
            assert await c.fetchval("SELECT 1") == 1
        await anyio.sleep(0.2)
    finally:
        asyncio.get_running_loop().set_exception_handler(None)
    assert await _marks(conn) == []
    assert reported == []
