"""Cron schedules: the leader of each round enqueues the jobs of every slot that came.

Invariants:
- Each slot of a schedule is enqueued exactly once across the fleet: the leader of a
  round (the 'schedules' row of pgwake.leaders, locked for its transaction) locks the
  due schedule rows, inserts the slot's jobs and moves ``next_run_at`` past now, all in
  one transaction. A second leader sees the new ``next_run_at``; a crash rolls everything back.
- Slots are computed with cronsim (Debian cron semantics) in the schedule's time zone,
  so "0 9 * * *" in Europe/Paris is 09:00 Paris time on both sides of a DST change.
- After downtime, ``missed = 'skip'`` enqueues only the most recent missed slot (late);
  ``'catch_up'`` enqueues every missed slot, at most ``MAX_CATCH_UP`` per round. A
  ``skip`` schedule computes that slot directly (cron walked backwards from now), never
  walking the slots it missed: one years behind costs a round no more than one on time.
- A new schedule's first slot is the first one after the round that sees it; so is
  the first slot after an edit of its cron or time zone (a trigger clears next_run_at).
- Each schedule is served in a savepoint of its own. A schedule whose cron or time zone
  cannot be evaluated, or whose jobs the jobs table refuses (written to the table by
  hand past its checks), is disabled with the reason in ``last_error`` and logged; the
  others go on. Only an error that says nothing about the schedule (the database is
  unreachable, say: db.is_transient) ends the round, to be tried again.
- A job's columns are copied from the schedule's row in SQL, so its payload never
  passes through the client.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import anyio
import asyncpg
from anyio.abc import TaskStatus
from asyncpg.pool import PoolConnectionProxy
from cronsim import CronSim, CronSimError

from listener.db import is_transient, transaction
from listener.jobs import storable_text
from listener.logs import get_logger
from listener.maintenance.rounds import run_rounds
from listener.outage import OutageLog
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


def latest_slot(cron: str, timezone: str, now: datetime) -> datetime:
    """The schedule's last slot at or before ``now`` (cron walked backwards from now)."""
    just_after = (now + timedelta(microseconds=1)).astimezone(ZoneInfo(timezone))
    return next(iter(CronSim(cron, just_after, reverse=True)))


def due_slots(
    cron: str, timezone: str, next_run_at: datetime, now: datetime, missed: str
) -> tuple[list[datetime], datetime]:
    """The slots to enqueue (``next_run_at`` and every later one up to ``now``, cut to
    the last for ``skip``) and the next slot after ``now``. ``skip`` computes both
    directly, whatever the number of slots missed."""
    if missed == "skip":
        if next_run_at > now:  # not due yet
            return [next_run_at], next(iter(slots_after(cron, timezone, next_run_at)))
        latest = latest_slot(cron, timezone, now)
        return [max(latest, next_run_at)], next(iter(slots_after(cron, timezone, now)))
    slots = [next_run_at]
    for slot in slots_after(cron, timezone, next_run_at):
        # The first slot after now, or (catching up) the first one past this round's
        # share: the next round starts there.
        if slot > now or len(slots) >= MAX_CATCH_UP:
            following = slot
            break
        slots.append(slot)
    return slots, following


class Scheduler:
    """Enqueues due schedule slots every ``interval`` seconds (when leader)."""

    def __init__(self, pool: asyncpg.Pool, *, interval: float = 1.0) -> None:
        self._pool = pool
        self._interval = interval
        self._log = get_logger("schedules")
        self._outage = OutageLog(self._log, "schedules round")

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run rounds forever."""
        task_status.started()
        await run_rounds(self._interval, self.round, self._outage)

    async def round(self) -> int | None:
        """One round; the number of jobs enqueued, or None when another worker leads."""
        enqueued = 0
        async with self._pool.acquire() as conn, transaction(conn):
            if not await conn.fetchval(QUERIES["leader_elect_schedules"]):
                return None
            for row in await conn.fetch(QUERIES["schedule_list_due"]):
                try:
                    async with conn.transaction():  # a savepoint: this schedule only
                        enqueued += await self._serve(conn, row)
                except Exception as exc:
                    if is_transient(exc):
                        raise
                    await self._disable(conn, row["name"], _reason(exc))
        return enqueued

    async def _disable(self, conn: PoolConnectionProxy, name: str, reason: str) -> None:
        reason = storable_text(reason)
        await conn.execute(QUERIES["schedule_disable"], name, reason)
        self._log.error("schedule disabled", schedule=name, reason=reason)

    async def _serve(self, conn: PoolConnectionProxy, row: asyncpg.Record) -> int:
        name, cron, timezone, now = row["name"], row["cron"], row["timezone"], row["db_now"]
        problem = check_schedule(cron, timezone)
        if problem is not None:
            await self._disable(conn, name, problem)
            return 0
        if row["next_run_at"] is None:
            first = next(iter(slots_after(cron, timezone, now)))
            await conn.execute(QUERIES["schedule_advance"], name, first, None)
            return 0
        slots, following = due_slots(cron, timezone, row["next_run_at"], now, row["missed"])
        enqueued = 0
        for slot in slots:
            enqueued += await conn.fetchval(
                QUERIES["schedule_enqueue"], name, f"schedule:{name}:{slot.isoformat()}"
            )
        await conn.execute(QUERIES["schedule_advance"], name, following, slots[-1])
        if enqueued:
            self._log.info("schedule enqueued", schedule=name, slots=len(slots), jobs=enqueued)
        return enqueued


def _reason(exc: Exception) -> str:
    """Why a schedule was disabled, in one line: the database's refusal of its jobs, or
    the error its slots raised."""
    if isinstance(exc, asyncpg.PostgresError):
        return f"its jobs cannot be enqueued: {exc}".split("\n", 1)[0]
    return f"its slots cannot be computed: {type(exc).__name__}: {exc}".split("\n", 1)[0]
