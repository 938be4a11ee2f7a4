"""Job kinds only the benchmarks use; their workers import this module
(``PGWAKE_HANDLERS=listener.cli.bench.handlers``), no other worker does.

- ``bench.dag_root`` enqueues a DAG (fan-out x fan-out, then fan-in) with its outcome,
  and ``bench.dag_final``, its fan-in, reads every result (the workflow workload).
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


DAG_ROOT = "bench.dag_root"
DAG_FINAL = "bench.dag_final"


@handler(DAG_ROOT)
async def dag_root(payload: dict[str, Any], ctx: JobContext) -> dict[str, int]:
    """Enqueue a DAG with its outcome: ``width`` middle jobs (``noop``), ``width`` leaves
    (``noop``) depending on each of them, and one ``bench.dag_final`` depending on every
    leaf: fan-out of ``width`` x fan-out of ``width``, then fan-in."""
    width = int(payload["width"])
    leaves = []
    for _ in range(width):
        middle = await ctx.enqueue("noop", {})
        leaves += [await ctx.enqueue("noop", {}, depends_on=[middle]) for _ in range(width)]
    final = await ctx.enqueue(DAG_FINAL, {}, depends_on=leaves)
    return {"final": final, "jobs": width + width * width + 1}


@handler(DAG_FINAL)
async def dag_final(payload: dict[str, Any], ctx: JobContext) -> dict[str, int]:
    """Read how every job this one depends on ended; return how many succeeded."""
    results = await ctx.dependency_results()
    return {"succeeded": sum(r.status == "succeeded" for r in results.values())}
