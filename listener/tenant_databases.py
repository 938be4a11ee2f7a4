"""Tenants' own databases for handlers: look up the encrypted DSN, decrypt it, and hand
out a connection from the bounded per-tenant pools.

Invariants:
- A DSN is decrypted in memory only and never logged; lookups are cached for
  ``cache_ttl`` seconds, so a changed DSN is used within that time. "No database of its
  own" is never cached: a database registered for a tenant is used by its next job.
- A stored DSN that listener/dsn.py refuses (one written by SQL or an older pgwake, with
  an unencoded '#' in its password, say) fails the job like an unreachable database,
  with a message that holds no part of it; asyncpg never sees it.
- A job of a tenant without a database of its own that asks for one fails at once
  (ConfigurationError): retrying cannot help. A database that is down or a key that is
  missing fails the job like any error, so it is retried with backoff, and other
  tenants' jobs go on.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from listener.crypto import NO_KEY_HINT, DecryptionError, Keyring
from listener.dsn import DsnError, parse_dsn
from listener.errors import ConfigurationError
from listener.queries import QUERIES
from listener.tenant_pools import TenantDatabaseError, TenantPools


class TenantDatabases:
    """Connections to tenants' own databases, for :meth:`JobContext.tenant_db`."""

    def __init__(
        self,
        central: asyncpg.Pool,
        keyring: Keyring | None,
        pools: TenantPools,
        *,
        cache_ttl: float = 30.0,
    ) -> None:
        self._central = central
        self._keyring = keyring
        self.pools = pools
        self._cache_ttl = cache_ttl
        self._cache: dict[str, tuple[float, str | None]] = {}

    async def dsn(self, tenant_id: str) -> str | None:
        """The tenant's decrypted DSN, or None when it has no database of its own;
        :class:`TenantDatabaseError` when its stored DSN is refused (listener/dsn.py)."""
        cached = self._cache.get(tenant_id)  # only DSNs: "none" is looked up every time
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        ciphertext: str | None = await self._central.fetchval(QUERIES["tenant_get_dsn"], tenant_id)
        dsn: str | None = None
        if ciphertext is not None:
            if self._keyring is None:
                raise DecryptionError(
                    f"cannot decrypt the database DSN of tenant {tenant_id!r}: this worker has "
                    f"no encryption key ({NO_KEY_HINT})"
                )
            dsn = self._keyring.decrypt(tenant_id, ciphertext)
            try:
                parse_dsn(dsn)  # once per lookup, not per connection: refused ones are not cached
            except DsnError as exc:
                raise TenantDatabaseError(
                    tenant_id, f"tenant {tenant_id!r}: its database DSN is refused: {exc}"
                ) from None
        if dsn is not None:
            self._cache[tenant_id] = (time.monotonic() + self._cache_ttl, dsn)
        else:
            self._cache.pop(tenant_id, None)
        return dsn

    @contextlib.asynccontextmanager
    async def connection(self, tenant_id: str) -> AsyncIterator[PoolConnectionProxy]:
        """A connection to the tenant's own database, returned to its pool on exit."""
        dsn = await self.dsn(tenant_id)
        if dsn is None:
            raise ConfigurationError(f"tenant {tenant_id!r} has no database of its own")
        async with self.pools.connection(tenant_id, dsn) as conn:
            yield conn
