"""``workflow``: a DAG of jobs that handlers enqueue, beside a plain drain of as many.

One job (``bench.dag_root``) enqueues, with its outcome, ``width`` middle jobs, ``width``
leaves depending on each (``width`` x ``width``: 10,000 by default) and a final job
depending on every leaf, which reads all their results (``bench.dag_final``). One
worker with the default settings runs it. The drain beside it is the same number of
no-op jobs of one tenant inserted in one statement, run by the same worker settings.
Reports each one's seconds (first claim to last finish, database clock) and jobs/s,
interleaved run by run, medians over the runs.

Invariant: both runs have the same job count, tenant layout (one tenant) and worker
settings, so the ratio is the cost of the dependencies and of enqueuing from handlers.
"""

from __future__ import annotations

from dataclasses import dataclass

from listener import db
from listener.cli.bench.common import (
    BENCH_HANDLERS,
    bench_database,
    median_run,
    wait_queue_empty,
    worker_processes,
)
from listener.cli.bench.queries import BENCH_QUERIES
from listener.errors import PgwakeError


@dataclass(frozen=True, slots=True)
class WorkflowRun:
    """The DAG's drain beside a plain drain of as many jobs."""

    jobs: int
    workflow_seconds: float
    workflow_jobs_per_s: float
    plain_seconds: float
    plain_jobs_per_s: float


async def _drain(server_dsn: str, *, width: int, dag: bool) -> tuple[int, float]:
    """Jobs and seconds of one drain: the DAG of ``width``, or as many plain jobs."""
    jobs = width + width * width + 2
    async with bench_database(server_dsn) as dsn, worker_processes(dsn, handlers=BENCH_HANDLERS):
        conn = await db.connect(dsn)
        try:
            if dag:
                await conn.execute(BENCH_QUERIES["job_enqueue_dag_root"], width)
            else:
                await conn.execute(BENCH_QUERIES["job_enqueue_spread"], 0, jobs, 1)
            await wait_queue_empty(conn, timeout=600)
            rows = await conn.fetch(BENCH_QUERIES["job_count_by_status"])
            counts = {r["status"]: r["jobs"] for r in rows}
            seconds: float = await conn.fetchval(BENCH_QUERIES["job_measure_drain"])
        finally:
            await conn.close()
    if counts != {"succeeded": jobs}:
        raise PgwakeError(f"the {'DAG' if dag else 'drain'} did not all succeed: {counts}")
    return jobs, seconds


async def workflow(server_dsn: str, *, width: int, repeat: int) -> list[WorkflowRun]:
    """``repeat`` rounds, each a DAG drain then a plain one; one row of medians."""
    runs = []
    for _ in range(repeat):
        jobs, dag_seconds = await _drain(server_dsn, width=width, dag=True)
        _, plain_seconds = await _drain(server_dsn, width=width, dag=False)
        runs.append(
            WorkflowRun(
                jobs=jobs,
                workflow_seconds=round(dag_seconds, 3),
                workflow_jobs_per_s=round(jobs / dag_seconds),
                plain_seconds=round(plain_seconds, 3),
                plain_jobs_per_s=round(jobs / plain_seconds),
            )
        )
    return [median_run(runs)]


def render_workflow(runs: list[WorkflowRun]) -> str:
    """Workflow figures as a table."""
    lines = [f"{'jobs':>6} {'dag s':>7} {'dag jobs/s':>10} {'plain s':>7} {'plain jobs/s':>12}"]
    lines += [
        f"{r.jobs:>6} {r.workflow_seconds:>7g} {r.workflow_jobs_per_s:>10g} "
        f"{r.plain_seconds:>7g} {r.plain_jobs_per_s:>12g}"
        for r in runs
    ]
    return "\n".join(lines)
