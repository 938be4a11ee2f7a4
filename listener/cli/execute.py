"""``pgwake exec``: run one job's handler once in this process, without a worker.

Invariants:
- The handler runs as a worker runs it (listener/oneshot.py): the same context, the
  same outcomes, the same log lines (on stderr); the outcome and the result (or error)
  go to stdout, and the exit code says how it ended (OUTCOME_CODES, docs/cli.md).
- Nothing is written to ``pgwake.jobs`` unless ``--record`` is given; then the run is
  inserted after it ends, with its outcome (a run to retry is queued for the workers).
  ``--job ID`` reads the stored job and writes nothing to it.
- ``--dry-run``: ``ctx.dry_run`` is true, and ``ctx.tenant_db()`` connections are in a
  transaction rolled back at the end; ``--record`` is refused with it (a rehearsal
  leaves no trace).
- The central database is reached only when needed: for ``--job``, ``--record`` and the
  first ``ctx.tenant_db()`` (the pool opens no connection before).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

import anyio
import typer

from listener import db, logs
from listener.cli.options import Database, database_options
from listener.cli.support import JsonOpt, fail, guard, name_problem, payload_object, run_async
from listener.cli.terminal import shown
from listener.cli.worker import BUILTIN_HANDLERS
from listener.crypto import load_keyring
from listener.jobs import Job, Status
from listener.oneshot import DEFAULT_TIMEOUT, Run, new_job, run_job
from listener.queries import QUERIES
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
        created_at=row["created_at"],
        run_at=row["run_at"],
        started_at=datetime.now(UTC),
    )


async def _execute(
    dsn: str, given: Job | int, dry_run: bool, record: bool
) -> tuple[Run, int | None]:
    """Run the job ``given``, or the stored job of that id; the id recorded, if any."""
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
            run = await run_job(DEFAULT_REGISTRY, job, databases=databases, dry_run=dry_run)
            tg.cancel_scope.cancel()
        recorded = None
        if record:
            outcome = run.outcome
            status = outcome.status
            attempts = 0 if outcome.refund else 1
            recorded = await s_pool.fetchval(
                QUERIES["job_insert_ran"],
                job.tenant_id,
                job.kind,
                job.payload,
                job.timeout,
                str(status),
                attempts,
                outcome.delay,
                outcome.result if status == Status.SUCCEEDED else None,
                outcome.error,
                started,
            )
        return run, recorded
    finally:
        await s_pool.close()


def _print(run: Run, recorded: int | None, as_json: bool) -> None:
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
            "--dry-run", help="ctx.dry_run is true; tenant database writes are rolled back."
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
        run, recorded = guard(run_async, _execute, url, given, dry_run, record)
    _print(run, recorded, as_json)
    raise typer.Exit(OUTCOME_CODES[run.outcome.label])
