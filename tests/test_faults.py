"""Real faults on a server of the test's own (tests/support/private_server.py): PostgreSQL
crash-restarted under load, and every packet on its port dropped without a FIN. The
worker must heal by itself, without being restarted, and lose nothing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import anyio
import asyncpg
import pytest

from tests.support.http import http_get
from tests.support.private_server import (
    PrivateServer,
    connect_when_up,
    free_port,
    probe_start_seconds,
)
from tests.support.run_log_handlers import RUN_LOG, RUN_LOG_ENV, runs_by_job
from tests.support.waiting import eventually
from tests.support.workers import spawn_worker, stop_process

# Far longer than any test waits: a job that starts in time was woken, not polled.
POLL = "300"


async def enqueue_forever(dsn: str, stats: dict[str, int], kind: str) -> None:
    """A producer that keeps inserting short jobs of ``kind`` and rides out outages."""
    conn: asyncpg.Connection | None = None
    try:
        while True:
            try:
                if conn is None or conn.is_closed():
                    conn = await asyncpg.connect(dsn, timeout=2)
                await conn.execute(
                    "INSERT INTO pgwake.jobs (kind, payload) "
                    "SELECT $1, '{\"seconds\": 0.02}' FROM generate_series(1, 5)",
                    kind,
                )
                stats["inserted"] += 5
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                stats["refused"] += 1
                if conn is not None:
                    conn.terminate()
                conn = None
            await anyio.sleep(0.05)
    finally:
        if conn is not None:
            conn.terminate()


async def test_postgres_restarted_twice_under_load(
    private_server: PrivateServer, tmp_path: Path
) -> None:
    # Each handler run is noted in a file: the database's own records could be lost
    # with the crash they are meant to witness (a claim lost would take its attempt
    # count with it).
    run_log = tmp_path / "runs.log"
    worker = spawn_worker(
        private_server.dsn,
        "--handlers",
        RUN_LOG,
        "--poll-interval",
        POLL,
        "--concurrency",
        "16",
        "--tenant-concurrency",
        "16",
        env={RUN_LOG_ENV: str(run_log)},
    )
    stats = {"inserted": 0, "refused": 0}
    waits: list[float] = []
    server_up: list[float] = []
    try:
        conn = await connect_when_up(private_server.dsn)
        try:
            await eventually(lambda: conn.fetchval("SELECT count(*) = 1 FROM pgwake.workers"))
        finally:
            await conn.close()

        async def inserted(more: int) -> None:
            """Wait until the producer has inserted ``more`` jobs from now on."""
            target = stats["inserted"] + more
            await eventually(lambda: asyncio.sleep(0, result=stats["inserted"] >= target))

        async with anyio.create_task_group() as producer:
            producer.start_soon(enqueue_forever, private_server.dsn, stats, "logged_sleep")
            for _ in range(2):
                await inserted(100)  # under load
                private_server.restart_immediate()
                server_up.append(time.time())  # pg_ctl -w: accepting connections
                waits.append(await probe_start_seconds(private_server.dsn))
            await inserted(50)  # the producer is back too
            producer.cancel_scope.cancel()
        assert worker.poll() is None, "the worker died instead of reconnecting"
        conn = await connect_when_up(private_server.dsn)
        try:

            async def all_done() -> bool:
                left = await conn.fetchval(
                    "SELECT count(*) FROM pgwake.jobs WHERE status NOT IN ('succeeded')"
                )
                return left == 0

            await eventually(all_done, timeout=60)
            summary = await conn.fetchrow(
                "SELECT count(*) AS jobs, max(attempts) AS max_attempts FROM pgwake.jobs"
            )
            logged = {
                r["id"]
                for r in await conn.fetch("SELECT id FROM pgwake.jobs WHERE kind = 'logged_sleep'")
            }
        finally:
            await conn.close()
    finally:
        code, output = stop_process(worker)
    assert code == 0, output
    # Every job ran exactly once: no handler was run twice because of the restarts,
    # by its own count (the file) and by the database's (the attempts).
    assert summary["jobs"] >= stats["inserted"] + 2
    assert summary["max_attempts"] == 1
    runs = runs_by_job(str(run_log))
    assert set(runs) == logged
    assert {job_id: n for job_id, n in runs.items() if n != 1} == {}
    # Each restart was one reconnect of the listener, logged once, not once per retry.
    assert output.count("listener reconnected") == 2, output
    assert output.count("listener disconnected") == 2, output
    # The other loops too: at most one line per outage each, however many retries.
    for trouble in ("claim failed", "heartbeat connection lost", "recovery round failed"):
        assert output.count(trouble) <= 2, (trouble, output)
    # Both probes were woken by NOTIFY after the reconnect, not by the 300 s poll.
    assert all(w < 60 for w in waits), waits
    reconnected = [
        datetime.fromisoformat(line["timestamp"]).timestamp()
        for line in (json.loads(text) for text in output.splitlines() if text.startswith("{"))
        if line.get("event") == "listener reconnected"
    ]
    delays = [f"{1000 * (r - up):.0f}" for r, up in zip(reconnected, server_up, strict=True)]
    print(
        f"\nafter each restart: listener reconnected {delays} ms after the server accepted "
        f"connections; a job inserted then started after "
        f"{[f'{1000 * w:.1f}' for w in waits]} ms; {summary['jobs']} jobs"
    )


NFT_TABLE = "pgwake_test_drop"


@contextlib.contextmanager
def packets_dropped(port: int) -> Iterator[None]:
    """Drop every TCP packet to or from ``port`` on this host: connections go silent,
    no FIN, no RST, like a cut cable."""
    subprocess.run(["nft", "add", "table", "inet", NFT_TABLE], check=True)
    try:
        subprocess.run(
            ["nft", "add", "chain", "inet", NFT_TABLE, "out",
             "{ type filter hook output priority 0 ; policy accept ; }"],
            check=True,
        )  # fmt: skip
        for direction in ("dport", "sport"):
            subprocess.run(
                ["nft", "add", "rule", "inet", NFT_TABLE, "out", "tcp", direction, str(port),
                 "drop"],
                check=True,
            )  # fmt: skip
        yield
    finally:
        subprocess.run(["nft", "delete", "table", "inet", NFT_TABLE], check=False)


def readyz(port: int) -> int:
    """The status of /readyz (0 when the server cannot be reached)."""
    return http_get(port, "/readyz", timeout=2)[0]


@pytest.mark.skipif(
    shutil.which("nft") is None or os.geteuid() != 0,
    reason="needs root and nft (nftables) to drop packets",
)
async def test_connection_cut_without_fin_is_detected_and_healed(
    private_server: PrivateServer,
) -> None:
    metrics_port = free_port()
    worker = spawn_worker(
        private_server.dsn,
        "--poll-interval",
        POLL,
        env={"PGWAKE_METRICS_ADDR": f"127.0.0.1:{metrics_port}"},
    )
    try:

        async def ready() -> bool:
            return readyz(metrics_port) == 200

        async def not_ready() -> bool:
            return readyz(metrics_port) == 503

        await eventually(ready, timeout=30)
        with packets_dropped(private_server.port):
            cut = time.monotonic()
            await eventually(not_ready, timeout=60, interval=0.1)
            detected = time.monotonic() - cut
            await anyio.sleep(2)  # reconnect attempts go unanswered meanwhile
        healed_from = time.monotonic()
        await eventually(ready, timeout=60, interval=0.1)
        healed = time.monotonic() - healed_from
        waited = await probe_start_seconds(private_server.dsn)
        assert worker.poll() is None, "the worker died instead of healing"
    finally:
        code, output = stop_process(worker)
    assert code == 0, output
    assert "listener disconnected" in output, output
    assert "listener reconnected" in output, output
    assert waited < 60, waited
    print(
        f"\nsilent connection detected after {detected:.1f}s; listening again "
        f"{healed:.1f}s after the packets flowed again; a new job started after {waited:.3f}s"
    )
