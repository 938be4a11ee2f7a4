"""Garbage-collector settings for the long-running worker.

A busy worker allocates a few short-lived objects per job (records, events, log
entries) and almost never makes reference cycles. With CPython's defaults a full
collection walks every object the process holds (modules, handlers, pools) every
few thousand jobs, which shows as pauses of 10 ms and more in the event loop: a job
enqueued during one waits that long to be claimed.

Invariants:
- ``tune()`` is called once, after start-up, so that everything allocated up to
  then (imports, settings, pools) moves to the permanent generation and is never
  walked again (``gc.freeze``). It does not collect first: a full collection there
  cost start-up 15-40 ms to free the few hundred objects of cycles that imports leave
  (about 900, a few hundred kB, kept for the life of the process instead).
- Collection stays on: cycles are still found, only less often (a young-generation
  threshold of 50,000 allocations instead of 700). ``pgwake run`` starts with the
  collector off (listener/cli/quick.py: a sixth of its start went to collections of
  import-time objects that are frozen here anyway); ``tune()`` turns it on, and so
  does ``collect_while_waiting()`` when the start has to wait for the database.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 50_000


def tune() -> None:
    """Freeze what start-up allocated and collect the young generation less often."""
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
    gc.enable()


def collect_while_waiting() -> None:
    """The start waits for the database: collect as usual meanwhile (a long wait makes
    cycles of its own, one failed attempt after another)."""
    gc.enable()
