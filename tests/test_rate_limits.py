"""Rate limits in the claim, called directly as a worker calls it: per tenant, per kind
across tenants, per kind within each tenant; exact under concurrent claimers; the
constraints that refuse a bad limit; a change that wakes the workers."""

from __future__ import annotations

import asyncio
import json
import uuid

import asyncpg
import pytest

from listener import db
from listener.queries import QUERIES
from tests.support.claims import claim, register
from tests.support.cli import pgwake


async def claim_summary(
    conn: asyncpg.Connection, worker: uuid.UUID, limit: int, kinds: list[str] | None = None
) -> tuple[list[asyncpg.Record], asyncpg.Record]:
    """The claimed rows and the summary row (reopens_in, more)."""
    rows = await conn.fetch(QUERIES["job_claim"], worker, kinds or ["k"], limit, 1000, [], [], "")
    return [r for r in rows if r["id"] is not None], next(r for r in rows if r["id"] is None)


async def test_a_tenant_rate_limit_starts_its_limit_then_says_when_its_window_opens(
    conn: asyncpg.Connection,
) -> None:
    await conn.execute(
        "INSERT INTO pgwake.jobs (tenant_id, kind) "
        "SELECT t, 'k' FROM unnest(ARRAY['limited', 'free']) AS t, generate_series(1, 20)"
    )
    await conn.execute(
        "INSERT INTO pgwake.tenants (tenant_id, rate_limit, rate_period) "
        "VALUES ('limited', 3, interval '1 hour')"
    )
    worker = await register(conn)
    rows, summary = await claim_summary(conn, worker, 10)
    by_tenant = {t: sum(1 for r in rows if r["tenant_id"] == t) for t in ("limited", "free")}
    # The limited tenant gets its burst of 3, the other its share of the claim, and the
    # claim says to claim again at once (the other tenant has more).
    assert by_tenant == {"limited": 3, "free": 5}
    assert summary["more"]
    assert 3590 < summary["reopens_in"] <= 3600
    rows, summary = await claim_summary(conn, worker, 10)
    assert {r["tenant_id"] for r in rows} == {"free"}
    assert len(rows) == 10
    assert 3590 < summary["reopens_in"] <= 3600
    # Held-back jobs stay queued with no attempt used.
    held = await conn.fetchrow(
        "SELECT count(*) AS n, max(attempts) AS attempts FROM pgwake.jobs "
        "WHERE tenant_id = 'limited' AND status = 'queued'"
    )
    assert (held["n"], held["attempts"]) == (17, 0)


async def test_a_window_opens_when_its_oldest_start_leaves_it(conn: asyncpg.Connection) -> None:
    """The sliding window: starts recorded two seconds ago leave a 2-second window at
    once; what is left in it counts until it leaves too."""
    await conn.execute(
        "INSERT INTO pgwake.jobs (tenant_id, kind) SELECT 'x', 'k' FROM generate_series(1, 20)"
    )
    await conn.execute(
        "INSERT INTO pgwake.tenants (tenant_id, rate_limit, rate_period) "
        "VALUES ('x', 5, interval '2 seconds')"
    )
    # Written after the tenant (whose trigger resets the window): 3 starts long ago,
    # 2 starts half a second ago.
    await conn.execute(
        "INSERT INTO pgwake.rate_windows (scope, kind, tenant_id, started_at, started) "
        "VALUES ('tenant', '', 'x', ARRAY[now() - interval '10 seconds', "
        "now() - interval '0.5 seconds'], ARRAY[3, 2])"
    )
    worker = await register(conn)
    rows, summary = await claim_summary(conn, worker, 10)
    assert len(rows) == 3  # 5 minus the 2 still in the window
    # Full now: it opens when the two starts of half a second ago leave the window.
    assert 1.0 < summary["reopens_in"] <= 1.5
    window = await conn.fetchval(
        "SELECT started FROM pgwake.rate_windows WHERE scope = 'tenant' AND tenant_id = 'x'"
    )
    assert list(window) == [2, 3]  # the entry of ten seconds ago was dropped


async def test_a_kind_limit_holds_across_tenants_and_leaves_other_kinds_alone(
    conn: asyncpg.Connection,
) -> None:
    await conn.execute(
        "INSERT INTO pgwake.jobs (tenant_id, kind, priority) "
        "SELECT 't' || t, k, CASE k WHEN 'mail' THEN 10 ELSE 0 END "
        "FROM generate_series(1, 5) AS t, unnest(ARRAY['mail', 'k']) AS k, "
        "generate_series(1, 4)"
    )
    await conn.execute(
        "INSERT INTO pgwake.limits (kind, rate_limit, rate_period) "
        "VALUES ('mail', 4, interval '1 hour')"
    )
    worker = await register(conn)
    rows, summary = await claim_summary(conn, worker, 10, ["mail", "k"])
    mail = [r for r in rows if r["kind"] == "mail"]
    assert len(mail) == 4
    assert summary["more"]  # the limit cut the candidates: claim again at once
    assert 3590 < summary["reopens_in"] <= 3600
    # The mail window is full: the next claims take only the other kind.
    for _ in range(3):
        rows, _ = await claim_summary(conn, worker, 10, ["mail", "k"])
        assert {r["kind"] for r in rows} <= {"k"}
    assert (
        await conn.fetchval(
            "SELECT count(*) FROM pgwake.jobs WHERE kind = 'mail' AND status = 'running'"
        )
        == 4
    )
    assert (
        await conn.fetchval(
            "SELECT count(*) FROM pgwake.jobs WHERE kind = 'k' AND status = 'queued'"
        )
        == 0
    )


async def test_a_per_tenant_kind_limit_holds_within_each_tenant(conn: asyncpg.Connection) -> None:
    await conn.execute(
        "INSERT INTO pgwake.jobs (tenant_id, kind) "
        "SELECT 't' || t, 'sync' FROM generate_series(1, 3) AS t, generate_series(1, 10)"
    )
    await conn.execute(
        "INSERT INTO pgwake.limits (kind, per_tenant, rate_limit, rate_period) "
        "VALUES ('sync', true, 2, interval '1 hour')"
    )
    worker = await register(conn)
    started: dict[str, int] = {}
    for _ in range(4):
        rows, _ = await claim_summary(conn, worker, 10, ["sync"])
        for r in rows:
            started[r["tenant_id"]] = started.get(r["tenant_id"], 0) + 1
    assert started == {"t1": 2, "t2": 2, "t3": 2}


async def test_concurrent_claimers_never_start_more_than_the_limit(
    dsn: str, conn: asyncpg.Connection
) -> None:
    await conn.execute(
        "INSERT INTO pgwake.jobs (tenant_id, kind) "
        "SELECT t, k FROM unnest(ARRAY['a', 'b']) AS t, unnest(ARRAY['k', 'mail']) AS k, "
        "generate_series(1, 200)"
    )
    await conn.execute(
        "INSERT INTO pgwake.tenants (tenant_id, rate_limit, rate_period) "
        "VALUES ('a', 7, interval '1 hour')"
    )
    await conn.execute(
        "INSERT INTO pgwake.limits (kind, rate_limit, rate_period) "
        "VALUES ('mail', 11, interval '1 hour')"
    )
    workers = [await register(conn) for _ in range(6)]
    conns = [await db.connect(dsn) for _ in workers]
    try:
        for _ in range(15):
            await asyncio.gather(
                *(claim(c, w, 8, kinds=["k", "mail"]) for w, c in zip(workers, conns, strict=True))
            )
    finally:
        for c in conns:
            await c.close()
    counts = {
        (r["tenant_id"], r["kind"]): r["n"]
        for r in await conn.fetch(
            "SELECT tenant_id, kind, count(*) AS n FROM pgwake.jobs "
            "WHERE status = 'running' GROUP BY tenant_id, kind"
        )
    }
    assert sum(n for (t, _), n in counts.items() if t == "a") == 7, counts
    assert sum(n for (_, k), n in counts.items() if k == "mail") == 11, counts
    assert counts[("b", "k")] == 200, counts  # the unlimited pair drained


@pytest.mark.parametrize(
    ("statement", "constraint"),
    [
        (
            "INSERT INTO pgwake.limits (kind, rate_limit, rate_period) VALUES ('m', 0, '1 s')",
            "limits_rate_limit_between_1_and_1000000",
        ),
        (
            "INSERT INTO pgwake.limits (kind, rate_limit, rate_period) VALUES ('m', -5, '1 s')",
            "limits_rate_limit_between_1_and_1000000",
        ),
        (
            "INSERT INTO pgwake.limits (kind, rate_limit, rate_period) VALUES ('m', 5, '0.5 s')",
            "limits_rate_period_between_1_second_and_1_day",
        ),
        (
            "INSERT INTO pgwake.limits (kind, rate_limit, rate_period) VALUES ('m', 5, '1 mon')",
            "limits_rate_period_between_1_second_and_1_day",
        ),
        (
            "INSERT INTO pgwake.limits (kind, rate_limit, rate_period) VALUES (' ', 5, '1 s')",
            "limits_kind_not_empty",
        ),
        (
            (
                "INSERT INTO pgwake.tenants (tenant_id, rate_limit, rate_period) "
                "VALUES ('t', 0, '1 s')"
            ),
            "tenants_rate_limit_between_1_and_1000000",
        ),
        (
            (
                "INSERT INTO pgwake.tenants (tenant_id, rate_limit, rate_period) "
                "VALUES ('t', 5, '-1 s')"
            ),
            "tenants_rate_period_between_1_second_and_1_day",
        ),
        (
            "INSERT INTO pgwake.tenants (tenant_id, rate_limit) VALUES ('t', 5)",
            "tenants_rate_limit_and_rate_period_set_together",
        ),
    ],
)
async def test_bad_limits_are_refused_by_a_named_constraint(
    conn: asyncpg.Connection, statement: str, constraint: str
) -> None:
    with pytest.raises(asyncpg.CheckViolationError) as raised:
        await conn.execute(statement)
    assert raised.value.constraint_name == constraint


async def test_a_changed_limit_takes_effect_at_the_next_claim_and_wakes_workers(
    dsn: str, conn: asyncpg.Connection
) -> None:
    await conn.execute(
        "INSERT INTO pgwake.jobs (tenant_id, kind) SELECT 'x', 'k' FROM generate_series(1, 10)"
    )
    await conn.execute(
        "INSERT INTO pgwake.tenants (tenant_id, rate_limit, rate_period) "
        "VALUES ('x', 2, interval '1 day')"
    )
    worker = await register(conn)
    rows, _ = await claim_summary(conn, worker, 10)
    assert len(rows) == 2
    rows, _ = await claim_summary(conn, worker, 10)
    assert rows == []
    listener = await db.connect(dsn)
    woken = asyncio.Event()
    try:
        await listener.add_listener("pgwake_jobs", lambda *_: woken.set())
        await conn.execute("UPDATE pgwake.tenants SET rate_limit = 5 WHERE tenant_id = 'x'")
        await asyncio.wait_for(woken.wait(), timeout=10)
    finally:
        await listener.close()
    rows, _ = await claim_summary(conn, worker, 10)
    assert len(rows) == 3  # 5 minus the 2 the window still holds
    await conn.execute(
        "UPDATE pgwake.tenants SET rate_limit = NULL, rate_period = NULL WHERE tenant_id = 'x'"
    )
    rows, _ = await claim_summary(conn, worker, 10)
    assert len(rows) == 5
    assert await conn.fetchval("SELECT count(*) FROM pgwake.rate_windows") == 0


async def test_status_and_the_metrics_query_show_what_is_held_back(
    dsn: str, conn: asyncpg.Connection
) -> None:
    await conn.execute(
        "INSERT INTO pgwake.jobs (tenant_id, kind) "
        "SELECT t, k FROM unnest(ARRAY['acme', 'beta']) AS t, unnest(ARRAY['k', 'mail']) AS k, "
        "generate_series(1, 5)"
    )
    await conn.execute(
        "INSERT INTO pgwake.tenants (tenant_id, rate_limit, rate_period) "
        "VALUES ('acme', 2, '1 hour')"
    )
    await conn.execute(
        "INSERT INTO pgwake.limits (kind, rate_limit, rate_period) VALUES ('mail', 3, '1 hour')"
    )
    worker = await register(conn)
    for _ in range(3):
        await claim_summary(conn, worker, 10, ["k", "mail"])
    held = await conn.fetch(QUERIES["limit_list_held_back"], 10)
    assert sorted((r["scope"], r["kind"], r["tenant_id"], r["in_scope"]) for r in held) == [
        ("kind", "mail", "", 1),
        ("tenant", "", "acme", 1),
    ]
    assert all(3590 < r["opens_in"] <= 3600 for r in held)
    done = pgwake("status", "--json", dsn=dsn)
    status = json.loads(done.stdout)
    assert sorted((h["scope"], h["kind"], h["tenant"]) for h in status["held_back"]) == [
        ("kind", "mail", ""),
        ("tenant", "", "acme"),
    ]
    text = pgwake("status", dsn=dsn).stdout
    assert "held back by a rate limit (window full):" in text
    assert "acme" in text.split("held back by a rate limit")[1]


async def test_a_higher_priority_job_of_any_tenant_is_claimed_first(
    conn: asyncpg.Connection,
) -> None:
    """With one slot, tenant a's urgent job, inserted after a backlog of other tenants'
    low-priority jobs, is the next one claimed, wherever the round-robin cursor is."""
    await conn.execute(
        "INSERT INTO pgwake.jobs (tenant_id, kind, priority) "
        "SELECT 't' || (i % 20), 'k', -1000 FROM generate_series(1, 200) AS i"
    )
    worker = await register(conn)
    rows = await claim(conn, worker, 1)
    assert rows[0]["priority"] == -1000
    await conn.execute(
        "INSERT INTO pgwake.jobs (tenant_id, kind, priority) VALUES ('a', 'k', 1000)"
    )
    for cursor in ("", "a", "t5", "zzz"):
        rows = await claim(conn, worker, 1, cursor=cursor)
        if rows[0]["priority"] == 1000:
            assert rows[0]["tenant_id"] == "a"
            # Put it back, to try from the next cursor.
            await conn.execute(
                "UPDATE pgwake.jobs SET status = 'queued', claimed_by = NULL WHERE priority = 1000"
            )
            continue
        pytest.fail(f"from cursor {cursor!r} the claim took {dict(rows[0])}")
    # Among equal priorities the claim stays fair: 3 tenants at priority 5, one claim of 3.
    await conn.execute(
        "INSERT INTO pgwake.jobs (tenant_id, kind, priority) "
        "SELECT t, 'k', 5 FROM unnest(ARRAY['p', 'q', 'r']) AS t, generate_series(1, 10)"
    )
    rows = await claim(conn, worker, 4)
    assert [r["priority"] for r in rows] == [1000, 5, 5, 5]
    assert sorted(r["tenant_id"] for r in rows[1:]) == ["p", "q", "r"]


async def test_priority_does_not_stall_when_the_top_tenant_cannot_be_served(
    conn: asyncpg.Connection,
) -> None:
    """A paused tenant or one at its fleet cap holding the highest priority does not
    keep the others' lower-priority jobs from starting."""
    await conn.execute(
        "INSERT INTO pgwake.jobs (tenant_id, kind, priority) "
        "SELECT t, 'k', p FROM (VALUES ('paused', 9), ('capped', 8), ('low', 0)) AS v(t, p), "
        "generate_series(1, 5)"
    )
    await conn.execute(
        "INSERT INTO pgwake.tenants (tenant_id, paused, max_concurrency) "
        "VALUES ('paused', true, NULL), ('capped', false, 1)"
    )
    worker = await register(conn)
    rows = await claim(conn, worker, 3)
    assert sorted((r["tenant_id"], r["priority"]) for r in rows) == [
        ("capped", 8),
        ("low", 0),
        ("low", 0),
    ]


async def test_jobs_at_the_default_priority_stay_out_of_the_priority_index(
    conn: asyncpg.Connection,
) -> None:
    """The index the claim reads priorities from holds only ready jobs whose priority is
    not 0, so enqueues at the default priority never maintain it (its cost on inserts)."""

    definition = await conn.fetchval(
        "SELECT pg_get_indexdef('pgwake.jobs_ready_priority_idx'::regclass)"
    )
    assert "WHERE ((status = 'queued'::text) AND ((priority)::integer <> 0))" in definition
    before = await conn.fetchval(
        "SELECT pg_relation_size('pgwake.jobs_ready_priority_idx'::regclass)"
    )
    await conn.execute(
        "INSERT INTO pgwake.jobs (tenant_id, kind) "
        "SELECT 't' || (i % 10), 'k' FROM generate_series(1, 5000) AS i"
    )
    assert (
        await conn.fetchval("SELECT pg_relation_size('pgwake.jobs_ready_priority_idx'::regclass)")
        == before
    )
    await conn.execute(
        "INSERT INTO pgwake.jobs (tenant_id, kind, priority) "
        "SELECT 't' || (i % 10), 'k', 5 FROM generate_series(1, 5000) AS i"
    )
    assert (
        await conn.fetchval("SELECT pg_relation_size('pgwake.jobs_ready_priority_idx'::regclass)")
        > before
    )
