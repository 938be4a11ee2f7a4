"""Logs a component's trouble with the database once per change of state, and runs the
maintenance rounds that ride such trouble out.

A loop that retries a statement every second while the database is down would write a
line per attempt. Instead each loop owns an :class:`OutageLog`: the first failure is
logged (with the error), repeats are counted silently, and the first success after a
failure is logged once with how many attempts failed and for how long.
:func:`run_rounds` is that loop for the maintenance rounds (recovery, retention,
schedules): a transient database error ends one round, never the worker.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import anyio

from listener.db import is_transient
from listener.redact import redact


class OutageLog:
    """Failure/recovery logging for one retrying loop."""

    def __init__(self, log: Any, what: str) -> None:
        self._log = log
        self._what = what
        self._failed_since: float | None = None
        self._failures = 0

    @property
    def failing(self) -> bool:
        """True between a failure and the next success."""
        return self._failed_since is not None

    def failed(self, exc: BaseException) -> None:
        """Record a failed attempt; logs only the first of a run."""
        self._failures += 1
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


async def run_rounds(
    interval: float, one_round: Callable[[], Awaitable[object]], outage: OutageLog
) -> NoReturn:
    """Run ``one_round`` every ``interval`` seconds, forever. Each wait is jittered by
    20% so that workers started together do not all ask at once. A transient database
    error (db.is_transient) is recorded in ``outage`` and the next round tries again;
    any other error propagates."""
    while True:
        await anyio.sleep(interval * random.uniform(0.8, 1.2))
        try:
            await one_round()
        except Exception as exc:
            if not is_transient(exc):
                raise
            outage.failed(exc)
        else:
            outage.succeeded()
