"""Prometheus metrics of one worker.

Invariants:
- Every series is named ``pgwake_...`` and created here; other modules only call the
  ``observe_*``/``set_*``/``watch_*`` helpers, so names cannot drift from the
  dashboards and alert rules in ``grafana/``.
- Hot-path instrumentation (claims, outcomes, durations, latencies) is applied in bulk:
  a claim's jobs in one call, and finished attempts noted in a list that is applied
  when their outcomes are stored and before every collection (a collector registered
  first does it), so a scrape never misses an attempt that ended before it. Each
  applied batch is one increment per series and one per histogram bucket touched, not
  one per job. The ``kind`` label takes only the kinds this worker has handlers for;
  their series are created at 0 when the worker starts, so ``rate()`` and
  ``increase()`` see the first failure too.
- Tenant labels are bounded. ``pgwake_tenant_queued_jobs`` has at most
  ``top_n + len(opt_in) + 1`` series: the top-N tenants by backlog, the opt-in tenants,
  and ``tenant="_other"`` for the rest; ``pgwake_tenant_db_connections`` has the opt-in
  tenants and ``_other``. 10,000 tenants never make 10,000 series.
- Database-derived gauges (queue depth, oldest job age, tenant backlogs, registered
  workers) are exported by one worker of the fleet only, the metrics leader, which
  samples them (listener/maintenance/sampler.py), never per scrape and never per
  tenant; the other workers export none of them (and ``pgwake_leader 0``), so summing
  over workers does not double count. The leader exports them only while its last
  sample is fresh (``watch_sample_age``): a sample it could not renew is withdrawn,
  never shown as current. Every worker exports the age of the fleet's last sample,
  ``pgwake_metrics_sample_age_seconds``, so a leader that hangs is seen by the others.
- Process-local gauges (in flight, readiness, heartbeat age, tenant pools) are read at
  scrape time from memory: no query. The registry also holds prometheus-client's
  ``process_*`` series (start time, memory, file descriptors) and ``pgwake_build_info``.
- Failure streaks (``pgwake_kind_consecutive_failures``,
  ``pgwake_tenant_consecutive_failures``) are this worker's: attempts that failed for
  good since its last success of that kind (tenant), kept in memory, so they cost no
  query and survive scrapes but not a restart. The tenant series are bounded like the
  tenant backlog: the opt-in tenants and the top-N tenants by streak, none for the rest.
- Records (``ctx.add_records``) are counted by kind only: the records reported, and the
  runs that succeeded having reported 0.
"""

from __future__ import annotations

import bisect
import math
import platform
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from listener import __version__
from listener.jobs import ACTIVE, FINISHED, Status
from listener.tenant_pools import TenantPools

# No ``*_created`` series beside every counter and histogram: they would double the
# series and no query here uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus-client

# The buckets of both histograms (handler run time and start latency): each spans from
# under a millisecond (a handler that returns at once, a claim woken by NOTIFY) through
# seconds (the poll interval, retries) to hours (an import, a backlog), and both are read
# at minute scale (PgwakeStartLatencyHigh at 60 s, PgwakeJobKindSlowerThanUsual against
# the day's p95, the dashboard's p95). histogram_quantile interpolates inside the bucket
# that holds the quantile, so its error is bounded by that bucket's width: from 1 minute
# to 1 hour each bound is at most 4/3 of the one before (a p95 at minute scale is off by
# a third at worst, when every job of the window lands in one bucket, and by a few
# percent for a spread of durations: tests/test_buckets.py); above an hour at most 3/2;
# under a minute the 1-2.5-5 steps suffice. 60 s and 1 s, the alerts' thresholds, are
# bounds, so those comparisons are exact. 40 bounds: 43 series per kind per histogram per
# worker (with +Inf, _sum and _count), bounded by the kinds a worker handles, never by
# tenants or jobs.
LATENCY_BUCKETS = (
    # Under a second: 1-2.5-5 steps.
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    # Seconds.
    1.0,
    2.5,
    5.0,
    10.0,
    20.0,
    30.0,
    45.0,
    # Minutes: each bound at most 4/3 of the one before.
    60.0,
    75.0,
    90.0,
    120.0,
    150.0,
    180.0,
    240.0,
    300.0,
    360.0,
    480.0,
    600.0,
    720.0,
    900.0,
    1200.0,
    1500.0,
    1800.0,
    2400.0,
    3000.0,
    3600.0,
    # Hours: 1.5 h, 2 h, 3 h, 4 h.
    5400.0,
    7200.0,
    10800.0,
    14400.0,
)

# The buckets of the claim duration histogram: a claim of a backlog takes a few to a few
# tens of milliseconds (a claim of 1,000 jobs about 15 ms on two cores), so the bounds are
# close from 1 ms to 100 ms, where a regression (a statement planned for an empty table:
# half a second and more per claim) or a slow server would show, then coarse. 18 bounds:
# 21 series per worker, whatever the kinds, tenants and jobs.
CLAIM_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.015,
    0.02,
    0.03,
    0.04,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)

OTHER_TENANTS = "_other"
# Jobs of kinds no registered worker has a handler for are counted under this kind.
UNHANDLED_KIND = "_unhandled"
# How an attempt ends (jobs.Outcome.label): a finished status, or a run again later.
OUTCOMES = (*FINISHED, "retried", "snoozed")
# The scopes of rate limits (pgwake.rate_windows.scope).
RATE_SCOPES = ("tenant", "kind", "kind_tenant")
# "rate_limit": the moment a full rate limit window opened (claimer.py); "settled": this
# worker's outcome write released waiting jobs or inserted child jobs (completer.py).
WAKE_SOURCES = ("notify", "poll", "reconnect", "slot", "rate_limit", "settled")
# Why a worker was lost: its process is gone (and no new worker started on its host
# since), it restarted (gone, and a new worker started on the same host since its last
# heartbeat), or it hung (alive, holding its lock, but silent past the timeout).
LOST_WHY = ("gone", "restarted", "hung")
RECOVERED_WHY = (*LOST_WHY, "unregistered")
# A recovered job is queued again, or failed when that was its last attempt.
RECOVERED_STATUSES = (Status.QUEUED, Status.FAILED)


def observe_many(histogram: Histogram, values: Sequence[float]) -> None:
    """``histogram.observe(v)`` for each of ``values``, as one increment per bucket
    touched. Relies on the histogram child's bucket counters (prometheus-client keeps
    them as ``_upper_bounds``, ``_buckets`` and ``_sum``); without them it observes one
    by one."""
    if len(values) == 1:
        # One value (an idle worker's claim by id): the plain observe stops at its bucket.
        histogram.observe(values[0])
        return
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None:
        for value in values:
            histogram.observe(value)
        return
    counts = [0] * len(bounds)
    for value in values:
        counts[bisect.bisect_left(bounds, value)] += 1
    for bucket, count in zip(buckets, counts, strict=True):
        if count:
            bucket.inc(count)
    total.inc(math.fsum(values))


class _FlushCollector(Collector):
    """Registered first: applies the finished attempts noted since the last flush, so
    every collection sees them. Exports nothing itself."""

    def __init__(self, flush: Callable[[], None]) -> None:
        self._flush = flush

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        self._flush()
        return iter(())


class _TenantPoolCollector(Collector):
    """The tenant database pools of this worker, read at scrape time."""

    def __init__(self, opt_in: Sequence[str]) -> None:
        self.pools: TenantPools | None = None
        self.cap = 0
        self._opt_in = list(opt_in)

    def collect(self) -> Iterator[Metric]:
        pools = self.pools
        sizes = pools.sizes() if pools is not None else {}
        connections = GaugeMetricFamily(
            "pgwake_tenant_db_connections",
            "Open connections to tenants' own databases: the opt-in tenants, and "
            f"tenant={OTHER_TENANTS!r} for all others together.",
            labels=["tenant"],
        )
        for tenant in self._opt_in:
            connections.add_metric([tenant], sizes.get(tenant, 0))
        shown = sum(sizes.get(tenant, 0) for tenant in self._opt_in)
        total = pools.open_connections() if pools is not None else 0
        connections.add_metric([OTHER_TENANTS], max(total - shown, 0))
        yield connections
        yield GaugeMetricFamily(
            "pgwake_tenant_db_pools",
            "Open connection pools to tenants' own databases.",
            value=pools.pool_count() if pools is not None else 0,
        )
        yield GaugeMetricFamily(
            "pgwake_tenant_db_waiting",
            "Handlers waiting for a free connection slot to a tenant's database.",
            value=pools.waiting() if pools is not None else 0,
        )
        yield GaugeMetricFamily(
            "pgwake_tenant_db_max_connections",
            "Most connections this worker opens to tenants' databases, all together.",
            value=self.cap,
        )


class _SampledCollector(Collector):
    """The sampled series of the metrics leader (``gauges``, and the registered workers
    as last sampled: unlabelled, so they are yielded here rather than kept in a Gauge
    that could not be withdrawn), yielded only while ``fresh()``: no series at all on
    other workers, nor on a leader whose sample is stale."""

    def __init__(self, gauges: Sequence[Gauge]) -> None:
        self.gauges = list(gauges)
        self.sample: tuple[int, float] | None = None
        self.fresh: Callable[[], bool] = lambda: True
        # (worker id, hostname, pid, heartbeat age) of each registered worker.
        self.heartbeats: list[tuple[str, str, int, float]] = []

    def describe(self) -> Iterator[Metric]:
        for gauge in self.gauges:
            yield from gauge.describe()

    def collect(self) -> Iterator[Metric]:
        if not self.fresh():
            return
        for gauge in self.gauges:
            yield from gauge.collect()
        if self.sample is None:
            return
        registered, heartbeat_age_max = self.sample
        yield GaugeMetricFamily(
            "pgwake_workers_registered",
            "Workers registered in pgwake.workers (sampled by the leader).",
            value=registered,
        )
        yield GaugeMetricFamily(
            "pgwake_workers_heartbeat_age_max_seconds",
            "Age of the oldest heartbeat among registered workers (sampled by the leader).",
            value=heartbeat_age_max,
        )
        ages = GaugeMetricFamily(
            "pgwake_worker_heartbeat_age_seconds",
            "Seconds since each registered worker last wrote its heartbeat, as the "
            "database says (sampled by the leader): a hung worker cannot hide its own.",
            labels=["worker_id", "hostname", "pid"],
        )
        for worker_id, hostname, pid, age in self.heartbeats:
            ages.add_metric([worker_id, hostname, str(pid)], age)
        yield ages


class _StreakCollector(Collector):
    """Attempts that failed for good in a row, by kind and by (bounded) tenant: this
    worker's count since its last success of that kind or tenant."""

    def __init__(self, top_n: int, opt_in: Sequence[str]) -> None:
        self.kinds: dict[str, int] = {}
        # Only tenants whose streak is above 0 are kept (a success deletes the entry).
        self.tenants: dict[str, int] = {}
        self._top_n = top_n
        self._opt_in = list(opt_in)

    def note(self, kind: str, tenant: str, outcome: str) -> None:
        """One attempt of ``kind`` for ``tenant`` ended with ``outcome``."""
        if outcome == Status.SUCCEEDED:
            self.kinds[kind] = 0
            self.tenants.pop(tenant, None)
        elif outcome == Status.FAILED:
            self.kinds[kind] = self.kinds.get(kind, 0) + 1
            self.tenants[tenant] = self.tenants.get(tenant, 0) + 1

    def collect(self) -> Iterator[Metric]:
        kinds = GaugeMetricFamily(
            "pgwake_kind_consecutive_failures",
            "Attempts of each kind that failed for good since this worker's last success "
            "of the kind.",
            labels=["kind"],
        )
        for kind, count in sorted(self.kinds.items()):
            kinds.add_metric([kind], count)
        yield kinds
        tenants = GaugeMetricFamily(
            "pgwake_tenant_consecutive_failures",
            "Attempts that failed for good since this worker's last success for the "
            "tenant: the opt-in tenants, and the top tenants by this count.",
            labels=["tenant"],
        )
        top = sorted(self.tenants.items(), key=lambda item: (-item[1], item[0]))
        shown = dict(top[: self._top_n])
        for tenant in self._opt_in:
            shown[tenant] = self.tenants.get(tenant, 0)
        for tenant, count in sorted(shown.items()):
            tenants.add_metric([tenant], count)
        yield tenants


def _rate_limit_gauges() -> tuple[Gauge, Gauge]:
    """The sampled gauges of rate limits: held-back keys by scope, and when each opens."""
    return (
        Gauge(
            "pgwake_rate_limited",
            "Rate limit keys held back right now (their window is full), by scope: "
            "tenant, kind (across tenants), kind_tenant (a kind within a tenant); sampled "
            "by the leader.",
            ["scope"],
            registry=None,
        ),
        Gauge(
            "pgwake_rate_limited_opens_in_seconds",
            "Seconds until each held-back rate limit key opens again, for at most "
            "top_n_tenants keys, those held back longest (sampled by the leader).",
            ["scope", "kind", "tenant"],
            registry=None,
        ),
    )


class Metrics:
    """The worker's metrics, in their own registry."""

    def __init__(self, *, top_n_tenants: int = 20, tenants_opt_in: Sequence[str] = ()) -> None:
        self.registry = CollectorRegistry()
        # Finished attempts not applied yet: (kind, tenant, outcome, seconds, records).
        self._pending: list[tuple[str, str, str, float, int | None]] = []
        self.registry.register(_FlushCollector(self.flush_finished))
        self.top_n_tenants = top_n_tenants
        self.tenants_opt_in = list(tenants_opt_in)
        r = self.registry
        # process_start_time_seconds, memory, CPU and file descriptors (Linux /proc).
        ProcessCollector(registry=r)
        self.build_info = Gauge(
            "pgwake_build_info",
            "Always 1; the labels say which pgwake and Python this worker runs.",
            ["version", "python"],
            registry=r,
        )
        self.build_info.labels(__version__, platform.python_version()).set(1)
        self.claimed = Counter("pgwake_jobs_claimed", "Jobs claimed.", ["kind"], registry=r)
        self.claims = Counter(
            "pgwake_claims",
            "Claim statements run (each takes up to claim_batch jobs; many claims that find "
            "few jobs each mean a stream of single inserts or a short poll interval).",
            registry=r,
        )
        self.claim_duration = Histogram(
            "pgwake_claim_duration_seconds",
            "Time from sending a claim statement to having its rows, as this worker saw "
            "it (the full claim only; the claim by a notified job's id is not counted).",
            buckets=CLAIM_BUCKETS,
            registry=r,
        )
        self.notified_claims = Counter(
            "pgwake_notified_claims",
            "Claims by the id a notification named (an idle worker's wake-up for a "
            "single-row insert), by result: claimed; taken (by another worker, or no "
            "such job); passed to the full claim.",
            ["result"],
            registry=r,
        )
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
            "From the moment a job was due (run_at: its enqueue, or the end of its delay "
            "or backoff) to its claim.",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.records = Counter(
            "pgwake_job_records",
            "Records handlers reported processing (ctx.add_records), by kind.",
            ["kind"],
            registry=r,
        )
        self.zero_records = Counter(
            "pgwake_jobs_zero_records",
            "Attempts that succeeded having reported 0 records (ctx.add_records), by kind.",
            ["kind"],
            registry=r,
        )
        self._streaks = _StreakCollector(top_n_tenants, self.tenants_opt_in)
        r.register(self._streaks)
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
        self.ready = Gauge(
            "pgwake_ready",
            "1 while the worker listens and can claim (what /readyz answers 200 for).",
            registry=r,
        )
        self.heartbeat_age = Gauge(
            "pgwake_heartbeat_age_seconds",
            "Seconds since this worker last wrote its heartbeat.",
            registry=r,
        )
        self.leader = Gauge(
            "pgwake_leader",
            "1 while this worker is the metrics leader, which alone exports the "
            "database-derived (sampled) gauges.",
            registry=r,
        )
        self.sample_age = Gauge(
            "pgwake_metrics_sample_age_seconds",
            "Seconds since the metrics leader (whichever worker it is) last sampled the "
            "queue, as this worker knows it (every worker exports it).",
            registry=r,
        )
        # Database-derived: exported by the metrics leader only, while its sample is
        # fresh (see the docstring), through _SampledCollector.
        self.queue_jobs = Gauge(
            "pgwake_queue_jobs",
            "Jobs in the queue by status and kind (sampled by the leader); kinds no "
            f"registered worker handles are summed under kind={UNHANDLED_KIND!r}.",
            ["status", "kind"],
            registry=None,
        )
        self.oldest_queued = Gauge(
            "pgwake_oldest_queued_job_age_seconds",
            "How long the oldest queued job of each kind has been due (sampled by the "
            "leader); 0 when none is queued.",
            ["kind"],
            registry=None,
        )
        self.tenant_queued = Gauge(
            "pgwake_tenant_queued_jobs",
            "Queued jobs of the top tenants by backlog and the opt-in tenants; the rest "
            f"summed under tenant={OTHER_TENANTS!r} (sampled by the leader).",
            ["tenant"],
            registry=None,
        )
        self.rate_limited, self.rate_limited_key = _rate_limit_gauges()
        self._workers = _SampledCollector(
            [
                self.queue_jobs,
                self.oldest_queued,
                self.tenant_queued,
                self.rate_limited,
                self.rate_limited_key,
            ]
        )
        r.register(self._workers)
        # Maintenance, counted by whichever worker did the work.
        self.workers_lost = Counter(
            "pgwake_workers_lost",
            "Workers declared lost by this worker as maintenance leader, by why: gone "
            "(liveness lock released: process or connection died), restarted (gone, and "
            "a new worker started on the same host since) or hung (lock held, no "
            "heartbeat within the heartbeat timeout).",
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
            "by why the worker was lost (gone, restarted, hung, or unregistered: claimed "
            "by a worker "
            "that is not registered) and new status (queued, or failed when it was their "
            "last attempt).",
            ["why", "status"],
            registry=r,
        )
        self.jobs_cancelled_running = Counter(
            "pgwake_jobs_cancelled_while_running",
            "Running jobs whose handler this worker stopped because cancellation was requested.",
            registry=r,
        )
        self._tenant_pools = _TenantPoolCollector(self.tenants_opt_in)
        r.register(self._tenant_pools)
        self._show_known_labels()
        self._claimed: dict[str, Counter] = {}
        self._latency: dict[str, Histogram] = {}
        self._duration: dict[str, Histogram] = {}
        self._finished: dict[tuple[str, str], Counter] = {}
        self._records: dict[str, Counter] = {}
        self._zero_records: dict[str, Counter] = {}

    def register_kinds(self, kinds: Iterable[str]) -> None:
        """Create the per-kind series of the kinds this worker handles, at 0."""
        for kind in kinds:
            if kind in self._claimed:
                continue
            self._claimed[kind] = self.claimed.labels(kind)
            self._latency[kind] = self.start_latency.labels(kind)
            self._duration[kind] = self.duration.labels(kind)
            self._records[kind] = self.records.labels(kind)
            self._zero_records[kind] = self.zero_records.labels(kind)
            self._streaks.kinds.setdefault(kind, 0)
            for outcome in OUTCOMES:
                self._finished[kind, outcome] = self.finished.labels(kind, outcome)

    def _show_known_labels(self) -> None:
        """Create the series of every known label value, so each is exported (at 0)
        before its first event."""
        for source in WAKE_SOURCES:
            self.wakes.labels(source)
        for result in ("claimed", "taken", "passed"):
            self.notified_claims.labels(result)
        for why in LOST_WHY:
            self.workers_lost.labels(why)
        for why in RECOVERED_WHY:
            for status in RECOVERED_STATUSES:
                self.jobs_recovered.labels(why, status)
        for status in FINISHED:
            self.jobs_pruned.labels(status)

    def observe_claimed(self, jobs: Iterable[tuple[str, float]]) -> None:
        """Jobs were claimed: the kind of each, and the seconds it waited from when it
        was due (never below 0)."""
        latencies: dict[str, list[float]] = {}
        for kind, waited in jobs:
            latencies.setdefault(kind, []).append(waited)
        for kind, values in latencies.items():
            if kind not in self._claimed:
                self.register_kinds([kind])
            self._claimed[kind].inc(len(values))
            observe_many(self._latency[kind], values)

    def observe_finished(
        self, kind: str, outcome: str, seconds: float, *, tenant: str, records: int | None
    ) -> None:
        """An attempt ended (applied at the next ``flush_finished``); ``records`` is what
        its handler reported (None: nothing)."""
        self._pending.append((kind, tenant, outcome, seconds, records))

    def flush_finished(self) -> None:
        """Apply the finished attempts noted so far, in the order they ended."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        counts: dict[tuple[str, str], int] = {}
        durations: dict[str, list[float]] = {}
        records: dict[str, int] = {}
        zero: dict[str, int] = {}
        for kind, tenant, outcome, seconds, reported in pending:
            counts[kind, outcome] = counts.get((kind, outcome), 0) + 1
            durations.setdefault(kind, []).append(seconds)
            self._streaks.note(kind, tenant, outcome)
            if reported is not None:
                records[kind] = records.get(kind, 0) + reported
                if reported == 0 and outcome == Status.SUCCEEDED:
                    zero[kind] = zero.get(kind, 0) + 1
        for kind in durations:
            if kind not in self._claimed:
                self.register_kinds([kind])
        for key, count in counts.items():
            self._finished[key].inc(count)
        for kind, values in durations.items():
            observe_many(self._duration[kind], values)
        for kind, total in records.items():
            self._records[kind].inc(total)
        for kind, runs in zero.items():
            self._zero_records[kind].inc(runs)

    def watch_ready(self, ready: Callable[[], bool]) -> None:
        """Export ``ready()`` as ``pgwake_ready``, read at each scrape."""
        self.ready.set_function(lambda: float(ready()))

    def watch_heartbeat(self, last_beat: Callable[[], float | None]) -> None:
        """Export the age of the heartbeat whose ``time.monotonic()`` stamp
        ``last_beat()`` returns (None before the first)."""

        def age() -> float:
            at = last_beat()
            return math.nan if at is None else time.monotonic() - at

        self.heartbeat_age.set_function(age)

    def watch_sample_age(self, age: Callable[[], float], *, fresh_for: float) -> None:
        """Export ``age()`` (seconds since the fleet's last sample) as
        ``pgwake_metrics_sample_age_seconds``; the sampled series are exported only
        while it is at most ``fresh_for``."""
        self.sample_age.set_function(age)
        self._workers.fresh = lambda: age() <= fresh_for

    def watch_tenant_pools(self, pools: TenantPools, *, cap: int) -> None:
        """Export the sizes of ``pools``, read at each scrape."""
        self._tenant_pools.pools = pools
        self._tenant_pools.cap = cap

    def set_leader(self, leader: bool) -> None:
        """Become (or stop being) the exporter of the database-derived gauges; a worker
        that stops leading exports none of them from then on."""
        self.leader.set(1 if leader else 0)
        if not leader:
            self.queue_jobs.clear()
            self.oldest_queued.clear()
            self.tenant_queued.clear()
            self._workers.sample = None
            self._workers.heartbeats = []

    def set_workers(
        self,
        registered: int,
        heartbeat_age_max: float,
        heartbeats: Sequence[tuple[str, str, int, float]] = (),
    ) -> None:
        """The registered workers, the age of the oldest heartbeat among them, and each
        one's (worker id, hostname, pid, heartbeat age)."""
        self._workers.sample = (registered, heartbeat_age_max)
        self._workers.heartbeats = list(heartbeats)

    def set_queue(
        self,
        depth: Sequence[tuple[str, str, int, float | None]],
        kinds: Iterable[str],
    ) -> None:
        """Replace the queue series with ``depth`` rows (status, kind, jobs, seconds the
        oldest has been due); ``kinds`` (the handled ones, and ``_unhandled``) get
        series at 0 when they have no jobs."""
        jobs = {(status, kind): count for status, kind, count, _ in depth}
        oldest = {kind: age for status, kind, _, age in depth if status == Status.QUEUED}
        every_kind = {*kinds, UNHANDLED_KIND, *(kind for _, kind in jobs)}
        self.queue_jobs.clear()
        self.oldest_queued.clear()
        for kind in sorted(every_kind):
            for status in ACTIVE:
                self.queue_jobs.labels(status, kind).set(jobs.get((status, kind), 0))
            self.oldest_queued.labels(kind).set(max(oldest.get(kind) or 0.0, 0.0))

    def set_rate_limited(self, held: Sequence[tuple[str, str, str, float, int]]) -> None:
        """Replace the rate limit series with ``held`` rows (scope, kind, tenant, seconds
        until it opens, keys of its scope held back); every scope gets a count."""
        self.rate_limited.clear()
        self.rate_limited_key.clear()
        counts = {scope: in_scope for scope, _, _, _, in_scope in held}
        for scope in RATE_SCOPES:
            self.rate_limited.labels(scope).set(counts.get(scope, 0))
        for scope, kind, tenant, opens_in, _ in held:
            self.rate_limited_key.labels(scope, kind, tenant).set(max(opens_in, 0.0))

    def set_tenant_backlog(self, top: Sequence[tuple[str, int]], total: int) -> None:
        """Replace the tenant backlog series: ``top`` (tenant, queued) pairs and the
        total queued; everything not in ``top`` goes under ``_other``."""
        self.tenant_queued.clear()
        shown = 0
        for tenant, queued in top:
            self.tenant_queued.labels(tenant).set(queued)
            shown += queued
        self.tenant_queued.labels(OTHER_TENANTS).set(max(total - shown, 0))
