"""listener.testing: a handler run with a recording context (no worker, no schema), used
here on the built-in handlers of handlers/; and the test queue that drains in-process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from pydantic import BaseModel

import handlers.builtin  # noqa: F401 - registers the built-ins into the default registry
from listener.api import Cancel, JobContext, NewJob, Registry, Retry, Snooze
from listener.testing import TestQueue, run_handler
from tests.support.databases import fresh_database


async def test_the_builtin_handlers() -> None:
    echo = await run_handler("echo", {"a": [1, {"b": None}]})
    assert echo.expect() == {"a": [1, {"b": None}]}
    slept = await run_handler("sleep", {"seconds": 0})
    assert set(slept.expect()) == {"slept"}
    too_long = await run_handler("sleep", {"seconds": 86401})
    assert too_long.outcome == "failed"
    assert "invalid payload for 'sleep'" in (too_long.error or "")
    unknown = await run_handler("sleep", {"seconds": 1, "extra": 2})
    assert unknown.outcome == "failed"  # the model forbids extra fields
    assert (await run_handler("noop")).expect() is None
    with pytest.raises(AssertionError, match="expected succeeded, the handler's run failed"):
        too_long.expect()


class Item(BaseModel):
    n: int


async def test_a_function_with_every_outcome_and_what_it_reported() -> None:
    async def work(payload: Item, ctx: JobContext) -> Any:
        ctx.log.info("working", n=payload.n)
        await ctx.progress(1, 2, "half")
        ctx.add_records(3)
        if payload.n == 1:
            raise Retry("later", delay=5)
        if payload.n == 2:
            raise Snooze(60)
        if payload.n == 3:
            raise Cancel("no")
        return {"n": payload.n, "tenant": ctx.tenant, "attempt": ctx.attempt}

    done = await run_handler(work, Item(n=0), tenant="acme", attempt=2)
    assert done.expect() == {"n": 0, "tenant": "acme", "attempt": 2}
    assert done.records == 3
    assert [p["message"] for p in done.progress] == ["half"]
    (line,) = [line for line in done.logs if line["event"] == "working"]
    assert (line["n"], line["log_level"]) == (0, "info")
    assert [(r.outcome, r.delay) for r in [await run_handler(work, {"n": n}) for n in (1, 2)]] == [
        ("retried", 5),
        ("snoozed", 60),
    ]
    assert (await run_handler(work, {"n": 3})).outcome == "cancelled"
    last = await run_handler(work, {"n": 1}, attempt=3, max_attempts=3)
    assert last.outcome == "failed"


@pytest.fixture
async def shop(server_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to a test database of one's own with an ``orders`` table."""
    async with fresh_database(server_dsn, None) as url:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("CREATE TABLE orders (n int NOT NULL)")
            yield conn
        finally:
            await conn.close()


async def write_order(payload: dict[str, int], ctx: JobContext) -> bool:
    async with ctx.tenant_db() as conn:
        await conn.execute("INSERT INTO orders (n) VALUES ($1)", payload["n"])
    return ctx.dry_run


async def test_tenant_db_is_the_tests_own_and_a_dry_run_rolls_it_back(
    shop: asyncpg.Connection,
) -> None:
    run = await run_handler(write_order, {"n": 1}, tenant="acme", tenant_db={"acme": shop})
    assert run.expect() is False
    assert run.tenant_dbs == ["acme"]
    dry = await run_handler(write_order, {"n": 2}, tenant="acme", tenant_db=shop, dry_run=True)
    assert dry.expect() is True
    assert [r["n"] for r in await shop.fetch("SELECT n FROM orders")] == [1]
    other = await run_handler(write_order, {"n": 3}, tenant="other", tenant_db={"acme": shop})
    assert other.outcome == "failed"
    assert "tenant 'other' has no database of its own" in (other.error or "")


async def test_a_test_queue_drains_in_process(empty_dsn: str) -> None:
    registry = Registry()

    @registry.handler("q.ok")
    async def ok(payload: dict[str, int], ctx: JobContext) -> int:
        return payload["n"] * 2

    @registry.handler("q.flaky")
    async def flaky(payload: dict[str, int], ctx: JobContext) -> None:
        raise Retry("flaky", delay=3600)

    async with TestQueue.open(empty_dsn) as queue:  # migrates an empty database
        await queue.enqueue("q.ok", {"n": 1}, tenant="a")
        await queue.enqueue_many([NewJob("q.ok", {"n": 2}), NewJob("q.flaky", max_attempts=1)])
        retried = await queue.enqueue("q.flaky", {}, max_attempts=5)
        done = await queue.drain(registry)
        assert [(j.kind, j.status, j.result) for j in done] == [
            ("q.ok", "succeeded", 2),
            ("q.ok", "succeeded", 4),
            ("q.flaky", "failed", None),
        ]
        # The retry waits for its backoff, left for the test to look at.
        row = await queue.conn.fetchrow(
            "SELECT status, attempts FROM pgwake.jobs WHERE id = $1", retried
        )
        assert (row["status"], row["attempts"]) == ("scheduled", 1)
    async with TestQueue.open(empty_dsn) as again:  # each test starts without jobs
        assert await again.conn.fetchval("SELECT count(*) FROM pgwake.jobs") == 0
