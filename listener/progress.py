"""Progress a handler reports with ``await ctx.progress(done, total, message)``.

Invariants:
- The value stored in ``jobs.progress`` is ``{"done", "total", "message", "at"}``; it is
  written fenced (only while this worker runs this attempt of the job) and announced
  on ``pgwake_events`` with status ``running`` and ``"progress": true`` (unless job
  events are off). The event carries no message: anyone may listen, and the message
  is read from the row, under row-level security.
- Writes are throttled to one per ``interval`` seconds per job. A report that comes
  sooner is kept, and written by the worker's flusher once the interval has passed
  (or before the outcome, when the handler returns), so the last value reported always
  reaches the database within about ``interval`` even when the handler reports nothing
  more. The writes of one job are serialised, so an older value never overwrites a
  newer one.
- Progress is best effort: a database error while writing it is logged once and never
  fails the job.
"""

from __future__ import annotations

import math
import time
import uuid
from datetime import UTC, datetime
from typing import Any, Protocol

import anyio
import asyncpg
from anyio.abc import TaskStatus

from listener.db import DATABASE_ERRORS
from listener.jobs import Job
from listener.logs import get_logger
from listener.queries import QUERIES
from listener.redact import redact

MAX_MESSAGE_CHARS = 1000


class ProgressSink(Protocol):
    """Where a job's progress reports go: the worker's :class:`ProgressWriter`, or what
    ``pgwake exec`` and listener.testing record."""

    interval: float

    async def write(self, job: Job, value: dict[str, Any]) -> bool:
        """Store ``value`` as the job's progress; False when it was not stored."""
        ...

    def hold(self, progress: JobProgress) -> None:
        """``progress`` has a report to write once its interval has passed."""
        ...

    def release(self, progress: JobProgress) -> None:
        """``progress`` has nothing held back any more."""
        ...


class ProgressWriter:
    """Writes progress values for the jobs of one worker, and flushes the reports that
    were held back by the throttle (``run``)."""

    def __init__(self, pool: asyncpg.Pool, worker_id: uuid.UUID, *, interval: float = 1.0) -> None:
        self._pool = pool
        self._worker_id = worker_id
        self.interval = interval
        # Jobs with a report held back by the throttle, by job id.
        self._held: dict[int, JobProgress] = {}

    async def write(self, job: Job, value: dict[str, Any]) -> bool:
        """Store ``value`` as the job's progress; False when the job is no longer ours."""
        stored: bool = await self._pool.fetchval(
            QUERIES["job_set_progress"], job.id, self._worker_id, job.attempt, value
        )
        return stored

    def hold(self, progress: JobProgress) -> None:
        """``progress`` has a report to write once its interval has passed."""
        self._held[progress.job_id] = progress

    def release(self, progress: JobProgress) -> None:
        """``progress`` has nothing held back any more."""
        if self._held.get(progress.job_id) is progress:
            del self._held[progress.job_id]

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Write held-back reports whose interval has passed, forever."""
        task_status.started()
        while True:
            await anyio.sleep(self.interval / 4)
            now = time.monotonic()
            for progress in [p for p in self._held.values() if p.due(now)]:
                await progress.flush()


class JobProgress:
    """Throttled progress reports for one attempt of one job."""

    def __init__(self, job: Job, writer: ProgressSink) -> None:
        self._job = job
        self._writer = writer
        self._interval = writer.interval
        self._last_write = -math.inf
        self._pending: dict[str, Any] | None = None
        # Made on the first write: most jobs never report progress.
        self._lock: anyio.Lock | None = None
        self._failed = False

    @property
    def job_id(self) -> int:
        """The job reported on."""
        return self._job.id

    def due(self, now: float) -> bool:
        """True when a held-back report may be written at ``now``."""
        return self._pending is not None and now - self._last_write >= self._interval

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
            # jsonb cannot store NUL.
            "message": None if message is None else message[:MAX_MESSAGE_CHARS].replace("\0", ""),
            "at": datetime.now(UTC).isoformat(),
        }

    async def report(self, done: float, total: float | None, message: str | None) -> None:
        """Record progress; writes now if the last write is ``interval`` old, else holds
        it back for the flusher."""
        self._pending = self.value(done, total, message)
        if self.due(time.monotonic()):
            await self.flush()
        else:
            self._writer.hold(self)

    @property
    def pending(self) -> bool:
        """True while a report waits to be written (``flush`` writes it)."""
        return self._pending is not None

    async def flush(self) -> None:
        """Write the pending report, if any (the newest one, whoever calls)."""
        if self._pending is None:
            return
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            if self._pending is None:  # written meanwhile by whoever held the lock
                return
            value, self._pending = self._pending, None
            self._writer.release(self)
            self._last_write = time.monotonic()
            try:
                await self._writer.write(self._job, value)
            except DATABASE_ERRORS as exc:
                if not self._failed:
                    self._failed = True
                    # The logger is made here, not per job: most jobs never need it.
                    get_logger("progress").warning(
                        "could not record progress", job_id=self._job.id, error=redact(str(exc))
                    )
