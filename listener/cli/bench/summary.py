"""The performance targets of pgwake, checked against the figures of one ``pgwake bench``
run (only those whose workloads ran).

Invariant: every ratio compares figures taken in the same run (the drain with the
ceiling measured minutes apart on the same machine, with and without the trigger, one
process with two), so a busy machine lowers both sides rather than the ratio alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

DRAIN_JOBS_PER_S = 20_000
DRAIN_SHARE_OF_CEILING = 0.5
CEILING_BATCH = 100
LATENCY_P50_MS = 2.0
LATENCY_P99_MS = 10.0
FAIRNESS_SMALL_P99_MS = 20.0
ENQUEUE_TRIGGER_SHARE = 0.8
ENQUEUE_BULK_ROWS_PER_S = 50_000
ENQUEUE_API_SHARE = 0.8
HISTORY_SLOWDOWN = 2.0


@dataclass(frozen=True, slots=True)
class Check:
    """One target, what was measured, and whether it is met."""

    target: str
    measured: str
    met: bool


def _by(rows: Sequence[Any], field: str, value: Any) -> Any:
    return next((r for r in rows if getattr(r, field) == value), None)


def check(results: dict[str, Sequence[Any]]) -> list[Check]:
    """The targets whose figures are in ``results``."""
    checks: list[Check] = []
    drain = _by(results.get("drain", ()), "processes", 1)
    ceiling = _by(results.get("ceiling", ()), "batch", CEILING_BATCH)
    if drain is not None:
        checks.append(
            Check(
                f"drain, one process: >= {DRAIN_JOBS_PER_S} jobs/s",
                f"{drain.jobs_per_s:g} jobs/s",
                drain.jobs_per_s >= DRAIN_JOBS_PER_S,
            )
        )
        if ceiling is not None:
            share = drain.jobs_per_s / ceiling.jobs_per_s
            checks.append(
                Check(
                    f"drain >= {DRAIN_SHARE_OF_CEILING:g} x the ceiling at batch {CEILING_BATCH}",
                    f"{share:.2f} x ({ceiling.jobs_per_s:g} jobs/s)",
                    share >= DRAIN_SHARE_OF_CEILING,
                )
            )
    run = next(iter(results.get("latency", ())), None)
    if run is not None:
        checks.append(
            Check(
                f"latency, idle worker: p50 < {LATENCY_P50_MS:g} ms, p99 < {LATENCY_P99_MS:g} ms",
                f"p50 {run.p50_ms:g} ms, p99 {run.p99_ms:g} ms",
                run.p50_ms < LATENCY_P50_MS and run.p99_ms < LATENCY_P99_MS,
            )
        )
    fair = _by(results.get("fairness", ()), "mode", "fair")
    if fair is not None and fair.small_during_drain_p99_ms is not None:
        checks.append(
            Check(
                f"fairness: small's p99 while big drains < {FAIRNESS_SMALL_P99_MS:g} ms",
                f"{fair.small_during_drain_p99_ms:g} ms (big drained in {fair.big_drain_s:g} s)",
                fair.small_during_drain_p99_ms < FAIRNESS_SMALL_P99_MS,
            )
        )
    enqueue = results.get("enqueue", ())
    on = next((r for r in enqueue if r.trigger and r.events), None)
    off = _by(enqueue, "trigger", False)
    if off is not None:
        for run in (r for r in enqueue if r.trigger):
            share = run.single_rows_per_s / off.single_rows_per_s
            events = "on" if run.events else "off"
            checks.append(
                Check(
                    f"enqueue: single rows with the trigger (job events {events}) >= "
                    f"{ENQUEUE_TRIGGER_SHARE:g} x without",
                    f"{share:.2f} x ({run.single_rows_per_s:g} vs {off.single_rows_per_s:g} "
                    "rows/s)",
                    share >= ENQUEUE_TRIGGER_SHARE,
                )
            )
    if on is not None:
        checks.append(
            Check(
                f"enqueue: one {on.bulk_rows}-row INSERT >= {ENQUEUE_BULK_ROWS_PER_S} rows/s",
                f"{on.bulk_rows_per_s:g} rows/s",
                on.bulk_rows_per_s >= ENQUEUE_BULK_ROWS_PER_S,
            )
        )
        share = on.api_rows_per_s / on.bulk_rows_per_s
        checks.append(
            Check(
                f"enqueue: enqueue_many of {on.bulk_rows} jobs >= {ENQUEUE_API_SHARE:g} x "
                "the one INSERT",
                f"{share:.2f} x ({on.api_rows_per_s:g} vs {on.bulk_rows_per_s:g} rows/s)",
                share >= ENQUEUE_API_SHARE,
            )
        )
        if on.api_psycopg_rows_per_s is not None:
            share = on.api_psycopg_rows_per_s / on.bulk_rows_per_s
            checks.append(
                Check(
                    f"enqueue: enqueue_many of {on.bulk_rows} jobs on psycopg >= "
                    f"{ENQUEUE_API_SHARE:g} x the one INSERT",
                    f"{share:.2f} x ({on.api_psycopg_rows_per_s:g} vs "
                    f"{on.bulk_rows_per_s:g} rows/s)",
                    share >= ENQUEUE_API_SHARE,
                )
            )
    one = _by(results.get("scale", ()), "processes", 1)
    two = _by(results.get("scale", ()), "processes", 2)
    if one is not None and two is not None:
        checks.append(
            Check(
                "scale: 2 processes drain faster than 1",
                f"{two.jobs_per_s:g} vs {one.jobs_per_s:g} jobs/s",
                two.jobs_per_s > one.jobs_per_s,
            )
        )
    history = results.get("history", ())
    empty = next((r for r in history if r.finished == 0), None)
    full = next((r for r in history if r.finished > 0), None)
    if empty is not None and full is not None:
        slowdown = full.p50_ms / empty.p50_ms
        checks.append(
            Check(
                f"scale: claim p50 with {full.finished} finished jobs <= "
                f"{HISTORY_SLOWDOWN:g} x an empty table",
                f"{slowdown:.2f} x ({full.p50_ms:g} vs {empty.p50_ms:g} ms)",
                slowdown <= HISTORY_SLOWDOWN,
            )
        )
    return checks


def render(checks: Sequence[Check]) -> str:
    """The checks as lines: met or not, the target, the figure."""
    return "\n".join(
        f"{'met    ' if c.met else 'NOT met'}  {c.target}: {c.measured}" for c in checks
    )
