"""The metrics leader's loop: samples the database-derived gauges for the fleet.

Invariants:
- One worker of the fleet samples at a time: the worker whose pooled connection holds
  the metrics lock, a session-level advisory lock. Every worker runs this loop and
  tries to take the lock each ``metrics_interval`` seconds; the leader samples with
  four queries on that connection, in one snapshot, never per scrape and never per
  tenant (listener/metrics.py exports what it sampled).
- The lock dies with the leader's connection or process, and another worker takes over
  within one interval. A leader whose connection fails (a transient error) clears the
  gauges and closes that connection at once, and competes again at the next round.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence

import anyio
import asyncpg
from anyio.abc import TaskStatus

from listener.db import is_transient
from listener.jobs import Status
from listener.logs import get_logger
from listener.maintenance.rounds import run_paced_rounds
from listener.metrics import Metrics
from listener.outage import OutageLog
from listener.queries import QUERIES


class Sampler:
    """Competes for the metrics lock and, while it holds it, samples the
    database-derived gauges every ``interval`` seconds."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        metrics: Metrics,
        kinds: Sequence[str],
        *,
        interval: float,
    ) -> None:
        self._pool = pool
        self._metrics = metrics
        self._kinds = list(kinds)
        self._interval = interval
        # The pooled connection holding the metrics lock while this worker leads.
        self._conn: asyncpg.pool.PoolConnectionProxy | None = None
        self._log = get_logger("metrics")
        self._outage = OutageLog(self._log, "metrics sample")

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Try to lead, and sample while leading, until cancelled; gives the lock back
        (with its connection) on the way out."""
        self._metrics.set_leader(False)
        task_status.started()
        try:
            await run_paced_rounds(
                self._round_then_interval,
                self._outage,
                retry_after=self._interval,
                after_failure=functools.partial(self._resign, broken=True),
            )
        finally:
            with anyio.CancelScope(shield=True):
                await self._resign()

    async def _round_then_interval(self) -> float:
        await self.round()
        return self._interval

    async def round(self) -> bool:
        """Take the lock if it is free; sample if this worker holds it. Returns whether
        this worker leads."""
        if self._conn is None:
            conn = await self._pool.acquire()
            got = False
            try:
                got = bool(await conn.fetchval(QUERIES["leader_elect_metrics"]))
            except BaseException:
                _terminate(conn)  # in whatever state it is; the pool opens another
                raise
            finally:
                if not got:
                    await self._pool.release(conn)
            if not got:
                return False
            self._conn = conn
            self._metrics.set_leader(True)
            self._log.info("metrics leader: sampling queue depth for the fleet")
        await self.sample(self._conn)
        return True

    async def sample(self, conn: asyncpg.pool.PoolConnectionProxy) -> None:
        """Take one sample of every database-derived gauge, in one snapshot."""
        m = self._metrics
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            workers = await conn.fetchrow(QUERIES["worker_count"])
            heartbeats = await conn.fetch(QUERIES["worker_list_heartbeats"])
            depth = await conn.fetch(QUERIES["job_count_active"])
            top = await conn.fetch(
                QUERIES["tenant_count_queued"], m.top_n_tenants, m.tenants_opt_in
            )
        assert workers is not None
        m.set_workers(
            workers["workers"],
            workers["heartbeat_age_max"],
            [(r["id"], r["hostname"], r["pid"], r["heartbeat_age"]) for r in heartbeats],
        )
        m.set_queue(
            [(r["status"], r["kind"], r["jobs"], r["oldest_seconds"]) for r in depth],
            {*self._kinds, *workers["kinds"]},
        )
        total = sum(r["jobs"] for r in depth if r["status"] == Status.QUEUED)
        m.set_tenant_backlog([(r["tenant_id"], r["jobs"]) for r in top], total)

    async def _resign(self, *, broken: bool = False) -> None:
        """Stop leading: clear the sampled gauges, give the connection (and with it the
        lock: the pool's reset releases advisory locks) back; a ``broken`` one is closed
        first."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        self._metrics.set_leader(False)
        self._log.info("no longer the metrics leader")
        if broken:
            _terminate(conn)
        try:
            await self._pool.release(conn, timeout=5)
        except Exception as exc:
            if not is_transient(exc):
                raise
            _terminate(conn)


def _terminate(conn: asyncpg.pool.PoolConnectionProxy) -> None:
    """Close a pooled connection at once, unless the pool has taken it back already (it
    does when the server closes the connection)."""
    with contextlib.suppress(asyncpg.InterfaceError):
        conn.terminate()
