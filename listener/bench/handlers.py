"""Job kinds only the benchmarks use; their workers import this module
(``PGWAKE_HANDLERS=listener.bench.handlers``), no other worker does.

- ``bench.started`` returns the wall-clock time (``time.time()``) at which its handler
  started, so the latency workload can compare it with the producer's clock at commit
  (both processes on the same host, the same clock).
"""

from __future__ import annotations

import time
from typing import Any

from listener.api import JobContext, handler

STARTED = "bench.started"


@handler(STARTED)
async def started(payload: dict[str, Any], ctx: JobContext) -> dict[str, float]:
    """Return when this handler started."""
    return {"started": time.time()}
