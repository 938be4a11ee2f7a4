"""The loop every maintenance round runs in: a round each interval, jittered, riding out
the database's transient errors.

Invariants:
- A transient database error (:func:`listener.db.is_transient`) ends one round, never
  the worker: it is recorded in the loop's :class:`~listener.outage.OutageLog` (logged
  once per change of state) and the next round tries again. Any other error propagates.
- Waits are jittered by 20% so that workers started together do not all ask at once.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import NoReturn

import anyio

from listener.db import is_transient
from listener.outage import OutageLog


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
