"""Cron schedules: the leader of each round enqueues the jobs of every slot that came.

Invariants:
- Each slot of a schedule is enqueued exactly once across the fleet: the leader of a
  round (the 'schedules' row of pgwake.leaders, locked for its transaction) locks the
  due schedule rows, inserts the slot's jobs and moves ``next_run_at`` past now, all in
  one transaction. A second leader sees the new ``next_run_at``; a crash rolls everything back.
- Slots are computed with cronsim (Debian cron semantics) in the schedule's time zone,
  so "0 9 * * *" in Europe/Paris is 09:00 Paris time on both sides of a DST change.
- After downtime, ``missed = 'skip'`` enqueues only the most recent missed slot (late);
  ``'catch_up'`` enqueues every missed slot, at most ``MAX_CATCH_UP`` per round.
- A new schedule's first slot is the first one after the round that sees it.
- A schedule whose cron or time zone cannot be evaluated is disabled with the reason in
  ``last_error`` (it was written to the table by hand); the others go on.
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import anyio
import asyncpg
from anyio.abc import TaskStatus
from asyncpg.pool import PoolConnectionProxy
from cronsim import CronSim, CronSimError

from listener.logs import get_logger
from listener.outage import OutageLog, run_rounds
from listener.queries import QUERIES

MAX_CATCH_UP = 1000
MISSED_POLICIES = ("skip", "catch_up")


def check_schedule(cron: str, timezone: str) -> str | None:
    """None when ``cron`` and ``timezone`` can be evaluated, else what is wrong."""
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        return f"unknown time zone {timezone!r}"
    if len(cron.split()) != 5:
        return f"cron {cron!r} must have 5 fields (minute hour day month weekday)"
    try:
        CronSim(cron, datetime.now(zone))
    except CronSimError as exc:
        return f"invalid cron {cron!r}: {exc}"
    return None


def slots_after(cron: str, timezone: str, after: datetime) -> CronSim:
    """The schedule's slots strictly after ``after``, as aware datetimes."""
    return CronSim(cron, after.astimezone(ZoneInfo(timezone)))


def due_slots(
    cron: str, timezone: str, next_run_at: datetime, now: datetime, missed: str
) -> tuple[list[datetime], datetime]:
    """The slots to enqueue (``next_run_at`` and every later one up to ``now``, cut to
    the last for ``skip``) and the next slot after ``now``."""
    slots = [next_run_at]
    for slot in slots_after(cron, timezone, next_run_at):
        # The first slot after now, or (catching up) the first one past this round's
        # share: the next round starts there.
        if slot > now or (missed == "catch_up" and len(slots) >= MAX_CATCH_UP):
            following = slot
            break
        slots.append(slot)
    if missed == "skip":
        slots = slots[-1:]
    return slots, following


class Scheduler:
    """Enqueues due schedule slots every ``interval`` seconds (when leader)."""

    def __init__(self, pool: asyncpg.Pool, *, interval: float = 1.0) -> None:
        self._pool = pool
        self._interval = interval
        self._log = get_logger("schedules")
        self._outage = OutageLog(self._log, "schedules round")
        self.enqueued = 0

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run rounds forever."""
        task_status.started()
        await run_rounds(self._interval, self.round, self._outage)

    async def round(self) -> int | None:
        """One round; the number of jobs enqueued, or None when another worker leads."""
        enqueued = 0
        async with self._pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval(QUERIES["schedules_leader"]):
                return None
            for row in await conn.fetch(QUERIES["schedules_due"]):
                enqueued += await self._serve(conn, row)
        self.enqueued += enqueued
        return enqueued

    async def _serve(self, conn: PoolConnectionProxy, row: asyncpg.Record) -> int:
        name, cron, timezone, now = row["name"], row["cron"], row["timezone"], row["db_now"]
        problem = check_schedule(cron, timezone)
        if problem is not None:
            await conn.execute(QUERIES["schedule_disable"], name, problem)
            self._log.error("schedule disabled", schedule=name, reason=problem)
            return 0
        if row["next_run_at"] is None:
            first = next(iter(slots_after(cron, timezone, now)))
            await conn.execute(QUERIES["schedule_advance"], name, first, None)
            return 0
        slots, following = due_slots(cron, timezone, row["next_run_at"], now, row["missed"])
        enqueued = 0
        for slot in slots:
            enqueued += await conn.fetchval(
                QUERIES["schedule_enqueue"],
                row["tenant_id"],
                row["kind"],
                row["payload"],
                row["priority"],
                row["max_attempts"],
                f"schedule:{name}:{slot.isoformat()}",
            )
        await conn.execute(QUERIES["schedule_advance"], name, following, slots[-1])
        if enqueued:
            self._log.info("schedule enqueued", schedule=name, slots=len(slots), jobs=enqueued)
        return enqueued
