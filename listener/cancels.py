"""Cancel requests: a running job is stopped only when its row says so.

Invariants:
- A NOTIFY on ``pgwake_cancel`` is a hint, never an instruction: any role that can
  connect can send one, with any payload. It only wakes this loop, which reads the
  running jobs of this worker whose cancellation was requested (``cancel_requested_at``,
  which ``pgwake.cancel_job`` sets only for a role allowed to cancel that job) and stops
  those, and only those.
- Hints that arrive while a check runs are folded into one more check, so a flood of
  notifications costs one query at a time, never one per notification.
- The heartbeat reads the same column at every beat (heartbeat.py), so a lost
  notification or a failed check delays a cancel by at most one heartbeat interval.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from typing import Protocol

import anyio
import asyncpg
from anyio.abc import TaskStatus

from listener import db
from listener.logs import get_logger
from listener.queries import QUERIES
from listener.wake import Wake


class Cancellable(Protocol):
    """What stops running handlers (the claimer)."""

    def request_cancel(self, job_ids: Sequence[int]) -> None:
        """Stop the handlers of these jobs (those running here); they end cancelled."""
        ...


class CancelChecker:
    """Turns cancel hints into a read of this worker's cancel requests."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        worker_id: uuid.UUID,
        jobs: Cancellable,
        hints: Wake,
    ) -> None:
        self._pool = pool
        self._worker_id = worker_id
        self._jobs = jobs
        # Set by the listener on every NOTIFY on pgwake_cancel.
        self._hints = hints
        self._log = get_logger("cancels")

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Check once per batch of hints, forever."""
        task_status.started()
        while True:
            await self._hints.wait(math.inf)
            await self.check()

    async def check(self) -> None:
        """Stop the handlers of this worker's jobs whose cancellation was requested."""
        try:
            rows = await self._pool.fetch(QUERIES["job_list_cancel_requested"], self._worker_id)
        except Exception as exc:
            if not db.is_transient(exc):
                raise
            # The next heartbeat reads the same requests.
            self._log.warning("could not read cancel requests", error=type(exc).__name__)
            return
        if rows:
            self._jobs.request_cancel([row["id"] for row in rows])
