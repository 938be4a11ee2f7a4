"""A metrics leader cannot hold the fleet blind.

- A leader stopped with SIGSTOP (real worker processes): it is declared lost after the
  heartbeat timeout, its sessions are ended (so its metrics lock goes free), another
  worker leads and the queue series move again; every worker exported the growing age
  of the last sample meanwhile. After SIGCONT the old leader registers again and does
  not lead.
- A leader whose sample cannot finish (pgwake.jobs locked): its sample times out, it
  withdraws its series and steps down; the sample age grows; when the lock is gone a
  leader samples again and the age is small again.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator

import anyio
import asyncpg
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from listener import db
from listener.locks import METRICS_LEADER
from listener.maintenance.sampler import Sampler
from listener.metrics import Metrics
from tests.support.http import http_get
from tests.support.private_server import free_port
from tests.support.waiting import eventually
from tests.support.workers import spawn_worker, stop_process, wait_ready

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
UNHANDLED_QUEUED = ("pgwake_queue_jobs", (("kind", "_unhandled"), ("status", "queued")))
LEADER = ("pgwake_leader", ())
SAMPLE_AGE = ("pgwake_metrics_sample_age_seconds", ())


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def scrape(port: int) -> Samples | None:
    """The worker's samples, or None when it does not answer (a stopped process)."""
    status, text = await anyio.to_thread.run_sync(http_get, port, "/metrics", 1.0)
    return parse(text) if status == 200 else None


async def insert_unhandled(conn: asyncpg.Connection, n: int) -> None:
    await conn.execute(
        "INSERT INTO pgwake.jobs (kind) SELECT 'nobody.handles' FROM generate_series(1, $1)", n
    )


async def test_a_stopped_metrics_leader_is_replaced_and_the_series_keep_moving(
    dsn: str, conn: asyncpg.Connection
) -> None:
    ports = [free_port() for _ in range(3)]
    env = {
        "PGWAKE_HEARTBEAT_INTERVAL": "0.5",
        "PGWAKE_HEARTBEAT_TIMEOUT": "3",
        "PGWAKE_MAINTENANCE_INTERVAL": "0.5",
        "PGWAKE_METRICS_INTERVAL": "0.5",
    }
    workers = [
        spawn_worker(dsn, env={**env, "PGWAKE_METRICS_ADDR": f"127.0.0.1:{port}"}) for port in ports
    ]
    stopped: subprocess.Popen[str] | None = None
    try:
        await wait_ready(conn, 3)
        await insert_unhandled(conn, 5)

        async def leader_showing(queued: float) -> tuple[int] | None:
            """(index,) of the worker that leads and shows ``queued`` unhandled jobs."""
            for i, port in enumerate(ports):
                samples = await scrape(port)
                if samples and samples.get(LEADER) == 1 and samples.get(UNHANDLED_QUEUED) == queued:
                    return (i,)
            return None

        (first,) = await eventually(lambda: leader_showing(5), timeout=30)
        stopped = workers[first]
        os.kill(stopped.pid, signal.SIGSTOP)
        began = time.monotonic()
        await insert_unhandled(conn, 5)
        others = [port for i, port in enumerate(ports) if i != first]

        # Meanwhile the others export a growing sample age.
        ages: list[float] = []

        async def taken_over() -> tuple[int] | None:
            for port in others:
                samples = await scrape(port)
                if samples is not None:
                    ages.append(samples[SAMPLE_AGE])
            return await leader_showing(10)

        (second,) = await eventually(taken_over, timeout=30)
        took = time.monotonic() - began
        print(f"another worker led and showed the new jobs {took:.2f}s after SIGSTOP")
        print(f"largest sample age the others exported meanwhile: {max(ages):.2f}s")
        assert second != first
        assert max(ages) > 1.0, ages  # samples come every 0.5 s when a leader samples
        # The series keep moving with the new leader; its sample age is fresh.
        await insert_unhandled(conn, 5)
        assert await eventually(lambda: leader_showing(15), timeout=10) == (second,)
        fresh = await scrape(ports[second])
        assert fresh is not None
        assert fresh[SAMPLE_AGE] < 2.0, fresh[SAMPLE_AGE]

        # The stopped worker was declared lost and its sessions were ended.
        name = f"pgwake@{socket.gethostname()}:{stopped.pid}"
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", name
            )
            == 0
        )

        os.kill(stopped.pid, signal.SIGCONT)
        stopped = None
        await wait_ready(conn, 3)

        async def back_not_leading() -> bool:
            samples = await scrape(ports[first])
            return bool(
                samples is not None and samples.get(LEADER) == 0 and UNHANDLED_QUEUED not in samples
            )

        await eventually(back_not_leading, timeout=30)
    finally:
        if stopped is not None:
            os.kill(stopped.pid, signal.SIGCONT)
        results = [stop_process(worker) for worker in workers]
        outputs = "\n".join(output for _, output in results)
        # Shown by pytest when the test fails, also when a wait above timed out.
        print(f"\nthe workers' logs:\n{outputs}")
    assert [code for code, _ in results] == [0, 0, 0], outputs
    assert "recovered jobs of lost workers" in outputs, outputs
    assert '"sessions_ended": 0' not in outputs, outputs


@pytest.fixture
async def pool(dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await db.create_pool(dsn, size=4)
    try:
        yield pool
    finally:
        await pool.close()


def exported(metrics: Metrics) -> Samples:
    return parse(generate_latest(metrics.registry).decode())


async def test_a_leader_whose_sample_cannot_finish_steps_down(
    pool: asyncpg.Pool, dsn: str, conn: asyncpg.Connection
) -> None:
    metrics = [Metrics(), Metrics()]
    samplers = [Sampler(pool, m, ["echo"], interval=0.3, timeout=1.0) for m in metrics]
    await insert_unhandled(conn, 3)
    async with anyio.create_task_group() as tg:
        for sampler in samplers:
            await tg.start(sampler.run)

        async def leading() -> tuple[int] | None:
            for i, m in enumerate(metrics):
                samples = exported(m)
                if samples[LEADER] == 1 and samples.get(UNHANDLED_QUEUED) == 3:
                    return (i,)
            return None

        (first,) = await eventually(leading)
        blocker = await asyncpg.connect(dsn)
        try:
            async with blocker.transaction():
                await blocker.execute("LOCK TABLE pgwake.jobs IN ACCESS EXCLUSIVE MODE")

                async def stepped_down() -> bool:
                    samples = exported(metrics[first])
                    return samples[LEADER] == 0 and UNHANDLED_QUEUED not in samples

                await eventually(stepped_down, timeout=20)

                # Nobody can sample: the age grows on both, and no series are shown.
                async def blind() -> bool:
                    return all(exported(m)[SAMPLE_AGE] > 2.0 for m in metrics)

                await eventually(blind, timeout=20)
                for m in metrics:
                    assert UNHANDLED_QUEUED not in exported(m)
        finally:
            await blocker.close()

        async def fresh_again() -> bool:
            for m in metrics:
                samples = exported(m)
                if samples[LEADER] == 1 and samples.get(UNHANDLED_QUEUED) == 3:
                    return samples[SAMPLE_AGE] < 1.0
            return False

        await eventually(fresh_again, timeout=20)
        tg.cancel_scope.cancel()
    # Once stopped, neither holds the metrics lock (a connection closed by the client
    # ends on the server a moment later).

    async def lock_free() -> bool:
        held = await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
            "AND classid = $1::bigint::oid AND objid = $2::bigint::oid AND granted",
            METRICS_LEADER.classid,
            METRICS_LEADER.objid,
        )
        return bool(held == 0)

    await eventually(lock_free)
