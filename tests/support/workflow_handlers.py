"""Handlers that fan out and fan in (issue 19), for tests/test_workflows.py, in worker
processes (``--handlers tests.support.workflow_handlers``) or in process
(:func:`workflow_registry`).

``fan_out`` enqueues ``children`` jobs ``fan_child`` and a final ``fan_in`` that depends
on them all; ``fan_in`` reads their results and records its run in ``test_fan_in_runs``
(no key: a second run would show as a second row). The table is created by the test
(:func:`create_runs_table`); the DSN comes from PGWAKE_DSN, as for the worker itself
(an in-process test sets it).
"""

from __future__ import annotations

import os
from typing import Any

import anyio
import asyncpg

from listener.api import JobContext, PermanentError, Registry, Retry, handler

# The value of --handlers for a worker process that loads this module.
WORKFLOW = "tests.support.workflow_handlers"


async def create_runs_table(conn: asyncpg.Connection) -> None:
    """The table ``fan_in`` records its runs in."""
    await conn.execute(
        "CREATE TABLE test_fan_in_runs (job_id bigint NOT NULL, attempt int NOT NULL, "
        "pid int NOT NULL, seen int NOT NULL, failed bigint[] NOT NULL, "
        "at timestamptz NOT NULL DEFAULT clock_timestamp())"
    )


async def fan_out(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Enqueue ``children`` fan_child jobs (``fail_child``: the index of one that fails
    for good; ``child_sleep``: seconds each runs; ``child_attempts``: their
    max_attempts) and a fan_in job depending on them all (``run_anyway``). With
    ``fail_first_attempt``, the first attempt enqueues them and then fails, naming the
    ids it reserved."""
    children = []
    for i in range(payload["children"]):
        child = {"i": i, "sleep": payload.get("child_sleep", 0.0)}
        child["fail"] = i == payload.get("fail_child")
        attempts = payload.get("child_attempts", 3)
        children.append(await ctx.enqueue("fan_child", child, max_attempts=attempts))
    final = await ctx.enqueue(
        "fan_in", {}, depends_on=children, run_anyway=payload.get("run_anyway", False)
    )
    if payload.get("fail_first_attempt") and ctx.attempt == 1:
        raise Retry(f"attempt 1 reserved {[*children, final]}", delay=0.05)
    return {"children": children, "final": final}


async def fan_child(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Sleep ``sleep`` seconds; fail for good when ``fail``; else return ``i`` squared."""
    await anyio.sleep(payload["sleep"])
    if payload["fail"]:
        raise PermanentError(f"child {payload['i']} fails")
    return {"i": payload["i"], "square": payload["i"] ** 2}


async def fan_in(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Read the dependencies' results, record this run, and sum what succeeded."""
    results = await ctx.dependency_results()
    failed = sorted(job_id for job_id, r in results.items() if r.status != "succeeded")
    total = sum(r.result["square"] for r in results.values() if r.status == "succeeded")
    conn = await asyncpg.connect(os.environ["PGWAKE_DSN"])
    try:
        await conn.execute(
            "INSERT INTO test_fan_in_runs (job_id, attempt, pid, seen, failed) "
            "VALUES ($1, $2, $3, $4, $5)",
            ctx.job.id,
            ctx.attempt,
            os.getpid(),
            len(results),
            failed,
        )
    finally:
        await conn.close()
    return {"seen": len(results), "failed": failed, "sum": total}


HANDLERS = {"fan_out": fan_out, "fan_child": fan_child, "fan_in": fan_in}
for _kind, _fn in HANDLERS.items():
    handler(_kind)(_fn)


def workflow_registry() -> Registry:
    """A registry with these handlers, for an in-process worker."""
    registry = Registry()
    for kind, fn in HANDLERS.items():
        registry.register(kind, fn)
    return registry
