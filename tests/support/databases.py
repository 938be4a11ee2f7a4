"""Databases and roles of a test's own on the session's server.

Every database and role a test makes is named ``pgwake_t_...``, so anything a run left
behind is easy to find; both context managers drop what they created in a
``finally``, so a test that fails inside them leaves nothing (tests/test_cleanup.py).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from listener.db import with_database

DATABASE_PREFIX = "pgwake_t_"


def database_name(dsn: str) -> str:
    """The database a DSN names (also for unix-socket DSNs with ?host=...)."""
    return urlsplit(dsn).path.lstrip("/")


def as_user(dsn: str, user: str) -> str:
    """``dsn`` with its user replaced by ``user`` (no password)."""
    parts = urlsplit(dsn)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}@{host}"))


@contextlib.asynccontextmanager
async def fresh_database(server_dsn: str, template: str | None) -> AsyncIterator[str]:
    """Create a uniquely named database (a copy of ``template`` when given), yield its
    DSN, drop it afterwards whether the code inside passed or failed."""
    name = f"{DATABASE_PREFIX}{uuid.uuid4().hex[:12]}"
    clause = f' TEMPLATE "{template}"' if template else ""
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"{clause}')
        try:
            yield with_database(server_dsn, name)
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


ROLE_PREFIX = "pgwake_t_"


@contextlib.asynccontextmanager
async def fresh_role(
    server_dsn: str, database_dsn: str, purpose: str, options: str = "LOGIN"
) -> AsyncIterator[str]:
    """Create a uniquely named role (``CREATE ROLE name options``), yield its name, and
    drop it afterwards whether the code inside passed or failed: first what it owns and
    its privileges in the database of ``database_dsn`` (a role with privileges cannot be
    dropped), then the role."""
    name = f"{ROLE_PREFIX}{purpose}_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'CREATE ROLE "{name}" {options}')
        try:
            yield name
        finally:
            await drop_role(admin, database_dsn, name)
    finally:
        await admin.close()


async def drop_role(admin: asyncpg.Connection, database_dsn: str, name: str) -> None:
    """Drop role ``name``: its objects and privileges in ``database_dsn`` first (when
    that database still exists), then the role itself."""
    try:
        local = await asyncpg.connect(database_dsn)
    except asyncpg.InvalidCatalogNameError:
        pass  # the database is gone, and with it what the role held there
    else:
        try:
            await local.execute(f'DROP OWNED BY "{name}"')
        finally:
            await local.close()
    await admin.execute(f'DROP ROLE IF EXISTS "{name}"')
