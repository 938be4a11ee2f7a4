"""Runs one attempt of one job and maps how it ended to an :class:`Outcome`.

Invariants:
- Exactly one outcome per attempt that ends on its own (return, raise, timeout); an
  attempt cancelled from outside (shutdown after the drain timeout) produces none, and
  the job is put back by the service.
- The handler is never re-run inside the process: a retry is a new attempt, claimed
  again from the database after its backoff.
- Invalid payloads (including one Python cannot decode: db.UndecodableJson), unknown
  kinds, ``PermanentError`` and results that are not JSON (or nested too deep to
  encode) fail the job at once; other exceptions and timeouts retry until
  ``max_attempts``.
- Nothing a handler raises leaves the executor except the cancellation the worker itself
  asked for (a timeout, a cancel request, the end of the drain: the task has a pending
  cancellation request). ``KeyboardInterrupt``, ``SystemExit``, ``GeneratorExit``, any
  other ``BaseException`` and a ``CancelledError`` nobody requested are the job's failure
  like any exception (attempt counted, retried until ``max_attempts``); the worker goes
  on.
- ``execute`` enforces the job's timeout itself; ``attempt`` leaves it to the caller
  (the claimer's runners hold one cancel scope each for all their jobs, which is much
  cheaper than a scope per job) and ``timed_out`` is the outcome it then records.
- Only a succeeded outcome carries the jobs the handler enqueued (``ctx.enqueue``); any
  other outcome drops them, so they are never created.
- An outcome made after the handler ran carries the records it reported
  (``ctx.add_records``; None when it reported none, and on a timeout).
- While the handler runs, and while the executor logs its start and how it ended
  (listener/joblog.py: every outcome, also a timeout or a cancel request that stopped
  it), ``CURRENT_JOB`` names the job (``jobs.job_context``), so every line logged then,
  through ``ctx.log`` or any other logger, carries the job's id, tenant, kind and
  attempt.
"""

from __future__ import annotations

import asyncio
import json
import time
import traceback
from collections.abc import Callable
from functools import partial
from typing import Any

import anyio
import asyncpg
import structlog
from pydantic import ValidationError
from structlog.typing import FilteringBoundLogger

from listener.children import Children
from listener.context import JobContext, TenantConnections
from listener.db import UndecodableJson
from listener.errors import Cancel, ConfigurationError, PermanentError, Retry, Snooze
from listener.joblog import JobLog
from listener.jobs import CURRENT_JOB, Job, Outcome, Status, job_context
from listener.progress import ProgressSink
from listener.redact import redact
from listener.registry import Handler, Registry
from listener.retry import Backoff

# last_error keeps the message and the end of the traceback, not megabytes of it.
MAX_ERROR_CHARS = 8000
# Results larger than this fail the job with a clear error instead of bloating the row.
MAX_RESULT_BYTES = 1_048_576
# What json.dumps(result, allow_nan=False) does, made once: json.dumps builds a new
# encoder for every call with an option.
RESULT_ENCODER = json.JSONEncoder(allow_nan=False)


def _make_result_encoder() -> Callable[[Any], str]:
    """``RESULT_ENCODER.encode``, or where CPython's C encoder is there, the same
    encoding made once: ``encode`` builds that encoder again at every call, which costs
    more than encoding a small result. It checks no cycles (a cyclic result raises
    RecursionError, as one nested too deep does) and gives the same text."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return RESULT_ENCODER.encode
    chunks = make(
        None,  # no cycle markers
        RESULT_ENCODER.default,
        json.encoder.encode_basestring_ascii,
        None,  # no indent
        RESULT_ENCODER.key_separator,
        RESULT_ENCODER.item_separator,
        False,  # sort_keys
        False,  # skipkeys
        False,  # allow_nan
    )

    def encode(result: Any) -> str:
        return "".join(chunks(result, 0))

    return encode


encode_result_json = _make_result_encoder()


def _describe(exc: BaseException, *, with_traceback: bool, base: bool = False) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if base:
        text += " (a BaseException raised by the handler; the worker went on)"
    if with_traceback:
        tb = "".join(traceback.format_exception(exc)).rstrip()
        text = f"{text}\n{tb}"
    text = redact(text)
    if len(text) > MAX_ERROR_CHARS:
        text = text[: MAX_ERROR_CHARS // 2] + "\n...\n" + text[-MAX_ERROR_CHARS // 2 :]
    return text


def _cancelled_by_worker(exc: BaseException) -> bool:
    """True when ``exc`` is the cancellation the worker asked for (a cancel scope around
    the handler was cancelled: its task has a pending cancellation request), which must
    propagate; False for a ``CancelledError`` the handler raised on its own."""
    if not isinstance(exc, anyio.get_cancelled_exc_class()):
        return False
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


def _encode_result(result: Any) -> tuple[str | None, str | None]:
    """``result`` as the JSON text to store (None for no result) and None, or None and
    why it cannot be stored. The text is what the completer writes: a result is encoded
    once."""
    if result is None:
        return None, None
    try:
        encoded = encode_result_json(result)
    except (TypeError, ValueError) as exc:
        return None, f"the handler's result is not JSON: {exc}"
    except RecursionError:
        return None, "the handler's result is nested too deep to encode as JSON"
    if "\\u0000" in encoded:
        return None, "the handler's result contains a NUL character, which jsonb cannot store"
    if len(encoded) > MAX_RESULT_BYTES:
        return None, (
            f"the handler's result is {len(encoded)} bytes of JSON, "
            f"more than the {MAX_RESULT_BYTES} allowed"
        )
    return encoded, None


def _requeue_status(delay: float) -> Status:
    """A job that runs again later is scheduled; one that may run now is queued."""
    return Status.SCHEDULED if delay > 0 else Status.QUEUED


class Executor:
    """Runs jobs with the registry's handlers."""

    def __init__(
        self,
        registry: Registry,
        backoff: Backoff,
        databases: TenantConnections | None = None,
        progress: ProgressSink | None = None,
        *,
        pool: asyncpg.Pool | None = None,
        children: Callable[[Job], Children] | None = None,
        log_jobs: bool = True,
        log_jobs_per_second: int = 0,
        dry_run: bool = False,
    ) -> None:
        self._registry = registry
        # For the jobs handlers enqueue and the dependencies they read (None: neither):
        # ``children`` when given (pgwake exec, listener.testing), else on ``pool``.
        if children is None and pool is not None:
            children = partial(Children, pool)
        self._children = children
        self._backoff = backoff
        self._databases = databases
        self._progress = progress
        self._dry_run = dry_run
        # logs.configure makes structlog's wrapper class a FilteringBoundLogger.
        self._log: FilteringBoundLogger = structlog.get_logger().bind(logger="executor")
        self._job_log = JobLog(enabled=log_jobs, per_second=log_jobs_per_second)

    def _failure(self, job: Job, error: str, delay: float | None = None) -> Outcome:
        """A failed attempt: retried after a backoff unless attempts are used up."""
        if job.attempt >= job.max_attempts:
            return Outcome(job.id, job.attempt, Status.FAILED, error=error)
        wait = self._backoff.delay(job.attempt) if delay is None else delay
        return Outcome(job.id, job.attempt, _requeue_status(wait), delay=wait, error=error)

    async def execute(self, job: Job) -> Outcome:
        """Run ``job`` once, within its timeout, and return how it ended."""
        started = time.monotonic()
        with anyio.move_on_after(job.timeout):
            return await self.attempt(job)
        return self.timed_out(job, started)

    async def attempt(self, job: Job) -> Outcome:
        """Run ``job`` once and return how it ended. The caller enforces the job's
        timeout (and records ``timed_out`` when it strikes); a cancellation from outside
        propagates. One coroutine around the handler's (it runs for every job): what
        comes before the handler and how its end maps to an outcome are plain calls."""
        job_log = self._job_log
        # job_context(job), inlined: this runs for every job.
        token = CURRENT_JOB.set(job)
        try:
            job_log.started(job)
            started = time.monotonic()
            ready = self._prepare(job)
            if isinstance(ready, Outcome):
                outcome = ready
            else:
                handler, payload, ctx = ready
                try:
                    result = await handler.fn(payload, ctx)
                    reporter = ctx.progress_reporter  # made if the handler reported
                    if reporter is not None and reporter.pending:
                        await reporter.flush()  # the last progress reported, before the outcome
                except BaseException as exc:  # noqa: BLE001 - mapped to the job's outcome
                    outcome = self._raised(job, exc)
                else:
                    outcome = _returned(job, result)
                outcome.records = ctx.records
                children = ctx.children
                if outcome.status == Status.SUCCEEDED and children and children.enqueued:
                    outcome.children = children.enqueued
            job_log.ended(outcome, started)
        finally:
            CURRENT_JOB.reset(token)
        return outcome

    def timed_out(self, job: Job, started: float) -> Outcome:
        """The outcome of an attempt, started at ``started`` (``time.monotonic()``),
        that ran past the job's timeout."""
        outcome = self._failure(job, f"TimeoutError: job timed out after {job.timeout:g}s")
        with job_context(job):
            self._job_log.ended(outcome, started)
        return outcome

    def cancelled(self, job: Job, started: float) -> Outcome:
        """The outcome of an attempt, started at ``started``, stopped on a cancel
        request while it ran."""
        outcome = Outcome(
            job.id, job.attempt, Status.CANCELLED, error="cancelled: requested while running"
        )
        with job_context(job):
            self._job_log.ended(outcome, started)
        return outcome

    def _prepare(self, job: Job) -> tuple[Handler, Any, JobContext] | Outcome:
        """The handler, payload and context to run ``job`` with, or the failed outcome
        of a job that cannot run (no handler for its kind, or a payload that is not
        one)."""
        handler = self._registry.get(job.kind)
        if handler is None:
            error = ConfigurationError(f"no handler for kind {job.kind!r} in this worker")
            return Outcome(
                job.id, job.attempt, Status.FAILED, error=_describe(error, with_traceback=False)
            )
        payload, refused = _parse_payload(handler, job)
        if refused is not None:
            return refused
        ctx = JobContext(
            job,
            self._log,
            databases=self._databases,
            progress=self._progress,
            dry_run=self._dry_run,
            children=self._children,
        )
        return handler, payload, ctx

    def _raised(self, job: Job, exc: BaseException) -> Outcome:
        """The outcome of a handler that raised ``exc``; re-raises the cancellation the
        worker itself asked for."""
        if isinstance(exc, Snooze):
            return Outcome(
                job.id, job.attempt, _requeue_status(exc.delay), refund=1, delay=exc.delay
            )
        if isinstance(exc, Cancel):
            return Outcome(job.id, job.attempt, Status.CANCELLED, error=f"cancelled: {exc}")
        if isinstance(exc, Retry):
            return self._failure(job, _describe(exc, with_traceback=False), exc.delay)
        if isinstance(exc, PermanentError):
            return Outcome(
                job.id, job.attempt, Status.FAILED, error=_describe(exc, with_traceback=True)
            )
        if isinstance(exc, Exception):
            return self._failure(job, _describe(exc, with_traceback=True))
        if _cancelled_by_worker(exc):
            raise exc
        # KeyboardInterrupt, SystemExit, GeneratorExit, a BaseException subclass of the
        # handler's own: left to propagate, each would end the worker and put the job
        # back for the next worker to die of.
        return self._failure(job, _describe(exc, with_traceback=True, base=True))


def _returned(job: Job, result: Any) -> Outcome:
    """The outcome of a handler that returned ``result``: succeeded, or failed when the
    result cannot be stored."""
    encoded, problem = _encode_result(result)
    if problem is not None:
        return Outcome(job.id, job.attempt, Status.FAILED, error=problem)
    return Outcome(job.id, job.attempt, Status.SUCCEEDED, result=result, result_json=encoded)


def _parse_payload(handler: Handler, job: Job) -> tuple[Any, Outcome | None]:
    """The handler's payload for ``job``, or the failed outcome of a payload that is not
    one (undecodable, invalid for the handler's model, or nested too deep to validate)."""
    if isinstance(job.payload, UndecodableJson):
        error = f"invalid payload for {job.kind!r}: {job.payload.reason}"
        return None, Outcome(job.id, job.attempt, Status.FAILED, error=error)
    try:
        return handler.parse_payload(job.payload), None
    except ValidationError as exc:
        error = redact(f"invalid payload for {job.kind!r}: {exc}")[:MAX_ERROR_CHARS]
    except RecursionError:
        error = f"invalid payload for {job.kind!r}: nested too deep to validate"
    return None, Outcome(job.id, job.attempt, Status.FAILED, error=error)
