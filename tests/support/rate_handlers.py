"""Handlers of kinds that the rate limit tests limit (``mail``, ``sync``): each returns
at once, so that only the limits decide when jobs start."""

from __future__ import annotations

from typing import Any

from listener.api import JobContext, handler

# The value of --handlers for a worker process that loads this module.
RATE = "tests.support.rate_handlers"


@handler("mail")
async def mail(payload: dict[str, Any], ctx: JobContext) -> None:
    """A mail sent (nothing happens)."""


@handler("sync")
async def sync(payload: dict[str, Any], ctx: JobContext) -> None:
    """A store synchronised (nothing happens)."""
