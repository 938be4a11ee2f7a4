"""The worker's /metrics, /healthz and /readyz, scraped over real HTTP."""

from __future__ import annotations

import math
import os
import re
import socket
from typing import Any

import anyio
import asyncpg
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import listener
from listener.api import JobContext, Registry
from listener.cli.bench.common import slowest_bucket
from listener.errors import PgwakeError
from listener.metrics import CLAIM_BUCKETS, LATENCY_BUCKETS, Metrics, observe_many
from tests.support.cli import pgwake
from tests.support.http import http_get
from tests.support.paths import ROOT
from tests.support.waiting import eventually
from tests.support.workers import running_worker


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text = await anyio.to_thread.run_sync(http_get, port, "/metrics")
    assert status == 200
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def test_metrics_health_and_bounded_tenant_series(dsn: str, conn: asyncpg.Connection) -> None:
    registry = Registry()
    release = anyio.Event()

    @registry.handler("work")
    async def work(payload: dict[str, Any], ctx: JobContext) -> None:
        if payload.get("hold"):
            await release.wait()

    # 50 tenants with a backlog of a kind nobody handles here: it stays queued.
    await conn.execute(
        "INSERT INTO pgwake.jobs (tenant_id, kind) "
        "SELECT 't' || lpad(i::text, 2, '0'), 'other.kind' "
        "FROM generate_series(0, 49) AS i, generate_series(1, i + 1)"
    )
    await conn.execute(
        "INSERT INTO pgwake.jobs (tenant_id, kind) SELECT 'a', 'work' FROM generate_series(1, 7)"
    )
    async with running_worker(
        dsn,
        registry,
        metrics_interval=0.1,
        metrics_top_tenants=3,
        metrics_tenants=["t05"],
        concurrency=4,
        tenant_concurrency=4,
    ) as service:
        port = service.http.port
        assert port
        assert await anyio.to_thread.run_sync(http_get, port, "/healthz") == (200, "ok\n")
        assert await anyio.to_thread.run_sync(http_get, port, "/readyz") == (200, "ready\n")
        assert (await anyio.to_thread.run_sync(http_get, port, "/nope"))[0] == 404
        await eventually(
            lambda: conn.fetchval(
                "SELECT count(*) = 7 FROM pgwake.jobs WHERE kind = 'work' AND status = 'succeeded'"
            )
        )

        total = sum(range(1, 51))
        # Top 3 by backlog (t49: 50, t48: 49, t47: 48), the opt-in t05 (6), the rest summed.
        expected = {
            "t49": 50,
            "t48": 49,
            "t47": 48,
            "t05": 6,
            "_other": total - 50 - 49 - 48 - 6,
        }

        def tenant_series(samples: dict[Any, float]) -> dict[str, float]:
            return {
                dict(labels)["tenant"]: value
                for (name, labels), value in samples.items()
                if name == "pgwake_tenant_queued_jobs"
            }

        async def sampled() -> dict[Any, float] | None:
            # A sample taken after tenant a's jobs ran and their outcomes were stored:
            # only the unhandled backlog is left.
            samples = await scrape(port)
            running = samples.get(("pgwake_queue_jobs", (("kind", "work"), ("status", "running"))))
            return samples if tenant_series(samples) == expected and running == 0 else None

        samples = await eventually(sampled)
        assert samples[("pgwake_jobs_claimed_total", (("kind", "work"),))] == 7
        assert (
            samples[("pgwake_jobs_finished_total", (("kind", "work"), ("outcome", "succeeded")))]
            == 7
        )
        # Every outcome of a handled kind exists from the start, at 0.
        for outcome in ("failed", "cancelled", "retried", "snoozed"):
            key = ("pgwake_jobs_finished_total", (("kind", "work"), ("outcome", outcome)))
            assert samples[key] == 0
        assert samples[("pgwake_job_duration_seconds_count", (("kind", "work"),))] == 7
        assert samples[("pgwake_job_start_latency_seconds_count", (("kind", "work"),))] == 7
        assert samples[("pgwake_worker_capacity", ())] == 4
        assert samples[("pgwake_listener_up", ())] == 1
        assert samples[("pgwake_ready", ())] == 1
        assert samples[("pgwake_leader", ())] == 1
        assert 0 <= samples[("pgwake_heartbeat_age_seconds", ())] < 60
        assert samples[("pgwake_workers_registered", ())] == 1
        assert samples[("pgwake_workers_heartbeat_age_max_seconds", ())] >= 0
        # A kind no worker handles is counted under _unhandled, never under its own name
        # (applications may insert any kind: the label stays bounded by the handlers).
        queue = {
            (dict(labels)["status"], dict(labels)["kind"]): value
            for (name, labels), value in samples.items()
            if name == "pgwake_queue_jobs"
        }
        assert queue == {
            ("waiting", "_unhandled"): 0,
            ("waiting", "work"): 0,
            ("queued", "_unhandled"): total,
            ("scheduled", "_unhandled"): 0,
            ("running", "_unhandled"): 0,
            ("queued", "work"): 0,
            ("scheduled", "work"): 0,
            ("running", "work"): 0,
        }
        assert samples[("pgwake_oldest_queued_job_age_seconds", (("kind", "_unhandled"),))] > 0
        assert samples[("pgwake_oldest_queued_job_age_seconds", (("kind", "work"),))] == 0
        # Tenant database pools: the opt-in tenant and _other only.
        assert {
            dict(labels)["tenant"]
            for (name, labels) in samples
            if name == "pgwake_tenant_db_connections"
        } == {"t05", "_other"}
        assert samples[("pgwake_tenant_db_pools", ())] == 0
        assert samples[("pgwake_tenant_db_max_connections", ())] == 50

        # While draining, the worker is alive but not ready.
        await conn.execute(
            "INSERT INTO pgwake.jobs (tenant_id, kind, payload) "
            "VALUES ('a', 'work', '{\"hold\": true}')"
        )

        async def handler_running() -> bool:
            # In the handler, not just claimed: a stop before the handler starts would
            # end the drain at once.
            return (await scrape(port))[("pgwake_jobs_in_flight", ())] == 1

        await eventually(handler_running)
        service.stop()
        assert (await anyio.to_thread.run_sync(http_get, port, "/readyz"))[0] == 503
        assert (await anyio.to_thread.run_sync(http_get, port, "/healthz"))[0] == 200
        release.set()


# Series only the metrics leader exports.
DB_DERIVED = {
    "pgwake_queue_jobs",
    "pgwake_oldest_queued_job_age_seconds",
    "pgwake_tenant_queued_jobs",
    "pgwake_workers_registered",
    "pgwake_workers_heartbeat_age_max_seconds",
    "pgwake_worker_heartbeat_age_seconds",
}
LEADER_LOCK_HOLDER = (
    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
    "AND classid = 1885828963 AND objid = 1 AND objsubid = 2 "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


async def test_only_the_leader_exports_database_derived_gauges(
    dsn: str, conn: asyncpg.Connection
) -> None:
    registry = Registry()

    @registry.handler("work")
    async def work(payload: dict[str, Any], ctx: JobContext) -> None:
        pass

    await conn.execute(
        "INSERT INTO pgwake.jobs (kind, run_at) "
        "SELECT 'work', now() + interval '1 hour' FROM generate_series(1, 3)"
    )
    async with (
        running_worker(dsn, registry, metrics_interval=0.05) as a,
        running_worker(dsn, registry, metrics_interval=0.05) as b,
    ):
        workers = (a, b)

        async def one_leader() -> list[dict[Any, float]] | None:
            scraped = [await scrape(w.http.port) for w in workers]  # type: ignore[arg-type]
            leaders = [s[("pgwake_leader", ())] for s in scraped]
            exporting = [{name for name, _ in s} & DB_DERIVED for s in scraped]
            registered = sum(s.get(("pgwake_workers_registered", ()), 0) for s in scraped)
            if sorted(leaders) == [0, 1] and sorted(map(len, exporting)) == [0, len(DB_DERIVED)]:
                return scraped if registered == len(workers) else None
            return None

        scraped = await eventually(one_leader)
        # Summed over the fleet, as a dashboard does, the sampled series count once.
        scheduled = ("pgwake_queue_jobs", (("kind", "work"), ("status", "scheduled")))
        assert sum(s.get(scheduled, 0) for s in scraped) == 3

        # The leader's connection is killed: the lock goes with it, and a leader (the
        # same worker or the other) takes it again on a new connection.
        old_pid = await conn.fetchval(LEADER_LOCK_HOLDER)
        assert old_pid is not None
        await conn.execute("SELECT pg_terminate_backend($1)", old_pid)

        async def new_holder() -> bool:
            pid = await conn.fetchval(LEADER_LOCK_HOLDER)
            return pid is not None and pid != old_pid

        await eventually(new_holder)
        scraped = await eventually(one_leader)

        # The leader stops: the other worker takes over.
        leader = workers[[s[("pgwake_leader", ())] for s in scraped].index(1)]
        other = b if leader is a else a
        leader.stop()
        await leader.stopped.wait()

        async def took_over() -> bool:
            samples = await scrape(other.http.port)  # type: ignore[arg-type]
            return samples[("pgwake_leader", ())] == 1 and samples.get(scheduled) == 3

        await eventually(took_over)


async def test_leader_survives_its_connection_killed_again_and_again(
    dsn: str, conn: asyncpg.Connection
) -> None:
    """The server ends the leader's session (pg_terminate_backend) 30 times, sometimes
    between two protocol messages of a sample: each time a worker leads again, and no
    worker dies of it."""
    registry = Registry()

    @registry.handler("work")
    async def work(payload: dict[str, Any], ctx: JobContext) -> None:
        pass

    async with (
        running_worker(dsn, registry, metrics_interval=0.002) as a,
        running_worker(dsn, registry, metrics_interval=0.002) as b,
    ):
        for _ in range(30):
            pid = await eventually(lambda: conn.fetchval(LEADER_LOCK_HOLDER))
            await conn.execute("SELECT pg_terminate_backend($1)", pid)

            async def replaced(old: int = pid) -> bool:
                new = await conn.fetchval(LEADER_LOCK_HOLDER)
                return new is not None and new != old

            await eventually(replaced)

        async def one_leader() -> bool:
            leaders = [(await scrape(w.http.port))[("pgwake_leader", ())] for w in (a, b)]  # type: ignore[arg-type]
            return sorted(leaders) == [0, 1]

        await eventually(one_leader)


def test_metrics_port_in_use_is_a_configuration_error(dsn: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = pgwake(
            "run", "--log-format", "json", dsn=dsn, env={"PGWAKE_METRICS_ADDR": f"127.0.0.1:{port}"}
        )
    assert done.returncode == 3, done.stderr
    assert f"cannot serve metrics on 127.0.0.1:{port}" in done.stderr


@pytest.mark.parametrize("addr", ["9464", "localhost:", ":9464", "host:99999"])
def test_bad_metrics_addr(addr: str) -> None:
    done = pgwake("run", env={"PGWAKE_METRICS_ADDR": addr})
    assert done.returncode == 3
    assert "metrics_addr must be host:port" in done.stderr


def test_readme_lists_every_series() -> None:
    """The tables under "Metrics and health" in docs/operations.md name exactly the series a worker
    exports (counters with _total, histograms by their base name)."""
    metrics = Metrics(tenants_opt_in=["t"])
    metrics.register_kinds(["k"])
    metrics.set_workers(1, 0.0, [("id", "host", 1, 0.0)])
    metrics.set_queue([], ["k"])
    metrics.set_tenant_backlog([], 0)
    metrics.set_rate_limited([("tenant", "", "t", 1.0, 1)])
    exported = set()
    for family in metrics.registry.collect():
        if family.type == "histogram":
            exported.add(family.name)
        else:
            exported |= {sample.name for sample in family.samples}
    page = (ROOT / "docs" / "operations.md").read_text()
    section = page.split("\n## Metrics and health\n", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `(pgwake_\w+)`", section, re.MULTILINE))
    assert listed == {name for name in exported if name.startswith("pgwake_")}
    # prometheus-client's process series are there, and the page says so.
    assert "process_start_time_seconds" in exported
    assert "`process_*`" in section


def test_bulk_observations_equal_one_by_one() -> None:
    """Claims and finished attempts are applied in bulk; the exposition is the same as
    observing each job on its own, and a collection applies what was noted before it."""
    values = [0.0, 0.0004, 0.001, 0.0011, 0.25, 3.0, 1e9, 0.001, 7.5]
    one, bulk = CollectorRegistry(), CollectorRegistry()
    a = Histogram("h", "h", buckets=LATENCY_BUCKETS, registry=one)
    b = Histogram("h", "h", buckets=LATENCY_BUCKETS, registry=bulk)
    for value in values:
        a.observe(value)
    observe_many(b, values[:4])
    observe_many(b, values[4:])
    assert generate_latest(one) == generate_latest(bulk)

    metrics = Metrics()
    metrics.register_kinds(["work"])
    metrics.observe_claimed([("work", 0.002), ("other", 0.0)])
    for outcome in ("succeeded", "succeeded", "failed"):
        metrics.observe_finished("work", outcome, 0.5, tenant="a", records=None)
    text = generate_latest(metrics.registry).decode()
    assert 'pgwake_jobs_claimed_total{kind="work"} 1.0' in text
    assert 'pgwake_jobs_claimed_total{kind="other"} 1.0' in text
    assert 'pgwake_jobs_finished_total{kind="work",outcome="succeeded"} 2.0' in text
    assert 'pgwake_jobs_finished_total{kind="work",outcome="failed"} 1.0' in text
    assert 'pgwake_job_duration_seconds_count{kind="work"} 3.0' in text


def test_records_and_failure_streaks_from_outcomes() -> None:
    """Records count by kind, a success that reported 0 counts as a zero-records run, a
    run that reported nothing counts in neither; streaks count final failures since the
    last success, by kind and by tenant (opt-in always, the rest top-N by streak)."""
    metrics = Metrics(top_n_tenants=2, tenants_opt_in=["vip"])
    metrics.register_kinds(["imp", "mail"])
    for kind, tenant, outcome, records in [
        ("imp", "a", "succeeded", 40),
        ("imp", "a", "succeeded", 0),
        ("imp", "b", "succeeded", None),
        ("imp", "b", "failed", 3),
        ("imp", "c", "failed", None),
        ("imp", "c", "retried", None),  # a retry neither breaks nor extends a streak
        ("imp", "c", "failed", None),
        ("imp", "d", "failed", None),
        ("mail", "b", "failed", None),
        ("mail", "b", "succeeded", None),
    ]:
        metrics.observe_finished(kind, outcome, 0.1, tenant=tenant, records=records)
    sample = metrics.registry.get_sample_value
    assert sample("pgwake_job_records_total", {"kind": "imp"}) == 43
    assert sample("pgwake_jobs_zero_records_total", {"kind": "imp"}) == 1
    assert sample("pgwake_job_records_total", {"kind": "mail"}) == 0
    assert sample("pgwake_kind_consecutive_failures", {"kind": "imp"}) == 4
    assert sample("pgwake_kind_consecutive_failures", {"kind": "mail"}) == 0
    # c: 2, then b and d: 1 each (b's success in mail cleared its imp failure): the top
    # two are c and d (ties by name), and the opt-in vip at 0.
    tenants = {
        s.labels["tenant"]: s.value
        for family in metrics.registry.collect()
        if family.name == "pgwake_tenant_consecutive_failures"
        for s in family.samples
    }
    assert tenants == {"c": 2, "d": 1, "vip": 0}
    metrics.observe_finished("imp", "succeeded", 0.1, tenant="c", records=5)
    assert sample("pgwake_kind_consecutive_failures", {"kind": "imp"}) == 0
    assert sample("pgwake_tenant_consecutive_failures", {"tenant": "c"}) is None


async def test_records_build_info_and_process_series_over_http(
    dsn: str, conn: asyncpg.Connection
) -> None:
    """A real worker: handlers report records through ctx; a bad count fails the job with
    a message naming it; /metrics has the records, the streaks, pgwake_build_info, the
    process series, and (from the leader) each worker's heartbeat age by host and pid."""
    registry = Registry()

    @registry.handler("imp")
    async def imp(payload: dict[str, Any], ctx: JobContext) -> None:
        assert ctx.records is None
        for _ in range(payload["n"]):
            ctx.add_records()
        ctx.add_records(0)
        assert ctx.records == payload["n"]

    @registry.handler("bad")
    async def bad(payload: dict[str, Any], ctx: JobContext) -> None:
        ctx.add_records(payload["n"])

    await conn.execute(
        "INSERT INTO pgwake.jobs (tenant_id, kind, payload) VALUES "
        "('a', 'imp', '{\"n\": 3}'), ('a', 'imp', '{\"n\": 0}'), "
        "('b', 'bad', '{\"n\": -1}'), ('b', 'bad', '{\"n\": 1.5}')"
    )
    await conn.execute("UPDATE pgwake.jobs SET max_attempts = 1 WHERE kind = 'bad'")
    async with running_worker(dsn, registry, metrics_interval=0.05) as service:
        assert service.http.port
        port: int = service.http.port
        await eventually(
            lambda: conn.fetchval(
                "SELECT count(*) = 4 FROM pgwake.jobs WHERE status IN ('succeeded', 'failed')"
            )
        )
        errors = await conn.fetch(
            "SELECT last_error FROM pgwake.jobs WHERE kind = 'bad' ORDER BY id"
        )
        assert errors[0]["last_error"].startswith("ValueError: records must be 0 or more, not -1")
        assert errors[1]["last_error"].startswith("TypeError: records must be an int, not float")

        async def scraped() -> dict[Any, float] | None:
            samples = await scrape(port)
            leader = samples.get(("pgwake_leader", ())) == 1
            heartbeat = [k for k in samples if k[0] == "pgwake_worker_heartbeat_age_seconds"]
            return samples if leader and heartbeat else None

        samples = await eventually(scraped)
        assert samples[("pgwake_job_records_total", (("kind", "imp"),))] == 3
        assert samples[("pgwake_jobs_zero_records_total", (("kind", "imp"),))] == 1
        assert samples[("pgwake_kind_consecutive_failures", (("kind", "bad"),))] == 2
        assert samples[("pgwake_tenant_consecutive_failures", (("tenant", "b"),))] == 2
        (build,) = [k for k in samples if k[0] == "pgwake_build_info"]
        assert dict(build[1])["version"] == listener.__version__
        assert samples[build] == 1
        assert samples[("process_start_time_seconds", ())] > 1e9
        assert samples[("process_open_fds", ())] > 0
        (heartbeat,) = [k for k in samples if k[0] == "pgwake_worker_heartbeat_age_seconds"]
        labels = dict(heartbeat[1])
        assert labels["hostname"] == socket.gethostname()
        assert labels["pid"] == str(os.getpid())
        row = await conn.fetchrow("SELECT id::text, pid FROM pgwake.workers")
        assert labels["worker_id"] == row["id"]
        assert 0 <= samples[heartbeat] < 30


async def test_every_claim_is_timed_and_the_bench_reads_the_slowest(
    dsn: str, conn: asyncpg.Connection
) -> None:
    """pgwake_claim_duration_seconds counts exactly the claim statements
    (pgwake_claims_total) with their time; the bench's reading of it (the lowest bucket
    that holds every claim) is a bound the slowest claim stays under."""
    registry = Registry()

    @registry.handler("tick")
    async def tick(payload: dict[str, Any], ctx: JobContext) -> None:
        return None

    await conn.execute(
        "INSERT INTO pgwake.jobs (tenant_id, kind) "
        "SELECT 't' || (i % 7), 'tick' FROM generate_series(1, 300) AS i"
    )
    async with running_worker(dsn, registry, claim_batch=20) as service:
        port = service.http.port
        assert port
        await eventually(
            lambda: conn.fetchval(
                "SELECT count(*) = 300 FROM pgwake.jobs WHERE status = 'succeeded'"
            )
        )
        status, text = await anyio.to_thread.run_sync(http_get, port, "/metrics")
        assert status == 200
    samples = {
        s.name: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith(("pgwake_claim_duration_seconds", "pgwake_claims_total"))
        and "le" not in s.labels
    }
    claims = samples["pgwake_claims_total"]
    assert claims >= 300 / 20  # claims of at most 20 jobs
    assert samples["pgwake_claim_duration_seconds_count"] == claims
    assert samples["pgwake_claim_duration_seconds_sum"] > 0
    slowest = slowest_bucket(text, "pgwake_claim_duration_seconds")
    assert slowest in CLAIM_BUCKETS  # not +Inf: no claim took 30 s
    # Every claim is at most that long, and the average is under it.
    assert samples["pgwake_claim_duration_seconds_sum"] / claims <= slowest


def test_slowest_bucket_reads_the_lowest_bucket_holding_every_observation() -> None:
    registry = CollectorRegistry()
    histogram = Histogram("h_seconds", "h", buckets=CLAIM_BUCKETS, registry=registry)

    def read() -> float:
        return slowest_bucket(generate_latest(registry).decode(), "h_seconds")

    assert read() == 0.0  # nothing observed
    for value in (0.0004, 0.012, 0.003):
        histogram.observe(value)
    assert read() == 0.015
    histogram.observe(0.05)  # on a bound: that bucket holds it
    assert read() == 0.05
    histogram.observe(31.0)
    assert read() == math.inf
    with pytest.raises(PgwakeError, match="no other_seconds"):
        slowest_bucket(generate_latest(registry).decode(), "other_seconds")
