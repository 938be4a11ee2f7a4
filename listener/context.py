"""The context a handler receives with its payload.

Invariants:
- A context belongs to one attempt of one job. Every line its logger logs while the
  handler runs names the job (id, tenant, kind and attempt): the executor runs the
  handler in ``jobs.job_context``, which the log configuration reads.
- Jobs a handler enqueues (``ctx.enqueue``) are created only if this attempt succeeds,
  with its outcome, exactly once (listener/children.py).
- The records a handler reports (``ctx.add_records``) are counted for that attempt only
  and travel on its ``Outcome.records``: None when the handler reported none, so "not
  reported" is never mistaken for "zero records".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel
from structlog.typing import FilteringBoundLogger

from listener.children import Children, DependencyResult
from listener.errors import ConfigurationError
from listener.jobs import Job
from listener.progress import JobProgress, ProgressSink

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy


class TenantConnections(Protocol):
    """Where ``ctx.tenant_db()`` gets its connections: the worker's
    :class:`~listener.tenant_databases.TenantDatabases`, or ``pgwake exec``'s, which
    holds them in a transaction it rolls back under ``--dry-run``."""

    def connection(self, tenant_id: str) -> AbstractAsyncContextManager[PoolConnectionProxy]:
        """A connection to the tenant's own database, given back on exit."""
        ...


class JobContext:
    """What a handler may know and use about the job it runs.

    Read-only to the handler: its attributes have no setters. One is made for every job,
    so making one costs little: an attempt's helpers (its progress reports, and the jobs
    it enqueues or whose results it reads) are made on first use, and most handlers use
    neither. ``progress_reporter`` and ``children`` are those helpers, for the executor
    (None while unused)."""

    __slots__ = (
        "_databases",
        "_dry_run",
        "_job",
        "_log",
        "_make_children",
        "_progress_sink",
        "_records",
        "_reporter",
        "_spawned",
    )

    def __init__(
        self,
        job: Job,
        log: FilteringBoundLogger,
        *,
        databases: TenantConnections | None = None,
        progress: ProgressSink | None = None,
        dry_run: bool = False,
        children: Callable[[Job], Children] | None = None,
    ) -> None:
        self._job = job
        self._log = log
        self._databases = databases
        self._progress_sink = progress
        self._dry_run = dry_run
        self._make_children = children
        self._records: int | None = None
        self._reporter: JobProgress | None = None
        self._spawned: Children | None = None

    @property
    def progress_reporter(self) -> JobProgress | None:
        """This attempt's progress reports (None until the handler reports)."""
        return self._reporter

    @property
    def children(self) -> Children | None:
        """The jobs this attempt enqueued (None until the handler enqueues one or reads
        its dependencies)."""
        return self._spawned

    @property
    def job(self) -> Job:
        """The claimed job."""
        return self._job

    @property
    def log(self) -> FilteringBoundLogger:
        """structlog's logger: ``ctx.log.info("event", key=value)``, ``await
        ctx.log.ainfo(...)``, ``ctx.log.bind(...)``; the job's fields come from
        ``jobs.job_context``."""
        return self._log

    @property
    def dry_run(self) -> bool:
        """True under ``pgwake exec --dry-run``: the run is a rehearsal. ``ctx.tenant_db()``
        connections are in a transaction rolled back at the end; a handler with effects
        elsewhere (an e-mail, an API call) should skip them when this is set."""
        return self._dry_run

    @property
    def tenant(self) -> str:
        """The tenant the job belongs to."""
        return self._job.tenant_id

    @property
    def attempt(self) -> int:
        """This attempt's number, 1 for the first run."""
        return self._job.attempt

    @property
    def is_last_attempt(self) -> bool:
        """True when a failure now fails the job for good."""
        return self._job.attempt >= self._job.max_attempts

    def add_records(self, count: int = 1) -> None:
        """Report ``count`` more records processed by this attempt (call it once with the
        total, or as you go). Exported as ``pgwake_job_records_total{kind}``; a run that
        succeeds having reported 0 counts in ``pgwake_jobs_zero_records_total{kind}``
        (alert PgwakeJobProcessedNoRecords), and the job's end is logged with them.
        A handler that never calls it reports nothing (not zero). Refuses anything but
        an int of 0 or more (TypeError, ValueError)."""
        if isinstance(count, bool) or not isinstance(count, int):
            raise TypeError(f"records must be an int, not {type(count).__name__}")
        if count < 0:
            raise ValueError(f"records must be 0 or more, not {count}")
        self._records = (self._records or 0) + count

    @property
    def records(self) -> int | None:
        """The records this attempt has reported so far; None before the first report."""
        return self._records

    async def progress(
        self, done: float, total: float | None = None, message: str | None = None
    ) -> None:
        """Report progress: ``done`` out of ``total`` (None when unknown), with an
        optional message. Visible in ``jobs.progress``, ``pgwake jobs show`` and on
        ``pgwake_events``; written at most once a second (the last report always is)."""
        reporter = self._reporter
        if reporter is None:
            if self._progress_sink is None:
                JobProgress.value(done, total, message)  # still refuse nonsense
                return
            reporter = self._reporter = JobProgress(self._job, self._progress_sink)
        await reporter.report(done, total, message)

    def tenant_db(self) -> AbstractAsyncContextManager[PoolConnectionProxy]:
        """A connection to this tenant's own database::

            async with ctx.tenant_db() as conn:
                await conn.execute("INSERT INTO orders ...")

        Hold it only as long as needed, and never ask for a second one while holding one.
        A tenant without a database of its own fails the job (ConfigurationError).
        """
        if self._databases is None:
            raise ConfigurationError("this worker does not serve tenant databases")
        return self._databases.connection(self._job.tenant_id)

    async def enqueue(
        self,
        kind: str,
        payload: Mapping[str, Any] | BaseModel | None = None,
        *,
        depends_on: Sequence[int] = (),
        run_anyway: bool = False,
        priority: int = 0,
        delay: float = 0.0,
        max_attempts: int | None = None,
        timeout: float | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> int:
        """Enqueue a job of this tenant, created only if this attempt succeeds, in the
        transaction that stores its outcome (a failed attempt creates none; its retry
        creates them again, once). Returns the new job's id at once, so it can be given
        in ``depends_on`` of another job enqueued here (fan-out, then a final job that
        waits for them all: fan-in). ``depends_on`` may also name jobs that exist
        already (of this tenant); ``run_anyway`` runs it once they have all finished,
        whatever their outcome. ``delay`` is seconds from the outcome until it may run.
        ``payload`` is a JSON object or a pydantic model instance (sent as
        ``model_dump(mode="json")``), ``metadata`` a JSON object (TypeError, ValueError
        otherwise). Under ``pgwake exec --dry-run`` and in ``listener.testing`` the job is
        recorded, not created, and its id is a placeholder (-1, -2, ...)."""
        return await self._children().enqueue(
            kind,
            payload,
            depends_on=depends_on,
            run_anyway=run_anyway,
            priority=priority,
            delay=delay,
            max_attempts=max_attempts,
            timeout=timeout,
            metadata=metadata,
        )

    async def dependency_results(self) -> dict[int, DependencyResult]:
        """How each job this one depends on (``depends_on``) ended, by job id: its
        ``status`` (``succeeded``; with ``run_anyway`` also ``failed`` or
        ``cancelled``), ``result`` and ``error``. Empty for a job without dependencies."""
        return await self._children().dependency_results()

    def _children(self) -> Children:
        children = self._spawned
        if children is None:
            if self._make_children is None:
                raise ConfigurationError("this worker cannot enqueue jobs or read dependencies")
            children = self._spawned = self._make_children(self._job)
        return children
