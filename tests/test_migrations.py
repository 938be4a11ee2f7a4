"""Migrations, schema.sql and the named queries."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import replace
from pathlib import Path

import asyncpg
import pytest

from listener import db
from listener.cli.bench.queries import BENCH_QUERIES
from listener.errors import SchemaMismatchError
from listener.migrate import check_schema, latest_version, load_migrations, migrate
from listener.paths import sql_dir
from listener.queries import QUERIES, parse

# A catalog snapshot that tells two schemas apart: columns (and their domains), domains,
# constraints (of tables and of domains), indexes,
# triggers, functions (bodies and options), table and view options, policies, views'
# definitions, sequences, comments, grants, and the rows the schema inserts.
CATALOG = """
SELECT 'column' AS what, c.table_name || '.' || c.column_name AS name,
       concat_ws(' ', c.data_type, c.domain_schema || '.' || c.domain_name, c.is_nullable,
                 c.column_default, c.is_identity) AS def
  FROM information_schema.columns c WHERE c.table_schema = 'pgwake'
UNION ALL
SELECT 'domain', t.typname,
       concat_ws(' ', format_type(t.typbasetype, t.typtypmod), t.typnotnull::text,
                 t.typdefault, coalesce(t.typacl::text, ''))
  FROM pg_type t WHERE t.typnamespace = 'pgwake'::regnamespace AND t.typtype = 'd'
UNION ALL
SELECT 'constraint', coalesce(nullif(conrelid, 0)::regclass::text, contypid::regtype::text)
                     || '.' || conname, pg_get_constraintdef(oid)
  FROM pg_constraint WHERE connamespace = 'pgwake'::regnamespace
UNION ALL
SELECT 'index', indexname, indexdef FROM pg_indexes WHERE schemaname = 'pgwake'
UNION ALL
SELECT 'trigger', tgname, pg_get_triggerdef(t.oid)
  FROM pg_trigger t JOIN pg_class r ON r.oid = t.tgrelid
 WHERE r.relnamespace = 'pgwake'::regnamespace AND NOT t.tgisinternal
UNION ALL
SELECT 'function', p.proname, pg_get_functiondef(p.oid)
  FROM pg_proc p WHERE p.pronamespace = 'pgwake'::regnamespace
UNION ALL
SELECT 'options', relname,
       coalesce(array_to_string(reloptions, ','), '') || ' rls=' || relrowsecurity::text
  FROM pg_class WHERE relnamespace = 'pgwake'::regnamespace AND relkind = 'r'
UNION ALL
SELECT 'policy', tablename || '.' || policyname,
       concat_ws(' ', cmd, roles::text, qual, with_check)
  FROM pg_policies WHERE schemaname = 'pgwake'
UNION ALL
SELECT 'function-options', p.proname,
       concat_ws(' ', p.prosecdef::text, array_to_string(p.proconfig, ','))
  FROM pg_proc p WHERE p.pronamespace = 'pgwake'::regnamespace
-- Beyond the tables: what each view says, each function in full by its signature, the
-- triggers' enabled state, the sequences, the comments on every object, the grants,
-- and the rows the schema itself inserts.
UNION ALL
SELECT 'view', c.relname,
       pg_get_viewdef(c.oid, true)
           || ' options=' || coalesce(array_to_string(c.reloptions, ','), '')
  FROM pg_class c WHERE c.relnamespace = 'pgwake'::regnamespace AND c.relkind IN ('v', 'm')
UNION ALL
SELECT 'function-body', p.oid::regprocedure::text,
       concat_ws(' ', pg_get_functiondef(p.oid), p.provolatile, p.proleakproof::text)
  FROM pg_proc p WHERE p.pronamespace = 'pgwake'::regnamespace
UNION ALL
SELECT 'trigger-enabled', r.relname || '.' || t.tgname, t.tgenabled::text
  FROM pg_trigger t JOIN pg_class r ON r.oid = t.tgrelid
 WHERE r.relnamespace = 'pgwake'::regnamespace AND NOT t.tgisinternal
UNION ALL
SELECT 'sequence', s.sequencename,
       concat_ws(' ', s.data_type, s.start_value, s.min_value, s.max_value, s.increment_by,
                 s.cycle, s.cache_size,
                 (SELECT pg_describe_object(d.refclassid, d.refobjid, d.refobjsubid)
                    FROM pg_depend d
                   WHERE d.classid = 'pg_class'::regclass
                     AND d.objid = (quote_ident(s.schemaname) || '.'
                                    || quote_ident(s.sequencename))::regclass
                     AND d.deptype IN ('a', 'i')))
  FROM pg_sequences s WHERE s.schemaname = 'pgwake'
UNION ALL
SELECT 'options-rls-forced', c.relname, c.relkind::text || ' ' || c.relforcerowsecurity::text
  FROM pg_class c WHERE c.relnamespace = 'pgwake'::regnamespace
UNION ALL
SELECT 'comment', pg_describe_object(d.classoid, d.objoid, d.objsubid), d.description
  FROM pg_description d
 WHERE (pg_identify_object(d.classoid, d.objoid, d.objsubid)).schema = 'pgwake'
    OR (d.classoid = 'pg_namespace'::regclass AND d.objoid = 'pgwake'::regnamespace)
UNION ALL
SELECT 'grant', 'schema pgwake', coalesce(n.nspacl::text, '')
  FROM pg_namespace n WHERE n.oid = 'pgwake'::regnamespace
UNION ALL
SELECT 'grant', c.relkind::text || ' ' || c.relname, coalesce(c.relacl::text, '')
  FROM pg_class c WHERE c.relnamespace = 'pgwake'::regnamespace
UNION ALL
SELECT 'grant', c.relname || '.' || a.attname, a.attacl::text
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
 WHERE c.relnamespace = 'pgwake'::regnamespace AND a.attacl IS NOT NULL
UNION ALL
SELECT 'grant', p.oid::regprocedure::text, coalesce(p.proacl::text, '')
  FROM pg_proc p WHERE p.pronamespace = 'pgwake'::regnamespace
UNION ALL
SELECT 'grant', 'default ' || d.defaclobjtype::text, d.defaclacl::text
  FROM pg_default_acl d WHERE d.defaclnamespace = 'pgwake'::regnamespace
UNION ALL
SELECT 'row', 'leaders', l.name FROM pgwake.leaders l
ORDER BY 1, 2, 3
"""


async def test_migrations_produce_exactly_schema_sql(
    server_dsn: str, dsn: str, empty_dsn: str
) -> None:
    from_migrations = await db.connect(dsn)
    from_schema = await db.connect(empty_dsn)
    try:
        await from_schema.execute((sql_dir() / "schema.sql").read_text())
        migrated = [tuple(r) for r in await from_migrations.fetch(CATALOG)]
        declared = [tuple(r) for r in await from_schema.fetch(CATALOG)]
    finally:
        await from_migrations.close()
        await from_schema.close()
    assert migrated, "the catalog query found nothing"
    # Every part of the snapshot finds something, so none of them compares nothing.
    kinds = {"column", "constraint", "index", "trigger", "function", "options", "policy"}
    kinds |= {"view", "function-body", "trigger-enabled", "sequence", "comment", "grant", "row"}
    kinds |= {"domain"}
    assert kinds <= {r[0] for r in migrated}
    assert migrated == declared


async def test_migrate_is_idempotent_and_safe_concurrently(empty_dsn: str) -> None:
    conns = [await db.connect(empty_dsn) for _ in range(3)]
    try:
        results = await asyncio.gather(*(migrate(c) for c in conns))
        applied = sorted(len(r) for r in results)
        assert applied == [0, 0, latest_version()]
        assert await migrate(conns[0]) == []
        rows = await conns[0].fetch("SELECT version, name FROM pgwake.schema_migrations")
        assert [(r["version"], r["name"]) for r in rows] == [
            (m.version, m.name) for m in load_migrations()
        ]
        assert await check_schema(conns[0]) == latest_version()
    finally:
        for c in conns:
            await c.close()


async def test_worker_refuses_an_unmigrated_database(empty_dsn: str) -> None:
    conn = await db.connect(empty_dsn)
    try:
        with pytest.raises(SchemaMismatchError, match=r"run `pgwake migrate`"):
            await check_schema(conn)
    finally:
        await conn.close()


async def test_worker_refuses_a_newer_schema(conn: asyncpg.Connection) -> None:
    await conn.execute(
        "INSERT INTO pgwake.schema_migrations (version, name, checksum) "
        "VALUES (9999, 'from_the_future', 'x')"
    )
    with pytest.raises(SchemaMismatchError, match=r"newer than this pgwake knows.*upgrade pgwake"):
        await check_schema(conn)
    with pytest.raises(SchemaMismatchError, match="upgrade pgwake"):
        await migrate(conn)


async def test_a_changed_migration_is_refused(conn: asyncpg.Connection) -> None:
    await conn.execute("UPDATE pgwake.schema_migrations SET checksum = 'edited' WHERE version = 1")
    with pytest.raises(SchemaMismatchError, match="changed after it was applied"):
        await migrate(conn)


async def test_every_named_query_prepares(conn: asyncpg.Connection) -> None:
    ddl = {"migration_create_schema", "migration_create_table", "bench_create_fifo_index"}
    ddl.add("migration_create_column_breaking")
    # The runtime queries and the benchmark's (tests/test_queries.py checks their format).
    for name, sql in {**QUERIES, **BENCH_QUERIES}.items():
        if name in ddl:
            await conn.execute(sql)  # idempotent DDL cannot be PREPAREd; run it instead
            continue
        try:
            await conn.prepare(sql)
        except asyncpg.PostgresError as exc:  # pragma: no cover - the failure message
            pytest.fail(f"query {name!r} does not prepare: {exc}")


def test_parse_rejects_duplicates_and_empty_blocks() -> None:
    assert parse("-- name: a\nSELECT 1;\n-- name: b\nSELECT 2;") == {
        "a": "SELECT 1;",
        "b": "SELECT 2;",
    }
    with pytest.raises(ValueError, match="twice"):
        parse("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;")
    with pytest.raises(ValueError, match="empty"):
        parse("-- name: a\n\n-- name: b\nSELECT 2;")


def test_migration_files_are_numbered_without_gaps() -> None:
    migrations = load_migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))


# --- Marks: compatible or breaking (rolling upgrades) -----------------------------------


def test_every_migration_starts_with_its_mark(tmp_path: Path) -> None:
    """Each file's first line is its mark, and a file without one is refused by name."""
    for migration in load_migrations():
        first = migration.sql.split("\n", 1)[0]
        assert first == ("-- pgwake: breaking" if migration.breaking else "-- pgwake: compatible")
    # The marks given to the migrations before marks existed (CHANGELOG.md says why).
    breaking = {m.version for m in load_migrations() if m.breaking}
    assert {1, 2, 4, 9, 11} <= breaking
    assert not {3, 5, 6, 7, 8, 10} & breaking
    (tmp_path / "0001_first.sql").write_text("-- pgwake: compatible\nSELECT 1;\n")
    assert load_migrations(tmp_path)[0].breaking is False
    for text in ("-- 0002_second: no mark\nSELECT 1;\n", "-- pgwake: compatible, mostly\n", ""):
        (tmp_path / "0002_second.sql").write_text(text)
        with pytest.raises(ValueError, match=r"0002_second\.sql does not start with its mark"):
            load_migrations(tmp_path)


def test_the_checksum_leaves_out_the_mark() -> None:
    """The checksum is that of the file without its first line, so the marks added to
    the migrations written before marks left the checksums recorded for them as they
    were."""
    for migration in load_migrations():
        body = migration.sql.split("\n", 1)[1]
        assert migration.checksum == hashlib.sha256(body.encode()).hexdigest()
    first = load_migrations()[0]
    flipped = replace(first, sql=first.sql.replace("breaking", "compatible", 1))
    assert flipped.checksum == first.checksum


async def test_marks_are_recorded_and_filled_in_for_older_databases(
    conn: asyncpg.Connection,
) -> None:
    """migrate records each migration's mark; on a database migrated before marks were
    recorded (no column) it adds the column and fills in the marks from the files."""
    marks = {m.version: m.breaking for m in load_migrations()}
    recorded = "SELECT version, breaking FROM pgwake.schema_migrations ORDER BY version"
    assert {r["version"]: r["breaking"] for r in await conn.fetch(recorded)} == marks
    await conn.execute("ALTER TABLE pgwake.schema_migrations DROP COLUMN breaking")
    assert await migrate(conn) == []
    assert {r["version"]: r["breaking"] for r in await conn.fetch(recorded)} == marks


async def test_a_changed_mark_is_refused(conn: asyncpg.Connection) -> None:
    await conn.execute("UPDATE pgwake.schema_migrations SET breaking = false WHERE version = 2")
    with pytest.raises(
        SchemaMismatchError,
        match=r"0002_tenants was applied marked compatible and its file now says breaking",
    ):
        await migrate(conn)


async def test_a_newer_schema_is_accepted_only_when_every_newer_migration_is_compatible(
    conn: asyncpg.Connection,
) -> None:
    """A worker (check_schema) and `pgwake migrate` of this pgwake accept a database
    migrated further by a newer one while every migration past theirs is marked
    compatible; the first breaking (or unmarked) one is refused by name."""
    known = latest_version()
    add = "INSERT INTO pgwake.schema_migrations (version, name, checksum, breaking) "
    add += "VALUES ($1, $2, 'x', $3)"
    await conn.execute(add, known + 1, "adds_a_column", False)
    await conn.execute(add, known + 2, "adds_an_index", False)
    assert await check_schema(conn) == known + 2
    assert await migrate(conn) == []
    # A worker of an older schema: the same rule, from its own version. The newest
    # breaking migration here refuses the workers before it.
    last = [m for m in load_migrations() if m.breaking][-1]
    with pytest.raises(SchemaMismatchError, match=rf"{last.label} is marked breaking"):
        await check_schema(conn, last.version - 1)
    await conn.execute(add, known + 3, "drops_a_column", True)
    refusal = (
        rf"the database schema is at version {known + 3:04d}, newer than this pgwake knows "
        rf"\({known:04d}\), and migration {known + 3:04d}_drops_a_column is marked breaking "
        r"for older workers; upgrade pgwake"
    )
    with pytest.raises(SchemaMismatchError, match=refusal):
        await check_schema(conn)
    with pytest.raises(SchemaMismatchError, match=refusal):
        await migrate(conn)
    await conn.execute(
        "UPDATE pgwake.schema_migrations SET breaking = NULL WHERE version = $1", known + 3
    )
    with pytest.raises(SchemaMismatchError, match=r"drops_a_column is not marked compatible"):
        await check_schema(conn)
    # A worker that knows the breaking migration runs against it.
    assert await check_schema(conn, known + 3) == known + 3


async def test_an_older_schema_is_refused(conn: asyncpg.Connection) -> None:
    """A worker newer than the database asks for `pgwake migrate`, as before."""
    known = latest_version()
    with pytest.raises(
        SchemaMismatchError,
        match=rf"at version {known:04d}, this pgwake needs {known + 1:04d}; run `pgwake migrate`",
    ):
        await check_schema(conn, known + 1)


# What a worker of an older schema can name: every column of every table and view (its
# type, nullability and default), every function by signature with its result, every
# unique index (what ON CONFLICT relies on) with its definition, every trigger. A
# migration marked compatible may add to this, never take away or change: that is the
# floor of "only additions" a test can check. What a replaced function body or trigger
# does, and whether a new or changed CHECK could refuse what older workers write, is
# for the author and the reviewer to judge.
SURFACE = """
SELECT 'column ' || c.table_name || '.' || c.column_name AS name,
       concat_ws(' ', c.data_type, c.is_nullable, c.column_default) AS def
  FROM information_schema.columns c WHERE c.table_schema = 'pgwake'
UNION ALL
SELECT 'function ' || p.oid::regprocedure::text, pg_get_function_result(p.oid)
  FROM pg_proc p WHERE p.pronamespace = 'pgwake'::regnamespace
UNION ALL
SELECT 'unique index ' || i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
  FROM pg_index i JOIN pg_class r ON r.oid = i.indrelid
 WHERE r.relnamespace = 'pgwake'::regnamespace AND i.indisunique
UNION ALL
SELECT 'trigger ' || r.relname || '.' || t.tgname, ''
  FROM pg_trigger t JOIN pg_class r ON r.oid = t.tgrelid
 WHERE r.relnamespace = 'pgwake'::regnamespace AND NOT t.tgisinternal
"""


async def test_compatible_migrations_take_nothing_away(empty_dsn: str) -> None:
    """Applied one by one, no migration marked compatible removes or changes anything
    in SURFACE that the schema before it had. (Breaking ones may: 0011 replaced
    pgwake.confined_tenants(name), which shows the check sees a removal.)"""
    conn = await asyncpg.connect(empty_dsn)
    taken: dict[str, list[tuple[str, str, str | None]]] = {}
    try:
        await conn.execute(QUERIES["migration_create_schema"])
        before: dict[str, str] = {}
        for migration in load_migrations():
            await conn.execute(migration.sql)
            after = {r["name"]: r["def"] for r in await conn.fetch(SURFACE)}
            taken[migration.label] = [
                (name, old, after.get(name))
                for name, old in before.items()
                if after.get(name) != old
            ]
            before = after
    finally:
        await conn.close()
    assert len(before) > 80, "the surface query found too little"
    assert {label: found for label, found in taken.items() if found} == {
        m.label: taken[m.label] for m in load_migrations() if m.breaking and taken[m.label]
    }
    removed = [name for name, _, now in taken["0011_hostile_roles"] if now is None]
    assert "function pgwake.confined_tenants(name)" in removed
