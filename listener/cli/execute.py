"""``pgwake exec``: run one job's handler once in this process, without a worker.

Invariants:
- The handler runs as a worker runs it (listener/oneshot.py): the same context, the
  same outcomes, the same log lines (on stderr); the outcome and the result (or error)
  go to stdout, and the exit code says how it ended (OUTCOME_CODES, docs/cli.md).
- Nothing is written to ``pgwake.jobs`` unless ``--record`` is given; then the run is
  inserted after it ends, with its outcome (a run to retry is queued for the workers).
  ``--job ID`` reads the stored job and writes nothing to it.
- ``--dry-run``: ``ctx.dry_run`` is true, and ``ctx.tenant_db()`` connections are in a
  transaction rolled back at the end; the jobs the handler enqueues (``ctx.enqueue``)
  get placeholder ids (-1, -2, ...) and are printed, not inserted; ``--record`` is
  refused with it (a rehearsal leaves no trace).
- Without ``--dry-run``, the jobs the handler enqueues are inserted when the run
  succeeds, as a worker inserts them with a successful outcome (ids from the jobs'
  sequence, one transaction, with the recorded run under ``--record``); a run that does
  not succeed inserts none. A job the database refuses fails the run as it fails a
  worker's job (exit 7), and none of them is inserted.
- The central database is reached only when needed: for ``--job``, ``--record``,
  ``ctx.enqueue`` (outside a dry run), ``ctx.dependency_results()`` and the first
  ``ctx.tenant_db()`` (the pool opens no connection before).
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Annotated, Any

import anyio
import asyncpg
import typer

from listener import db, logs
from listener.children import ChildJob, insert_children
from listener.cli.options import Database, JsonOpt, database_options
from listener.cli.serve import BUILTIN_HANDLERS
from listener.cli.support import fail, guard, name_problem, payload_object, run_async
from listener.cli.terminal import shown
from listener.crypto import load_keyring
from listener.jobs import Job, Outcome, Status, storable_text
from listener.oneshot import DEFAULT_TIMEOUT, Run, new_job, run_job
from listener.queries import QUERIES
from listener.redact import redact
from listener.registry import DEFAULT_REGISTRY, load_modules
from listener.tenant_databases import TenantDatabases
from listener.tenant_pools import TenantPools

# Exit code per outcome (0-5 are every command's, see listener/cli/app.py).
OUTCOME_CODES = {
    "succeeded": 0,
    "retried": 6,  # failed (an exception, Retry, a timeout); a worker would run it again
    "failed": 7,  # failed for good (PermanentError, an invalid payload, a bad result...)
    "cancelled": 8,  # the handler raised Cancel
    "snoozed": 9,  # the handler raised Snooze
}


def _stored_job(row: Any) -> Job:
    """The job of ``job_get``'s row, in the attempt it last ran (1 if it never ran)."""
    return Job(
        id=row["id"],
        tenant_id=row["tenant_id"],
        kind=row["kind"],
        payload=row["payload"],
        priority=row["priority"],
        attempt=max(row["attempts"], 1),
        max_attempts=row["max_attempts"],
        timeout=row["timeout_seconds"],
        created_epoch=row["created_at"].timestamp(),
        run_epoch=row["run_at"].timestamp(),
        started_epoch=time.time(),
    )


async def _execute(
    dsn: str, given: Job | int, dry_run: bool, record: bool
) -> tuple[Run, int | None, bool]:
    """Run the job ``given``, or the stored job of that id; the run (failed if the jobs it
    enqueued were refused), the id recorded, if any, and whether its jobs were inserted."""
    s_pool = db.new_pool(dsn, size=2, min_size=0)
    await db.open_pool(s_pool, dsn)  # opens nothing: min_size=0
    pools = TenantPools()
    try:
        if isinstance(given, Job):
            job = given
        else:
            row = await s_pool.fetchrow(QUERIES["job_get"], given)
            if row is None:
                raise fail(f"no job {given}", 1)
            job = _stored_job(row)
        if DEFAULT_REGISTRY.get(job.kind) is None:
            raise fail(
                f"no handler for kind {shown(repr(job.kind))}; load its module with --handlers",
                3,
            )
        async with anyio.create_task_group() as tg:
            await tg.start(pools.run)
            databases = TenantDatabases(s_pool, load_keyring(), pools)
            started = datetime.now(UTC)
            run = await run_job(
                DEFAULT_REGISTRY, job, databases=databases, dry_run=dry_run, pool=s_pool
            )
            tg.cancel_scope.cancel()
        return await _store(s_pool, run, record, started)
    finally:
        await s_pool.close()


async def _store(
    s_pool: asyncpg.Pool, run: Run, record: bool, started: datetime
) -> tuple[Run, int | None, bool]:
    """Insert what the run leaves, in one transaction: the jobs a successful real run
    enqueued (as a worker inserts them with its outcome) and, with ``record``, the run.
    A job the database refuses fails the run, as the completer fails a worker's job
    (listener/completer.py), and none of them is inserted."""
    job, outcome = run.job, run.outcome
    children = [] if run.dry_run or outcome.status != Status.SUCCEEDED else run.enqueued
    if not children and not record:
        return run, None, False
    inserted = False
    recorded = None
    async with s_pool.acquire() as conn, conn.transaction():
        if children:
            try:
                async with conn.transaction():  # a savepoint: the record goes on without
                    await insert_children(conn, {job.id}, [(job.id, c) for c in children])
                inserted = True
            except asyncpg.PostgresError as exc:
                error = storable_text(redact(f"the database refused this job's outcome: {exc}"))
                outcome = Outcome(
                    job.id, job.attempt, Status.FAILED, error=error, records=outcome.records
                )
                run = replace(run, outcome=outcome)
        if record:
            status = outcome.status
            recorded = await conn.fetchval(
                QUERIES["job_insert_ran"],
                job.tenant_id,
                job.kind,
                job.payload,
                job.timeout,
                str(status),
                0 if outcome.refund else 1,
                outcome.delay,
                outcome.result if status == Status.SUCCEEDED else None,
                outcome.error,
                started,
            )
    return run, recorded, inserted


def _child(child: ChildJob) -> dict[str, Any]:
    """A job the handler enqueued, for --json."""
    return {
        "id": child.id,
        "kind": child.kind,
        "tenant": child.tenant_id,
        "payload": child.payload,
        "depends_on": list(child.depends_on),
        "run_anyway": child.run_anyway,
        "priority": child.priority,
        "delay": child.delay,
        "max_attempts": child.max_attempts,
        "timeout": child.timeout,
        "metadata": child.metadata,
    }


def _child_line(child: ChildJob) -> str:
    """A job the handler enqueued, on one line: id, kind, tenant, payload, what it waits
    for and the options that are not the defaults."""
    line = f"{child.id} {shown(child.kind)} (tenant {shown(child.tenant_id)}) "
    line += shown(json.dumps(child.payload))
    if child.depends_on:
        line += f" depends on {list(child.depends_on)}"
        if child.run_anyway:
            line += " (run anyway)"
    if child.priority:
        line += f" priority {child.priority}"
    if child.delay:
        line += f" in {child.delay:g}s"
    if child.metadata is not None:
        line += f" metadata {shown(json.dumps(child.metadata))}"
    return line


def _print_enqueued(run: Run, inserted: bool) -> None:
    if not run.enqueued:
        return
    if inserted:
        heading = "enqueued job"
    elif run.dry_run and run.outcome.status == Status.SUCCEEDED:
        heading = "would enqueue (dry run)"
    else:
        heading = "not enqueued (the run did not succeed)"
    for child in run.enqueued:
        typer.echo(f"{heading}: {_child_line(child)}")


def _print(run: Run, recorded: int | None, inserted: bool, as_json: bool) -> None:
    outcome = run.outcome
    data: dict[str, Any] = {
        "outcome": outcome.label,
        "kind": run.job.kind,
        "tenant": run.job.tenant_id,
        "attempt": run.job.attempt,
        "dry_run": run.dry_run,
        "result": outcome.result,
        "error": outcome.error,
        "delay": outcome.delay,
        "progress": run.progress,
        "records": outcome.records,
        "enqueued": [_child(child) for child in run.enqueued],
        "enqueued_inserted": inserted,
    }
    if recorded is not None:
        data["recorded_job"] = recorded
    if as_json:
        typer.echo(json.dumps(data, default=str))
        return
    dry = " (dry run: tenant database writes rolled back)" if run.dry_run else ""
    typer.echo(f"outcome: {outcome.label}{dry}")
    if outcome.status == Status.SUCCEEDED:
        typer.echo(f"result: {json.dumps(outcome.result)}")
    if outcome.error is not None:
        typer.echo(f"error: {shown(outcome.error.splitlines()[0])}")
        rest = outcome.error.splitlines()[1:]
        for line in rest:
            typer.echo(f"  {shown(line)}")
    if outcome.delay is not None and outcome.label in ("retried", "snoozed"):
        typer.echo(f"a worker would run it again in {outcome.delay:g}s")
    _print_enqueued(run, inserted)
    if recorded is not None:
        typer.echo(f"recorded as job {recorded}")


@database_options
def exec_cmd(
    kind: Annotated[
        str | None, typer.Argument(help="The job kind (handler name); or give --job.")
    ] = None,
    tenant: Annotated[str, typer.Option(help="Tenant id.")] = "default",
    payload: Annotated[str, typer.Option(help="JSON object passed to the handler.")] = "{}",
    handlers: Annotated[
        list[str] | None,
        typer.Option(
            "--handlers", help="Handler module to import (repeatable; also PGWAKE_HANDLERS)."
        ),
    ] = None,
    job_id: Annotated[
        int | None,
        typer.Option(
            "--job", min=1, help="Run this stored job's payload again (debugging a failure)."
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="ctx.dry_run is true; tenant database writes are rolled back; jobs the "
            "handler enqueues are printed, not enqueued.",
        ),
    ] = False,
    record: Annotated[
        bool, typer.Option("--record", help="Store the run in pgwake.jobs with its outcome.")
    ] = False,
    timeout: Annotated[
        float, typer.Option(min=0.001, help="Seconds the run may take (KIND only).")
    ] = DEFAULT_TIMEOUT,
    as_json: JsonOpt = False,
    *,
    db: Database,
) -> None:
    """Run one job's handler once in this process (no worker needed) and print how it
    ended; the exit code says how (0 succeeded, 6 to retry, 7 failed, 8 cancelled, 9
    snoozed)."""
    if (kind is None) == (job_id is None):
        raise fail("give a KIND or --job ID (one of them)", 2)
    if record and (dry_run or job_id is not None):
        raise fail("--record runs a new job for real: not with --dry-run or --job", 2)
    given: Job | int
    if kind is None:
        given = job_id or 0
    else:
        for flag, value in (("KIND", kind), ("--tenant", tenant)):
            problem = name_problem(value)
            if problem is not None:
                raise fail(f"{flag} {problem}", 2)
        given = new_job(kind, payload_object(payload), tenant=tenant, timeout=timeout)
    settings = db.settings()
    logs.configure(settings.log_format, settings.log_level)
    guard(load_modules, [BUILTIN_HANDLERS, *settings.handlers, *(handlers or [])])
    if isinstance(given, Job):
        guard(DEFAULT_REGISTRY.restricted_to, [given.kind])  # unknown kind: exit 3
    with db.url() as url:
        run, recorded, inserted = guard(run_async, _execute, url, given, dry_run, record)
    _print(run, recorded, inserted, as_json)
    raise typer.Exit(OUTCOME_CODES[run.outcome.label])
