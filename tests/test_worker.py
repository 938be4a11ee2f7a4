"""The worker end to end, in process: wake on NOTIFY, outcomes, retries, timeouts, limits."""

from __future__ import annotations

import itertools
import json
import random
import time
from datetime import timedelta
from typing import Any

import anyio
import asyncpg
import pytest
from pydantic import BaseModel

from listener import db
from listener.api import Cancel, JobContext, PermanentError, Registry, Retry, Snooze
from listener.executor import MAX_RESULT_BYTES
from listener.maintenance.promoter import Promoter
from listener.metrics import Metrics
from listener.notifications import Listener
from listener.wake import Wake
from tests.support.cli import pgwake
from tests.support.waiting import eventually
from tests.support.workers import running_worker


class Typed(BaseModel):
    count: int


async def job_row(conn: asyncpg.Connection, job_id: int) -> asyncpg.Record:
    return await conn.fetchrow("SELECT * FROM pgwake.jobs WHERE id = $1", job_id)


async def insert(conn: asyncpg.Connection, kind: str, payload: str = "{}", **cols: Any) -> int:
    """Insert one job; ``payload`` is JSON text, other columns are given as Python values."""
    names = ["kind", "payload", *cols]
    values = [kind, json.loads(payload), *cols.values()]
    placeholders = ", ".join(f"${i}" for i in range(1, len(values) + 1))
    sql = f"INSERT INTO pgwake.jobs ({', '.join(names)}) VALUES ({placeholders}) RETURNING id"
    return await conn.fetchval(sql, *values)


async def status_of(conn: asyncpg.Connection, job_id: int, *statuses: str) -> bool:
    return await conn.fetchval("SELECT status FROM pgwake.jobs WHERE id = $1", job_id) in statuses


async def test_insert_from_plain_connection_wakes_idle_worker(dsn: str) -> None:
    """A plain asyncpg INSERT (no pgwake code) wakes a worker whose poll is an hour."""
    registry = Registry()
    ran = anyio.Event()

    @registry.handler("hello")
    async def hello(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
        ran.set()
        return {"greeting": f"hello {payload['name']}"}

    async with running_worker(dsn, registry, poll_interval=3600) as service:
        # The first claims at start found nothing and the worker waits (inserts notify):
        # from here only a NOTIFY can wake it.
        await eventually(lambda: _claims_done(service))

        async def waiting() -> bool:
            return service.listener.waiting

        await eventually(waiting)
        plain = await asyncpg.connect(dsn)
        try:
            job_id = await plain.fetchval(
                "INSERT INTO pgwake.jobs (tenant_id, kind, payload) "
                "VALUES ('acme', 'hello', '{\"name\": \"ada\"}') RETURNING id"
            )
            with anyio.fail_after(10):
                await ran.wait()
            await eventually(lambda: _succeeded(plain, job_id))
            result = await plain.fetchval(
                "SELECT result::text FROM pgwake.jobs WHERE id=$1", job_id
            )
        finally:
            await plain.close()
        assert result == '{"greeting": "hello ada"}'
        # The claim loop was woken by the NOTIFY (it would have slept an hour).
        sample = service.metrics.registry.get_sample_value
        assert (sample("pgwake_wakes_total", {"source": "notify"}) or 0) >= 1


async def _claims_done(service: Any) -> bool:
    return (service.metrics.registry.get_sample_value("pgwake_claims_total") or 0) >= 1


async def _succeeded(conn: asyncpg.Connection, job_id: int) -> bool:
    return await status_of(conn, job_id, "succeeded")


async def test_no_insert_waits_for_the_poll_while_the_worker_goes_idle_and_busy(
    dsn: str, conn: asyncpg.Connection
) -> None:
    """Inserts notify only while the worker waits. Rounds of inserts from several
    sessions (single rows, bursts, transactions that stay open a while) race the worker
    going from busy to waiting and back; with an hour-long poll every round must still
    finish, its last insert included (no later insert can cover a missed wake-up)."""
    registry = Registry()

    @registry.handler("tick")
    async def tick(payload: dict[str, Any], ctx: JobContext) -> None:
        await anyio.sleep(payload["ms"] / 1000)

    rng = random.Random(7)
    producers = [await db.connect(dsn) for _ in range(3)]

    async def produce(session: asyncpg.Connection, seed: int) -> None:
        local = random.Random(seed)
        for _ in range(local.randint(1, 6)):
            shape = local.choice(("one", "burst", "open"))
            ms = local.choice((0, 1, 3))
            if shape == "one":
                await session.execute(
                    "INSERT INTO pgwake.jobs (kind, payload) VALUES ('tick', $1)", {"ms": ms}
                )
            elif shape == "burst":
                await session.execute(
                    "INSERT INTO pgwake.jobs (kind, payload) "
                    "SELECT 'tick', jsonb_build_object('ms', $1::int) FROM generate_series(1, 12)",
                    ms,
                )
            else:
                async with session.transaction():
                    await session.execute(
                        "INSERT INTO pgwake.jobs (kind, payload) VALUES ('tick', $1)", {"ms": ms}
                    )
                    await anyio.sleep(local.uniform(0, 0.05))
            await anyio.sleep(local.uniform(0, 0.02))

    async def round_done() -> bool:
        left = await conn.fetchval("SELECT count(*) FROM pgwake.jobs WHERE status <> 'succeeded'")
        return left == 0

    try:
        async with running_worker(
            dsn, registry, poll_interval=3600, concurrency=4, tenant_concurrency=4, claim_batch=4
        ):
            for _ in range(15):
                async with anyio.create_task_group() as tg:
                    for session in producers:
                        tg.start_soon(produce, session, rng.randrange(10**6))
                await eventually(round_done, timeout=30)
                # Now and then, let the worker go idle and start waiting before the next
                # round; otherwise the next round meets it still busy.
                if rng.random() < 0.5:
                    await eventually(lambda: conn.fetchval("SELECT pgwake.someone_waits(0)"))
    finally:
        for session in producers:
            await session.close()
    assert await conn.fetchval("SELECT count(*) FROM pgwake.jobs WHERE attempts = 1") == (
        await conn.fetchval("SELECT count(*) FROM pgwake.jobs")
    )


async def test_handler_failure_retries_with_growing_delays_then_fails(
    dsn: str, conn: asyncpg.Connection
) -> None:
    registry = Registry()
    starts: list[float] = []

    @registry.handler("flaky")
    async def flaky(payload: dict[str, Any], ctx: JobContext) -> None:
        starts.append(time.monotonic())
        raise RuntimeError(f"boom on attempt {ctx.attempt}")

    job_id = await insert(conn, "flaky", max_attempts=5)
    async with running_worker(dsn, registry, retry_base=0.2, retry_cap=10, poll_interval=3600):
        await eventually(lambda: status_of(conn, job_id, "failed"), timeout=30)
    row = await job_row(conn, job_id)
    assert row["attempts"] == 5
    assert len(starts) == 5
    assert row["last_error"].startswith("RuntimeError: boom on attempt 5")
    assert "Traceback" in row["last_error"]
    assert row["finished_at"] is not None
    assert row["claimed_by"] is None
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # Backoff doubles with +-25% jitter: each wait is at least 1.2x the one before. With a
    # 0.2 s base consecutive waits differ by at least 50 ms, well above the few ms of
    # claim and promotion overhead in each gap.
    assert all(later > earlier for earlier, later in itertools.pairwise(gaps)), gaps


@pytest.mark.parametrize(
    ("kind", "payload", "message"),
    [
        ("permanent", "{}", "PermanentError: card declined"),
        ("typed", '{"count": "many"}', "invalid payload for 'typed'"),
        ("typed", '{"wrong": 1}', "invalid payload for 'typed'"),
    ],
)
async def test_permanent_error_and_invalid_payload_fail_after_one_attempt(
    dsn: str, conn: asyncpg.Connection, kind: str, payload: str, message: str
) -> None:
    registry = Registry()
    calls: list[int] = []

    @registry.handler("permanent")
    async def permanent(payload: dict[str, Any], ctx: JobContext) -> None:
        calls.append(ctx.job.id)
        raise PermanentError("card declined")

    @registry.handler("typed")
    async def typed(payload: Typed, ctx: JobContext) -> int:
        calls.append(ctx.job.id)
        return payload.count

    job_id = await insert(conn, kind, payload, max_attempts=10)
    async with running_worker(dsn, registry, retry_base=0.01):
        await eventually(lambda: status_of(conn, job_id, "failed"))
    row = await job_row(conn, job_id)
    assert row["attempts"] == 1
    assert message in row["last_error"]
    assert calls == ([job_id] if kind == "permanent" else [])


async def test_timeout_cancels_the_handler_and_retries(dsn: str, conn: asyncpg.Connection) -> None:
    registry = Registry()
    attempts: list[int] = []
    finished: list[int] = []

    @registry.handler("slow")
    async def slow(payload: dict[str, Any], ctx: JobContext) -> None:
        attempts.append(ctx.attempt)
        await anyio.sleep(30)
        finished.append(ctx.attempt)

    job_id = await insert(conn, "slow", max_attempts=2, timeout=timedelta(milliseconds=200))
    async with running_worker(dsn, registry, retry_base=0.01, poll_interval=3600):
        await eventually(lambda: status_of(conn, job_id, "failed"), timeout=20)
    row = await job_row(conn, job_id)
    assert attempts == [1, 2]
    assert finished == []
    assert row["attempts"] == 2
    assert row["last_error"] == "TimeoutError: job timed out after 0.2s"


async def test_a_short_timeout_after_long_ones_in_one_claim_is_kept(
    dsn: str, conn: asyncpg.Connection
) -> None:
    """The runners tell the deadline watchdog only of a job whose deadline is earlier
    than any it was told of: a job with a 200 ms timeout that starts after jobs of an
    hour, all from one claim, still times out at 200 ms."""
    registry = Registry()
    started: list[int] = []

    @registry.handler("slow")
    async def slow(payload: dict[str, Any], ctx: JobContext) -> None:
        started.append(ctx.job.id)
        await anyio.sleep(30)

    hour = [await insert(conn, "slow", timeout=timedelta(hours=1)) for _ in range(3)]
    short = await insert(conn, "slow", max_attempts=1, timeout=timedelta(milliseconds=200))
    async with running_worker(dsn, registry, poll_interval=3600, drain_timeout=0.1):
        # Within 20 s, not the hour of the jobs before it.
        await eventually(lambda: status_of(conn, short, "failed"), timeout=20)
        assert sorted(started) == sorted([*hour, short])  # one claim, all running
        for job_id in hour:
            assert await status_of(conn, job_id, "running")
    row = await job_row(conn, short)
    assert row["last_error"] == "TimeoutError: job timed out after 0.2s"


async def test_snooze_cancel_retry_outcomes(dsn: str, conn: asyncpg.Connection) -> None:
    registry = Registry()
    seen: list[tuple[str, int]] = []

    @registry.handler("snoozy")
    async def snoozy(payload: dict[str, Any], ctx: JobContext) -> str:
        seen.append(("snoozy", ctx.attempt))
        if len([s for s in seen if s[0] == "snoozy"]) < 3:
            raise Snooze(0.05)
        return "awake"

    @registry.handler("cancelme")
    async def cancelme(payload: dict[str, Any], ctx: JobContext) -> None:
        raise Cancel("customer deleted")

    @registry.handler("retrynow")
    async def retrynow(payload: dict[str, Any], ctx: JobContext) -> str:
        if ctx.attempt == 1:
            raise Retry("not yet", delay=0)
        return f"done on {ctx.attempt}"

    snooze_id = await insert(conn, "snoozy", max_attempts=1)
    cancel_id = await insert(conn, "cancelme")
    retry_id = await insert(conn, "retrynow")
    async with running_worker(dsn, registry, poll_interval=3600):
        await eventually(lambda: status_of(conn, snooze_id, "succeeded"))
        await eventually(lambda: status_of(conn, cancel_id, "cancelled"))
        await eventually(lambda: status_of(conn, retry_id, "succeeded"))
    snoozed = await job_row(conn, snooze_id)
    # Snoozes give their attempt back: three runs, max_attempts 1, still succeeded.
    assert [s for s in seen if s[0] == "snoozy"] == [("snoozy", 1)] * 3
    assert snoozed["attempts"] == 1
    assert snoozed["result"] == "awake"
    cancelled = await job_row(conn, cancel_id)
    assert cancelled["last_error"] == "cancelled: customer deleted"
    assert cancelled["attempts"] == 1
    retried = await job_row(conn, retry_id)
    assert retried["result"] == "done on 2"


async def test_result_that_is_not_json_fails_without_retry(
    dsn: str, conn: asyncpg.Connection
) -> None:
    registry = Registry()

    @registry.handler("badresult")
    async def badresult(payload: dict[str, Any], ctx: JobContext) -> object:
        return {"when": object()}

    job_id = await insert(conn, "badresult", max_attempts=5)
    async with running_worker(dsn, registry):
        await eventually(lambda: status_of(conn, job_id, "failed"))
    row = await job_row(conn, job_id)
    assert row["attempts"] == 1
    assert row["last_error"].startswith("the handler's result is not JSON")


async def test_results_that_are_json_arrays_are_stored_whole(
    dsn: str, conn: asyncpg.Connection
) -> None:
    """A result that is a list is one jsonb value of the batch's outcomes, never a
    dimension of the array the outcomes are written with."""
    registry = Registry()

    @registry.handler("listresult")
    async def listresult(payload: dict[str, Any], ctx: JobContext) -> Any:
        return payload["r"]

    results: list[Any] = [[1, 2, 3], [], [[1], [2, 3]], ["a"], 5, {"a": [1]}, [None]]
    ids = [await insert(conn, "listresult", json.dumps({"r": r})) for r in results]
    async with running_worker(dsn, registry):
        for job_id in ids:
            await eventually(lambda job_id=job_id: status_of(conn, job_id, "succeeded"))
    stored = [(await job_row(conn, job_id))["result"] for job_id in ids]
    assert stored == results


async def test_results_and_progress_are_stored_and_an_oversized_result_fails(
    dsn: str, conn: asyncpg.Connection
) -> None:
    """A handler's return value is kept in jobs.result and its last progress report in
    jobs.progress, both shown by `pgwake jobs show`; a result over the limit fails the
    job at once, naming its size and the limit."""
    registry = Registry()

    @registry.handler("report")
    async def report(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
        await ctx.progress(2, 2, "rows written")
        return {"rows": 2, "tenant": ctx.job.tenant_id}

    @registry.handler("huge")
    async def huge(payload: dict[str, Any], ctx: JobContext) -> str:
        return "x" * (MAX_RESULT_BYTES + 1)

    done = await insert(conn, "report", tenant_id="acme")
    too_big = await insert(conn, "huge", max_attempts=5)
    async with running_worker(dsn, registry):
        await eventually(lambda: status_of(conn, done, "succeeded"))
        await eventually(lambda: status_of(conn, too_big, "failed"))
    row = await job_row(conn, done)
    assert row["result"] == {"rows": 2, "tenant": "acme"}
    assert (row["progress"]["done"], row["progress"]["total"]) == (2, 2)
    shown = json.loads(pgwake("jobs", "show", str(done), "--json", dsn=dsn).stdout)
    assert shown["result"] == {"rows": 2, "tenant": "acme"}
    assert shown["progress"]["message"] == "rows written"
    failed = await job_row(conn, too_big)
    assert failed["attempts"] == 1
    assert failed["result"] is None
    assert failed["last_error"].startswith(
        f"the handler's result is {MAX_RESULT_BYTES + 3} bytes of JSON, "
        f"more than the {MAX_RESULT_BYTES} allowed"
    )


async def test_only_kinds_with_handlers_are_claimed(dsn: str, conn: asyncpg.Connection) -> None:
    registry = Registry()

    @registry.handler("known")
    async def known(payload: dict[str, Any], ctx: JobContext) -> None:
        return None

    unknown_id = await insert(conn, "nobody.handles.this")
    known_id = await insert(conn, "known")
    async with running_worker(dsn, registry):
        await eventually(lambda: status_of(conn, known_id, "succeeded"))
    row = await job_row(conn, unknown_id)
    assert (row["status"], row["attempts"], row["claimed_by"]) == ("queued", 0, None)


async def test_global_and_per_tenant_limits_inside_the_process(
    dsn: str, conn: asyncpg.Connection
) -> None:
    """Never more than concurrency jobs at once, and while every tenant has jobs queued
    none runs more than tenant_concurrency. (At the end, a tenant left alone with a
    backlog may borrow idle slots: see test_speed.)"""
    registry = Registry()
    running: dict[str, int] = {}
    peak_total = 0
    # (wall-clock start, tenant, that tenant's jobs running then) for every job.
    starts: list[tuple[float, str, int]] = []

    @registry.handler("work")
    async def work(payload: dict[str, Any], ctx: JobContext) -> None:
        nonlocal peak_total
        running[ctx.tenant] = running.get(ctx.tenant, 0) + 1
        peak_total = max(peak_total, sum(running.values()))
        starts.append((time.time(), ctx.tenant, running[ctx.tenant]))
        await anyio.sleep(0.02)
        running[ctx.tenant] -= 1

    await conn.execute(
        "INSERT INTO pgwake.jobs (tenant_id, kind) "
        "SELECT 't' || (i % 3), 'work' FROM generate_series(1, 150) AS i"
    )
    async with running_worker(dsn, registry, concurrency=5, tenant_concurrency=2):
        await eventually(
            lambda: conn.fetchval(
                "SELECT count(*) = 150 FROM pgwake.jobs WHERE status = 'succeeded'"
            ),
            timeout=30,
        )
    assert peak_total == 5
    # Until the first tenant's last job was claimed (the claim's transaction start,
    # the same host's clock), every tenant had jobs queued.
    all_queued_until = await conn.fetchval(
        "SELECT extract(epoch FROM min(last))::float8 FROM "
        "(SELECT max(started_at) AS last FROM pgwake.jobs GROUP BY tenant_id) AS t"
    )
    while_all_queued = [s for s in starts if s[0] < all_queued_until]
    assert len(while_all_queued) > 50
    peak_tenant: dict[str, int] = {}
    for _, tenant, count in while_all_queued:
        peak_tenant[tenant] = max(peak_tenant.get(tenant, 0), count)
    assert set(peak_tenant) == {"t0", "t1", "t2"}
    assert max(peak_tenant.values()) == 2  # the cap, reached and never passed


async def test_delayed_job_is_scheduled_then_runs(dsn: str, conn: asyncpg.Connection) -> None:
    registry = Registry()

    @registry.handler("later")
    async def later(payload: dict[str, Any], ctx: JobContext) -> None:
        return None

    job_id = await conn.fetchval(
        "INSERT INTO pgwake.jobs (kind, run_at) VALUES ('later', now() + interval '1 second') "
        "RETURNING id"
    )
    assert await status_of(conn, job_id, "scheduled")
    async with running_worker(dsn, registry, poll_interval=3600):
        await eventually(lambda: status_of(conn, job_id, "succeeded"), timeout=10)
    row = await job_row(conn, job_id)
    assert row["started_at"] >= row["run_at"]


SCHEDULED_COUNT = "SELECT count(*) FROM pgwake.jobs WHERE status = 'scheduled'"


async def test_one_worker_at_a_time_promotes(dsn: str, conn: asyncpg.Connection) -> None:
    """Promotion holds the promotion lock: while another worker holds it, a promoter
    promotes nothing and looks again shortly; then it promotes everything due."""
    await conn.execute(
        "INSERT INTO pgwake.jobs (kind, run_at) "
        "SELECT 'k', now() + interval '50 milliseconds' FROM generate_series(1, 3)"
    )
    await conn.execute("SELECT pg_sleep(0.1)")
    pool = await db.create_pool(dsn, size=1)
    try:
        promoter = Promoter(pool, Wake(), poll_interval=60)
        async with conn.transaction():
            await conn.execute(
                "SELECT 1 FROM pgwake.leaders WHERE name = 'promotion' FOR NO KEY UPDATE"
            )
            wait = await promoter._promote_due()
            assert await conn.fetchval(SCHEDULED_COUNT) == 3  # none promoted
            assert 0 < wait < 1  # busy: another look soon, not after the poll interval
        assert await promoter._promote_due() == 60  # nothing scheduled any more
        assert await conn.fetchval(SCHEDULED_COUNT) == 0
    finally:
        await pool.close()
    assert await conn.fetchval("SELECT count(*) FROM pgwake.jobs WHERE status = 'queued'") == 3


async def test_delayed_jobs_start_on_time_without_polling(
    dsn: str, conn: asyncpg.Connection
) -> None:
    """Jobs due 2 s ahead (inserted while the worker idles with an hour-long poll) are
    promoted and claimed at their run_at; the lateness is printed, not asserted."""
    registry = Registry()

    @registry.handler("later")
    async def later(payload: dict[str, Any], ctx: JobContext) -> None:
        return None

    async with running_worker(dsn, registry, poll_interval=3600):
        ids = [
            await conn.fetchval(
                "INSERT INTO pgwake.jobs (kind, run_at) "
                f"VALUES ('later', now() + interval '{2000 + 150 * i} milliseconds') "
                "RETURNING id"
            )
            for i in range(5)
        ]

        async def all_done() -> bool:
            n = await conn.fetchval(
                "SELECT count(*) FROM pgwake.jobs WHERE id = ANY($1) AND status = 'succeeded'",
                ids,
            )
            return bool(n == len(ids))

        await eventually(all_done, timeout=15)
    late = [
        r["late_ms"]
        for r in await conn.fetch(
            "SELECT 1000 * extract(epoch FROM started_at - run_at)::float8 AS late_ms "
            "FROM pgwake.jobs WHERE id = ANY($1) ORDER BY id",
            ids,
        )
    ]
    assert all(ms >= 0 for ms in late), late  # never before its time
    print(f"\ndelayed jobs started {', '.join(f'{ms:.1f}' for ms in late)} ms after run_at")


async def test_stop_drains_running_jobs_and_puts_back_the_rest(
    dsn: str, conn: asyncpg.Connection
) -> None:
    registry = Registry()
    started = anyio.Event()

    @registry.handler("quick")
    async def quick(payload: dict[str, Any], ctx: JobContext) -> str:
        started.set()
        await anyio.sleep(0.2)
        return "ok"

    @registry.handler("forever")
    async def forever(payload: dict[str, Any], ctx: JobContext) -> None:
        await anyio.sleep(3600)

    quick_id = await insert(conn, "quick")
    forever_id = await insert(conn, "forever")
    async with running_worker(dsn, registry, drain_timeout=1.0) as service:
        await eventually(lambda: status_of(conn, forever_id, "running"))
        with anyio.fail_after(10):
            await started.wait()
    assert service.stopped.is_set()
    assert await status_of(conn, quick_id, "succeeded")
    row = await job_row(conn, forever_id)
    assert (row["status"], row["attempts"], row["claimed_by"]) == ("queued", 0, None)
    assert "put back" in row["last_error"]
    assert await conn.fetchval("SELECT count(*) FROM pgwake.workers") == 0


async def test_a_single_free_slot_is_used_during_a_backlog(
    dsn: str, conn: asyncpg.Connection
) -> None:
    """After a full claim, one slot freed while the others stay busy is still claimed
    (the refill wait is brief, not a condition)."""
    registry = Registry()
    release = anyio.Event()

    @registry.handler("hold")
    async def hold(payload: dict[str, Any], ctx: JobContext) -> None:
        await release.wait()

    @registry.handler("quick")
    async def quick(payload: dict[str, Any], ctx: JobContext) -> None:
        return None

    for _ in range(3):
        await insert(conn, "hold", priority=10)
    await insert(conn, "quick", priority=5)
    last = await insert(conn, "quick", priority=0)
    async with running_worker(
        dsn, registry, concurrency=4, tenant_concurrency=4, claim_batch=4, poll_interval=3600
    ):
        try:
            await eventually(lambda: status_of(conn, last, "succeeded"), timeout=10)
        finally:
            release.set()


async def test_worker_finds_its_kinds_behind_many_tenants_with_other_kinds(
    dsn: str, conn: asyncpg.Connection
) -> None:
    """A claim visits a bounded number of tenants; when those have only kinds this
    worker does not handle, it goes on from where the walk ended (no poll wait)."""
    registry = Registry()

    @registry.handler("mine")
    async def mine(payload: dict[str, Any], ctx: JobContext) -> None:
        return None

    await conn.execute(
        "INSERT INTO pgwake.jobs (tenant_id, kind) "
        "SELECT 'busy' || lpad(i::text, 2, '0'), 'not.mine' FROM generate_series(1, 60) AS i"
    )
    for tenant in ("aaa", "zzz"):
        await conn.execute("INSERT INTO pgwake.jobs (tenant_id, kind) VALUES ($1, 'mine')", tenant)
    async with running_worker(
        dsn, registry, concurrency=4, tenant_concurrency=4, claim_batch=4, poll_interval=3600
    ):
        await eventually(
            lambda: conn.fetchval(
                "SELECT count(*) = 2 FROM pgwake.jobs WHERE kind = 'mine' AND status = 'succeeded'"
            ),
            timeout=10,
        )
    assert await conn.fetchval("SELECT count(*) FROM pgwake.jobs WHERE status = 'queued'") == 60


async def test_a_notification_wakes_the_loop_it_is_for(dsn: str, conn: asyncpg.Connection) -> None:
    """On a real LISTEN connection: a notification about ready jobs (empty payload, or
    any payload anyone sends) wakes only the claimer, and 'later' (a job inserted due
    later) only the promoter; an insert of a job due later sends it."""
    ready, due_later = Wake(), Wake()
    listener = Listener(dsn, ready, due_later, metrics=Metrics())

    async def woken(wake: Wake) -> bool:
        return await wake.wait(0.3) == "notify"

    async with anyio.create_task_group() as tg:
        await tg.start(listener.run)
        for payload in ("", "x" * 100, "later ", "LATER"):
            await conn.execute("SELECT pg_notify('pgwake_jobs', $1)", payload)
            assert await woken(ready), payload
            assert not await woken(due_later), payload
        await conn.execute("SELECT pg_notify('pgwake_jobs', 'later')")
        assert await woken(due_later)
        assert not await woken(ready)
        await conn.execute(
            "INSERT INTO pgwake.jobs (kind, run_at) VALUES ('k', now() + interval '1 hour')"
        )
        assert await woken(due_later)
        tg.cancel_scope.cancel()
