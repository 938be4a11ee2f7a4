"""Forward-only schema migrations from ``sql/migrations/NNNN_description.sql``, each
marked as breaking older workers or compatible with them.

A migration file starts with its mark, ``-- pgwake: compatible`` or ``-- pgwake:
breaking``. Compatible means that every worker able to run against the schema before it
(a worker of that schema, or an older one that schema accepts) runs correctly against
the new one too: the migration only adds what such workers never read, and nothing
they do breaks what it adds. Anything else is breaking.

Invariants:
- Migrations are applied in version order, each in its own transaction, and recorded in
  ``pgwake.schema_migrations`` with a checksum of the file without its mark line and,
  in ``breaking``, the mark. The mark is recorded once: a migration recorded before
  pgwake recorded marks gets its mark from its file at the next ``migrate``, and a mark
  that differs from the recorded one is refused like a changed file.
- ``migrate`` holds a session advisory lock for its whole run, so concurrent runs
  serialise: the second finds nothing left to do.
- An applied migration whose file changed since is an error, never silently skipped.
- A worker runs against the schema it knows, or a newer one when every migration past
  its own is marked compatible (:func:`check_schema`); never against an older one, a
  newer one with a breaking migration, or one without pgwake. ``migrate`` of an older
  pgwake against such a newer compatible schema checks what it knows and applies
  nothing, so an old worker's unit (which migrates before each start) still starts.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from listener import locks
from listener.errors import SchemaMismatchError
from listener.paths import sql_dir
from listener.queries import QUERIES

# A plain connection or one borrowed from a pool.
Conn = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy
Record = asyncpg.Record

_FILE = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")
# The first line of every migration file.
_MARK = re.compile(r"-- pgwake: (?P<mark>compatible|breaking)")
MARKS = ("-- pgwake: compatible", "-- pgwake: breaking")


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file."""

    version: int
    name: str
    sql: str
    # Whether it breaks workers of the schemas before it (its first line).
    breaking: bool

    @property
    def label(self) -> str:
        """``NNNN_name``, as the file is called."""
        return f"{self.version:04d}_{self.name}"

    @property
    def checksum(self) -> str:
        """sha256 of the file's text after its mark line (the mark is recorded in a
        column of its own, and compared on its own)."""
        return hashlib.sha256(self.sql.split("\n", 1)[1].encode()).hexdigest()


def parse_mark(name: str, text: str) -> bool:
    """Whether the migration file ``name`` is marked breaking; a ValueError naming the
    file when its first line is not one of :data:`MARKS`."""
    match = _MARK.fullmatch(text.split("\n", 1)[0])
    if match is None or "\n" not in text:
        raise ValueError(
            f"migration file {name} does not start with its mark, a first line "
            f"{MARKS[0]!r} or {MARKS[1]!r} (see CONTRIBUTING.md, Add a migration)"
        )
    return match["mark"] == "breaking"


def load_migrations(directory: Path | None = None) -> list[Migration]:
    """All migration files, in order; gaps and duplicates are errors."""
    directory = directory or sql_dir() / "migrations"
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE.match(path.name)
        if match is None:
            raise ValueError(f"migration file {path.name} is not named NNNN_description.sql")
        text = path.read_text(encoding="utf-8")
        found.append(
            Migration(int(match["version"]), match["name"], text, parse_mark(path.name, text))
        )
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise ValueError(
                f"migrations must be numbered 1, 2, 3...; found {migration.version:04d} "
                f"where {expected:04d} was expected"
            )
    return found


def latest_version() -> int:
    """The schema version this pgwake knows."""
    return len(load_migrations())


async def schema_version(conn: Conn) -> int:
    """The version applied in the database (0 when never migrated)."""
    try:
        version: int = await conn.fetchval(QUERIES["migration_get_latest"])
    except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
        return 0
    return version


async def migrate(conn: asyncpg.Connection) -> list[Migration]:
    """Apply pending migrations; return the ones applied (empty when up to date, and
    when the database is at a newer schema compatible with this pgwake)."""
    migrations = load_migrations()
    await conn.execute(QUERIES["migration_lock"], locks.MIGRATE.classid)
    try:
        await conn.execute(QUERIES["migration_create_schema"])
        await conn.execute(QUERIES["migration_create_table"])
        await conn.execute(QUERIES["migration_create_column_breaking"])
        rows = await conn.fetch(QUERIES["migration_list"])
        applied = {row["version"]: row for row in rows}
        known = {m.version: m for m in migrations}
        ahead = [applied[v] for v in sorted(set(applied) - set(known))]
        if ahead:
            refuse_breaking(ahead, len(migrations))
            missing = sorted(set(known) - set(applied))
            if missing:
                raise SchemaMismatchError(
                    f"the database has migration {ahead[0]['version']:04d} but not "
                    f"{missing[0]:04d}; its schema_migrations table is not one pgwake wrote"
                )
        for version, row in applied.items():
            if version not in known:
                continue
            migration = known[version]
            if row["checksum"] != migration.checksum:
                raise SchemaMismatchError(
                    f"migration {version:04d}_{row['name']} was changed after it was "
                    "applied; migrations are forward-only, add a new one instead"
                )
            if row["breaking"] is None:
                await conn.execute(QUERIES["migration_set_breaking"], version, migration.breaking)
            elif row["breaking"] != migration.breaking:
                raise SchemaMismatchError(
                    f"migration {version:04d}_{row['name']} was applied marked "
                    f"{_mark(row['breaking'])} and its file now says "
                    f"{_mark(migration.breaking)}; a mark is recorded when its migration "
                    "is applied and never changes"
                )
        done: list[Migration] = []
        for migration in migrations:
            if migration.version in applied:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    QUERIES["migration_record"],
                    migration.version,
                    migration.name,
                    migration.checksum,
                    migration.breaking,
                )
            done.append(migration)
        return done
    finally:
        await conn.execute(QUERIES["migration_unlock"], locks.MIGRATE.classid)


def _mark(breaking: bool | None) -> str:
    return "breaking" if breaking is not False else "compatible"


def refuse_breaking(newer: Sequence[Record], known: int) -> None:
    """Raise :class:`SchemaMismatchError` naming the first of the migrations past this
    pgwake's schema (``known``) that is not marked compatible, if any."""
    for row in newer:
        if row["breaking"] is False:
            continue
        why = "marked breaking" if row["breaking"] else "not marked compatible"
        raise SchemaMismatchError(
            f"the database schema is at version {newer[-1]['version']:04d}, newer than "
            f"this pgwake knows ({known:04d}), and migration "
            f"{row['version']:04d}_{row['name']} is {why} for older workers; "
            "upgrade pgwake"
        )


async def check_schema(conn: Conn, known: int | None = None) -> int:
    """The database's schema version, when a worker that knows schema ``known`` (this
    pgwake's by default) can run against it: the same version, or a newer one whose every
    migration past ``known`` is marked compatible. Else :class:`SchemaMismatchError`
    saying what to do: migrate (an older schema, or none) or upgrade pgwake (a newer one
    with a breaking migration)."""
    have = await schema_version(conn)
    want = latest_version() if known is None else known
    if have == want:
        return have
    if have == 0:
        raise SchemaMismatchError(
            "pgwake's schema is not installed in this database; run `pgwake migrate`"
        )
    if have < want:
        raise SchemaMismatchError(
            f"the database schema is at version {have:04d}, this pgwake needs {want:04d}; "
            "run `pgwake migrate`"
        )
    refuse_breaking(await newer_migrations(conn, want), want)
    return have


async def newer_migrations(conn: Conn, known: int) -> list[Record]:
    """The migrations applied past schema ``known`` (version, name, breaking), in order."""
    return list(await conn.fetch(QUERIES["migration_list_newer"], known))
