"""Handlers for ``pgwake exec`` tests, loaded by the exec processes only
(``--handlers tests.support.exec_handlers``): one per outcome, and one that writes into
its tenant's own database."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from listener.api import Cancel, JobContext, PermanentError, Snooze, handler


class Order(BaseModel):
    n: int


@handler("shop.write")
async def write(payload: Order, ctx: JobContext) -> dict[str, Any]:
    """Write order ``n`` into the tenant's database; say whether it was a dry run."""
    ctx.log.info("writing order", n=payload.n)
    await ctx.progress(1, 2, "connecting")
    async with ctx.tenant_db() as conn:
        await conn.execute("INSERT INTO orders (n) VALUES ($1)", payload.n)
    async with ctx.tenant_db() as conn:  # the same transaction under --dry-run
        seen = await conn.fetchval("SELECT count(*) FROM orders WHERE n = $1", payload.n)
    await ctx.progress(2, 2)
    ctx.add_records(1)
    return {"n": payload.n, "seen": seen, "dry_run": ctx.dry_run, "attempt": ctx.attempt}


@handler("shop.fail")
async def fail(payload: Order, ctx: JobContext) -> None:
    raise ValueError(f"boom {payload.n} in attempt {ctx.attempt}")


@handler("shop.permanent")
async def permanent(payload: dict[str, Any], ctx: JobContext) -> None:
    raise PermanentError("never works")


@handler("shop.cancel")
async def cancel(payload: dict[str, Any], ctx: JobContext) -> None:
    raise Cancel("not wanted")


@handler("shop.snooze")
async def snooze(payload: dict[str, Any], ctx: JobContext) -> None:
    raise Snooze(30)


@handler("shop.fanout")
async def fanout(payload: Order, ctx: JobContext) -> dict[str, Any]:
    """Write order ``n`` into the tenant's database, then enqueue an ``echo`` child for
    it and a final job that waits for that child (run anyway)."""
    async with ctx.tenant_db() as conn:
        await conn.execute("INSERT INTO orders (n) VALUES ($1)", payload.n)
    child = await ctx.enqueue("echo", {"order": payload.n}, metadata={"from": "fanout"})
    final = await ctx.enqueue("shop.fanin", {}, depends_on=[child], run_anyway=True)
    if payload.n < 0:
        raise ValueError("a negative order fails after enqueuing")
    return {"child": child, "final": final}


@handler("shop.fanin")
async def fanin(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """How each job this one depends on ended, by id."""
    results = await ctx.dependency_results()
    return {str(job_id): [r.status, r.result] for job_id, r in results.items()}


@handler("shop.orphan")
async def orphan(payload: Order, ctx: JobContext) -> int:
    """Enqueue a job that depends on job ``n``, which should not exist."""
    return await ctx.enqueue("echo", {}, depends_on=[payload.n])


@handler("shop.named")
async def named(payload: dict[str, Any], ctx: JobContext) -> int:
    """Enqueue a job of the kind the payload names."""
    return await ctx.enqueue(payload["kind"], {"kind": payload["kind"]})
