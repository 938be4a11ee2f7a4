"""The Python enqueue API (listener/enqueue.py) on the application's own connection,
asyncpg or psycopg 3, inside its own transaction: the job exists if and only if the
transaction commits, and a committed job runs."""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

import asyncpg
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from listener.api import JobContext, NewJob, Registry, enqueue, enqueue_many
from tests.support.waiting import eventually
from tests.support.workers import running_worker

DRIVERS = ["asyncpg", "psycopg"]


class Greeting(BaseModel):
    """A handler's payload model, given to enqueue as an instance."""

    name: str
    sent: datetime
    times: int = 1


async def open_app_connection(driver: str, dsn: str) -> Any:
    """The application's own connection: no pgwake setup (no JSON codecs)."""
    if driver == "asyncpg":
        return await asyncpg.connect(dsn)
    return await psycopg.AsyncConnection.connect(dsn)


@pytest.fixture(params=DRIVERS)
async def app_conn(request: pytest.FixtureRequest, dsn: str) -> AsyncIterator[Any]:
    conn = await open_app_connection(request.param, dsn)
    try:
        yield conn
    finally:
        await conn.close()


def transaction(conn: Any) -> Any:
    """The driver's transaction block (both are async context managers)."""
    return conn.transaction()


async def committed(conn: Any) -> None:
    """End psycopg's implicit transaction (asyncpg runs in autocommit outside blocks)."""
    if isinstance(conn, psycopg.AsyncConnection):
        await conn.commit()


class BoomError(Exception):
    pass


async def jobs_of(conn: asyncpg.Connection, kind: str) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT * FROM pgwake.jobs WHERE kind = $1 ORDER BY id", kind)


async def test_a_rolled_back_transaction_leaves_no_job(
    app_conn: Any, conn: asyncpg.Connection
) -> None:
    inserted: list[int] = []

    async def enqueue_then_fail() -> None:
        async with transaction(app_conn):
            job_id = await enqueue(app_conn, "api.rolled", {"n": 1}, tenant="acme")
            jobs = [NewJob("api.rolled", {"n": i}) for i in range(50)]
            inserted.extend([job_id, *await enqueue_many(app_conn, jobs)])
            raise BoomError

    with pytest.raises(BoomError):
        await enqueue_then_fail()
    assert len(inserted) == 51
    assert await jobs_of(conn, "api.rolled") == []


async def test_a_committed_job_runs_with_its_model_payload(
    dsn: str, app_conn: Any, conn: asyncpg.Connection
) -> None:
    registry = Registry()
    seen: list[Greeting] = []

    @registry.handler("api.greet")
    async def greet(payload: Greeting, ctx: JobContext) -> dict[str, Any]:
        seen.append(payload)
        return {"hello": payload.name, "tenant": ctx.tenant}

    sent = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    async with running_worker(dsn, registry):
        async with transaction(app_conn):
            job_id = await enqueue(
                app_conn, "api.greet", Greeting(name="Ada", sent=sent), tenant="acme"
            )
            # Not visible to anyone else (and so to no worker) before the commit.
            assert await conn.fetchval("SELECT count(*) FROM pgwake.jobs") == 0
        await committed(app_conn)

        async def done() -> Any:
            return await conn.fetchrow(
                "SELECT status, result, payload FROM pgwake.jobs WHERE id = $1 "
                "AND status = 'succeeded'",
                job_id,
            )

        row = await eventually(done)
    assert row["result"] == {"hello": "Ada", "tenant": "acme"}
    # model_dump(mode="json"): the datetime is ISO text, and the model reads it back.
    assert row["payload"] == {"name": "Ada", "sent": "2026-01-02T03:04:05Z", "times": 1}
    assert seen == [Greeting(name="Ada", sent=sent)]


async def test_enqueue_many_inserts_every_row_in_order_in_one_statement(
    app_conn: Any, conn: asyncpg.Connection
) -> None:
    jobs = [NewJob("api.many", {"n": i}, tenant=f"t{i % 7}", priority=i % 3) for i in range(2_000)]
    async with transaction(app_conn):
        ids = await enqueue_many(app_conn, jobs)
    await committed(app_conn)
    assert len(ids) == 2_000
    assert ids == sorted(ids)
    rows = {row["id"]: row for row in await jobs_of(conn, "api.many")}
    assert sorted(rows) == ids
    for job_id, job in zip(ids, jobs, strict=True):
        row = rows[job_id]
        assert (row["tenant_id"], row["payload"], row["priority"]) == (
            job.tenant,
            job.payload,
            job.priority,
        )
    assert await enqueue_many(app_conn, []) == []


async def test_defaults_are_the_tables_own(app_conn: Any, conn: asyncpg.Connection) -> None:
    """A job enqueued with no options gets the same values as a plain INSERT."""
    plain = await conn.fetchval("INSERT INTO pgwake.jobs (kind) VALUES ('api.d') RETURNING id")
    one = await enqueue(app_conn, "api.d")
    (many,) = await enqueue_many(app_conn, [NewJob("api.d")])
    await committed(app_conn)
    columns = (
        "tenant_id, payload, priority, max_attempts, timeout, unique_key, unique_for, status, "
        "depends_on, run_anyway, metadata, created_by"
    )
    rows = [
        tuple(await conn.fetchrow(f"SELECT {columns} FROM pgwake.jobs WHERE id = $1", job_id))
        for job_id in (plain, one, many)
    ]
    assert rows[0] == rows[1] == rows[2]


def test_new_job_has_a_field_per_option_of_enqueue() -> None:
    options = [
        name
        for name, p in inspect.signature(enqueue).parameters.items()
        if p.kind == p.KEYWORD_ONLY
    ]
    assert options == [f.name for f in dataclasses.fields(NewJob)][2:]


async def test_every_option_is_stored(app_conn: Any, conn: asyncpg.Connection) -> None:
    at = datetime.now(UTC) + timedelta(hours=1)
    options: dict[str, Any] = {
        "tenant": "acme",
        "priority": 7,
        "max_attempts": 3,
        "timeout": timedelta(seconds=90),
        "unique_key": "k1",
        "unique_for": 600.0,
    }
    one = await enqueue(app_conn, "api.opts", {"a": 1}, run_at=at, **options)
    options["unique_key"] = "k2"
    (many,) = await enqueue_many(
        app_conn, [NewJob("api.opts", {"a": 1}, run_at=timedelta(hours=2), **options)]
    )
    await committed(app_conn)
    for job_id, due in ((one, at), (many, None)):
        row = await conn.fetchrow("SELECT * FROM pgwake.jobs WHERE id = $1", job_id)
        assert row["tenant_id"] == "acme"
        assert row["status"] == "scheduled"
        assert row["priority"] == 7
        assert row["max_attempts"] == 3
        assert row["timeout"] == timedelta(seconds=90)
        assert row["unique_for"] == timedelta(minutes=10)
        if due is not None:
            assert row["run_at"] == due
        else:  # a timedelta counts from the database's now()
            later = row["run_at"] - row["created_at"]
            assert timedelta(hours=2) <= later < timedelta(hours=2, seconds=5)


async def test_a_taken_unique_key_skips_the_job(app_conn: Any, conn: asyncpg.Connection) -> None:
    first = await enqueue(app_conn, "api.u", unique_key="daily")
    assert first is not None
    assert await enqueue(app_conn, "api.u", unique_key="daily") is None
    assert await enqueue(app_conn, "api.u", unique_key="daily", tenant="other") is not None
    ids = await enqueue_many(
        app_conn,
        [NewJob("api.u", unique_key="daily"), NewJob("api.u", unique_key="weekly")],
    )
    await committed(app_conn)
    assert len(ids) == 1
    keys = [row["unique_key"] for row in await jobs_of(conn, "api.u")]
    assert sorted(keys) == ["daily", "daily", "weekly"]


@pytest.mark.parametrize(
    ("payload", "error", "match"),
    [
        ([1, 2], TypeError, "a payload is a mapping or a pydantic model"),
        ("{}", TypeError, "a payload is a mapping or a pydantic model"),
        ({"x": math.nan}, ValueError, "the payload is not JSON"),
        ({"x": {1, 2}}, TypeError, "the payload is not JSON"),
        ({"x": "a\x00b"}, ValueError, "NUL character"),
    ],
)
async def test_a_payload_that_is_not_a_json_object_is_refused_before_the_database(
    app_conn: Any, conn: asyncpg.Connection, payload: Any, error: type[Exception], match: str
) -> None:
    for call in (
        lambda: enqueue(app_conn, "api.bad", payload),
        lambda: enqueue_many(app_conn, [NewJob("api.ok"), NewJob("api.bad", payload)]),
    ):
        with pytest.raises(error, match=match):
            await call()
    await committed(app_conn)
    assert await conn.fetchval("SELECT count(*) FROM pgwake.jobs") == 0


async def test_wrong_types_and_naive_times_are_refused(app_conn: Any) -> None:
    calls: list[Callable[[], Coroutine[Any, Any, Any]]] = [
        lambda: enqueue(app_conn, 42, {}),  # type: ignore[arg-type]
        lambda: enqueue(app_conn, "k", {}, tenant=7),  # type: ignore[arg-type]
        lambda: enqueue(app_conn, "k", {}, priority=True),
        lambda: enqueue(app_conn, "k", {}, run_at=datetime(2030, 1, 1)),
        lambda: enqueue(app_conn, "k", {}, timeout=math.inf),
        lambda: enqueue_many(app_conn, [NewJob("k", tenant=None)] * 0 + [NewJob(b"k")]),  # type: ignore[arg-type]
    ]
    for call in calls:
        with pytest.raises((TypeError, ValueError)):
            await call()


async def test_the_database_refuses_what_the_table_refuses_by_name(app_conn: Any) -> None:
    cases = [
        ({"kind": " "}, "jobs_kind_not_empty"),
        ({"kind": "k", "priority": 5000}, "jobs_priority_between_minus_1000_and_1000"),
        ({"kind": "k", "timeout": -1.0}, "jobs_timeout_positive_at_most_7_days"),
        ({"kind": "k", "payload": {"x": "y" * 1_100_000}}, "jobs_payload_at_most_1mib"),
    ]
    for args, constraint in cases:
        with pytest.raises(Exception, match=constraint) as caught:
            await enqueue(app_conn, **args)
        assert type(caught.value).__module__.split(".")[0] in ("asyncpg", "psycopg")
        if isinstance(app_conn, psycopg.AsyncConnection):
            await app_conn.rollback()


async def test_hostile_text_is_stored_as_given(app_conn: Any, conn: asyncpg.Connection) -> None:
    """Values are parameters, never SQL: quotes, a statement, NUL-free control text."""
    kind = "x'); DROP TABLE pgwake.jobs; --"
    tenant = 't"$1 %s {}'
    payload = {"$1": "%(x)s", "'": "\\", "nested": {"a": ["'; SELECT 1"]}}
    one = await enqueue(app_conn, kind, payload, tenant=tenant, unique_key="$2")
    (many,) = await enqueue_many(app_conn, [NewJob(kind, payload, tenant=tenant)])
    await committed(app_conn)
    for job_id in (one, many):
        row = await conn.fetchrow("SELECT * FROM pgwake.jobs WHERE id = $1", job_id)
        assert (row["kind"], row["tenant_id"], row["payload"]) == (kind, tenant, payload)


async def test_a_mapping_that_is_not_a_dict_is_a_payload(
    app_conn: Any, conn: asyncpg.Connection
) -> None:
    job_id = await enqueue(app_conn, "api.map", MappingProxyType({"a": 1}))
    await committed(app_conn)
    assert await conn.fetchval("SELECT payload FROM pgwake.jobs WHERE id = $1", job_id) == {"a": 1}


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(payloads=st.lists(st.dictionaries(st.text(max_size=10), JSON, max_size=5), max_size=5))
async def test_any_json_object_round_trips(
    app_conn: Any, conn: asyncpg.Connection, payloads: list[dict[str, Any]]
) -> None:
    clean = [p for p in payloads if "\\u0000" not in json.dumps(p)]  # jsonb holds no NUL
    ids = [await enqueue(app_conn, "api.rt", p) for p in clean]
    ids += await enqueue_many(app_conn, [NewJob("api.rt", p) for p in clean])
    await committed(app_conn)
    stored = {
        row["id"]: row["payload"]
        for row in await conn.fetch("SELECT id, payload FROM pgwake.jobs WHERE id = ANY($1)", ids)
    }
    assert [stored[i] for i in ids] == clean + clean


async def test_dependencies_and_metadata_are_stored(
    app_conn: Any, conn: asyncpg.Connection
) -> None:
    meta = {"batch": "b-1", "by": {"user": 7, "name": "x'); --"}}
    first = await enqueue(app_conn, "api.dep", {"n": 1}, tenant="acme", metadata=meta)
    after = await enqueue(app_conn, "api.dep", tenant="acme", depends_on=[first], run_anyway=True)
    many = await enqueue_many(
        app_conn,
        [
            NewJob("api.dep", {"n": i}, tenant="acme", depends_on=[first, after][:i],
                   metadata={"i": i} if i else None)
            for i in range(3)
        ] + [NewJob("api.dep", tenant="acme", depends_on=(after, after), run_anyway=True)],
    )  # fmt: skip
    await committed(app_conn)
    rows = await conn.fetch(
        "SELECT id, depends_on, run_anyway, metadata, status, created_by FROM pgwake.jobs "
        "ORDER BY id"
    )
    assert [r["id"] for r in rows] == [first, after, *many]
    assert [tuple(r)[1:5] for r in rows] == [
        (None, False, meta, "queued"),
        ([first], True, None, "waiting"),
        (None, False, None, "queued"),
        ([first], False, {"i": 1}, "waiting"),
        ([first, after], False, {"i": 2}, "waiting"),
        ([after, after], True, None, "waiting"),
    ]
    assert {r["created_by"] for r in rows} == {"postgres"}


async def test_dependencies_are_checked_by_the_database(
    app_conn: Any, conn: asyncpg.Connection
) -> None:
    other = await conn.fetchval(
        "INSERT INTO pgwake.jobs (tenant_id, kind) VALUES ('other', 'api.x') RETURNING id"
    )
    mine = await conn.fetchval(
        "INSERT INTO pgwake.jobs (tenant_id, kind) VALUES ('acme', 'api.x') RETURNING id"
    )
    cases: list[tuple[Callable[[], Coroutine[Any, Any, Any]], str]] = [
        (
            lambda: enqueue(app_conn, "k", tenant="acme", depends_on=[other]),
            f"job {other} does not",
        ),
        (lambda: enqueue(app_conn, "k", tenant="acme", depends_on=[2**40]), "does not"),
        (
            lambda: enqueue_many(
                app_conn,
                [NewJob("k", tenant="acme", depends_on=[mine]), NewJob("k", depends_on=[mine])],
            ),
            f"job {mine} does not",
        ),
        (
            lambda: enqueue(app_conn, "k", tenant="acme", depends_on=[mine], unique_key="u"),
            "jobs_depends_on_without_unique_key",
        ),
        (
            lambda: enqueue(app_conn, "k", metadata={"x": "y" * 70_000}),
            "jobs_metadata_at_most_64kib",
        ),
        (lambda: enqueue(app_conn, "k", depends_on=[2**63]), "out of range"),
    ]
    for call, message in cases:
        with pytest.raises(Exception, match=message) as caught:
            await call()
        assert type(caught.value).__module__.split(".")[0] in ("asyncpg", "psycopg")
        if isinstance(app_conn, psycopg.AsyncConnection):
            await app_conn.rollback()
    assert await conn.fetchval("SELECT count(*) FROM pgwake.jobs") == 2


class SneakyInt(int):
    """An int that prints as something else."""

    def __str__(self) -> str:
        return "1}'); DROP TABLE pgwake.jobs; --"

    __repr__ = __str__


async def test_dependencies_and_metadata_of_the_wrong_type_are_refused_before_the_database(
    app_conn: Any, conn: asyncpg.Connection
) -> None:
    calls: list[tuple[Callable[[], Coroutine[Any, Any, Any]], str]] = [
        (lambda: enqueue(app_conn, "k", depends_on="12"), "depends_on must be a sequence"),  # type: ignore[arg-type]
        (lambda: enqueue(app_conn, "k", depends_on=12), "depends_on must be a sequence"),  # type: ignore[arg-type]
        (lambda: enqueue(app_conn, "k", depends_on=["1"]), "depends_on must hold ints"),  # type: ignore[list-item]
        (lambda: enqueue(app_conn, "k", depends_on=[True]), "depends_on must hold ints"),
        (lambda: enqueue(app_conn, "k", depends_on=[1.0]), "depends_on must hold ints"),  # type: ignore[list-item]
        (lambda: enqueue(app_conn, "k", run_anyway=1), "run_anyway must be a bool"),  # type: ignore[arg-type]
        (lambda: enqueue(app_conn, "k", metadata=[1]), "metadata is a mapping"),  # type: ignore[arg-type]
        (lambda: enqueue(app_conn, "k", metadata={"x": math.inf}), "the metadata is not JSON"),
        (lambda: enqueue(app_conn, "k", metadata={"x": "\x00"}), "the metadata holds a NUL"),
        (
            lambda: enqueue_many(app_conn, [NewJob("k"), NewJob("k", depends_on=[None])]),  # type: ignore[list-item]
            "depends_on must hold ints",
        ),
        (
            lambda: enqueue_many(app_conn, [NewJob("k"), NewJob("k", run_anyway="yes")]),  # type: ignore[arg-type]
            "run_anyway must be a bool",
        ),
        (
            lambda: enqueue_many(app_conn, [NewJob("k", metadata={"x": {1}})]),
            "the metadata is not JSON",
        ),
    ]
    for call, message in calls:
        with pytest.raises((TypeError, ValueError), match=message):
            await call()
    # An int subclass is sent as the number it is, never as the text it prints.
    job = await conn.fetchval("INSERT INTO pgwake.jobs (kind) VALUES ('api.x') RETURNING id")
    dep = await enqueue(app_conn, "k", depends_on=[SneakyInt(job)])
    await committed(app_conn)
    assert await conn.fetchval("SELECT depends_on FROM pgwake.jobs WHERE id = $1", dep) == [job]


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.lists(
        st.tuples(
            st.lists(st.integers(0, 4), max_size=4),
            st.booleans(),
            st.none() | st.dictionaries(st.text(max_size=8), JSON, max_size=3),
        ),
        min_size=1,
        max_size=8,
    )
)
async def test_any_dependencies_and_metadata_round_trip(
    app_conn: Any, conn: asyncpg.Connection, rows: list[tuple[list[int], bool, Any]]
) -> None:
    """Rows of one enqueue_many with any number of dependencies each (ragged), beside
    rows without, and any metadata: each stored as given, in order."""
    base = [
        await conn.fetchval("INSERT INTO pgwake.jobs (kind) VALUES ('api.base') RETURNING id")
        for _ in range(5)
    ]
    rows = [r for r in rows if r[2] is None or "\\u0000" not in json.dumps(r[2])]
    jobs = [
        NewJob("api.rt", depends_on=[base[i] for i in deps], run_anyway=anyway, metadata=meta)
        for deps, anyway, meta in rows
    ]
    ids = await enqueue_many(app_conn, jobs)
    one = [await enqueue(app_conn, "api.rt", depends_on=j.depends_on, metadata=j.metadata)
           for j in jobs]  # fmt: skip
    await committed(app_conn)
    stored = {
        r["id"]: (r["depends_on"], r["run_anyway"], r["metadata"])
        for r in await conn.fetch("SELECT * FROM pgwake.jobs WHERE id = ANY($1)", ids + one)
    }
    assert [stored[i] for i in ids] == [
        (list(j.depends_on) or None, j.run_anyway, j.metadata) for j in jobs
    ]
    assert [stored[i][0::2] for i in one] == [
        (list(j.depends_on) or None, j.metadata) for j in jobs
    ]
