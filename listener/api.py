"""The public API for handler authors: everything a handler module imports.

    from pydantic import BaseModel
    from listener.api import JobContext, handler, PermanentError

    class Resize(BaseModel):
        image_id: int

    @handler("images.resize")
    async def resize(payload: Resize, ctx: JobContext) -> dict[str, int]:
        ctx.log.info("resizing", image_id=payload.image_id)
        return {"image_id": payload.image_id}

Applications enqueue from Python with :func:`enqueue` and :func:`enqueue_many` on their
own asyncpg or psycopg 3 connection, inside their own transaction (listener/enqueue.py).

Handlers import nothing else from ``listener``; the rest is internal and may change.
"""

from __future__ import annotations

from listener.children import DependencyResult
from listener.context import JobContext
from listener.enqueue import NewJob, Payload, enqueue, enqueue_many
from listener.errors import Cancel, ConfigurationError, PermanentError, Retry, Snooze
from listener.jobs import Job
from listener.registry import DEFAULT_REGISTRY, Handler, Registry

handler = DEFAULT_REGISTRY.handler
"""Register an async function as the handler of a job kind (``@handler("kind")``)."""

__all__ = [
    "DEFAULT_REGISTRY",
    "Cancel",
    "ConfigurationError",
    "DependencyResult",
    "Handler",
    "Job",
    "JobContext",
    "NewJob",
    "Payload",
    "PermanentError",
    "Registry",
    "Retry",
    "Snooze",
    "enqueue",
    "enqueue_many",
    "handler",
]
