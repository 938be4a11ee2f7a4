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
# As a new user runs it (warm-start, defaults, mixed, foreign-kinds).
WARM_SHARE_OF_FRESH = 0.8
WARM_SLOWEST_CLAIM_MS = 50.0
DEFAULTS_SHARE = 0.8
SMALL_BESIDE_BIG_P99_MS = 20.0
IDLE_WAKE_P50_MS = 1.5
IDLE_WAKE_P99_MS = 5.0
MIXED_P50_MS = 10.0
MIXED_P99_MS = 100.0
MIXED_SHARE = 0.8
FOREIGN_KINDS_P99_MS = 20.0


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
            _latencies(
                "latency, idle worker", run.p50_ms, run.p99_ms, LATENCY_P50_MS, LATENCY_P99_MS
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
    checks += _as_new_users_run_it(results)
    return checks


def _latencies(what: str, p50: float, p99: float, p50_limit: float, p99_limit: float) -> Check:
    """The check of a p50 and a p99 (ms), each under its limit."""
    return Check(
        f"{what}: p50 < {p50_limit:g} ms, p99 < {p99_limit:g} ms",
        f"p50 {p50:g} ms, p99 {p99:g} ms",
        p50 < p50_limit and p99 < p99_limit,
    )


def _ratio(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


def _as_new_users_run_it(results: dict[str, Sequence[Any]]) -> list[Check]:
    """The targets of the workloads that run pgwake as a new user does."""
    checks: list[Check] = []
    warm = _by(results.get("warm-start", ()), "worker", "warm")
    fresh = _by(results.get("warm-start", ()), "worker", "fresh")
    if warm is not None and fresh is not None:
        share = _ratio(warm.jobs_per_s, fresh.jobs_per_s)
        checks.append(
            Check(
                f"warm-start: a worker started on an empty queue drains the burst at >= "
                f"{WARM_SHARE_OF_FRESH:g} x a fresh one",
                f"{share:.2f} x ({warm.jobs_per_s:g} vs {fresh.jobs_per_s:g} jobs/s)",
                share >= WARM_SHARE_OF_FRESH,
            )
        )
        checks.append(
            Check(
                f"warm-start: its slowest claim of the burst <= {WARM_SLOWEST_CLAIM_MS:g} ms "
                "(the bound of the histogram bucket that holds it)",
                f"<= {warm.slowest_claim_ms:g} ms",
                warm.slowest_claim_ms <= WARM_SLOWEST_CLAIM_MS,
            )
        )
    cases = {r.case: r for r in results.get("defaults", ())}
    for case, best, what in (
        ("drain", "drain-tuned", "drain of 10 tenants"),
        ("one-tenant", "one-tenant-all-slots", "one tenant's 1 ms jobs"),
    ):
        if case in cases and best in cases:
            mine, theirs = cases[case].jobs_per_s, cases[best].jobs_per_s
            share = _ratio(mine, theirs)
            checks.append(
                Check(
                    f"defaults: {what} >= {DEFAULTS_SHARE:g} x with {cases[best].settings}",
                    f"{share:.2f} x ({mine:g} vs {theirs:g} jobs/s)",
                    share >= DEFAULTS_SHARE,
                )
            )
    checks.extend(
        Check(
            f"defaults: {run.case} drains at >= {DEFAULTS_SHARE:g} x "
            "(slots a lone tenant may use) / job duration",
            f"{run.of_ideal:.2f} x ({run.jobs_per_s:g} jobs/s; by the jobs' measured "
            f"duration, {run.busy:.2f} of the slots busy)",
            run.of_ideal >= DEFAULTS_SHARE,
        )
        for run in cases.values()
        if run.of_ideal is not None
    )
    small = cases.get("small-beside-big")
    if small is not None and small.p99_ms is not None:
        checks.append(
            Check(
                f"defaults: a small tenant's p99 while a big one drains < "
                f"{SMALL_BESIDE_BIG_P99_MS:g} ms",
                f"{small.p99_ms:g} ms",
                small.p99_ms < SMALL_BESIDE_BIG_P99_MS,
            )
        )
    wake = cases.get("idle-wake")
    if wake is not None and wake.p50_ms is not None and wake.p99_ms is not None:
        checks.append(
            _latencies(
                "defaults: idle wake", wake.p50_ms, wake.p99_ms, IDLE_WAKE_P50_MS, IDLE_WAKE_P99_MS
            )
        )
    mixed = _by(results.get("mixed", ()), "worker", "pgwake")
    if mixed is not None and mixed.start_p50_ms is not None and mixed.start_p99_ms is not None:
        checks.append(
            _latencies(
                "mixed: start latency",
                mixed.start_p50_ms,
                mixed.start_p99_ms,
                MIXED_P50_MS,
                MIXED_P99_MS,
            )
        )
    if mixed is not None and mixed.share is not None:
        raw = _by(results.get("mixed", ()), "worker", "two-writes")
        beside = (
            "" if raw is None or raw.share is None else f"; a raw two-write worker's {raw.share:g}"
        )
        checks.append(
            Check(
                f"mixed: the producers beside a worker >= {MIXED_SHARE:g} x their rate alone",
                f"{mixed.share:g} x{beside}",
                mixed.share >= MIXED_SHARE,
            )
        )
    foreign = next(iter(results.get("foreign-kinds", ())), None)
    if foreign is not None:
        checks.append(
            Check(
                f"foreign-kinds: p99 start latency < {FOREIGN_KINDS_P99_MS:g} ms",
                f"{foreign.p99_ms:g} ms",
                foreign.p99_ms < FOREIGN_KINDS_P99_MS,
            )
        )
    return checks


def render(checks: Sequence[Check]) -> str:
    """The checks as lines: met or not, the target, the figure."""
    return "\n".join(
        f"{'met    ' if c.met else 'NOT met'}  {c.target}: {c.measured}" for c in checks
    )
