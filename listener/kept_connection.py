"""A pool connection one loop keeps for all its statements (the claim loop, the
completer).

Invariants:
- Borrowed from the pool at the first statement and kept: no acquire and release per
  statement, and so none of the reset asyncpg runs on every release (one more round
  trip, which would double the cost of a claim).
- Given back to the pool after any error, so a broken connection is replaced at the
  next statement, and by ``release()`` when the loop ends (the pool cannot close while a
  connection is out).
- The kept session has no state of its own but what ``setup`` sets when it is borrowed
  (run-time parameters, which the pool resets when it is given back): only single
  statements, or transactions that end before ``transaction`` returns, run on it, and
  the locks they take are transaction-scoped.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import asyncpg

from listener.db import transaction

# Seconds a release may take (asyncpg resets the session on release); a connection
# that does not answer by then is terminated.
RELEASE_TIMEOUT = 5.0

T = TypeVar("T")


class KeptConnection:
    """Runs statements on one pool connection, kept between statements."""

    def __init__(self, pool: asyncpg.Pool, *, setup: str | None = None) -> None:
        """``setup``: a statement run on the connection each time it is borrowed."""
        self._pool = pool
        self._setup = setup
        self._conn: Any = None

    async def _borrow(self) -> Any:
        """The kept connection, borrowed (and set up) if none is held."""
        conn = self._conn
        if conn is None:
            conn = self._conn = await self._pool.acquire()
            if self._setup is not None:
                try:
                    await conn.execute(self._setup)
                except BaseException:
                    await self.release()
                    raise
        return conn

    async def fetch(self, query: str, *args: object) -> list[Any]:
        """Run ``query`` and return its rows (the statement is prepared once per
        connection, by asyncpg's statement cache)."""
        conn = await self._borrow()
        try:
            rows: list[Any] = await conn.fetch(query, *args)
        except BaseException:
            await self.release()
            raise
        return rows

    async def transaction(self, work: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``work(connection)`` in one transaction on the kept connection: committed
        when it returns, rolled back (and the connection given back) when it raises."""
        conn = await self._borrow()
        try:
            async with transaction(conn):
                return await work(conn)
        except BaseException:
            await self.release()
            raise

    async def release(self) -> None:
        """Give the connection back to the pool (if one is held)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with anyio.CancelScope(shield=True):
                await self._pool.release(conn, timeout=RELEASE_TIMEOUT)
