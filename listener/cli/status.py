"""``pgwake status``: queue health at a terminal, as tables or JSON.

Invariants:
- Read only: three statements (sql/queries/cli.sql: job_count_by_kind,
  tenant_list_backlog, worker_list) in one read-only REPEATABLE READ transaction, so
  every figure comes from the same snapshot. Their cost grows with the active jobs
  (scheduled, queued, running) and the failed ones kept, never with the history of
  finished jobs.
- A worker is *live* while it holds its liveness lock and its heartbeat is no older
  than ``heartbeat_timeout`` (the settings this command reads, like the workers'):
  ``gone`` without the lock (the maintenance leader recovers its jobs), ``hung`` past
  the timeout, ``late`` past two heartbeat intervals, else ``ok``. A kind with queued
  jobs that no live worker claims is listed as unhandled: its jobs wait for nobody.
- The metrics leader is the worker whose session holds the metrics lock (metrics.py);
  the maintenance rounds (recovery, retention, schedules) have no standing leader: each
  round goes to whichever worker takes its lock first, so none is shown.
- The database is shown with its password masked; nothing else secret is read.
- Text from the database (kinds, tenants, host names) is printed with control
  characters escaped (listener/cli/terminal.py): a kind like ``E'x\x1b]0;owned\x07'``
  cannot retitle the terminal, nor ``E'x\nINJECTED'`` forge a line.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Annotated

import asyncpg
import typer

from listener.cli.options import Database, database_options
from listener.cli.support import JsonOpt, with_connection
from listener.cli.terminal import shown
from listener.config import Settings
from listener.jobs import ACTIVE
from listener.jobs import Status as JobStatus
from listener.migrate import check_schema
from listener.queries import QUERIES
from listener.redact import display_dsn

# The statuses the summary counts: the jobs still to run, and those that failed.
COUNTED = (*ACTIVE, JobStatus.FAILED)


@dataclass
class KindRow:
    """Jobs of one kind by status."""

    kind: str
    scheduled: int = 0
    queued: int = 0
    running: int = 0
    failed: int = 0
    oldest_queued_seconds: float | None = None
    next_scheduled_at: datetime | None = None


@dataclass
class TenantRow:
    """One tenant's active jobs and settings."""

    tenant: str
    queued: int
    running: int
    scheduled: int
    oldest_queued_seconds: float | None
    paused: bool
    max_concurrency: int | None
    weight: int


@dataclass
class WorkerRow:
    """One registered worker."""

    id: str
    hostname: str
    pid: int
    state: str  # ok, late, hung or gone
    live: bool
    heartbeat_age_seconds: float
    running: int
    concurrency: int
    kinds: list[str]
    started_at: datetime
    metrics_leader: bool


@dataclass
class Status:
    """Everything ``pgwake status`` shows."""

    database: str
    at: datetime
    totals: dict[str, int]
    oldest_queued_seconds: float | None
    kinds: list[KindRow]
    tenants: list[TenantRow]
    active_tenants: int
    tenants_with_backlog: int
    workers: list[WorkerRow]
    unhandled_kinds: list[KindRow] = field(default_factory=list)


def worker_state(age: float, lock_held: bool, settings: Settings) -> str:
    """ok, late, hung or gone (see the module docstring)."""
    if not lock_held:
        return "gone"
    if age > settings.heartbeat_timeout:
        return "hung"
    if age > 2 * settings.heartbeat_interval:
        return "late"
    return "ok"


def build(
    dsn: str,
    settings: Settings,
    kinds: Sequence[asyncpg.Record],
    tenants: Sequence[asyncpg.Record],
    workers: Sequence[asyncpg.Record],
    at: datetime,
) -> Status:
    """Assemble the rows of the three queries into a :class:`Status`."""
    by_kind: dict[str, KindRow] = {}
    for row in kinds:
        entry = by_kind.setdefault(row["kind"], KindRow(row["kind"]))
        setattr(entry, row["status"], row["jobs"])
        if row["oldest_queued_seconds"] is not None:
            entry.oldest_queued_seconds = row["oldest_queued_seconds"]
        if row["next_scheduled_at"] is not None:
            entry.next_scheduled_at = row["next_scheduled_at"]
    kind_rows = sorted(by_kind.values(), key=lambda k: (-k.queued, -k.running, k.kind))
    worker_rows = [
        WorkerRow(
            id=str(w["id"]),
            hostname=w["hostname"],
            pid=w["pid"],
            state=(state := worker_state(w["heartbeat_age_seconds"], w["lock_held"], settings)),
            live=state in ("ok", "late"),
            heartbeat_age_seconds=w["heartbeat_age_seconds"],
            running=w["running"],
            concurrency=w["concurrency"],
            kinds=list(w["kinds"]),
            started_at=w["started_at"],
            metrics_leader=w["metrics_leader"],
        )
        for w in workers
    ]
    handled = {kind for w in worker_rows if w.live for kind in w.kinds}
    waits = [k.oldest_queued_seconds for k in kind_rows if k.oldest_queued_seconds is not None]
    return Status(
        database=display_dsn(dsn),
        at=at,
        totals={s.value: sum(getattr(k, s) for k in kind_rows) for s in COUNTED},
        oldest_queued_seconds=max(waits, default=None),
        kinds=kind_rows,
        tenants=[
            TenantRow(
                tenant=t["tenant_id"],
                queued=t["queued"],
                running=t["running"],
                scheduled=t["scheduled"],
                oldest_queued_seconds=t["oldest_queued_seconds"],
                paused=t["paused"],
                max_concurrency=t["max_concurrency"],
                weight=t["weight"],
            )
            for t in tenants
        ],
        active_tenants=tenants[0]["active_tenants"] if tenants else 0,
        tenants_with_backlog=tenants[0]["tenants_with_backlog"] if tenants else 0,
        workers=worker_rows,
        unhandled_kinds=[k for k in kind_rows if k.queued and k.kind not in handled],
    )


async def fetch(conn: asyncpg.Connection, dsn: str, settings: Settings, top: int) -> Status:
    """Read the queue's state in one snapshot."""
    await check_schema(conn)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        kinds = await conn.fetch(QUERIES["job_count_by_kind"])
        tenants = await conn.fetch(QUERIES["tenant_list_backlog"], top)
        workers = await conn.fetch(QUERIES["worker_list"])
    return build(dsn, settings, kinds, tenants, workers, datetime.now(UTC))


# --- rendering ---------------------------------------------------------------------


def age(seconds: float | None) -> str:
    """A short duration: 850ms, 4.2s, 37s, 4m05s, 2h10m, 3d04h; '-' for none."""
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds * 1000:.0f}ms" if seconds < 1 else f"{seconds:.1f}s"
    whole = int(seconds)
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60)):
        if whole >= size:
            return f"{whole // size}{unit}{whole % size // sub_size:02d}{sub}"
    return f"{whole // 60}m{whole % 60:02d}s" if whole >= 60 else f"{whole}s"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> list[str]:
    """Aligned columns: the first ``left`` columns to the left, the others (numbers)
    to the right; the last column is never padded."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.ljust(width) if i < left or i == len(cells) - 1 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    return [line(headers), *(line(r) for r in rows)]


def _n(value: int) -> str:
    return f"{value:,}"


def render(status: Status) -> str:
    """The tables a person reads."""
    t = status.totals
    out = [
        f"pgwake status of {shown(status.database)} at {status.at:%Y-%m-%d %H:%M:%S} UTC",
        "",
        f"jobs: {_n(t['queued'])} queued, {_n(t['running'])} running, "
        f"{_n(t['scheduled'])} scheduled, {_n(t['failed'])} failed; "
        + (
            f"oldest queued job due {age(status.oldest_queued_seconds)} ago"
            if status.oldest_queued_seconds is not None
            else "nothing queued"
        ),
    ]
    if status.kinds:
        out.append("")
        out += table(
            ["KIND", "QUEUED", "RUNNING", "SCHEDULED", "FAILED", "OLDEST QUEUED"],
            [
                [
                    shown(k.kind),
                    _n(k.queued),
                    _n(k.running),
                    _n(k.scheduled),
                    _n(k.failed),
                    age(k.oldest_queued_seconds),
                ]
                for k in status.kinds
            ],
        )
    if status.tenants:
        listed = len(status.tenants)
        out += [
            "",
            f"tenants: {status.tenants_with_backlog:,} with queued jobs, "
            f"{status.active_tenants:,} with active jobs"
            + (f"; the top {listed} by backlog:" if listed < status.active_tenants else ":"),
        ]
        out += table(
            [
                "TENANT",
                "QUEUED",
                "RUNNING",
                "SCHEDULED",
                "OLDEST QUEUED",
                "CAP",
                "WEIGHT",
                "PAUSED",
            ],
            [
                [
                    shown(r.tenant),
                    _n(r.queued),
                    _n(r.running),
                    _n(r.scheduled),
                    age(r.oldest_queued_seconds),
                    "-" if r.max_concurrency is None else _n(r.max_concurrency),
                    str(r.weight),
                    "paused" if r.paused else "",
                ]
                for r in status.tenants
            ],
        )
    live = sum(w.live for w in status.workers)
    leaders = [f"{shown(w.hostname)} pid {w.pid}" for w in status.workers if w.metrics_leader]
    out += [
        "",
        f"workers: {live} live of {len(status.workers)} registered"
        + (f"; metrics leader: {leaders[0]}" if leaders else ""),
    ]
    if status.workers:
        out += table(
            ["HOST", "PID", "STATE", "HEARTBEAT", "RUNNING", "UP", "KINDS"],
            [
                [
                    shown(w.hostname),
                    str(w.pid),
                    w.state,
                    f"{age(w.heartbeat_age_seconds)} ago",
                    f"{w.running}/{w.concurrency}",
                    age((status.at - w.started_at).total_seconds()),
                    shown(", ".join(w.kinds)),
                ]
                for w in status.workers
            ],
            left=3,
        )
    if status.unhandled_kinds:
        out += ["", "queued jobs no live worker claims:"]
        out += [
            f"  {shown(k.kind)}: {_n(k.queued)} queued, "
            f"oldest due {age(k.oldest_queued_seconds)} ago"
            for k in status.unhandled_kinds
        ]
    return "\n".join(out)


def as_json(status: Status) -> str:
    """The same, as one JSON document (times in ISO 8601, ages in seconds)."""
    return json.dumps(asdict(status), default=lambda v: v.isoformat(), indent=2)


@database_options
def status_cmd(
    top: Annotated[
        int,
        typer.Option("--tenants", min=1, max=1000, help="Tenants shown, by backlog."),
    ] = 10,
    as_json_: JsonOpt = False,
    *,
    db: Database,
) -> None:
    """Queue health: jobs by kind and status, tenants, workers, unhandled kinds.

    Also the oldest queued job, the workers' heartbeats and whether each is live."""
    settings = db.settings()
    with db.url() as url:
        status = with_connection(url, lambda conn: fetch(conn, url, settings, top))
    typer.echo(as_json(status) if as_json_ else render(status))
