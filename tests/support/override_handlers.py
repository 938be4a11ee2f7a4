"""An application's handler module that defines a kind named like a built-in (``sleep``):
it replaces the built-in in the workers that load it."""

from __future__ import annotations

from typing import Any

from listener.api import JobContext, handler


@handler("sleep")
async def app_sleep(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Not a sleep at all: says whose handler ran."""
    return {"handled_by": "application", "payload": payload}
