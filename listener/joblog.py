"""The log lines of each job: one when it starts, one when it ends.

Invariants:
- Every attempt that ends with an outcome is logged once at its end, with its
  ``outcome`` (the label of listener/jobs.py: succeeded, failed, retried, snoozed,
  cancelled) and ``duration_seconds`` (from the handler's start to its end, measured on
  the monotonic clock), and ``records`` when the handler reported some
  (``ctx.add_records``; no field when it reported none). The level says what the
  operator must do about it:
  - ``failed`` (out of attempts, or a failure that is never retried) at **error**,
    with the first line of the error in ``error`` and the traceback, when there is one,
    in ``exception``;
  - ``retried`` at **warning**, with the error's first line and the ``delay``;
  - ``succeeded``, ``snoozed`` and ``cancelled`` at info.
- The start of each attempt is logged at info, with how long the job waited since it
  was due (``wait_seconds``).
- ``log_jobs = false`` silences the info lines (starts, successes, snoozes and
  cancellations); failures and retries are logged whatever it says. ``log_level``
  filters them all like any other line. When silenced, a job costs one attribute test,
  nothing else: at thousands of jobs a second the lines are a large part of the
  worker's own work (docs/operations.md, "Logs", gives the figures).
- The caller logs in the job's context (``jobs.job_context``), so every line carries
  the job's id, tenant, kind and attempt; this module adds none of them itself.
"""

from __future__ import annotations

import time

import structlog
from structlog.typing import FilteringBoundLogger

from listener.jobs import Job, Outcome

# Durations are logged to the microsecond; more digits are noise.
_DIGITS = 6


def split_error(error: str) -> tuple[str, str | None]:
    """The first line of a stored error, and the rest (a traceback, a validation
    error's details), or None when there is no rest."""
    head, _, rest = error.partition("\n")
    return head, (rest or None)


class JobLog:
    """Writes the start and end lines of jobs (see the module docstring)."""

    __slots__ = ("_log", "enabled")

    def __init__(self, *, enabled: bool = True) -> None:
        # enabled: the info lines are written (the setting log_jobs).
        self.enabled = enabled
        # logs.configure makes structlog's wrapper class a FilteringBoundLogger.
        self._log: FilteringBoundLogger = structlog.get_logger().bind(logger="executor")

    def started(self, job: Job) -> None:
        """``job``'s handler starts now."""
        if self.enabled:
            wait = (job.started_at - job.run_at).total_seconds()
            self._log.info("job started", wait_seconds=round(max(wait, 0.0), _DIGITS))

    def ended(self, outcome: Outcome, started: float) -> None:
        """The attempt that started at ``started`` (``time.monotonic()``) ended with
        ``outcome``."""
        label = outcome.label
        # The records the handler reported (ctx.add_records), on every end line that has
        # them; none when it reported nothing.
        records: dict[str, object] = {} if outcome.records is None else {"records": outcome.records}
        if label == "succeeded":
            if self.enabled:
                self._log.info(
                    "job succeeded",
                    outcome=label,
                    duration_seconds=round(time.monotonic() - started, _DIGITS),
                    **records,
                )
            return
        duration = round(time.monotonic() - started, _DIGITS)
        head, rest = split_error(outcome.error or "")
        if label == "failed":
            fields: dict[str, object] = {"error": head, **records}
            if rest is not None:
                fields["exception" if rest.startswith("Traceback") else "detail"] = rest
            self._log.error("job failed", outcome=label, duration_seconds=duration, **fields)
        elif label == "retried":
            self._log.warning(
                "job will retry",
                outcome=label,
                duration_seconds=duration,
                delay=outcome.delay,
                error=head,
                **records,
            )
        elif self.enabled:
            fields = {"delay": outcome.delay} if label == "snoozed" else {"error": head}
            fields.update(records)
            self._log.info(f"job {label}", outcome=label, duration_seconds=duration, **fields)
