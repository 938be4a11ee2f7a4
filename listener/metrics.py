"""Prometheus metrics of one worker, and the sampler of database-derived gauges.

Invariants:
- Every series is named ``pgwake_...`` and created here; other modules only call the
  ``observe_*``/``set_*`` helpers, so names cannot drift from the dashboards.
- Only ``pgwake_tenant_queued_jobs`` carries a tenant label, and it has at most
  ``top_n + len(opt_in) + 1`` series: the top-N tenants by backlog, the opt-in tenants,
  and ``tenant="_other"`` for the rest. 10,000 tenants never make 10,000 series.
- Database-derived gauges are sampled on an interval by one query each, never per
  scrape and never per tenant.
- The per-job helpers (``observe_claimed``, ``observe_finished``) look a kind's series
  up once and keep them: a label lookup takes a lock and builds a key, which at
  thousands of jobs a second is a noticeable share of the worker's time.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import anyio
import asyncpg
from anyio.abc import TaskStatus
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from listener.db import is_transient
from listener.logs import get_logger
from listener.outage import OutageLog
from listener.queries import QUERIES
from listener.tenant_pools import TenantPools

# Buckets that resolve milliseconds up to minutes.
LATENCY_BUCKETS = (
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)
OTHER_TENANTS = "_other"


class Metrics:
    """The worker's metrics, in their own registry."""

    def __init__(self, *, top_n_tenants: int = 20, tenants_opt_in: Sequence[str] = ()) -> None:
        self.registry = CollectorRegistry()
        self.top_n_tenants = top_n_tenants
        self.tenants_opt_in = list(tenants_opt_in)
        r = self.registry
        self.claimed = Counter("pgwake_jobs_claimed", "Jobs claimed.", ["kind"], registry=r)
        self.finished = Counter(
            "pgwake_jobs_finished",
            "Attempts ended, by outcome (succeeded, failed, cancelled, retried, snoozed).",
            ["kind", "outcome"],
            registry=r,
        )
        self.duration = Histogram(
            "pgwake_job_duration_seconds",
            "Handler run time.",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.start_latency = Histogram(
            "pgwake_job_start_latency_seconds",
            "From the moment a job was due (run_at) to its claim.",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("pgwake_jobs_in_flight", "Handlers running now.", registry=r)
        self.capacity = Gauge("pgwake_worker_capacity", "Configured concurrency.", registry=r)
        self.wakes = Counter(
            "pgwake_wakes", "Claim-loop wake-ups by source.", ["source"], registry=r
        )
        self.listener_up = Gauge(
            "pgwake_listener_up", "1 while the LISTEN connection is up.", registry=r
        )
        self.listener_reconnects = Counter(
            "pgwake_listener_reconnects", "LISTEN connection re-established.", registry=r
        )
        self.queue_jobs = Gauge(
            "pgwake_queue_jobs",
            "Jobs in the queue by status and kind (sampled).",
            ["status", "kind"],
            registry=r,
        )
        self.oldest_queued = Gauge(
            "pgwake_oldest_queued_job_age_seconds",
            "Age of the oldest queued job since it was due (sampled); 0 when none.",
            registry=r,
        )
        self.tenant_queued = Gauge(
            "pgwake_tenant_queued_jobs",
            "Queued jobs of the top tenants by backlog and the opt-in tenants; the rest "
            f"summed under tenant={OTHER_TENANTS!r} (sampled).",
            ["tenant"],
            registry=r,
        )
        self.workers_lost = Counter(
            "pgwake_workers_lost",
            "Workers declared lost by this worker as maintenance leader, by why: gone "
            "(liveness lock released: process or connection died) or hung (no heartbeat "
            "within the heartbeat timeout).",
            ["why"],
            registry=r,
        )
        self.maintenance_rounds_led = Counter(
            "pgwake_maintenance_rounds_led",
            "Recovery rounds this worker ran as maintenance leader.",
            registry=r,
        )
        self.jobs_pruned = Counter(
            "pgwake_jobs_pruned",
            "Finished jobs deleted past their retention by this worker, by status.",
            ["status"],
            registry=r,
        )
        self.jobs_recovered = Counter(
            "pgwake_jobs_recovered",
            "Running jobs of lost workers put back by this worker as maintenance leader, "
            "by new status (queued, or failed when it was their last attempt).",
            ["status"],
            registry=r,
        )
        self.jobs_cancelled_running = Counter(
            "pgwake_jobs_cancelled_while_running",
            "Running jobs whose handler this worker stopped because cancellation was requested.",
            registry=r,
        )
        self.tenant_db_connections = Gauge(
            "pgwake_tenant_db_connections",
            "Open connections to tenants' own databases.",
            registry=r,
        )
        # Series of the per-job helpers, by kind and by (kind, outcome).
        self._claimed_series: dict[str, tuple[Any, Any]] = {}
        self._finished_series: dict[tuple[str, str], tuple[Any, Any]] = {}

    def observe_claimed(self, kind: str, started_at: datetime, due_at: datetime) -> None:
        """A job was claimed; ``due_at`` is its run_at."""
        series = self._claimed_series.get(kind)
        if series is None:
            series = (self.claimed.labels(kind), self.start_latency.labels(kind))
            self._claimed_series[kind] = series
        series[0].inc()
        series[1].observe(max((started_at - due_at).total_seconds(), 0))

    def observe_finished(self, kind: str, outcome: str, seconds: float) -> None:
        """An attempt ended."""
        series = self._finished_series.get((kind, outcome))
        if series is None:
            series = (self.finished.labels(kind, outcome), self.duration.labels(kind))
            self._finished_series[kind, outcome] = series
        series[0].inc()
        series[1].observe(seconds)

    def set_tenant_backlog(self, top: Sequence[tuple[str, int]], total: int) -> None:
        """Replace the tenant backlog series: ``top`` (tenant, queued) pairs and the
        total queued; everything not in ``top`` goes under ``_other``."""
        self.tenant_queued.clear()
        shown = 0
        for tenant, queued in top:
            self.tenant_queued.labels(tenant).set(queued)
            shown += queued
        self.tenant_queued.labels(OTHER_TENANTS).set(max(total - shown, 0))


class Sampler:
    """Samples queue depth, the oldest job's age and tenant backlogs on an interval."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        metrics: Metrics,
        tenant_pools: TenantPools | None = None,
        *,
        interval: float,
    ) -> None:
        self._pool = pool
        self._metrics = metrics
        self._tenant_pools = tenant_pools
        self._interval = interval
        self._log = get_logger("metrics")
        self._outage = OutageLog(self._log, "metrics sample")

    async def sample(self) -> None:
        """Take one sample of every database-derived gauge."""
        m = self._metrics
        async with self._pool.acquire() as conn:
            depth = await conn.fetch(QUERIES["metrics_queue_depth"])
            oldest = await conn.fetchval(QUERIES["metrics_oldest_queued"])
            top = await conn.fetch(
                QUERIES["metrics_tenant_backlog"], m.top_n_tenants, m.tenants_opt_in
            )
        m.queue_jobs.clear()
        for row in depth:
            m.queue_jobs.labels(row["status"], row["kind"]).set(row["jobs"])
        m.oldest_queued.set(oldest or 0.0)
        total = sum(row["jobs"] for row in depth if row["status"] == "queued")
        m.set_tenant_backlog([(row["tenant_id"], row["jobs"]) for row in top], total)
        if self._tenant_pools is not None:
            m.tenant_db_connections.set(self._tenant_pools.open_connections())

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Sample forever."""
        task_status.started()
        while True:
            try:
                await self.sample()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                self._outage.failed(exc)
            else:
                self._outage.succeeded()
            await anyio.sleep(self._interval)
