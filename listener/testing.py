"""Test helpers for handler authors' own test suites.

    from listener.testing import run_handler

    async def test_send_invoice() -> None:
        run = await run_handler("invoice.send", {"invoice_id": 1, "email": "a@b.c",
                                                 "amount_cents": 100}, tenant="acme")
        assert run.outcome == "succeeded", run.error
        assert run.result == {...}

- :func:`run_handler` runs one handler on one payload with the context a worker gives
  (listener/oneshot.py: the worker's executor, so payload validation, outcomes and
  timeouts are the worker's), and records what it did: outcome, result, error, progress
  reports, log lines, the tenants whose database it asked for, the jobs it enqueued
  (``ctx.enqueue``; :meth:`HandlerRun.assert_enqueued` checks them). No worker, no
  database and no pgwake schema are needed; ``tenant_db`` gives ``ctx.tenant_db()`` the
  connection (or pool, or one per tenant) of your own test database, and
  ``dependency_results`` what ``ctx.dependency_results()`` returns.
- :class:`TestQueue` (and the ``pgwake_queue`` fixture of listener/pytest_plugin.py) is
  a migrated pgwake schema on your test database, emptied of jobs, with ``enqueue`` and
  ``drain``: run every job that is due, in this process, with a real worker, until
  none is left.

Invariants:
- ``run_handler`` never writes to any database but through the handler's own use of
  ``ctx.tenant_db()``; under ``dry_run`` those writes are rolled back at the end.
- ``drain`` runs the worker pgwake runs (listener/service.py), so what passes there
  passes in production; it stops once no job of a kind it handles is due (queued,
  running, scheduled with ``run_at`` passed, or waiting for jobs that have all
  finished: the worker releases or cancels it), and never waits for a retry's backoff:
  such jobs are left ``scheduled``, and the jobs waiting for them ``waiting``, for the
  test to look at.
- The jobs a ``run_handler`` run enqueues are recorded, never inserted: their ids are
  placeholders (-1, -2, ... in the order enqueued, so ``depends_on`` among them reads as
  the handler wrote it). A worker creates them only when the run succeeds, so the
  assertions look at them only then.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import asyncpg
from structlog.testing import capture_logs

from listener import db
from listener.children import ChildJob, DependencyResult
from listener.config import load_settings
from listener.enqueue import NewJob, Payload, enqueue, enqueue_many, payload_json
from listener.errors import ConfigurationError
from listener.migrate import migrate
from listener.oneshot import DEFAULT_MAX_ATTEMPTS, DEFAULT_TIMEOUT, new_job, run_job
from listener.registry import DEFAULT_REGISTRY, HandlerFn, Registry

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

# What ctx.tenant_db() connects to in run_handler: a connection or a pool, or one of them
# per tenant.
TenantDb = asyncpg.Connection | asyncpg.Pool
TenantDbs = TenantDb | Mapping[str, TenantDb]

EnqueuedJob = ChildJob
"""A job a handler enqueued with ``ctx.enqueue``: ``id`` (a placeholder, -1, -2, ...),
``tenant_id``, ``kind``, ``payload``, ``depends_on``, ``run_anyway``, ``priority``,
``delay``, ``max_attempts``, ``timeout``, ``metadata``."""

# The fields of an EnqueuedJob that assert_enqueued compares, beside kind and payload.
_FIELDS = ("depends_on", "run_anyway", "priority", "delay", "max_attempts", "timeout", "metadata")


@dataclass
class HandlerRun:
    """What one :func:`run_handler` call saw."""

    outcome: str
    """succeeded, failed (for good), retried, snoozed or cancelled."""
    result: Any
    error: str | None
    delay: float | None
    """Seconds until a retried or snoozed job would run again."""
    progress: list[dict[str, Any]]
    logs: list[dict[str, Any]]
    """Every line logged while it ran (structlog's event dicts)."""
    tenant_dbs: list[str]
    """The tenant of each ``ctx.tenant_db()`` the handler asked for, in order."""
    records: int | None
    enqueued: list[EnqueuedJob] = field(default_factory=list)
    """Every job the handler enqueued (``ctx.enqueue``), in order, whatever the outcome;
    a worker creates them only when the run succeeds."""

    def expect(self, outcome: str = "succeeded") -> Any:
        """The result when the run ended with ``outcome``; else AssertionError with the
        error the handler raised."""
        if self.outcome != outcome:
            raise AssertionError(
                f"expected {outcome}, the handler's run {self.outcome}: {self.error}"
            )
        return self.result

    @property
    def created(self) -> list[EnqueuedJob]:
        """The jobs a worker would create from this run: those it enqueued when it
        succeeded, none otherwise."""
        return list(self.enqueued) if self.outcome == "succeeded" else []

    def matching(
        self, kind: str | None = None, payload: Payload = None, **fields: Any
    ) -> list[EnqueuedJob]:
        """The jobs of :attr:`created` of ``kind`` (any kind: None) whose payload holds
        every key of ``payload`` with that value, and whose ``fields`` (``depends_on``,
        ``run_anyway``, ``priority``, ``delay``, ``max_attempts``, ``timeout``,
        ``metadata``) are equal to those given."""
        unknown = set(fields) - set(_FIELDS)
        if unknown:
            raise TypeError(f"no such field of an enqueued job: {', '.join(sorted(unknown))}")
        if "depends_on" in fields:
            fields["depends_on"] = tuple(fields["depends_on"])
        wanted = {} if payload is None else json.loads(payload_json(payload))
        return [
            job
            for job in self.created
            if (kind is None or job.kind == kind)
            and all(key in job.payload and job.payload[key] == v for key, v in wanted.items())
            and all(getattr(job, name) == value for name, value in fields.items())
        ]

    def assert_enqueued(
        self, kind: str, payload: Payload = None, *, count: int | None = None, **fields: Any
    ) -> list[EnqueuedJob]:
        """The jobs this run enqueued, and a worker would create, that match (see
        :meth:`matching`); AssertionError, listing what it enqueued, when there are none,
        or not ``count`` of them."""
        found = self.matching(kind, payload, **fields)
        if (not found and count is None) or (count is not None and len(found) != count):
            wanted = "a job" if count is None else f"{count} job(s)"
            wanted += f" of kind {kind!r}"
            if payload is not None:
                wanted += f" with payload {payload!r}"
            if fields:
                wanted += f" with {fields!r}"
            raise AssertionError(
                f"expected {wanted}, found {len(found)}; {self._what_it_enqueued()}"
            )
        return found

    def refute_enqueued(
        self, kind: str | None = None, payload: Payload = None, **fields: Any
    ) -> None:
        """AssertionError when this run enqueued a job, that a worker would create,
        matching (see :meth:`matching`; no arguments: any job at all)."""
        found = self.matching(kind, payload, **fields)
        if found:
            raise AssertionError(f"expected no such job; {self._what_it_enqueued()}")

    def _what_it_enqueued(self) -> str:
        if not self.enqueued:
            return "the run enqueued none"
        listed = "; ".join(
            f"{job.id} {job.kind} {job.payload}"
            + (f" depends on {list(job.depends_on)}" if job.depends_on else "")
            for job in self.enqueued
        )
        if self.outcome != "succeeded":
            error = (self.error or "").partition("\n")[0]
            return (
                f"the run {self.outcome} ({error}), so a worker creates none of the jobs "
                f"it enqueued: {listed}"
            )
        return f"it enqueued: {listed}"


class _RecordingConnections:
    """``ctx.tenant_db()`` on the test's own connections, noting each tenant asked for."""

    def __init__(self, source: TenantDbs | None, uses: list[str]) -> None:
        self._source = source
        self._uses = uses

    @contextlib.asynccontextmanager
    async def connection(self, tenant_id: str) -> AsyncIterator[PoolConnectionProxy]:
        self._uses.append(tenant_id)
        source = self._source
        if isinstance(source, Mapping):
            source = source.get(tenant_id)
        if source is None:
            raise ConfigurationError(f"tenant {tenant_id!r} has no database of its own")
        if isinstance(source, asyncpg.Pool):
            async with source.acquire() as conn:
                yield conn
        else:
            yield source  # type: ignore[misc] # a plain connection serves as well


def _registry_for(handler: str | HandlerFn, registry: Registry | None) -> tuple[str, Registry]:
    if isinstance(handler, str):
        return handler, registry or DEFAULT_REGISTRY
    own = Registry()
    kind = f"test.{handler.__qualname__}"
    own.register(kind, handler)
    return kind, own


async def run_handler(
    handler: str | HandlerFn,
    payload: Payload = None,
    *,
    tenant: str = "default",
    attempt: int = 1,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    timeout: float = DEFAULT_TIMEOUT,
    registry: Registry | None = None,
    tenant_db: TenantDbs | None = None,
    dry_run: bool = False,
    dependency_results: Mapping[int, DependencyResult] | None = None,
) -> HandlerRun:
    """Run ``handler`` (a kind in ``registry``, by default the one ``@handler`` fills, or
    the handler function itself) once on ``payload`` (a mapping or the handler's model)
    for ``tenant``, in attempt ``attempt`` of ``max_attempts``, and return what it did.
    ``ctx.dependency_results()`` returns ``dependency_results`` (by default none).
    """
    kind, chosen = _registry_for(handler, registry)
    if chosen.get(kind) is None:
        raise ConfigurationError(f"no handler for kind {kind!r}; import its module first")
    body = json.loads(payload_json(payload))
    job = new_job(
        kind, body, tenant=tenant, attempt=attempt, max_attempts=max_attempts, timeout=timeout
    )
    uses: list[str] = []
    with capture_logs() as logged:
        run = await run_job(
            chosen,
            job,
            databases=_RecordingConnections(tenant_db, uses),
            dry_run=dry_run,
            dependency_results=dependency_results,
        )
    outcome = run.outcome
    return HandlerRun(
        outcome=outcome.label,
        result=outcome.result,
        error=outcome.error,
        delay=outcome.delay,
        progress=run.progress,
        logs=[dict(event) for event in logged],
        tenant_dbs=uses,
        records=outcome.records,
        enqueued=run.enqueued,
    )


@dataclass(frozen=True, slots=True)
class FinishedJob:
    """A job a :meth:`TestQueue.drain` saw end."""

    id: int
    tenant: str
    kind: str
    status: str
    attempts: int
    result: Any
    error: str | None


class TestQueue:
    """A migrated pgwake schema on a test database, with its jobs removed; enqueue into
    it and drain it in this process (see the module docstring)."""

    __test__ = False  # not a test class, whatever pytest's naming rules say

    def __init__(self, dsn: str, conn: asyncpg.Connection) -> None:
        self.dsn = dsn
        self.conn = conn

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, dsn: str) -> AsyncIterator[TestQueue]:
        """Migrate ``dsn``'s database to this pgwake's schema (a no-op when it is), delete
        every job, and yield the queue; the connection is closed after."""
        conn = await db.connect(dsn)
        try:
            await migrate(conn)
            await conn.execute("TRUNCATE pgwake.jobs")
            yield cls(dsn, conn)
        finally:
            await conn.close()

    async def enqueue(self, kind: str, payload: Payload = None, **options: Any) -> int | None:
        """:func:`listener.api.enqueue` on the queue's connection (committed at once)."""
        job_id: int | None = await enqueue(self.conn, kind, payload, **options)
        return job_id

    async def enqueue_many(self, jobs: Sequence[NewJob]) -> list[int]:
        """:func:`listener.api.enqueue_many` on the queue's connection."""
        return await enqueue_many(self.conn, jobs)

    async def _due(self, kinds: list[str]) -> int:
        """How many jobs of ``kinds`` the worker still has to run or settle: running,
        due, or waiting for jobs that have all finished (released or cancelled by the
        worker: the outcome that finished the last one, or else its sweep)."""
        count: int = await self.conn.fetchval(
            "SELECT count(*) FROM pgwake.jobs AS j WHERE j.kind = ANY($1::text[]) "
            "AND (j.status = 'running' "
            "OR (j.status IN ('queued', 'scheduled') AND j.run_at <= now()) "
            "OR (j.status = 'waiting' AND NOT EXISTS ("
            "SELECT FROM unnest(j.depends_on) AS d(dep) JOIN pgwake.jobs AS o ON o.id = d.dep "
            "WHERE o.status IN ('waiting', 'scheduled', 'queued', 'running'))))",
            kinds,
        )
        return count

    async def drain(
        self, registry: Registry | None = None, *, timeout: float = 30.0, **settings: Any
    ) -> list[FinishedJob]:
        """Run a worker with ``registry``'s handlers (the default registry) in this
        process until no job of its kinds is due, and return the jobs that ended in the
        meantime, by id. ``settings`` are the worker's (``concurrency=4``...).
        TimeoutError when jobs are still due after ``timeout`` seconds."""
        from listener.service import Service  # noqa: PLC0415 - the worker, only here

        chosen = registry or DEFAULT_REGISTRY
        kinds = chosen.kinds()
        started = await self.conn.fetchval("SELECT now()")
        config = load_settings({"metrics_addr": "127.0.0.1:0", **settings}, env={})
        service = Service(config, chosen, self.dsn)
        deadline = time.monotonic() + timeout
        async with anyio.create_task_group() as tg:
            await tg.start(service.run)
            try:
                while await self._due(kinds):
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"jobs still due after {timeout:g}s")
                    await anyio.sleep(0.01)
            finally:
                service.stop()
        rows = await self.conn.fetch(
            "SELECT id, tenant_id, kind, status, attempts, result, last_error FROM pgwake.jobs "
            "WHERE finished_at >= $1 ORDER BY id",
            started,
        )
        return [
            FinishedJob(
                r["id"],
                r["tenant_id"],
                r["kind"],
                r["status"],
                r["attempts"],
                r["result"],
                r["last_error"],
            )
            for r in rows
        ]


__all__ = [
    "DependencyResult",
    "EnqueuedJob",
    "FinishedJob",
    "HandlerRun",
    "TestQueue",
    "run_handler",
]
