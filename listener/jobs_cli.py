"""``pgwake jobs ...``: acting on jobs from a terminal.

Invariants:
- ``cancel`` goes through ``pgwake.cancel_job``, exactly as an application would from
  SQL: a queued or scheduled job is cancelled at once; for a running job the worker
  holding it is told to stop its handler, which then records ``cancelled`` (no retry).
- It exits 0 when every job given was cancelled or its cancellation requested, and 1
  when any was already finished or does not exist (named on stderr).
"""

from __future__ import annotations

import json
from typing import Annotated

import asyncpg
import typer

from listener.cli_support import (
    ConfigOpt,
    DataDirOpt,
    DsnOpt,
    JsonOpt,
    database,
    fail,
    settings_from,
    with_connection,
)
from listener.queries import QUERIES

jobs_app = typer.Typer(help="Act on jobs: cancel.", no_args_is_help=True)


@jobs_app.command("cancel")
def cancel_cmd(
    job_ids: Annotated[list[int], typer.Argument(help="Ids of the jobs to cancel.", min=1)],
    as_json: JsonOpt = False,
    dsn: DsnOpt = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Cancel jobs: queued and scheduled ones at once; running ones are stopped by the
    worker that runs them within about a second."""
    settings = settings_from(dsn=dsn, config=config, data_dir=data_dir)

    async def cancel(conn: asyncpg.Connection) -> dict[int, str]:
        outcome: dict[int, str] = {}
        for job_id in job_ids:
            outcome[job_id] = await conn.fetchval(QUERIES["job_cancel"], job_id)
        return outcome

    with database(settings, announce=False) as url:
        results = with_connection(url, cancel, what="cancellation")
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
