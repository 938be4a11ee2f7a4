"""Job events: one NOTIFY on pgwake_events per status change, switchable off."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import anyio
import asyncpg

from listener.api import JobContext
from listener.registry import Registry
from tests.support.waiting import eventually
from tests.support.workers import running_worker


def registry() -> Registry:
    reg = Registry()

    @reg.handler("ok")
    async def ok(_payload: dict[str, Any], _ctx: JobContext) -> None:
        return None

    @reg.handler("boom")
    async def boom(_payload: dict[str, Any], _ctx: JobContext) -> None:
        raise RuntimeError("boom")

    return reg


async def listen(dsn: str, events: list[dict[str, Any]]) -> asyncpg.Connection:
    """A session following job events, as an application does: LISTEN (asyncpg's
    add_listener) and pgwake.follow_events()."""
    conn = await asyncpg.connect(dsn)
    await conn.add_listener(
        "pgwake_events", lambda _c, _p, _ch, payload: events.append(json.loads(payload))
    )
    await conn.execute("SELECT pgwake.follow_events()")
    return conn


async def test_each_status_change_is_announced(dsn: str, conn: asyncpg.Connection) -> None:
    events: list[dict[str, Any]] = []
    listener = await listen(dsn, events)
    try:
        async with running_worker(dsn, registry(), poll_interval=3600, retry_base=0.05):
            ok_id = await conn.fetchval(
                "INSERT INTO pgwake.jobs (tenant_id, kind) VALUES ('acme', 'ok') RETURNING id"
            )
            boom_id = await conn.fetchval(
                "INSERT INTO pgwake.jobs (kind, max_attempts) VALUES ('boom', 2) RETURNING id"
            )
            later_id = await conn.fetchval(
                "INSERT INTO pgwake.jobs (kind, run_at) VALUES ('ok', now() + interval '1 day') "
                "RETURNING id"
            )
            await conn.fetchval("SELECT pgwake.cancel_job($1)", later_id)

            def statuses(job_id: int) -> list[str]:
                return [e["status"] for e in events if e["id"] == job_id]

            async def settled() -> bool:
                return statuses(boom_id)[-1:] == ["failed"] and statuses(ok_id)[-1:] == [
                    "succeeded"
                ]

            await eventually(settled, timeout=15)
        assert statuses(ok_id) == ["queued", "running", "succeeded"]
        # A retry goes scheduled, then queued again when due, then the last attempt fails.
        assert statuses(boom_id) == [
            "queued", "running", "scheduled", "queued", "running", "failed"
        ]  # fmt: skip
        assert statuses(later_id) == ["scheduled", "cancelled"]
        first = next(e for e in events if e["id"] == ok_id)
        # No free text (kind, progress messages): anyone may listen (see test_hostile_roles).
        assert first == {"id": ok_id, "tenant": "acme", "status": "queued"}
    finally:
        await listener.close()


async def test_events_can_be_switched_off(dsn: str, conn: asyncpg.Connection) -> None:
    events: list[dict[str, Any]] = []
    listener = await listen(dsn, events)
    try:
        # The worker's own changes: off by its setting.
        async with running_worker(dsn, registry(), poll_interval=3600, job_events=False):
            job_id = await conn.fetchval(
                "INSERT INTO pgwake.jobs (kind) VALUES ('ok') RETURNING id"
            )

            async def done() -> bool:
                status = await conn.fetchval("SELECT status FROM pgwake.jobs WHERE id = $1", job_id)
                return status == "succeeded"

            await eventually(done, timeout=15)
        # An application's inserts: off for its session (or role, or database).
        await conn.execute("SET pgwake.job_events = 'off'")
        await conn.execute("INSERT INTO pgwake.jobs (kind) VALUES ('ok')")
        await conn.execute("SELECT pg_notify('pgwake_events', '{\"sentinel\": true}')")
        sentinel = {"sentinel": True}
        await eventually(lambda: asyncio.sleep(0, result=sentinel in events), timeout=5)
        # Only the insert made before SET, and the sentinel.
        assert events == [
            {"id": job_id, "tenant": "default", "status": "queued"},
            sentinel,
        ]
    finally:
        await listener.close()


async def test_progress_is_stored_throttled_and_announced(
    dsn: str, conn: asyncpg.Connection
) -> None:
    """The first report is written at once; one that comes within the interval is held
    back and written by the flusher about a second later although the handler reports
    nothing more; the last one is written before the outcome."""
    reg = Registry()
    proceed = anyio.Event()

    @reg.handler("steps")
    async def steps(_payload: dict[str, Any], ctx: JobContext) -> str:
        await ctx.progress(1, 3, "first")  # written at once
        await ctx.progress(2, 3, "second")  # within the second: held back...
        await proceed.wait()  # ...and written meanwhile, though nothing more is reported
        await ctx.progress(3, 3, "last")  # held back again, written when the job ends
        return "ok"

    @reg.handler("nonsense")
    async def nonsense(_payload: dict[str, Any], ctx: JobContext) -> None:
        await ctx.progress(-1)

    events: list[dict[str, Any]] = []
    arrived: dict[str | None, float] = {}
    listener = await listen(dsn, events)

    def progress_events(job_id: int) -> int:
        return sum(1 for e in events if e["id"] == job_id and e.get("progress"))

    try:
        async with running_worker(dsn, reg, poll_interval=3600):
            job_id = await conn.fetchval(
                "INSERT INTO pgwake.jobs (kind) VALUES ('steps') RETURNING id"
            )
            for count, message in enumerate(("first", "second"), start=1):
                # The event says progress was written; the message is read from the row.

                async def announced(count: int = count) -> bool:
                    return progress_events(job_id) >= count

                await eventually(announced, timeout=15, interval=0.005)
                arrived[message] = time.monotonic()
                now = await conn.fetchval("SELECT progress FROM pgwake.jobs WHERE id = $1", job_id)
                assert now["message"] == message
            stored = await conn.fetchval("SELECT progress FROM pgwake.jobs WHERE id = $1", job_id)
            assert (stored["done"], stored["total"], stored["message"]) == (2, 3, "second")
            proceed.set()

            async def succeeded() -> bool:
                return any(e["id"] == job_id and e["status"] == "succeeded" for e in events)

            await eventually(succeeded, timeout=15)
            bad_id = await conn.fetchval(
                "INSERT INTO pgwake.jobs (kind, max_attempts) VALUES ('nonsense', 1) RETURNING id"
            )

            async def bad_failed() -> str | None:
                error: str | None = await conn.fetchval(
                    "SELECT last_error FROM pgwake.jobs WHERE id = $1 AND status = 'failed'",
                    bad_id,
                )
                return error

            error = await eventually(bad_failed, timeout=15)
        final = await conn.fetchval("SELECT progress FROM pgwake.jobs WHERE id = $1", job_id)
        assert (final["done"], final["total"], final["message"]) == (3, 3, "last")
        mine = [e for e in events if e["id"] == job_id]
        assert [(e["status"], e.get("progress", False)) for e in mine] == [
            ("queued", False),
            ("running", False),
            ("running", True),
            ("running", True),
            ("running", True),
            ("succeeded", False),
        ]
        # Held back by the throttle (one write a second), not written at once.
        assert arrived["second"] - arrived["first"] >= 0.5
        assert "ValueError: progress done cannot be negative (-1)" in error
    finally:
        await listener.close()


async def test_events_cost_nothing_until_someone_follows(
    dsn: str, conn: asyncpg.Connection
) -> None:
    """A session that only LISTENs gets nothing: no event is sent (no NOTIFY, so no
    commit waits for the notification lock) until a session follows them; the
    follower then also gets the events of its own inserts."""
    heard: list[dict[str, Any]] = []
    bystander = await asyncpg.connect(dsn)
    follower_events: list[dict[str, Any]] = []
    try:
        await bystander.add_listener(
            "pgwake_events", lambda _c, _p, _ch, payload: heard.append(json.loads(payload))
        )
        await conn.execute("INSERT INTO pgwake.jobs (kind) VALUES ('unheard')")
        follower = await listen(dsn, follower_events)
        try:
            own = await follower.fetchval(
                "INSERT INTO pgwake.jobs (kind) VALUES ('own') RETURNING id"
            )
            other = await conn.fetchval(
                "INSERT INTO pgwake.jobs (kind) VALUES ('other') RETURNING id"
            )

            async def both() -> bool:
                return {e["id"] for e in follower_events} == {own, other}

            await eventually(both, timeout=10)

            async def bystander_heard_both() -> bool:
                return len(heard) >= 2

            await eventually(bystander_heard_both, timeout=10)
            await follower.execute("SELECT pgwake.unfollow_events()")
            assert await conn.fetchval("SELECT pgwake.someone_waits(1)") is False
        finally:
            await follower.close()
    finally:
        await bystander.close()
    # The bystander heard only what was sent while the follower followed.
    assert [e["id"] for e in heard] == [own, other]


async def test_progress_is_stored_when_its_event_would_pass_notifys_limit(
    dsn: str, conn: asyncpg.Connection
) -> None:
    """A progress report whose event would have been over NOTIFY's 8000 bytes (a
    200-character tenant and kind and a 1000-character message, all of characters JSON
    escapes to six bytes) is stored in full, and its event fits: events carry no free
    text (the message is read from the row, under row-level security).

    Fails on 8feecbc: the UPDATE and the pg_notify were one statement, so "payload string
    too long" lost the progress too (jobs.progress stayed NULL)."""
    tenant, kind, message = "\x02" * 200, "\x03" * 200, "\x01" * 1000
    reg = Registry()
    reported = anyio.Event()
    proceed = anyio.Event()

    @reg.handler(kind)
    async def long_report(_payload: dict[str, Any], ctx: JobContext) -> str:
        await ctx.progress(5, 10, message)
        reported.set()
        await proceed.wait()
        return "ok"

    events: list[dict[str, Any]] = []
    listener = await listen(dsn, events)
    try:
        async with running_worker(dsn, reg, poll_interval=3600):
            job_id = await conn.fetchval(
                "INSERT INTO pgwake.jobs (tenant_id, kind) VALUES ($1, $2) RETURNING id",
                tenant,
                kind,
            )
            await reported.wait()

            async def announced() -> list[dict[str, Any]]:
                return [e for e in events if e["id"] == job_id and e.get("progress")]

            (event,) = await eventually(announced, timeout=15)
            stored = await conn.fetchval("SELECT progress FROM pgwake.jobs WHERE id = $1", job_id)
            proceed.set()
        assert (stored["done"], stored["total"], stored["message"]) == (5, 10, message)
        assert event == {"id": job_id, "tenant": tenant, "status": "running", "progress": True}
        # What the channel carried fits its limit whatever the message.
        sent = await conn.fetchval(
            "SELECT octet_length(json_build_object('id', $1::bigint, 'tenant', $2::text,"
            " 'status', 'running', 'progress', true)::text)",
            job_id,
            tenant,
        )
        assert sent < 8000
    finally:
        await listener.close()
