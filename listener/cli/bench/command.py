"""``pgwake bench``: the command, its options, and the summary against the targets.

Invariants:
- Every workload runs in databases of its own (see common.py); the command only picks
  the workloads, passes their options and prints the results: a table per workload and
  a summary, or with ``--json`` one JSON object with a list of rows per workload (and
  the summary).
- An unknown workload exits 2 before anything connects.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer

from listener import logs
from listener.cli.options import Database, database_options
from listener.cli.support import fail, guard, run_async

WORKLOADS = (
    "drain",
    "latency",
    "fairness",
    "enqueue",
    "ceiling",
    "scale",
    "claim",
    "retention",
    "recovery",
    "warm-start",
    "defaults",
    "mixed",
    "foreign-kinds",
    "workflow",
    "chain",
)


@database_options
def bench_cmd(
    workloads: Annotated[
        list[str] | None,
        typer.Argument(
            help=f"Workloads to run: {', '.join(WORKLOADS)} (default: all).",
            show_default=False,
        ),
    ] = None,
    repeat: Annotated[
        int,
        typer.Option(min=1, help="Runs (or rounds) of each workload; medians are shown."),
    ] = 3,
    jobs: Annotated[
        int, typer.Option(min=1, help="drain, scale, ceiling: no-op jobs to drain.")
    ] = 20_000,
    drain_tenants: Annotated[
        int, typer.Option(min=1, help="drain, scale, ceiling: tenants the jobs are spread over.")
    ] = 10,
    drain_concurrency: Annotated[
        int, typer.Option(min=1, help="drain, scale: worker concurrency (also per tenant).")
    ] = 2000,
    drain_batch: Annotated[
        int, typer.Option(min=1, help="drain, scale: the workers' claim_batch.")
    ] = 1000,
    payload_bytes: Annotated[
        int,
        typer.Option(
            min=0,
            max=1_000_000,
            help="drain, scale: bytes of payload per job as text (0: {}).",
        ),
    ] = 0,
    processes: Annotated[
        list[int] | None,
        typer.Option(help="scale: numbers of worker processes (repeatable; default 1, 2, 4)."),
    ] = None,
    latency_jobs: Annotated[int, typer.Option(min=1, help="latency: jobs enqueued.")] = 300,
    latency_interval: Annotated[
        float, typer.Option(min=0.0, help="latency: seconds between two jobs.")
    ] = 0.05,
    big_jobs: Annotated[int, typer.Option(min=1, help="fairness: jobs of tenant big.")] = 20_000,
    small_jobs: Annotated[int, typer.Option(min=1, help="fairness: jobs of tenant small.")] = 100,
    small_interval: Annotated[
        float, typer.Option(min=0.0, help="fairness: seconds between small's jobs.")
    ] = 0.1,
    concurrency: Annotated[int, typer.Option(min=1, help="fairness: worker concurrency.")] = 32,
    enqueue_connections: Annotated[
        int, typer.Option(min=1, help="enqueue: connections inserting single rows at once.")
    ] = 8,
    enqueue_seconds: Annotated[
        float, typer.Option(min=0.1, help="enqueue: seconds of single-row inserts.")
    ] = 10.0,
    enqueue_rows: Annotated[
        int, typer.Option(min=1, help="enqueue: rows of the one bulk INSERT.")
    ] = 10_000,
    tenants: Annotated[
        int, typer.Option(min=1, help="claim, scale: tenants at the large scale.")
    ] = 10_000,
    queued: Annotated[
        int, typer.Option(min=1, help="claim: queued jobs at the large scale.")
    ] = 1_000_000,
    claims: Annotated[
        int, typer.Option(min=1, help="claim, scale: claims timed per scale (per round).")
    ] = 500,
    finished: Annotated[
        int,
        typer.Option(min=1, help="retention, scale: finished jobs beside the queue."),
    ] = 1_000_000,
    batch: Annotated[
        int, typer.Option(min=1, help="claim, scale: jobs asked for per timed claim.")
    ] = 32,
    burst_jobs: Annotated[
        int, typer.Option(min=1, help="warm-start: no-op jobs of the burst (over 100 tenants).")
    ] = 100_000,
    single_jobs: Annotated[
        int,
        typer.Option(
            min=1,
            help="defaults: jobs of 1 ms of the single-tenant drains (of 10 ms and 100 ms: "
            "what 30 slots run in 1.5 s, at most this).",
        ),
    ] = 5_000,
    mixed_producers: Annotated[
        int, typer.Option(min=1, help="mixed: connections inserting single jobs.")
    ] = 8,
    mixed_seconds: Annotated[
        float, typer.Option(min=0.1, help="mixed: seconds the producers insert.")
    ] = 10.0,
    foreign_tenants: Annotated[
        int, typer.Option(min=1, help="foreign-kinds: tenants holding only other kinds.")
    ] = 10_000,
    foreign_jobs: Annotated[
        int, typer.Option(min=1, help="foreign-kinds: handled jobs, one every 100 ms.")
    ] = 50,
    workflow_width: Annotated[
        int,
        typer.Option(min=1, help="workflow: the DAG's fan-out at each of its two levels."),
    ] = 100,
    chain_links: Annotated[
        int, typer.Option(min=2, help="chain: jobs of the chain, each waiting for the one before.")
    ] = 1000,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    *,
    db: Database,
) -> None:
    """Run benchmark workloads in databases of their own and print the figures."""
    from listener.cli.bench import chain as chain_bench  # noqa: PLC0415
    from listener.cli.bench import (  # noqa: PLC0415 - only for this command
        claims as claim_bench,
    )
    from listener.cli.bench import (  # noqa: PLC0415
        common,
        enqueue,
        fairness,
        latency,
        realistic,
        recovery,
        summary,
        throughput,
        workflow,
    )

    chosen = workloads or list(WORKLOADS)
    unknown = [w for w in chosen if w not in WORKLOADS]
    if unknown:
        raise fail(
            f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}", 2
        )
    logs.configure(db.settings().log_format, "warning")
    results: dict[str, Any] = {}
    with db.url() as url:

        def drain(counts: tuple[int, ...]) -> Any:
            return throughput.drain(
                url,
                jobs=jobs,
                tenants=drain_tenants,
                concurrency=drain_concurrency,
                claim_batch=drain_batch,
                repeat=repeat,
                processes=counts,
                payload_bytes=payload_bytes,
            )

        runs: dict[str, Callable[[], Any]] = {
            "drain": lambda: drain((1,)),
            "latency": lambda: latency.latency(
                url, jobs=latency_jobs, interval=latency_interval, repeat=repeat
            ),
            "fairness": lambda: fairness.fairness(
                url,
                big_jobs=big_jobs,
                small_jobs=small_jobs,
                small_interval=small_interval,
                concurrency=concurrency,
                repeat=repeat,
            ),
            "enqueue": lambda: enqueue.enqueue(
                url,
                connections=enqueue_connections,
                seconds=enqueue_seconds,
                rows=enqueue_rows,
                repeat=repeat,
            ),
            "ceiling": lambda: throughput.ceiling(
                url, jobs=jobs, tenants=drain_tenants, repeat=repeat
            ),
            "scale": lambda: drain(tuple(processes or (1, 2, 4))),
            "history": lambda: claim_bench.claim_history(
                url, finished=finished, tenants=tenants, claims=claims, batch=batch, repeat=repeat
            ),
            "claim": lambda: claim_bench.claim_cost(
                url, tenants=tenants, queued=queued, claims=claims, batch=batch
            ),
            "retention": lambda: claim_bench.retention_cost(url, finished=finished),
            "recovery": lambda: recovery.recovery(url, repeat=repeat),
            "warm-start": lambda: realistic.warm_start(url, jobs=burst_jobs, repeat=repeat),
            "defaults": lambda: realistic.defaults(
                url,
                jobs=jobs,
                single_jobs=single_jobs,
                big_jobs=big_jobs,
                small_jobs=small_jobs,
                wake_jobs=latency_jobs,
                repeat=repeat,
            ),
            "mixed": lambda: realistic.mixed(
                url, producers=mixed_producers, seconds=mixed_seconds, repeat=repeat
            ),
            "foreign-kinds": lambda: realistic.foreign_kinds(
                url, tenants=foreign_tenants, jobs=foreign_jobs, repeat=repeat
            ),
            "workflow": lambda: workflow.workflow(url, width=workflow_width, repeat=repeat),
            "chain": lambda: chain_bench.chain(url, links=chain_links, repeat=repeat),
        }
        for name in WORKLOADS:
            if name in chosen:
                results[name] = guard(run_async, runs[name])
                if name == "scale":
                    results["history"] = guard(run_async, runs["history"])
    checks = summary.check(results)
    if as_json:
        typer.echo(common.as_json({**results, "summary": checks}))
        return
    renders: dict[str, Callable[[Any], str]] = {
        "drain": throughput.render_drain,
        "latency": latency.render_latency,
        "fairness": fairness.render_fairness,
        "enqueue": enqueue.render_enqueue,
        "ceiling": throughput.render_ceiling,
        "scale": throughput.render_drain,
        "history": claim_bench.render_history,
        "claim": claim_bench.render_claim,
        "retention": claim_bench.render_retention,
        "recovery": recovery.render_recovery,
        "warm-start": realistic.render_warm_start,
        "defaults": realistic.render_defaults,
        "mixed": realistic.render_mixed,
        "foreign-kinds": realistic.render_foreign_kinds,
        "workflow": workflow.render_workflow,
        "chain": chain_bench.render_chain,
    }
    sections = [f"{name}\n{renders[name](rows)}" for name, rows in results.items()]
    if checks:
        sections.append(f"summary\n{summary.render(checks)}")
    typer.echo("\n\n".join(sections))
