"""Retention: finished jobs are deleted once they are older than their status's
retention, so the hot table stays small and vacuum keeps up.

Invariants:
- Only ``succeeded``, ``failed`` and ``cancelled`` rows are ever deleted, and only once
  their ``finished_at`` is older than the retention for that status and their unique
  window, if they have one (``unique_until``), has ended: jobs_unique_window_idx holds
  the key of a job with ``unique_for`` through its row until then. Queued, scheduled
  and running jobs are never touched.
- Deletes run in batches of ``batch`` rows, each in its own short transaction, oldest
  first, with ``SKIP LOCKED``; a claim never waits for them.
- Each batch takes the retention lock (transaction-scoped), so at most one worker
  prunes at a time across the fleet; the others skip the round.
- With ``archive`` on, the rows are moved into pgwake.jobs_archive by the statement
  that deletes them (a job is in exactly one of the two tables), and archived jobs are
  deleted once archived for ``archived`` seconds, by the same rounds, in batches.
- The same rounds delete the rate limits' windows (pgwake.rate_windows) of keys that
  started nothing for a whole period and a second, in batches under the same lock:
  such a row says nothing an empty one would not, and a claim creates it again on
  first use, so a limit per tenant keeps no row for every tenant it ever served.
"""

from __future__ import annotations

from collections.abc import Mapping

import anyio
import anyio.lowlevel
import asyncpg
from anyio.abc import TaskStatus

from listener.jobs import FINISHED, Status
from listener.logs import get_logger
from listener.maintenance.rounds import run_rounds
from listener.metrics import Metrics
from listener.outage import OutageLog
from listener.queries import QUERIES


class Pruner:
    """Deletes finished jobs past their retention, every ``interval`` seconds."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        metrics: Metrics,
        retention: Mapping[Status, float],
        *,
        interval: float = 10.0,
        batch: int = 1000,
        archive: bool = False,
        archived: float = 30 * 86_400.0,
    ) -> None:
        assert set(retention) == set(FINISHED), retention
        self._pool = pool
        self._metrics = metrics
        self._retention = dict(retention)
        self._interval = interval
        self._batch = batch
        self._archive = archive
        self._archived = archived
        self._log = get_logger("retention")
        self._outage = OutageLog(self._log, "retention")

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Prune forever."""
        task_status.started()
        await run_rounds(self._interval, self.prune, self._outage)

    async def prune(self) -> int:
        """Delete every finished job past its retention, batch by batch; return how many.
        Stops early when another worker holds the retention lock."""
        total = 0
        query = QUERIES["job_prune_to_archive"] if self._archive else QUERIES["job_prune"]
        for status in FINISHED:
            while True:
                async with self._pool.acquire() as conn:
                    row = await conn.fetchrow(query, status, self._retention[status], self._batch)
                assert row is not None
                if not row["leader"]:
                    return total
                deleted: int = row["deleted"]
                if deleted:
                    self._metrics.jobs_pruned.labels(status).inc(deleted)
                    total += deleted
                if deleted < self._batch:
                    break
                await anyio.lowlevel.checkpoint()  # let claims and outcomes through between batches
        if total:
            self._log.info(
                "archived finished jobs past their retention"
                if self._archive
                else "pruned finished jobs past their retention",
                jobs=total,
            )
        if self._archive:
            await self._prune_archive()
        await self._prune_rate_windows()
        return total

    async def _prune_rate_windows(self) -> None:
        """Delete the windows of rate limit keys idle for a whole period, batch by
        batch."""
        total = await self._delete_in_batches(QUERIES["limit_prune_windows"])
        if total:
            self._log.info("pruned the windows of idle rate limit keys", keys=total)

    async def _prune_archive(self) -> None:
        """Delete archived jobs past ``archived`` seconds, batch by batch."""
        await self._delete_in_batches(QUERIES["job_prune_archived"], self._archived)

    async def _delete_in_batches(self, query: str, *args: object) -> int:
        """Run ``query`` (one batch under the retention lock, returning ``leader`` and
        ``deleted``) with ``args`` and the batch size as its last argument, until a
        batch comes back short or another worker holds the lock; return how many rows
        it deleted."""
        total = 0
        while True:
            async with self._pool.acquire() as conn:
                row = await conn.fetchrow(query, *args, self._batch)
            assert row is not None
            deleted: int = row["deleted"]
            total += deleted
            if not row["leader"] or deleted < self._batch:
                return total
            await anyio.lowlevel.checkpoint()
