"""The composition root: builds the worker from settings and runs it. Nothing else
constructs the world.

Lifecycle invariants:
- Start: the HTTP endpoint (``/healthz`` 200, ``/readyz`` 503 from the start), then
  pool, schema check (while the heartbeat's and the listener's connections open),
  worker registered, LISTEN established, then claiming. ``READY=1``
  is sent (and ``ready`` set) only once the worker listens and can claim; then
  ``WATCHDOG=1`` and ``STATUS=`` lines follow from the event loop until it stops.
- A database the worker can wait out (db.is_transient: the server away, the database
  missing, authentication refused) never stops it, at start or later. At start it
  retries with backoff (at most ``START_RETRY_CAP`` seconds apart), ``/readyz`` says
  ``starting: waiting for the database: <error>``, and systemd's start timeout is
  extended at each attempt (``EXTEND_TIMEOUT_USEC``), so a start waits for the database
  however long it is away and a hung start is still killed. Only errors of its own
  configuration stop it: bad settings (exit 3), a schema at another version (exit 5),
  and database errors that are not transient (a privilege the role lacks).
- Ready (``/readyz`` 200) exactly while: started, not stopping, the LISTEN connection
  is up, and the last claim reached the database. A lost LISTEN connection or a claim
  that cannot reach the database makes it not ready until that path works again;
  ``/readyz`` gives the error that path last met.
- Stop (``stop()``, SIGTERM/SIGINT in the CLI): claiming stops at once; running jobs get
  the drain timeout; outcomes already produced are all written; whatever this worker
  still holds is put back to ``queued`` with its attempt given back; the worker row is
  removed. A worker that ends any other way (an error, a cancellation from outside)
  puts back what it holds with the attempt counted (``failed`` when it was the last),
  as recovery does for a worker that died. No job is left ``running`` by a clean stop.
  ``STOPPING=1`` extends systemd's stop timeout to the drain timeout plus
  ``RELEASE_MARGIN``.
- Schema (listener/schema_watch.py): the worker runs against this pgwake's schema, or a
  newer one whose every migration past its own is marked compatible; any other stops
  the start (exit 5). A migration that breaks this worker, applied while it runs, is
  noticed within a heartbeat interval: the worker stops as on SIGTERM (not ready, with
  the reason) and ``run`` then raises the :class:`SchemaMismatchError` (exit 5), as
  the check at start would have.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from functools import partial

import anyio
import asyncpg
from anyio.abc import TaskStatus

from listener import db, gctune
from listener.cancels import CancelChecker
from listener.claimer import Claimer
from listener.completer import Completer
from listener.config import Settings
from listener.crypto import load_keyring
from listener.errors import ConfigError, DatabaseUnavailableError, SchemaMismatchError
from listener.executor import Executor
from listener.heartbeat import Heartbeat
from listener.http import HttpEndpoint
from listener.jobs import Status
from listener.logs import get_logger
from listener.maintenance.promoter import Promoter
from listener.maintenance.recovery import Recoverer
from listener.maintenance.retention import Pruner
from listener.maintenance.sampler import Sampler
from listener.maintenance.schedules import Scheduler
from listener.metrics import Metrics
from listener.notifications import Listener
from listener.outage import OutageLog
from listener.paths import known_schema_version
from listener.progress import ProgressWriter
from listener.queries import QUERIES
from listener.redact import display_dsn, redact, register_dsn
from listener.registry import Registry
from listener.retry import Backoff, Reconnect
from listener.schema_watch import SchemaWatch
from listener.systemd import SystemdNotifier
from listener.tenant_databases import TenantDatabases
from listener.tenant_pools import TenantPools
from listener.wake import NotifiedJob, Wake

# Claims, outcome writes, promotion, recovery, metrics samples (on the metrics leader,
# which keeps one connection for them) and tenant-DSN lookups each run one statement at
# a time; one spare so none waits for another (also used by the schema watch, one
# short statement per heartbeat interval). (The LISTEN and heartbeat connections
# are separate.)
POOL_SIZE = 6
# What a stop may take beyond the drain timeout: putting back held jobs, deregistering,
# closing connections (the tenant pools take at most their close_timeout, 2 s, whatever
# tenants' databases do; the rest is a few statements on the central database). The
# stop timeout systemd enforces is extended to cover both.
RELEASE_MARGIN = 15.0
# Waiting for the database at start: the first retry after half a second, then doubling
# up to this many seconds apart.
START_FIRST_RETRY = 0.5
START_RETRY_CAP = 5.0
# Seconds systemd's start timeout is extended by beyond each wait at start.
START_EXTEND = 30.0


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
    """One worker process's services, built and wired together in ``__init__`` (the one
    place that does), then run by ``run``.

    The wiring, each through a small typed interface:
    - the listener sets ``claim_wake`` or ``promote_wake`` on every NOTIFY on
      ``pgwake_jobs``, ``cancel_hints`` on every NOTIFY on ``pgwake_cancel``, and is the
      claimer's ``Doorbell``;
    - the claimer gives finished jobs' outcomes to the completer (its ``OutcomeSink``),
      and the completer tells the claimer when they are stored (``when_stored``);
    - the heartbeat asks the claimer about the jobs held (``heartbeat.HeldJobs``), the
      cancel checker asks it to stop handlers (``cancels.Cancellable``);
    - the metrics read the claimer's ledger and the heartbeat's last beat.
    The pool is built here and connected in ``run``.
    """

    def __init__(self, settings: Settings, registry: Registry, dsn: str) -> None:
        s = self.settings = settings
        self.registry = registry.restricted_to(s.kinds) if s.kinds else registry
        kinds = self.registry.kinds()
        if not kinds:
            raise ConfigError("no handlers registered: nothing to run")
        self.dsn = dsn
        register_dsn(dsn)  # its password is masked even where no URL surrounds it
        # Keys for tenants' database DSNs; a bad key configuration stops the start.
        self.keyring = load_keyring()
        self.worker_id = worker_id = uuid.uuid4()
        self.ready = anyio.Event()
        self.stopped = anyio.Event()
        self.claim_wake = Wake()
        # The one job a notification named: the claimer claims it by id (see NotifiedJob).
        self.notified = NotifiedJob()
        self.promote_wake = Wake()
        self.cancel_hints = Wake()
        self.sd = SystemdNotifier.from_environment()
        self._log = get_logger("service").bind(worker_id=str(worker_id))
        self._stopping = False
        self._stop_requested = anyio.Event()
        self._start_outage = OutageLog(self._log, "reaching the database at start")
        # Set when a migration that breaks this worker was applied under it.
        self._schema_broken: SchemaMismatchError | None = None
        self.session_settings = session_settings(s)
        # The listener's first connection, opened while the schema is checked at start.
        self._listen_conn: asyncpg.Connection | None = None

        metrics = self.metrics = Metrics(
            top_n_tenants=s.metrics_top_tenants, tenants_opt_in=s.metrics_tenants
        )
        metrics.register_kinds(kinds)
        metrics.watch_ready(self.is_ready)
        self.http = HttpEndpoint(s.metrics_addr, metrics.registry, self.not_ready_reason)
        self.listener = Listener(
            dsn,
            self.claim_wake,
            self.promote_wake,
            metrics=metrics,
            cancel_hints=self.cancel_hints,
            notified=self.notified,
        )

        # min_size=0: the pool opens no connection until the first acquire, so a
        # database that is away at start is waited for (a pool whose first connection
        # fails is closed for good).
        self.pool = pool = db.new_pool(
            dsn, size=POOL_SIZE, session_settings=self.session_settings, min_size=0
        )
        self.completer = Completer(
            pool,
            worker_id,
            on_scheduled=partial(self.promote_wake.set, "retry"),
            on_settled=partial(self.claim_wake.set, "settled"),
        )
        self.tenant_pools = TenantPools(
            max_connections=s.tenant_db_max_connections,
            per_tenant=s.tenant_db_per_tenant,
            idle_ttl=s.tenant_db_idle_ttl,
        )
        metrics.watch_tenant_pools(self.tenant_pools, cap=s.tenant_db_max_connections)
        self.progress = ProgressWriter(pool, worker_id)
        executor = Executor(
            self.registry,
            Backoff(base=s.retry_base, cap=s.retry_cap),
            TenantDatabases(pool, self.keyring, self.tenant_pools),
            self.progress,
            pool=pool,
            log_jobs=s.log_jobs,
            log_jobs_per_second=s.log_jobs_per_second,
        )
        self.claimer = claimer = Claimer(
            pool,
            worker_id,
            kinds,
            executor,
            self.completer,
            self.claim_wake,
            self.listener,
            concurrency=s.concurrency,
            tenant_concurrency=s.tenant_concurrency,
            claim_batch=s.claim_batch,
            poll_interval=s.poll_interval,
            drain_timeout=s.drain_timeout,
            metrics=metrics,
            fifo=s.claim_order == "fifo",
            notified=self.notified,
        )
        self.completer.when_stored(claimer.stored)
        metrics.capacity.set(s.concurrency)
        ledger = claimer.ledger
        metrics.in_flight.set_function(lambda: ledger.in_flight)
        self.cancels = CancelChecker(pool, worker_id, claimer, self.cancel_hints)
        self.heartbeat = heartbeat = Heartbeat(
            dsn,
            worker_id,
            kinds,
            s.concurrency,
            interval=s.heartbeat_interval,
            jobs=claimer,
            session_settings=self.session_settings,
        )
        metrics.watch_heartbeat(lambda: heartbeat.last_beat)
        self.promoter = Promoter(pool, self.promote_wake, poll_interval=s.poll_interval)
        self.recoverer = Recoverer(
            pool,
            metrics,
            interval=s.maintenance_interval,
            heartbeat_interval=s.heartbeat_interval,
            heartbeat_timeout=s.heartbeat_timeout,
        )
        self.pruner = Pruner(
            pool,
            metrics,
            {
                Status.SUCCEEDED: s.retention_succeeded,
                Status.FAILED: s.retention_failed,
                Status.CANCELLED: s.retention_cancelled,
            },
            archive=s.retention_archive,
            archived=s.retention_archived,
        )
        self.sampler = Sampler(pool, metrics, kinds, interval=s.metrics_interval)
        self.scheduler = Scheduler(pool)
        self.schema_watch = SchemaWatch(
            pool,
            known=known_schema_version(),  # the newest migration's number, no file read
            interval=s.heartbeat_interval,
            on_breaking=self._stop_for_schema,
        )

    def not_ready_reason(self) -> str | None:
        """None while listening for NOTIFY and able to claim; else why not."""
        if self._schema_broken is not None:
            return f"stopping: {self._schema_broken}"
        if self._stopping:
            return "stopping"
        if not self.ready.is_set():
            waiting = self._start_outage.reason
            return (
                "starting" if waiting is None else f"starting: waiting for the database: {waiting}"
            )
        if not self.listener.listening:
            return _with_cause("LISTEN connection down", self.listener.down_reason)
        if self.claimer.failing:
            return _with_cause("claims cannot reach the database", self.claimer.failure)
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
            self._stop_requested.set()
        self.claimer.stop(now=now)

    def _stop_for_schema(self, error: SchemaMismatchError) -> None:
        """A migration that breaks this worker was applied under it: stop as on SIGTERM;
        ``run`` raises ``error`` once the drain is over."""
        self._schema_broken = error
        self.stop()

    def status_line(self) -> str:
        """The one-line summary systemd shows (``STATUS=``), from in-process counters."""
        state = "draining" if self._stopping else "ready" if self.ready.is_set() else "starting"
        running = self.claimer.in_flight
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
        """Run until stopped; returns after a clean drain, or raises
        :class:`SchemaMismatchError` after the drain that a breaking migration applied
        under the worker started."""
        async with anyio.create_task_group() as endpoint:
            # First, so probes get an answer (not ready) while the rest starts, and a
            # port in use stops the worker before it touches the database.
            await endpoint.start(self.http.run)
            try:
                await self._run(task_status)
            finally:
                endpoint.cancel_scope.cancel()
        if self._schema_broken is not None:
            raise self._schema_broken

    async def _run(self, task_status: TaskStatus[None]) -> None:
        pool = self.pool
        await db.open_pool(pool, self.dsn)
        try:
            if not await self._reach_database():
                return  # stopped before the database answered: nothing to put back
            gctune.tune()
            clean = False
            try:
                await self._serve(task_status)
                clean = True  # only a stop() lets _serve return
            finally:
                with anyio.CancelScope(shield=True):
                    await self._release(clean=clean)
        finally:
            if self._listen_conn is not None:  # opened at start, never handed over
                self._listen_conn.terminate()
            with anyio.CancelScope(shield=True):
                await pool.close()
            self.sd.close()
            self.stopped.set()

    async def _reach_database(self) -> bool:
        """Check the schema and register, waiting out a database that is away (see the
        module docstring). False when a stop came first."""
        retry = Reconnect(first=START_FIRST_RETRY, cap=START_RETRY_CAP)
        while True:
            error: BaseException
            try:
                heartbeat_conn, self._listen_conn = await self._check_schema_while_connecting()
                await self.heartbeat.register(heartbeat_conn)
            except DatabaseUnavailableError as exc:  # no connection to be had
                if not exc.transient:
                    raise
                error = exc
            except Exception as exc:
                if not db.is_transient(exc):
                    raise
                error = exc
            else:
                self._start_outage.succeeded()
                return True
            self._start_outage.failed(error)
            gctune.collect_while_waiting()
            delay = retry.next_delay()
            self.sd.starting(
                f"waiting for the database: {self._start_outage.reason}",
                within=delay + START_EXTEND,
            )
            with anyio.move_on_after(delay):
                await self._stop_requested.wait()
            if self._stopping:
                return False

    async def _check_schema(self) -> None:
        """The schema check at start, on a pool connection."""
        try:
            conn = await self.pool.acquire()
        except db.DATABASE_ERRORS as exc:
            raise db.unavailable(self.dsn, exc) from None
        try:
            await self.schema_watch.check_at_start(conn)
        finally:
            await self.pool.release(conn)

    async def _check_schema_while_connecting(
        self,
    ) -> tuple[asyncpg.Connection, asyncpg.Connection]:
        """The schema check, while the heartbeat's and the listener's connections open
        (three connections set up at once rather than one after the other); those two
        connections, once the schema is right. On an error (the schema check's first)
        neither is left open."""
        errors: dict[str, BaseException] = {}
        opened: dict[str, asyncpg.Connection] = {}

        async def attempt(name: str, step: Callable[[], Awaitable[object]]) -> None:
            try:
                result = await step()
            except Exception as exc:  # noqa: BLE001 - raised below, after the others ended
                errors[name] = exc
            else:
                if isinstance(result, asyncpg.Connection):
                    opened[name] = result

        ended = False
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(attempt, "schema", self._check_schema)
                tg.start_soon(attempt, "heartbeat", self.heartbeat.open)
                tg.start_soon(attempt, "listener", self.listener.open)
            ended = True
        finally:
            if errors or not ended:  # an error, or cancelled: nothing is left open
                for conn in opened.values():
                    conn.terminate()
        error = errors.get("schema") or errors.get("heartbeat") or errors.get("listener")
        if error is not None:
            raise error
        return opened["heartbeat"], opened["listener"]

    async def _serve(self, task_status: TaskStatus[None]) -> None:
        s = self.settings
        claimer, completer = self.claimer, self.completer

        async def claim_then_close() -> None:
            try:
                await claimer.run()
            finally:
                completer.close()

        async with anyio.create_task_group() as background:
            await background.start(self.cancels.run)
            listen_conn, self._listen_conn = self._listen_conn, None
            await background.start(partial(self.listener.run, opened=listen_conn))
            await background.start(self.sampler.run)
            await background.start(self.promoter.run)
            await background.start(self.heartbeat.run)
            await background.start(self.recoverer.run)
            await background.start(self.pruner.run)
            await background.start(self.scheduler.run)
            await background.start(self.tenant_pools.run)
            await background.start(self.progress.run)
            await background.start(self.schema_watch.run)
            async with anyio.create_task_group() as work:
                await work.start(completer.run)
                work.start_soon(claim_then_close)
                self._log.info(
                    "worker ready",
                    kinds=self.registry.kinds(),
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

    async def _release(self, *, clean: bool) -> None:
        """Put back whatever this worker still holds, then deregister. After a clean stop
        (the drain timed out) the attempt is given back; after a crash it counts, as when
        a dead worker's jobs are recovered, so a job that kills workers ends failed
        after ``max_attempts``."""
        try:
            reason = (
                "put back: the worker stopped before the job finished"
                if clean
                else "put back: the worker died while the job ran (the attempt counts)"
            )
            put_back = await self.pool.fetch(
                QUERIES["job_put_back_held"], self.worker_id, reason, not clean
            )
            if put_back:
                self._log.warning(
                    "put back unfinished jobs",
                    jobs=[r["id"] for r in put_back],
                    attempt_counted=not clean,
                )
            await self.pool.execute(QUERIES["worker_deregister"], self.worker_id)
        except db.DATABASE_ERRORS as exc:
            self._log.error(
                "could not put back held jobs; the maintenance leader of another worker "
                "will recover them",
                error=redact(str(exc)),
            )
        finally:
            await self.heartbeat.close()
        self._log.info("worker stopped")


def _with_cause(state: str, cause: str | None) -> str:
    """``state``, followed by the error that caused it when known."""
    return state if cause is None else f"{state}: {cause}"
