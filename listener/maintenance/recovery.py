"""Recovery of lost workers' jobs, by whichever worker is maintenance leader this round.

Invariants:
- At most one worker recovers at a time: each round runs in one transaction that first
  takes the maintenance lock (a row lock on pgwake.leaders, held by the transaction; no
  role without pgwake's privileges can take it). Every worker tries each round, so
  when a leader dies or hangs the next round goes to another worker; nobody waits for
  a dead leader.
- A worker is lost when its liveness lock is gone (not held by its heartbeat session)
  and its heartbeat is older than one and a half heartbeat intervals (its process died: found
  within seconds; a live worker whose session was cut reconnects and beats within that
  grace, so it is never declared lost for a cut session), or when
  its heartbeat is older than the heartbeat timeout (see sql/queries/maintenance.sql:
  worker_list_lost). Running jobs claimed by a worker that is not registered are
  recovered too.
- Why a worker was lost is told by its lock, never by how long it was silent: ``hung``
  only while its heartbeat session still holds the lock (alive but silent); a worker
  whose lock is gone is ``restarted`` when a new worker registered on its host after its
  last heartbeat, else ``gone``. A killed worker that a service manager restarts is
  never reported hung, however late the leader gets to it.
- A recovered job keeps its attempt (counted at the claim) and the reason in
  last_error; it goes back to queued, or to failed when that was its last attempt.
  Jobs are recovered at most ``batch`` per round; a lost worker's row is deleted once
  it holds no running job, and any later write of that worker is fenced off.
- The sessions of a worker declared lost are ended (sql/queries/maintenance.sql:
  worker_end_sessions), so the locks they hold go free: a stopped or cut-off metrics
  leader cannot keep the metrics lock, nor a hung worker its liveness lock. That needs
  the privileges of the lost worker's role (the usual case: one role for the fleet)
  or of pg_signal_backend; sessions the role may not signal are left, and logged.
- Every round that recovered jobs wakes all workers with one NOTIFY.
- The same round, under the same lock, sweeps ``sweep_batch`` waiting jobs (the next
  ones in id order after the last round's, then from the start again;
  sql/queries/maintenance.sql: job_settle_waiting): one whose dependencies have all
  finished is released or cancelled. The statements that write outcomes settle waiting
  jobs at once; the sweep only catches a dependency that finished while its dependent's
  inserting transaction was still open, or whose outcome a worker of an older schema
  wrote.
"""

from __future__ import annotations

from dataclasses import dataclass

import anyio
import asyncpg
from anyio.abc import TaskStatus

from listener.db import transaction
from listener.jobs import Status
from listener.logs import get_logger
from listener.maintenance.rounds import run_rounds
from listener.metrics import Metrics
from listener.outage import OutageLog
from listener.queries import QUERIES

# Heartbeat intervals a worker whose liveness lock is gone has to beat again before it
# is declared lost. Its heartbeat reconnects within a quarter interval of a cut session,
# so one and a half intervals leave it room while a killed worker is recovered within
# about two intervals and a round.
LOCK_GRACE_BEATS = 1.5


@dataclass(frozen=True, slots=True)
class Round:
    """What one recovery round did."""

    leader: bool
    lost_workers: int = 0
    recovered: int = 0
    # Waiting jobs the sweep released or cancelled.
    settled: int = 0


class Recoverer:
    """Runs recovery rounds every ``interval`` seconds."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        metrics: Metrics,
        *,
        interval: float,
        heartbeat_interval: float,
        heartbeat_timeout: float,
        batch: int = 500,
        sweep_batch: int = 1000,
    ) -> None:
        self._pool = pool
        self._metrics = metrics
        self._interval = interval
        # A missing lock counts only once the heartbeat is this old (see the docstring).
        self._grace = LOCK_GRACE_BEATS * heartbeat_interval
        self._timeout = heartbeat_timeout
        self._batch = batch
        self._sweep_batch = sweep_batch
        # The last waiting job the sweep looked at (0: start from the first).
        self._swept_to = 0
        self._log = get_logger("recovery")
        self._outage = OutageLog(self._log, "recovery round")

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Recover forever."""
        task_status.started()
        await run_rounds(self._interval, self._catch_up, self._outage)

    async def _catch_up(self) -> None:
        """Rounds until one recovers less than a full batch (more jobs were waiting)."""
        done = await self.round()
        while done.recovered >= self._batch:
            done = await self.round()

    async def round(self) -> Round:
        """One round: if this worker gets the maintenance lock, recover lost workers."""
        async with self._pool.acquire() as conn, transaction(conn):
            if not await conn.fetchval(QUERIES["leader_elect_maintenance"]):
                return Round(leader=False)
            self._metrics.maintenance_rounds_led.inc()
            lost = await conn.fetch(QUERIES["worker_list_lost"], self._grace, self._timeout)
            ids = [row["id"] for row in lost]
            reasons = [self._reason(row) for row in lost]
            sessions = await conn.fetchrow(QUERIES["worker_end_sessions"], ids) if ids else None
            recovered = await conn.fetch(QUERIES["job_recover"], ids, reasons, self._batch)
            removed = (
                {r["id"] for r in await conn.fetch(QUERIES["worker_remove_lost"], ids)}
                if ids
                else set()
            )
            if recovered:
                await conn.execute(QUERIES["worker_wake"])
            swept_to, settled = await conn.fetchrow(
                QUERIES["job_settle_waiting"], self._swept_to, self._sweep_batch
            ) or (0, 0)
        self._swept_to = swept_to
        if settled:
            self._log.info("settled waiting jobs in the sweep", jobs=settled)
        for row in lost:
            # Counted once, in the round that removes the worker.
            if row["id"] in removed:
                self._metrics.workers_lost.labels(row["why"]).inc()
        why = {row["id"]: row["why"] for row in lost}
        for row in recovered:
            reason = why.get(row["lost_worker"], "unregistered")
            self._metrics.jobs_recovered.labels(reason, row["status"]).inc()
        if lost or recovered:
            self._log.warning(
                "recovered jobs of lost workers",
                workers=[
                    {
                        "id": str(row["id"]),
                        "host": row["hostname"],
                        "pid": row["pid"],
                        "why": row["why"],
                        "silent_seconds": round(row["silent_seconds"], 1),
                    }
                    for row in lost
                ],
                jobs=[row["id"] for row in recovered],
                failed=sum(1 for row in recovered if row["status"] == Status.FAILED),
                sessions_ended=sessions["ended"] if sessions else 0,
            )
        if sessions and sessions["left_alone"]:
            self._log.warning(
                "sessions of lost workers left running: this role may not end them "
                "(grant it pg_signal_backend, or run the fleet under one role)",
                sessions=sessions["left_alone"],
            )
        return Round(
            leader=True,
            lost_workers=len(lost),
            recovered=len(recovered),
            settled=settled,
        )

    @staticmethod
    def _reason(row: asyncpg.Record) -> str:
        who = f"worker {row['id']} (host {row['hostname']}, pid {row['pid']})"
        if row["why"] == "hung":
            return (
                f"recovered: {who} sent no heartbeat for {row['silent_seconds']:.1f}s "
                "while it still held its lock (hung or cut off)"
            )
        if row["why"] == "restarted":
            return (
                f"recovered: {who} died (its liveness lock was released) and a new worker "
                "has started on its host since"
            )
        return f"recovered: {who} died (its liveness lock was released)"
