"""Progress a handler reports with ``await ctx.progress(done, total, message)``.

Invariants:
- The value stored in ``jobs.progress`` is ``{"done", "total", "message", "at"}``; it is
  written fenced (only while this worker runs this attempt of the job) and announced
  on ``pgwake_events`` with status ``running`` and the progress (unless job events are
  off).
- Writes are throttled to one per ``interval`` seconds per job; a report that comes
  sooner is kept and written when the next one is allowed, or when the handler returns,
  so the last value reported always reaches the database.
- Progress is best effort: a database error while writing it is logged once and never
  fails the job.
"""

from __future__ import annotations

import math
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg

from listener.db import is_transient
from listener.jobs import Job
from listener.logs import get_logger
from listener.queries import QUERIES
from listener.redact import redact

MAX_MESSAGE_CHARS = 1000


class ProgressWriter:
    """Writes progress values for the jobs of one worker."""

    def __init__(self, pool: asyncpg.Pool, worker_id: uuid.UUID) -> None:
        self._pool = pool
        self._worker_id = worker_id

    async def write(self, job: Job, value: dict[str, Any]) -> bool:
        """Store ``value`` as the job's progress; False when the job is no longer ours."""
        stored: bool = await self._pool.fetchval(
            QUERIES["job_progress"], job.id, self._worker_id, job.attempt, value
        )
        return stored


class JobProgress:
    """Throttled progress reports for one attempt of one job."""

    def __init__(self, job: Job, writer: ProgressWriter, *, interval: float = 1.0) -> None:
        self._job = job
        self._writer = writer
        self._interval = interval
        self._last_write = -math.inf
        self._pending: dict[str, Any] | None = None
        self._failed = False

    @staticmethod
    def value(done: float, total: float | None, message: str | None) -> dict[str, Any]:
        """The stored form; raises ValueError on nonsense (a handler bug)."""
        if not isinstance(done, (int, float)) or isinstance(done, bool) or not math.isfinite(done):
            raise ValueError(f"progress done must be a finite number, not {done!r}")
        if done < 0:
            raise ValueError(f"progress done cannot be negative ({done})")
        if total is not None and (
            not isinstance(total, (int, float)) or not math.isfinite(total) or total <= 0
        ):
            raise ValueError(f"progress total must be a positive number or None, not {total!r}")
        if message is not None and not isinstance(message, str):
            raise ValueError("progress message must be a string")
        return {
            "done": done,
            "total": total,
            "message": None if message is None else message[:MAX_MESSAGE_CHARS],
            "at": datetime.now(UTC).isoformat(),
        }

    async def report(self, done: float, total: float | None, message: str | None) -> None:
        """Record progress; writes now if the last write is ``interval`` old."""
        self._pending = self.value(done, total, message)
        if time.monotonic() - self._last_write >= self._interval:
            await self.flush()

    async def flush(self) -> None:
        """Write the pending report, if any."""
        if self._pending is None:
            return
        value, self._pending = self._pending, None
        self._last_write = time.monotonic()
        try:
            await self._writer.write(self._job, value)
        except Exception as exc:
            if not is_transient(exc):
                raise
            if not self._failed:
                self._failed = True
                # The logger is made here, not per job: most jobs never need it.
                get_logger("progress").warning(
                    "could not record progress", job_id=self._job.id, error=redact(str(exc))
                )
