"""Every advisory-lock key pgwake takes or took, named once, with what it guards.

PostgreSQL keys an advisory lock by one bigint or by two int4s (``classid`` and
``objid`` in ``pg_locks``). pgwake's two-int keys use the class ids 1885828961 to
1885828967 (the bytes of "pgwa" to "pgwg"); the migration lock is one bigint ("pgwake").

SQL cannot import this module, so the schema, the migrations and the queries spell the
numbers out; so do the docs. Invariants (tests/test_locks.py holds them):
- Every lock-key literal in sql/, listener/ and the docs is a key of ``LOCKS``; in
  Python only this module spells one.
- A retired key stays here with the migration that stopped using it (``retired_in``):
  older migrations still name it and a worker of an older version, still running during
  a rolling upgrade, may still take it; nothing else names it.
- Every key that is not retired is taken somewhere in sql/ or listener/.
- Advisory locks need no privilege, so any role may take any of these: each is held only
  where a role that takes it can at worst make pgwake do a little more work (see
  sql/migrations/0011_hostile_roles.sql). Leadership that must not be stolen is a row
  lock on ``pgwake.leaders`` instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class LockKey:
    """One advisory-lock key.

    ``classid`` is the first of two int4 keys, or the whole bigint key when ``objid`` is
    None. ``objid`` is the second int4 key: a number when it is fixed, or a description
    of where it comes from when it varies (a worker's row, a tenant's id).
    """

    name: str
    classid: int
    objid: int | str | None
    guards: str
    retired_in: int | None = None

    @property
    def fixed(self) -> bool:
        """Whether the key is one fixed value (an ``objid`` that does not vary)."""
        return not isinstance(self.objid, str)


MIGRATE: Final = LockKey(
    "migrate",
    0x7067_7761_6B65,
    None,
    "serialises `pgwake migrate` runs: a session lock held for the whole run",
)
LIVENESS: Final = LockKey(
    "liveness",
    1885828962,
    "pgwake.workers.lock_key",
    "a worker is alive: held by its heartbeat session (workers.session_pid) while it "
    "runs; recovery treats a worker whose lock that session no longer holds as gone",
)
METRICS_LEADER: Final = LockKey(
    "metrics_leader",
    1885828963,
    1,
    "the metrics leader, the one worker that samples the database-derived gauges: a "
    "session lock on one of its pooled connections",
)
WAITING: Final = LockKey(
    "waiting",
    1885828967,
    0,
    "a worker waits for new jobs: held in shared mode by its LISTEN session, so an "
    "insert notifies only while some worker waits",
)
FOLLOWING: Final = LockKey(
    "following",
    1885828967,
    1,
    "a session follows job events (pgwake.follow_events): held in shared mode, so job "
    "events are sent only while someone follows them",
)
LOOKED_FOR_WAITING: Final = LockKey(
    "looked_for_waiting",
    1885828967,
    100,
    "a transaction looked for waiting workers: a transaction-level shared lock, so a "
    "worker about to wait knows which open transactions did not notify it",
)
LOOKED_FOR_FOLLOWING: Final = LockKey(
    "looked_for_following",
    1885828967,
    101,
    "a transaction looked for event followers: as looked_for_waiting, for job events",
)

# Retired by 0011_hostile_roles: a role without privileges could hold them and stall
# the fleet, so they became row locks on pgwake.leaders and pgwake.tenants.
TENANT_SLOTS: Final = LockKey(
    "tenant_slots",
    1885828961,
    "hashtext(tenant_id)",
    "serialised the claims of one capped tenant (now its pgwake.tenants row)",
    retired_in=11,
)
MAINTENANCE_LEADER: Final = LockKey(
    "maintenance_leader",
    1885828963,
    0,
    "the maintenance leader (now the 'maintenance' row of pgwake.leaders)",
    retired_in=11,
)
RETENTION_LEADER: Final = LockKey(
    "retention_leader",
    1885828964,
    0,
    "the retention leader (now the 'retention' row of pgwake.leaders)",
    retired_in=11,
)
SCHEDULES_LEADER: Final = LockKey(
    "schedules_leader",
    1885828965,
    0,
    "the schedules leader (now the 'schedules' row of pgwake.leaders)",
    retired_in=11,
)
PROMOTION_LEADER: Final = LockKey(
    "promotion_leader",
    1885828966,
    0,
    "the promotion leader (now the 'promotion' row of pgwake.leaders)",
    retired_in=11,
)

LOCKS: Final = (
    MIGRATE,
    LIVENESS,
    METRICS_LEADER,
    WAITING,
    FOLLOWING,
    LOOKED_FOR_WAITING,
    LOOKED_FOR_FOLLOWING,
    TENANT_SLOTS,
    MAINTENANCE_LEADER,
    RETENTION_LEADER,
    SCHEDULES_LEADER,
    PROMOTION_LEADER,
)
