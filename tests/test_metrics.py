"""The worker's /metrics, /healthz and /readyz, scraped over real HTTP."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from typing import Any

import anyio
import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from listener.api import JobContext, Registry
from tests.conftest import eventually, running_worker
from tests.test_cli import pgwake


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text = await anyio.to_thread.run_sync(get, port, "/metrics")
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
        assert await anyio.to_thread.run_sync(get, port, "/healthz") == (200, "ok\n")
        assert await anyio.to_thread.run_sync(get, port, "/readyz") == (200, "ready\n")
        assert (await anyio.to_thread.run_sync(get, port, "/nope"))[0] == 404
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
            # A sample taken after tenant a's jobs ran: only the unhandled backlog is left.
            samples = await scrape(port)
            return samples if tenant_series(samples) == expected else None

        samples = await eventually(sampled)
        assert samples[("pgwake_jobs_claimed_total", (("kind", "work"),))] == 7
        assert (
            samples[("pgwake_jobs_finished_total", (("kind", "work"), ("outcome", "succeeded")))]
            == 7
        )
        assert samples[("pgwake_job_duration_seconds_count", (("kind", "work"),))] == 7
        assert samples[("pgwake_job_start_latency_seconds_count", (("kind", "work"),))] == 7
        assert samples[("pgwake_worker_capacity", ())] == 4
        assert samples[("pgwake_listener_up", ())] == 1
        assert samples[("pgwake_queue_jobs", (("kind", "other.kind"), ("status", "queued")))] == (
            total
        )
        assert samples[("pgwake_oldest_queued_job_age_seconds", ())] > 0

        # While draining, the worker is alive but not ready.
        await conn.execute(
            "INSERT INTO pgwake.jobs (tenant_id, kind, payload) "
            "VALUES ('a', 'work', '{\"hold\": true}')"
        )
        await eventually(
            lambda: conn.fetchval("SELECT count(*) = 1 FROM pgwake.jobs WHERE status = 'running'")
        )
        service.stop()
        assert (await anyio.to_thread.run_sync(get, port, "/readyz"))[0] == 503
        assert (await anyio.to_thread.run_sync(get, port, "/healthz"))[0] == 200
        release.set()


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
