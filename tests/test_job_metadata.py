"""metadata and created_by (issue 19): context that is not the handler's input, checked
at INSERT like the payload, found through its index, listed with ``--meta``; the
inserting role in created_by, which a confined role cannot forge."""

from __future__ import annotations

import json

import anyio.from_thread
import anyio.to_thread
import asyncpg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from listener import db
from tests.support.cli import pgwake
from tests.support.databases import as_user, fresh_role


async def test_metadata_is_an_object_of_bounded_size(conn: asyncpg.Connection) -> None:
    none = await conn.fetchrow("INSERT INTO pgwake.jobs (kind) VALUES ('k') RETURNING metadata")
    assert none["metadata"] is None
    for value, constraint in (
        ([1, 2], "jobs_metadata_must_be_json_object"),
        ("text", "jobs_metadata_must_be_json_object"),
        ({"big": "x" * 65536}, "jobs_metadata_at_most_64kib"),
    ):
        with pytest.raises(asyncpg.CheckViolationError) as e:
            await conn.execute("INSERT INTO pgwake.jobs (kind, metadata) VALUES ('k', $1)", value)
        assert e.value.constraint_name == constraint
    fits = {"big": "x" * 65000}
    assert (
        await conn.fetchval(
            "INSERT INTO pgwake.jobs (kind, metadata) VALUES ('k', $1) RETURNING metadata", fits
        )
        == fits
    )


async def test_created_by_is_the_inserting_role_and_a_confined_role_cannot_forge_it(
    server_dsn: str, dsn: str, conn: asyncpg.Connection
) -> None:
    mine = await conn.fetchval("INSERT INTO pgwake.jobs (kind) VALUES ('k') RETURNING created_by")
    assert mine == await conn.fetchval("SELECT current_user")
    async with fresh_role(server_dsn, dsn, "meta") as role:
        await conn.execute("SELECT pgwake.confine_role_to_tenant($1, 'acme')", role)
        app = await db.connect(as_user(dsn, role))
        try:
            row = await app.fetchrow(
                "INSERT INTO pgwake.jobs (tenant_id, kind, metadata) "
                "VALUES ('acme', 'k', '{\"request\": \"r-1\"}') RETURNING created_by, metadata"
            )
            assert (row["created_by"], row["metadata"]) == (role, {"request": "r-1"})
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await app.execute(
                    "INSERT INTO pgwake.jobs (tenant_id, kind, created_by) "
                    "VALUES ('acme', 'k', 'someone_else')"
                )
        finally:
            await app.close()


async def test_containment_uses_the_metadata_index(conn: asyncpg.Connection) -> None:
    await conn.execute(
        "INSERT INTO pgwake.jobs (kind, metadata) "
        "SELECT 'k', jsonb_build_object('batch', 'b' || (g % 100)) FROM generate_series(1, 2000) g"
    )
    await conn.execute("INSERT INTO pgwake.jobs (kind) SELECT 'k' FROM generate_series(1, 2000)")
    await conn.execute("ANALYZE pgwake.jobs")
    plan = "\n".join(
        r[0]
        for r in await conn.fetch(
            'EXPLAIN SELECT id FROM pgwake.jobs WHERE metadata @> \'{"batch": "b7"}\''
        )
    )
    assert "jobs_metadata_idx" in plan, plan
    # Jobs without metadata are not in the index at all.
    size = await conn.fetchval(
        'SELECT count(*) FROM pgwake.jobs WHERE metadata @> \'{"batch": "b7"}\''
    )
    assert size == 20


async def test_jobs_list_meta_filters_by_every_pair(dsn: str, conn: asyncpg.Connection) -> None:
    ids = {}
    for name, meta in (
        ("both", {"batch": "b1", "user": "ann"}),
        ("batch", {"batch": "b1", "user": "bob"}),
        ("other", {"batch": "b2"}),
        ("number", {"batch": 1}),
        ("none", None),
    ):
        ids[name] = await conn.fetchval(
            "INSERT INTO pgwake.jobs (kind, metadata) VALUES ($1, $2) RETURNING id", name, meta
        )

    def listed(*meta: str) -> list[int]:
        args = [a for m in meta for a in ("--meta", m)]
        done = pgwake("jobs", "list", "--json", *args, dsn=dsn)
        assert done.returncode == 0, done.stderr
        return sorted(j["id"] for j in json.loads(done.stdout)["jobs"])

    assert listed("batch=b1") == sorted([ids["both"], ids["batch"]])
    assert listed("batch=b1", "user=ann") == [ids["both"]]
    assert listed("batch=1") == []  # a string never matches the number 1
    assert listed() == sorted(ids.values())
    table = pgwake("jobs", "list", "--meta", "user=ann", dsn=dsn).stdout.splitlines()
    assert [line.split()[0] for line in table[1:]] == [str(ids["both"])]
    for bad, words in (
        ("novalue", "--meta takes KEY=VALUE"),
        ("=v", "--meta takes KEY=VALUE"),
    ):
        done = pgwake("jobs", "list", "--meta", bad, dsn=dsn)
        assert done.returncode == 2
        assert words in done.stderr
    done = pgwake("jobs", "list", "--meta", "a=1", "--meta", "a=2", dsn=dsn)
    assert done.returncode == 2
    assert "two values" in done.stderr
    shown = json.loads(pgwake("jobs", "show", str(ids["both"]), "--json", dsn=dsn).stdout)
    assert shown["metadata"] == {"batch": "b1", "user": "ann"}
    assert shown["created_by"] == await conn.fetchval("SELECT current_user")


KEYS = st.sampled_from(["a", "b", "c"])
VALUES = st.sampled_from(["x", "y", "é", "=", ""])


async def test_containment_matches_a_model(conn: asyncpg.Connection) -> None:
    """Any metadata and any filter: the rows SQL returns are those whose metadata has
    every pair of the filter."""

    async def check(rows: list[dict[str, str]], wanted: dict[str, str]) -> None:
        await conn.execute("DELETE FROM pgwake.jobs")
        ids = [
            await conn.fetchval(
                "INSERT INTO pgwake.jobs (kind, metadata) VALUES ('k', $1) RETURNING id", meta
            )
            for meta in rows
        ]
        found = {
            r["id"]
            for r in await conn.fetch(
                "SELECT id FROM pgwake.jobs WHERE metadata @> $1::jsonb", wanted
            )
        }
        model = {i for i, meta in zip(ids, rows, strict=True) if wanted.items() <= meta.items()}
        assert found == model

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.dictionaries(KEYS, VALUES), max_size=6), st.dictionaries(KEYS, VALUES))
    def try_one(rows: list[dict[str, str]], wanted: dict[str, str]) -> None:
        anyio.from_thread.run(check, rows, wanted)

    await anyio.to_thread.run_sync(try_one)
