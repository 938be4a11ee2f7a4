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
  cancellations); failures and retries are logged whatever it says.
- At most ``log_jobs_per_second`` info lines are written in each second (0: no limit);
  the lines left out beyond it are counted, and one line (``job lines left out``) at
  the end of that second gives their number by event, so a worker that runs thousands
  of jobs a second does not spend most of its time writing lines nobody reads, and the
  reader knows what is missing. Failures and retries are never left out. ``log_level``
  filters them all like any other line. When silenced, a job costs one attribute test,
  nothing else: at thousands of jobs a second the lines are a large part of the
  worker's own work (docs/operations.md, "Logs", gives the figures).
- The caller logs in the job's context (``jobs.job_context``), so every line carries
  the job's id, tenant, kind and attempt; this module adds none of them itself.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections import Counter

import structlog
from structlog.typing import FilteringBoundLogger

from listener.jobs import Job, Outcome
from listener.logs import HotLogger

# Durations are logged to the microsecond; more digits are noise.
_DIGITS = 6


def split_error(error: str) -> tuple[str, str | None]:
    """The first line of a stored error, and the rest (a traceback, a validation
    error's details), or None when there is no rest."""
    head, _, rest = error.partition("\n")
    return head, (rest or None)


class JobLog:
    """Writes the start and end lines of jobs (see the module docstring)."""

    __slots__ = ("_hot", "_left_out", "_log", "_per_second", "_window_end", "_written", "enabled")

    def __init__(self, *, enabled: bool = True, per_second: int = 0) -> None:
        # enabled: the info lines are written (the setting log_jobs); per_second: at most
        # this many in one second (log_jobs_per_second; 0: no limit).
        self.enabled = enabled
        self._per_second = per_second
        # logs.configure makes structlog's wrapper class a FilteringBoundLogger.
        self._log: FilteringBoundLogger = structlog.get_logger().bind(logger="executor")
        # The info lines of every job, rendered without the stdlib record (listener/logs.py).
        self._hot = HotLogger("executor")
        # The current second (its end, on the monotonic clock), the info lines written
        # in it, and those left out, by event.
        self._window_end = 0.0
        self._written = 0
        self._left_out: Counter[str] = Counter()

    def _admit(self, event: str) -> bool:
        """True: write this info line now; False: it is left out (and counted)."""
        if not self.enabled:
            return False
        if not self._per_second:
            return True
        now = time.monotonic()
        if now >= self._window_end:
            self._window_end, self._written = now + 1.0, 0
        if self._written < self._per_second:
            self._written += 1
            return True
        if not self._left_out:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no event loop (a test calling it directly): at once
                self._left_out[event] += 1
                self._report_left_out()
                return False
            loop.call_later(self._window_end - now, self._report_left_out)
        self._left_out[event] += 1
        return False

    def _report_left_out(self) -> None:
        """The line that says how many info lines the second that ended left out. Logged
        outside any job's context (it is about many jobs)."""
        left_out, self._left_out = self._left_out, Counter()
        contextvars.Context().run(
            self._log.info,
            "job lines left out",
            per_second=self._per_second,
            **{event.replace(" ", "_"): count for event, count in sorted(left_out.items())},
        )

    def started(self, job: Job) -> None:
        """``job``'s handler starts now."""
        if self._hot.info_enabled and self._admit("job started"):
            self._hot.info("job started", wait_seconds=round(job.waited, _DIGITS))

    def ended(self, outcome: Outcome, started: float) -> None:
        """The attempt that started at ``started`` (``time.monotonic()``) ended with
        ``outcome``."""
        label = outcome.label
        if label == "succeeded" and not self._hot.info_enabled:
            return  # the one line it would write is dropped: build nothing
        # The records the handler reported (ctx.add_records), on every end line that has
        # them; none when it reported nothing.
        records: dict[str, object] = {} if outcome.records is None else {"records": outcome.records}
        if label == "succeeded":
            if self._admit("job succeeded"):
                self._hot.info(
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
        elif self._admit(f"job {label}"):
            fields = {"delay": outcome.delay} if label == "snoozed" else {"error": head}
            fields.update(records)
            self._log.info(f"job {label}", outcome=label, duration_seconds=duration, **fields)
