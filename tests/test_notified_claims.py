"""The claim by id of an idle worker's wake-up (migration 0016, job_claim_notified).

What is tried: the payload the insert trigger sends for each shape of insert; every
check of the claim by id, each alone (the job is left queued for the full claim, which
weighs it); payloads anyone may send, parsed without ever raising (hypothesis); and a
real worker that claims single inserts by id, and is not led astray by the ids a role
with only CONNECT notifies.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator

import anyio
import asyncpg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from listener.api import JobContext, Registry
from listener.claimer import STREAM_PAUSE
from listener.queries import QUERIES
from listener.service import Service
from listener.wake import MAX_JOB_ID, NotifiedJob
from tests.support.claims import register
from tests.support.databases import as_user, fresh_role
from tests.support.waiting import eventually
from tests.support.workers import running_worker


@pytest.fixture
async def waiting(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A session that waits as a worker does (inserts notify) and listens."""
    listen = await asyncpg.connect(dsn)
    try:
        assert await listen.fetchval(QUERIES["listener_start_waiting"]) is not None
        yield listen
    finally:
        await listen.close()


async def _payloads(listen: asyncpg.Connection, conn: asyncpg.Connection, sql: str) -> list[str]:
    """The payloads on pgwake_jobs that running ``sql`` on ``conn`` sends."""
    got: list[str] = []

    def note(_c: object, _p: int, _ch: str, payload: str) -> None:
        got.append(payload)

    await listen.add_listener("pgwake_jobs", note)
    try:
        await conn.execute(sql)
        await anyio.sleep(0.1)
        await listen.execute("SELECT 1")
    finally:
        await listen.remove_listener("pgwake_jobs", note)
    return sorted(got)


def _registry() -> Registry:
    registry = Registry()

    @registry.handler("noop")
    async def noop(payload: dict[str, object], ctx: JobContext) -> None:
        return None

    return registry


async def test_a_single_ready_insert_names_its_job(
    conn: asyncpg.Connection, waiting: asyncpg.Connection
) -> None:
    payloads = await _payloads(
        waiting, conn, "INSERT INTO pgwake.jobs (tenant_id, kind) VALUES ('t', 'k')"
    )
    job = await conn.fetchval("SELECT max(id) FROM pgwake.jobs")
    assert payloads == [str(job)]


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        # Two ready jobs: no single job to name.
        ("INSERT INTO pgwake.jobs (kind) SELECT 'k' FROM generate_series(1, 2)", [""]),
        ("INSERT INTO pgwake.jobs (kind) SELECT 'k' FROM generate_series(1, 5000)", [""]),
        # One job due later: the promoters' notification, and the claimers' as before.
        (
            "INSERT INTO pgwake.jobs (kind, run_at) VALUES ('k', now() + interval '1 h')",
            ["", "later"],
        ),
        # One due later beside one ready: not one ready job alone.
        (
            (
                "INSERT INTO pgwake.jobs (kind, run_at) "
                "VALUES ('k', now() + interval '1 h'), ('k', now())"
            ),
            ["", "later"],
        ),
        # An insert that adds no row notifies nothing it names.
        ("INSERT INTO pgwake.jobs (kind) SELECT 'k' WHERE false", [""]),
    ],
)
async def test_other_inserts_name_no_job(
    conn: asyncpg.Connection, waiting: asyncpg.Connection, sql: str, expected: list[str]
) -> None:
    assert await _payloads(waiting, conn, sql) == expected


async def test_no_waiting_worker_no_notification(dsn: str, conn: asyncpg.Connection) -> None:
    listen = await asyncpg.connect(dsn)
    try:
        payloads = await _payloads(
            listen, conn, "INSERT INTO pgwake.jobs (tenant_id, kind) VALUES ('t', 'k')"
        )
    finally:
        await listen.close()
    assert payloads == []


async def _claim_notified(
    conn: asyncpg.Connection,
    worker: uuid.UUID,
    job: int,
    *,
    kinds: tuple[str, ...] = ("k",),
    at_cap: tuple[str, ...] = (),
) -> list[int]:
    rows = await conn.fetch(QUERIES["job_claim_notified"], worker, list(kinds), job, list(at_cap))
    assert rows[-1]["id"] is None  # the summary row
    return [row["id"] for row in rows[:-1]]


async def _queued_flag(conn: asyncpg.Connection, worker: uuid.UUID, job: int) -> bool:
    """What the claim by id says of a job it does not claim: queued (the full claim must
    weigh it) or not (nothing to weigh)."""
    rows = await conn.fetch(QUERIES["job_claim_notified"], worker, ["k"], job, [])
    assert [row["id"] for row in rows] == [None]
    return bool(rows[0]["queued"])


async def _insert(conn: asyncpg.Connection, values: str = "('t', 'k')") -> int:
    job: int = await conn.fetchval(
        f"INSERT INTO pgwake.jobs (tenant_id, kind) VALUES {values} RETURNING id"
    )
    return job


async def test_the_notified_job_is_claimed(conn: asyncpg.Connection) -> None:
    worker = await register(conn)
    job = await _insert(conn)
    assert await _claim_notified(conn, worker, job) == [job]
    row = await conn.fetchrow(
        "SELECT status, claimed_by, attempts, started_at IS NOT NULL AS started "
        "FROM pgwake.jobs WHERE id = $1",
        job,
    )
    assert dict(row) == {"status": "running", "claimed_by": worker, "attempts": 1, "started": True}
    # A second claim of it takes nothing.
    assert await _claim_notified(conn, worker, job) == []


# Each case sets up one reason the full claim would not take the notified job first.
PASSED_OVER = {
    "not a job": "SELECT 1",
    "kind not handled": "UPDATE pgwake.jobs SET kind = 'other' WHERE id = $1",
    "due later": "UPDATE pgwake.jobs SET status = 'scheduled', run_at = now() + interval '1 h' "
    "WHERE id = $1",
    "cancelled": "UPDATE pgwake.jobs SET status = 'cancelled', finished_at = now() WHERE id = $1",
    "tenant paused": "INSERT INTO pgwake.tenants (tenant_id, paused) VALUES ('t', true)",
    "tenant capped fleet-wide": "INSERT INTO pgwake.tenants (tenant_id, max_concurrency) "
    "VALUES ('t', 5)",
    "tenant rate-limited": "INSERT INTO pgwake.tenants (tenant_id, rate_limit, rate_period) "
    "VALUES ('t', 100, interval '1 s')",
    "kind rate-limited": "INSERT INTO pgwake.limits (kind, rate_limit, rate_period) "
    "VALUES ('k', 100, interval '1 s')",
    "kind rate-limited per tenant": "INSERT INTO pgwake.limits (kind, per_tenant, rate_limit, "
    "rate_period) VALUES ('k', true, 100, interval '1 s')",
    "an older job of its tenant": "INSERT INTO pgwake.jobs (tenant_id, kind, run_at) "
    "VALUES ('t', 'k', now() - interval '1 min')",
    "a higher priority job of its tenant": "INSERT INTO pgwake.jobs (tenant_id, kind, priority) "
    "VALUES ('t', 'k', 1)",
    "a higher priority job of another tenant": "INSERT INTO pgwake.jobs (tenant_id, kind, "
    "priority) VALUES ('other', 'k', 5)",
}


@pytest.mark.parametrize("case", sorted(PASSED_OVER))
async def test_the_claim_by_id_leaves_what_the_full_claim_must_weigh(
    conn: asyncpg.Connection, case: str
) -> None:
    worker = await register(conn)
    job = await _insert(conn)
    sql = PASSED_OVER[case]
    if "$1" in sql:
        await conn.execute(sql, job)
    else:
        await conn.execute(sql)
    notified = job if case != "not a job" else job + 1000
    assert await _claim_notified(conn, worker, notified) == []
    assert await conn.fetchval("SELECT count(*) FROM pgwake.jobs WHERE status = 'running'") == 0
    # A queued job is left for the full claim to weigh; for one that is not queued there
    # is nothing to weigh.
    not_queued = {"not a job", "due later", "cancelled"}
    assert await _queued_flag(conn, worker, notified) is (case not in not_queued)


async def test_the_claim_by_id_keeps_the_local_cap_and_registration(
    conn: asyncpg.Connection,
) -> None:
    worker = await register(conn)
    job = await _insert(conn)
    assert await _claim_notified(conn, worker, job, at_cap=("t",)) == []
    assert await _claim_notified(conn, worker, job, kinds=("other",)) == []
    assert await _claim_notified(conn, uuid.uuid4(), job) == []  # not registered
    # A lower priority of another tenant, or of its own below it, does not hold it back.
    await conn.execute(
        "INSERT INTO pgwake.jobs (tenant_id, kind, priority) VALUES ('other', 'k', -5), "
        "('t', 'k', -1), ('t', 'k', 0)"
    )
    assert await _claim_notified(conn, worker, job) == [job]


async def test_a_job_locked_by_a_claim_is_found_claimed(dsn: str, conn: asyncpg.Connection) -> None:
    """The claim by id waits for a claim that holds the row, then finds it taken."""
    worker = await register(conn)
    job = await _insert(conn)
    other = await asyncpg.connect(dsn)
    result: list[list[int]] = []

    async def by_id() -> None:
        result.append(await _claim_notified(conn, worker, job))

    try:
        async with anyio.create_task_group() as tg:
            tx = other.transaction()
            await tx.start()
            await other.execute(
                "UPDATE pgwake.jobs SET status = 'running', claimed_by = $2, attempts = 1, "
                "started_at = now() WHERE id = $1",
                job,
                worker,
            )
            tg.start_soon(by_id)
            await anyio.sleep(0.3)
            assert not result  # waiting for the row
            await tx.commit()
    finally:
        await other.close()
    assert result == [[]]


@given(st.one_of(st.text(max_size=40), st.from_regex(r"\A[0-9]{1,21}\Z")))
def test_any_payload_parses_to_an_id_or_none(payload: str) -> None:
    canonical = re.fullmatch(r"[1-9][0-9]*", payload, re.ASCII)
    expected = int(payload) if canonical and int(payload) <= MAX_JOB_ID else None
    assert NotifiedJob.parse(payload) == expected


@given(st.integers(min_value=-(2**70), max_value=2**70))
def test_only_bigint_ids_above_zero_parse(value: int) -> None:
    expected = value if 0 < value <= MAX_JOB_ID else None
    assert NotifiedJob.parse(str(value)) == expected


@pytest.mark.parametrize(
    "payload",
    ["007", "+7", " 7", "7 ", "\u0667", "\uff17", "7\x00", "1e3", "0x10", "", "later", None, 7],
)
def test_payloads_that_are_not_canonical_ids(payload: object) -> None:
    assert NotifiedJob.parse(payload) is None


def test_only_one_notification_naming_a_job_is_taken() -> None:
    notified = NotifiedJob()
    notified.note("12")
    assert notified.take() == 12
    assert notified.take() is None  # forgotten
    notified.note("12")
    notified.note("13")
    assert notified.take() is None  # two jobs came: the full claim looks
    notified.note("")
    assert notified.take() is None
    notified.note("12")
    notified.clear()
    assert notified.take() is None


async def _settled(service: Service) -> None:
    """Until the worker waits for notifications (its claims found nothing) and has made
    the one last claim that follows the start of waiting (no claim for 50 ms)."""

    async def waiting() -> bool:
        return service.listener.waiting

    await eventually(waiting, timeout=10, interval=0.005)
    claims = service.metrics.claims
    last, still = claims._value.get(), 0
    while still < 5:
        await anyio.sleep(0.01)
        now = claims._value.get()
        still = still + 1 if now == last else 0
        last = now


async def test_a_worker_claims_single_inserts_by_id(dsn: str, conn: asyncpg.Connection) -> None:
    """Inserted one at a time, each while the worker waits and more than STREAM_PAUSE
    after the last (closer ones are a stream, claimed in batches): every job is claimed
    by id (the poll is an hour, so nothing else could start them)."""
    async with running_worker(dsn, _registry(), poll_interval=3600) as service:
        for _ in range(5):
            await _settled(service)
            await anyio.sleep(STREAM_PAUSE * 4)
            job = await _insert(conn, "('t', 'noop')")
            await eventually(
                lambda job=job: conn.fetchval(
                    "SELECT status = 'succeeded' FROM pgwake.jobs WHERE id = $1", job
                ),
                timeout=10,
                interval=0.005,
            )
        claimed = service.metrics.notified_claims.labels("claimed")._value.get()
    assert claimed == 5


async def test_ids_a_connect_only_role_notifies_start_nothing_they_should_not(
    server_dsn: str, dsn: str, conn: asyncpg.Connection
) -> None:
    """A role with only CONNECT names jobs in notifications: a paused tenant's job, a job
    of a kind the worker does not handle, ids of no job, and junk. None of them starts;
    the worker keeps claiming."""
    await conn.execute("INSERT INTO pgwake.tenants (tenant_id, paused) VALUES ('held', true)")
    held = await _insert(conn, "('held', 'noop')")
    foreign = await _insert(conn, "('t', 'not-handled')")
    async with fresh_role(server_dsn, dsn, "notifier") as role:
        await conn.execute(f'GRANT CONNECT ON DATABASE "{conn._params.database}" TO "{role}"')
        hostile = await asyncpg.connect(as_user(dsn, role))
        try:
            async with running_worker(dsn, _registry(), poll_interval=3600) as service:
                await _settled(service)
                for payload in (held, foreign, 10**18, MAX_JOB_ID, "junk", "-1", held):
                    await hostile.execute("SELECT pg_notify('pgwake_jobs', $1)", str(payload))
                await anyio.sleep(0.3)
                job = await _insert(conn, "('t', 'noop')")
                await eventually(
                    lambda: conn.fetchval(
                        "SELECT status = 'succeeded' FROM pgwake.jobs WHERE id = $1", job
                    ),
                    timeout=10,
                )
        finally:
            await hostile.close()
    statuses = dict(
        await conn.fetch("SELECT id, status FROM pgwake.jobs WHERE id = ANY($1)", [held, foreign])
    )
    assert statuses == {held: "queued", foreign: "queued"}


async def test_a_stream_of_single_inserts_is_claimed_in_batches(
    dsn: str, conn: asyncpg.Connection
) -> None:
    """Single-row inserts back to back: the second notification within a few
    milliseconds of a claim by id turns the worker to batched claims with inserts not
    notifying, so few of the 200 jobs are claimed by id; all of them run."""
    async with running_worker(dsn, _registry(), poll_interval=3600) as service:
        await _settled(service)
        enqueue = await conn.prepare(
            "INSERT INTO pgwake.jobs (tenant_id, kind) VALUES ('t', 'noop') RETURNING id"
        )
        for _ in range(200):
            await enqueue.fetchval()
        await eventually(
            lambda: conn.fetchval(
                "SELECT count(*) = 200 FROM pgwake.jobs WHERE status = 'succeeded'"
            ),
            timeout=30,
        )
        by_id = service.metrics.notified_claims.labels("claimed")._value.get()
    assert by_id < 100, by_id


async def test_a_notification_naming_no_queued_job_costs_no_full_claim(
    dsn: str, conn: asyncpg.Connection
) -> None:
    """An id that is no queued job (a finished one, one that does not exist): the claim
    by id finds nothing to weigh and the worker waits again, without a full claim."""
    done = await _insert(conn, "('t', 'noop')")
    async with running_worker(dsn, _registry(), poll_interval=3600) as service:
        await eventually(
            lambda: conn.fetchval(
                "SELECT status = 'succeeded' FROM pgwake.jobs WHERE id = $1", done
            ),
            timeout=10,
        )
        await _settled(service)
        metrics = service.metrics
        claims_before = metrics.claims._value.get()
        taken = metrics.notified_claims.labels("taken")
        for count, payload in enumerate((done, done + 10**6), start=1):
            await conn.execute("SELECT pg_notify('pgwake_jobs', $1)", str(payload))

            async def counted(count: int = count) -> bool:
                return bool(taken._value.get() >= count)

            await eventually(counted, timeout=10, interval=0.005)
        await anyio.sleep(0.1)
        assert metrics.claims._value.get() == claims_before
        assert service.listener.waiting
