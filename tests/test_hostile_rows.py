"""Hostile rows (issue 13, points 1, 2, 7, 8, 14 and 17; issue 15, point 8): rows that
PostgreSQL accepts into pgwake.jobs or pgwake.schedules, and handler errors, that used
to stop every worker. Each is refused at INSERT by a named CHECK, or fails (or disables)
only itself with the reason recorded, while everything else keeps flowing.

The property-based acceptance test is in tests/test_hostile_rows_property.py."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from listener import db
from listener.api import JobContext, Registry, Retry
from listener.maintenance.schedules import Scheduler, due_slots
from listener.migrate import latest_version, load_migrations
from listener.queries import QUERIES
from tests.support.cli import pgwake
from tests.support.paths import ROOT
from tests.support.schedules import add_schedule
from tests.support.waiting import eventually
from tests.support.workers import running_worker

# 15 bytes that PostgreSQL stores as a number of 5001 digits, which Python's int()
# refuses (more than 4300 digits); and nesting deeper than Python's recursion limit.
HUGE_NUMBER = '{"a": 1e5000}'
DEEP = '{"a":' + "[" * 3000 + "]" * 3000 + "}"


def echo_registry() -> Registry:
    registry = Registry()

    @registry.handler("echo")
    async def echo(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
        return payload

    return registry


async def insert_text(conn: asyncpg.Connection, tenant: str, kind: str, payload: str) -> int:
    """Insert one job whose payload is given as JSON text (cast by PostgreSQL)."""
    return await conn.fetchval(
        "INSERT INTO pgwake.jobs (tenant_id, kind, payload, max_attempts) "
        "VALUES ($1, $2, $3::text::jsonb, 5) RETURNING id",
        tenant,
        kind,
        payload,
    )


async def finished(conn: asyncpg.Connection, ids: list[int]) -> bool:
    done = await conn.fetchval(
        "SELECT count(*) FROM pgwake.jobs WHERE id = ANY($1) "
        "AND status IN ('succeeded', 'failed', 'cancelled')",
        ids,
    )
    return bool(done == len(ids))


async def test_undecodable_payloads_fail_alone_and_the_batch_runs(dsn: str) -> None:
    """Fails on 8feecbc: the claim decoded the batch in one go, raised ValueError
    ("Exceeds the limit (4300 digits)") or RecursionError, and the worker exited 1 with
    the batch put back. Now each of the two jobs fails for good at attempt 1 (of 5)
    with last_error naming the problem, and every other job of the batch succeeds."""
    plain = await asyncpg.connect(dsn)  # no codecs: nothing here decodes the payloads
    try:
        good = [await insert_text(plain, "evil", "echo", json.dumps({"n": n})) for n in range(3)]
        huge = await insert_text(plain, "evil", "echo", HUGE_NUMBER)
        deep = await insert_text(plain, "evil", "echo", DEEP)
        good += [
            await insert_text(plain, "evil", "echo", json.dumps({"n": n})) for n in range(3, 6)
        ]
        async with running_worker(dsn, echo_registry(), claim_batch=50) as service:
            await eventually(lambda: finished(plain, [*good, huge, deep]))
            # The worker is still up and still runs jobs.
            later = await insert_text(plain, "other", "echo", '{"later": true}')
            await eventually(lambda: finished(plain, [later]))
            assert not service.stopped.is_set()
        rows = {
            r["id"]: r
            for r in await plain.fetch(
                "SELECT id, status, attempts, last_error FROM pgwake.jobs ORDER BY id"
            )
        }
    finally:
        await plain.close()
    assert [rows[i]["status"] for i in [*good, later]] == ["succeeded"] * 7
    for bad, problem in ((huge, "value has 5001 digits"), (deep, "nested deeper")):
        assert rows[bad]["status"] == "failed"
        assert rows[bad]["attempts"] == 1  # for good: no retry, though max_attempts is 5
        assert "invalid payload for 'echo': JSON Python cannot decode" in rows[bad]["last_error"]
        assert problem in rows[bad]["last_error"]


async def test_jobs_show_list_and_views_read_undecodable_rows(
    dsn: str, conn: asyncpg.Connection
) -> None:
    """Fails on 8feecbc: `pgwake jobs show ID` ended in a traceback (ValueError from the
    JSON decoder), and so did reading pgwake.failed_jobs with pgwake's connections. Now
    the payload is printed as stored, with the reason."""
    huge = await insert_text(conn, "evil", "echo", HUGE_NUMBER)
    deep = await insert_text(conn, "evil", "echo", DEEP)
    await conn.execute(
        "UPDATE pgwake.jobs SET status = 'failed', result = payload, progress = payload, "
        "finished_at = now() WHERE id = ANY($1)",
        [huge, deep],
    )
    shown = pgwake("jobs", "show", str(huge), dsn=dsn)
    assert shown.returncode == 0, shown.stderr
    assert 'payload: {"a": 1' + "0" * 5000 + "}" in shown.stdout
    assert "JSON Python cannot decode: Exceeds the limit (4300 digits)" in shown.stdout
    as_json = pgwake("jobs", "show", str(deep), "--json", dsn=dsn)
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["payload"].startswith('{"a": [[[')
    listed = pgwake("jobs", "list", "--json", dsn=dsn)
    assert listed.returncode == 0, listed.stderr
    assert {j["id"] for j in json.loads(listed.stdout)["jobs"]} == {huge, deep}
    failed = await conn.fetch("SELECT id, payload FROM pgwake.failed_jobs ORDER BY id")
    assert [r["id"] for r in failed] == [huge, deep]
    assert all(isinstance(r["payload"], db.UndecodableJson) for r in failed)


@pytest.mark.parametrize(
    "run_at",
    ["infinity", "-infinity", "10000-01-01 00:00:00+00", "0001-12-31 23:59:59+00 BC"],
)
async def test_run_at_outside_years_1_to_9999_is_refused(
    conn: asyncpg.Connection, run_at: str
) -> None:
    """Fails on 8feecbc: 'infinity' was accepted, and the promoter's next-due query then
    failed ("cannot subtract infinite timestamps"), so every worker exited 1; with
    '-infinity' the sampler, `pgwake status` and queue_status failed; a year past 9999
    or before 1 made any claim or listing reading it fail (OverflowError). Now refused
    at INSERT, by a named CHECK."""
    with pytest.raises(asyncpg.CheckViolationError) as refused:
        await conn.execute(
            "INSERT INTO pgwake.jobs (tenant_id, kind, run_at) "
            "VALUES ('evil', 'echo', $1::text::timestamptz)",
            run_at,
        )
    assert refused.value.constraint_name == "jobs_run_at_between_years_1_and_9999"


async def test_values_at_the_limits_still_allowed_keep_everything_up(
    dsn: str, conn: asyncpg.Connection
) -> None:
    """Guards what stays allowed (this passes on 8feecbc too): run_at at year 1 and at
    the end of 9999, a 7-day and a 1-microsecond timeout, priorities at +-1000 and 1000
    attempts, unique windows of 366 days and of 1 microsecond. The promoter, the claim,
    the metrics sampler, `pgwake status`, `pgwake jobs show` and every view work with
    them."""
    await conn.execute(
        """INSERT INTO pgwake.jobs (tenant_id, kind, run_at, timeout, priority, max_attempts)
           VALUES ('edge', 'nobody', '0001-01-01 00:00:00+00', '7 days', 1000, 1000),
                  ('edge', 'nobody', '9999-12-31 23:59:59.999999+00', '1 microsecond', -1000, 1),
                  ('edge', 'echo', '0001-01-01 00:00:00+00', '7 days', -1000, 1000),
                  ('edge', 'echo', now() + interval '200 milliseconds', '1 microsecond',
                   1000, 1)"""
    )
    windows = await conn.fetch(
        """INSERT INTO pgwake.jobs (tenant_id, kind, unique_key, unique_for)
           VALUES ('edge', 'echo', 'year', '366 days'), ('edge', 'echo', 'instant', '1 microsecond')
           RETURNING id"""
    )
    async with running_worker(dsn, echo_registry(), metrics_interval=0.2) as service:

        async def echoes_done() -> bool:
            n = await conn.fetchval(
                "SELECT count(*) FROM pgwake.jobs WHERE kind = 'echo' AND status = 'succeeded'"
            )
            return bool(n == 4)

        await eventually(echoes_done)
        for window in windows:
            shown = pgwake("jobs", "show", str(window["id"]), "--json", dsn=dsn)
            assert shown.returncode == 0, shown.stderr
            assert json.loads(shown.stdout)["unique_until"] is not None
        for view in ("queue_status", "failed_jobs", "tenant_backlog"):
            await conn.fetch(f"SELECT * FROM pgwake.{view}")
        # Healthy but for the job of year 1 that nobody handles, waiting for ever.
        status = pgwake("status", "--json", "--max-wait", "0", dsn=dsn)
        assert status.returncode == 0, status.stderr
        aged = pgwake("status", dsn=dsn)
        assert aged.returncode == 1, aged.stderr
        assert aged.stderr.startswith("pgwake: error: unhealthy: "), aged.stderr
        listed = pgwake("jobs", "list", dsn=dsn)
        assert listed.returncode == 0, listed.stderr
        assert not service.stopped.is_set()
    oldest = await conn.fetchval(
        "SELECT oldest_queued_wait FROM pgwake.queue_status WHERE kind = 'nobody'"
    )
    assert oldest > timedelta(days=365 * 2000)


# --- Schedules (point 7, point 8, issue 15 point 8) -----------------------------------


async def test_schedules_add_refuses_what_the_jobs_table_refuses(
    dsn: str, conn: asyncpg.Connection
) -> None:
    """Fails on 8feecbc: `schedules add --tenant ''` exited 0, printed "for every tenant"
    and stored '', and every leader round then raised CheckViolationError (all workers
    exited). Now the schedule is refused (exit 2) with the check's name, which says
    what jobs_tenant_id_not_empty says for jobs."""
    for tenant in ("", "   ", "t" * 201):
        bad = pgwake(
            "schedules", "add", "bad", "--cron", "* * * * *", "--kind", "echo",
            "--tenant", tenant, dsn=dsn,
        )  # fmt: skip
        assert bad.returncode == 2, (tenant, bad.stdout, bad.stderr)
        assert 'violates check constraint "schedules_tenant_id_not_empty"' in bad.stderr
        assert "every tenant" not in bad.stdout
    assert await conn.fetchval("SELECT count(*) FROM pgwake.schedules") == 0
    good = pgwake(
        "schedules", "add", "fine", "--cron", "* * * * *", "--kind", "echo",
        "--tenant", "t" * 200, dsn=dsn,
    )  # fmt: skip
    assert good.returncode == 0, good.stderr
    assert f"for tenant {'t' * 200}" in good.stdout


@pytest.mark.parametrize(
    ("values", "constraint"),
    [
        ({"tenant_id": ""}, "schedules_tenant_id_not_empty"),
        ({"tenant_id": "t" * 201}, "schedules_tenant_id_not_empty"),
        ({"payload": {"blob": "x" * 1_048_576}}, "schedules_payload_at_most_1mib"),
        ({"next_run_at": datetime.max}, "schedules_next_run_at_between_years_1_and_9999"),
    ],
)
async def test_schedule_rows_whose_jobs_would_be_refused_are_refused(
    conn: asyncpg.Connection, values: dict[str, Any], constraint: str
) -> None:
    """Fails on 8feecbc: pgwake.schedules took these rows, and the leader's round then
    raised CheckViolationError on inserting their jobs (every worker exited 1, again
    after each restart). Now the schedule row is refused, by a named CHECK."""
    if "next_run_at" in values:
        values = {"next_run_at": "infinity"}  # written below as text, cast by PostgreSQL
        with pytest.raises(asyncpg.CheckViolationError) as refused:
            await conn.execute(
                "INSERT INTO pgwake.schedules (name, cron, kind, next_run_at) "
                "VALUES ('bad', '* * * * *', 'echo', 'infinity')"
            )
    else:
        with pytest.raises(asyncpg.CheckViolationError) as refused:
            await add_schedule(conn, "bad", kind="echo", **values)
    assert refused.value.constraint_name == constraint


async def test_a_schedule_the_leader_cannot_serve_is_disabled_and_the_rest_go_on(
    dsn: str, conn: asyncpg.Connection
) -> None:
    """Fails on 8feecbc: one schedule whose jobs the jobs table refused (here by a CHECK
    the operator added), or whose slots could not be computed (a catch-up from year 1 in
    a time zone west of UTC: OverflowError), made the whole round raise, and run_rounds
    ended the worker. Now each is disabled with the reason (logged, in `schedules
    list`), and the other schedule of the round is enqueued."""
    await conn.execute(
        "ALTER TABLE pgwake.jobs ADD CONSTRAINT jobs_no_forbidden CHECK (kind <> 'forbidden')"
    )
    ago = await conn.fetchval("SELECT date_trunc('minute', now()) - interval '1 minute'")
    await add_schedule(conn, "refused", kind="forbidden", next_run_at=ago)
    await add_schedule(
        conn,
        "from_year_1",
        kind="echo",
        missed="catch_up",
        timezone="America/New_York",
        next_run_at=datetime(1, 1, 1, 0, 1, tzinfo=UTC),  # datetime.min is sent as -infinity
    )
    await add_schedule(conn, "fine", kind="echo", next_run_at=ago)
    pool = await db.create_pool(dsn, size=1)
    try:
        assert await Scheduler(pool).round() == 1
    finally:
        await pool.close()
    rows = {r["name"]: r for r in await conn.fetch("SELECT * FROM pgwake.schedules")}
    assert rows["fine"]["enabled"]
    assert rows["fine"]["next_run_at"] > ago
    assert not rows["refused"]["enabled"]
    assert rows["refused"]["last_error"] == (
        'its jobs cannot be enqueued: new row for relation "jobs" violates check '
        'constraint "jobs_no_forbidden"'
    )
    assert not rows["from_year_1"]["enabled"]
    assert rows["from_year_1"]["last_error"].startswith(
        "its slots cannot be computed: OverflowError"
    )
    keys = await conn.fetch("SELECT unique_key FROM pgwake.jobs")
    assert [k["unique_key"].split(":")[1] for k in keys] == ["fine"]
    listed = pgwake("schedules", "list", dsn=dsn)
    assert listed.returncode == 0, listed.stderr
    assert "DISABLED (its jobs cannot be enqueued: new row for relation" in listed.stdout


@pytest.mark.timeout(60)
async def test_a_skip_schedule_centuries_behind_computes_its_slot_directly(
    dsn: str, conn: asyncpg.Connection
) -> None:
    """Fails on 8feecbc: a `skip` schedule far behind walked every missed slot in
    Python (here 500 years of minutes, about 263 million slots: the test times out),
    inside the leader's transaction, holding every other schedule back. Now its latest
    slot is computed directly and both schedules are served in one round."""
    now = datetime.now(UTC)
    slots, following = due_slots("* * * * *", "UTC", now - timedelta(days=365 * 500), now, "skip")
    latest = now.replace(second=0, microsecond=0)
    assert slots == [latest]
    assert following == latest + timedelta(minutes=1)
    ago = await conn.fetchval("SELECT date_trunc('minute', now()) - interval '1 minute'")
    await add_schedule(
        conn, "far_behind", kind="echo", next_run_at=datetime(1526, 1, 1, tzinfo=UTC)
    )
    await add_schedule(conn, "on_time", kind="echo", next_run_at=ago)
    pool = await db.create_pool(dsn, size=1)
    try:
        assert await Scheduler(pool).round() == 2
    finally:
        await pool.close()
    db_now = await conn.fetchval("SELECT now()")
    rows = await conn.fetch("SELECT name, next_run_at, last_slot FROM pgwake.schedules")
    for row in rows:
        assert db_now < row["next_run_at"] <= db_now + timedelta(minutes=1), row
    far = next(r for r in rows if r["name"] == "far_behind")
    assert db_now - timedelta(minutes=1) < far["last_slot"] <= db_now


async def test_editing_a_due_schedules_cron_by_sql_takes_effect_at_once(
    dsn: str, conn: asyncpg.Connection
) -> None:
    """Issue 15, point 8. Fails on 8feecbc: a due schedule whose cron was changed by SQL
    still enqueued one slot of its old cron (next_run_at had been computed from it).
    Now the edit clears next_run_at (a trigger), and the next round computes the first
    slot of the new cron after now; nothing is enqueued for the old one. An UPDATE that
    sets next_run_at itself (to another value) is left as written."""
    ago = await conn.fetchval("SELECT date_trunc('minute', now()) - interval '1 minute'")
    await add_schedule(conn, "edited", kind="echo", next_run_at=ago)
    await add_schedule(conn, "edited_with_slot", kind="echo", next_run_at=ago)
    await conn.execute("UPDATE pgwake.schedules SET cron = '0 0 1 1 *' WHERE name = 'edited'")
    await conn.execute(
        "UPDATE pgwake.schedules SET timezone = 'Europe/Paris', next_run_at = $1 "
        "WHERE name = 'edited_with_slot'",
        ago - timedelta(minutes=1),
    )
    pool = await db.create_pool(dsn, size=1)
    try:
        assert await Scheduler(pool).round() == 1  # edited_with_slot only
    finally:
        await pool.close()
    rows = {r["name"]: r for r in await conn.fetch("SELECT * FROM pgwake.schedules")}
    assert rows["edited"]["next_run_at"] == datetime(datetime.now(UTC).year + 1, 1, 1, tzinfo=UTC)
    assert rows["edited"]["last_slot"] is None
    keys = [r["unique_key"] for r in await conn.fetch("SELECT unique_key FROM pgwake.jobs")]
    assert [k.split(":")[1] for k in keys] == ["edited_with_slot"]


# --- Handler errors with NUL or lone surrogates (point 14) ----------------------------


async def test_error_text_with_nul_or_surrogate_is_stored_escaped_and_retried(
    dsn: str, conn: asyncpg.Connection
) -> None:
    """Fails on 8feecbc: an error message holding NUL or a lone surrogate could not be
    stored, so the job failed for good at attempt 1 (and for NUL last_error held the
    database's complaint instead of the message). Now it is stored escaped, with the
    message, and the job is retried as for any other error."""
    registry = Registry()

    @registry.handler("nul")
    async def nul(payload: dict[str, Any], ctx: JobContext) -> None:
        raise RuntimeError("bad\x00byte in the input")

    @registry.handler("surrogate")
    async def surrogate(payload: dict[str, Any], ctx: JobContext) -> None:
        raise Retry("lone \ud800 surrogate in the reason", delay=3600)

    ids = [
        await conn.fetchval(
            "INSERT INTO pgwake.jobs (tenant_id, kind, max_attempts) VALUES ('t', $1, 3) "
            "RETURNING id",
            kind,
        )
        for kind in ("nul", "surrogate")
    ]

    async def both_retried() -> bool:
        n = await conn.fetchval(
            "SELECT count(*) FROM pgwake.jobs WHERE id = ANY($1) AND attempts = 1 "
            "AND status IN ('queued', 'scheduled')",
            ids,
        )
        return bool(n == 2)

    async with running_worker(dsn, registry, retry_base=3600) as service:
        await eventually(both_retried)
        assert not service.stopped.is_set()
    errors = [
        await conn.fetchval("SELECT last_error FROM pgwake.jobs WHERE id = $1", i) for i in ids
    ]
    assert errors[0].startswith("RuntimeError: bad\\x00byte in the input\n")
    assert errors[1] == "Retry: lone \\ud800 surrogate in the reason"


# --- Docs drift (point 17) --------------------------------------------------------------


def docs_text() -> str:
    """The README and every page of the docs, one after the other."""
    pages = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
    return "\n".join(page.read_text() for page in pages)


def test_readme_prints_the_newest_schema_version() -> None:
    """Fails on 8feecbc: the README said "schema is at version 0008" while the newest
    migration was 0009. Every schema version the README and the docs print is the newest
    migration in sql/migrations (computed, so it holds after any later migration)."""
    newest = max(int(p.name[:4]) for p in (ROOT / "sql" / "migrations").glob("[0-9]*.sql"))
    assert newest == latest_version()
    readme = docs_text()
    printed = re.findall(r"schema is at version (\d{4})|\(schema (\d{4})\)", readme)
    versions = {int(a or b) for a, b in printed}
    assert len(printed) >= 3
    assert versions == {newest}


async def test_readme_says_what_insert_returning_status_shows(conn: asyncpg.Connection) -> None:
    """Fails on 8feecbc: the README said `INSERT ... RETURNING status` shows `queued` for
    a job with a future run_at, and that the insert trigger is SECURITY DEFINER; it
    shows `scheduled`, and no trigger function of pgwake.jobs is SECURITY DEFINER."""
    future = await conn.fetchval(
        "INSERT INTO pgwake.jobs (kind, run_at) VALUES ('k', now() + interval '1 hour') "
        "RETURNING status"
    )
    now = await conn.fetchval("INSERT INTO pgwake.jobs (kind) VALUES ('k') RETURNING status")
    readme = docs_text()
    paragraph = readme[readme.index("`INSERT ... RETURNING status`") :].split("\n\n", 1)[0]
    assert f"future `run_at` reads `{future}`" in paragraph
    assert f"due now reads `{now}`" in paragraph
    definers = await conn.fetchval(
        """SELECT count(*) FROM pg_trigger AS t JOIN pg_proc AS p ON p.oid = t.tgfoid
            WHERE t.tgrelid = 'pgwake.jobs'::regclass AND NOT t.tgisinternal
              AND p.prosecdef"""
    )
    assert definers == 0
    assert "runs with its owner's privileges (`SECURITY DEFINER`)" not in readme
    assert "they are not\n`SECURITY DEFINER`" in readme


# --- Migration 0010 with rows written before it -------------------------------------


async def test_migration_0010_fails_old_unreadable_jobs_and_names_bad_schedules(
    empty_dsn: str,
) -> None:
    """Rows written before 0010 that its checks refuse: a job with an infinite run_at
    (which stopped every worker) fails, with the reason and its old run_at in
    last_error; a schedule whose jobs could never be enqueued stops the migration with
    its name, for an operator to fix, and nothing is lost."""
    migrations = load_migrations()
    assert migrations[9].version == 10
    conn = await asyncpg.connect(empty_dsn)
    try:
        await conn.execute(QUERIES["migration_create_schema"])
        for migration in migrations[:9]:
            await conn.execute(migration.sql)
        await conn.execute(
            """INSERT INTO pgwake.jobs (tenant_id, kind, run_at, status, last_error)
               VALUES ('a', 'echo', 'infinity', 'scheduled', NULL),
                      ('a', 'echo', '-infinity', 'queued', 'earlier error'),
                      ('a', 'echo', '20000-01-01', 'succeeded', NULL),
                      ('a', 'echo', now(), 'queued', NULL)"""
        )
        await conn.execute(
            "INSERT INTO pgwake.schedules (name, cron, kind, tenant_id) "
            "VALUES ('blank', '* * * * *', 'echo', ''), ('fine', '* * * * *', 'echo', 'a')"
        )
        with pytest.raises(asyncpg.RaiseError) as stopped:
            async with conn.transaction():
                await conn.execute(migrations[9].sql)
        assert str(stopped.value).startswith("schedules 'blank' cannot enqueue their jobs")
        await conn.execute("UPDATE pgwake.schedules SET tenant_id = 'a' WHERE name = 'blank'")
        await conn.execute(migrations[9].sql)
        rows = await conn.fetch(
            "SELECT status, run_at::text, last_error, finished_at IS NOT NULL AS finished "
            "FROM pgwake.jobs ORDER BY id"
        )
    finally:
        await conn.close()
    assert [r["status"] for r in rows] == ["failed", "failed", "succeeded", "queued"]
    assert rows[0]["run_at"] == "9999-12-31 23:59:59+00"
    assert rows[0]["last_error"] == (
        "run_at infinity is outside years 1 to 9999 (UTC); set to the nearest allowed instant"
    )
    assert rows[1]["run_at"] == "0001-01-01 00:00:00+00"
    assert rows[1]["last_error"].endswith("nearest allowed instant\nearlier error")
    assert rows[2]["last_error"].startswith("run_at 20000-01-01 00:00:00+00 is outside")
    assert all(r["finished"] for r in rows[:3])
    assert rows[3]["last_error"] is None
