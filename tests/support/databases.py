"""Databases and roles of a test's own on the session's server.

Every database and role a test makes is named ``pgwake_t_...``, so anything a run left
behind is easy to find; both context managers drop what they created in a
``finally``, so a test that fails inside them leaves nothing (tests/test_cleanup.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
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


def new_database_name() -> str:
    return f"{DATABASE_PREFIX}{uuid.uuid4().hex[:12]}"


@contextlib.asynccontextmanager
async def fresh_database(
    server_dsn: str, template: str | None, *, spares: SpareClones | None = None
) -> AsyncIterator[str]:
    """Create a uniquely named database (a copy of ``template`` when given), yield its
    DSN, drop it afterwards whether the code inside passed or failed. With ``spares``
    (clones of ``template``, or of ``template1`` for None), the database is one made
    ahead and its drop is left to them, unless they cannot make or drop any."""
    if spares is not None:
        name = await spares.take()
        if name is not None:
            try:
                yield with_database(server_dsn, name)
            finally:
                await spares.drop(name)
            return
    name = new_database_name()
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


@contextlib.asynccontextmanager
async def fresh_databases(
    server_dsn: str, template: str | None, count: int, *, at_once: int = 4
) -> AsyncIterator[list[str]]:
    """``count`` databases as ``fresh_database`` makes them, their DSNs: made, and
    dropped afterwards whether the code inside passed or failed, ``at_once`` at a time
    (the server syncs their files, and a drop waits for a checkpoint: side by side these
    waits overlap, one after another they add up)."""
    names = [new_database_name() for _ in range(count)]
    clause = f' TEMPLATE "{template}"' if template else ""
    made: list[str] = []
    gate = asyncio.Semaphore(at_once)

    async def run(statement: str) -> None:
        async with gate:
            admin = await asyncpg.connect(server_dsn)
            try:
                await admin.execute(statement)
            finally:
                await admin.close()

    async def make(name: str) -> None:
        await run(f'CREATE DATABASE "{name}"{clause}')
        made.append(name)

    try:
        async with asyncio.TaskGroup() as tg:
            for name in names:
                tg.create_task(make(name))
        yield [with_database(server_dsn, name) for name in names]
    finally:
        async with asyncio.TaskGroup() as tg:
            for name in made:
                tg.create_task(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


class SpareClones:
    """Copies of a template made ahead, and the databases of finished tests dropped,
    by a thread of their own while tests run.

    ``CREATE DATABASE ... TEMPLATE`` takes a few hundred milliseconds, most of it the
    server writing and syncing files, and a drop after it a checkpoint's wait; done
    while the next test runs, a test's fresh database costs it nothing. One thread does
    both, one statement at a time (a drop beside a create waits for the create's writes).

    Invariants: at most ``depth`` clones wait at a time; a clone is handed out once
    (``take``); every clone handed out and given back with ``drop``, and every clone
    nobody took, is dropped ``WITH (FORCE)`` by the time ``close`` returns. If a
    statement fails, the thread drops what it can and stops: ``take`` returns None from
    then on (the caller makes its own database) and ``drop`` drops at once.
    """

    def __init__(self, server_dsn: str, template: str, depth: int = 3) -> None:
        self._server_dsn = server_dsn
        self._template = template
        self._depth = depth
        self._ready: list[str] = []
        self._doomed: list[str] = []
        self._changed = threading.Condition()
        self._closing = False
        self._stopped = False
        self._thread = threading.Thread(target=self._main, name="spare clones", daemon=True)
        self._thread.start()

    async def take(self) -> str | None:
        """The name of a clone made ahead (waiting for the one under way), or None when
        clones cannot be made."""
        return await asyncio.to_thread(self._take)

    def _take(self) -> str | None:
        with self._changed:
            while not self._ready and not self._stopped and not self._closing:
                self._changed.wait()
            if not self._ready:
                return None
            name = self._ready.pop(0)
            self._changed.notify_all()
            return name

    async def drop(self, name: str) -> None:
        """Have the database ``name`` dropped (by the thread, or now if it stopped)."""
        with self._changed:
            if not self._stopped:
                self._doomed.append(name)
                self._changed.notify_all()
                return
        await _drop_now(self._server_dsn, [name])

    def _main(self) -> None:
        try:
            asyncio.run(self._work())
        finally:
            with self._changed:
                self._stopped = True
                left, self._doomed = self._doomed, []
                self._changed.notify_all()
            if left:  # the thread failed with drops pending: one more try
                asyncio.run(_drop_now(self._server_dsn, left))

    async def _work(self) -> None:
        admin = await asyncpg.connect(self._server_dsn)
        try:
            while True:
                with self._changed:
                    while (
                        not self._doomed and len(self._ready) >= self._depth and not self._closing
                    ):
                        self._changed.wait()
                    # A test waiting for a clone comes first; then the drops.
                    if self._doomed and (self._ready or self._closing):
                        doomed: str | None = self._doomed.pop(0)
                    elif self._closing:
                        break
                    else:
                        doomed = None
                if doomed is not None:
                    await admin.execute(f'DROP DATABASE IF EXISTS "{doomed}" WITH (FORCE)')
                    continue
                name = new_database_name()
                await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self._template}"')
                with self._changed:
                    self._ready.append(name)
                    self._changed.notify_all()
        finally:
            # Closing, or a statement failed: the clones nobody took go (none is handed
            # out once they are out of the list).
            with self._changed:
                left, self._ready = self._ready, []
            try:
                for name in left:
                    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await admin.close()

    def close(self) -> None:
        """Drop what waits to be dropped and the clones nobody took; stop the thread."""
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        self._thread.join(120)


async def _drop_now(server_dsn: str, names: list[str]) -> None:
    admin = await asyncpg.connect(server_dsn)
    try:
        for name in names:
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
