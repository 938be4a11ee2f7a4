"""The metrics leader's loop: samples the database-derived gauges for the fleet.

Invariants:
- One worker of the fleet samples at a time: the worker whose pooled connection holds
  the metrics lock, a session-level advisory lock. Every worker runs this loop and
  tries to take the lock each ``metrics_interval`` seconds; the leader samples with
  four queries on that connection, in one snapshot, never per scrape and never per
  tenant (listener/metrics.py exports what it sampled).
- A leader cannot hold the fleet blind. Each round has a timeout (``timeout``: the
  statements a ``statement_timeout``, the whole round a client-side deadline for a
  connection that does not answer). A leader whose round fails or times out clears the
  gauges, terminates that connection (so the server releases the lock) and stands
  aside for one round, so another worker takes the lock; it competes again after.
- The lock dies with the leader's connection or process, and another worker takes over
  within one interval. A leader that hangs (its process stopped) is declared lost after
  the heartbeat timeout and its sessions are ended (recovery.py), which frees the lock.
- Each sample is recorded in the database (the 'metrics' row of pgwake.leaders) in its
  own transaction; every other worker reads that time each round. So every worker
  exports ``pgwake_metrics_sample_age_seconds``, the age of the fleet's last sample (the
  leader its own; the others the age they last read plus the time since), and a hung
  leader, which cannot be scraped, is seen through the others.
- The leader exports its sampled series only while its last sample is fresh (at most
  ``2 * interval + timeout`` old); a sample it cannot renew is withdrawn, never shown
  as if it were current (no "0 queued" while jobs wait).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence

import anyio
import asyncpg
from anyio.abc import TaskStatus

from listener.db import is_transient, transaction
from listener.jobs import Status
from listener.logs import get_logger
from listener.maintenance.rounds import run_paced_rounds
from listener.metrics import Metrics
from listener.outage import OutageLog
from listener.queries import QUERIES

# The longest a sample round may take by default: as long as the interval, within these
# bounds.
MIN_TIMEOUT = 1.0
MAX_TIMEOUT = 10.0
# What the client waits beyond the statement timeout before giving the connection up
# (the server's own cancel should come first).
CLIENT_MARGIN = 1.0


def sample_timeout(interval: float) -> float:
    """The timeout of a sample round for a sample every ``interval`` seconds."""
    return min(max(interval, MIN_TIMEOUT), MAX_TIMEOUT)


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
        timeout: float | None = None,
    ) -> None:
        self._pool = pool
        self._metrics = metrics
        self._kinds = list(kinds)
        self._interval = interval
        self._timeout = sample_timeout(interval) if timeout is None else timeout
        # The pooled connection holding the metrics lock while this worker leads.
        self._conn: asyncpg.pool.PoolConnectionProxy | None = None
        # The fleet's last sample as this worker knows it: its age when learned, and
        # time.monotonic() then. None until known.
        self._known: tuple[float, float] | None = None
        self._started = time.monotonic()
        # Rounds to sit out before competing for the lock again (after stepping down).
        self._aside = 0
        self._log = get_logger("metrics")
        self._outage = OutageLog(self._log, "metrics sample")
        metrics.watch_sample_age(self.sample_age, fresh_for=2 * interval + self._timeout)

    @property
    def leading(self) -> bool:
        """Whether this worker is the metrics leader now."""
        return self._conn is not None

    def sample_age(self) -> float:
        """Seconds since the fleet's last sample, as far as this worker knows: the time
        of its own last sample while it leads, else the age it last read from the
        database plus the time since (since this worker started when none was ever
        recorded or read)."""
        if self._known is None:
            return time.monotonic() - self._started
        age, at = self._known
        return age + (time.monotonic() - at)

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
                after_failure=self._step_down,
            )
        finally:
            with anyio.CancelScope(shield=True):
                await self._resign()

    async def _round_then_interval(self) -> float:
        await self.round()
        return self._interval

    async def _step_down(self) -> None:
        """A round failed: give the lock up (closing the connection) and sit the next
        round out, so another worker can take over."""
        if self._conn is not None:
            self._aside = 1
        await self._resign(broken=True)

    async def round(self) -> bool:
        """Take the lock if it is free (and this worker is not standing aside); sample
        if this worker holds it, else read the age of the fleet's last sample. Returns
        whether this worker leads. Raises TimeoutError past the timeout."""
        with anyio.fail_after(self._timeout + CLIENT_MARGIN):
            if self._conn is None:
                conn = await self._pool.acquire()
                got = False
                try:
                    if self._aside > 0:
                        self._aside -= 1
                    else:
                        got = bool(await conn.fetchval(QUERIES["leader_elect_metrics"]))
                    if not got:
                        self._learn(await conn.fetchval(QUERIES["leader_get_metrics_sample_age"]))
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

    def _learn(self, age: float | None) -> None:
        """The database says the fleet's last sample is ``age`` seconds old (None:
        none was ever recorded)."""
        if age is not None:
            self._known = (max(age, 0.0), time.monotonic())

    async def sample(self, conn: asyncpg.pool.PoolConnectionProxy) -> None:
        """Take one sample of every database-derived gauge, in one snapshot, and record
        it for the fleet."""
        m = self._metrics
        async with transaction(conn, isolation="repeatable_read"):
            await conn.execute(
                QUERIES["leader_set_sample_timeout"], f"{int(self._timeout * 1000)}ms"
            )
            workers = await conn.fetchrow(QUERIES["worker_count"])
            heartbeats = await conn.fetch(QUERIES["worker_list_heartbeats"])
            depth = await conn.fetch(QUERIES["job_count_active"])
            top = await conn.fetch(
                QUERIES["tenant_count_queued"], m.top_n_tenants, m.tenants_opt_in
            )
            held = await conn.fetch(QUERIES["limit_list_held_back"], m.top_n_tenants)
            await conn.execute(QUERIES["leader_record_metrics_sample"])
        self._known = (0.0, time.monotonic())
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
        m.set_rate_limited(
            [(r["scope"], r["kind"], r["tenant_id"], r["opens_in"], r["in_scope"]) for r in held]
        )

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
