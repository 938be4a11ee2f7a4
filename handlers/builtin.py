"""Built-in job kinds: small, real tools for smoke tests, benchmarks and operations.

- ``echo``  returns its payload as the job's result.
- ``sleep`` waits ``seconds`` (payload ``{"seconds": n}``, 0 <= n <= 86400) and returns
  how long it slept; it honours the job timeout and cancellation.
- ``noop``  does nothing and returns null: the cheapest possible job, for throughput
  benchmarks.

An application's handler of the same kind replaces a built-in in the workers that load
it (with a log line saying so); workers without it keep the built-in.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import anyio
from pydantic import BaseModel, ConfigDict, Field

from listener.api import DEFAULT_REGISTRY, JobContext

# Built-ins give way to an application's handler of the same kind (listener/registry.py).
handler = functools.partial(DEFAULT_REGISTRY.handler, builtin=True)


@handler("echo")
async def echo(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Return the payload unchanged."""
    return payload


class SleepPayload(BaseModel):
    """Payload of ``sleep``."""

    model_config = ConfigDict(extra="forbid")

    seconds: float = Field(ge=0, le=86400, description="How long to sleep, in seconds.")


@handler("sleep")
async def sleep(payload: SleepPayload, ctx: JobContext) -> dict[str, float]:
    """Sleep for ``payload.seconds``; return the time actually slept."""
    started = time.monotonic()
    await anyio.sleep(payload.seconds)
    return {"slept": round(time.monotonic() - started, 6)}


@handler("noop")
async def noop(payload: dict[str, Any], ctx: JobContext) -> None:
    """Do nothing."""
