"""DSNs whose password needs percent-encoding (issue 13, point 11) and malformed hosts
(issue 15, point 6): refused, or read correctly, and no part of the password in any
message, for tenants' DSNs and the worker's own. One parser: listener/dsn.py."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import quote, urlsplit

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from listener.config import load_settings
from listener.crypto import generate_key
from listener.dsn import DsnError, dsn_passwords, parse_dsn
from listener.errors import ConfigError
from listener.redact import MASK, redact
from tests.conftest import eventually, running_worker
from tests.test_cli import pgwake
from tests.test_tenant_db import add_tenant, writer_registry

# PGWAKE_HYPOTHESIS_EXAMPLES=20000 for a longer run; CI runs the derandomized default.
EXAMPLES = int(os.environ.get("PGWAKE_HYPOTHESIS_EXAMPLES", "400"))
PROPERTY = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
# Every printable ASCII character, the ones URLs give a meaning first, and a few beyond.
PASSWORDS = st.text(
    alphabet=st.sampled_from(
        [chr(c) for c in range(32, 127)] + list("#/?@:%[]&=" * 4) + ["\u00e9", "\uff0f", "\t", "\n"]
    ),
    min_size=4,
    max_size=40,
)


def leaked(password: str, text: str) -> list[str]:
    """The parts of ``password`` of 4 characters (so of any length >= 4) in ``text``."""
    return [password[i : i + 4] for i in range(len(password) - 3) if password[i : i + 4] in text]


def _url(password: str) -> str:
    return f"postgresql://app:{password}@127.0.0.1:5432/appdb"


@PROPERTY
@given(PASSWORDS)
def test_a_password_is_read_right_or_refused_without_a_trace(password: str) -> None:
    """Fails on 8feecbc (there is no listener.dsn; the worker's settings accept
    ``postgresql://app:Wrong#Pw@...``, and asyncpg's error ends in the password's start).
    A DSN is either refused with a message that holds no 4 characters of the password,
    or read exactly as asyncpg reads it (same password, host and port); percent-encoded,
    every password is accepted and read back as it was."""
    dsn = _url(password)
    try:
        parsed = parse_dsn(dsn)
    except DsnError as exc:
        message = str(exc)
        assert not leaked(password, message), message
        with pytest.raises(ConfigError) as refused:
            load_settings({"dsn": dsn}, env={})
        assert not leaked(password, str(refused.value)), str(refused.value)
        assert "dsn (from command line)" in str(refused.value)
    else:
        split = urlsplit(dsn)
        assert parsed.password == split.password == password
        assert parsed.hosts == ((split.hostname, split.port),)
    encoded = parse_dsn(_url(quote(password, safe="")))
    assert encoded.password == password
    assert encoded.hosts == (("127.0.0.1", 5432),)
    # A DSN in a log line or an error message has its password masked, also when the
    # password holds '@', '/', '?' or '#' (a space ends a URL in text: not covered).
    # (The whole line is compared: a password such as "fail" or "retr" would seem to leak
    # into the words around the URL.)
    if not any(char.isspace() for char in password):
        masked = redact(f"failed: {dsn}; retrying")
        assert masked == f"failed: {_url(MASK)}; retrying", masked


@PROPERTY
@given(PASSWORDS)
def test_a_password_in_the_query_is_masked_or_refused_without_a_trace(password: str) -> None:
    """The same for ``?password=...``, asyncpg's other place for one."""
    dsn = f"postgresql://app@127.0.0.1:5432/appdb?sslmode=prefer&password={password}"
    try:
        parsed = parse_dsn(dsn)
    except DsnError as exc:
        message = str(exc)
        assert not leaked(password, message), message
        return
    # Accepted: the password asyncpg will use is among those masked.
    used = [value for key, value in parsed.query if key == "password" and value]
    assert set(used) <= dsn_passwords(dsn), (used, dsn_passwords(dsn))


@pytest.mark.parametrize(
    ("dsn", "message"),
    [
        ("postgresql://app:Wr0ngPw_H4sh#Fr4g@db:5432/app", "'#'"),
        ("postgresql://app:Sl4sh/1nPw9@db:5432/app", "%2F"),
        ("postgresql://app:Qu3st?1nPw9@db:5432/app", "%2F or %3F"),
        ("postgresql://app:4t@1nPw9@db:5432/app", "%40"),
        ("postgresql://app:Sp4c3d Pw9x@db/app", "space"),
        ("postgresql://app:P3rc%zzPw9@db/app", "%25"),
        ("postgresql://app:Br4ck[Pw9x@db/app", "%5B"),
        ("postgresql://app:SecretPass@[::1/app", "malformed IPv6"),
        ("postgresql://app:SecretPass@[::1]x/app", "malformed IPv6"),
        ("postgresql://app:SecretPass@[nothex::]:5432/app", "malformed IPv6"),
        ("postgresql://app:SecretPass@::1:5432/app", "malformed IPv6"),
        ("postgresql://app:SecretPass@db:99999/app", "port"),
        ("postgresql://app:SecretPass@db:54a2/app", "port"),
        ("postgresql://app:SecretPass@db1,,db2/app", "empty entry"),
        ("postgresql://app:SecretPass@db/app?sslmode", "key=value"),
    ],
)
def test_malformed_dsns_are_refused_by_name(dsn: str, message: str) -> None:
    with pytest.raises(DsnError) as refused:
        parse_dsn(dsn)
    assert message in str(refused.value)
    password = dsn.split("app:", 1)[1].rsplit("@", 1)[0]
    assert not leaked(password, str(refused.value))


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://app:p%23ss%2Fw%3Frd%40x@db:5432/app",
        "postgresql://app:ok-._~!$&'()*+,;=:pass@db/app",
        "postgresql://app:pw@[2001:db8::1]:5432/app",
        "postgresql://app:pw@[fe80::1%25eth0]/app",
        "postgresql://app:pw@db1:5432,db2:5433/app?target_session_attrs=read-write",
        "postgresql:///app?host=/var/run/postgresql",
        "postgresql://app@%2Fvar%2Frun%2Fpostgresql/app",
        "postgres://db",
    ],
)
def test_well_formed_dsns_are_accepted(dsn: str) -> None:
    parse_dsn(dsn)


def _one_line_without(done: Any, secret: str) -> str:
    err = done.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in done.stderr
    assert not leaked(secret, done.stdout + done.stderr), done.stderr
    assert err.startswith("pgwake: error: "), err
    return str(err)


@pytest.mark.parametrize(
    ("password", "command"),
    [("WrongPw_Hash#x9", "status"), ("Slash/Secret9", "status"), ("WrongPw_Hash#x9", "run")],
)
def test_the_workers_own_dsn_is_refused_in_one_line_exit_3(password: str, command: str) -> None:
    """Fails on 8feecbc: ``pgwake run`` and ``pgwake status`` exit 1 with a traceback
    ending in ``invalid literal for int() with base 10: 'WrongPw_Hash'``."""
    done = pgwake(command, dsn=f"postgresql://postgres:{password}@127.0.0.1:5432/postgres")
    assert done.returncode == 3, done.stderr
    line = _one_line_without(done, password)
    assert "dsn (from environment)" in line


def test_a_malformed_ipv6_host_is_one_line_exit_3() -> None:
    """Fails on 8feecbc: a traceback ending in ``ValueError: Invalid IPv6 URL``, exit 1."""
    done = pgwake("status", dsn="postgresql://postgres:Secret99x@[::1/postgres")
    assert done.returncode == 3, done.stderr
    assert "malformed IPv6" in _one_line_without(done, "Secret99x")


async def test_tenants_add_refuses_a_dsn_that_needs_encoding(
    dsn: str, conn: asyncpg.Connection
) -> None:
    """Fails on 8feecbc: ``tenants add --database`` accepts the DSN (exit 0)."""
    keys = {"PGWAKE_ENCRYPTION_KEYS": generate_key("k1")}
    for password in ("WrongPw_Hash#tail", "Slash/InIt99", "Bad@AtSign99"):
        done = pgwake(
            "tenants",
            "add",
            "acme",
            "--database",
            dsn=dsn,
            env=keys,
            stdin=f"postgresql://app:{password}@127.0.0.1:5432/shop\n",
        )
        assert done.returncode == 2, done.stderr
        assert "as %" in _one_line_without(done, password)
    assert await conn.fetchval("SELECT count(*) FROM pgwake.tenants") == 0


async def test_a_stored_dsn_that_needs_encoding_fails_its_job_without_a_trace(
    dsn: str, conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fails on 8feecbc: the job's last_error (and the log) read ``invalid literal for
    int() with base 10: 'WrongPw_Hash'``, the start of the password. A DSN stored by SQL
    or an older pgwake is refused before asyncpg sees it."""
    keys = generate_key("k1")
    monkeypatch.setenv("PGWAKE_ENCRYPTION_KEYS", keys)
    password = "WrongPw_Hash#rest"
    await add_tenant(conn, keys, "acme", f"postgresql://app:{password}@127.0.0.1:5432/shop")
    job_id = await conn.fetchval(
        "INSERT INTO pgwake.jobs (tenant_id, kind, payload, max_attempts) "
        "VALUES ('acme', 'order.import', '{\"n\": 1}', 1) RETURNING id"
    )
    async with running_worker(dsn, writer_registry()):
        await eventually(
            lambda: conn.fetchval("SELECT status = 'failed' FROM pgwake.jobs WHERE id = $1", job_id)
        )
    error = await conn.fetchval("SELECT last_error FROM pgwake.jobs WHERE id = $1", job_id)
    assert "its database DSN is refused" in error
    assert not leaked(password, error), error
