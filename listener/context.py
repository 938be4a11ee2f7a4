"""The context a handler receives with its payload.

Invariant: a context belongs to one attempt of one job. Every line its logger logs while
the handler runs names the job (id, tenant, kind and attempt): the executor runs the
handler in ``jobs.job_context``, which the log configuration reads.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from listener.errors import ConfigurationError
from listener.jobs import Job
from listener.progress import JobProgress

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    from listener.tenant_databases import TenantDatabases


@dataclass(frozen=True, slots=True)
class JobContext:
    """What a handler may know and use about the job it runs."""

    job: Job
    log: Any  # a structlog BoundLogger; the job's fields come from jobs.job_context
    databases: TenantDatabases | None = None
    progress_reporter: JobProgress | None = None

    @property
    def tenant(self) -> str:
        """The tenant the job belongs to."""
        return self.job.tenant_id

    @property
    def attempt(self) -> int:
        """This attempt's number, 1 for the first run."""
        return self.job.attempt

    @property
    def is_last_attempt(self) -> bool:
        """True when a failure now fails the job for good."""
        return self.job.attempt >= self.job.max_attempts

    async def progress(
        self, done: float, total: float | None = None, message: str | None = None
    ) -> None:
        """Report progress: ``done`` out of ``total`` (None when unknown), with an
        optional message. Visible in ``jobs.progress``, ``pgwake jobs show`` and on
        ``pgwake_events``; written at most once a second (the last report always is)."""
        if self.progress_reporter is None:
            JobProgress.value(done, total, message)  # still refuse nonsense
            return
        await self.progress_reporter.report(done, total, message)

    def tenant_db(self) -> AbstractAsyncContextManager[PoolConnectionProxy]:
        """A connection to this tenant's own database::

            async with ctx.tenant_db() as conn:
                await conn.execute("INSERT INTO orders ...")

        Hold it only as long as needed, and never ask for a second one while holding one.
        A tenant without a database of its own fails the job (ConfigurationError).
        """
        if self.databases is None:
            raise ConfigurationError("this worker does not serve tenant databases")
        return self.databases.connection(self.job.tenant_id)
