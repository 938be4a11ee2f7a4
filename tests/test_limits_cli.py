"""``pgwake limits`` and ``pgwake tenants --rate`` as a person uses them; the rate text
parser against anything (hypothesis); a confined application role cannot set or lift
any limit."""

from __future__ import annotations

import datetime as dt
import json

import asyncpg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from listener.rates import MAX_JOBS, UNITS, Rate, RateError, format_rate, parse_rate
from tests.support.cli import pgwake
from tests.support.databases import as_user, fresh_role


async def test_limits_set_list_remove(dsn: str, conn: asyncpg.Connection) -> None:
    done = pgwake("limits", "set", "email.send", "--rate", "10/s", dsn=dsn)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "limited kind email.send to 10/s across tenants"
    done = pgwake("limits", "set", "store.sync", "--rate", "120/min", "--per-tenant", dsn=dsn)
    assert done.returncode == 0, done.stderr
    # Setting again replaces.
    done = pgwake("limits", "set", "email.send", "--rate", "5/10s", dsn=dsn)
    assert done.returncode == 0, done.stderr
    rows = await conn.fetch(
        "SELECT kind, per_tenant, rate_limit, rate_period FROM pgwake.limits ORDER BY kind"
    )
    assert [tuple(r) for r in rows] == [
        ("email.send", False, 5, dt.timedelta(seconds=10)),
        ("store.sync", True, 120, dt.timedelta(minutes=1)),
    ]
    listed = pgwake("limits", "list", "--json", dsn=dsn)
    assert listed.returncode == 0, listed.stderr
    items = json.loads(listed.stdout)
    assert [(i["kind"], i["rate"], i["per_tenant"]) for i in items] == [
        ("email.send", "5/10s", False),
        ("store.sync", "120/min", True),
    ]
    table = pgwake("limits", "list", dsn=dsn)
    assert "email.send" in table.stdout
    assert "per tenant" in table.stdout
    missing = pgwake("limits", "remove", "store.sync", dsn=dsn)  # not its per-tenant one
    assert missing.returncode == 1
    assert "kind 'store.sync' has no rate limit" in missing.stderr
    removed = pgwake("limits", "remove", "store.sync", "--per-tenant", dsn=dsn)
    assert removed.returncode == 0, removed.stderr
    assert await conn.fetchval("SELECT count(*) FROM pgwake.limits") == 1


async def test_tenant_rate_set_shown_and_removed(dsn: str, conn: asyncpg.Connection) -> None:
    added = pgwake("tenants", "add", "acme", "--rate", "600/min", dsn=dsn)
    assert added.returncode == 0, added.stderr
    row = await conn.fetchrow("SELECT rate_limit, rate_period FROM pgwake.tenants")
    assert tuple(row) == (600, dt.timedelta(minutes=1))
    changed = pgwake("tenants", "set", "acme", "--rate", "10/s", dsn=dsn)
    assert changed.returncode == 0, changed.stderr
    shown = json.loads(pgwake("tenants", "show", "acme", "--json", dsn=dsn).stdout)
    assert shown["rate"] == "10/s"
    listed = pgwake("tenants", "list", dsn=dsn).stdout
    assert "10/s" in listed
    lifted = pgwake("tenants", "set", "acme", "--no-rate", dsn=dsn)
    assert lifted.returncode == 0, lifted.stderr
    row = await conn.fetchrow("SELECT rate_limit, rate_period FROM pgwake.tenants")
    assert tuple(row) == (None, None)
    assert json.loads(pgwake("tenants", "show", "acme", "--json", dsn=dsn).stdout)["rate"] is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["limits", "set", "k", "--rate", "0/s"], "the number of jobs must be 1 to 1,000,000"),
        (["limits", "set", "k", "--rate", "-1/s"], "is not of the form N/PERIOD"),
        (["limits", "set", "k", "--rate", "10"], "is not of the form N/PERIOD"),
        (["limits", "set", "k", "--rate", "10/fortnight"], "unknown period unit 'fortnight'"),
        (["limits", "set", "k", "--rate", "10/2day"], "the period must be one second to one day"),
        (["limits", "set", "k", "--rate", "10/0s"], "the period must be one second to one day"),
        (["tenants", "set", "t", "--rate", "10/s", "--no-rate"], "exclude each other"),
        (["tenants", "add", "t", "--rate", "2000000/s"], "must be 1 to 1,000,000"),
        (["limits", "set", " ", "--rate", "1/s"], "limits_kind_not_empty"),
    ],
)
async def test_bad_rates_are_refused_with_a_message_naming_the_problem(
    dsn: str, conn: asyncpg.Connection, args: list[str], message: str
) -> None:
    done = pgwake(*args, dsn=dsn)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert message in done.stderr, done.stderr
    assert await conn.fetchval("SELECT count(*) FROM pgwake.limits") == 0
    assert await conn.fetchval("SELECT count(*) FROM pgwake.tenants") == 0


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=40))
def test_the_rate_parser_accepts_only_valid_rates_and_names_what_is_wrong(text: str) -> None:
    try:
        rate = parse_rate(text)
    except RateError as exc:
        message = str(exc)
    else:
        message = ""
    if message:
        assert repr(text) in message
        return
    assert 1 <= rate.jobs <= MAX_JOBS
    assert 1 <= rate.seconds <= 86_400
    assert parse_rate(format_rate(rate.jobs, rate.seconds)) == rate


@settings(max_examples=400, deadline=None)
@given(
    st.integers(min_value=-5, max_value=MAX_JOBS + 5),
    st.one_of(st.none(), st.integers(min_value=0, max_value=100_000)),
    st.sampled_from(sorted(UNITS)),
)
def test_the_rate_parser_on_rate_shaped_text(jobs: int, count: int | None, unit: str) -> None:
    text = f"{jobs}/{'' if count is None else count}{unit}"
    seconds = (1 if count is None else count) * UNITS[unit]
    valid = 1 <= jobs <= MAX_JOBS and 1 <= seconds <= 86_400
    if valid:
        assert parse_rate(text) == Rate(jobs, seconds)
        assert parse_rate(format_rate(jobs, seconds)) == Rate(jobs, seconds)
    else:
        with pytest.raises(RateError):
            parse_rate(text)


async def test_a_confined_role_can_neither_set_nor_lift_any_limit(
    server_dsn: str, dsn: str, conn: asyncpg.Connection
) -> None:
    await conn.execute(
        "INSERT INTO pgwake.tenants (tenant_id, rate_limit, rate_period) "
        "VALUES ('acme', 5, '1 second'), ('victim', 5, '1 second')"
    )
    await conn.execute(
        "INSERT INTO pgwake.limits (kind, rate_limit, rate_period) VALUES ('mail', 5, '1 s')"
    )
    async with fresh_role(server_dsn, dsn, "ratelimits") as role:
        await conn.execute("SELECT pgwake.confine_role_to_tenant($1, 'acme')", role)
        app = await asyncpg.connect(as_user(dsn, role))
        try:
            attempts = {
                "another tenant's rate": "UPDATE pgwake.tenants SET rate_limit = 1 "
                "WHERE tenant_id = 'victim'",
                "its own rate": "UPDATE pgwake.tenants SET rate_limit = NULL, rate_period = NULL "
                "WHERE tenant_id = 'acme'",
                "a new tenant's rate": "INSERT INTO pgwake.tenants (tenant_id, rate_limit, "
                "rate_period) VALUES ('new', 1, '1 day')",
                "a kind limit": "INSERT INTO pgwake.limits (kind, rate_limit, rate_period) "
                "VALUES ('other', 1, '1 day')",
                "lift a kind limit": "DELETE FROM pgwake.limits",
                "read the windows": "SELECT * FROM pgwake.rate_windows",
                "fill a window": "UPDATE pgwake.rate_windows SET full_until = 'infinity'",
                "hold a window": "SELECT 1 FROM pgwake.rate_windows FOR UPDATE",
                "record starts": "SELECT pgwake.rate_record('tenant', '', 'victim', 1000, 1, "
                "'1 day')",
                "take free starts": "SELECT pgwake.rate_free('tenant', '', 'victim', 1, '1 s')",
            }
            refused = {}
            for what, sql in attempts.items():
                try:
                    await app.execute(sql)
                except asyncpg.PostgresError as exc:
                    refused[what] = type(exc).__name__
                else:
                    refused[what] = "allowed"
            assert refused == dict.fromkeys(attempts, "InsufficientPrivilegeError")
        finally:
            await app.close()
    rows = await conn.fetch("SELECT tenant_id, rate_limit FROM pgwake.tenants ORDER BY 1")
    assert [tuple(r) for r in rows] == [("acme", 5), ("victim", 5)]
    assert await conn.fetchval("SELECT count(*) FROM pgwake.limits") == 1
    assert await conn.fetchval("SELECT count(*) FROM pgwake.rate_windows") == 0
