"""Connections to tenants' own databases: a bounded LRU of small asyncpg pools.

A store owner may keep their data in a database of their own. A handler reaches it with
``async with tenant_pools.connection(tenant_id, dsn) as conn: ...``; the pool for that
tenant is created on first use (``min_size=0``, at most ``per_tenant`` connections).

Invariants:
- At most ``max_connections`` connections are open across all tenant pools, counted as
  sockets opened and not yet closed. Every connection a tenant pool opens goes through
  the pool's ``connect`` hook (:meth:`TenantPools._connector`), which takes one of
  ``max_connections`` slots *before* the socket is opened; the slot comes back only from
  the connection's termination listener, which asyncpg calls however the connection
  ends (``close()``, ``terminate()``, a lost socket), or at once when the connect
  fails. So ``open connections <= slots taken <= max_connections`` whatever the pools
  do inside (keeping idle connections, replacing expired ones), and reusing an idle
  connection takes no new slot. Pools and connections are closed gracefully, which
  waits for the server to end the session, so a slot is not reused while the server
  still lists the old session. (A connection asyncpg ends abruptly instead: idle past
  ``idle_ttl`` in a pool still in use, a failed reset, a connect that fails or is
  cancelled, a graceful close that took longer than ``close_timeout``, gives its slot
  back once its socket is dropped; the server may list that session for a moment
  longer.)
- One tenant's database never costs another tenant's job more than a moment: closing a
  pool and giving a connection back run in the background (tasks of :meth:`run`), each
  bounded by ``close_timeout``, after which the connections left are terminated and a
  warning names the tenant and how many were abandoned. A job's ``connection()`` block
  ends as soon as its body does, whatever the tenant's database does, so a job's
  timeout holds. (Without :meth:`run` these steps run in the caller, still bounded.)
- When no slot is free, the task that needs one starts closing the least recently used
  pool that has open connections, none checked out and no task waiting on it, and
  waits for the slot. When the pools being closed do not free enough slots within
  ``EVICT_PATIENCE`` (a hung database does not answer the close), it closes the next
  idle pool rather than wait for the hung one. When no pool is idle it waits until a
  slot frees or a pool becomes idle. It never exceeds the cap, and waiting is not
  bounded by a timeout.
- While any task waits for a slot, a connection given back is closed instead of kept
  idle (unless another task of the same tenant is queued for it), so idle connections
  cannot hold slots others need, and a tenant waiting for a second connection cannot
  be stuck behind its own idle one.
- A connection comes back to its pool as a fresh session would be (``RESET_SESSION``:
  an open transaction rolled back, role and settings reset, temporary tables, cursors,
  prepared statements, listeners, advisory locks and sequence state discarded), or is
  terminated when that fails: the next job of the tenant never sees what the last left.
- A pool is closed (``close()``, then ``terminate()`` after ``close_timeout``) only
  when none of its connections is checked out: on eviction, after ``idle_ttl`` seconds
  unused (:meth:`TenantPools.run`), when its tenant's DSN changes (once its last user is
  done). Only :meth:`TenantPools.aclose` closes pools in use, and it waits up to
  ``close_timeout`` for their connections to come back first: a stop takes at most
  about ``close_timeout`` for the tenant pools, whatever their databases do.
- A tenant whose database cannot be reached gets :class:`TenantDatabaseError`, naming
  the tenant and the error, never the DSN, with passwords masked; its slot was already
  given back, and a pool that never connected is dropped.
- A task must not wait for a second tenant connection while it holds one: at the cap,
  tasks holding one connection each and waiting for another would wait forever.
"""

from __future__ import annotations

import contextlib
import math
import socket
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import anyio
import asyncpg
from anyio.abc import TaskGroup, TaskStatus
from asyncpg.pool import PoolConnectionProxy

from listener.db import DATABASE_ERRORS, init_connection
from listener.logs import get_logger
from listener.redact import redact, redact_with_dsn

# What failing to reach a tenant's database raises (a bad DSN raises ValueError).
_CONNECT_ERRORS = (*DATABASE_ERRORS, ValueError)
# How long a task that needs a slot waits for the pools being closed for it before it
# closes another idle pool (a healthy close takes milliseconds; a hung one, forever).
EVICT_PATIENCE = 0.1
# What a connection given back runs, one round trip (asyncpg has rolled back an open
# transaction first): DISCARD ALL but for DEALLOCATE ALL, which would drop asyncpg's own
# cached statements under it; prepared statements the session made with SQL PREPARE are
# deallocated instead. (DISCARD ALL itself cannot run in the implicit transaction of a
# multi-statement query.)
RESET_SESSION = """
CLOSE ALL;
SET SESSION AUTHORIZATION DEFAULT;
RESET ALL;
UNLISTEN *;
SELECT pg_catalog.pg_advisory_unlock_all();
DISCARD TEMP;
DISCARD SEQUENCES;
DO $reset$
DECLARE
    statement record;
BEGIN
    FOR statement IN SELECT name FROM pg_catalog.pg_prepared_statements WHERE from_sql LOOP
        EXECUTE pg_catalog.format('DEALLOCATE %I', statement.name);
    END LOOP;
END
$reset$;
"""


class TenantDatabaseError(Exception):
    """A tenant's own database cannot be reached: an ordinary, retryable job failure."""

    def __init__(self, tenant_id: str, message: str) -> None:
        super().__init__(message)
        self.tenant_id = tenant_id


def _describe(exc: BaseException, bound: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {bound:g}s"
    return redact(f"{type(exc).__name__}: {exc}")


async def _reset_session(conn: asyncpg.Connection) -> None:
    """The pool's ``reset``: the connection as a fresh session would be."""
    await conn.execute(RESET_SESSION)


def _tenant_error(
    tenant_id: str, dsn: str, exc: BaseException, connect_timeout: float
) -> TenantDatabaseError:
    if isinstance(exc, TimeoutError) and not str(exc):
        detail = f"no connection within the connect timeout ({connect_timeout:g}s)"
    else:
        # The error text of a malformed DSN may echo parts of it.
        detail = redact_with_dsn(f"{type(exc).__name__}: {exc}", dsn)
    return TenantDatabaseError(
        tenant_id, f"tenant {tenant_id!r}: cannot connect to its database: {detail}"
    )


class _Tenant:
    """One tenant's pool and its bookkeeping."""

    def __init__(self, tenant_id: str, dsn: str) -> None:
        self.tenant_id = tenant_id
        self.dsn = dsn
        self.pool: asyncpg.Pool | None = None
        self.lock = anyio.Lock()
        self.closed = anyio.Event()
        self.users = 0  # tasks inside connection() for this pool, waiting or holding
        self.held = 0  # connections checked out
        self.connecting = 0  # tasks opening a connection (or waiting for a slot)
        self.returning = 0  # connections being given back (reset or closed)
        self.opened = 0  # slots held: connections opened and not yet closed
        self.retired = False  # out of the LRU; closes when its last user is done
        self.closing = False
        self.close_started = 0.0
        self.last_used = time.monotonic()


class TenantPools:
    """A bounded LRU of per-tenant asyncpg pools under one cap on open connections."""

    def __init__(
        self,
        *,
        max_connections: int = 50,
        per_tenant: int = 5,
        idle_ttl: float = 300.0,
        connect_timeout: float = 10.0,
        close_timeout: float = 2.0,
    ) -> None:
        if max_connections < 1 or per_tenant < 1:
            raise ValueError("max_connections and per_tenant must be at least 1")
        if idle_ttl <= 0 or connect_timeout <= 0 or close_timeout <= 0:
            raise ValueError("idle_ttl, connect_timeout and close_timeout must be positive")
        self._max = max_connections
        self._per_tenant = min(per_tenant, max_connections)
        self._idle_ttl = idle_ttl
        self._connect_timeout = connect_timeout
        self._close_timeout = close_timeout
        self._sweep_interval = min(max(idle_ttl / 4, 0.01), 30.0)
        self._tenants: OrderedDict[str, _Tenant] = OrderedDict()  # least recent first
        self._pools: set[_Tenant] = set()  # every pool created and not yet closed
        self._closing: set[_Tenant] = set()  # pools being closed
        self._tasks: TaskGroup | None = None  # run()'s, for closes and give-backs
        self._open = 0
        self._waiting = 0
        self._changed: anyio.Event | None = None
        self._stop: anyio.Event | None = None
        self._closed = False
        self._server_settings = {"application_name": f"pgwake@{socket.gethostname()}"}
        self._log = get_logger("tenant_pools")

    # -- stats --------------------------------------------------------------------

    def open_connections(self) -> int:
        """Connections open (slots taken) across all tenant pools."""
        return self._open

    def pool_count(self) -> int:
        """Pools created and not yet closed."""
        return len(self._pools)

    def sizes(self) -> dict[str, int]:
        """Open connections per tenant, for every tenant with a pool or a connection."""
        sizes: dict[str, int] = {}
        for entry in {*self._pools, *self._tenants.values()}:
            if entry.pool is not None or entry.opened:
                sizes[entry.tenant_id] = sizes.get(entry.tenant_id, 0) + entry.opened
        return sizes

    def waiting(self) -> int:
        """Tasks waiting for a free connection slot."""
        return self._waiting

    # -- use ----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def connection(self, tenant_id: str, dsn: str) -> AsyncIterator[PoolConnectionProxy]:
        """A connection to ``tenant_id``'s own database, given back on exit.

        Raises :class:`TenantDatabaseError` when the database cannot be reached. Errors
        raised inside the block pass through unchanged."""
        if self._closed:
            raise TenantDatabaseError(tenant_id, f"tenant {tenant_id!r}: tenant pools are closed")
        entry = self._tenants.get(tenant_id)
        stale: _Tenant | None = None
        if entry is not None and entry.dsn != dsn:
            stale, entry = entry, None
            self._retire(stale)
        if entry is None:
            entry = _Tenant(tenant_id, dsn)
            self._tenants[tenant_id] = entry
        else:
            self._tenants.move_to_end(tenant_id)
        entry.users += 1
        handed_back = False
        try:
            if stale is not None and stale.users == 0:
                await self._close_soon(stale)
            conn = await self._acquire(entry)
            entry.held += 1
            try:
                yield conn
            finally:
                entry.held -= 1
                # Keep the connection idle for reuse, unless a task waits for a slot and
                # no task of this tenant is queued for the connection: then close it.
                queued = entry.users - 1 - entry.held - entry.connecting - entry.returning
                close = bool(self._waiting) and queued <= 0
                entry.returning += 1
                handed_back = True
                await self._background(self._give_back, entry, conn, close)
        finally:
            if not handed_back:
                await self._leave(entry)

    async def _leave(self, entry: _Tenant) -> None:
        """A task is done with ``entry`` (its connection, if any, is back)."""
        entry.users -= 1
        if entry.users == 0:
            entry.last_used = time.monotonic()
            if entry.retired:
                await self._close_soon(entry)
            elif self._tenants.get(entry.tenant_id) is entry:
                self._tenants.move_to_end(entry.tenant_id)
            self._notify()

    async def _background(self, fn: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None:
        """Run ``fn`` as a task of :meth:`run`; without it, here (``fn`` is bounded and
        shielded, so this waits at most about ``close_timeout``)."""
        if self._tasks is not None:
            self._tasks.start_soon(fn, *args)
        else:
            await fn(*args)

    async def _acquire(self, entry: _Tenant) -> PoolConnectionProxy:
        try:
            async with entry.lock:
                if self._closed:
                    raise TenantDatabaseError(
                        entry.tenant_id, f"tenant {entry.tenant_id!r}: tenant pools are closed"
                    )
                if entry.pool is None:
                    entry.pool = await asyncpg.create_pool(
                        entry.dsn,
                        min_size=0,
                        max_size=self._per_tenant,
                        max_inactive_connection_lifetime=self._idle_ttl,
                        init=init_connection,
                        reset=_reset_session,
                        connect=self._connector(entry),
                        timeout=self._connect_timeout,
                        server_settings=self._server_settings,
                    )
                    self._pools.add(entry)
            pool = entry.pool
            assert pool is not None
            conn: PoolConnectionProxy = await pool.acquire()
        except _CONNECT_ERRORS as exc:
            if entry.users == 1 and entry.opened == 0:
                self._retire(entry)  # a pool that never connected: drop it
            raise _tenant_error(entry.tenant_id, entry.dsn, exc, self._connect_timeout) from None
        return conn

    async def _give_back(self, entry: _Tenant, conn: PoolConnectionProxy, close: bool) -> None:
        """Reset ``conn`` and put it back in its pool (or close it), within
        ``close_timeout``; terminate it when that fails or takes longer."""
        # The connection itself: the proxy is detached once released.
        raw: asyncpg.Connection | None = getattr(conn, "_con", None)
        with anyio.CancelScope(shield=True):
            try:
                # asyncpg terminates the connection when its timeout passes; the outer
                # bound is for what it does not cover.
                with anyio.fail_after(self._close_timeout + 0.5):
                    if close:
                        await conn.close(timeout=self._close_timeout)
                    else:
                        assert entry.pool is not None
                        await entry.pool.release(conn, timeout=self._close_timeout)
            except Exception as exc:  # noqa: BLE001 - terminated below; the job is done
                if raw is not None and not raw.is_closed():
                    raw.terminate()
                self._log.warning(
                    "tenant connection not given back cleanly; terminated",
                    tenant=entry.tenant_id,
                    error=_describe(exc, self._close_timeout),
                )
            finally:
                entry.returning -= 1
                await self._leave(entry)

    # -- the cap ------------------------------------------------------------------

    def _connector(self, entry: _Tenant) -> Callable[..., Coroutine[Any, Any, asyncpg.Connection]]:
        """The pool's ``connect`` hook: a slot first, given back once the socket is
        closed."""

        async def connect(dsn: str | None = None, **kwargs: Any) -> asyncpg.Connection:
            entry.connecting += 1
            try:
                await self._take_slot(entry)
            finally:
                entry.connecting -= 1
            entry.opened += 1
            try:
                conn: asyncpg.Connection = await asyncpg.connect(dsn, **kwargs)
            except BaseException:
                self._slot_freed(entry)
                raise
            freed = False

            def on_close(_conn: object) -> None:
                nonlocal freed
                if not freed:
                    freed = True
                    self._slot_freed(entry)

            conn.add_termination_listener(on_close)
            if conn.is_closed():  # lost before the listener was in place
                on_close(conn)
            return conn

        return connect

    async def _take_slot(self, entry: _Tenant) -> None:
        while True:
            if self._closed:
                raise TenantDatabaseError(
                    entry.tenant_id, f"tenant {entry.tenant_id!r}: tenant pools are closed"
                )
            if self._open < self._max:
                self._open += 1
                return
            if self._freeing() <= self._waiting:
                victim = self._least_recent_idle()
                if victim is not None:
                    await self._close_soon(victim)
                    continue
            if self._changed is None:
                self._changed = anyio.Event()
            changed = self._changed
            self._waiting += 1
            try:
                # Not forever while pools are being closed for us: one that does not
                # free its slots in time (a hung database) is passed over.
                with anyio.move_on_after(EVICT_PATIENCE if self._closing else math.inf):
                    await changed.wait()
            finally:
                self._waiting -= 1

    def _freeing(self) -> int:
        """Slots the pools being closed are about to give back: those whose close began
        less than ``EVICT_PATIENCE`` ago (a close that takes longer is stuck)."""
        recent = time.monotonic() - EVICT_PATIENCE
        return sum(e.opened for e in self._closing if e.close_started > recent)

    def _slot_freed(self, entry: _Tenant) -> None:
        self._open -= 1
        entry.opened -= 1
        self._notify()

    def _least_recent_idle(self) -> _Tenant | None:
        for entry in self._tenants.values():
            if entry.users == 0 and entry.opened > 0:
                return entry
        return None

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    # -- closing ------------------------------------------------------------------

    def _retire(self, entry: _Tenant) -> None:
        """Take ``entry`` out of the LRU; it is closed once it has no users."""
        entry.retired = True
        if self._tenants.get(entry.tenant_id) is entry:
            del self._tenants[entry.tenant_id]

    def _begin_close(self, entry: _Tenant) -> bool:
        """Take ``entry`` out of use for good and count it as closing (at once, so no
        other task picks it again); False when it already was."""
        self._retire(entry)
        if entry.closing:
            return False
        entry.closing = True
        entry.close_started = time.monotonic()
        self._closing.add(entry)
        return True

    async def _close_soon(self, entry: _Tenant) -> None:
        """Close ``entry``'s pool in the background (see :meth:`_background`)."""
        if self._begin_close(entry):
            await self._background(self._finish_close, entry)

    async def _close(self, entry: _Tenant) -> None:
        """Close ``entry``'s pool and wait until it is closed."""
        if self._begin_close(entry):
            await self._finish_close(entry)
        else:
            with anyio.CancelScope(shield=True):
                await entry.closed.wait()

    async def _finish_close(self, entry: _Tenant) -> None:
        """Close the pool (waiting for checked-out connections) within
        ``close_timeout``; then terminate what is left and say so."""
        pool = entry.pool
        with anyio.CancelScope(shield=True):
            try:
                if pool is not None:
                    try:
                        with anyio.fail_after(self._close_timeout):
                            await pool.close()
                    except Exception as exc:  # noqa: BLE001 - terminated below
                        self._log.warning(
                            "tenant pool not closed cleanly; its connections were terminated",
                            tenant=entry.tenant_id,
                            abandoned=entry.opened,
                            error=_describe(exc, self._close_timeout),
                        )
                    pool.terminate()  # after a clean close: nothing left to do
            finally:
                self._closing.discard(entry)
                self._pools.discard(entry)
                entry.closed.set()
                self._notify()

    async def _close_idle(self) -> None:
        deadline = time.monotonic() - self._idle_ttl
        for entry in list(self._tenants.values()):
            # Checked again for each: closing the one before may have let tasks run.
            if entry.users == 0 and entry.last_used <= deadline and not entry.retired:
                await self._close_soon(entry)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Close pools unused for ``idle_ttl`` until :meth:`aclose`, and run the closes
        and give-backs in the background; on the way out (also when cancelled) close
        every pool, which takes at most about ``close_timeout``."""
        self._stop = stop = anyio.Event()
        async with anyio.create_task_group() as tasks:
            self._tasks = tasks
            task_status.started()
            try:
                while not self._closed:
                    with anyio.move_on_after(self._sweep_interval):
                        await stop.wait()
                    await self._close_idle()
            finally:
                with anyio.CancelScope(shield=True):
                    await self.aclose()
                self._tasks = None
        # Here every close and give-back started has ended (each is bounded).

    async def aclose(self) -> None:
        """Close every pool (in-use connections get ``close_timeout`` to come back);
        later calls to :meth:`connection` raise :class:`TenantDatabaseError`."""
        self._closed = True
        if self._stop is not None:
            self._stop.set()
        self._notify()
        entries = {*self._pools, *self._tenants.values()}
        for entry in entries:
            self._retire(entry)
        async with anyio.create_task_group() as tg:
            for entry in entries:
                if entry.pool is not None:
                    tg.start_soon(self._close, entry)
