"""Forward-only schema migrations from ``sql/migrations/NNNN_description.sql``.

Invariants:
- Migrations are applied in version order, each in its own transaction, and recorded in
  ``pgwake.schema_migrations`` with a checksum of the file.
- ``migrate`` holds a session advisory lock for its whole run, so concurrent runs
  serialise: the second finds nothing left to do.
- An applied migration whose file changed since is an error, never silently skipped.
- The worker runs only against exactly the version it knows (:func:`check_schema`).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from listener import locks
from listener.errors import SchemaMismatchError
from listener.queries import QUERIES, sql_dir

# A plain connection or one borrowed from a pool.
Conn = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy

_FILE = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        """sha256 of the file's text."""
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(directory: Path | None = None) -> list[Migration]:
    """All migration files, in order; gaps and duplicates are errors."""
    directory = directory or sql_dir() / "migrations"
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE.match(path.name)
        if match is None:
            raise ValueError(f"migration file {path.name} is not named NNNN_description.sql")
        found.append(
            Migration(int(match["version"]), match["name"], path.read_text(encoding="utf-8"))
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
    """Apply pending migrations; return the ones applied (empty when up to date)."""
    migrations = load_migrations()
    await conn.execute(QUERIES["migration_lock"], locks.MIGRATE.classid)
    try:
        await conn.execute(QUERIES["migration_create_schema"])
        await conn.execute(QUERIES["migration_create_table"])
        rows = await conn.fetch(QUERIES["migration_list"])
        applied = {row["version"]: row for row in rows}
        known = {m.version: m for m in migrations}
        ahead = sorted(set(applied) - set(known))
        if ahead:
            raise SchemaMismatchError(
                f"the database has migration {ahead[-1]:04d}, newer than this pgwake "
                f"knows ({len(migrations):04d}); upgrade pgwake"
            )
        for version, row in applied.items():
            if row["checksum"] != known[version].checksum:
                raise SchemaMismatchError(
                    f"migration {version:04d}_{row['name']} was changed after it was "
                    "applied; migrations are forward-only, add a new one instead"
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
                )
            done.append(migration)
        return done
    finally:
        await conn.execute(QUERIES["migration_unlock"], locks.MIGRATE.classid)


async def check_schema(conn: Conn) -> int:
    """Raise :class:`SchemaMismatchError` unless the database is at our version."""
    have = await schema_version(conn)
    want = latest_version()
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
    raise SchemaMismatchError(
        f"the database schema is at version {have:04d}, newer than this pgwake knows "
        f"({want:04d}); upgrade pgwake"
    )
