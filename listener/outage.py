"""Logs a component's trouble with the database once per change of state.

A loop that retries a statement every second while the database is down would write a
line per attempt. Instead each loop owns an :class:`OutageLog`: the first failure is
logged (with the error), repeats are counted silently, and the first success after a
failure is logged once with how many attempts failed and for how long.
"""

from __future__ import annotations

import time
from typing import Any

from listener.redact import redact


class OutageLog:
    """Failure/recovery logging for one retrying loop."""

    def __init__(self, log: Any, what: str) -> None:
        self._log = log
        self._what = what
        self._failed_since: float | None = None
        self._failures = 0
        self._reason: str | None = None

    @property
    def failing(self) -> bool:
        """True between a failure and the next success."""
        return self._failed_since is not None

    @property
    def reason(self) -> str | None:
        """The error of the last failed attempt, on one line and redacted (None while
        not failing): what ``/readyz`` says."""
        return self._reason

    def failed(self, exc: BaseException) -> None:
        """Record a failed attempt; logs only the first of a run."""
        self._failures += 1
        self._reason = one_line(exc)
        if self._failed_since is None:
            self._failed_since = time.monotonic()
            self._log.warning(
                f"{self._what} failed; retrying until the database answers",
                error=redact(f"{type(exc).__name__}: {exc}"),
            )

    def succeeded(self) -> None:
        """Record a success; logs once when it ends a run of failures."""
        if self._failed_since is not None:
            self._log.info(
                f"{self._what} works again",
                failed_attempts=self._failures,
                seconds=round(time.monotonic() - self._failed_since, 1),
            )
        self._failed_since = None
        self._failures = 0
        self._reason = None


def one_line(exc: BaseException) -> str:
    """``exc`` as ``Type: first line of its message``, redacted: for a status line."""
    message = str(exc).strip().split("\n", 1)[0]
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return redact(text)
