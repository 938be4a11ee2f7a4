"""The claim's cost does not grow with the number of tenants or the backlog: its plan
walks jobs_ready_idx (one probe per tenant it visits) and never scans the table."""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg

from listener.queries import QUERIES


def nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan]
    for child in plan.get("Plans", []):
        found.extend(nodes(child))
    return found


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
        ("job_put_back_held", (workers[0], "test")),
        ("jobs_cancel_requested", (workers[0],)),
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
