"""``pgwake status``: queue health at a terminal, as tables or JSON.

Invariants:
- Read only: eight statements (sql/queries/cli.sql: job_count_by_kind,
  tenant_list_backlog, worker_list, worker_list_unregistered, job_count_finished_recent,
  job_list_failed_latest, job_list_retrying; sql/queries/metrics.sql:
  limit_list_held_back) in one read-only REPEATABLE READ transaction, so every figure
  comes from the same snapshot. Their cost grows with the active jobs (scheduled,
  queued, running), the failed ones kept, the jobs finished within the drain window
  (``--window``) and the rate limit keys, never with the rest of the history.
- Rate limit keys held back right now (window full) are listed, at most ``--tenants``
  of them, those held back longest first, with how many more there are.
- The drain is the jobs that ended for good (succeeded, failed, cancelled) in the
  window, per minute; retries are not in it (a retried job has not ended).
- Healthy (exit 0) unless: jobs are queued and no worker is live; the oldest queued
  job has been due longer than ``--max-wait`` (0: never; paused tenants count, as in
  the alert PgwakeOldestQueuedJobTooOld); a registered worker is hung; or a worker
  declared lost is still connected (``lost_workers``: its sessions, and any lock they
  hold, live on). Then it prints the problems and exits 1, after the report. A worker
  that stops cleanly removes its row a moment before its sessions close, so a status
  taken in that moment can list it as lost.
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

from listener.cli.options import Database, JsonOpt, database_options
from listener.cli.support import fail, with_connection
from listener.cli.terminal import shown
from listener.config import Settings
from listener.jobs import ACTIVE, FINISHED
from listener.jobs import Status as JobStatus
from listener.migrate import check_schema
from listener.queries import QUERIES
from listener.redact import display_dsn

# The statuses the summary counts: the jobs still to run, and those that failed.
COUNTED = (*ACTIVE, JobStatus.FAILED)
# The statuses of a job that ended for good, as the drain counts them.
FINISHED_NAMES = tuple(s.value for s in FINISHED)


@dataclass
class KindRow:
    """Jobs of one kind by status."""

    kind: str
    waiting: int = 0
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
    waiting: int = 0


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
class LostWorker:
    """A worker process declared lost (its row removed) whose sessions are still open."""

    hostname: str
    pid: int
    sessions: int
    metrics_leader: bool
    connected_at: datetime
    idle_seconds: float


@dataclass
class Drain:
    """Jobs that ended for good in the last ``window_seconds``."""

    window_seconds: float
    finished: dict[str, int]  # succeeded, failed, cancelled
    per_minute: list[int]  # oldest minute first; the last is the current one, not over yet
    jobs_per_second: float
    by_kind: dict[str, dict[str, int]]  # kind -> status -> jobs


@dataclass
class KindFailure:
    """The latest failed job of a kind, and how many of the kind failed in the window."""

    kind: str
    job_id: int
    tenant: str
    attempts: int
    finished_at: datetime
    age_seconds: float
    error: str
    failed_in_window: int


@dataclass
class KindRetrying:
    """Jobs of a kind waiting out the backoff after a failed attempt."""

    kind: str
    jobs: int
    error: str


@dataclass
class HeldBack:
    """A rate limit key whose window is full right now: its jobs wait for it."""

    scope: str  # tenant, kind (across tenants) or kind_tenant (a kind within a tenant)
    kind: str
    tenant: str
    opens_in_seconds: float


@dataclass
class Health:
    """Whether a script should worry, and why."""

    healthy: bool
    problems: list[str]


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
    lost_workers: list[LostWorker] = field(default_factory=list)
    drain: Drain | None = None
    failures: list[KindFailure] = field(default_factory=list)
    retrying: list[KindRetrying] = field(default_factory=list)
    held_back: list[HeldBack] = field(default_factory=list)
    held_back_total: int = 0
    health: Health = field(default_factory=lambda: Health(healthy=True, problems=[]))


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
                waiting=t["waiting"],
            )
            for t in tenants
        ],
        active_tenants=tenants[0]["active_tenants"] if tenants else 0,
        tenants_with_backlog=tenants[0]["tenants_with_backlog"] if tenants else 0,
        workers=worker_rows,
        unhandled_kinds=[k for k in kind_rows if k.queued and k.kind not in handled],
    )


def lost_worker(row: asyncpg.Record) -> LostWorker:
    """A row of worker_list_unregistered; host and pid from ``pgwake@<host>:<pid>``."""
    host, _, pid = row["application_name"].removeprefix("pgwake@").rpartition(":")
    return LostWorker(
        hostname=host,
        pid=int(pid) if pid.isdigit() else 0,
        sessions=row["sessions"],
        metrics_leader=row["metrics_leader"],
        connected_at=row["connected_at"],
        idle_seconds=row["idle_seconds"],
    )


def drain(rows: Sequence[asyncpg.Record], window: float) -> Drain:
    """The rows of job_count_finished_recent, summed."""
    minutes = max(1, round(window / 60))
    finished = dict.fromkeys(FINISHED_NAMES, 0)
    per_minute = [0] * minutes
    by_kind: dict[str, dict[str, int]] = {}
    for row in rows:
        finished[row["status"]] += row["jobs"]
        per_minute[minutes - 1 - min(row["minutes_ago"], minutes - 1)] += row["jobs"]
        kind = by_kind.setdefault(row["kind"], dict.fromkeys(FINISHED_NAMES, 0))
        kind[row["status"]] += row["jobs"]
    return Drain(
        window_seconds=window,
        finished=finished,
        per_minute=per_minute,
        jobs_per_second=sum(finished.values()) / window,
        by_kind=dict(sorted(by_kind.items())),
    )


def health(status: Status, max_wait: float) -> Health:
    """The problems a script should hear of (see the module docstring)."""
    problems = []
    queued = status.totals["queued"]
    if queued and not any(w.live for w in status.workers):
        problems.append(f"no live worker while {queued:,} jobs are queued")
    oldest = status.oldest_queued_seconds
    if max_wait > 0 and oldest is not None and oldest > max_wait:
        problems.append(
            f"the oldest queued job has been due for {age(oldest)} (--max-wait {max_wait:g}s)"
        )
    hung = [w for w in status.workers if w.state == "hung"]
    if hung:
        problems.append(
            f"{len(hung)} worker(s) hung (no heartbeat for {age(hung[0].heartbeat_age_seconds)}"
            f" or more): " + ", ".join(f"{w.hostname} pid {w.pid}" for w in hung)
        )
    if status.lost_workers:
        problems.append(
            f"{len(status.lost_workers)} worker(s) declared lost still connected: "
            + ", ".join(
                f"{w.hostname} pid {w.pid} ({w.sessions} session(s)"
                + (", holding the metrics lock" if w.metrics_leader else "")
                + ")"
                for w in status.lost_workers
            )
        )
    return Health(healthy=not problems, problems=problems)


async def fetch(
    conn: asyncpg.Connection,
    dsn: str,
    settings: Settings,
    top: int,
    *,
    window: float = 300.0,
    errors: int = 5,
    max_wait: float = 300.0,
) -> Status:
    """Read the queue's state in one snapshot."""
    await check_schema(conn)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        kinds = await conn.fetch(QUERIES["job_count_by_kind"])
        tenants = await conn.fetch(QUERIES["tenant_list_backlog"], top)
        workers = await conn.fetch(QUERIES["worker_list"])
        lost = await conn.fetch(QUERIES["worker_list_unregistered"])
        finished = await conn.fetch(QUERIES["job_count_finished_recent"], window)
        failed = await conn.fetch(QUERIES["job_list_failed_latest"], window, errors)
        retrying = await conn.fetch(QUERIES["job_list_retrying"], errors)
        held = await conn.fetch(QUERIES["limit_list_held_back"], top)
    status = build(dsn, settings, kinds, tenants, workers, datetime.now(UTC))
    status.lost_workers = [lost_worker(row) for row in lost]
    status.drain = drain(finished, window)
    status.failures = [
        KindFailure(
            kind=row["kind"],
            job_id=row["id"],
            tenant=row["tenant_id"],
            attempts=row["attempts"],
            finished_at=row["finished_at"],
            age_seconds=row["age_seconds"],
            error=row["error"] or "",
            failed_in_window=row["recent"],
        )
        for row in failed
    ]
    status.retrying = [
        KindRetrying(kind=row["kind"], jobs=row["jobs"], error=row["error"] or "")
        for row in retrying
    ]
    status.held_back = [
        HeldBack(r["scope"], r["kind"], r["tenant_id"], max(r["opens_in"], 0.0)) for r in held
    ]
    status.held_back_total = sum({r["scope"]: r["in_scope"] for r in held}.values())
    status.health = health(status, max_wait)
    return status


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
        f"{_n(t['scheduled'])} scheduled, {_n(t['waiting'])} waiting, {_n(t['failed'])} failed; "
        + (
            f"oldest queued job due {age(status.oldest_queued_seconds)} ago"
            if status.oldest_queued_seconds is not None
            else "nothing queued"
        ),
        *render_drain(status),
    ]
    if status.kinds:
        out.append("")
        out += table(
            ["KIND", "QUEUED", "RUNNING", "SCHEDULED", "WAITING", "FAILED", "OLDEST QUEUED"],
            [
                [
                    shown(k.kind),
                    _n(k.queued),
                    _n(k.running),
                    _n(k.scheduled),
                    _n(k.waiting),
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
                "WAITING",
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
                    _n(r.waiting),
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
    if status.lost_workers:
        out += ["", "workers declared lost but still connected (their jobs went to others):"]
        out += table(
            ["HOST", "PID", "SESSIONS", "METRICS LOCK", "CONNECTED", "IDLE"],
            [
                [
                    shown(w.hostname),
                    str(w.pid),
                    str(w.sessions),
                    "held" if w.metrics_leader else "",
                    f"{age((status.at - w.connected_at).total_seconds())} ago",
                    age(w.idle_seconds),
                ]
                for w in status.lost_workers
            ],
            left=2,
        )
    if status.unhandled_kinds:
        out += ["", "queued jobs no live worker claims:"]
        out += [
            f"  {shown(k.kind)}: {_n(k.queued)} queued, "
            f"oldest due {age(k.oldest_queued_seconds)} ago"
            for k in status.unhandled_kinds
        ]
    out += render_held_back(status)
    out += render_errors(status)
    out += ["", render_health(status.health)]
    return "\n".join(out)


def rate(per_second: float) -> str:
    """Jobs per second, or per minute when fewer than one a second."""
    if per_second >= 1 or per_second == 0:
        return f"{per_second:,.1f}/s"
    return f"{per_second * 60:,.1f}/min"


def render_drain(status: Status) -> list[str]:
    """The drain: jobs ended per minute over the window, and what the backlog would
    take at that rate."""
    d = status.drain
    if d is None:
        return []
    minutes = len(d.per_minute)
    f = d.finished
    line = (
        f"drain: {_n(sum(f.values()))} jobs ended in the last {minutes} min "
        f"({rate(d.jobs_per_second)}; this minute so far {_n(d.per_minute[-1])}): "
        f"{_n(f['succeeded'])} succeeded, {_n(f['failed'])} failed, "
        f"{_n(f['cancelled'])} cancelled"
    )
    out = [line, "  per minute, oldest first: " + " ".join(_n(n) for n in d.per_minute)]
    queued = status.totals["queued"]
    if queued and d.jobs_per_second > 0:
        out.append(
            f"  at that rate the {_n(queued)} queued jobs take {age(queued / d.jobs_per_second)}"
        )
    elif queued:
        out.append(f"  nothing ended in the window while {_n(queued)} jobs are queued")
    return out


def render_errors(status: Status) -> list[str]:
    """The latest failure of each kind, and the kinds retrying."""
    out: list[str] = []
    if status.failures:
        minutes = round((status.drain.window_seconds if status.drain else 300) / 60)
        out += ["", f"last failures by kind (FAILED: in the last {minutes} min):"]
        out += table(
            ["KIND", "WHEN", "FAILED", "JOB", "TENANT", "ATTEMPTS", "ERROR"],
            [
                [
                    shown(f.kind),
                    f"{age(f.age_seconds)} ago",
                    _n(f.failed_in_window),
                    str(f.job_id),
                    shown(f.tenant),
                    str(f.attempts),
                    shown(f.error),
                ]
                for f in status.failures
            ],
            left=2,
        )
    if status.retrying:
        out += ["", "waiting to retry after a failed attempt:"]
        out += table(
            ["KIND", "JOBS", "LAST ERROR"],
            [[shown(r.kind), _n(r.jobs), shown(r.error)] for r in status.retrying],
        )
    return out


def render_held_back(status: Status) -> list[str]:
    """The rate limit keys held back right now, those held longest first."""
    if not status.held_back:
        return []
    shown_now = len(status.held_back)
    more = status.held_back_total - shown_now
    out = ["", "held back by a rate limit (window full):"]
    out += table(
        ["SCOPE", "KIND", "TENANT", "OPENS IN"],
        [
            [h.scope, shown(h.kind) or "-", shown(h.tenant) or "-", age(h.opens_in_seconds)]
            for h in status.held_back
        ],
        left=3,
    )
    if more > 0:
        out.append(f"  and {_n(more)} more")
    return out


def render_health(health: Health) -> str:
    """``health: ok``, or the problems, one a line."""
    if health.healthy:
        return "health: ok"
    return "health: UNHEALTHY\n" + "\n".join(f"  - {shown(p)}" for p in health.problems)


def as_json(status: Status) -> str:
    """The same, as one JSON document (times in ISO 8601, ages in seconds)."""
    return json.dumps(asdict(status), default=lambda v: v.isoformat(), indent=2)


@database_options
def status_cmd(
    top: Annotated[
        int,
        typer.Option("--tenants", min=1, max=1000, help="Tenants shown, by backlog."),
    ] = 10,
    window: Annotated[
        int,
        typer.Option(
            "--window", min=1, max=60, help="Minutes of finished jobs the drain and errors count."
        ),
    ] = 5,
    errors: Annotated[
        int,
        typer.Option("--errors", min=1, max=1000, help="Kinds shown with their latest failure."),
    ] = 5,
    max_wait: Annotated[
        float,
        typer.Option(
            "--max-wait",
            min=0,
            max=30 * 86_400,
            help="Unhealthy (exit 1) when the oldest queued job has been due longer than "
            "this many seconds; 0: never.",
        ),
    ] = 300.0,
    as_json_: JsonOpt = False,
    *,
    db: Database,
) -> None:
    """Queue health: jobs by kind and status, the drain, tenants, workers, the last
    errors by kind.

    Also the oldest queued job, the workers' heartbeats and whether each is live, and
    workers declared lost that are still connected. Exits 1 when unhealthy: jobs queued
    and no live worker, the oldest queued job older than --max-wait, a hung worker, or a
    worker declared lost still connected."""
    settings = db.settings()
    with db.url() as url:
        status = with_connection(
            url,
            lambda conn: fetch(
                conn, url, settings, top, window=window * 60.0, errors=errors, max_wait=max_wait
            ),
        )
    typer.echo(as_json(status) if as_json_ else render(status))
    if not status.health.healthy:
        raise fail("unhealthy: " + "; ".join(status.health.problems), 1)
