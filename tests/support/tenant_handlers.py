"""Handlers that use their tenant's own database, for tests of tenant-database faults
(tests/test_tenant_faults.py), in-process (``registry()``) and in a worker process
(``--handlers tests.support.tenant_handlers``).

``tenant.query`` runs ``payload["sql"]`` (default ``SELECT 1``) on a connection to the
tenant's database and returns how long the whole handler took, in seconds: the time to
get the connection, run the query and give the connection back.
"""

from __future__ import annotations

import time
from typing import Any

from listener.api import JobContext, handler
from listener.registry import Registry


@handler("tenant.query")
async def tenant_query(payload: dict[str, Any], ctx: JobContext) -> float:
    started = time.monotonic()
    async with ctx.tenant_db() as conn:
        await conn.fetchval(payload.get("sql", "SELECT 1"))
    return time.monotonic() - started


def registry() -> Registry:
    """A registry with the handlers of this module."""
    reg = Registry()
    reg.register("tenant.query", tenant_query)
    return reg
