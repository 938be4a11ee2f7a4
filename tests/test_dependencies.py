"""Jobs that depend on jobs (issue 19), at the SQL contract: depends_on at INSERT, the
status waiting, release by the statement that writes the last outcome, cancellation by
a failed or cancelled dependency (unless run_anyway), what is refused at INSERT, why no
cycle can form, confined roles, and the maintenance sweep."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Sequence

import anyio
import anyio.from_thread
import anyio.to_thread
import asyncpg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from listener import db
from listener.children import ChildJob
from listener.completer import Completer
from listener.jobs import Outcome, Status
from listener.queries import QUERIES
from tests.support.claims import claim, register
from tests.support.cli import pgwake
from tests.support.databases import as_user, fresh_role
from tests.support.dependencies import chain, finish, statuses

MISSING = r"may depend only on jobs of its tenant that exist; job {} does not"


async def insert(conn: asyncpg.Connection, deps: list[int], **columns: object) -> int:
    names = ["kind", "depends_on", *columns]
    values = ["k", deps, *columns.values()]
    marks = ", ".join(f"${i}" for i in range(1, len(values) + 1))
    job_id: int = await conn.fetchval(
        f"INSERT INTO pgwake.jobs ({', '.join(names)}) VALUES ({marks}) RETURNING id", *values
    )
    return job_id


async def test_a_chain_in_one_statement_waits_and_is_released_link_by_link(
    conn: asyncpg.Connection,
) -> None:
    ids = await chain(conn, 5)
    assert await statuses(conn, ids) == ["queued"] + ["waiting"] * 4
    # The claim reads only queued jobs: the waiting ones are never claimed.
    worker = await register(conn)
    claimed = await claim(conn, worker, 10)
    assert [r["id"] for r in claimed] == [ids[0]]
    await conn.execute(
        "UPDATE pgwake.jobs SET status = 'queued', claimed_by = NULL WHERE id = $1", ids[0]
    )
    for n, job_id in enumerate(ids):
        assert await finish(conn, [job_id]) == [job_id]
        expected = ["succeeded"] * (n + 1) + ["queued"] + ["waiting"] * (len(ids) - n - 2)
        assert await statuses(conn, ids) == expected[: len(ids)]


async def test_release_waits_for_every_dependency_and_wakes_the_claimers(
    conn: asyncpg.Connection, dsn: str
) -> None:
    a = await insert(conn, [])
    b = await insert(conn, [])
    final = await insert(conn, [a, b, a])  # a duplicate counts once
    assert await conn.fetchval("SELECT waiting_for FROM pgwake.jobs WHERE id = $1", final) == 2
    listener = await db.connect(dsn)
    heard: asyncio.Queue[str] = asyncio.Queue()
    try:
        await listener.add_listener("pgwake_jobs", lambda *args: heard.put_nowait(args[3]))
        # A worker waits for new jobs: the release must notify (as an insert would).
        assert await listener.fetchval(QUERIES["listener_start_waiting"]) is not None
        await finish(conn, [a])
        assert await statuses(conn, [final]) == ["waiting"]
        await finish(conn, [b])
        assert await statuses(conn, [final]) == ["queued"]
        assert await asyncio.wait_for(heard.get(), 5) == ""
    finally:
        await listener.close()


async def test_a_failed_dependency_cancels_its_dependents_naming_it_and_cascades(
    conn: asyncpg.Connection,
) -> None:
    a = await insert(conn, [])
    b = await insert(conn, [])
    final = await insert(conn, [a, b])
    after_final = await insert(conn, [final])
    anyway = await insert(conn, [a, b], run_anyway=True)
    await finish(conn, [b], "failed")
    rows = {
        r["id"]: (r["status"], r["last_error"])
        for r in await conn.fetch("SELECT id, status, last_error FROM pgwake.jobs")
    }
    assert rows[final] == ("cancelled", f"cancelled: depends on job {b}, which failed")
    assert rows[after_final] == (
        "cancelled",
        f"cancelled: depends on job {final}, which was cancelled",
    )
    # run_anyway waits for a, then runs whatever b's outcome was.
    assert rows[anyway][0] == "waiting"
    await finish(conn, [a])
    assert await statuses(conn, [anyway]) == ["queued"]


async def test_cancelling_a_job_settles_what_waits_for_it(conn: asyncpg.Connection) -> None:
    ids = await chain(conn, 3)
    anyway = await insert(conn, [ids[1]], run_anyway=True)
    assert await conn.fetchval("SELECT pgwake.cancel_job($1)", ids[1]) is True
    assert await statuses(conn, ids) == ["queued", "cancelled", "cancelled"]
    assert await statuses(conn, [anyway]) == ["queued"]
    error = await conn.fetchval("SELECT last_error FROM pgwake.jobs WHERE id = $1", ids[2])
    assert error == f"cancelled: depends on job {ids[1]}, which was cancelled"


async def test_a_dependency_failed_by_recovery_cancels_its_dependents(
    conn: asyncpg.Connection,
) -> None:
    a = await insert(conn, [], max_attempts=1)
    final = await insert(conn, [a])
    worker = await register(conn)
    await conn.execute(
        "UPDATE pgwake.jobs SET status = 'running', claimed_by = $2, attempts = 1 WHERE id = $1",
        a,
        worker,
    )
    recovered = await conn.fetch(QUERIES["job_recover"], [worker], ["recovered: test"], 10)
    assert [(r["id"], r["status"]) for r in recovered] == [(a, "failed")]
    assert await statuses(conn, [final]) == ["cancelled"]


async def test_retry_of_a_cancelled_dependent_waits_again(conn: asyncpg.Connection) -> None:
    a = await insert(conn, [])
    final = await insert(conn, [a])
    await finish(conn, [a], "failed")
    assert await statuses(conn, [final]) == ["cancelled"]
    # Retried while its dependency is still failed: cancelled again at once.
    assert await conn.fetchval("SELECT pgwake.retry_job($1)", final) is True
    assert await statuses(conn, [final]) == ["cancelled"]
    # The dependency retried, then the dependent: it waits, and runs after a succeeds.
    assert await conn.fetchval("SELECT pgwake.retry_job($1)", a) is True
    assert await conn.fetchval("SELECT pgwake.retry_job($1)", final) is True
    assert await statuses(conn, [a, final]) == ["queued", "waiting"]
    await finish(conn, [a])
    assert await statuses(conn, [final]) == ["queued"]


async def test_insert_refuses_missing_other_tenants_and_failed_dependencies(
    conn: asyncpg.Connection,
) -> None:
    with pytest.raises(asyncpg.ForeignKeyViolationError, match=MISSING.format(999999)) as e:
        await insert(conn, [999999])
    assert e.value.constraint_name == "jobs_depends_on_exist"
    other = await conn.fetchval(
        "INSERT INTO pgwake.jobs (tenant_id, kind) VALUES ('other', 'k') RETURNING id"
    )
    # Another tenant's job gets the same words as a job that does not exist.
    with pytest.raises(asyncpg.ForeignKeyViolationError, match=MISSING.format(other)):
        await insert(conn, [other])
    failed = await insert(conn, [])
    await finish(conn, [failed], "failed")
    with pytest.raises(
        asyncpg.CheckViolationError, match=rf"job {failed} it would depend on has already failed"
    ) as e:
        await insert(conn, [failed])
    assert e.value.constraint_name == "jobs_depends_on_not_failed"
    cancelled = await insert(conn, [])
    await conn.execute("SELECT pgwake.cancel_job($1)", cancelled)
    with pytest.raises(asyncpg.CheckViolationError, match="has already been cancelled"):
        await insert(conn, [cancelled])
    # run_anyway: the job runs after them anyway, at once since both have finished.
    anyway = await insert(conn, [failed, cancelled], run_anyway=True)
    assert await statuses(conn, [anyway]) == ["queued"]
    # Malformed lists are refused by named constraints.
    for deps, constraint in (
        ([anyway, None], "jobs_depends_on_without_nulls"),
        (list(range(1, 10_002)), "jobs_depends_on_at_most_10000"),
    ):
        with pytest.raises(asyncpg.CheckViolationError) as e:
            await insert(conn, deps)
        assert e.value.constraint_name == constraint
    with pytest.raises(asyncpg.CheckViolationError) as e:
        await insert(conn, [anyway], unique_key="x")
    assert e.value.constraint_name == "jobs_depends_on_without_unique_key"
    # An empty list is no dependency.
    assert await statuses(conn, [await insert(conn, [])]) == ["queued"]


async def test_no_cycle_can_form(conn: asyncpg.Connection) -> None:
    """A dependency must exist when its dependent is inserted, and depends_on never
    changes: so every edge points to an older row and insertion order is a topological
    order. A job depending on itself, two rows of one statement depending on each other,
    and an UPDATE closing a loop are all refused."""
    own = await conn.fetchval("SELECT nextval('pgwake.jobs_id_seq')")
    with pytest.raises(asyncpg.ForeignKeyViolationError, match=MISSING.format(own)):
        await conn.execute(
            "INSERT INTO pgwake.jobs (id, kind, depends_on) VALUES ($1, 'k', ARRAY[$1::bigint])",
            own,
        )
    x, y = await conn.fetchval(
        "SELECT array[nextval('pgwake.jobs_id_seq'), nextval('pgwake.jobs_id_seq')]"
    )
    with pytest.raises(asyncpg.ForeignKeyViolationError, match="does not"):
        await conn.execute(
            "INSERT INTO pgwake.jobs (id, kind, depends_on) VALUES "
            "($1, 'k', ARRAY[$2::bigint]), ($2, 'k', ARRAY[$1::bigint])",
            x,
            y,
        )
    first = await insert(conn, [])
    second = await insert(conn, [first])
    for target, deps in ((first, [second]), (second, [second]), (second, None)):
        with pytest.raises(asyncpg.CheckViolationError, match="cannot be changed") as e:
            await conn.execute("UPDATE pgwake.jobs SET depends_on = $2 WHERE id = $1", target, deps)
        assert e.value.constraint_name == "jobs_depends_on_unchanging"
    # An UPDATE that does not change it (or does not name it) passes.
    await conn.execute("UPDATE pgwake.jobs SET depends_on = depends_on, priority = 1")


async def test_two_last_dependencies_finished_at_once_release_the_job(
    conn: asyncpg.Connection, dsn: str
) -> None:
    """The settlers of one waiting job take its row lock in turn: the second counts after
    the first committed, so the job is released by whichever finishes last."""
    a = await insert(conn, [])
    b = await insert(conn, [])
    final = await insert(conn, [a, b])
    one, two = await db.connect(dsn), await db.connect(dsn)
    try:
        first = one.transaction()
        await first.start()
        await finish(one, [a])
        second = two.transaction()
        await second.start()
        blocked = asyncio.ensure_future(finish(two, [b]))
        await asyncio.sleep(0.3)
        assert not blocked.done()  # waits for the row lock of the waiting job
        await first.commit()
        assert await asyncio.wait_for(blocked, 10) == [b]
        await second.commit()
    finally:
        await one.close()
        await two.close()
    assert await statuses(conn, [final]) == ["queued"]


async def test_the_sweep_settles_a_job_inserted_while_its_dependency_finished(
    conn: asyncpg.Connection, dsn: str
) -> None:
    """The statement that finishes a job cannot see a dependent whose insert has not
    committed yet: the maintenance sweep releases it."""
    a = await insert(conn, [])
    app = await db.connect(dsn)
    try:
        tx = app.transaction()
        await tx.start()
        late = await insert(app, [a])
        await finish(conn, [a])
        await tx.commit()
    finally:
        await app.close()
    assert await statuses(conn, [late]) == ["waiting"]
    step = await conn.fetchrow(QUERIES["job_settle_waiting"], 0, 1000)
    assert (step["last_id"], step["settled"]) == (0, 1)
    assert await statuses(conn, [late]) == ["queued"]


async def test_the_sweep_walks_the_waiting_jobs_in_steps(conn: asyncpg.Connection) -> None:
    ids = await chain(conn, 6)
    step = await conn.fetchrow(QUERIES["job_settle_waiting"], 0, 2)
    assert (step["last_id"], step["settled"]) == (ids[2], 0)
    step = await conn.fetchrow(QUERIES["job_settle_waiting"], ids[2], 2)
    assert (step["last_id"], step["settled"]) == (ids[4], 0)
    step = await conn.fetchrow(QUERIES["job_settle_waiting"], ids[4], 2)
    assert (step["last_id"], step["settled"]) == (0, 0)


async def test_a_confined_role_depends_only_on_its_tenants_jobs(
    server_dsn: str, dsn: str, conn: asyncpg.Connection
) -> None:
    theirs = await conn.fetchval(
        "INSERT INTO pgwake.jobs (tenant_id, kind) VALUES ('other', 'k') RETURNING id"
    )
    async with fresh_role(server_dsn, dsn, "deps") as role:
        await conn.execute("SELECT pgwake.confine_role_to_tenant($1, 'acme')", role)
        app = await db.connect(as_user(dsn, role))
        try:
            ours = await app.fetchval(
                "INSERT INTO pgwake.jobs (tenant_id, kind) VALUES ('acme', 'k') RETURNING id"
            )
            waits = await app.fetchval(
                "INSERT INTO pgwake.jobs (tenant_id, kind, depends_on, run_anyway) "
                "VALUES ('acme', 'k', $1, true) RETURNING id",
                [ours],
            )
            assert await statuses(conn, [waits]) == ["waiting"]
            # Another tenant's job: the words of a job that does not exist.
            with pytest.raises(asyncpg.ForeignKeyViolationError, match=MISSING.format(theirs)):
                await app.execute(
                    "INSERT INTO pgwake.jobs (tenant_id, kind, depends_on) "
                    "VALUES ('acme', 'k', $1)",
                    [theirs],
                )
            # It cannot release its waiting job itself, nor change what it waits for.
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await app.execute("SELECT pgwake.jobs_recheck_waiting($1)", [waits])
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await app.execute("UPDATE pgwake.jobs SET depends_on = NULL")
            assert await app.fetchval("SELECT waiting FROM pgwake.tenant_backlog") == 1
        finally:
            await app.close()
    await finish(conn, [ours])
    assert await statuses(conn, [waits]) == ["queued"]


GRAPHS = st.lists(
    st.tuples(
        st.lists(st.integers(min_value=0, max_value=20), max_size=4),
        st.booleans(),
        st.sampled_from(["succeeded", "succeeded", "failed", "cancelled"]),
    ),
    min_size=1,
    max_size=12,
)


async def settle_graph(
    conn: asyncpg.Connection, graph: list[tuple[list[int], bool, str]], seed: int
) -> None:
    """Insert the graph, finish every runnable job with its outcome in an order drawn
    from ``seed`` until none is left, and compare each job's end with the model."""
    await conn.execute("DELETE FROM pgwake.jobs")
    order = random.Random(seed)
    ids: list[int] = []
    parents_of: list[set[int]] = []
    for deps, anyway, _ in graph:
        parents = {ids[d % len(ids)] for d in deps} if ids else set()
        parents_of.append(parents)
        ids.append(await insert(conn, sorted(parents), run_anyway=anyway))
    outcome = {job_id: spec[2] for job_id, spec in zip(ids, graph, strict=True)}
    while True:
        ready = [
            r["id"] for r in await conn.fetch("SELECT id FROM pgwake.jobs WHERE status = 'queued'")
        ]
        if not ready:
            break
        job_id = order.choice(sorted(ready))
        await finish(conn, [job_id], outcome[job_id])
    final = dict(await conn.fetch("SELECT id, status FROM pgwake.jobs"))
    model: dict[int, str] = {}
    for job_id, parents, (_, anyway, result) in zip(ids, parents_of, graph, strict=True):
        broken = any(model[p] != "succeeded" for p in parents)
        model[job_id] = "cancelled" if broken and not anyway else result
    assert final == model


async def test_any_graph_settles_as_its_model_says(conn: asyncpg.Connection) -> None:
    """Random DAGs (each job depends on some earlier ones, maybe run_anyway), every
    runnable job finished with a random outcome in a random order, until none is left:
    each job ends as the model says (ran with its outcome, or cancelled by a broken
    dependency)."""

    @settings(max_examples=40, deadline=None)
    @given(GRAPHS, st.integers(min_value=0, max_value=2**32))
    def try_one(graph: list[tuple[list[int], bool, str]], seed: int) -> None:
        anyio.from_thread.run(settle_graph, conn, graph, seed)

    await anyio.to_thread.run_sync(try_one)


async def test_jobs_show_and_list_name_what_waits_for_what(
    dsn: str, conn: asyncpg.Connection
) -> None:
    a = await insert(conn, [])
    b = await insert(conn, [])
    await finish(conn, [b])
    final = await insert(conn, [a, b])
    later = await insert(conn, [a], run_anyway=True)
    shown = json.loads(pgwake("jobs", "show", str(final), "--json", dsn=dsn).stdout)
    assert shown["depends_on"] == [a, b]
    assert (shown["status"], shown["waiting_for"], shown["run_anyway"]) == ("waiting", 1, False)
    assert shown["depends_on_jobs"] == [
        {"id": a, "kind": "k", "status": "queued"},
        {"id": b, "kind": "k", "status": "succeeded"},
    ]
    assert shown["waited_for_by_jobs"] == []
    text = pgwake("jobs", "show", str(a), dsn=dsn).stdout
    assert "waits for: -\n" in text
    assert f"waited for by: {final} (k, waiting), {later} (k, waiting)\n" in text
    text = pgwake("jobs", "show", str(final), dsn=dsn).stdout
    assert f"waits for: {a} (k, queued), {b} (k, succeeded)\n" in text
    listed = json.loads(pgwake("jobs", "list", "--status", "waiting", "--json", dsn=dsn).stdout)
    assert [j["id"] for j in listed["jobs"]] == [later, final]
    # Once a has succeeded, nothing waits for it any more.
    await finish(conn, [a])
    text = pgwake("jobs", "show", str(a), dsn=dsn).stdout
    assert "waited for by: -\n" in text


async def test_views_and_the_queue_gauges_count_waiting_jobs(conn: asyncpg.Connection) -> None:
    ids = await chain(conn, 3, kind="report")
    rows = await conn.fetch(QUERIES["job_count_active"])
    counted = {(r["status"], r["kind"]): r["jobs"] for r in rows}
    assert counted == {("queued", "_unhandled"): 1, ("waiting", "_unhandled"): 2}
    view = {
        (r["kind"], r["status"]): r["jobs"]
        for r in await conn.fetch("SELECT kind, status, jobs FROM pgwake.queue_status")
    }
    assert view == {("report", "queued"): 1, ("report", "waiting"): 2}
    backlog = await conn.fetchrow("SELECT queued, waiting FROM pgwake.tenant_backlog")
    assert (backlog["queued"], backlog["waiting"]) == (1, 2)
    # The claim never takes them: only the first link is ready.
    worker = await register(conn)
    assert [r["id"] for r in await claim(conn, worker, 10, kinds=["report"])] == [ids[0]]


async def test_a_dependency_failed_by_a_crashed_workers_put_back_cancels_its_dependents(
    conn: asyncpg.Connection,
) -> None:
    a = await insert(conn, [], max_attempts=1)
    final = await insert(conn, [a])
    worker = await register(conn)
    await conn.execute(
        "UPDATE pgwake.jobs SET status = 'running', claimed_by = $2, attempts = 1 WHERE id = $1",
        a,
        worker,
    )
    rows = await conn.fetch(QUERIES["job_put_back_held"], worker, "crashed", True)
    assert [(r["id"], r["status"]) for r in rows] == [(a, "failed")]
    assert await statuses(conn, [final]) == ["cancelled"]


async def test_outcome_writes_that_make_jobs_ready_wake_the_claimer(
    dsn: str, conn: asyncpg.Connection
) -> None:
    """The completer calls ``on_settled`` after a write that released a waiting job or
    inserted a child job (the claimer then looks at once instead of at the end of a
    stream's pause, which a NOTIFY does not end), and not after one that did neither."""
    first, second = await chain(conn, 2)
    alone = await insert(conn, [])
    worker = await register(conn)
    running = dict(
        await conn.fetch(
            "UPDATE pgwake.jobs SET status = 'running', claimed_by = $2, "
            "attempts = attempts + 1, started_at = now() WHERE id = ANY ($1::bigint[]) "
            "RETURNING id, attempts",
            [first, alone],
            worker,
        )
    )
    child_id = await conn.fetchval("SELECT nextval('pgwake.jobs_id_seq')")
    woken: list[int] = []
    stored = anyio.Event()
    pool = db.new_pool(dsn, size=2)
    await db.open_pool(pool, dsn)
    completer = Completer(pool, worker, on_settled=lambda: woken.append(len(written)))
    written: list[list[int]] = []

    def note(outcomes: Sequence[Outcome]) -> None:
        written.append([o.job_id for o in outcomes])
        stored.set()

    completer.when_stored(note)

    async def write(outcome: Outcome) -> None:
        nonlocal stored
        stored = anyio.Event()
        completer.submit(outcome)
        with anyio.fail_after(30):
            await stored.wait()

    try:
        async with anyio.create_task_group() as tg:
            await tg.start(completer.run)
            # Nothing waits for this job: no wake.
            await write(Outcome(alone, running[alone], Status.SUCCEEDED))
            assert woken == []
            # Its success releases the second link: one wake, before the batch is
            # reported stored.
            await write(Outcome(first, running[first], Status.SUCCEEDED))
            assert woken == [1]
            assert await statuses(conn, [second]) == ["queued"]
            # A success that enqueued a child: one wake.
            attempt = await conn.fetchval(
                "UPDATE pgwake.jobs SET status = 'running', claimed_by = $2, "
                "attempts = attempts + 1, started_at = now() WHERE id = $1 RETURNING attempts",
                second,
                worker,
            )
            child = ChildJob(id=child_id, tenant_id="default", kind="k", payload={})
            await write(Outcome(second, attempt, Status.SUCCEEDED, children=[child]))
            assert woken == [1, 2]
            assert await statuses(conn, [child_id]) == ["queued"]
            # A fenced-off write (the job is no longer held) changes nothing: no wake.
            await write(Outcome(first, running[first], Status.SUCCEEDED))
            assert woken == [1, 2]
            completer.close()
    finally:
        await pool.close()
