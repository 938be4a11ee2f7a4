"""Value objects for jobs inside the worker: a claimed job, and the outcome of a run.

Invariants:
- A ``Job`` is what the claim returned; ``attempt`` is the attempt this worker holds.
  Its ``payload`` is an :class:`~listener.db.UndecodableJson` when Python cannot decode
  it (the executor fails that job for good; the rest of the batch runs).
  Together with the worker id it is the lease that fences every later write.
- :class:`Status` is the one list of a job's statuses; the ``jobs_status_valid`` CHECK
  of ``pgwake.jobs`` allows exactly these (a test holds the two together).
  ``ACTIVE`` are the statuses of a job still to run, ``FINISHED`` those of one that ended.
- An ``Outcome`` is written once, by the completer, fenced on (worker, id, attempt).
- Text written to a job's row goes through :func:`storable_text` first: PostgreSQL
  text holds neither NUL nor lone surrogates, and a message holding them is stored
  escaped rather than refused (which would lose it).
- ``CURRENT_JOB`` holds the job whose handler runs in the current context (None
  elsewhere; :func:`job_context` sets it); the log configuration adds its id, tenant,
  kind and attempt to every line logged there. It is the one way a job's fields reach
  a log line: ``ctx.log``, the executor's lines about the job, ``structlog`` and
  ``logging`` alike.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import asyncpg

from listener.db import UndecodableJson

if TYPE_CHECKING:
    from listener.children import ChildJob


class Status(StrEnum):
    """A job's status, as ``pgwake.jobs.status`` holds it (compares equal to that text)."""

    WAITING = "waiting"
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


# The statuses of an attempt after which the job runs again (a module constant: a label
# is read twice for every job, and an Enum's members cost a lookup each time).
_AGAIN: Final = (Status.QUEUED, Status.SCHEDULED)

# A job still to run (waiting for the jobs it depends on, waiting for its time, waiting
# for a worker, or running)...
ACTIVE: Final = (Status.WAITING, Status.SCHEDULED, Status.QUEUED, Status.RUNNING)
# ...or one that ended for good (kept until its retention passes).
FINISHED: Final = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)


class Job(NamedTuple):
    """A job this worker has claimed and holds.

    A named tuple, not a frozen dataclass: one is built for every job claimed, and a
    tuple is built from the claim's row in one step (0.17 µs against 1.24 µs), as
    immutable. Its times are seconds since the epoch, as the claim returns them (a
    ``timestamptz`` costs the client about 0.4 µs a column to decode into a datetime,
    and the worker only subtracts them); ``created_at``, ``run_at`` and ``started_at``
    give them as datetimes (UTC) to a handler that asks."""

    id: int
    tenant_id: str
    kind: str
    payload: dict[str, Any] | UndecodableJson
    priority: int
    attempt: int
    max_attempts: int
    timeout: float
    created_epoch: float
    run_epoch: float
    started_epoch: float

    @classmethod
    def from_record(cls, row: asyncpg.Record) -> Job:
        """Build from a row of a claim statement, whose first columns are these fields
        in this order (``CLAIM_COLUMNS``; tests/test_queries.py checks every claim): by
        position, as this runs for every job claimed."""
        return _new_tuple(cls, row[:CLAIMED_FIELDS])

    @property
    def created_at(self) -> datetime:
        """When the job was inserted."""
        return _as_datetime(self.created_epoch)

    @property
    def run_at(self) -> datetime:
        """When the job was due."""
        return _as_datetime(self.run_epoch)

    @property
    def started_at(self) -> datetime:
        """When this attempt was claimed."""
        return _as_datetime(self.started_epoch)

    @property
    def waited(self) -> float:
        """Seconds from when the job was due to when this attempt was claimed (0 when
        it was claimed early: clocks of different hosts may differ)."""
        return max(self.started_epoch - self.run_epoch, 0.0)


_new_tuple: Final = tuple.__new__


def _as_datetime(epoch: float) -> datetime:
    """Seconds since the epoch as a datetime in UTC: the microsecond PostgreSQL stored
    for any time within 272 years of 1970 (a float8 holds those exactly enough), within
    a few microseconds before 1698 (run_at may be as early as year 1). Past what a
    datetime holds (an infinity), its bound, as asyncpg decodes one."""
    try:
        return datetime.fromtimestamp(epoch, UTC)
    except (OverflowError, ValueError, OSError):
        return (datetime.max if epoch > 0 else datetime.min).replace(tzinfo=UTC)


# The first columns of every claim statement's rows, in Job's field order (attempts is
# Job.attempt, timeout_seconds Job.timeout; the times are seconds since the epoch).
CLAIM_COLUMNS: Final = (
    "id",
    "tenant_id",
    "kind",
    "payload",
    "priority",
    "attempts",
    "max_attempts",
    "timeout_seconds",
    "created_epoch",
    "run_epoch",
    "started_epoch",
)
CLAIMED_FIELDS: Final = len(CLAIM_COLUMNS)


def storable_text(text: str) -> str:
    """``text`` as PostgreSQL can store it: NUL as ``\\x00`` and lone surrogates as
    ``\\udXXX``, everything else unchanged (the common case returns ``text`` itself)."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode()
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode()
    return text


CURRENT_JOB: ContextVar[Job | None] = ContextVar("pgwake_current_job", default=None)


@contextmanager
def job_context(job: Job) -> Iterator[None]:
    """Within it, every line logged names ``job`` (id, tenant, kind, attempt)."""
    token = CURRENT_JOB.set(job)
    try:
        yield
    finally:
        CURRENT_JOB.reset(token)


def add_job_fields(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> Any:
    """structlog processor: the running job's id, tenant, kind and attempt, on every line
    logged while its handler runs (fields the caller set win)."""
    job = CURRENT_JOB.get()
    if job is not None:
        event.setdefault("job_id", job.id)
        event.setdefault("tenant", job.tenant_id)
        event.setdefault("kind", job.kind)
        event.setdefault("attempt", job.attempt)
    return event


# Not frozen: outcomes are internal and made once per job, and a frozen dataclass costs
# several times more to build. Nothing changes one after it is made.
@dataclass(slots=True)
class Outcome:
    """How one attempt of a job ended, as the completer will write it.

    ``status`` is the job's next status; ``refund`` gives the attempt back (snooze,
    shutdown); ``delay`` (seconds) moves run_at, ``None`` keeps it. ``result_json`` is
    ``result`` encoded, when the executor encoded it already (it checks that a result
    can be stored by encoding it); the completer encodes it otherwise. ``records`` is
    what the handler reported with ``ctx.add_records`` (None when it reported nothing).
    """

    job_id: int
    attempt: int
    status: Status
    refund: int = 0
    delay: float | None = None
    result: Any = None
    error: str | None = None
    records: int | None = None
    # Jobs the handler enqueued (ctx.enqueue), inserted with a succeeded outcome only.
    children: list[ChildJob] | None = None
    result_json: str | None = None

    @property
    def label(self) -> str:
        """How the attempt ended, for logs and metrics: succeeded, failed or cancelled,
        or for a job that runs again, snoozed (attempt given back) or retried."""
        status = self.status
        if status in _AGAIN:
            return "snoozed" if self.refund else "retried"
        return status
