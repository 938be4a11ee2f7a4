"""``pgwake bench`` works (a tiny run; the figures themselves are not asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from typing import Any

import asyncpg
import pytest

from listener.cli.bench import realistic, summary
from listener.cli.bench.common import mean_observed, process_cpu_seconds
from tests.support.cli import pgwake

# Whether the kernel counts each process's CPU time in nanoseconds (clock ticks are too
# coarse to see a tiny benchmark's worker spend anything).
SCHEDSTAT = os.path.exists("/proc/self/schedstat")


async def bench_databases(server_dsn: str) -> set[str]:
    """The benchmark databases on the server now (other runs may have their own)."""
    admin = await asyncpg.connect(server_dsn)
    try:
        rows = await admin.fetch(
            "SELECT datname FROM pg_database WHERE datname LIKE 'pgwake_bench_%'"
        )
    finally:
        await admin.close()
    return {r["datname"] for r in rows}


async def test_bench_fairness_smoke(server_dsn: str) -> None:
    before = await bench_databases(server_dsn)
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
    # The benchmark dropped the databases it made (any left are another run's).
    assert await bench_databases(server_dsn) <= before


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
    assert [(s["tenants"], s["queued"], s["rate_limited"]) for s in scales] == [
        (100, 3000, 0),
        (300, 3000, 0),
        (300, 3000, 300),  # every tenant rate-limited (at most 1,000 are)
    ]
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


def test_bench_drain_with_payloads_stored_out_of_line(server_dsn: str) -> None:
    """`--payload-bytes` gives every job of the drain a payload of that size as text
    (stored out of line above 2 KB), and the run says so; a size out of range exits 2."""
    done = pgwake(
        "bench",
        "drain",
        "--repeat",
        "1",
        "--jobs",
        "300",
        "--payload-bytes",
        "20000",
        "--json",
        dsn=server_dsn,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    ((drain,),) = [json.loads(done.stdout)["drain"]]
    assert (drain["jobs"], drain["payload_bytes"]) == (300, 20000)
    assert drain["jobs_per_s"] > 0
    for bad in ("-1", "1000001", "lots"):
        refused = pgwake("bench", "drain", "--payload-bytes", bad, dsn=server_dsn)
        assert refused.returncode == 2, (bad, refused.stderr)
        assert "--payload-bytes" in refused.stderr


async def test_bench_throughput_latency_and_enqueue_smoke(server_dsn: str) -> None:
    """One small run of the workloads the performance targets are measured with, and
    the summary that checks them (the figures are not asserted: a test is no
    benchmark)."""
    before = await bench_databases(server_dsn)
    done = pgwake(
        "bench",
        "drain",
        "latency",
        "enqueue",
        "ceiling",
        "scale",
        "--repeat",
        "1",
        "--jobs",
        "1200",
        "--processes",
        "1",
        "--processes",
        "2",
        "--latency-jobs",
        "10",
        "--latency-interval",
        "0.01",
        "--enqueue-connections",
        "2",
        "--enqueue-seconds",
        "0.3",
        "--enqueue-rows",
        "300",
        "--finished",
        "2000",
        "--tenants",
        "40",
        "--claims",
        "10",
        "--json",
        dsn=server_dsn,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    ((drain,),) = [out["drain"]]
    assert (drain["processes"], drain["jobs"], drain["tenants"]) == (1, 1200, 10)
    assert drain["jobs_per_s"] > 0
    assert [r["processes"] for r in out["scale"]] == [1, 2]
    assert [r["batch"] for r in out["ceiling"]] == [1, 10, 100, 1000]
    # Each ceiling run takes at most 1,000 batches, so batch 1 drains 1,000 jobs.
    assert [r["jobs"] for r in out["ceiling"]] == [1000, 1200, 1200, 1200]
    (latency,) = out["latency"]
    assert latency["jobs"] == 10
    assert 0 < latency["p50_ms"] <= latency["p95_ms"] <= latency["p99_ms"] <= latency["max_ms"]
    assert {r["trigger"] for r in out["enqueue"]} == {True, False}
    for run in out["enqueue"]:
        assert run["single_rows"] > 0
        assert run["bulk_rows"] == 300
        assert run["api_rows_per_s"] > 0
        assert run["api_psycopg_rows_per_s"] > 0  # psycopg is in the test extra
    assert [r["finished"] for r in out["history"]] == [0, 2000]
    assert all(r["tenants"] == 40 and r["claims"] == 10 for r in out["history"])
    # The summary names every target whose workload ran.
    targets = " | ".join(c["target"] for c in out["summary"])
    for word in ("drain, one process", "ceiling", "latency", "trigger", "INSERT", "2 processes"):
        assert word in targets
    assert all(isinstance(c["met"], bool) for c in out["summary"])
    # The benchmark dropped the databases it made (any left are another run's).
    assert await bench_databases(server_dsn) <= before


def test_bench_tables_name_each_workload(server_dsn: str) -> None:
    done = pgwake(
        "bench",
        "drain",
        "ceiling",
        "--repeat",
        "1",
        "--jobs",
        "300",
        dsn=server_dsn,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("drain\n")
    assert "\nceiling\n" in done.stdout
    assert "\nsummary\n" in done.stdout
    assert "drain >= 0.5 x the ceiling at batch 100" in done.stdout


def test_raw_worker_refuses_bad_arguments() -> None:
    """The raw-SQL reference worker of ``mixed`` exits non-zero, saying why, on an
    unknown mode or without a DSN (before it connects anywhere), and on a database it
    cannot reach, without the DSN's password."""
    env = {k: v for k, v in os.environ.items() if k != "PGWAKE_DSN"}
    cmd = [sys.executable, "-m", "listener.cli.bench.raw_worker"]
    for args, extra, said in (
        (["nosuch"], {"PGWAKE_DSN": "postgresql://127.0.0.1:1/x"}, "usage:"),
        ([], {"PGWAKE_DSN": "postgresql://127.0.0.1:1/x"}, "usage:"),
        (["two-writes"], {}, "PGWAKE_DSN is not set"),
    ):
        done = subprocess.run(
            [*cmd, *args], check=False, env=env | extra, capture_output=True, text=True, timeout=60
        )
        assert done.returncode != 0, args
        assert said in done.stderr, (args, done.stderr)
    # A database it cannot reach: it exits non-zero, and the DSN's password, given in
    # the environment only, appears nowhere in what it says.
    done = subprocess.run(
        [*cmd, "two-writes"],
        check=False,
        env=env | {"PGWAKE_DSN": "postgresql://u:s3cret-pw@127.0.0.1:1/x"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "cannot connect to postgresql://u:***@127.0.0.1:1/x" in done.stderr, done.stderr
    assert "s3cret-pw" not in done.stdout + done.stderr


def test_process_cpu_seconds_counts_what_a_process_spent() -> None:
    """The CPU reading ``mixed`` takes of its worker processes grows by what the process
    spent on its main thread (never more than the wall time it took), and is None for a
    process that does not exist."""
    if not os.path.exists("/proc/self/stat"):
        # Not Linux: no reading, rather than a wrong one.
        assert process_cpu_seconds(os.getpid()) is None
        return
    began, wall = process_cpu_seconds(os.getpid()), time.monotonic()
    spent = time.process_time()
    while time.process_time() - spent < 0.1:
        pass
    after, took = process_cpu_seconds(os.getpid()), time.monotonic() - wall
    assert began is not None
    assert after is not None
    # Clock ticks (the fallback) count in steps of 10 ms.
    assert 0.08 <= after - began <= took + 0.02
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert process_cpu_seconds(gone.pid) is None


def test_bench_unknown_workload() -> None:
    done = pgwake("bench", "nosuch")
    assert done.returncode == 2
    assert "unknown workload(s) nosuch" in done.stderr


async def test_bench_realistic_workloads_smoke(server_dsn: str) -> None:
    """One tiny run of warm-start, defaults, mixed and foreign-kinds: every case ran and
    its jobs all finished (the figures themselves are not asserted)."""
    before = await bench_databases(server_dsn)
    done = pgwake(
        "bench",
        "warm-start",
        "defaults",
        "mixed",
        "foreign-kinds",
        "--repeat",
        "1",
        "--burst-jobs",
        "2000",
        "--jobs",
        "1000",
        "--single-jobs",
        "200",
        "--big-jobs",
        "200",
        "--small-jobs",
        "3",
        "--latency-jobs",
        "5",
        "--mixed-producers",
        "2",
        "--mixed-seconds",
        "0.5",
        "--foreign-tenants",
        "300",
        "--foreign-jobs",
        "3",
        "--json",
        dsn=server_dsn,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    warm = {run["worker"]: run for run in results["warm-start"]}
    assert set(warm) == {"warm", "fresh"}
    for run in warm.values():
        assert run["jobs"] == 2000
        assert run["tenants"] == 100
        assert run["jobs_per_s"] > 0
        assert run["longest_claim_gap_ms"] >= 0
        # The bound of the claim-duration bucket that holds every claim: a real bound
        # (the worker claimed, and not one claim took 30 s or more).
        assert 0 < run["slowest_claim_ms"] <= 30_000
    cases = {run["case"]: run for run in results["defaults"]}
    assert set(cases) == {
        "drain",
        "drain-tuned",
        "one-tenant",
        "one-tenant-all-slots",
        "one-tenant-10ms",
        "one-tenant-100ms",
        "small-beside-big",
        "idle-wake",
    }
    for name in ("drain", "drain-tuned", "one-tenant", "one-tenant-all-slots"):
        assert cases[name]["jobs_per_s"] > 0, name
    for name, seconds in (
        ("one-tenant", 0.001),
        ("one-tenant-10ms", 0.01),
        ("one-tenant-100ms", 0.1),
    ):
        # The lone tenant's drains, each also against what its 30 slots allow.
        run = cases[name]
        assert run["jobs"] == 200, name
        assert run["of_ideal"] == round(run["jobs_per_s"] * seconds / 30, 3), name
        # Its jobs kept some of those slots busy (each ran about ``seconds``): at most
        # all of them, with the drain's start and end rounded in the rate.
        assert 0 < run["busy"] <= 1.5, name
    assert cases["one-tenant-all-slots"]["of_ideal"] is None
    assert cases["one-tenant-all-slots"]["busy"] is None
    assert cases["small-beside-big"]["jobs"] == 3
    assert cases["idle-wake"]["jobs"] == 5
    assert cases["idle-wake"]["p50_ms"] <= cases["idle-wake"]["p99_ms"]
    mixed = {run["worker"]: run for run in results["mixed"]}
    assert set(mixed) == {"none", "pgwake", "two-writes", "one-write"}
    assert mixed["none"]["inserted"] > 0
    assert mixed["none"]["start_p50_ms"] is None
    assert mixed["none"]["share"] is None
    for name in ("pgwake", "two-writes", "one-write"):
        # Every job the producers committed started (the raw workers' too), and the
        # share is the run's rate over the no-worker run's.
        run = mixed[name]
        assert run["inserted"] > 0, name
        assert run["start_p50_ms"] <= run["start_p99_ms"], name
        assert run["share"] == round(run["rows_per_s"] / mixed["none"]["rows_per_s"], 3), name
        if SCHEDSTAT:
            # Each worker process spent CPU on the jobs while the producers ran.
            assert run["worker_cpu_us_per_job"] > 0, name
    assert mixed["none"]["worker_cpu_us_per_job"] is None
    (foreign,) = results["foreign-kinds"]
    assert foreign["tenants"] == 300
    assert foreign["jobs"] == 3
    assert foreign["p50_ms"] <= foreign["p99_ms"] <= foreign["max_ms"]
    # The summary checks every target of these workloads.
    targets = [c["target"] for c in results["summary"]]
    for words in (
        "warm-start: a worker started on an empty queue",
        "warm-start: its slowest claim",
        "defaults: drain of 10 tenants",
        "defaults: one tenant's 1 ms jobs",
        "defaults: one-tenant drains",
        "defaults: one-tenant-10ms drains",
        "defaults: one-tenant-100ms drains",
        "defaults: a small tenant's p99",
        "defaults: idle wake",
        "mixed: start latency",
        "mixed: the producers beside a worker",
        "foreign-kinds: p99",
    ):
        assert sum(t.startswith(words) for t in targets) == 1, (words, targets)
    assert await bench_databases(server_dsn) <= before


def test_bench_workflow_and_chain_smoke(server_dsn: str) -> None:
    """A tiny DAG (width 4: 22 jobs) beside a plain drain of as many, and a chain of 30:
    every job of each ran (the workload checks that all succeeded), the chain in order."""
    done = pgwake(
        "bench",
        "workflow",
        "chain",
        "--repeat",
        "1",
        "--workflow-width",
        "4",
        "--chain-links",
        "30",
        "--json",
        dsn=server_dsn,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    (workflow,) = out["workflow"]
    assert workflow["jobs"] == 4 + 16 + 2
    assert workflow["workflow_jobs_per_s"] > 0
    assert workflow["plain_jobs_per_s"] > 0
    (chain,) = out["chain"]
    assert (chain["links"], chain["in_order"]) == (30, True)
    assert chain["median_ms"] >= 0


def test_summary_holds_the_new_user_workloads_to_their_targets() -> None:
    """Each target of warm-start, defaults, mixed and foreign-kinds reads met on a
    figure just inside it and not met on one just outside (the ratios from the runs
    given, not from anything stored)."""
    warm = realistic.WarmStartRun("warm", 100, 100, 1.0, 800.0, 30.0, 50.0)
    fresh = realistic.WarmStartRun("fresh", 100, 100, 1.0, 1000.0, 30.0, 50.0)

    def defaults(rate: float, tuned: float, of_ideal: float, p99: float) -> list[Any]:
        run = realistic.DefaultsRun
        return [
            run("drain", "defaults", 10, rate, None, None),
            run("drain-tuned", "tuned", 10, tuned, None, None),
            run("one-tenant-10ms", "defaults", 10, 2400.0, None, None, of_ideal, 0.9),
            run("small-beside-big", "defaults", 3, None, 2.0, p99),
            run("idle-wake", "defaults", 5, None, 1.4, 4.9),
        ]

    def mixed(share: float, p50: float) -> list[Any]:
        run = realistic.MixedRun
        return [
            run("none", 8, 10.0, 100, 10.0, None, None),
            run("pgwake", 8, 10.0, 80, 8.0, p50, 50.0, share=share),
            run("two-writes", 8, 10.0, 85, 8.5, 5.0, 9.0, share=0.85),
        ]

    foreign = [realistic.ForeignKindsRun(10, 3, 1.0, 19.9, 19.9)]
    inside = summary.check(
        {
            "warm-start": [warm, fresh],
            "defaults": defaults(800.0, 1000.0, 0.8, 19.9),
            "mixed": mixed(0.8, 9.9),
            "foreign-kinds": foreign,
        }
    )
    assert len(inside) == 9, [c.target for c in inside]
    assert all(c.met for c in inside), [c for c in inside if not c.met]
    outside = summary.check(
        {
            "warm-start": [replace(warm, jobs_per_s=799.0, slowest_claim_ms=100.0), fresh],
            "defaults": defaults(799.0, 1000.0, 0.799, 20.0),
            "mixed": mixed(0.799, 10.0),
            "foreign-kinds": [replace(foreign[0], p99_ms=20.0)],
        }
    )
    assert [c.target for c in outside] == [c.target for c in inside]
    # The idle wake was inside in both; every other target is missed.
    assert [c.met for c in outside] == [False] * 5 + [True] + [False] * 3, outside
    by_target = {c.target: c.measured for c in outside}
    assert by_target[next(t for t in by_target if t.startswith("mixed: the producers"))] == (
        "0.799 x; a raw two-write worker's 0.85"
    )


def test_mean_observed_reads_every_series_of_a_histogram() -> None:
    """The mean over every label value of a histogram, from the Prometheus text."""
    text = (
        "# HELP d_seconds d\n# TYPE d_seconds histogram\n"
        'd_seconds_bucket{kind="a",le="+Inf"} 2.0\nd_seconds_count{kind="a"} 2.0\n'
        'd_seconds_sum{kind="a"} 0.004\n'
        'd_seconds_bucket{kind="b",le="+Inf"} 3.0\nd_seconds_count{kind="b"} 3.0\n'
        'd_seconds_sum{kind="b"} 0.011\n'
        "# HELP other_seconds o\n# TYPE other_seconds histogram\n"
        'other_seconds_bucket{le="+Inf"} 1.0\nother_seconds_count 1.0\nother_seconds_sum 9.0\n'
    )
    assert mean_observed(text, "d_seconds") == pytest.approx(0.003)
    assert mean_observed(text, "missing_seconds") == 0.0
