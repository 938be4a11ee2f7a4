"""``pgwake jobs ...``: acting on jobs from a terminal.

Invariants:
- ``cancel`` goes through ``pgwake.cancel_job``, exactly as an application would from
  SQL: a queued or scheduled job is cancelled at once; for a running job the worker
  holding it is told to stop its handler, which then records ``cancelled`` (no retry).
- It exits 0 when every job given was cancelled or its cancellation requested, and 1
  when any was already finished or does not exist (named on stderr).
- ``list`` and ``show`` work for every row the table holds: a payload, progress or
  result Python cannot decode is shown as stored, with the reason (db.UndecodableJson).
- ``retry`` touches only failed or cancelled jobs; ``purge`` only finished ones, and asks
  for confirmation (or ``--yes``); it keeps a job whose unique window (``unique_until``)
  is still open, since the window holds its key through the row, and says how many.
  No command here ever changes a running job's row except through
  ``pgwake.cancel_job``.
- ``retry`` queues again every job it can: a job whose unique key an active job holds
  (or another job retried with it) stays as it is, and is named with the reason; the
  command then exits 1.
- A job id is 1..2^63-1 (a bigint); any other exits 2 before anything is read.
- Text from the database is printed with control characters escaped
  (listener/cli/terminal.py); ``--json`` output is escaped by JSON itself.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Annotated, Any

import asyncpg
import typer

from listener.cli.options import Database, JsonOpt, database_options
from listener.cli.support import fail
from listener.cli.terminal import shown, shown_lines
from listener.db import UndecodableJson
from listener.jobs import FINISHED, Status
from listener.queries import QUERIES

jobs_app = typer.Typer(
    help="Look at and act on jobs: list, show, retry, cancel, purge.", no_args_is_help=True
)

TenantOpt = Annotated[str | None, typer.Option("--tenant", help="Only this tenant's jobs.")]
KindOpt = Annotated[str | None, typer.Option("--kind", help="Only jobs of this kind.")]


MAX_JOB_ID = 2**63 - 1


def _check_ids(ids: list[int] | None, what: str = "job id") -> None:
    """Exit 2 unless every id is a positive bigint."""
    for job_id in ids or ():
        if not 1 <= job_id <= MAX_JOB_ID:
            raise fail(f"{what} must be from 1 to {MAX_JOB_ID}; got {job_id}", 2)


def _check_status(status: str | None, allowed: Sequence[Status]) -> None:
    if status is not None and status not in allowed:
        raise fail(f"--status must be one of {', '.join(allowed)}; got {status!r}", 2)


def _metadata_filter(pairs: list[str]) -> dict[str, str] | None:
    """The object a job's metadata must contain for ``--meta KEY=VALUE`` pairs (values
    are strings); None for no pair. Exit 2 on a pair without ``=`` or with an empty key,
    or one key given two values."""
    contains: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise fail(f"--meta takes KEY=VALUE; got {pair!r}", 2)
        if contains.get(key, value) != value:
            raise fail(f"--meta gives {key!r} two values; no job can match both", 2)
        contains[key] = value
    return contains or None


def _json(data: Any) -> str:
    return json.dumps(data, default=str)


@jobs_app.command("list")
@database_options
def list_cmd(
    tenant: TenantOpt = None,
    kind: KindOpt = None,
    status: Annotated[
        str | None, typer.Option("--status", help=f"One of {', '.join(Status)}.")
    ] = None,
    older_than: Annotated[
        float | None,
        typer.Option(
            "--older-than", min=0, help="Only jobs created at least this many seconds ago."
        ),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10_000, help="Page size.")] = 50,
    before: Annotated[
        int | None,
        typer.Option("--before", help="Only ids below this (the last id of the previous page)."),
    ] = None,
    meta: Annotated[
        list[str] | None,
        typer.Option(
            "--meta",
            help="Only jobs whose metadata has KEY with the string VALUE (KEY=VALUE; "
            "repeat for several, all must match).",
            show_default=False,
        ),
    ] = None,
    archived: Annotated[
        bool,
        typer.Option(
            "--archived",
            help="List the archive (pgwake.jobs_archive: finished jobs retention moved "
            "there, with retention_archive on) instead of the queue.",
        ),
    ] = False,
    as_json: JsonOpt = False,
    *,
    db: Database,
) -> None:
    """List jobs, newest first. Page with --before LAST_ID."""
    _check_status(status, list(FINISHED) if archived else list(Status))
    _check_ids([before] if before is not None else None, "--before")
    contains = _metadata_filter(meta or [])
    if archived and older_than is not None:
        raise fail("--older-than does not go with --archived", 2)

    async def fetch(conn: asyncpg.Connection) -> list[dict[str, Any]]:
        if archived:
            rows = await conn.fetch(
                QUERIES["job_list_archived"], tenant, kind, status, limit, before, contains
            )
        else:
            rows = await conn.fetch(
                QUERIES["job_list"], tenant, kind, status, older_than, limit, before, contains
            )
        return [dict(r) for r in rows]

    rows = db.run(fetch)
    if as_json:
        typer.echo(_json({"jobs": rows, "next_before": rows[-1]["id"] if rows else None}))
        return
    typer.echo(f"{'id':>10} {'status':<10} {'tenant':<16} {'kind':<24} {'att':>7}  error")
    for r in rows:
        attempts = f"{r['attempts']}/{r['max_attempts']}"
        typer.echo(
            f"{r['id']:>10} {r['status']:<10} {shown(r['tenant_id'])[:16]:<16} "
            f"{shown(r['kind'])[:24]:<24} {attempts:>7}  {shown(r['error'] or '')[:80]}"
        )
    if len(rows) == limit:
        typer.echo(f"(more: --before {rows[-1]['id']})")


@jobs_app.command("show")
@database_options
def show_cmd(
    job_id: Annotated[int, typer.Argument(help="The job's id.")],
    as_json: JsonOpt = False,
    *,
    db: Database,
) -> None:
    """Show one job: every column, including payload, progress, result and error, the
    jobs it depends on (with their status) and the waiting jobs that wait for it."""
    _check_ids([job_id])

    async def fetch(conn: asyncpg.Connection) -> dict[str, Any] | None:
        row = await conn.fetchrow(QUERIES["job_get"], job_id)
        if row is None:
            # No longer in the queue: retention may have archived it.
            row = await conn.fetchrow(QUERIES["job_get_archived"], job_id)
        if row is None:
            return None
        job = dict(row)
        links = await conn.fetch(QUERIES["job_list_dependencies"], job_id, SHOWN_WAITING)
        for direction in ("depends_on", "waited_for_by"):
            job[f"{direction}_jobs"] = [
                {"id": r["id"], "kind": r["kind"], "status": r["status"]}
                for r in links
                if r["direction"] == direction
            ]
        return job

    job = db.run(fetch)
    if job is None:
        raise fail(f"job {job_id} not found", 1)
    if as_json:
        typer.echo(_json(job))
        return
    depends, waited = job.pop("depends_on_jobs"), job.pop("waited_for_by_jobs")
    for key, value in job.items():
        text = json.dumps(value) if isinstance(value, (dict, list)) else value
        if isinstance(value, UndecodableJson):  # stored as is; Python cannot decode it
            text = f"{value.text}  ({value.reason})"
        if key == "last_error" and value:
            typer.echo(f"{key}:\n{shown_lines(value)}")
        else:
            typer.echo(f"{key}: {'' if text is None else shown(text)}")
    typer.echo(f"waits for: {_links(depends) or '-'}")
    typer.echo(
        f"waited for by: {_links(waited) or '-'}"
        + (f" (the first {SHOWN_WAITING})" if len(waited) == SHOWN_WAITING else "")
    )


# Waiting jobs `jobs show` lists as waiting for a job (a fan-in may have thousands).
SHOWN_WAITING = 100


def _links(jobs: list[dict[str, Any]]) -> str:
    """``id (kind, status)`` for each job; a job removed since has no status."""
    return ", ".join(
        f"{j['id']} ({shown(j['kind'])}, {j['status']})" if j["status"] else f"{j['id']} (gone)"
        for j in jobs
    )


@jobs_app.command("retry")
@database_options
def retry_cmd(
    job_ids: Annotated[
        list[int] | None,
        typer.Argument(help="Ids of failed or cancelled jobs.", show_default=False),
    ] = None,
    failed: Annotated[
        bool, typer.Option("--failed", help="Every failed job (narrow with --kind, --tenant).")
    ] = False,
    kind: KindOpt = None,
    tenant: TenantOpt = None,
    as_json: JsonOpt = False,
    *,
    db: Database,
) -> None:
    """Run failed or cancelled jobs again: queued now, attempts reset, last error kept."""
    if bool(job_ids) == failed:
        raise fail("give job ids, or --failed (with --kind/--tenant to narrow), not both", 2)
    if job_ids and (kind or tenant):
        raise fail("--kind and --tenant go with --failed, not with job ids", 2)
    _check_ids(job_ids)

    async def retry(conn: asyncpg.Connection) -> tuple[list[int], dict[int, str]]:
        # The statement leaves out jobs whose unique key is taken; an active job
        # inserted between its look and its update still makes it fail: look again.
        for attempt in range(RETRY_RACES):
            try:
                rows = await conn.fetch(QUERIES["job_retry"], job_ids or None, kind, tenant)
                break
            except asyncpg.UniqueViolationError:
                if attempt == RETRY_RACES - 1:
                    raise
        retried = [r["id"] for r in rows if r["retried"]]
        if retried:
            await conn.execute(QUERIES["worker_wake"])
        skipped = {
            r["id"]: (
                f"job {r['held_by']}, with the same unique key, is retried instead"
                if r["instead"]
                else f"its unique key is held by active job {r['held_by']}"
            )
            for r in rows
            if not r["retried"]
        }
        return retried, skipped

    retried, skipped = db.run(retry, what="retry")
    if as_json:
        data: dict[str, Any] = {"retried": retried}
        if skipped:
            data["not_retried"] = {str(k): v for k, v in skipped.items()}
        typer.echo(_json(data))
    else:
        typer.echo(
            f"queued again: {len(retried)} job(s)"
            + (f" ({', '.join(map(str, retried))})" if retried and len(retried) <= 20 else "")
        )
    missing = sorted(set(job_ids or ()) - set(retried) - set(skipped))
    problems = []
    if missing:
        problems.append(
            "not retried (not failed or cancelled, or not found): " + ", ".join(map(str, missing))
        )
    if skipped:
        problems.append(
            "not retried (unique key taken): "
            + ", ".join(f"{job_id} ({why})" for job_id, why in sorted(skipped.items()))
        )
    if problems:
        raise fail("; ".join(problems), 1)


# Times jobs retry runs its statement when an active job takes a unique key meanwhile.
RETRY_RACES = 3


@jobs_app.command("purge")
@database_options
def purge_cmd(
    status: Annotated[
        str | None,
        typer.Option("--status", help=f"One of {', '.join(FINISHED)} (default: all three)."),
    ] = None,
    older_than: Annotated[
        float | None,
        typer.Option(
            "--older-than", min=0, help="Only jobs that finished at least this many seconds ago."
        ),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    as_json: JsonOpt = False,
    *,
    db: Database,
) -> None:
    """Delete finished jobs now (never queued, scheduled or running ones, nor those whose
    unique window is still open)."""
    _check_status(status, FINISHED)
    if not yes:
        if not sys.stdin.isatty():
            raise fail("refusing to purge without --yes (no terminal to confirm on)", 2)
        what = status or "finished"
        age = f" that finished over {older_than:g}s ago" if older_than is not None else ""
        typer.confirm(f"Delete every {what} job{age}?", abort=True)

    async def purge(conn: asyncpg.Connection) -> tuple[int, int]:
        row = await conn.fetchrow(QUERIES["job_purge"], status, older_than)
        assert row is not None
        return row["purged"], row["kept"]

    deleted, kept = db.run(purge, what="purge")
    if as_json:
        typer.echo(_json({"purged": deleted, "kept_for_unique_window": kept}))
        return
    window = f"; kept {kept} whose unique window is still open" if kept else ""
    typer.echo(f"purged {deleted} job(s){window}")


@jobs_app.command("cancel")
@database_options
def cancel_cmd(
    job_ids: Annotated[list[int], typer.Argument(help="Ids of the jobs to cancel.")],
    as_json: JsonOpt = False,
    *,
    db: Database,
) -> None:
    """Cancel jobs: queued and scheduled ones at once; running ones are stopped by the
    worker that runs them within about a second."""
    _check_ids(job_ids)

    async def cancel(conn: asyncpg.Connection) -> dict[int, str]:
        outcome: dict[int, str] = {}
        for job_id in job_ids:
            outcome[job_id] = await conn.fetchval(QUERIES["job_cancel"], job_id)
        return outcome

    results = db.run(cancel, what="cancellation")
    if as_json:
        typer.echo(json.dumps({str(k): v for k, v in results.items()}))
    else:
        for job_id, result in results.items():
            typer.echo(f"job {job_id}: {result}")
    refused = [job_id for job_id, result in results.items() if result in ("finished", "not found")]
    if refused:
        raise fail(
            "could not cancel job(s) " + ", ".join(f"{j} ({results[j]})" for j in refused),
            1,
        )
