"""Handlers for the alert drills (tests/test_alert_drills.py), loaded by worker
processes with ``--handlers tests.support.drill_handlers``.

- ``drill.broken`` and ``drill.flaky`` always raise: with one attempt the first fails
  for good every time, with many the second is retried on every attempt.
- ``drill.records`` reports ``{"records": n}`` records processed and succeeds.
"""

from __future__ import annotations

from pydantic import BaseModel

from listener.api import JobContext, handler

DRILL = "tests.support.drill_handlers"


class Nothing(BaseModel):
    """No payload."""


class Records(BaseModel):
    records: int


@handler("drill.broken")
async def broken(payload: Nothing, ctx: JobContext) -> None:
    raise RuntimeError("the drill's broken dependency")


@handler("drill.flaky")
async def flaky(payload: Nothing, ctx: JobContext) -> None:
    raise RuntimeError("the drill's flaky dependency")


@handler("drill.records")
async def records(payload: Records, ctx: JobContext) -> dict[str, int]:
    ctx.add_records(payload.records)
    return {"records": payload.records}
