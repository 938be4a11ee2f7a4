"""The loops every maintenance round runs in: a round, a wait, again, riding out the
database's transient errors.

Invariants:
- A transient database error (:func:`listener.db.is_transient`) ends one round, never
  the worker: it is recorded in the loop's :class:`~listener.outage.OutageLog` (logged
  once per change of state) and the next round tries again. Any other error propagates.
- :func:`run_rounds` runs a round every interval, each wait jittered by 20% so that
  workers started together do not all ask at once; :func:`run_paced_rounds` lets each
  round say how long to wait before the next (the promoter waits until the next job is
  due) and lets the wait end early (a wake-up).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import NoReturn

import anyio

from listener.db import is_transient
from listener.outage import OutageLog


async def _jittered_sleep(seconds: float) -> None:
    await anyio.sleep(seconds * random.uniform(0.8, 1.2))


async def run_rounds(
    interval: float, one_round: Callable[[], Awaitable[object]], outage: OutageLog
) -> NoReturn:
    """Run ``one_round`` every ``interval`` seconds, forever, the first after one
    interval. Each wait is jittered by 20% so that workers started together do not all
    ask at once. A transient database error (db.is_transient) is recorded in ``outage``
    and the next round tries again; any other error propagates."""

    async def round_then_interval() -> float:
        await one_round()
        return interval

    await _jittered_sleep(interval)
    await run_paced_rounds(round_then_interval, outage, retry_after=interval, sleep=_jittered_sleep)


async def run_paced_rounds(
    one_round: Callable[[], Awaitable[float]],
    outage: OutageLog,
    *,
    retry_after: float,
    sleep: Callable[[float], Awaitable[object]] = anyio.sleep,
    after_failure: Callable[[], Awaitable[object]] | None = None,
) -> NoReturn:
    """Run ``one_round`` now and forever after; each round returns the seconds to wait
    before the next (none when not positive), waited with ``sleep`` (a wake's ``wait``
    ends it early). A transient database error (db.is_transient) is recorded in
    ``outage``, then ``after_failure`` runs (to drop a broken connection, say) and the
    next round comes ``retry_after`` seconds later; any other error propagates."""
    while True:
        try:
            wait = await one_round()
        except Exception as exc:
            if not is_transient(exc):
                raise
            outage.failed(exc)
            if after_failure is not None:
                await after_failure()
            wait = retry_after
        else:
            outage.succeeded()
        if wait > 0:
            await sleep(wait)
