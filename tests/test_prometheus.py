"""A real Prometheus (Debian's package) scrapes real ``pgwake run`` processes: every panel
query and variable of the dashboards, and every alert expression (without its threshold,
see grafana_queries.data_parts), returns data through the Prometheus HTTP API.

Prometheus answers success with an empty result for a metric name that does not exist,
so each query must return at least one sample with a number; a dashboard query must
return no NaN at all (an idle kind's percentile or failure share is left out, not drawn
as NaN). With kinds picked in the ``kind`` variable, the queue panels still show the
jobs of kinds nobody handles (``_unhandled``); and once one worker has stopped and the
other hangs (SIGSTOP), the dashboard shows a 0 ready and both targets down, not "No
data". The workload
makes every series real: successes, failures, retries, a cancelled running job, a
worker killed with a job in flight (recovered by a survivor), a backlog of a kind
nobody handles across tenants, jobs in flight and a scheduled job.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

from tests.support.grafana_queries import (
    DASHBOARDS,
    RULES,
    alert_rules,
    annotation_queries,
    data_parts,
    load_dashboard,
    panel_queries,
    variable_queries,
)
from tests.support.prometheus import free_port, get_json
from tests.support.waiting import eventually
from tests.support.workers import spawn_worker, stop_process, wait_ready

JOB = "pgwake"
# What Grafana puts in for the dashboard variables: this scrape job, "All" workers and
# kinds, a rate window of a minute (the workload ran within it), and the 5 minutes the
# event-count panels ask for at least as their interval.
VARIABLES = {
    "datasource": "prometheus",
    "job": JOB,
    "instance": ".*",
    "kind": ".*",
    "__rate_interval": "1m",
    "__interval": "5m",
}
# Two kinds picked, as Grafana writes a multi-value variable into a regex.
PICKED_KINDS = {**VARIABLES, "kind": "(echo|sleep)"}


def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path:
        return path
    if os.environ.get("CI"):
        pytest.fail("prometheus is missing; .ci/run installs the Debian package")
    pytest.skip("prometheus is missing (Debian package prometheus)")


def api(port: int, path: str, **params: str) -> Any:
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    body = get_json(port, f"/api/v1/{path}{query}")
    assert body["status"] == "success", body
    return body["data"]


def samples(port: int, query: str) -> list[tuple[dict[str, str], float]]:
    """The (labels, value) of an instant query at now, NaN included."""
    data = api(port, "query", query=query)
    if data["resultType"] == "scalar":
        return [({}, float(data["result"][1]))]
    assert data["resultType"] == "vector", (query, data)
    return [(sample["metric"], float(sample["value"][1])) for sample in data["result"]]


def numbers(port: int, query: str) -> list[float]:
    """The values of an instant query at now; NaN left out."""
    return [v for _, v in samples(port, query) if not math.isnan(v)]


def pending(query: str) -> str:
    """An alert annotation's query over pending alerts instead of firing ones."""
    assert 'alertstate="firing"' in query, query
    return query.replace('alertstate="firing"', 'alertstate="pending"')


def read_logs(directory: Path, pattern: str) -> str:
    return "\n".join(path.read_text() for path in sorted(directory.glob(pattern)))


def start_prometheus(tmp_path: Path, targets: list[str]) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": targets}]}],
    }
    (tmp_path / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    log = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            prometheus_binary(),
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    log.close()
    return proc, port


async def enqueue_workload(conn: asyncpg.Connection) -> int:
    """Every outcome, a backlog and jobs in flight; returns the id of the job to cancel."""
    await conn.execute(
        "INSERT INTO pgwake.jobs (tenant_id, kind, payload) "
        "SELECT t, 'echo', '{}' FROM unnest(ARRAY['acme', 'beta', 'gamma']) AS t, "
        "generate_series(1, 7)"
    )
    # Invalid payloads: failed at once.
    await conn.execute(
        "INSERT INTO pgwake.jobs (tenant_id, kind, payload) "
        "SELECT 'beta', 'sleep', '{\"seconds\": -1}' FROM generate_series(1, 3)"
    )
    # Timeouts: retried once, then failed.
    await conn.execute(
        "INSERT INTO pgwake.jobs (tenant_id, kind, payload, timeout, max_attempts) "
        "SELECT 'gamma', 'sleep', '{\"seconds\": 5}', interval '50 milliseconds', 2 "
        "FROM generate_series(1, 3)"
    )
    # A backlog of a kind no worker handles, over many tenants.
    await conn.execute(
        "INSERT INTO pgwake.jobs (tenant_id, kind) "
        "SELECT 'tenant-' || (i % 12), 'report.unknown' FROM generate_series(1, 30) AS i"
    )
    # In flight while Prometheus looks, and one due in an hour.
    await conn.execute(
        "INSERT INTO pgwake.jobs (tenant_id, kind, payload) "
        "SELECT 'acme', 'sleep', '{\"seconds\": 120}' FROM generate_series(1, 2)"
    )
    await conn.execute(
        "INSERT INTO pgwake.jobs (kind, run_at) VALUES ('echo', now() + interval '1 hour')"
    )
    cancel: int = await conn.fetchval(
        "INSERT INTO pgwake.jobs (tenant_id, kind, payload) "
        "VALUES ('acme', 'sleep', '{\"seconds\": 600}') RETURNING id"
    )
    return cancel


async def test_every_dashboard_query_and_alert_expression_returns_data(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    prometheus_binary()
    fast = ["--heartbeat-interval", "0.5", "--maintenance-interval", "0.5"]
    worker_args = [
        *fast,
        "--metrics-interval",
        "0.5",
        "--retry-base",
        "0.05",
        "--retry-cap",
        "0.1",
        "--drain-timeout",
        "1",
        "--metrics-tenant",
        "acme",
    ]
    logs = [(tmp_path / f"worker{i}.log").open("w") for i in range(3)]
    ports = [free_port(), free_port()]
    # Prometheus first, so it sees every counter rise from its start.
    prometheus, port = start_prometheus(tmp_path, [f"127.0.0.1:{p}" for p in ports])
    workers: list[subprocess.Popen[str]] = []
    victim: subprocess.Popen[str] | None = None
    try:
        # A worker that will be killed with a job in flight: it claims that job before
        # the others start.
        victim = spawn_worker(dsn, *fast, log=logs[0])
        await wait_ready(conn, 1)
        lost_job = await conn.fetchval(
            "INSERT INTO pgwake.jobs (kind, payload, max_attempts) "
            "VALUES ('sleep', '{\"seconds\": 600}', 2) RETURNING id"
        )
        await eventually(
            lambda: conn.fetchval(
                "SELECT status = 'running' FROM pgwake.jobs WHERE id = $1", lost_job
            )
        )
        workers = [
            spawn_worker(dsn, "--metrics-addr", f"127.0.0.1:{port}", *worker_args, log=log)
            for port, log in zip(ports, logs[1:], strict=True)
        ]

        async def scraped() -> bool:
            if prometheus.poll() is not None:
                pytest.fail("prometheus exited:\n" + read_logs(tmp_path, "prometheus.log"))
            try:
                targets = await anyio.to_thread.run_sync(api, port, "targets")
            except OSError:
                return False  # not listening yet
            active = targets["activeTargets"]
            return len(active) == 2 and all(t["health"] == "up" for t in active)

        await eventually(scraped, timeout=60, interval=0.2)

        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
        # A survivor recovers the lost job and removes the dead worker's row; the job
        # runs again.
        await eventually(
            lambda: conn.fetchval(
                "SELECT status = 'running' AND attempts = 2 "
                "AND NOT EXISTS (SELECT 1 FROM pgwake.workers WHERE pid = $2) "
                "FROM pgwake.jobs WHERE id = $1",
                lost_job,
                victim.pid,
            ),
            timeout=30,
        )
        cancel = await enqueue_workload(conn)
        await eventually(
            lambda: conn.fetchval(
                "SELECT status = 'running' FROM pgwake.jobs WHERE id = $1", cancel
            )
        )
        await conn.execute("SELECT pgwake.cancel_job($1)", cancel)
        await eventually(
            lambda: conn.fetchval(
                "SELECT count(*) = 0 FROM pgwake.jobs "
                "WHERE kind IN ('echo', 'sleep') AND status IN ('queued', 'scheduled') "
                "AND run_at < now() + interval '1 minute'"
            ),
            timeout=30,
        )
        await eventually(
            lambda: conn.fetchval(
                "SELECT status = 'cancelled' FROM pgwake.jobs WHERE id = $1", cancel
            )
        )

        queries: list[tuple[str, str]] = []
        for path in DASHBOARDS:
            dashboard = load_dashboard(path)
            queries += [
                (f"{path.name}: panel {n}", q) for n, q in panel_queries(dashboard, VARIABLES)
            ]
            queries += [
                (f"{path.name}: variable {n}", q) for n, q in variable_queries(dashboard, VARIABLES)
            ]
            # The exception: an alert annotation shows firing alerts, and none fires
            # within the test's minute (every rule waits at least a minute in `for:`).
            # The same query over pending alerts proves that its selector matches the
            # ALERTS series Prometheus writes for the shipped rules.
            queries += [
                (f"{path.name}: annotation {n} (pending alerts)", pending(q))
                for n, q in annotation_queries(dashboard, VARIABLES)
            ]
        panel_count = len(queries)
        rules = alert_rules()
        for rule in rules:
            queries += [(f"alert {rule['alert']}", part) for part in data_parts(rule["expr"])]

        async def results() -> list[tuple[str, str, list[float]]]:
            return [
                (name, query, [v for _, v in await anyio.to_thread.run_sync(samples, port, query)])
                for name, query in queries
            ]

        async def empty() -> list[tuple[str, str]]:
            return [
                (name, query)
                for name, query, values in await results()
                if all(math.isnan(v) for v in values)
            ]

        async def all_answer() -> bool:
            return not await empty()

        try:
            await eventually(all_answer, timeout=60, interval=0.5)
        except pytest.fail.Exception:
            pytest.fail(
                "queries returning no data:\n" + "\n".join(f"{n}: {q}" for n, q in await empty())
            )
        # Every series of every dashboard query is a number: no NaN for idle kinds.
        nan = [
            f"{name}: {query}"
            for name, query, values in (await results())[:panel_count]
            if any(math.isnan(v) for v in values)
        ]
        assert not nan, "dashboard queries returning NaN series:\n" + "\n".join(nan)
        print(
            f"\n{panel_count} panel and variable queries and "
            f"{len(queries) - panel_count} parts of {len(rules)} alert expressions "
            "returned data"
        )

        async def settles(query: str, expected: float) -> None:
            """Wait for the query's one value to be ``expected``: the latest scrape may
            be a scrape interval behind the workers."""

            async def check() -> bool:
                return await anyio.to_thread.run_sync(numbers, port, query) == [expected]

            try:
                await eventually(check, timeout=15)
            except pytest.fail.Exception:
                pytest.fail(f"{query}: {numbers(port, query)}, expected [{expected}]")

        # The series say what happened, and the sampled ones count once across workers.
        await settles('sum(pgwake_jobs_finished_total{outcome="succeeded"})', 21)
        await settles('sum(pgwake_jobs_finished_total{outcome="failed"})', 6)
        await settles('sum(pgwake_jobs_finished_total{outcome="retried"})', 3)
        await settles('sum(pgwake_jobs_finished_total{outcome="cancelled"})', 1)
        await settles("sum(pgwake_jobs_cancelled_while_running_total)", 1)
        await settles('sum(pgwake_jobs_recovered_total{why="gone", status="queued"})', 1)
        await settles('sum(pgwake_workers_lost_total{why="gone"})', 1)
        await settles("sum(pgwake_leader)", 1)
        await settles('sum(pgwake_queue_jobs{kind="_unhandled", status="queued"})', 30)
        await settles('sum(pgwake_queue_jobs{kind="echo", status="scheduled"})', 1)
        await settles("sum(pgwake_tenant_queued_jobs)", 30)
        await settles("sum(pgwake_workers_registered)", 2)
        await settles("sum(pgwake_jobs_in_flight)", 3)  # two sleepers and the recovered job

        # With kinds picked, every panel that shows the jobs of kinds nobody handles
        # with all kinds still shows them.
        picked = dict(panel_queries(load_dashboard(DASHBOARDS[0]), PICKED_KINDS))
        unhandled = [
            name
            for name, query in panel_queries(load_dashboard(DASHBOARDS[0]), VARIABLES)
            if any(labels.get("kind") == "_unhandled" for labels, _ in samples(port, query))
        ]
        assert "Queued jobs by kind [A]" in unhandled
        for name in unhandled:
            kinds = {labels.get("kind") for labels, _ in samples(port, picked[name])}
            assert "_unhandled" in kinds, f"{name} with kinds picked: {kinds}"
        await settles(picked["Queued jobs [A]"], 30)

        # Prometheus loaded and evaluated every rule without error.
        groups = api(port, "rules")["groups"]
        loaded = [r for g in groups for r in g["rules"] if r["type"] == "alerting"]
        assert sorted(r["name"] for r in loaded) == sorted(r["alert"] for r in rules)
        await eventually(
            lambda: anyio.to_thread.run_sync(
                lambda: all(
                    r["health"] == "ok" for g in api(port, "rules")["groups"] for r in g["rules"]
                )
            )
        )

        # A dead fleet: one worker stopped, the other hung (SIGSTOP: its scrapes time
        # out). The ready stat shows a 0 (red), not "No data", and both targets are down.
        hung, dead = workers
        stop_process(dead)
        hung.send_signal(signal.SIGSTOP)
        try:
            panel = dict(panel_queries(load_dashboard(DASHBOARDS[0]), VARIABLES))
            await settles(panel["Targets down [A]"], 2)
            await settles(panel["Workers ready [A]"], 0)
        finally:
            hung.send_signal(signal.SIGCONT)
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=30)
        outcomes = [stop_process(w) for w in workers]
        if victim is not None and victim.poll() is None:
            victim.kill()
            victim.wait()
        for log in logs:
            log.close()
    for code, _ in outcomes:
        assert code == 0, read_logs(tmp_path, "worker*.log")
