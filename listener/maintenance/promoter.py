"""Maintenance: promote delayed and retrying jobs to queued when they are due.

Invariants:
- A scheduled job becomes queued within a few milliseconds of its run_at: the loop
  sleeps until the earliest due time (never longer than the poll interval) and is woken
  by every NOTIFY about a job inserted due later (payload ``later``: it may be due
  sooner) and by this worker's own retries; a NOTIFY about ready jobs leaves it asleep.
- Promotion is batched and done by one worker at a time (the 'promotion' row of
  pgwake.leaders, locked by the promoting statement itself). Every worker runs this loop,
  so whichever worker's timer fires first at a run_at promotes; the others find the
  lock taken or nothing due. Nobody waits for a promoter that died.
- After promoting, every worker is woken with one NOTIFY.
"""

from __future__ import annotations

import anyio
import asyncpg
from anyio.abc import TaskStatus

from listener.logs import get_logger
from listener.maintenance.rounds import run_paced_rounds
from listener.outage import OutageLog
from listener.queries import QUERIES
from listener.wake import Wake

# Seconds to wait before looking again when another worker holds the promotion lock.
LEADER_BUSY_WAIT = 0.01


class Promoter:
    """Moves due scheduled jobs to queued."""

    def __init__(
        self, pool: asyncpg.Pool, wake: Wake, *, poll_interval: float, batch: int = 1000
    ) -> None:
        self._pool = pool
        self._wake = wake
        self._poll_interval = poll_interval
        self._batch = batch
        self._log = get_logger("maintenance")
        self._outage = OutageLog(self._log, "promotion of due jobs")

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Promote forever."""
        task_status.started()
        await run_paced_rounds(
            self._promote_due,
            self._outage,
            retry_after=min(self._poll_interval, 1.0),
            sleep=self._wake.wait,
        )

    async def _promote_due(self) -> float:
        """Promote what is due; return seconds until the next job is due."""
        async with self._pool.acquire() as conn:
            while True:
                row = await conn.fetchrow(QUERIES["job_promote_due"], self._batch)
                assert row is not None  # one row, always
                leader: bool = row["leader"]
                promoted: int = row["promoted"]
                if promoted:
                    await conn.execute(QUERIES["worker_wake"])
                if promoted < self._batch:
                    break
            seconds: float | None = await conn.fetchval(QUERIES["job_get_next_due"])
        if seconds is None:
            return self._poll_interval
        if not leader:
            # Another worker is promoting what is due now; look again shortly.
            seconds = max(seconds, LEADER_BUSY_WAIT)
        return min(seconds, self._poll_interval)
