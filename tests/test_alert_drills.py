"""Alert drills: real faults under real ``pgwake run`` processes, scraped by a real
Prometheus that evaluates the shipped alert rules, and the time each alert takes to
fire.

The rules are the shipped grafana/prometheus/pgwake-alerts.yml with every duration cut
60-fold, a minute to a second: each ``for:`` and each range window (``[15m]`` becomes
``[15s]``, ``[1d]`` ``[1440s]``); thresholds, expressions and labels are unchanged.
Prometheus scrapes and evaluates every second. The promtool unit tests
(pgwake-alerts.test.yml) cover the real durations. Prometheus also scrapes itself as job
``prometheus``: no alert may name that job.

One Prometheus and one fleet of two workers serve every drill, in turn:

1. healthy: with every target up and a history of fast jobs run, nothing fires;
2. the seeds' alerts: a kind and a tenant whose jobs fail for good in a row, a kind
   retried on every attempt, a run that reported zero records, a kind (``sleep``) whose
   runs take far longer than its history;
3. a hung worker (SIGSTOP; not the metrics leader, which samples the database for the
   fleet): its heartbeat is stale as the database says, its target is down, it is lost
   as ``hung``;
4. the whole fleet killed (SIGKILL) while Prometheus scrapes another job: no worker
   ready in job ``pgwake``, every target down;
5. the killed workers started again on the same host and ports: each is reported
   restarted, and the workers they replace are lost as ``restarted``, not ``hung``;
6. the metrics leader hung (SIGSTOP): it is lost as ``hung`` and its sessions ended,
   the other worker takes over the samples, and the queue series keep moving (jobs
   queued during the hang show up);
7. the database gone under the fleet (closed to connections, every session ended,
   renamed away: "database does not exist"), then back: the database alert fires and
   no target goes down (the workers stay up, not ready), and jobs run again once it is
   back.

The time from each fault to each alert firing is printed (``-s`` shows it).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import anyio
import asyncpg
import pytest
import yaml

from tests.support.databases import database_name
from tests.support.drill_handlers import DRILL
from tests.support.grafana_queries import RULES
from tests.support.prometheus import free_port, prometheus_api, start_prometheus, stop
from tests.support.waiting import eventually
from tests.support.workers import spawn_worker, stop_process

JOB = "pgwake"
SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# The heartbeat timeout of the drill's workers: past the rule's 10 s of silence, so the
# stale heartbeat shows before the worker is declared lost.
HEARTBEAT_TIMEOUT = "15"
WORKER_ARGS = (
    "--handlers",
    DRILL,
    "--heartbeat-interval",
    "0.5",
    "--heartbeat-timeout",
    HEARTBEAT_TIMEOUT,
    "--maintenance-interval",
    "0.5",
    "--metrics-interval",
    "0.5",
    "--retry-base",
    "0.05",
    "--retry-cap",
    "0.1",
    "--drain-timeout",
    "1",
    "--concurrency",
    "16",
)

Expected = tuple[str, dict[str, str]]


def shortened(duration: str) -> str:
    """A Prometheus duration (``15m``, ``1d``, ``0s``) cut 60-fold, in seconds."""
    found = re.fullmatch(r"(\d+)([smhd])", duration)
    assert found, duration
    seconds = int(found.group(1)) * SECONDS[found.group(2)] / 60
    return f"{seconds:g}s" if seconds == 0 or seconds >= 1 else f"{round(seconds * 1000)}ms"


def drill_rules(directory: Path) -> Path:
    """The shipped rules with every ``for:`` and range window shortened."""
    data = yaml.safe_load(RULES.read_text())
    for group in data["groups"]:
        for rule in group["rules"]:
            rule["for"] = shortened(rule["for"])
            rule["expr"] = re.sub(
                r"\[(\d+[smhd])\]", lambda m: f"[{shortened(m.group(1))}]", rule["expr"]
            )
    path = directory / "pgwake-alerts-drill.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_shortened() -> None:
    assert [shortened(d) for d in ("0s", "1m", "2m", "15m", "1h", "1d", "30s")] == [
        "0s",
        "1s",
        "2s",
        "15s",
        "60s",
        "1440s",
        "500ms",
    ]


class Fleet:
    """The drill's two workers, each on a fixed metrics port, restartable."""

    def __init__(self, dsn: str, directory: Path) -> None:
        self.dsn = dsn
        self.directory = directory
        self.ports = [free_port(), free_port()]
        self.procs: list[subprocess.Popen[str] | None] = [None, None]
        self.logs: list[TextIO] = []

    def target(self, i: int) -> str:
        return f"127.0.0.1:{self.ports[i]}"

    def start(self, i: int) -> subprocess.Popen[str]:
        log = (self.directory / f"worker{i}-{len(self.logs)}.log").open("w")
        self.logs.append(log)
        proc = spawn_worker(self.dsn, "--metrics-addr", self.target(i), *WORKER_ARGS, log=log)
        self.procs[i] = proc
        return proc

    def kill(self, i: int) -> None:
        proc = self.procs[i]
        assert proc is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def close(self) -> list[tuple[int, str]]:
        outcomes = []
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                outcomes.append(stop_process(proc))
        for log in self.logs:
            log.close()
        return outcomes


def alerts(port: int) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = prometheus_api(port, "alerts")["alerts"]
    # Rules per scrape job: nothing the drill does concerns the job scraping Prometheus.
    assert not [a for a in found if a["labels"].get("job") == "prometheus"], found
    return found


async def watch(
    phase: str,
    port: int,
    expected: list[Expected],
    since: float,
    times: dict[str, float],
    timeout: float,
) -> dict[str, dict[str, Any]]:
    """Wait until each expected alert (name and some of its labels) fires, having become
    active after ``since`` (a time.time()); note the seconds from ``since`` to the first
    poll that saw it firing in ``times``, under ``phase``. Returns the alerts seen, by name."""
    seen: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while True:
        now = time.time()
        current = await anyio.to_thread.run_sync(alerts, port)
        for name, labels in expected:
            key = f"{name}{labels}"
            if key in seen:
                continue
            for a in current:
                if (
                    a["state"] == "firing"
                    and a["labels"]["alertname"] == name
                    and labels.items() <= a["labels"].items()
                    and _epoch(a["activeAt"]) >= since - 1
                ):
                    seen[key] = a
                    times[f"{phase}: {key}"] = now - since
        missing = [f"{n}{lab}" for n, lab in expected if f"{n}{lab}" not in seen]
        if not missing:
            return {a["labels"]["alertname"]: a for a in seen.values()}
        if time.monotonic() > deadline:
            pytest.fail(f"not firing within {timeout}s: {missing}; alerts: {current}")
        await anyio.sleep(0.2)


def _epoch(stamp: str) -> float:
    """An RFC 3339 time of Prometheus's API as seconds since the epoch."""
    return datetime.fromisoformat(
        re.sub(r"(\.\d{6})\d*", r"\1", stamp.replace("Z", "+00:00"))
    ).timestamp()


async def until(check: Callable[[], Awaitable[Any]], timeout: float = 30) -> Any:
    return await eventually(check, timeout=timeout, interval=0.2)


@pytest.mark.timeout(420)
async def test_alert_drills(
    dsn: str, server_dsn: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    own_port = free_port()
    fleet = Fleet(dsn, tmp_path)
    scrape = [
        {"job_name": JOB, "static_configs": [{"targets": [fleet.target(0), fleet.target(1)]}]},
        {"job_name": "prometheus", "static_configs": [{"targets": [f"127.0.0.1:{own_port}"]}]},
    ]
    prometheus, port = start_prometheus(tmp_path, drill_rules(tmp_path), scrape, port=own_port)
    times: dict[str, float] = {}
    slow_feed: anyio.CancelScope | None = None
    try:
        fleet.start(0)
        fleet.start(1)

        async def query(expr: str) -> list[dict[str, Any]]:
            result: list[dict[str, Any]] = await anyio.to_thread.run_sync(
                lambda: prometheus_api(port, "query", query=expr)["result"]
            )
            return result

        async def all_up() -> bool:
            if prometheus.poll() is not None:
                pytest.fail("prometheus exited:\n" + (tmp_path / "prometheus.log").read_text())
            try:
                up = await query("up")
                leader = await query("max(pgwake_leader) == 1")
            except OSError:
                return False
            return len(up) == 3 and all(r["value"][1] == "1" for r in up) and bool(leader)

        await until(all_up, timeout=60)

        # 1. Healthy: a history of fast `sleep` runs (the usual the slow drill compares
        # with), and nothing fires or is pending.
        await conn.execute(
            "INSERT INTO pgwake.jobs (tenant_id, kind, payload) "
            "SELECT 'fast-' || (i % 8), 'sleep', '{\"seconds\": 0}' "
            "FROM generate_series(1, 400) AS i"
        )
        await until(
            lambda: conn.fetchval(
                "SELECT count(*) = 400 FROM pgwake.jobs WHERE status = 'succeeded'"
            )
        )
        settled = time.monotonic() + 5
        while time.monotonic() < settled:
            # Firing, that is sent: a blip that leaves an alert pending for less than its
            # (shortened) for: is not an alert. A loaded machine can miss a scrape of
            # the metrics leader within the drill's 1 s scrape timeout.
            current = [
                a for a in await anyio.to_thread.run_sync(alerts, port) if a["state"] == "firing"
            ]
            if current:
                history = {
                    q: await query(q)
                    for q in (
                        "min_over_time(up[60s])",
                        "count_over_time(up[60s])",
                        "min_over_time(pgwake_leader[60s])",
                        "max_over_time(pgwake_leader[60s])",
                        "count_over_time(pgwake_leader[60s])",
                    )
                }
                pytest.fail(f"a healthy fleet fired {current}; {history}")
            await anyio.sleep(0.5)

        # 2. The seeds' alerts, all at once.
        since = time.time()
        await conn.execute(
            "INSERT INTO pgwake.jobs (tenant_id, kind, max_attempts) "
            "SELECT 'drill-t', 'drill.broken', 1 FROM generate_series(1, 4)"
        )
        await conn.execute(
            "INSERT INTO pgwake.jobs (tenant_id, kind, max_attempts) "
            "SELECT 'flaky-t', 'drill.flaky', 1000 FROM generate_series(1, 3)"
        )
        await conn.execute(
            "INSERT INTO pgwake.jobs (tenant_id, kind, payload) VALUES "
            "('rec-t', 'drill.records', '{\"records\": 7}'), "
            "('rec-t', 'drill.records', '{\"records\": 0}')"
        )

        async def feed_slow_jobs() -> None:
            nonlocal slow_feed
            with anyio.CancelScope() as slow_feed:
                while True:
                    await conn.execute(
                        "INSERT INTO pgwake.jobs (tenant_id, kind, payload) "
                        "VALUES ('slow-t', 'sleep', '{\"seconds\": 1.5}')"
                    )
                    await anyio.sleep(0.5)

        async with anyio.create_task_group() as tg:
            tg.start_soon(feed_slow_jobs)
            seeds = await watch(
                "seeds",
                port,
                [
                    ("PgwakeKindFailingInARow", {"kind": "drill.broken", "severity": "critical"}),
                    ("PgwakeTenantFailingInARow", {"tenant": "drill-t", "severity": "critical"}),
                    ("PgwakeKindAlwaysRetried", {"kind": "drill.flaky", "severity": "critical"}),
                    ("PgwakeJobProcessedNoRecords", {"kind": "drill.records"}),
                    ("PgwakeJobKindSlowerThanUsual", {"kind": "sleep"}),
                ],
                since,
                times,
                timeout=90,
            )
            tg.cancel_scope.cancel()
        await conn.execute(
            "SELECT pgwake.cancel_job(id) FROM pgwake.jobs "
            "WHERE kind IN ('drill.flaky', 'sleep') "
            "AND status IN ('scheduled', 'queued', 'running')"
        )
        # Summaries: counts rounded, the kind named.
        summary = seeds["PgwakeKindFailingInARow"]["annotations"]["summary"]
        assert re.fullmatch(r"pgwake: \d+ drill\.broken jobs in a row failed for good", summary)
        summary = seeds["PgwakeJobProcessedNoRecords"]["annotations"]["summary"]
        assert re.fullmatch(
            r"pgwake: \d+ drill\.records run\(s\) in the last hour processed zero records",
            summary,
        )
        summary = seeds["PgwakeJobKindSlowerThanUsual"]["annotations"]["summary"]
        assert re.fullmatch(r"pgwake: sleep jobs take \d+\.\d times as long as usual", summary)
        # Records are exported by kind.
        records = await query('sum(pgwake_job_records_total{kind="drill.records"})')
        assert float(records[0]["value"][1]) == 7

        # 3. A hung worker: the one that is not the metrics leader.
        (leader,) = await query("pgwake_leader == 1")
        hung = 1 - [fleet.target(0), fleet.target(1)].index(leader["metric"]["instance"])
        hung_proc = fleet.procs[hung]
        assert hung_proc is not None
        since = time.time()
        os.kill(hung_proc.pid, signal.SIGSTOP)
        found = await watch(
            "hung worker",
            port,
            [
                ("PgwakeHeartbeatStale", {"pid": str(hung_proc.pid)}),
                ("PgwakeTargetDown", {"instance": fleet.target(hung)}),
                ("PgwakeWorkersLost", {"why": "hung"}),
            ],
            since,
            times,
            timeout=60,
        )
        assert re.fullmatch(
            rf"pgwake: worker on \S+ pid {hung_proc.pid} went \d+s without a heartbeat",
            found["PgwakeHeartbeatStale"]["annotations"]["summary"],
        )
        os.kill(hung_proc.pid, signal.SIGCONT)

        async def back() -> bool:
            # Scraped again for long enough that its target-down alert has resolved,
            # and beating again.
            down = [
                a
                for a in await anyio.to_thread.run_sync(alerts, port)
                if a["labels"]["alertname"] == "PgwakeTargetDown"
            ]
            registered = await conn.fetchval(
                "SELECT count(*) = 2 FROM pgwake.workers WHERE heartbeat_at > now() - interval '2s'"
            )
            return not down and bool(registered)

        await until(back, timeout=60)

        # 4. The whole fleet killed, while Prometheus scrapes another job.
        since = time.time()
        fleet.kill(0)
        fleet.kill(1)
        await watch(
            "fleet killed",
            port,
            [
                ("PgwakeNoWorkerReady", {"job": JOB, "severity": "critical"}),
                ("PgwakeTargetDown", {"instance": fleet.target(0)}),
                ("PgwakeTargetDown", {"instance": fleet.target(1)}),
            ],
            since,
            times,
            timeout=60,
        )

        # 5. Both started again on the same host and ports: restarts, not hangs.
        since = time.time()
        fleet.start(0)
        fleet.start(1)
        await watch(
            "fleet restarted",
            port,
            [
                ("PgwakeWorkerRestarted", {"instance": fleet.target(0)}),
                ("PgwakeWorkerRestarted", {"instance": fleet.target(1)}),
                ("PgwakeWorkersLost", {"why": "restarted"}),
            ],
            since,
            times,
            timeout=60,
        )
        # The new workers (their counters start at 0) declared nobody hung.
        assert await query('sum(pgwake_workers_lost_total{why="hung"}) > 0') == []
        assert await query('sum(pgwake_workers_lost_total{why="restarted"}) >= 2')

        # 6. The metrics leader hung: another worker takes over the samples, and jobs
        # queued meanwhile (of a kind nobody handles, so they stay queued) show up.
        await until(lambda: query("max(pgwake_leader) == 1"))
        (leader,) = await query("pgwake_leader == 1")
        stopped = [fleet.target(0), fleet.target(1)].index(leader["metric"]["instance"])
        stopped_proc = fleet.procs[stopped]
        assert stopped_proc is not None
        since = time.time()
        os.kill(stopped_proc.pid, signal.SIGSTOP)
        await conn.execute(
            "INSERT INTO pgwake.jobs (tenant_id, kind) "
            "SELECT 'hang-t', 'drill.nobody' FROM generate_series(1, 37)"
        )
        await watch(
            "metrics leader hung",
            port,
            # Not PgwakeHeartbeatStale: the leader samples the heartbeat ages, and the
            # worker that takes over finds this one already declared lost.
            [
                ("PgwakeTargetDown", {"instance": leader["metric"]["instance"]}),
                ("PgwakeWorkersLost", {"why": "hung"}),
            ],
            since,
            times,
            timeout=60,
        )
        other = fleet.target(1 - stopped)

        async def sampled_by_the_other() -> bool:
            queued = await query(
                f'pgwake_queue_jobs{{instance="{other}",kind="_unhandled",status="queued"}}'
            )
            return bool(queued) and float(queued[0]["value"][1]) >= 37

        await until(sampled_by_the_other, timeout=60)
        times["metrics leader hung: queue series moving again"] = time.time() - since
        # The other worker exported the age of the fleet's last sample while it waited.
        peak = await query(
            f'max_over_time(pgwake_metrics_sample_age_seconds{{instance="{other}"}}[60s])'
        )
        assert float(peak[0]["value"][1]) > 1, peak
        os.kill(stopped_proc.pid, signal.SIGCONT)
        await conn.execute("DELETE FROM pgwake.jobs WHERE kind = 'drill.nobody'")
        await until(back, timeout=60)

        # 7. The database gone under the fleet, then back.
        name = database_name(dsn)
        admin = await asyncpg.connect(server_dsn)
        try:
            await conn.close()
            since = time.time()
            # Closed to new sessions first, so that none is left to block the rename.
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
            )

            async def renamed() -> bool:
                try:
                    await admin.execute(f'ALTER DATABASE "{name}" RENAME TO "{name}_away"')
                except asyncpg.ObjectInUseError:
                    return False  # a terminated session not gone yet
                return True

            await until(renamed, timeout=10)
            found = await watch(
                "database gone",
                port,
                [("PgwakeDatabaseUnreachable", {"job": JOB, "severity": "critical"})],
                since,
                times,
                timeout=60,
            )
            assert found
            down = await query(f'up{{job="{JOB}"}} == 0')
            assert down == [], down  # the workers stay up, saying why they are not ready
            await admin.execute(f'ALTER DATABASE "{name}_away" RENAME TO "{name}"')
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            back_at = time.time()
        finally:
            await admin.close()
        conn = await asyncpg.connect(dsn)
        try:
            job_id = await conn.fetchval(
                "INSERT INTO pgwake.jobs (kind, payload) VALUES ('sleep', '{\"seconds\": 0}') "
                "RETURNING id"
            )
            await until(
                lambda: conn.fetchval(
                    "SELECT status = 'succeeded' FROM pgwake.jobs WHERE id = $1", job_id
                ),
                timeout=60,
            )
            times["database back: a job ran"] = time.time() - back_at
        finally:
            await conn.close()
    finally:
        if slow_feed is not None:
            slow_feed.cancel()
        stop(prometheus)
        outcomes = fleet.close()
        print("\nalert drills, seconds from the fault to firing:")
        for key, seconds in times.items():
            print(f"  {seconds:5.1f}  {key}")
    for code, output in outcomes:
        assert code == 0, output
