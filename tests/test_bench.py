"""``pgwake bench`` works (a tiny run; the figures themselves are not asserted)."""

from __future__ import annotations

import json

import asyncpg

from tests.test_cli import pgwake


async def test_bench_fairness_smoke(server_dsn: str) -> None:
    done = pgwake(
        "bench",
        "fairness",
        "--big-jobs",
        "300",
        "--small-jobs",
        "3",
        "--small-interval",
        "0.01",
        "--concurrency",
        "8",
        "--repeat",
        "1",
        "--json",
        dsn=server_dsn,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    runs = {run["mode"]: run for run in json.loads(done.stdout)["fairness"]}
    assert set(runs) == {"idle", "fair", "fifo"}
    for run in runs.values():
        assert run["small_jobs"] == 3
        assert run["small_p50_ms"] <= run["small_p99_ms"] <= run["small_max_ms"]
    assert runs["idle"]["big_jobs"] == 0
    assert runs["fair"]["big_jobs"] == runs["fifo"]["big_jobs"] == 300
    assert runs["fair"]["big_drain_s"] > 0
    # The benchmark cleaned up its databases.
    admin = await asyncpg.connect(server_dsn)
    try:
        left = await admin.fetchval(
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'pgwake_bench_%'"
        )
    finally:
        await admin.close()
    assert left == 0


def test_bench_claim_cost_smoke(server_dsn: str) -> None:
    done = pgwake(
        "bench",
        "claim",
        "--tenants",
        "300",
        "--queued",
        "3000",
        "--claims",
        "20",
        "--batch",
        "8",
        "--json",
        dsn=server_dsn,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    scales = json.loads(done.stdout)["claim"]
    assert [(s["tenants"], s["queued"]) for s in scales] == [(100, 3000), (300, 3000)]
    for scale in scales:
        # Every claim was real and full: the queues hold far more than 20 x 8 jobs.
        assert scale["claimed"] == 20 * 8
        assert 0 < scale["p50_ms"] <= scale["p99_ms"]
        assert scale["buffers_per_claim"] > 0


def test_bench_recovery_smoke(server_dsn: str) -> None:
    done = pgwake("bench", "recovery", "--repeat", "1", "--json", dsn=server_dsn, timeout=240)
    assert done.returncode == 0, done.stderr
    (run,) = json.loads(done.stdout)["recovery"]
    assert run["jobs"] == 20
    # Detection takes at least one heartbeat interval's grace; finishing includes the
    # jobs' own 5 seconds.
    assert 0 < run["detected_s"] < run["finished_s"]
    assert run["finished_s"] >= 5


def test_bench_retention_smoke(server_dsn: str) -> None:
    done = pgwake("bench", "retention", "--finished", "5000", "--json", dsn=server_dsn, timeout=240)
    assert done.returncode == 0, done.stderr
    (run,) = json.loads(done.stdout)["retention"]
    assert run["pruned"] == 5000
    assert run["claims_alone"] == 300
    assert run["claims_while_pruning"] >= 1
    assert run["alone_p50_ms"] <= run["alone_p99_ms"]


def test_bench_unknown_workload() -> None:
    done = pgwake("bench", "nosuch")
    assert done.returncode == 2
    assert "unknown workload(s) nosuch" in done.stderr
