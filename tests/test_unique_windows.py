"""Unique over a window (issue 18): ``unique_key`` with ``unique_for`` holds the key for
the fixed window of that period the job was inserted in, even after the job finished
(jobs_unique_window_idx), beside "while active" (jobs_unique_key_idx).

Windows here are a second or two, so that a test waits for one to end; each test that
inserts twice "in the same window" from two transactions first waits until the window
has enough time left (``window_with``), and checks what it relies on from the rows."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta
from decimal import Decimal

import anyio
import anyio.from_thread
import anyio.to_thread
import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from listener import db
from listener.jobs import Status
from listener.maintenance.retention import Pruner
from listener.metrics import Metrics
from listener.migrate import load_migrations
from listener.queries import QUERIES
from tests.support.claims import claim, register
from tests.support.cli import pgwake
from tests.support.databases import as_user, fresh_role
from tests.support.waiting import eventually

ORIGIN = "timestamptz '2001-01-01 00:00:00+00'"
INSERT = (
    "INSERT INTO pgwake.jobs (tenant_id, kind, unique_key, unique_for) "
    "VALUES ($1, $2, $3, $4::text::interval) "
)
SKIP = INSERT + "ON CONFLICT DO NOTHING RETURNING id, unique_until"


async def window_with(conn: asyncpg.Connection, period: float, left: float) -> datetime:
    """Wait until the current window of ``period`` seconds has at least ``left`` seconds
    to go; returns its end."""

    async def end_if_enough_left() -> datetime | None:
        row = await conn.fetchrow(
            f"SELECT date_bin(p, clock_timestamp(), {ORIGIN}) + p AS until, "
            f"extract(epoch FROM date_bin(p, clock_timestamp(), {ORIGIN}) + p "
            "- clock_timestamp())::float8 AS left "
            "FROM (SELECT make_interval(secs => $1::float8) AS p) AS s",
            period,
        )
        assert row is not None
        return row["until"] if row["left"] >= left else None

    return await eventually(end_if_enough_left, timeout=period + 5, interval=0.01)


async def passed(conn: asyncpg.Connection, moment: datetime) -> bool:
    return bool(await conn.fetchval("SELECT clock_timestamp() >= $1", moment))


async def finish(conn: asyncpg.Connection, job_id: int, status: Status) -> None:
    """Claim the job and record its outcome with the worker's own queries."""
    kind = await conn.fetchval("SELECT kind FROM pgwake.jobs WHERE id = $1", job_id)
    worker = await register(conn)
    (row,) = await claim(conn, worker, 1, kinds=[kind])
    assert row["id"] == job_id
    done = await conn.fetch(
        QUERIES["job_finish_many"],
        worker,
        [job_id],
        [row["attempts"]],
        [status.value],
        [0],
        [None],
        [None],
        [None if status is Status.SUCCEEDED else "boom"],
    )
    assert [r["ids"] for r in done] == [[job_id]]


async def test_a_key_is_held_through_its_window_after_the_job_finished(
    conn: asyncpg.Connection,
) -> None:
    """A second job with the key and period inside the window is refused (or skipped by
    ON CONFLICT DO NOTHING) though the first has finished; another tenant, kind, key or
    period is not held; after the window ends the key is free again."""
    end = await window_with(conn, 2, 1.5)
    first = await conn.fetchrow(SKIP, "acme", "sync", "k", "2 seconds")
    assert first["unique_until"] == end
    await finish(conn, first["id"], Status.SUCCEEDED)
    with pytest.raises(asyncpg.UniqueViolationError) as refused:
        await conn.execute(INSERT, "acme", "sync", "k", "2 seconds")
    assert refused.value.constraint_name == "jobs_unique_window_idx"
    assert await conn.fetchrow(SKIP, "acme", "sync", "k", "2 seconds") is None
    # The same period written otherwise is the same period.
    assert await conn.fetchrow(SKIP, "acme", "sync", "k", "00:00:02") is None
    assert await conn.fetchrow(SKIP, "acme", "sync", "k", "2000 milliseconds") is None
    # Neither another tenant, kind or key, nor a job of the key with no window.
    for tenant, kind, key in (("other", "sync", "k"), ("acme", "mail", "k"), ("acme", "sync", "j")):
        assert await conn.fetchrow(SKIP, tenant, kind, key, "2 seconds") is not None
    plain = await conn.fetchval(
        "INSERT INTO pgwake.jobs (tenant_id, kind, unique_key) VALUES ('acme', 'sync', 'k') "
        "RETURNING id"
    )
    await conn.execute("DELETE FROM pgwake.jobs WHERE id = $1", plain)
    # Another period is another window: its own row, not held by the first's.
    other_period = await conn.fetchrow(SKIP, "acme", "sync", "k", "3 seconds")
    assert other_period is not None
    await conn.execute("DELETE FROM pgwake.jobs WHERE id = $1", other_period["id"])
    await eventually(lambda: passed(conn, end), timeout=5)
    second = await conn.fetchrow(SKIP, "acme", "sync", "k", "2 seconds")
    assert second is not None
    assert second["unique_until"] >= end + timedelta(seconds=2)
    jobs = await conn.fetch(
        "SELECT id, status FROM pgwake.jobs WHERE tenant_id = 'acme' AND kind = 'sync' "
        "AND unique_key = 'k' ORDER BY id"
    )
    assert [(j["id"], j["status"]) for j in jobs] == [
        (first["id"], "succeeded"),
        (second["id"], "queued"),
    ]


async def test_while_active_still_holds_beside_the_window(conn: asyncpg.Connection) -> None:
    """A job still active after its window ended keeps its key (jobs_unique_key_idx);
    an ON CONFLICT clause naming only that index lets a window conflict raise."""
    end = await window_with(conn, 1, 0.5)
    first = await conn.fetchrow(SKIP, "acme", "sync", "k", "1 second")
    assert first is not None
    targeted = (
        INSERT + "ON CONFLICT (tenant_id, kind, unique_key) "
        "WHERE unique_key IS NOT NULL AND status IN ('scheduled', 'queued', 'running') "
        "DO NOTHING RETURNING id"
    )
    await eventually(lambda: passed(conn, end), timeout=5)
    with pytest.raises(asyncpg.UniqueViolationError) as refused:
        await conn.execute(INSERT, "acme", "sync", "k", "1 second")
    assert refused.value.constraint_name == "jobs_unique_key_idx"
    assert await conn.fetchrow(SKIP, "acme", "sync", "k", "1 second") is None
    assert await conn.fetchval(targeted, "acme", "sync", "k", "1 second") is None
    await finish(conn, first["id"], Status.SUCCEEDED)
    # Finished, and its window over: the key is free.
    end = await window_with(conn, 2, 1.0)
    second = await conn.fetchval(targeted, "acme", "sync", "k", "2 seconds")
    assert second is not None
    await finish(conn, second, Status.SUCCEEDED)
    # Finished, but in its window: the targeted clause does not cover the window index.
    with pytest.raises(asyncpg.UniqueViolationError) as refused:
        await conn.execute(targeted, "acme", "sync", "k", "2 seconds")
    assert refused.value.constraint_name == "jobs_unique_window_idx"
    assert await conn.fetchrow(SKIP, "acme", "sync", "k", "2 seconds") is None


SESSIONS = 40


async def test_forty_sessions_exactly_one_job_per_window(
    dsn: str, conn: asyncpg.Connection
) -> None:
    """40 sessions insert the same key with a 1-second window as fast as they can for
    about three windows; each job that gets in finishes at once (in its inserting
    transaction), so only the window can refuse the others. Half the sessions use
    ON CONFLICT DO NOTHING, half a plain INSERT that fails. Exactly one insert wins in
    every window any session tried, and the table holds one job per window."""
    conns = [await db.connect(dsn) for _ in range(SESSIONS)]
    start = await window_with(conn, 1, 0.9)  # the end of the window we start in
    stop = start + timedelta(seconds=3)
    tries: list[tuple[datetime, bool]] = []
    refusals: dict[str, int] = {}

    async def attempt(c: asyncpg.Connection, skip: bool) -> None:
        """One insert in a transaction of its own, and the job's end if it got in."""
        tx = c.transaction()
        await tx.start()
        try:
            slot = await c.fetchval(f"SELECT date_bin(interval '1 second', now(), {ORIGIN})")
            try:
                job = await c.fetchval(
                    INSERT + ("ON CONFLICT DO NOTHING " if skip else "") + "RETURNING id",
                    "acme",
                    "sync",
                    "hot",
                    "1 second",
                )
            except asyncpg.UniqueViolationError as exc:
                name = exc.constraint_name or "?"
                refusals[name] = refusals.get(name, 0) + 1
                job = None
            tries.append((slot, job is not None))
            if job is not None:
                await c.execute(
                    "UPDATE pgwake.jobs SET status = 'succeeded', finished_at = now() "
                    "WHERE id = $1",
                    job,
                )
        except BaseException:
            await tx.rollback()
            raise
        if job is not None:
            await tx.commit()
        else:
            await tx.rollback()

    async def run(c: asyncpg.Connection, skip: bool) -> None:
        while not await passed(c, stop):
            await attempt(c, skip)

    try:
        await asyncio.gather(*(run(c, i % 2 == 0) for i, c in enumerate(conns)))
    finally:
        for c in conns:
            await c.close()
    by_slot: dict[datetime, list[bool]] = {}
    for slot, won in tries:
        by_slot.setdefault(slot, []).append(won)
    wins = {slot: sum(results) for slot, results in by_slot.items()}
    assert len(wins) >= 3, wins
    assert set(wins.values()) == {1}, wins
    assert set(refusals) == {"jobs_unique_window_idx"}, refusals
    rows = await conn.fetch(
        "SELECT unique_until - unique_for AS slot, count(*) AS n FROM pgwake.jobs "
        "WHERE unique_key = 'hot' GROUP BY 1 ORDER BY 1"
    )
    assert {r["slot"]: r["n"] for r in rows} == wins
    print(
        f"\n{len(tries)} inserts by {SESSIONS} sessions over {len(wins)} windows: "
        f"one accepted in each, {len(tries) - len(wins)} refused or skipped "
        f"({sum(refusals.values())} plain inserts refused by jobs_unique_window_idx)"
    )


# --- Periods and keys: hypothesis -----------------------------------------------------

DAY_US = 86_400_000_000
PERIODS = st.tuples(
    st.one_of(st.just(0), st.just(0), st.integers(-15, 15)),  # months
    st.one_of(st.just(0), st.integers(-3, 400)),  # days
    st.one_of(
        st.integers(1, 10**6),
        st.integers(-(10**12), 10**13),
        st.sampled_from([0, 1, 1_000_000, 3_600_000_000, DAY_US, -DAY_US, 366 * DAY_US]),
    ),  # microseconds
)
ZONES = st.sampled_from(
    ["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata", "Pacific/Chatham", "Etc/GMT+12"]
)
KEYS = st.text(st.characters(blacklist_characters="\x00"), min_size=1, max_size=30)


def expected_refusal(months: int, days: int, us: int) -> str | None:
    """The constraint that refuses the period, as PostgreSQL compares intervals (a month
    is 30 days there, a day 24 hours), checked in the order of the constraints' names."""
    total = (months * 30 + days) * DAY_US + us
    if not 0 < total <= 366 * DAY_US:
        return "jobs_unique_for_positive_at_most_366_days"
    if months:
        return "jobs_unique_for_without_months_or_years"
    return None


async def check_period(
    conn: asyncpg.Connection, period: tuple[int, int, int], key: str, zones: tuple[str, str]
) -> str:
    months, days, us = period
    interval = f"{months} months {days} days {us} microseconds"
    expected = expected_refusal(months, days, us)
    tx = conn.transaction()
    await tx.start()
    try:
        await conn.execute(f"SET LOCAL TimeZone = '{zones[0]}'")
        if expected is not None:
            with pytest.raises(asyncpg.CheckViolationError) as refused_period:
                await conn.fetchrow(SKIP, "acme", "k", key, interval)
            assert refused_period.value.constraint_name == expected, period
            return "refused"
        row = await conn.fetchrow(SKIP, "acme", "k", key, interval)
        window = await conn.fetchrow(
            f"""SELECT j.unique_until - j.unique_for <= now() AND now() < j.unique_until AS now_in,
                       extract(epoch FROM j.unique_until - {ORIGIN}) AS since_origin,
                       extract(epoch FROM j.unique_for) AS seconds
                  FROM pgwake.jobs AS j WHERE j.id = $1""",
            row["id"],
        )
        assert window["now_in"], period
        assert window["since_origin"] % window["seconds"] == Decimal(0), (period, dict(window))
        # Finished, the job still holds its key in its window, for a session of any time
        # zone: the same now() is in the same window.
        await conn.execute("UPDATE pgwake.jobs SET status = 'succeeded' WHERE id = $1", row["id"])
        await conn.execute(f"SET LOCAL TimeZone = '{zones[1]}'")
        assert await conn.fetchrow(SKIP, "acme", "k", key, interval) is None
        with pytest.raises(asyncpg.UniqueViolationError) as refused:
            async with conn.transaction():
                await conn.execute(INSERT, "acme", "k", key, interval)
        assert refused.value.constraint_name == "jobs_unique_window_idx"
        assert await conn.fetchrow(SKIP, "other", "k", key, interval) is not None
        assert await conn.fetchrow(SKIP, "acme", "k", key + "'", interval) is not None
        return "held"
    finally:
        await tx.rollback()


async def test_periods_and_keys(conn: asyncpg.Connection) -> None:
    """Any period: refused by the constraint that names its problem, or given the window
    of now, aligned on its multiples from the origin, which holds the key in sessions
    of any time zone (all inside one transaction: one now())."""
    outcomes: dict[str, int] = {}

    @settings(
        max_examples=300,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(PERIODS, KEYS, st.tuples(ZONES, ZONES))
    def try_one(period: tuple[int, int, int], key: str, zones: tuple[str, str]) -> None:
        outcome = anyio.from_thread.run(check_period, conn, period, key, zones)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    await anyio.to_thread.run_sync(try_one)
    assert outcomes.get("held", 0) > 50, outcomes
    assert outcomes.get("refused", 0) > 50, outcomes
    assert await conn.fetchval("SELECT count(*) FROM pgwake.jobs") == 0


# --- A confined role ------------------------------------------------------------------


async def test_a_confined_role_sets_windows_for_its_tenant_only(
    server_dsn: str, dsn: str, conn: asyncpg.Connection
) -> None:
    """A role confined to 'acme' may set unique_for (pgwake computes the window), may not
    write unique_until or change a window, and another tenant's window on the same key
    neither holds it nor tells it anything; nor can its uncommitted insert hold up
    another tenant's."""
    await conn.execute(SKIP, "other", "sync", "k", "1 hour")  # another tenant's window
    async with fresh_role(server_dsn, dsn, "app") as role:
        await conn.execute("SELECT pgwake.confine_role_to_tenant($1, 'acme')", role)
        app = await db.connect(as_user(dsn, role))
        try:
            end = await window_with(app, 3600, 30)
            first = await app.fetchrow(SKIP, "acme", "sync", "k", "1 hour")
            assert first is not None
            assert first["unique_until"] == end
            assert await app.fetchrow(SKIP, "acme", "sync", "k", "1 hour") is None
            with pytest.raises(asyncpg.UniqueViolationError):
                await app.execute(INSERT, "acme", "sync", "k", "1 hour")
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
                await app.execute(
                    "INSERT INTO pgwake.jobs (tenant_id, kind, unique_key, unique_for, "
                    "unique_until) VALUES ('acme', 'sync', 'j', '1 hour', now())"
                )
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
                await app.execute("UPDATE pgwake.jobs SET unique_until = NULL")
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
                await app.execute(INSERT, "other", "sync", "k", "1 hour")
            visible = await app.fetch("SELECT tenant_id, unique_key, unique_until FROM pgwake.jobs")
            assert [tuple(r) for r in visible] == [("acme", "k", end)]
            # An insert the role leaves uncommitted holds up inserts of its own tenant's
            # key only: another tenant's insert of the same key and period goes through.
            async with app.transaction():
                await app.execute(SKIP, "acme", "sync", "held", "1 hour")
                await conn.execute("SET lock_timeout = '1s'")
                assert await conn.fetchrow(SKIP, "victims", "sync", "held", "1 hour") is not None
                with pytest.raises(asyncpg.LockNotAvailableError):
                    await conn.execute(SKIP, "acme", "sync", "held", "1 hour")
                await conn.execute("RESET lock_timeout")
        finally:
            await app.close()


async def test_roles_confined_before_the_migration_may_set_unique_for(
    server_dsn: str, empty_dsn: str
) -> None:
    """The migration grants INSERT (unique_for) to the roles confined before it."""
    admin = await asyncpg.connect(empty_dsn)
    try:
        await admin.execute(QUERIES["migration_create_schema"])
        migrations = load_migrations()
        (ours,) = [m for m in migrations if m.label.endswith("_unique_windows")]
        for migration in migrations:
            if migration is ours:
                break
            await admin.execute(migration.sql)
        async with fresh_role(server_dsn, empty_dsn, "old_app") as role:
            await admin.execute("SELECT pgwake.confine_role_to_tenant($1, 'acme')", role)
            for migration in migrations[migrations.index(ours) :]:
                await admin.execute(migration.sql)
            app = await asyncpg.connect(as_user(empty_dsn, role))
            try:
                assert await app.fetchrow(SKIP, "acme", "sync", "k", "1 day") is not None
            finally:
                await app.close()
    finally:
        await admin.close()


# --- Retry, retention, purge, the command line ---------------------------------------


async def test_retry_of_a_failed_window_job(dsn: str, conn: asyncpg.Connection) -> None:
    """`pgwake jobs retry` runs the job again in its own window: it is the same job, so
    its window does not refuse it, and the window's key stays held; once the window has
    ended a new job waits for the retried one to finish (while active), and a retry
    while another job of the key is active is refused by name."""
    end = await window_with(conn, 2, 1.5)
    first = await conn.fetchrow(SKIP, "acme", "sync", "k", "2 seconds")
    await finish(conn, first["id"], Status.FAILED)
    assert await conn.fetchrow(SKIP, "acme", "sync", "k", "2 seconds") is None
    retried = pgwake("jobs", "retry", str(first["id"]), dsn=dsn)
    assert retried.returncode == 0, retried.stderr
    assert "queued again: 1 job(s)" in retried.stdout
    row = await conn.fetchrow(
        "SELECT status, attempts, unique_until FROM pgwake.jobs WHERE id = $1", first["id"]
    )
    assert tuple(row) == ("queued", 0, end)
    await eventually(lambda: passed(conn, end), timeout=5)
    assert await conn.fetchrow(SKIP, "acme", "sync", "k", "2 seconds") is None  # active
    await finish(conn, first["id"], Status.FAILED)
    second = await conn.fetchrow(SKIP, "acme", "sync", "k", "2 seconds")
    assert second is not None
    again = pgwake("jobs", "retry", str(first["id"]), dsn=dsn)
    assert again.returncode == 1
    assert f"its unique key is held by active job {second['id']}" in again.stderr
    assert await conn.fetchval("SELECT status FROM pgwake.jobs WHERE id = $1", first["id"]) == (
        "failed"
    )


async def test_retention_and_purge_keep_a_job_until_its_window_ends(
    dsn: str, conn: asyncpg.Connection
) -> None:
    """Retention and `pgwake jobs purge` delete a finished job past its retention only
    once its window has ended: the window holds the key through the row."""
    # A longer window: two commands run in it.
    end = await window_with(conn, 5, 4)
    pruned = (await conn.fetchrow(SKIP, "acme", "sync", "k", "5 seconds"))["id"]
    purged = (await conn.fetchrow(SKIP, "acme", "purge", "k", "5 seconds"))["id"]
    plain = await conn.fetchval("INSERT INTO pgwake.jobs (kind) VALUES ('sync') RETURNING id")
    await conn.execute(
        "UPDATE pgwake.jobs SET status = CASE WHEN id = $1 THEN 'cancelled' ELSE 'succeeded' "
        "END, finished_at = now() - interval '1 day'",
        purged,
    )
    pool = await db.create_pool(dsn, size=2)
    retention = {Status.SUCCEEDED: 60.0, Status.FAILED: 60.0, Status.CANCELLED: 60.0}
    try:
        pruner = Pruner(pool, Metrics(), retention, batch=10)
        assert await pruner.prune() == 1
        left = [r["id"] for r in await conn.fetch("SELECT id FROM pgwake.jobs ORDER BY id")]
        assert left == [pruned, purged]
        assert plain not in left
        # The window holds through the rows that were kept.
        assert await conn.fetchrow(SKIP, "acme", "sync", "k", "5 seconds") is None
        kept = pgwake("jobs", "purge", "--yes", "--json", dsn=dsn)
        assert kept.returncode == 0, kept.stderr
        assert json.loads(kept.stdout) == {"purged": 0, "kept_for_unique_window": 2}
        await eventually(lambda: passed(conn, end), timeout=10)
        done = pgwake("jobs", "purge", "--status", "cancelled", "--yes", dsn=dsn)
        assert done.returncode == 0, done.stderr
        assert "purged 1 job(s)" in done.stdout
        assert await pruner.prune() == 1
        assert await conn.fetchval("SELECT count(*) FROM pgwake.jobs") == 0
    finally:
        await pool.close()


async def test_enqueue_unique_for(dsn: str, conn: asyncpg.Connection) -> None:
    end = await window_with(conn, 3600, 30)
    first = pgwake(
        "enqueue", "noop", "--unique-key", "nightly", "--unique-for", "1h", "--json", dsn=dsn
    )
    assert first.returncode == 0, first.stderr
    made = json.loads(first.stdout)
    assert made["unique_until"] == end.isoformat()
    job = made["id"]
    row = await conn.fetchrow(
        "SELECT unique_key, unique_for, unique_until FROM pgwake.jobs WHERE id = $1", job
    )
    assert tuple(row) == ("nightly", timedelta(hours=1), end)
    active = pgwake("enqueue", "noop", "--unique-key", "nightly", "--unique-for", "3600", dsn=dsn)
    assert active.returncode == 1
    assert f"unique key 'nightly' is taken by an active job (job {job}, queued)" in active.stdout
    await conn.execute(
        "UPDATE pgwake.jobs SET status = 'succeeded', finished_at = now() WHERE id = $1", job
    )
    held = pgwake("enqueue", "noop", "--unique-key", "nightly", "--unique-for", "60m", dsn=dsn)
    assert held.returncode == 1
    assert (
        f"unique key 'nightly' is taken in this window by job {job} (succeeded) "
        f"until {end.isoformat()}" in held.stdout
    )
    as_json = pgwake(
        "enqueue", "noop", "--unique-key", "nightly", "--unique-for", "1h", "--json", dsn=dsn
    )
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout)["held_by"] == job
    # Another period is another window; no period at all is "while active" only.
    other = pgwake("enqueue", "noop", "--unique-key", "nightly", "--unique-for", "2h", dsn=dsn)
    assert other.returncode == 0, other.stderr
    shown = pgwake("jobs", "show", str(job), dsn=dsn)
    assert "unique_for_seconds: 3600.0" in shown.stdout
    assert f"unique_until: {end}" in shown.stdout


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("soon", "--unique-for must be seconds or a number with a unit"),
        ("-5s", "--unique-for must be seconds or a number with a unit"),
        ("5 weeks", "--unique-for must be seconds or a number with a unit"),
        ("1e999", "--unique-for must be seconds or a number with a unit"),
        ("0", "jobs_unique_for_positive_at_most_366_days"),
        ("367d", "jobs_unique_for_positive_at_most_366_days"),
    ],
)
async def test_enqueue_refuses_a_bad_period(
    dsn: str, conn: asyncpg.Connection, value: str, message: str
) -> None:
    done = pgwake("enqueue", "noop", "--unique-key", "k", "--unique-for", value, dsn=dsn)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert message in done.stderr
    no_key = pgwake("enqueue", "noop", "--unique-for", "1h", dsn=dsn)
    assert no_key.returncode == 2
    assert "jobs_unique_for_needs_unique_key" in no_key.stderr
    assert await conn.fetchval("SELECT count(*) FROM pgwake.jobs") == 0
