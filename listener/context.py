"""The context a handler receives with its payload.

Invariant: a context belongs to one attempt of one job; its logger has the job's id,
tenant, kind and attempt bound, so every line a handler logs names its job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from listener.jobs import Job


@dataclass(frozen=True, slots=True)
class JobContext:
    """What a handler may know and use about the job it runs."""

    job: Job
    log: Any  # a structlog BoundLogger with job_id, tenant, kind and attempt bound

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
