"""``pgwake tenants ...``: per-tenant settings from a terminal.

Invariants:
- A tenant's database DSN is read from standard input (or a hidden prompt on a
  terminal), never from argv, is stored only encrypted with the primary key, and is
  never printed: ``show`` says only whether there is one and which key encrypted it.
- ``resume`` wakes every worker, so the tenant's queued jobs start at once.
- ``rotate-key`` re-encrypts every DSN not under the primary key with compare-and-set
  writes, while workers keep running (they accept every configured key).
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import asyncpg
import typer

from listener.cli.limits import rate_option, rate_shown
from listener.cli.options import Database, JsonOpt, database_options
from listener.cli.support import echo_result, fail
from listener.cli.terminal import shown
from listener.crypto import NO_KEY_HINT, DecryptionError, Keyring, load_keyring
from listener.dsn import SCHEMES, DsnError, parse_dsn
from listener.errors import PgwakeError
from listener.queries import QUERIES

tenants_app = typer.Typer(
    help="Per-tenant settings: fleet-wide caps, weights, pausing, own databases.",
    no_args_is_help=True,
)

TenantArg = Annotated[str, typer.Argument(help="The tenant id (as in jobs.tenant_id).")]
MaxConcurrencyOpt = Annotated[
    int | None,
    typer.Option(
        "--max-concurrency",
        min=0,
        max=100_000,
        help="Most jobs of this tenant running at once across all workers.",
        show_default=False,
    ),
]
WeightOpt = Annotated[
    int | None,
    typer.Option(min=1, max=100, help="Share of each claim (default 1).", show_default=False),
]
RateOpt = Annotated[
    str | None,
    typer.Option(
        "--rate",
        help="At most N jobs of this tenant started per period, across all workers: "
        "N/s, N/min, N/h, N/day or N/<count><unit> (5/10s).",
        show_default=False,
    ),
]
DatabaseOpt = Annotated[
    bool,
    typer.Option(
        "--database",
        help="Read the tenant's own database DSN from stdin (a hidden prompt on a terminal).",
    ),
]


def _keyring() -> Keyring:
    try:
        keyring = load_keyring()
    except PgwakeError as exc:
        raise fail(str(exc), exc.exit_code) from None
    if keyring is None:
        raise fail(f"no encryption key configured: {NO_KEY_HINT}", 3)
    return keyring


def _read_dsn(tenant: str) -> str:
    """The DSN from a hidden prompt or stdin; never echoed."""
    if sys.stdin.isatty():
        dsn = str(typer.prompt(f"Database DSN for tenant {tenant!r}", hide_input=True))
    else:
        dsn = sys.stdin.readline()
    dsn = dsn.strip()
    if not dsn.startswith(SCHEMES):
        raise fail(
            "the tenant database DSN must be a libpq URL starting with postgresql:// or "
            "postgres://",
            2,
        )
    try:
        parse_dsn(dsn)
    except DsnError as exc:
        raise fail(f"the tenant database DSN is refused: {exc}", 2) from None
    return dsn


def _encrypted_dsn(tenant: str) -> str:
    keyring = _keyring()  # check the key before asking for the DSN
    return keyring.encrypt(tenant, _read_dsn(tenant))


@tenants_app.command("add")
@database_options
def add_cmd(
    tenant: TenantArg,
    max_concurrency: MaxConcurrencyOpt = None,
    weight: WeightOpt = None,
    paused: Annotated[bool, typer.Option("--paused", help="Start paused.")] = False,
    rate: RateOpt = None,
    with_database: DatabaseOpt = False,
    as_json: JsonOpt = False,
    *,
    db: Database,
) -> None:
    """Add a tenant with its settings."""
    parsed = rate_option(rate)
    db.settings()  # a bad setting exits before the DSN is asked for
    ciphertext = _encrypted_dsn(tenant) if with_database else None
    args = (
        tenant,
        max_concurrency,
        weight or 1,
        paused,
        ciphertext,
        parsed and parsed.jobs,
        parsed and parsed.seconds,
    )
    row = db.run(lambda c: c.fetchrow(QUERIES["tenant_add"], *args))
    if row is None:
        raise fail(f"tenant {tenant!r} exists already; change it with `pgwake tenants set`", 1)
    echo_result({"added": tenant}, as_json, f"added tenant {tenant}")


@tenants_app.command("set")
@database_options
def set_cmd(
    tenant: TenantArg,
    max_concurrency: MaxConcurrencyOpt = None,
    no_max_concurrency: Annotated[
        bool, typer.Option("--no-max-concurrency", help="Remove the fleet-wide cap.")
    ] = False,
    weight: WeightOpt = None,
    rate: RateOpt = None,
    no_rate: Annotated[bool, typer.Option("--no-rate", help="Remove the rate limit.")] = False,
    with_database: DatabaseOpt = False,
    no_database: Annotated[
        bool, typer.Option("--no-database", help="Forget the tenant's own database.")
    ] = False,
    as_json: JsonOpt = False,
    *,
    db: Database,
) -> None:
    """Change a tenant's settings (only the options given)."""
    if max_concurrency is not None and no_max_concurrency:
        raise fail("--max-concurrency and --no-max-concurrency exclude each other", 2)
    if with_database and no_database:
        raise fail("--database and --no-database exclude each other", 2)
    if rate is not None and no_rate:
        raise fail("--rate and --no-rate exclude each other", 2)
    if max_concurrency is None and not (
        no_max_concurrency or weight or with_database or no_database or rate or no_rate
    ):
        raise fail("nothing to change: give at least one option (see --help)", 2)
    parsed = rate_option(rate)
    db.settings()  # a bad setting exits before the DSN is asked for
    ciphertext = _encrypted_dsn(tenant) if with_database else None
    args = (
        tenant,
        max_concurrency is not None or no_max_concurrency,
        max_concurrency,
        weight,
        with_database or no_database,
        ciphertext,
        rate is not None or no_rate,
        parsed and parsed.jobs,
        parsed and parsed.seconds,
    )
    row = db.run(lambda c: c.fetchrow(QUERIES["tenant_update"], *args))
    if row is None:
        raise fail(f"no tenant {tenant!r}; add it with `pgwake tenants add`", 1)
    echo_result({"updated": tenant}, as_json, f"updated tenant {tenant}")


def _set_paused(tenant: str, paused: bool, as_json: bool, db: Database) -> None:
    async def apply(conn: asyncpg.Connection) -> None:
        await conn.fetchval(QUERIES["tenant_set_paused"], tenant, paused)
        if not paused:
            await conn.execute(QUERIES["worker_wake"])

    db.run(apply)
    word = "paused" if paused else "resumed"
    echo_result({word: tenant}, as_json, f"{word} tenant {tenant}")


@tenants_app.command("pause")
@database_options
def pause_cmd(
    tenant: TenantArg,
    as_json: JsonOpt = False,
    *,
    db: Database,
) -> None:
    """Stop claiming the tenant's jobs (running ones finish; queued ones wait)."""
    _set_paused(tenant, True, as_json, db)


@tenants_app.command("resume")
@database_options
def resume_cmd(
    tenant: TenantArg,
    as_json: JsonOpt = False,
    *,
    db: Database,
) -> None:
    """Claim the tenant's jobs again, waking every worker."""
    _set_paused(tenant, False, as_json, db)


@tenants_app.command("remove")
@database_options
def remove_cmd(
    tenant: TenantArg,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    as_json: JsonOpt = False,
    *,
    db: Database,
) -> None:
    """Remove a tenant's settings (its jobs stay and run with the defaults)."""
    if not yes:
        if not sys.stdin.isatty():
            raise fail("refusing to remove without confirmation: add --yes", 2)
        typer.confirm(f"Remove the settings of tenant {tenant!r}?", abort=True)
    row = db.run(lambda c: c.fetchrow(QUERIES["tenant_remove"], tenant))
    if row is None:
        raise fail(f"no tenant {tenant!r}", 1)
    echo_result({"removed": tenant}, as_json, f"removed tenant {tenant}")


def _describe(row: asyncpg.Record) -> dict[str, Any]:
    """A tenant for display: the ciphertext replaced by whether there is one and the id
    of the key that encrypted it."""
    data = dict(row)
    seconds = data.pop("rate_period_seconds", None)
    data["rate"] = (
        None if data.get("rate_limit") is None else rate_shown(data["rate_limit"], seconds)
    )
    data.pop("rate_limit", None)
    if "db_dsn_encrypted" in data:
        encrypted = data.pop("db_dsn_encrypted")
        data["has_database"] = encrypted is not None
        data["database_key"] = encrypted.split(":")[2] if encrypted else None
    return data


@tenants_app.command("list")
@database_options
def list_cmd(
    as_json: JsonOpt = False,
    *,
    db: Database,
) -> None:
    """Tenants with settings, with their queued and running jobs."""
    rows = db.run(lambda c: c.fetch(QUERIES["tenant_list"]))
    items = [_describe(r) for r in rows]
    if as_json:
        typer.echo(json.dumps(items, default=str))
        return
    header = (
        f"{'TENANT':<24} {'CAP':>6} {'WEIGHT':>6} {'RATE':>10} {'PAUSED':>6} {'OWN DB':>6} "
        f"{'QUEUED':>8} {'RUNNING':>8}"
    )
    typer.echo(header)
    for item in items:
        cap = "-" if item["max_concurrency"] is None else str(item["max_concurrency"])
        typer.echo(
            f"{shown(item['tenant_id']):<24} {cap:>6} {item['weight']:>6} "
            f"{item['rate'] or '-':>10} "
            f"{'yes' if item['paused'] else 'no':>6} "
            f"{'yes' if item['has_database'] else 'no':>6} "
            f"{item['queued']:>8} {item['running']:>8}"
        )


@tenants_app.command("show")
@database_options
def show_cmd(
    tenant: TenantArg,
    as_json: JsonOpt = False,
    *,
    db: Database,
) -> None:
    """One tenant's settings (the DSN is never shown)."""
    row = db.run(lambda c: c.fetchrow(QUERIES["tenant_get"], tenant))
    if row is None:
        raise fail(f"no tenant {tenant!r}", 1)
    item = _describe(row)
    if as_json:
        typer.echo(json.dumps(item, default=str))
        return
    for key, value in item.items():
        typer.echo(f"{key}: {shown(value)}")


@tenants_app.command("rotate-key")
@database_options
def rotate_key_cmd(
    as_json: JsonOpt = False,
    *,
    db: Database,
) -> None:
    """Re-encrypt every tenant DSN with the primary (first) key. Run it after putting
    a new key first; remove the old key once it reports nothing left to rotate."""
    keyring = _keyring()
    db.settings()  # a bad setting exits before anything is read
    failures: list[str] = []

    async def rotate(conn: asyncpg.Connection) -> tuple[int, int]:
        rotated = current = 0
        for row in await conn.fetch(QUERIES["tenant_list_dsns"]):
            tenant, old = row["tenant_id"], row["db_dsn_encrypted"]
            try:
                plaintext = keyring.decrypt(tenant, old)  # also proves current ones decrypt
            except DecryptionError as exc:
                failures.append(str(exc))
                continue
            if not keyring.needs_rotation(old):
                current += 1
                continue
            new = keyring.encrypt(tenant, plaintext)
            if await conn.fetchval(QUERIES["tenant_replace_dsn"], tenant, old, new):
                rotated += 1
            else:
                failures.append(f"tenant {tenant!r}: its DSN changed during rotation; run again")
        return rotated, current

    rotated, current = db.run(rotate)
    result = {
        "rotated": rotated,
        "already_current": current,
        "failed": failures,
        "primary_key": keyring.primary_id,
    }
    echo_result(
        result,
        as_json,
        f"re-encrypted {rotated} tenant DSN(s) with key "
        f"{keyring.primary_id!r}; {current} already used it; {len(failures)} failed",
    )
    for failure in failures:
        typer.echo(f"pgwake: error: {shown(failure)}", err=True)
    if failures:
        raise typer.Exit(1)
