"""Job kinds only the benchmarks use; their workers import this module
(``PGWAKE_HANDLERS=listener.cli.bench.handlers``), no other worker does.

- ``bench.started`` returns the wall-clock time (``time.time()``) at which its handler
  started, then sleeps ``seconds`` (payload, default 0), so the latency and fairness
  workloads can compare it with the producer's clock at commit (both processes on the
  same host, the same clock).
"""

from __future__ import annotations

import time
from typing import Any

import anyio

from listener.api import JobContext, handler

STARTED = "bench.started"


@handler(STARTED)
async def started(payload: dict[str, Any], ctx: JobContext) -> dict[str, float]:
    """Note when this handler started, sleep ``payload["seconds"]`` (if given), and
    return the start."""
    began = time.time()
    seconds = float(payload.get("seconds", 0))
    if seconds > 0:
        await anyio.sleep(seconds)
    return {"started": began}
