"""One job run in this process, the way a worker runs it: for ``pgwake exec`` and
:mod:`listener.testing`.

Invariants:
- The handler runs through the worker's own :class:`~listener.executor.Executor`: the
  same payload validation, context (tenant, attempt, logger with the job's fields,
  progress, ``ctx.tenant_db()``), timeout, outcome mapping and job log lines.
- Nothing is written to ``pgwake.jobs`` here: whoever calls decides (``--record``).
- Every progress report is kept, in order, and logged (no throttle: one run, no
  database to spare).
- Under dry run (``ctx.dry_run``), the first ``ctx.tenant_db()`` of a tenant opens a
  connection and a transaction on it, the handler gets that same connection for every
  later ``ctx.tenant_db()`` of the run, and the transaction is rolled back when the
  run ends, however it ends (a handler's own ``conn.transaction()`` inside is a
  savepoint). Without dry run, connections come and go as in a worker.
- The jobs the handler enqueues (``ctx.enqueue``) are kept in ``Run.enqueued``, whatever
  the outcome, and inserted by nobody here. Their ids come from the jobs' sequence when
  the run is real and a pool is given (the caller may insert them, as a worker does
  with a successful outcome), else they are placeholders (-1, -2, ...: a dry run, or no
  database). ``ctx.dependency_results()`` asks the pool (the stored job's
  dependencies), or gives ``dependency_results`` when there is no pool.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from listener.children import ChildJob, Children, DependencyResult
from listener.context import TenantConnections
from listener.executor import Executor
from listener.jobs import Job, Outcome
from listener.logs import get_logger
from listener.progress import JobProgress
from listener.registry import Registry
from listener.retry import Backoff

if TYPE_CHECKING:
    import asyncpg
    from asyncpg.pool import PoolConnectionProxy

# A job's defaults, as pgwake.jobs has them.
DEFAULT_MAX_ATTEMPTS = 20
DEFAULT_TIMEOUT = 900.0


@dataclass
class RecordedProgress:
    """Keeps and logs every progress report of the run (a ``ProgressSink``)."""

    interval: float = 0.0
    reports: list[dict[str, Any]] = field(default_factory=list)

    async def write(self, job: Job, value: dict[str, Any]) -> bool:
        self.reports.append(value)
        get_logger("progress").info(
            "progress", done=value["done"], total=value["total"], message=value["message"]
        )
        return True

    def hold(self, progress: JobProgress) -> None:
        """Never called: with no interval every report is written at once."""

    def release(self, progress: JobProgress) -> None:
        """Nothing is held back."""


class RolledBackConnections:
    """``ctx.tenant_db()`` under dry run: one connection per tenant for the run, in a
    transaction rolled back when ``stack`` closes."""

    def __init__(self, databases: TenantConnections, stack: contextlib.AsyncExitStack) -> None:
        self._databases = databases
        self._stack = stack
        self._held: dict[str, PoolConnectionProxy] = {}

    @contextlib.asynccontextmanager
    async def connection(self, tenant_id: str) -> AsyncIterator[PoolConnectionProxy]:
        conn = self._held.get(tenant_id)
        if conn is None:
            conn = await self._stack.enter_async_context(self._databases.connection(tenant_id))
            transaction = conn.transaction()
            await transaction.start()
            # Unwound before the connection goes back (the stack is last in, first out).
            self._stack.push_async_callback(transaction.rollback)
            self._held[tenant_id] = conn
        yield conn


@dataclass(frozen=True, slots=True)
class Run:
    """How one run ended, with what it reported on the way."""

    job: Job
    outcome: Outcome
    progress: list[dict[str, Any]]
    dry_run: bool
    enqueued: list[ChildJob] = field(default_factory=list)
    """The jobs the handler enqueued, in order (a worker creates them only with a
    succeeded outcome)."""


def new_job(
    kind: str,
    payload: dict[str, Any],
    *,
    tenant: str = "default",
    job_id: int = 0,
    attempt: int = 1,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    timeout: float = DEFAULT_TIMEOUT,
    priority: int = 0,
) -> Job:
    """A job that is in no table (id 0 unless given), started now."""
    now = time.time()
    return Job(
        id=job_id,
        tenant_id=tenant,
        kind=kind,
        payload=payload,
        priority=priority,
        attempt=attempt,
        max_attempts=max_attempts,
        timeout=timeout,
        created_epoch=now,
        run_epoch=now,
        started_epoch=now,
    )


async def run_job(
    registry: Registry,
    job: Job,
    *,
    databases: TenantConnections | None = None,
    dry_run: bool = False,
    pool: asyncpg.Pool | None = None,
    dependency_results: Mapping[int, DependencyResult] | None = None,
) -> Run:
    """Run ``job`` once with ``registry``'s handler (within the job's timeout) and return
    how it ended; see the module docstring."""
    progress = RecordedProgress()
    children = Children(
        pool,
        job,
        placeholders=dry_run or pool is None,
        results=(dependency_results or {}) if pool is None else None,
    )
    async with contextlib.AsyncExitStack() as stack:
        connections = databases
        if dry_run and databases is not None:
            connections = RolledBackConnections(databases, stack)
        executor = Executor(
            registry,
            Backoff(),
            connections,
            progress,
            children=lambda _job: children,
            dry_run=dry_run,
        )
        outcome = await executor.execute(job)
    return Run(
        job=job,
        outcome=outcome,
        progress=progress.reports,
        dry_run=dry_run,
        enqueued=list(children.enqueued),
    )
