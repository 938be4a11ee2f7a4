"""Worker registration and heartbeat: one write per interval per worker, never per job.

Invariant: while this loop runs, the worker's row in pgwake.workers has a heartbeat no
older than the interval (plus the write's own latency); jobs held by the worker share it.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Sequence

import anyio
import asyncpg
from anyio.abc import TaskStatus

from listener.db import is_transient
from listener.logs import get_logger
from listener.queries import QUERIES
from listener.redact import redact


class Heartbeat:
    """Registers the worker and keeps its heartbeat fresh."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        worker_id: uuid.UUID,
        kinds: Sequence[str],
        concurrency: int,
        *,
        interval: float,
    ) -> None:
        self._pool = pool
        self._worker_id = worker_id
        self._kinds = list(kinds)
        self._concurrency = concurrency
        self._interval = interval
        self._log = get_logger("heartbeat")
        self.beats = 0

    async def register(self) -> None:
        """Insert the worker's row."""
        await self._pool.execute(
            QUERIES["worker_register"],
            self._worker_id,
            socket.gethostname(),
            os.getpid(),
            self._kinds,
            self._concurrency,
        )

    async def deregister(self) -> None:
        """Delete the worker's row."""
        await self._pool.execute(QUERIES["worker_deregister"], self._worker_id)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Beat forever."""
        task_status.started()
        while True:
            await anyio.sleep(self._interval)
            try:
                await self._pool.fetchval(QUERIES["worker_heartbeat"], self._worker_id)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                self._log.warning("heartbeat failed", error=redact(str(exc)))
            else:
                self.beats += 1
