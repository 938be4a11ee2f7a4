"""``pgwake exec``: one job's handler run once in the command's own process, as a worker
runs it, with a dry run that rolls back the tenant database's writes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from tests.support.cli import pgwake
from tests.support.databases import fresh_database
from tests.support.tenants import add_tenant, create_orders
from tests.support.waiting import eventually
from tests.support.workers import spawn_worker, stop_process

HANDLERS = ("--handlers", "tests.support.exec_handlers")


@pytest.fixture
async def shop(server_dsn: str, conn: asyncpg.Connection, keyring_env: str) -> AsyncIterator[str]:
    """Tenant ``acme`` with a database of its own holding an ``orders`` table; its DSN."""
    async with fresh_database(server_dsn, None) as shop_dsn:
        await create_orders(shop_dsn)
        await add_tenant(conn, keyring_env, "acme", shop_dsn)
        yield shop_dsn


async def orders(shop_dsn: str) -> list[int]:
    c = await asyncpg.connect(shop_dsn)
    try:
        return [row["n"] for row in await c.fetch("SELECT n FROM orders ORDER BY n")]
    finally:
        await c.close()


def exec_(dsn: str, keys: str, *args: str) -> Any:
    return pgwake("exec", *HANDLERS, *args, dsn=dsn, env={"PGWAKE_ENCRYPTION_KEYS": keys})


async def test_a_dry_run_rolls_back_the_tenant_write_and_a_real_run_keeps_it(
    dsn: str, conn: asyncpg.Connection, keyring_env: str, shop: str
) -> None:
    dry = exec_(
        dsn, keyring_env, "shop.write", "--tenant", "acme", "--payload", '{"n": 1}', "--dry-run"
    )
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("outcome: succeeded (dry run"), dry.stdout
    # The handler saw its own write (one transaction for the run), then it was undone.
    assert 'result: {"n": 1, "seen": 1, "dry_run": true, "attempt": 1}' in dry.stdout
    assert await orders(shop) == []
    # Its log lines, with the job's fields, and its progress are printed (stderr).
    assert "writing order" in dry.stderr
    assert "progress" in dry.stderr

    real = exec_(dsn, keyring_env, "shop.write", "--tenant", "acme", "--payload", '{"n": 2}')
    assert real.returncode == 0, real.stderr
    assert 'result: {"n": 2, "seen": 1, "dry_run": false, "attempt": 1}' in real.stdout
    assert await orders(shop) == [2]
    # No worker needed, and no job row left behind.
    assert await conn.fetchval("SELECT count(*) FROM pgwake.jobs") == 0


@pytest.mark.parametrize(
    ("kind", "code", "label", "error"),
    [
        ("shop.fail", 6, "retried", "ValueError: boom 5 in attempt 1"),
        ("shop.permanent", 7, "failed", "PermanentError: never works"),
        ("shop.cancel", 8, "cancelled", "cancelled: not wanted"),
        ("shop.snooze", 9, "snoozed", None),
    ],
)
async def test_the_exit_code_says_how_the_run_ended(
    dsn: str, kind: str, code: int, label: str, error: str | None
) -> None:
    done = pgwake("exec", *HANDLERS, kind, "--payload", '{"n": 5}', "--json", dsn=dsn)
    assert done.returncode == code, done.stdout + done.stderr
    out = json.loads(done.stdout)
    assert out["outcome"] == label
    assert out["dry_run"] is False
    if error is None:
        assert out["error"] is None
        assert out["delay"] == 30
    else:
        assert out["error"].startswith(error)


async def test_an_invalid_payload_fails_like_in_a_worker(dsn: str) -> None:
    done = pgwake("exec", *HANDLERS, "shop.fail", "--payload", '{"n": "x"}', dsn=dsn)
    assert done.returncode == 7, done.stdout + done.stderr
    assert "error: invalid payload for 'shop.fail'" in done.stdout


async def test_the_builtins_run_without_handler_modules(dsn: str) -> None:
    done = pgwake("exec", "echo", "--payload", '{"a": [1, 2]}', "--json", dsn=dsn)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["result"] == {"a": [1, 2]}


async def test_record_stores_the_run_as_a_worker_would(dsn: str, conn: asyncpg.Connection) -> None:
    ok = pgwake("exec", *HANDLERS, "echo", "--payload", '{"a": 1}', "--record", "--json", dsn=dsn)
    assert ok.returncode == 0, ok.stderr
    row = await conn.fetchrow(
        "SELECT * FROM pgwake.jobs WHERE id = $1", json.loads(ok.stdout)["recorded_job"]
    )
    assert (row["status"], row["result"], row["attempts"]) == ("succeeded", {"a": 1}, 1)
    assert row["finished_at"] is not None

    bad = pgwake("exec", *HANDLERS, "shop.fail", "--payload", '{"n": 3}', "--record", dsn=dsn)
    assert bad.returncode == 6, bad.stdout + bad.stderr
    row = await conn.fetchrow("SELECT * FROM pgwake.jobs WHERE kind = 'shop.fail'")
    # To run again, after the backoff, with the attempt counted: as a worker leaves it.
    assert row["status"] == "scheduled"
    assert row["attempts"] == 1
    assert row["last_error"].startswith("ValueError: boom 3 in attempt 1")


async def test_exec_job_reproduces_a_failed_jobs_error(dsn: str, conn: asyncpg.Connection) -> None:
    job_id = await conn.fetchval(
        "INSERT INTO pgwake.jobs (kind, payload, max_attempts) "
        "VALUES ('shop.fail', '{\"n\": 7}', 1) RETURNING id"
    )
    worker = spawn_worker(dsn, *HANDLERS)
    try:

        async def failed() -> Any:
            return await conn.fetchval(
                "SELECT last_error FROM pgwake.jobs WHERE id = $1 AND status = 'failed'", job_id
            )

        last_error = await eventually(failed, timeout=30)
    finally:
        code, output = stop_process(worker)
    assert code == 0, output
    again = pgwake("exec", *HANDLERS, "--job", str(job_id), "--json", dsn=dsn)
    # Its last attempt, as it was: failed for good, as in the worker.
    assert again.returncode == 7, again.stdout + again.stderr
    out = json.loads(again.stdout)
    assert (out["outcome"], out["attempt"]) == ("failed", 1)
    assert out["error"].splitlines()[0] == last_error.splitlines()[0]
    assert out["error"].startswith("ValueError: boom 7 in attempt 1")
    # The stored job is left as it was.
    row = await conn.fetchrow("SELECT status, attempts FROM pgwake.jobs WHERE id = $1", job_id)
    assert (row["status"], row["attempts"]) == ("failed", 1)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        ((), 2, "give a KIND or --job ID"),
        (("echo", "--job", "1"), 2, "give a KIND or --job ID"),
        (("echo", "--record", "--dry-run"), 2, "--record runs a new job for real"),
        (("no.such.kind",), 3, "no handler for kind(s) no.such.kind"),
        (("--job", "999999"), 1, "no job 999999"),
        (("echo", "--payload", "[1]"), 2, "--payload must be a JSON object"),
        (("echo", "--tenant", " "), 2, "--tenant must not be empty"),
        (("echo", "--handlers", "no_such_module_xyz"), 3, "cannot import handler module"),
    ],
)
async def test_refusals(dsn: str, args: tuple[str, ...], code: int, message: str) -> None:
    done = pgwake("exec", *args, dsn=dsn)
    assert done.returncode == code, done.stdout + done.stderr
    assert message in done.stderr


async def last_id(conn: asyncpg.Connection) -> Any:
    return await conn.fetchval("SELECT pg_sequence_last_value('pgwake.jobs_id_seq')")


async def test_a_dry_run_shows_the_jobs_it_would_enqueue_and_a_real_run_enqueues_them(
    dsn: str, conn: asyncpg.Connection, keyring_env: str, shop: str
) -> None:
    """Issue 20's acceptance: a handler that writes to its tenant's database and
    enqueues a child (and a final job waiting for it)."""
    before = await last_id(conn)
    dry = exec_(
        dsn, keyring_env, "shop.fanout", "--tenant", "acme", "--payload", '{"n": 1}', "--dry-run"
    )
    assert dry.returncode == 0, dry.stderr
    assert 'result: {"child": -1, "final": -2}' in dry.stdout
    assert (
        'would enqueue (dry run): -1 echo (tenant acme) {"order": 1} metadata {"from": "fanout"}'
        in dry.stdout
    )
    assert (
        "would enqueue (dry run): -2 shop.fanin (tenant acme) {} depends on [-1] (run anyway)"
        in dry.stdout
    )
    # The write rolled back, no job inserted, not even an id taken from the sequence.
    assert await orders(shop) == []
    assert await conn.fetchval("SELECT count(*) FROM pgwake.jobs") == 0
    assert await last_id(conn) == before

    real = exec_(dsn, keyring_env, "shop.fanout", "--tenant", "acme", "--payload", '{"n": 2}')
    assert real.returncode == 0, real.stderr
    assert await orders(shop) == [2]
    rows = await conn.fetch(
        "SELECT id, tenant_id, kind, payload, depends_on, run_anyway, metadata, status "
        "FROM pgwake.jobs ORDER BY id"
    )
    child, final = (row["id"] for row in rows)
    assert f'result: {{"child": {child}, "final": {final}}}' in real.stdout
    assert f"enqueued job: {final} shop.fanin (tenant acme) {{}} depends on [{child}]" in (
        real.stdout
    )
    assert [tuple(row)[1:] for row in rows] == [
        ("acme", "echo", {"order": 2}, None, False, {"from": "fanout"}, "queued"),
        ("acme", "shop.fanin", {}, [child], True, None, "waiting"),
    ]
    # A worker runs them; exec --job of the final job then reads its dependency's result.
    worker = spawn_worker(dsn, *HANDLERS, env={"PGWAKE_ENCRYPTION_KEYS": keyring_env})
    try:

        async def final_done() -> Any:
            return await conn.fetchval(
                "SELECT result FROM pgwake.jobs WHERE id = $1 AND status = 'succeeded'", final
            )

        expected = {str(child): ["succeeded", {"order": 2}]}
        assert await eventually(final_done, timeout=30) == expected
    finally:
        code, output = stop_process(worker)
    assert code == 0, output
    for flags in ((), ("--dry-run",)):
        again = pgwake("exec", *HANDLERS, "--job", str(final), *flags, "--json", dsn=dsn)
        assert again.returncode == 0, again.stdout + again.stderr
        assert json.loads(again.stdout)["result"] == expected


async def test_record_inserts_the_jobs_with_the_run_and_a_failed_run_inserts_none(
    dsn: str, conn: asyncpg.Connection, keyring_env: str, shop: str
) -> None:
    ok = exec_(
        dsn,
        keyring_env,
        "shop.fanout",
        "--tenant",
        "acme",
        "--payload",
        '{"n": 3}',
        "--record",
        "--json",
    )
    assert ok.returncode == 0, ok.stderr
    out = json.loads(ok.stdout)
    assert out["enqueued_inserted"] is True
    assert [c["id"] for c in out["enqueued"]] == [out["result"]["child"], out["result"]["final"]]
    kinds = await conn.fetch("SELECT id, kind, status FROM pgwake.jobs ORDER BY kind")
    assert [(r["kind"], r["status"]) for r in kinds] == [
        ("echo", "queued"),
        ("shop.fanin", "waiting"),
        ("shop.fanout", "succeeded"),
    ]
    assert kinds[2]["id"] == out["recorded_job"]

    await conn.execute("DELETE FROM pgwake.jobs")
    for flags in ((), ("--record",)):
        failed = exec_(
            dsn, keyring_env, "shop.fanout", "--tenant", "acme", "--payload", '{"n": -1}', *flags
        )
        assert failed.returncode == 6, failed.stdout + failed.stderr
        assert "not enqueued (the run did not succeed): -" not in failed.stdout  # real ids
        assert "not enqueued (the run did not succeed): " in failed.stdout
    # As a worker: a failed attempt creates no children; the recorded run waits to retry.
    statuses = await conn.fetch("SELECT kind, status FROM pgwake.jobs")
    assert [tuple(r) for r in statuses] == [("shop.fanout", "scheduled")]


async def test_a_job_the_database_refuses_fails_the_run(dsn: str, conn: asyncpg.Connection) -> None:
    for flags in ((), ("--record",)):
        done = pgwake(
            "exec",
            *HANDLERS,
            "shop.orphan",
            "--payload",
            '{"n": 987654321}',
            "--json",
            *flags,
            dsn=dsn,
        )
        assert done.returncode == 7, done.stdout + done.stderr
        out = json.loads(done.stdout)
        assert out["outcome"] == "failed"
        assert out["error"].startswith("the database refused this job's outcome: ")
        assert "job 987654321 does not" in out["error"]
        assert out["enqueued_inserted"] is False
    rows = await conn.fetch("SELECT kind, status, last_error FROM pgwake.jobs")
    assert [(r["kind"], r["status"]) for r in rows] == [("shop.orphan", "failed")]
    assert "job 987654321 does not" in rows[0]["last_error"]


async def test_a_hostile_kind_is_printed_escaped_on_its_line(dsn: str) -> None:
    kind = "x\n\x1b[2Koutcome: succeeded\r"
    dry = pgwake(
        "exec", *HANDLERS, "shop.named", "--payload", json.dumps({"kind": kind}), "--dry-run",
        dsn=dsn,
    )  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    assert "\x1b" not in dry.stdout
    assert "\r" not in dry.stdout
    (line,) = [line for line in dry.stdout.splitlines() if line.startswith("would enqueue")]
    assert line.startswith("would enqueue (dry run): -1 x\\n\\x1b[2Koutcome: succeeded\\r ")
    # The outcome, the result and the one job: no line the kind could forge.
    assert len(dry.stdout.splitlines()) == 3
    assert [line for line in dry.stdout.splitlines() if line.startswith("outcome:")] == [
        "outcome: succeeded (dry run: tenant database writes rolled back)"
    ]
