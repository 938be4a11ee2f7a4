"""The claim's cost does not grow with the number of tenants or the backlog: its plan
walks jobs_ready_idx (one probe per tenant it visits) and never scans the table."""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg
import pytest

from listener import db
from listener.config import load_settings
from listener.kept_connection import KeptConnection
from listener.queries import QUERIES
from listener.service import session_settings
from tests.support.plans import nodes


async def test_claim_plan_uses_the_ready_index_with_ten_thousand_tenants(
    conn: asyncpg.Connection,
) -> None:
    await conn.execute(
        "INSERT INTO pgwake.jobs (tenant_id, kind) "
        "SELECT 'tenant' || lpad((i % 10000)::text, 5, '0'), 'k' "
        "FROM generate_series(1, 30000) AS i"
    )
    # Finished history that a good plan never touches.
    await conn.execute(
        "INSERT INTO pgwake.jobs (tenant_id, kind, status, finished_at) "
        "SELECT 'tenant' || lpad((i % 10000)::text, 5, '0'), 'k', 'succeeded', now() "
        "FROM generate_series(1, 30000) AS i"
    )
    await conn.execute(
        "INSERT INTO pgwake.tenants (tenant_id, max_concurrency) "
        "SELECT 'tenant' || lpad(i::text, 5, '0'), 5 FROM generate_series(0, 9999) AS i"
    )
    await conn.execute("ANALYZE pgwake.jobs")
    await conn.execute("ANALYZE pgwake.tenants")
    worker = uuid.uuid4()
    await conn.execute(QUERIES["worker_register"], worker, "plan", 1, ["k"], 100, None)
    # EXPLAIN ANALYZE runs the claim for real (on this test's own database).
    explained = await conn.fetchval(
        "EXPLAIN (ANALYZE, FORMAT JSON) " + QUERIES["job_claim"],
        worker,
        ["k"],
        100,
        8,
        [],
        [],
        "tenant05000",
    )
    plan = explained[0]
    all_nodes = nodes(plan["Plan"])
    scans_on_jobs = [
        n for n in all_nodes if n.get("Relation Name") == "jobs" and "Scan" in n["Node Type"]
    ]
    assert scans_on_jobs, "the plan should read pgwake.jobs"
    assert not [n for n in scans_on_jobs if n["Node Type"] == "Seq Scan"], json.dumps(plan)
    # Index probes, and the update finds the rows it locked by their ctid (a Tid Scan).
    assert {n.get("Index Name") for n in scans_on_jobs if n["Node Type"] != "Tid Scan"} <= {
        "jobs_ready_idx",
        "jobs_ready_priority_idx",
        "jobs_pkey",
        "jobs_running_tenant_idx",
    }
    assert [n for n in scans_on_jobs if n["Node Type"] == "Tid Scan"], json.dumps(plan)
    assert not [
        n for n in all_nodes if n["Node Type"] == "Seq Scan" and n.get("Relation Name") == "tenants"
    ], json.dumps(plan)
    (update,) = [n for n in all_nodes if n["Node Type"] == "ModifyTable"]
    assert update["Actual Rows"] == 100
    # Each tenant locks only its share of the claim (here 1: an even split of 100 over
    # the 100 tenants walked), so the claim locks the 100 rows it takes, not 100 x 5.
    locked = sum(
        n["Actual Rows"] * n["Actual Loops"]
        for n in all_nodes
        if n["Node Type"] == "LockRows"
        and any(c.get("Relation Name") == "jobs" for c in nodes(n) if c is not n)
    )
    assert locked == 100, locked
    # The walk visited about as many tenants as it claimed jobs, not all 10,000.
    probes = max(
        n.get("Actual Loops", 0) for n in scans_on_jobs if n.get("Index Name") == "jobs_ready_idx"
    )
    assert probes <= 300, probes


async def test_lookups_of_one_workers_jobs_read_only_the_running_index(
    conn: asyncpg.Connection,
) -> None:
    """One index on running jobs, led by tenant_id, serves the per-worker lookups too
    (heartbeat, put-back, cancel requests): they scan the running jobs, never the table's
    history."""
    workers = [uuid.uuid4() for _ in range(4)]
    for worker in workers:
        await conn.execute(QUERIES["worker_register"], worker, "plan", 1, ["k"], 100, None)
    await conn.execute(
        "INSERT INTO pgwake.jobs (tenant_id, kind, status, finished_at) "
        "SELECT 'tenant' || (i % 100), 'k', 'succeeded', now() FROM generate_series(1, 50000) i"
    )
    await conn.execute(
        "INSERT INTO pgwake.jobs (tenant_id, kind, status, claimed_by, attempts, started_at) "
        "SELECT 'tenant' || (i % 100), 'k', 'running', ($1::uuid[])[1 + i % 4], 1, now() "
        "FROM generate_series(1, 400) i",
        workers,
    )
    await conn.execute("ANALYZE pgwake.jobs")
    for name, args in [
        ("worker_heartbeat", (workers[0], True)),
        ("job_put_back_held", (workers[0], "test", False)),
        ("job_put_back_held", (workers[0], "test", True)),
        ("job_list_cancel_requested", (workers[0],)),
    ]:
        explained = await conn.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + QUERIES[name], *args)
        scans = [
            n
            for n in nodes(explained[0]["Plan"])
            if n.get("Relation Name") == "jobs" and "Scan" in n["Node Type"]
        ]
        assert scans, name
        assert {n.get("Index Name") for n in scans} == {"jobs_running_tenant_idx"}, (
            name,
            json.dumps(explained),
        )


def _literal(value: object) -> str:
    """``value`` as an SQL literal for EXPLAIN EXECUTE (which takes no bind parameters)."""
    if value is None:
        return "NULL"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        inner = ",".join(str(v) for v in value)
        return "'{" + inner + "}'"
    return "'" + str(value).replace("'", "''") + "'"


async def test_kept_connection_plans_stay_on_the_indexes_when_a_backlog_arrives(
    dsn: str,
) -> None:
    """A worker's kept connection prepares its statements while the queue is empty and
    runs them for a trickle of jobs; then 100,000 jobs over 100 tenants arrive. The
    plans those prepared statements run now must still read pgwake.jobs through its
    indexes (or by ctid), never by a sequential scan.

    Fails on 8feecbc: after five executions on the empty table PostgreSQL caches a
    generic plan costed for a table of a few rows; the claim's UPDATE reads the table
    with a Seq Scan (filter ctid = ANY ...) instead of a Tid Scan, so each claim of the
    burst scans every row (hundreds of milliseconds at 100,000 queued).
    """
    settings = load_settings({}, env={})
    # The worker's pool, with the session settings every worker session gets.
    pool = await db.create_pool(dsn, size=2, session_settings=session_settings(settings))
    admin = await db.connect(dsn)
    held = KeptConnection(pool)
    worker = uuid.uuid4()
    try:
        await admin.execute(QUERIES["worker_register"], worker, "plan", 1, ["k"], 100, None)

        def claim_args(cursor: str) -> tuple[object, ...]:
            return (worker, ["k"], 32, 8, [], [], cursor)

        # The trickle: one job at a time, claimed, finished, beside heartbeats and
        # promotions, all on the kept connection (more than the five custom plans after
        # which PostgreSQL may switch a prepared statement to its generic plan).
        last_id = 0
        for _ in range(20):
            await admin.execute("INSERT INTO pgwake.jobs (kind) VALUES ('k')")
            rows = await held.fetch(QUERIES["job_claim"], *claim_args(""))
            claimed = [r for r in rows if r["id"] is not None]
            assert len(claimed) == 1
            last_id = claimed[0]["id"]
            # The plain claim, which a worker runs while no limit or priority is in play.
            await admin.execute("INSERT INTO pgwake.jobs (kind) VALUES ('k')")
            rows = await held.fetch(QUERIES["job_claim_plain"], *claim_args(""))
            plain = [r["id"] for r in rows if r["id"] is not None]
            assert len(plain) == 1
            await held.fetch(QUERIES["worker_heartbeat"], worker, False)
            await held.fetch(QUERIES["job_promote_due"], 100)
            # An idle worker's wake-up: the claim by the id a notification named.
            notified = await admin.fetchval(
                "INSERT INTO pgwake.jobs (kind) VALUES ('k') RETURNING id"
            )
            rows = await held.fetch(QUERIES["job_claim_notified"], worker, ["k"], notified, [])
            assert [r["id"] for r in rows] == [notified, None]
            # The three outcomes in one write, as the completer batches them.
            ids = [last_id, *plain, notified]
            finished = await held.fetch(
                QUERIES["job_finish_many"],
                worker,
                ids,
                [1] * 3,
                ["succeeded"] * 3,
                [0] * 3,
                None,
                None,
                None,
            )
            assert [sorted(r["ids"]) for r in finished] == [sorted(ids)]
        # The burst, in one statement.
        await admin.execute(
            "INSERT INTO pgwake.jobs (tenant_id, kind) "
            "SELECT 'tenant' || lpad((i % 100)::text, 3, '0'), 'k' "
            "FROM generate_series(1, 100000) AS i"
        )
        conn = held._conn  # the kept connection itself: its prepared statements
        assert conn is not None
        explained_args: dict[str, tuple[object, ...]] = {
            "job_claim": claim_args("tenant050"),
            "job_claim_plain": claim_args("tenant050"),
            "job_finish_many": (worker, [last_id], [1], ["succeeded"], [0], None, None, None),
            "worker_heartbeat": (worker, False),
            "job_promote_due": (100,),
            "job_claim_notified": (worker, ["k"], last_id + 50_000, []),
        }
        for name, args in explained_args.items():
            statement = await conn.fetchval(
                "SELECT name FROM pg_prepared_statements WHERE statement = $1", QUERIES[name]
            )
            assert statement is not None, name
            params = ", ".join(_literal(a) for a in args)
            explained = await conn.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE {statement}({params})")
            scans = [
                n
                for n in nodes(explained[0]["Plan"])
                if n.get("Relation Name") == "jobs" and "Scan" in n["Node Type"]
            ]
            assert scans, name
            assert not [n for n in scans if n["Node Type"] == "Seq Scan"], (
                name,
                json.dumps(explained),
            )
            if name in ("job_claim", "job_claim_plain"):
                # The walk and the candidates probe the ready index; the update reads
                # the locked rows by ctid.
                assert "jobs_ready_idx" in {n.get("Index Name") for n in scans}
                assert [n for n in scans if n["Node Type"] == "Tid Scan"], json.dumps(explained)
            if name == "job_claim_notified":
                # The job by its primary key, its tenant's others by the ready index.
                used = {n.get("Index Name") for n in nodes(explained[0]["Plan"])}
                assert {"jobs_pkey", "jobs_ready_idx"} <= used, _outline(explained[0]["Plan"])
    finally:
        await held.release()
        await admin.close()
        await pool.close()


async def test_the_claim_session_runs_every_claim_on_its_generic_plan(dsn: str) -> None:
    """The claim loop's session (worker_set_claim_session) never plans a claim for its
    values: from the first claim on a table never analyzed, through an ANALYZE of a
    table that has grown (what autovacuum does while a stream runs), to a burst of
    100,000 jobs, every run of the three claim statements uses their one generic plan,
    and that plan reads pgwake.jobs by ordered index probes and by ctid.

    Fails without ``plan_cache_mode = force_generic_plan`` in that session: PostgreSQL
    plans each statement's first five runs for their values (custom_plans 5), and once
    a generic plan made after an ANALYZE costs more than those did, every run (3 ms a
    claim beside 8 producers on two cores, as much as running it).
    """
    settings = load_settings({}, env={})
    pool = await db.create_pool(dsn, size=2, session_settings=session_settings(settings))
    admin = await db.connect(dsn)
    claims = KeptConnection(pool, setup=QUERIES["worker_set_claim_session"])
    worker = uuid.uuid4()
    runs = dict.fromkeys(("job_claim", "job_claim_plain", "job_claim_notified"), 0)

    async def claim(name: str, *args: object) -> list[int]:
        rows = await claims.fetch(QUERIES[name], *args)
        runs[name] += 1
        return [r["id"] for r in rows if r["id"] is not None]

    async def cycle(cursor: str) -> None:
        """A few jobs inserted, claimed by each statement, and finished."""
        await admin.execute(
            "INSERT INTO pgwake.jobs (tenant_id, kind) "
            "SELECT 'tenant' || lpad((i % 8)::text, 3, '0'), 'k' FROM generate_series(1, 6) AS i"
        )
        taken = await claim("job_claim", worker, ["k"], 3, 8, [], [], cursor)
        taken += await claim("job_claim_plain", worker, ["k"], 3, 8, ["tenant001"], [2], cursor)
        notified = await admin.fetchval("INSERT INTO pgwake.jobs (kind) VALUES ('k') RETURNING id")
        taken += await claim("job_claim_notified", worker, ["k"], notified, [])
        assert len(taken) == 7
        await admin.execute(
            "UPDATE pgwake.jobs SET status = 'succeeded', claimed_by = NULL, finished_at = now() "
            "WHERE status IN ('queued', 'running')"
        )

    try:
        await admin.execute(QUERIES["worker_register"], worker, "plan", 1, ["k"], 100, None)
        for _ in range(10):
            await cycle("")
        # The table grows and is analyzed, as autovacuum does in a stream.
        await admin.execute(
            "INSERT INTO pgwake.jobs (tenant_id, kind, status, finished_at) "
            "SELECT 'tenant' || lpad((i % 8)::text, 3, '0'), 'k', 'succeeded', now() "
            "FROM generate_series(1, 50000) AS i"
        )
        await admin.execute("ANALYZE pgwake.jobs")
        for _ in range(10):
            await cycle("tenant003")
        await admin.execute(
            "INSERT INTO pgwake.jobs (tenant_id, kind) "
            "SELECT 'tenant' || lpad((i % 100)::text, 3, '0'), 'k' "
            "FROM generate_series(1, 100000) AS i"
        )
        burst = await claim("job_claim_plain", worker, ["k"], 100, 8, [], [], "tenant050")
        assert len(burst) == 100
        conn = claims._conn  # the kept connection itself: its prepared statements
        assert conn is not None
        for name, count in runs.items():
            row = await conn.fetchrow(
                "SELECT name, generic_plans, custom_plans FROM pg_prepared_statements "
                "WHERE statement = $1",
                QUERIES[name],
            )
            assert row is not None, name
            assert (row["generic_plans"], row["custom_plans"]) == (count, 0), (name, dict(row))
            if name == "job_claim_notified":
                continue
            args = (worker, ["k"], 32, 8, [], [], "tenant050")
            params = ", ".join(_literal(a) for a in args)
            explained = await conn.fetchval(
                f"EXPLAIN (FORMAT JSON) EXECUTE {row['name']}({params})"
            )
            scans = [
                n
                for n in nodes(explained[0]["Plan"])
                if n.get("Relation Name") == "jobs" and "Scan" in n["Node Type"]
            ]
            assert not [n for n in scans if n["Node Type"] in ("Seq Scan", "Bitmap Heap Scan")], (
                name,
                _outline(explained[0]["Plan"]),
            )
            assert "jobs_ready_idx" in {n.get("Index Name") for n in scans}, name
            assert [n for n in scans if n["Node Type"] == "Tid Scan"], name
    finally:
        await claims.release()
        await admin.close()
        await pool.close()


def _outline(plan: dict[str, Any], depth: int = 0) -> str:
    """A plan as indented lines of node type, relation and index (for failures)."""
    line = "  " * depth + " ".join(
        str(plan.get(key, "")) for key in ("Node Type", "Relation Name", "Index Name", "Filter")
    )
    return "\n".join([line, *(_outline(p, depth + 1) for p in plan.get("Plans", []))])


@pytest.mark.parametrize(
    ("jobs", "tenants", "cursor"),
    [(100_000, 100, ""), (100_000, 100, "tenant050"), (20_000, 10, ""), (20_000, 10, "tenant009")],
)
async def test_claims_right_after_a_burst_read_only_what_they_claim(
    dsn: str, jobs: int, tenants: int, cursor: str
) -> None:
    """The first claims after a burst are planned with their parameters while the
    statistics still say the queue is empty (a prepared statement's first five runs
    are custom plans, and autovacuum has not analyzed the burst yet). On the claim
    loop's session (set up as the claimer's kept connection is), each probe of the
    tenant walk and of a tenant's jobs must stay one ordered probe of the ready index,
    from the start of the tenants and from a cursor (the claims after the first).

    A plan that reads every queued job with a bitmap scan and sorts them took 1.3 s
    for the first claim of a 100,000-job burst (job_claim_plain before its kinds were
    made opaque to the planner, as job_claim's are); with them opaque, a burst of
    20,000 jobs over 10 tenants still had the walk read 20,000 to 110,000 rows per
    claim of 1,000 with the same kind of plan, until bitmap scans were turned off on
    the claim loop's session (worker_set_claim_session)."""
    settings = load_settings({}, env={})
    pool = await db.create_pool(dsn, size=1, session_settings=session_settings(settings))
    held = KeptConnection(pool, setup=QUERIES["worker_set_claim_session"])
    try:
        worker = uuid.uuid4()
        await held.fetch(QUERIES["worker_register"], worker, "plan", 1, ["k"], 100, None)
        await held.fetch(
            "INSERT INTO pgwake.jobs (tenant_id, kind) "
            "SELECT 'tenant' || lpad((i % $2::int)::text, 3, '0'), 'k' "
            "FROM generate_series(1, $1::int) AS i",
            jobs,
            tenants,
        )
        conn = held._conn  # the kept connection itself, as the claimer set it up
        assert conn is not None
        for name in ("job_claim", "job_claim_plain"):
            tx = conn.transaction()
            await tx.start()
            try:
                explained = await conn.fetchval(
                    "EXPLAIN (ANALYZE, FORMAT JSON) " + QUERIES[name],
                    worker,
                    ["k"],
                    1000,
                    1000,
                    [],
                    [],
                    cursor,
                )
            finally:
                await tx.rollback()  # the claim an EXPLAIN ANALYZE made
            read = max(
                int(n.get("Actual Rows", 0)) * int(n.get("Actual Loops", 1))
                for n in nodes(explained[0]["Plan"])
                if n.get("Relation Name") == "jobs"
            )
            # 1,000 jobs claimed: about as many rows read, never the whole queue.
            assert read <= 5000, (name, read, _outline(explained[0]["Plan"]))
        # Given back, the session is the pool's again: the setting goes with the reset.
        await held.release()
        async with pool.acquire() as same:
            assert await same.fetchval("SELECT current_setting('enable_bitmapscan')") == "on"
    finally:
        await held.release()
        await pool.close()
