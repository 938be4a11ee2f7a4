"""The plain claim (job_claim_plain) against the full one (job_claim).

While no rate limit covers the worker's kinds and no ready job has a priority above 0,
the worker claims with the plain statement: it must claim exactly what the full claim
would, in the same order, and say the same about the walk. Hypothesis generates queues
(tenants paused or not, weights, fleet-wide caps, jobs of handled and other kinds,
priorities at and below 0, due now or later) and claim arguments (the worker's busy
tenants, the cursor, the batch and the cap); each example runs both statements on the
same rows, each in a transaction rolled back. And where the plain claim must step
aside (a rate limit on a kind or a walked tenant, a ready job above priority 0) it
claims nothing and says so, and a worker then claims with the full statement.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
import asyncpg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from listener.api import JobContext, Registry
from listener.queries import QUERIES
from tests.support.claims import register
from tests.support.waiting import eventually
from tests.support.workers import running_worker

EXAMPLES = int(os.environ.get("PGWAKE_HYPOTHESIS_EXAMPLES", "0")) or 150

TENANTS = ["a", "b", "c", "d", "e"]

QUEUES = st.fixed_dictionaries(
    {
        "tenants": st.dictionaries(
            st.sampled_from(TENANTS),
            st.fixed_dictionaries(
                {
                    "paused": st.booleans(),
                    "weight": st.integers(1, 4),
                    "max_concurrency": st.one_of(st.none(), st.integers(1, 4)),
                }
            ),
            max_size=3,
        ),
        "jobs": st.lists(
            st.tuples(
                st.sampled_from(TENANTS),
                st.sampled_from(["k", "k", "k", "x"]),
                st.sampled_from([0, 0, 0, -1, -5]),
                st.sampled_from(["now", "now", "now", "past", "later"]),
            ),
            max_size=40,
        ),
        "running": st.dictionaries(st.sampled_from(TENANTS), st.integers(0, 3), max_size=3),
        "cursor": st.sampled_from(["", *TENANTS, "bb"]),
        "want": st.integers(1, 12),
        "cap": st.integers(1, 5),
    }
)

RUN_AT = {"now": "now()", "past": "now() - interval '1 min'", "later": "now() + interval '1 h'"}


async def _both(conn: asyncpg.Connection, worker: uuid.UUID, case: dict[str, Any]) -> None:
    """Insert the case's queue in a transaction, run each claim in a savepoint rolled
    back, and compare."""
    results: dict[str, Any] = {}
    async with conn.transaction():
        for tenant, row in case["tenants"].items():
            await conn.execute(
                "INSERT INTO pgwake.tenants (tenant_id, paused, weight, max_concurrency) "
                "VALUES ($1, $2, $3, $4)",
                tenant,
                row["paused"],
                row["weight"],
                row["max_concurrency"],
            )
        for tenant, kind, priority, when in case["jobs"]:
            await conn.execute(
                "INSERT INTO pgwake.jobs (tenant_id, kind, priority, run_at) "
                f"VALUES ($1, $2, $3, {RUN_AT[when]})",
                tenant,
                kind,
                priority,
            )
        busy = case["running"]
        args = (
            worker,
            ["k"],
            case["want"],
            case["cap"],
            list(busy),
            list(busy.values()),
            case["cursor"],
        )
        for name in ("job_claim", "job_claim_plain"):
            tx = conn.transaction()
            await tx.start()
            rows = await conn.fetch(QUERIES[name], *args)
            await tx.rollback()
            summary = rows[-1]
            assert summary["id"] is None
            results[name] = (
                [row["id"] for row in rows[:-1]],
                summary["walk_end"],
                summary["walked"],
                summary["more"],
            )
            if name == "job_claim_plain":
                assert summary["needs_full"] is False
        # Rolls back the queue with the outer transaction.
        raise _RollBack(results)


class _RollBack(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Carries the results out of the transaction it rolls back."""

    def __init__(self, results: dict[str, Any]) -> None:
        super().__init__("roll back")
        self.results = results


async def test_the_plain_claim_claims_what_the_full_claim_claims(
    conn: asyncpg.Connection,
) -> None:
    worker = await register(conn)
    tried = {"examples": 0, "claimed": 0}

    async def compare(case: dict[str, Any]) -> None:
        try:
            await _both(conn, worker, case)
        except _RollBack as done:
            full, plain = done.results["job_claim"], done.results["job_claim_plain"]
            assert plain == full, case
            tried["examples"] += 1
            tried["claimed"] += len(full[0])

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(QUEUES)
    # A claim cut by its batch, where priorities below 0 decide which jobs make it.
    @example(
        {
            "tenants": {},
            "jobs": [("a", "k", -5, "now")] * 2 + [("b", "k", 0, "now")] * 2,
            "running": {},
            "cursor": "",
            "want": 3,
            "cap": 5,
        }
    )
    def check(case: dict[str, Any]) -> None:
        anyio.from_thread.run(compare, case)

    await anyio.to_thread.run_sync(check)
    print(f"plain against full: {tried['examples']} queues, {tried['claimed']} jobs claimed")
    assert tried["examples"] >= EXAMPLES // 2
    assert tried["claimed"] > 0  # the examples claim jobs, not only empty queues


# Each sets up one thing that only the full claim weighs.
STEP_ASIDE = {
    "kind rate-limited": "INSERT INTO pgwake.limits (kind, rate_limit, rate_period) "
    "VALUES ('k', 1000, interval '1 s')",
    "kind rate-limited per tenant": "INSERT INTO pgwake.limits (kind, per_tenant, rate_limit, "
    "rate_period) VALUES ('k', true, 1000, interval '1 s')",
    "a walked tenant rate-limited": "INSERT INTO pgwake.tenants (tenant_id, rate_limit, "
    "rate_period) VALUES ('b', 1000, interval '1 s')",
    "a ready job above priority 0": "INSERT INTO pgwake.jobs (tenant_id, kind, priority) "
    "VALUES ('c', 'k', 1)",
}


@pytest.mark.parametrize("case", sorted(STEP_ASIDE))
async def test_the_plain_claim_steps_aside(conn: asyncpg.Connection, case: str) -> None:
    worker = await register(conn)
    await conn.execute(
        "INSERT INTO pgwake.jobs (tenant_id, kind) SELECT t, 'k' FROM unnest(ARRAY['a', 'b']) "
        "AS t, generate_series(1, 3)"
    )
    await conn.execute(STEP_ASIDE[case])
    rows = await conn.fetch(QUERIES["job_claim_plain"], worker, ["k"], 10, 10, [], [], "")
    assert [row["id"] for row in rows] == [None]
    assert rows[0]["needs_full"] is True
    assert await conn.fetchval("SELECT count(*) FROM pgwake.jobs WHERE status = 'running'") == 0


async def test_a_worker_claims_rate_limited_and_urgent_jobs_with_the_full_claim(
    dsn: str, conn: asyncpg.Connection
) -> None:
    """A worker that claims plainly meets a rate-limited tenant and a job above priority
    0: the plain claim steps aside and the full claim starts them (the poll is an
    hour, so nothing else could), within the rate limit."""
    registry = Registry()

    @registry.handler("k")
    async def handle(payload: dict[str, object], ctx: JobContext) -> None:
        return None

    async with running_worker(dsn, registry, poll_interval=3600):
        # Plain claims first: a backlog of an unlimited tenant.
        await conn.execute(
            "INSERT INTO pgwake.jobs (tenant_id, kind) SELECT 'a', 'k' FROM generate_series(1, 50)"
        )
        await conn.execute(
            "INSERT INTO pgwake.tenants (tenant_id, rate_limit, rate_period) "
            "VALUES ('slow', 5, interval '1 s')"
        )
        await conn.execute(
            "INSERT INTO pgwake.jobs (tenant_id, kind) "
            "SELECT 'slow', 'k' FROM generate_series(1, 8)"
        )
        urgent = await conn.fetchval(
            "INSERT INTO pgwake.jobs (tenant_id, kind, priority) VALUES ('u', 'k', 7) RETURNING id"
        )

        async def done() -> bool:
            return bool(
                await conn.fetchval(
                    "SELECT count(*) = 59 FROM pgwake.jobs WHERE status = 'succeeded'"
                )
            )

        await eventually(done, timeout=30)
    assert (
        await conn.fetchval("SELECT status FROM pgwake.jobs WHERE id = $1", urgent) == "succeeded"
    )
    # The rate limit held: 8 jobs at 5 a second take more than one second.
    spread = await conn.fetchval(
        "SELECT extract(epoch FROM max(started_at) - min(started_at)) FROM pgwake.jobs "
        "WHERE tenant_id = 'slow'"
    )
    assert spread >= 0.9, spread
