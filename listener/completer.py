"""Writes job outcomes in batches, fenced, retrying transient database errors.

Invariants:
- ``submit`` never blocks and never loses an outcome: it goes into a buffer, and the
  run loop writes whatever has gathered in one ``job_finish_many`` statement. While a
  write is in flight, new outcomes gather for the next one, so batches grow with load
  and an idle worker writes at once. Once a batch is stored, the callbacks given to
  ``when_stored`` get its outcomes, so callers can bound the jobs whose outcome is still
  pending.
- The writes run one after another on one connection kept for the purpose
  (``KeptConnection``): no pool round trips per batch.
- Writes are fenced on (worker, job id, attempt): an outcome for a job this worker no
  longer holds changes nothing.
- A transient error (lost connection, deadlock, shutdown...) keeps the batch and retries
  it with backoff; handlers are never re-run because of it. A batch the database refuses
  for another reason is split, so one bad row cannot block the others; a row refused on
  its own is recorded as failed with the database's message; so is an outcome the
  client cannot encode (a result nested too deep, say).
- Error text is stored through ``jobs.storable_text``: a message holding NUL or a lone
  surrogate is kept, escaped, and the job is retried as for any other error.
- A batch with a success that enqueued child jobs is written in one transaction with
  those children (listener/children.py): they are inserted only for the parents whose
  outcome the fenced statement stored, so a retried write never inserts them twice,
  and a child the database refuses fails the batch, which is then split as above.
- ``run`` returns only after ``close()`` and once the buffer is empty (and then gives
  its connection back), so the service can put back held jobs knowing every finished
  outcome is stored.
- A write that settled waiting jobs (their dependencies finished) or inserted child
  jobs calls ``on_settled``: the claimer looks at once, rather than at the end of a
  stream's pause, which a NOTIFY does not cut short.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import asyncpg
from anyio.abc import TaskStatus

from listener.children import insert_children
from listener.db import is_transient
from listener.executor import encode_result_json
from listener.jobs import Outcome, Status, storable_text
from listener.kept_connection import KeptConnection
from listener.logs import get_logger
from listener.queries import QUERIES
from listener.redact import redact
from listener.retry import Reconnect


class Completer:
    """Buffers outcomes and writes them in fenced batches."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        worker_id: uuid.UUID,
        *,
        max_batch: int = 1000,
        on_scheduled: Callable[[], None] | None = None,
        on_settled: Callable[[], None] | None = None,
        max_backoff: float = 2.0,
    ) -> None:
        self._db = KeptConnection(pool)
        self._worker_id = worker_id
        self._max_batch = max_batch
        self._on_scheduled = on_scheduled
        self._on_settled = on_settled
        self._max_backoff = max_backoff
        self._buffer: list[Outcome] = []
        self._pending = anyio.Event()
        self._listeners: list[Callable[[Sequence[Outcome]], None]] = []
        self._retry = Reconnect(cap=max_backoff)
        self._closed = False
        self._log = get_logger("completer")

    def submit(self, outcome: Outcome) -> None:
        """Queue an outcome for writing."""
        buffer = self._buffer
        if not buffer:
            # The run loop waits only with the buffer empty, and drains it before it
            # waits again: the first outcome of a batch wakes it, the rest join it.
            self._pending.set()
        buffer.append(outcome)

    def when_stored(self, callback: Callable[[Sequence[Outcome]], None]) -> None:
        """Call ``callback`` with the outcomes of every batch once it is stored (or its
        writes were fenced off)."""
        self._listeners.append(callback)

    def close(self) -> None:
        """Finish: write what is buffered, then let ``run`` return."""
        self._closed = True
        self._pending.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Write batches until closed and drained. Shielded: a cancel of the service
        does not drop outcomes that are already buffered."""
        task_status.started()
        try:
            while True:
                await self._pending.wait()
                self._pending = anyio.Event()
                while self._buffer:
                    batch, self._buffer = self._buffer, []
                    with anyio.CancelScope(shield=True):
                        for start in range(0, len(batch), self._max_batch):
                            await self._write_with_retry(batch[start : start + self._max_batch])
                    for callback in self._listeners:
                        callback(batch)
                if self._closed and not self._buffer:
                    return
        finally:
            await self._db.release()

    async def _write_with_retry(self, batch: list[Outcome]) -> None:
        # One backoff for the completer's life, back at its start after each batch: a
        # new one per batch would seed a random generator at every write.
        retry = self._retry
        retry.reset()
        reported = False
        while True:
            try:
                await self._write(batch)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                if not reported:
                    self._log.warning(
                        "cannot record job outcomes yet; retrying",
                        jobs=len(batch),
                        error=redact(f"{type(exc).__name__}: {exc}"),
                    )
                    reported = True
                await retry.sleep()
            else:
                if reported:
                    self._log.info("job outcomes recorded after retrying", jobs=len(batch))
                return

    async def _write(self, batch: Sequence[Outcome]) -> None:
        try:
            await self._execute(batch)
        except (asyncpg.PostgresError, ValueError, TypeError, RecursionError) as exc:
            # ValueError, TypeError, RecursionError: the client could not encode a value
            # of the batch (asyncpg raises them before anything is sent).
            if is_transient(exc):
                raise
            await self._isolate(batch, exc)
            return
        if self._on_scheduled is not None and any(o.status == Status.SCHEDULED for o in batch):
            self._on_scheduled()

    async def _isolate(self, batch: Sequence[Outcome], exc: Exception) -> None:
        if len(batch) > 1:
            mid = len(batch) // 2
            await self._write(batch[:mid])
            await self._write(batch[mid:])
            return
        (outcome,) = batch
        if isinstance(exc, asyncpg.PostgresError):
            message = f"the database refused this job's outcome: {exc}"
        else:
            message = f"this job's outcome cannot be encoded: {type(exc).__name__}: {exc}"
        message = storable_text(redact(message))
        self._log.error("job outcome refused", job_id=outcome.job_id, error=message)
        failed = Outcome(outcome.job_id, outcome.attempt, Status.FAILED, error=message)
        await self._execute([failed])

    async def _execute(self, batch: Sequence[Outcome]) -> None:
        """Write ``batch``; once it is committed, call ``on_settled`` if that made jobs
        ready (it settled waiting jobs, or inserted children)."""
        children = [(o.job_id, c) for o in batch if o.children for c in o.children]
        if not children:
            rows = await self._db.fetch(QUERIES["job_finish_many"], *self._finish_args(batch))
            made_ready = _settled_any(rows)
        else:

            async def finish_then_insert(conn: Any) -> bool:
                rows = await conn.fetch(QUERIES["job_finish_many"], *self._finish_args(batch))
                stored = set(rows[0]["ids"] or ())
                inserted = await insert_children(conn, stored, children)
                return inserted > 0 or _settled_any(rows)

            made_ready = await self._db.transaction(finish_then_insert)
        if made_ready and self._on_settled is not None:
            self._on_settled()

    def _finish_args(self, batch: Sequence[Outcome]) -> tuple[Any, ...]:
        if all(o.status is Status.SUCCEEDED and not o.refund for o in batch):
            # The usual batch: the statement reads NULL as succeeded with nothing given
            # back, and two arrays less cost the client a third of its encoding.
            statuses: list[str] | None = None
            refunds: list[int] | None = None
        else:
            statuses = [o.status for o in batch]
            refunds = [o.refund for o in batch]
        return (
            self._worker_id,
            [o.job_id for o in batch],
            [o.attempt for o in batch],
            statuses,
            refunds,
            _nulls_as_none([o.delay for o in batch]),
            _nulls_as_none([_result_json(o) for o in batch]),
            _nulls_as_none([None if o.error is None else storable_text(o.error) for o in batch]),
        )


def _settled_any(rows: Sequence[asyncpg.Record]) -> bool:
    """Whether job_finish_many (its one row) settled waiting jobs."""
    return bool(rows) and (rows[0]["settled"] or 0) > 0


def _result_json(outcome: Outcome) -> str | None:
    """The outcome's result as JSON text (the jsonb the statement stores): as the
    executor encoded it, else encoded here. Raises what ``json.dumps`` raises for a
    result that is not JSON (the batch is then split, and the job fails alone)."""
    if outcome.result_json is not None or outcome.result is None:
        return outcome.result_json
    return encode_result_json(outcome.result)


def _nulls_as_none(values: list[Any]) -> list[Any] | None:
    """``values``, or None when they are all None: the statement reads a NULL array as
    all NULLs (unnest pads it), and encoding a long array of NULLs costs the client
    about as much as the rest of the batch (a usual batch of successes has no delays,
    results or errors)."""
    return None if all(v is None for v in values) else values
