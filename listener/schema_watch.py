"""The schema check: at start, and for migrations applied under a running worker.

A worker runs against the schema it knows, or a newer one whose every migration past
its own is marked compatible (:func:`listener.migrate.check_schema`). The check runs
once at start (``check_at_start``), then this loop keeps checking while the worker
runs, so that a migration applied under it by ``pgwake migrate`` of a newer pgwake is
noticed.

Invariants:
- At start, a schema the worker cannot run against raises
  :class:`SchemaMismatchError` (exit 5); a newer compatible one is logged once, at
  info, with both versions.
- Once per interval (the heartbeat interval) it reads the migrations applied past the
  worker's own schema: one statement on the primary key that returns no rows while
  nothing newer is applied.
- A newer migration marked compatible changes nothing; it is logged once, at info.
- The first newer migration that is marked breaking (or carries no mark) is reported
  once to ``on_breaking`` with a :class:`SchemaMismatchError` naming it, and the loop
  ends. The service then stops claiming, drains like SIGTERM and exits 5
  (service.py), so a worker never goes on claiming against a schema that breaks it for
  longer than one interval.
- A statement that fails (the database is away, the table is gone) is tried again at
  the next interval and changes nothing: the other loops report and ride out database
  trouble, so this one logs it at debug only.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
import asyncpg
from anyio.abc import TaskStatus

from listener import db
from listener.errors import SchemaMismatchError
from listener.logs import get_logger
from listener.migrate import Conn, check_schema, newer_migrations, refuse_breaking
from listener.redact import redact


class SchemaWatch:
    """Notices newer migrations while the worker runs (see the module docstring);
    ``known`` is the worker's own schema version."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        known: int,
        interval: float,
        on_breaking: Callable[[SchemaMismatchError], None],
    ) -> None:
        self._pool = pool
        self.known = known
        self._interval = interval
        self._on_breaking = on_breaking
        self._log = get_logger("schema")
        # The newest version seen: ours, the one found at start, then the newest logged.
        self._seen = known

    async def check_at_start(self, conn: Conn) -> int:
        """The check at start: the database's schema version, when this worker can run
        against it; else :class:`SchemaMismatchError` saying what to do."""
        found = await check_schema(conn, self.known)
        if found > self.known:
            self._log.info(
                "running against a newer schema, compatible with this worker",
                worker_schema=f"{self.known:04d}",
                database_schema=f"{found:04d}",
            )
        self._seen = max(self._seen, found)
        return found

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Check every interval until a breaking migration is found."""
        task_status.started()
        while True:
            await anyio.sleep(self._interval)
            if await self.check():
                return

    async def check(self) -> bool:
        """Look once; True when a breaking migration was found (and reported)."""
        try:
            async with self._pool.acquire() as conn:
                newer = await newer_migrations(conn, self.known)
        except db.DATABASE_ERRORS as exc:
            self._log.debug(
                "could not read the schema's migrations; trying again",
                error=redact(f"{type(exc).__name__}: {exc}"),
            )
            return False
        try:
            refuse_breaking(newer, self.known)
        except SchemaMismatchError as exc:
            self._log.error(
                "a migration that breaks this worker was applied under it; stopping (exit 5)",
                error=str(exc),
            )
            self._on_breaking(exc)
            return True
        if newer and newer[-1]["version"] > self._seen:
            self._seen = newer[-1]["version"]
            self._log.info(
                "a compatible migration was applied under this worker; running on",
                worker_schema=f"{self.known:04d}",
                database_schema=f"{self._seen:04d}",
                migrations=[f"{r['version']:04d}_{r['name']}" for r in newer],
            )
        return False
