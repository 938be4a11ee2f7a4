"""Jobs as a worker holds them after a claim (listener.jobs.Job), for tests that run the
claimer's parts, the runners or the executor without a database."""

from __future__ import annotations

from datetime import UTC, datetime

from listener.jobs import Job

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def held_job(
    job_id: int,
    tenant: str = "t",
    kind: str = "k",
    *,
    max_attempts: int = 3,
    timeout: float = 60.0,
) -> Job:
    """A claimed job in its first attempt, with an empty payload, due and started at
    ``NOW``."""
    return Job(
        id=job_id,
        tenant_id=tenant,
        kind=kind,
        payload={},
        priority=0,
        attempt=1,
        max_attempts=max_attempts,
        timeout=timeout,
        created_epoch=NOW.timestamp(),
        run_epoch=NOW.timestamp(),
        started_epoch=NOW.timestamp(),
    )
