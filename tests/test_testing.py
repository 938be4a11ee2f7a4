"""listener.testing: a handler run with a recording context (no worker, no schema), used
here on the built-in handlers of handlers/; and the test queue that drains in-process."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from pydantic import BaseModel

import handlers.builtin  # noqa: F401 - registers the built-ins into the default registry
from listener.api import Cancel, JobContext, NewJob, PermanentError, Registry, Retry, Snooze
from listener.testing import DependencyResult, TestQueue, run_handler
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


async def fan_out(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    syncs = [
        await ctx.enqueue("t.sync", {"store": s, "full": False}, metadata={"batch": "b"})
        for s in payload["stores"]
    ]
    report = await ctx.enqueue("t.report", {}, depends_on=syncs, run_anyway=True, priority=5)
    if payload.get("fail"):
        raise RuntimeError("fails after enqueuing")
    return {"syncs": syncs, "report": report}


async def test_run_handler_records_the_jobs_a_handler_enqueues() -> None:
    run = await run_handler(fan_out, {"stores": [1, 2]}, tenant="acme")
    assert run.expect() == {"syncs": [-1, -2], "report": -3}
    assert [(j.id, j.tenant_id, j.kind, j.payload, j.depends_on) for j in run.enqueued] == [
        (-1, "acme", "t.sync", {"store": 1, "full": False}, ()),
        (-2, "acme", "t.sync", {"store": 2, "full": False}, ()),
        (-3, "acme", "t.report", {}, (-1, -2)),
    ]
    (first,) = run.assert_enqueued("t.sync", {"store": 1}, metadata={"batch": "b"})
    assert first.id == -1
    assert len(run.assert_enqueued("t.sync", count=2)) == 2
    run.assert_enqueued("t.report", depends_on=[-1, -2], run_anyway=True, priority=5)
    run.refute_enqueued("t.sync", {"store": 3})
    run.refute_enqueued("t.report", run_anyway=False)
    with pytest.raises(AssertionError, match=r"found 0; it enqueued: -1 t.sync"):
        run.assert_enqueued("t.sync", {"store": 3})
    with pytest.raises(AssertionError, match="expected 3 job"):
        run.assert_enqueued("t.sync", count=3)
    with pytest.raises(AssertionError, match="expected no such job"):
        run.refute_enqueued("t.report")
    with pytest.raises(TypeError, match="no such field of an enqueued job: colour"):
        run.matching("t.sync", colour="red")

    # A run that fails enqueued them, and a worker creates none of them.
    failed = await run_handler(fan_out, {"stores": [1], "fail": True})
    assert failed.outcome == "retried"
    assert [j.kind for j in failed.enqueued] == ["t.sync", "t.report"]
    assert failed.created == []
    failed.refute_enqueued()
    with pytest.raises(AssertionError, match=r"retried .* so a worker creates none"):
        failed.assert_enqueued("t.sync")
    assert (await run_handler("echo", {})).enqueued == []


async def _list_child(payload: dict[str, Any], ctx: JobContext) -> int:
    return await ctx.enqueue("t.x", [1])  # type: ignore[arg-type]


async def _nan_child(payload: dict[str, Any], ctx: JobContext) -> int:
    return await ctx.enqueue("t.x", {"x": math.nan})


async def test_a_job_a_handler_may_not_enqueue_fails_its_run() -> None:
    for handler, error in [
        (_list_child, "TypeError: "),
        (_nan_child, "ValueError: payload is not JSON"),
    ]:
        run = await run_handler(handler)
        assert run.outcome == "retried"
        assert (run.error or "").startswith(error), run.error
        assert run.enqueued == []


async def test_dependency_results_are_given_by_the_test() -> None:
    async def fan_in(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
        results = await ctx.dependency_results()
        return {str(job_id): [r.status, r.result, r.error] for job_id, r in results.items()}

    assert (await run_handler(fan_in)).expect() == {}
    given = {
        7: DependencyResult("succeeded", {"n": 1}, None),
        8: DependencyResult("failed", None, "ValueError: boom"),
    }
    run = await run_handler(fan_in, dependency_results=given)
    assert run.expect() == {
        "7": ["succeeded", {"n": 1}, None],
        "8": ["failed", None, "ValueError: boom"],
    }


def workflow() -> Registry:
    """A job that fans out into parts and a sum that fans in (fails for good on 99)."""
    registry = Registry()

    @registry.handler("w.start")
    async def start(payload: dict[str, int], ctx: JobContext) -> list[int]:
        parts = [await ctx.enqueue("w.part", {"n": n}) for n in range(payload["parts"])]
        await ctx.enqueue("w.sum", {}, depends_on=parts)
        return parts

    @registry.handler("w.part")
    async def part(payload: dict[str, int], ctx: JobContext) -> int:
        if payload["n"] == 99:
            raise PermanentError("no 99")
        return payload["n"] ** 2

    @registry.handler("w.sum")
    async def total(payload: dict[str, Any], ctx: JobContext) -> int:
        return sum(r.result for r in (await ctx.dependency_results()).values())

    return registry


async def test_a_test_queue_drains_jobs_that_depend_on_jobs(empty_dsn: str) -> None:
    registry = workflow()
    async with TestQueue.open(empty_dsn) as queue:
        await queue.enqueue("w.start", {"parts": 4})
        done = await queue.drain(registry)
        assert [(j.kind, j.status, j.result) for j in done] == [
            ("w.start", "succeeded", [j.id for j in done[1:5]]),
            *[("w.part", "succeeded", n * n) for n in range(4)],
            ("w.sum", "succeeded", 0 + 1 + 4 + 9),
        ]
        # A job waiting for one that is not due is left waiting; one waiting for a job
        # that fails for good is cancelled.
        later = await queue.enqueue("w.part", {"n": 1}, run_at=timedelta(hours=1))
        waits = await queue.enqueue("w.sum", depends_on=[later])
        failing = await queue.enqueue("w.part", {"n": 99})
        broken = await queue.enqueue("w.sum", depends_on=[failing], metadata={"why": "test"})
        done = await queue.drain(registry)
        assert [(j.id, j.status) for j in done] == [(failing, "failed"), (broken, "cancelled")]
        assert done[1].error == f"cancelled: depends on job {failing}, which failed"
        status = await queue.conn.fetchval("SELECT status FROM pgwake.jobs WHERE id = $1", waits)
        assert status == "waiting"


async def test_drain_waits_for_a_waiting_job_the_sweep_releases(empty_dsn: str) -> None:
    """A job still waiting though its dependency finished (the outcome that finished it
    could not see it) is due: drain runs it once the worker's sweep releases it."""
    registry = workflow()
    async with TestQueue.open(empty_dsn) as queue:
        first = await queue.enqueue("w.other", {})  # a kind this registry does not handle
        waits = await queue.enqueue("w.sum", depends_on=[first])
        # Finished behind the outcome statements' back, as an older worker would.
        await queue.conn.execute(
            "UPDATE pgwake.jobs SET status = 'succeeded', result = '1', finished_at = now() "
            "WHERE id = $1",
            first,
        )
        done = await queue.drain(registry)
        assert [(j.id, j.status, j.result) for j in done] == [(waits, "succeeded", 1)]
