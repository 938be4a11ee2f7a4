"""Cron schedules: slots computed in the schedule's time zone, enqueued once per slot
across the fleet, missed slots by policy, and the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import anyio
import asyncpg
import pytest

from listener import db
from listener.maintenance.schedules import MAX_CATCH_UP, Scheduler, due_slots
from tests.support import processes
from tests.support.background import Background, Scenario
from tests.support.cli import pgwake
from tests.support.databases import fresh_database
from tests.support.schedules import add_schedule
from tests.support.waiting import eventually
from tests.support.workers import spawn_worker, stop_process, wait_ready


def test_due_slots_skip_and_catch_up() -> None:
    start = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
    now = start + timedelta(minutes=3, seconds=30)
    skip, following = due_slots("* * * * *", "UTC", start, now, "skip")
    assert skip == [start + timedelta(minutes=3)]
    assert following == start + timedelta(minutes=4)
    every, following = due_slots("* * * * *", "UTC", start, now, "catch_up")
    assert every == [start + timedelta(minutes=m) for m in range(4)]
    assert following == start + timedelta(minutes=4)


def test_catching_up_continues_at_the_next_real_slot() -> None:
    """A catch-up longer than one round's share resumes at the next cron slot: every
    missed slot once, none invented between them."""
    start = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
    now = start + timedelta(minutes=MAX_CATCH_UP + 500)
    first, following = due_slots("* * * * *", "UTC", start, now, "catch_up")
    assert len(first) == MAX_CATCH_UP
    assert following == first[-1] + timedelta(minutes=1)
    rest, after = due_slots("* * * * *", "UTC", following, now, "catch_up")
    assert rest[0] == following
    every = first + rest
    assert every == [start + timedelta(minutes=m) for m in range(MAX_CATCH_UP + 501)]
    assert after == now + timedelta(minutes=1)


def test_slots_follow_the_time_zone_across_dst() -> None:
    paris = ZoneInfo("Europe/Paris")
    # 09:00 Paris is 08:00 UTC in winter and 07:00 UTC in summer (DST from 29 March).
    before = datetime(2026, 3, 27, 9, 0, tzinfo=paris)
    now = datetime(2026, 3, 30, 12, 0, tzinfo=paris)
    slots, _ = due_slots("0 9 * * *", "Europe/Paris", before, now, "catch_up")
    assert [s.astimezone(UTC).hour for s in slots] == [8, 8, 7, 7]


async def test_rounds_enqueue_each_slot_once(dsn: str, conn: asyncpg.Connection) -> None:
    ago = await conn.fetchval("SELECT date_trunc('minute', now()) - interval '3 minutes'")
    await add_schedule(conn, "skipper", next_run_at=ago)
    await add_schedule(conn, "catcher", next_run_at=ago, missed="catch_up")
    await add_schedule(conn, "fan_out", next_run_at=ago, tenant_id=None)
    await add_schedule(conn, "new")  # next_run_at NULL: computed, nothing enqueued yet
    await add_schedule(conn, "broken", cron="61 * * * *", next_run_at=ago)
    await add_schedule(conn, "paused", next_run_at=ago, enabled=False)
    await conn.execute("INSERT INTO pgwake.tenants (tenant_id) VALUES ('t1'), ('t2')")
    pools = [await db.create_pool(dsn, size=1) for _ in range(3)]
    try:
        # Three workers' rounds at once: one leads, the others skip.
        results = await asyncio.gather(*(Scheduler(p).round() for p in pools))
        assert sorted(r for r in results if r is not None) == [1 + 4 + 2]
        assert results.count(None) == 2
        assert await Scheduler(pools[0]).round() == 0  # nothing is due twice
    finally:
        for pool in pools:
            await pool.close()
    jobs = await conn.fetch("SELECT tenant_id, unique_key FROM pgwake.jobs ORDER BY unique_key")
    keys = [j["unique_key"] for j in jobs]
    assert len([k for k in keys if k.startswith("schedule:skipper:")]) == 1
    assert len([k for k in keys if k.startswith("schedule:catcher:")]) == 4
    assert sorted(
        j["tenant_id"] for j in jobs if j["unique_key"].startswith("schedule:fan_out")
    ) == [
        "t1",
        "t2",
    ]
    rows = {r["name"]: r for r in await conn.fetch("SELECT * FROM pgwake.schedules")}
    now = await conn.fetchval("SELECT now()")
    for name in ("skipper", "catcher", "fan_out", "new"):
        assert now < rows[name]["next_run_at"] <= now + timedelta(minutes=1)
    assert rows["broken"]["enabled"] is False
    assert "invalid cron '61 * * * *'" in rows["broken"]["last_error"]
    assert rows["paused"]["next_run_at"] == ago


async def test_schedules_cli(dsn: str, conn: asyncpg.Connection) -> None:
    added = pgwake(
        "schedules", "add", "nightly", "--cron", "0 3 * * *", "--kind", "report",
        "--tenant", "acme", "--timezone", "Europe/Paris", "--payload", '{"full": true}',
        dsn=dsn,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert "added schedule nightly: 0 3 * * * (Europe/Paris) enqueues report for tenant acme" in (
        added.stdout
    )
    again = pgwake("schedules", "add", "nightly", "--cron", "0 3 * * *", "--kind", "r", dsn=dsn)
    assert again.returncode == 1
    assert "schedule 'nightly' exists already" in again.stderr
    listed = json.loads(pgwake("schedules", "list", "--json", dsn=dsn).stdout)["schedules"]
    assert [(s["name"], s["payload"], s["missed"]) for s in listed] == [
        ("nightly", {"full": True}, "skip")
    ]
    for args, message in (
        (("--cron", "0 3 * *"), "must have 5 fields"),
        (("--cron", "0 25 * * *"), "invalid cron '0 25 * * *'"),
        (("--cron", "0 3 * * *", "--timezone", "Mars/Olympus"), "unknown time zone"),
        (("--cron", "0 3 * * *", "--missed", "later"), "--missed must be one of skip, catch_up"),
        (("--cron", "0 3 * * *", "--payload", "[1]"), "--payload must be a JSON object"),
    ):
        bad = pgwake("schedules", "add", "x", "--kind", "k", *args, dsn=dsn)
        assert bad.returncode == 2, (args, bad.stderr)
        assert message in bad.stderr
    assert await conn.fetchval("SELECT count(*) FROM pgwake.schedules") == 1
    for args in (("list", "--all"), ("remove",), ("add", "x", "--kind", "k")):
        refused = pgwake("schedules", *args, dsn=dsn)
        assert refused.returncode == 2, (args, refused.stderr)
    removed = pgwake("schedules", "remove", "nightly", dsn=dsn)
    assert removed.returncode == 0
    gone = pgwake("schedules", "remove", "nightly", dsn=dsn)
    assert gone.returncode == 1
    assert "schedule 'nightly' does not exist" in gone.stderr


async def sleep_until_second(conn: asyncpg.Connection, second: float) -> None:
    """Sleep until ``second`` seconds past the next minute, or past this minute if that
    is still ahead (the database's clock)."""
    now: float = await conn.fetchval("SELECT extract(second FROM now())::float8")
    await anyio.sleep((second - now) % 60)


async def slot_jobs_succeeded(conn: asyncpg.Connection, at_least: int) -> int:
    """Wait until ``at_least`` jobs of the schedule have succeeded; how many have."""

    async def succeeded() -> int:
        n: int = await conn.fetchval(
            "SELECT count(*) FROM pgwake.jobs WHERE unique_key LIKE 'schedule:minutely:%' "
            "AND status = 'succeeded'"
        )
        return n if n >= at_least else 0

    return await eventually(succeeded, timeout=120, interval=0.2)


@dataclass(frozen=True)
class MinutelyRun:
    """What the minutely scenario saw: the database's clock when it began and ended,
    the unique keys of the schedule's jobs, how many succeeded, the workers' exit codes."""

    started: datetime
    ended: datetime
    keys: list[str]
    succeeded: int
    exit_codes: list[int]


async def three_workers_every_minute_with_a_restart(scenario: Scenario) -> MinutelyRun:
    """`*/1 * * * *` for about 3 minutes with 3 worker processes, every worker stopped
    across one slot (the background scenario of the test below)."""
    args = ("--poll-interval", "60")

    def spawn(dsn: str) -> subprocess.Popen[str]:
        return processes.keep(lambda: spawn_worker(dsn, *args, environ=scenario.environ))

    def stop(worker: subprocess.Popen[str]) -> int:
        code, _ = stop_process(worker)
        processes.release(worker.pid)
        return code

    async with fresh_database(scenario.server_dsn, scenario.template_db) as dsn:
        conn = await db.connect(dsn)
        try:
            await add_schedule(conn, "minutely", cron="*/1 * * * *", kind="noop")
            workers = [spawn(dsn) for _ in range(3)]
            started = await conn.fetchval("SELECT now()")
            codes: list[int] = []
            try:
                await wait_ready(conn, 3)
                # Up across at least one slot (its job has run), then stopped 5 s past a
                # minute and started again 15 s past the next one: down across exactly
                # one slot, whatever the start-up takes (down across two, the skip policy
                # would rightly enqueue only the later).
                before = await slot_jobs_succeeded(conn, 1)
                await sleep_until_second(conn, 5)
                codes = [stop(w) for w in workers]
                await anyio.sleep(30)
                await sleep_until_second(conn, 15)
                workers = [spawn(dsn) for _ in range(3)]
                await wait_ready(conn, 3)
                await slot_jobs_succeeded(conn, before + 1)  # the missed slot, enqueued late
                await sleep_until_second(conn, 5)  # up across one more slot
            finally:
                for w in workers:
                    if w.returncode is None:
                        stop(w)
            ended = await conn.fetchval("SELECT now()")
            keys = [
                r["unique_key"]
                for r in await conn.fetch(
                    "SELECT unique_key FROM pgwake.jobs "
                    "WHERE unique_key LIKE 'schedule:minutely:%' ORDER BY unique_key"
                )
            ]
            succeeded = await conn.fetchval(
                "SELECT count(*) FROM pgwake.jobs WHERE unique_key LIKE 'schedule:minutely:%' "
                "AND status = 'succeeded'"
            )
        finally:
            await conn.close()
    return MinutelyRun(started, ended, keys, succeeded, codes)


@pytest.mark.timeout(420)
@pytest.mark.skipif(
    os.environ.get("PGWAKE_SKIP_SLOW") == "1", reason="PGWAKE_SKIP_SLOW=1: minutes long"
)
@pytest.mark.background(scenario=three_workers_every_minute_with_a_restart)
def test_every_minute_with_three_workers_and_a_restart(background: Background) -> None:
    """`*/1 * * * *` for about 3.5 minutes, 3 worker processes, every worker stopped
    across one slot: exactly one job per minute slot, none lost (skip policy: the
    missed slot is enqueued late, once). The minutes pass beside the rest of the suite
    (a background scenario, started with the session); this test checks what it saw."""
    run: MinutelyRun = background.result(three_workers_every_minute_with_a_restart, timeout=400)
    assert run.exit_codes == [0, 0, 0]
    keys = run.keys
    slots = [datetime.fromisoformat(k.removeprefix("schedule:minutely:")) for k in keys]
    assert len(slots) == len(set(slots)), keys  # no slot twice
    # Every minute from the first slot (the first after the first round) to the last one
    # before the end.
    first = slots[0].astimezone(UTC)
    assert first <= run.started + timedelta(minutes=2)
    expected = []
    slot = first
    while slot <= run.ended - timedelta(seconds=2):
        expected.append(slot)
        slot += timedelta(minutes=1)
    assert [s.astimezone(UTC) for s in slots] == [e.astimezone(UTC) for e in expected], keys
    # They all ran.
    assert run.succeeded == len(expected)
    assert len(expected) >= 3
    print(f"\n{len(expected)} minute slots, one job each: {keys}")
