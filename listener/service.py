"""The composition root: builds the worker from settings and runs it. Nothing else
constructs the world.

Lifecycle invariants:
- Start: the HTTP endpoint (``/healthz`` 200, ``/readyz`` 503 from the start), then
  pool, schema check, worker registered, LISTEN established, then claiming. ``READY=1``
  is sent (and ``ready`` set) only once the worker listens and can claim; then
  ``WATCHDOG=1`` and ``STATUS=`` lines follow from the event loop until it stops. A
  database that cannot be reached at start still stops the worker (exit 4).
- Ready (``/readyz`` 200) exactly while: started, not stopping, the LISTEN connection
  is up, and the last claim reached the database. A lost LISTEN connection or a claim
  that cannot reach the database makes it not ready until that path works again.
- Stop (``stop()``, SIGTERM/SIGINT in the CLI): claiming stops at once; running jobs get
  the drain timeout; outcomes already produced are all written; whatever this worker
  still holds is put back to ``queued`` with its attempt given back; the worker row is
  removed. A worker that ends any other way (an error, a cancellation from outside)
  puts back what it holds with the attempt counted (``failed`` when it was the last),
  as recovery does for a worker that died. No job is left ``running`` by a clean stop.
  ``STOPPING=1`` extends systemd's stop timeout to the drain timeout plus
  ``RELEASE_MARGIN``.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence

import anyio
import asyncpg
from anyio.abc import TaskStatus

from listener import db, gctune
from listener.cancels import CancelChecker
from listener.claimer import Claimer
from listener.completer import Completer
from listener.config import Settings
from listener.crypto import load_keyring
from listener.errors import ConfigError
from listener.executor import Executor
from listener.heartbeat import Heartbeat
from listener.http import HttpEndpoint
from listener.logs import get_logger
from listener.maintenance.promoter import Promoter
from listener.maintenance.recovery import Recoverer
from listener.maintenance.retention import Pruner
from listener.maintenance.schedules import Scheduler
from listener.metrics import Metrics, Sampler
from listener.migrate import check_schema
from listener.notifications import Listener
from listener.progress import ProgressWriter
from listener.queries import QUERIES
from listener.redact import display_dsn, redact, register_dsn
from listener.registry import Registry
from listener.retry import Backoff
from listener.systemd import SystemdNotifier
from listener.tenant_databases import TenantDatabases
from listener.tenant_pools import TenantPools
from listener.wake import Wake

# Claims, outcome writes, promotion, recovery, metrics samples (on the metrics leader,
# which keeps one connection for them) and tenant-DSN lookups each run one statement at
# a time; one spare so none waits for another. (The LISTEN and heartbeat connections
# are separate.)
POOL_SIZE = 6
# What a stop may take beyond the drain timeout: putting back held jobs, deregistering,
# closing connections (the tenant pools take at most their close_timeout, 2 s, whatever
# tenants' databases do; the rest is a few statements on the central database). The
# stop timeout systemd enforces is extended to cover both.
RELEASE_MARGIN = 15.0


def session_settings(settings: Settings) -> dict[str, str]:
    """Run-time parameters of every session of the worker's pool and heartbeat.

    ``idle_in_transaction_session_timeout`` is the maintenance lease: a round's leader
    holds a row lock on pgwake.leaders for its transaction, and a leader that stalls inside that
    transaction (a blocked event loop, a stopped process) would hold it, and with it
    every round of the fleet, for as long as it stalls. The server ends such a session
    after the lease, the lock goes with it, and the next round goes to another worker.

    ``enable_seqscan = off`` keeps the plans of the statements these sessions prepare
    once and run for hours right for every table size. Each of them reads pgwake.jobs
    through a partial index (queued, scheduled, running, finished) or by primary key or
    ctid, so its cost grows with the rows it touches; the one plan that grows with the
    table is a sequential scan, and that is what PostgreSQL's cached generic plan picks
    when the statement was prepared on an empty queue (a table of a few rows): a burst
    that comes later is then claimed with a scan of the whole table per claim. Turned
    off, a sequential scan is chosen only where no index can serve, whatever the
    statistics said when the statement was prepared. (``plan_cache_mode =
    force_custom_plan`` fixes the same trap by planning every execution, which doubles
    the cost of a small claim; see docs/architecture.md, "Plans that do not go stale".)

    ``jit = off`` goes with it: a plan that must read a table sequentially (the few
    rows of pgwake.workers, say) now costs more than ``jit_above_cost``, and compiling
    it took about 100 ms per run. None of the worker's statements is long enough for
    JIT compilation to pay.
    """
    values = {
        "idle_in_transaction_session_timeout": str(int(settings.maintenance_lease * 1000)),
        "enable_seqscan": "off",
        "jit": "off",
    }
    if not settings.job_events:
        values["pgwake.job_events"] = "off"
    return values


class Service:
    """One worker process's services, wired together."""

    def __init__(self, settings: Settings, registry: Registry, dsn: str) -> None:
        self.settings = settings
        self.registry = registry.restricted_to(settings.kinds) if settings.kinds else registry
        if not self.registry.kinds():
            raise ConfigError("no handlers registered: nothing to run")
        self.dsn = dsn
        register_dsn(dsn)  # its password is masked even where no URL surrounds it
        # Keys for tenants' database DSNs; a bad key configuration stops the start.
        self.keyring = load_keyring()
        self.worker_id = uuid.uuid4()
        self.ready = anyio.Event()
        self.stopped = anyio.Event()
        self.claim_wake = Wake()
        self.promote_wake = Wake()
        self.sd = SystemdNotifier.from_environment()
        self.metrics = Metrics(
            top_n_tenants=settings.metrics_top_tenants, tenants_opt_in=settings.metrics_tenants
        )
        self.metrics.register_kinds(self.registry.kinds())
        self.metrics.watch_ready(self.is_ready)
        self.http = HttpEndpoint(
            settings.metrics_addr, self.metrics.registry, self.not_ready_reason
        )
        self.listener = Listener(
            dsn,
            [self.claim_wake, self.promote_wake],
            metrics=self.metrics,
            on_cancel_hint=self._cancel_hint,
        )
        self.session_settings = session_settings(settings)
        self._log = get_logger("service").bind(worker_id=str(self.worker_id))
        self._stopping = False
        # Built in run(), once the pool exists.
        self.claimer: Claimer | None = None
        self.completer: Completer | None = None
        self.cancels: CancelChecker | None = None

    def _cancel_hint(self) -> None:
        if self.cancels is not None:
            self.cancels.hint()

    def _cancel_running(self, job_ids: Sequence[int]) -> None:
        if self.claimer is not None:
            self.claimer.request_cancel(job_ids)

    def _reconcile(self, held: Sequence[int]) -> Sequence[int]:
        return self.claimer.reconcile(held) if self.claimer is not None else ()

    def _abandon_running(self) -> None:
        if self.claimer is not None:
            self.claimer.abandon_all()

    def not_ready_reason(self) -> str | None:
        """None while listening for NOTIFY and able to claim; else why not."""
        if self._stopping:
            return "stopping"
        if not self.ready.is_set():
            return "starting"
        if not self.listener.listening:
            return "LISTEN connection down"
        if self.claimer is not None and self.claimer.failing:
            return "claims cannot reach the database"
        return None

    def is_ready(self) -> bool:
        """Listening for NOTIFY and able to claim (what /readyz reports)."""
        return self.not_ready_reason() is None

    def stop(self, *, now: bool = False) -> None:
        """Begin a graceful stop; ``now`` cuts the drain short."""
        if not self._stopping:
            self._stopping = True
            self._log.info(
                "stopping: no new claims; draining", drain_timeout=self.settings.drain_timeout
            )
            self.sd.stopping(
                self.status_line(), within=self.settings.drain_timeout + RELEASE_MARGIN
            )
        if self.claimer is not None:
            self.claimer.stop(now=now)

    def status_line(self) -> str:
        """The one-line summary systemd shows (``STATUS=``), from in-process counters."""
        state = "draining" if self._stopping else "ready" if self.ready.is_set() else "starting"
        running = self.claimer.in_flight if self.claimer is not None else 0
        outcomes: Counter[str] = Counter()
        for metric in self.metrics.finished.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    outcomes[sample.labels["outcome"]] += int(sample.value)
        listener = "listening" if self.listener.listening else "not listening (reconnecting)"
        return (
            f"{state}: {running}/{self.settings.concurrency} running; "
            f"{outcomes['succeeded']} succeeded, {outcomes['failed']} failed, "
            f"{outcomes['retried']} retried; {listener}"
        )

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run until stopped; returns after a clean drain."""
        async with anyio.create_task_group() as endpoint:
            # First, so probes get an answer (not ready) while the rest starts, and a
            # port in use stops the worker before it touches the database.
            await endpoint.start(self.http.run)
            try:
                await self._run(task_status)
            finally:
                endpoint.cancel_scope.cancel()

    async def _run(self, task_status: TaskStatus[None]) -> None:
        s = self.settings
        pool = await db.create_pool(
            self.dsn, size=POOL_SIZE, session_settings=self.session_settings
        )
        try:
            async with pool.acquire() as conn:
                await check_schema(conn)
            kinds = self.registry.kinds()
            gctune.tune()
            heartbeat = Heartbeat(
                self.dsn,
                self.worker_id,
                kinds,
                s.concurrency,
                interval=s.heartbeat_interval,
                on_lost=self._abandon_running,
                on_cancel=self._cancel_running,
                reconcile=self._reconcile,
                session_settings=self.session_settings,
            )
            await heartbeat.register()
            self.metrics.watch_heartbeat(lambda: heartbeat.last_beat)
            clean = False
            try:
                await self._serve(pool, heartbeat, kinds, task_status)
                clean = True  # only a stop() lets _serve return
            finally:
                with anyio.CancelScope(shield=True):
                    await self._release(pool, heartbeat, clean=clean)
        finally:
            with anyio.CancelScope(shield=True):
                await pool.close()
            self.sd.close()
            self.stopped.set()

    async def _serve(
        self,
        pool: asyncpg.Pool,
        heartbeat: Heartbeat,
        kinds: list[str],
        task_status: TaskStatus[None],
    ) -> None:
        s = self.settings
        completer = Completer(
            pool, self.worker_id, on_scheduled=lambda: self.promote_wake.set("retry")
        )
        tenant_pools = TenantPools(
            max_connections=s.tenant_db_max_connections,
            per_tenant=s.tenant_db_per_tenant,
            idle_ttl=s.tenant_db_idle_ttl,
        )
        self.metrics.watch_tenant_pools(tenant_pools, cap=s.tenant_db_max_connections)
        databases = TenantDatabases(pool, self.keyring, tenant_pools)
        progress = ProgressWriter(pool, self.worker_id)
        executor = Executor(
            self.registry, Backoff(base=s.retry_base, cap=s.retry_cap), databases, progress
        )
        claimer = Claimer(
            pool,
            self.worker_id,
            kinds,
            executor,
            completer,
            self.claim_wake,
            self.listener,
            concurrency=s.concurrency,
            tenant_concurrency=s.tenant_concurrency,
            claim_batch=s.claim_batch,
            poll_interval=s.poll_interval,
            drain_timeout=s.drain_timeout,
            metrics=self.metrics,
            fifo=s.claim_order == "fifo",
        )
        self.completer, self.claimer = completer, claimer
        cancels = CancelChecker(pool, self.worker_id, self._cancel_running)
        self.cancels = cancels
        promoter = Promoter(pool, self.promote_wake, poll_interval=s.poll_interval)
        recoverer = Recoverer(
            pool,
            self.metrics,
            interval=s.maintenance_interval,
            heartbeat_interval=s.heartbeat_interval,
            heartbeat_timeout=s.heartbeat_timeout,
        )

        pruner = Pruner(
            pool,
            self.metrics,
            {
                "succeeded": s.retention_succeeded,
                "failed": s.retention_failed,
                "cancelled": s.retention_cancelled,
            },
        )

        async def claim_then_close() -> None:
            try:
                await claimer.run()
            finally:
                completer.close()

        sampler = Sampler(pool, self.metrics, kinds, interval=s.metrics_interval)
        async with anyio.create_task_group() as background:
            await background.start(cancels.run)
            await background.start(self.listener.run)
            await background.start(sampler.run)
            await background.start(promoter.run)
            await background.start(heartbeat.run)
            await background.start(recoverer.run)
            await background.start(pruner.run)
            await background.start(Scheduler(pool).run)
            await background.start(tenant_pools.run)
            await background.start(progress.run)
            async with anyio.create_task_group() as work:
                await work.start(completer.run)
                work.start_soon(claim_then_close)
                if self._stopping:
                    claimer.stop()
                self._log.info(
                    "worker ready",
                    kinds=kinds,
                    concurrency=s.concurrency,
                    tenant_concurrency=s.tenant_concurrency,
                    dsn=display_dsn(self.dsn),
                    metrics=f"http://{self.http.host}:{self.http.port}/metrics",
                )
                self.ready.set()
                if not self._stopping:  # a stop during the start has said STOPPING=1
                    self.sd.ready(self.status_line())
                # systemd arms the watchdog at READY=1; pings and status lines go on
                # through the drain, until the background tasks are cancelled.
                background.start_soon(self.sd.watchdog_loop)
                background.start_soon(self.sd.status_loop, self.status_line)
                task_status.started()
            background.cancel_scope.cancel()

    async def _release(self, pool: asyncpg.Pool, heartbeat: Heartbeat, *, clean: bool) -> None:
        """Put back whatever this worker still holds, then deregister. After a clean stop
        (the drain timed out) the attempt is given back; after a crash it counts, as when
        a dead worker's jobs are recovered, so a job that kills workers ends failed
        after ``max_attempts``."""
        try:
            query, reason = (
                (
                    QUERIES["job_put_back_held"],
                    "put back: the worker stopped before the job finished",
                )
                if clean
                else (
                    QUERIES["job_put_back_held_counted"],
                    "put back: the worker died while the job ran (the attempt counts)",
                )
            )
            put_back = await pool.fetch(query, self.worker_id, reason)
            if put_back:
                self._log.warning(
                    "put back unfinished jobs",
                    jobs=[r["id"] for r in put_back],
                    attempt_counted=not clean,
                )
            await pool.execute(QUERIES["worker_deregister"], self.worker_id)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            self._log.error(
                "could not put back held jobs; the maintenance leader of another worker "
                "will recover them",
                error=redact(str(exc)),
            )
        finally:
            await heartbeat.close()
        self._log.info("worker stopped")
