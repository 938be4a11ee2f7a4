"""``pgwake schedules ...``: cron schedules from a terminal.

Invariants:
- ``add`` refuses (exit 2) a cron expression or time zone the workers could not
  evaluate, a payload that is not a JSON object and an unknown missed-slot policy;
  nothing is written then. What the jobs table would refuse in the schedule's jobs
  (a blank or over 200-character tenant, a payload over 1 MiB) is refused too (exit 2)
  by pgwake.schedules' own checks, named as the jobs table names them
  (schedules_tenant_id_not_empty for jobs_tenant_id_not_empty, and so on).
- ``list`` shows a disabled schedule with the reason the leader recorded.
- A schedule's first slot is the first one after a worker's next round sees it.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import asyncpg
import typer

from listener.cli.options import Database, JsonOpt, database_options
from listener.cli.support import fail, name_problem, payload_object
from listener.cli.terminal import shown
from listener.maintenance.schedules import MISSED_POLICIES, check_schedule
from listener.queries import QUERIES

schedules_app = typer.Typer(
    help="Cron schedules that enqueue jobs: add, list, remove.", no_args_is_help=True
)

NameArg = Annotated[str, typer.Argument(help="The schedule's name (unique).")]


@schedules_app.command("add")
@database_options
def add_cmd(
    name: NameArg,
    cron: Annotated[str, typer.Option("--cron", help="5-field cron, e.g. '0 */6 * * *'.")],
    kind: Annotated[str, typer.Option("--kind", help="Kind of the jobs to enqueue.")],
    tenant: Annotated[
        str | None,
        typer.Option("--tenant", help="Enqueue for this tenant (default: every tenant)."),
    ] = None,
    payload: Annotated[str, typer.Option("--payload", help="JSON object.")] = "{}",
    timezone: Annotated[str, typer.Option("--timezone", help="IANA time zone.")] = "UTC",
    missed: Annotated[
        str, typer.Option("--missed", help="After downtime: skip (run the latest) or catch_up.")
    ] = "skip",
    priority: Annotated[int, typer.Option(min=-1000, max=1000, help="Job priority.")] = 0,
    max_attempts: Annotated[int, typer.Option(min=1, max=1000, help="Job attempts.")] = 20,
    as_json: JsonOpt = False,
    *,
    db: Database,
) -> None:
    """Add a schedule: every slot of --cron (in --timezone) enqueues one job of --kind
    for --tenant, or one for every tenant in pgwake.tenants."""
    name_error = name_problem(name)
    if name_error is not None:
        raise fail(f"the schedule name {name_error}", 2)
    problem = check_schedule(cron, timezone)
    if problem is not None:
        raise fail(problem, 2)
    if missed not in MISSED_POLICIES:
        raise fail(f"--missed must be one of {', '.join(MISSED_POLICIES)}; got {missed!r}", 2)
    body = payload_object(payload)

    async def add(conn: asyncpg.Connection) -> None:
        try:
            await conn.fetchval(
                QUERIES["schedule_add"],
                name,
                cron,
                timezone,
                kind,
                body,
                tenant,
                priority,
                max_attempts,
                missed,
            )
        except asyncpg.UniqueViolationError:
            raise fail(f"schedule {name!r} exists already", 1) from None
        except asyncpg.CheckViolationError as exc:
            raise fail(f"the database refused the schedule: {exc}", 2) from None

    db.run(add, what="schedule")
    who = "every tenant" if tenant is None else f"tenant {tenant}"
    text = f"added schedule {name}: {cron} ({timezone}) enqueues {kind} for {who}"
    typer.echo(json.dumps({"added": name}) if as_json else text)


@schedules_app.command("list")
@database_options
def list_cmd(
    as_json: JsonOpt = False,
    *,
    db: Database,
) -> None:
    """List schedules with their next slot."""

    async def fetch(conn: asyncpg.Connection) -> list[dict[str, Any]]:
        return [dict(r) for r in await conn.fetch(QUERIES["schedule_list"])]

    rows = db.run(fetch)
    if as_json:
        typer.echo(json.dumps({"schedules": rows}, default=str))
        return
    for r in rows:
        state = "enabled" if r["enabled"] else f"DISABLED ({r['last_error'] or 'by hand'})"
        tenant = "every tenant" if r["tenant_id"] is None else r["tenant_id"]
        typer.echo(
            shown(
                f"{r['name']}: '{r['cron']}' {r['timezone']} -> {r['kind']} for {tenant}; "
                f"next {r['next_run_at'] or 'at the next round'}; missed={r['missed']}; {state}"
            )
        )


@schedules_app.command("remove")
@database_options
def remove_cmd(
    name: NameArg,
    as_json: JsonOpt = False,
    *,
    db: Database,
) -> None:
    """Remove a schedule (the jobs it enqueued stay)."""

    async def remove(conn: asyncpg.Connection) -> str | None:
        removed: str | None = await conn.fetchval(QUERIES["schedule_remove"], name)
        return removed

    removed = db.run(remove)
    if removed is None:
        raise fail(f"schedule {name!r} does not exist", 1)
    typer.echo(json.dumps({"removed": name}) if as_json else f"removed schedule {name}")
