"""Exceptions: the closed set of handler outcomes, and the worker's own errors.

Handler outcomes (re-exported by :mod:`listener.api`):

- return a value            -> ``succeeded``, the value stored as the job's result
- raise ``Retry(delay)``     -> counts an attempt; runs again after ``delay`` seconds (or
                               the backoff) unless attempts are used up, then ``failed``
- raise ``Snooze(delay)``    -> runs again after ``delay`` seconds; no attempt is used
- raise ``Cancel(reason)``   -> ``cancelled`` at once, never retried
- raise ``PermanentError``   -> ``failed`` at once, never retried
- raise anything else        -> a failure: retried with backoff up to ``max_attempts``

Worker errors carry an exit code so the CLI can tell a person what to do.
"""

from __future__ import annotations


class JobOutcome(Exception):  # noqa: N818 - these are outcomes, not error conditions
    """Base of the exceptions a handler raises to choose its job's outcome."""


class Retry(JobOutcome):
    """Run the job again after ``delay`` seconds (default: exponential backoff)."""

    def __init__(self, reason: str = "retry requested", *, delay: float | None = None) -> None:
        if delay is not None and delay < 0:
            raise ValueError("Retry delay must be >= 0 seconds")
        super().__init__(reason)
        self.delay = delay


class Snooze(JobOutcome):
    """Run the job again after ``delay`` seconds without using up an attempt."""

    def __init__(self, delay: float, reason: str = "snoozed") -> None:
        if delay < 0:
            raise ValueError("Snooze delay must be >= 0 seconds")
        super().__init__(reason)
        self.delay = delay


class Cancel(JobOutcome):
    """Stop the job for good: status ``cancelled``, no retry."""


class PermanentError(Exception):
    """A failure that retrying cannot fix: status ``failed`` at once, no retry."""


class ConfigurationError(PermanentError):
    """The job cannot run because of how it or its handler is configured
    (for example an unknown kind): failed at once, no retry."""


class PgwakeError(Exception):
    """An error that stops the worker or a CLI command, with an exit code."""

    exit_code = 1


class ConfigError(PgwakeError):
    """Bad configuration: the worker refuses to start."""

    exit_code = 3


class DatabaseUnavailableError(PgwakeError):
    """The database cannot be reached (a command exits 4). ``transient``: the cause is
    one the worker waits out (db.is_transient: the server away, the database missing,
    authentication refused), not a setting of its own."""

    exit_code = 4

    def __init__(self, message: str, *, transient: bool = True) -> None:
        super().__init__(message)
        self.transient = transient


class SchemaMismatchError(PgwakeError):
    """The database schema is not the one this pgwake knows."""

    exit_code = 5
