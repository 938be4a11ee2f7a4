"""``pgwake enqueue``: one job from the command line (applications simply INSERT).

Invariants:
- The row is inserted by one statement, the Python API's (sql/queries/api.sql:
  job_insert), with
  ``ON CONFLICT DO NOTHING``: a job whose unique key is taken is never inserted, by an
  active job (``--unique-key``) or, with ``--unique-for``, by a job of the same key and
  period inserted in the same window (jobs_unique_window_idx), even one that finished.
  The command then names the job that holds the key (job_get_key_holder) and exits 1.
- ``--depends-on``, ``--run-anyway`` and ``--metadata`` set the columns of the same
  names; the dependencies are checked by the database as for any INSERT (they must
  exist in the job's tenant), and a refusal names its constraint.
- Durations (``--unique-for``) are seconds, or a number with a unit: ``ms``, ``s``,
  ``m`` or ``min``, ``h``, ``d``. Anything else exits 2 before the database is reached;
  a period the table refuses (zero, negative, over 366 days) exits 2 with the name of
  the constraint, as every value the table refuses does.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime
from typing import Annotated, Any

import asyncpg
import typer

from listener import logs
from listener.cli.options import Database, JsonOpt, database_options
from listener.cli.support import fail, name_problem, payload_object
from listener.cli.terminal import shown
from listener.enqueue import depends_on_literal, metadata_json, payload_json
from listener.queries import QUERIES

# Seconds in each unit a duration may be given in.
UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-z]*)\s*")


def duration_seconds(text: str, flag: str) -> float:
    """``text`` (``90``, ``1.5s``, ``10m``, ``2h``, ``1d``) in seconds; anything else
    exits 2 naming ``flag``. The sign is not accepted here, so a negative duration is
    no duration at all; zero is returned for the database to refuse by name."""
    match = _DURATION.fullmatch(text.lower())
    if match is None or match.group(2) not in ("", *UNITS):
        raise fail(
            f"{flag} must be seconds or a number with a unit ({', '.join(UNITS)}), "
            f"like 30s, 10m, 2h or 1d; got {shown(text)!r}",
            2,
        )
    seconds = float(match.group(1)) * UNITS[match.group(2) or "s"]
    if not math.isfinite(seconds):
        raise fail(f"{flag} is too large: {shown(text)!r}", 2)
    return seconds


def _holder_text(holder: asyncpg.Record | None, unique_key: str | None) -> str:
    """Why the key is taken, for the message of a skipped insert."""
    key = f"unique key {shown(repr(unique_key))}"
    if holder is None:  # the holder finished, or its window ended, since the insert
        return f"{key} was taken a moment ago (try again)"
    if holder["active"]:
        return f"{key} is taken by an active job (job {holder['id']}, {holder['status']})"
    until: datetime = holder["unique_until"]
    return (
        f"{key} is taken in this window by job {holder['id']} ({holder['status']}) "
        f"until {until.isoformat()}"
    )


@database_options
def enqueue_cmd(
    kind: Annotated[str, typer.Argument(help="The job kind (handler name).")],
    tenant: Annotated[str, typer.Option(help="Tenant id.")] = "default",
    payload: Annotated[str, typer.Option(help="JSON object passed to the handler.")] = "{}",
    priority: Annotated[int, typer.Option(help="Higher runs first within a tenant.")] = 0,
    delay: Annotated[float, typer.Option(help="Seconds from now before it may run.")] = 0.0,
    max_attempts: Annotated[
        int | None, typer.Option(help="Attempts before failing (default 20).")
    ] = None,
    unique_key: Annotated[
        str | None, typer.Option(help="At most one active job per tenant, kind and key.")
    ] = None,
    unique_for: Annotated[
        str | None,
        typer.Option(
            help="With --unique-key: also at most one job per window of this period "
            "(30s, 10m, 2h, 1d; up to 366 days), even after it finished.",
            show_default=False,
        ),
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(help="Seconds a run may take (default 900).")
    ] = None,
    depends_on: Annotated[
        list[int] | None,
        typer.Option(
            "--depends-on",
            min=1,
            help="A job of the tenant that must succeed first (repeatable); it waits.",
        ),
    ] = None,
    run_anyway: Annotated[
        bool,
        typer.Option(
            "--run-anyway", help="With --depends-on: run once they finished, whatever the outcome."
        ),
    ] = False,
    metadata: Annotated[
        str | None,
        typer.Option(help="JSON object of context that is not the payload (a batch, a user)."),
    ] = None,
    as_json: JsonOpt = False,
    *,
    db: Database,
) -> None:
    """Enqueue one job (applications can simply INSERT INTO pgwake.jobs)."""
    body = payload_object(payload)
    try:
        encoded = payload_json(body)
        meta = None if metadata is None else metadata_json(payload_object(metadata, "--metadata"))
    except (TypeError, ValueError) as exc:  # NUL, NaN, a value JSON cannot hold
        raise fail(str(exc), 2) from None
    for flag, value in (("KIND", kind), ("--tenant", tenant)):
        problem = name_problem(value)
        if problem is not None:
            raise fail(f"{flag} {problem}", 2)
    period = duration_seconds(unique_for, "--unique-for") if unique_for is not None else None
    settings = db.settings()
    logs.configure(settings.log_format, settings.log_level)
    args = (
        tenant, kind, encoded, priority, None, delay, max_attempts, unique_key,
        timeout, period, depends_on_literal(depends_on) if depends_on else None,
        run_anyway or None, meta,
    )  # fmt: skip

    async def enqueue(conn: asyncpg.Connection) -> tuple[asyncpg.Record | None, Any]:
        row = await conn.fetchrow(QUERIES["job_insert"], *args)
        if row is not None:
            return row, None
        holder = await conn.fetchrow(
            QUERIES["job_get_key_holder"], tenant, kind, unique_key, period
        )
        return None, holder

    row, holder = db.run(enqueue, what="job")
    if row is None:
        why = _holder_text(holder, unique_key)
        if as_json:
            message: dict[str, Any] = {"enqueued": False, "reason": why}
            if holder is not None:
                message["held_by"] = holder["id"]
            typer.echo(json.dumps(message, default=str))
        else:
            typer.echo(f"not enqueued: {why}")
        raise typer.Exit(1)
    if as_json:
        data: dict[str, Any] = {"enqueued": True, "id": row["id"], "status": row["status"]}
        if row["unique_until"] is not None:
            data["unique_until"] = row["unique_until"].isoformat()
        typer.echo(json.dumps(data))
    else:
        until = row["unique_until"]
        window = f", its key held until {until.isoformat()}" if until is not None else ""
        typer.echo(f"enqueued job {row['id']} ({row['status']}{window})")
