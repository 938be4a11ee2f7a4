"""``pgwake limits ...``: rate limits per kind, across tenants or within each tenant, and
the ``--rate`` option the tenant commands share.

Invariants:
- A rate is parsed by :func:`listener.rates.parse_rate` before the database is reached:
  bad text exits 2 with a message naming the problem; the schema's constraints refuse
  the same values for applications that write the rows themselves.
- A change takes effect at every worker's next claim and wakes the workers (the
  triggers on pgwake.limits and pgwake.tenants send the NOTIFY).
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from listener.cli.options import Database, JsonOpt, database_options
from listener.cli.support import echo_result, fail
from listener.cli.terminal import shown
from listener.queries import QUERIES
from listener.rates import Rate, RateError, format_rate, parse_rate

limits_app = typer.Typer(
    help="Rate limits per kind: at most N jobs of a kind started per period.",
    no_args_is_help=True,
)

KindArg = Annotated[str, typer.Argument(help="The kind (as in jobs.kind).")]
RateText = Annotated[
    str,
    typer.Option(
        "--rate",
        help="At most N jobs started per period: N/s, N/min, N/h, N/day, or N/<count><unit> "
        "(5/10s); a period of one second to one day.",
    ),
]
PerTenantOpt = Annotated[
    bool,
    typer.Option("--per-tenant", help="The limit holds within each tenant, not across them."),
]


def rate_given(text: str) -> Rate:
    """The parsed ``--rate``; exits 2 on bad text."""
    try:
        return parse_rate(text)
    except RateError as exc:
        raise fail(str(exc), 2) from None


def rate_option(text: str | None) -> Rate | None:
    """The parsed ``--rate``, or None when not given; exits 2 on bad text."""
    return None if text is None else rate_given(text)


def rate_shown(jobs: int | None, seconds: float | None) -> str:
    """A rate for a table: ``10/s``, or ``-`` for none."""
    return "-" if jobs is None or seconds is None else format_rate(jobs, seconds)


@limits_app.command("set")
@database_options
def set_cmd(
    kind: KindArg,
    rate: RateText,
    per_tenant: PerTenantOpt = False,
    as_json: JsonOpt = False,
    *,
    db: Database,
) -> None:
    """Set a kind's rate limit (replacing the one it had), across tenants or per tenant."""
    parsed = rate_given(rate)
    db.run(
        lambda c: c.fetchval(QUERIES["limit_set"], kind, per_tenant, parsed.jobs, parsed.seconds)
    )
    text = format_rate(parsed.jobs, parsed.seconds)
    scope = "within each tenant" if per_tenant else "across tenants"
    echo_result(
        {"kind": kind, "rate": text, "per_tenant": per_tenant},
        as_json,
        f"limited kind {shown(kind)} to {text} {scope}",
    )


@limits_app.command("list")
@database_options
def list_cmd(
    as_json: JsonOpt = False,
    *,
    db: Database,
) -> None:
    """Every kind rate limit, and how many of its windows are full right now."""
    rows = db.run(lambda c: c.fetch(QUERIES["limit_list"]))
    items = [
        {
            "kind": r["kind"],
            "per_tenant": r["per_tenant"],
            "rate": format_rate(r["rate_limit"], r["rate_period_seconds"]),
            "held_back": r["held_back"],
            "updated_at": r["updated_at"],
        }
        for r in rows
    ]
    if as_json:
        typer.echo(json.dumps(items, default=str))
        return
    typer.echo(f"{'KIND':<32} {'RATE':>12} {'SCOPE':>12} {'HELD BACK':>10}")
    for item in items:
        scope = "per tenant" if item["per_tenant"] else "all tenants"
        typer.echo(
            f"{shown(item['kind']):<32} {item['rate']:>12} {scope:>12} {item['held_back']:>10}"
        )


@limits_app.command("remove")
@database_options
def remove_cmd(
    kind: KindArg,
    per_tenant: PerTenantOpt = False,
    as_json: JsonOpt = False,
    *,
    db: Database,
) -> None:
    """Remove a kind's rate limit (across tenants, or with --per-tenant the one within
    each tenant)."""
    row = db.run(lambda c: c.fetchval(QUERIES["limit_remove"], kind, per_tenant))
    scope = "per-tenant " if per_tenant else ""
    if row is None:
        raise fail(f"kind {kind!r} has no {scope}rate limit", 1)
    echo_result(
        {"removed": kind, "per_tenant": per_tenant},
        as_json,
        f"removed the {scope}rate limit of kind {shown(kind)}",
    )
