"""The ``pgwake`` command line, run as a real process."""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

import asyncpg
import pytest

from listener import __version__
from listener.migrate import latest_version
from tests.support.cli import pgwake


async def test_migrate_then_again(empty_dsn: str) -> None:
    first = pgwake("migrate", dsn=empty_dsn)
    assert first.returncode == 0, first.stderr
    assert "applied 0001_initial" in first.stdout
    second = pgwake("migrate", dsn=empty_dsn)
    assert second.returncode == 0, second.stderr
    assert "applied" not in second.stdout
    assert f"schema is at version {latest_version():04d}" in second.stdout


async def test_enqueue(dsn: str, conn: asyncpg.Connection) -> None:
    done = pgwake(
        "enqueue",
        "echo",
        "--tenant",
        "acme",
        "--payload",
        '{"a": 1}',
        "--priority",
        "5",
        "--max-attempts",
        "3",
        "--timeout",
        "60",
        "--json",
        dsn=dsn,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["enqueued"] is True
    assert out["status"] == "queued"
    row = await conn.fetchrow("SELECT * FROM pgwake.jobs WHERE id = $1", out["id"])
    assert (
        row["tenant_id"],
        row["kind"],
        row["payload"],
        row["priority"],
        row["max_attempts"],
        row["timeout"].total_seconds(),
    ) == ("acme", "echo", {"a": 1}, 5, 3, 60.0)


async def test_enqueue_with_dependencies_and_metadata(dsn: str, conn: asyncpg.Connection) -> None:
    first = await conn.fetchval(
        "INSERT INTO pgwake.jobs (tenant_id, kind) VALUES ('acme', 'noop') RETURNING id"
    )
    done = pgwake(
        "enqueue", "noop", "--tenant", "acme", "--depends-on", str(first), "--depends-on",
        str(first), "--run-anyway", "--metadata", '{"batch": "b-1"}', "--json", dsn=dsn,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["status"] == "waiting"
    row = await conn.fetchrow("SELECT * FROM pgwake.jobs WHERE id = $1", out["id"])
    assert (row["depends_on"], row["run_anyway"], row["metadata"]) == (
        [first, first],
        True,
        {"batch": "b-1"},
    )
    other = pgwake("enqueue", "noop", "--tenant", "other", "--depends-on", str(first), dsn=dsn)
    assert other.returncode == 1, other.stdout + other.stderr
    assert f"job {first} does not" in other.stderr
    bad = pgwake("enqueue", "noop", "--metadata", "[1]", dsn=dsn)
    assert bad.returncode == 2, bad.stdout + bad.stderr
    assert "--metadata must be a JSON object" in bad.stderr
    assert await conn.fetchval("SELECT count(*) FROM pgwake.jobs") == 2


async def test_enqueue_defaults_match_a_plain_insert(dsn: str, conn: asyncpg.Connection) -> None:
    done = pgwake("enqueue", "noop", "--json", dsn=dsn)
    assert done.returncode == 0, done.stderr
    via_cli = await conn.fetchrow(
        "SELECT tenant_id, payload, priority, max_attempts, timeout, status FROM pgwake.jobs "
        "WHERE id = $1",
        json.loads(done.stdout)["id"],
    )
    via_sql = await conn.fetchrow(
        "INSERT INTO pgwake.jobs (kind) VALUES ('noop') "
        "RETURNING tenant_id, payload, priority, max_attempts, timeout, status"
    )
    assert via_cli == via_sql


async def test_enqueue_delay_and_unique_key(dsn: str, conn: asyncpg.Connection) -> None:
    first = pgwake("enqueue", "noop", "--delay", "3600", "--unique-key", "nightly", dsn=dsn)
    assert first.returncode == 0, first.stderr
    assert "(scheduled)" in first.stdout
    again = pgwake("enqueue", "noop", "--unique-key", "nightly", dsn=dsn)
    assert again.returncode == 1
    assert "unique key 'nightly' is taken" in again.stdout
    assert await conn.fetchval("SELECT count(*) FROM pgwake.jobs") == 1


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["enqueue", "echo", "--payload", "{not json"], 2, "--payload is not valid JSON"),
        (["enqueue", "echo", "--payload", "[1, 2]"], 2, "--payload must be a JSON object"),
        (["enqueue", "echo", "--payload", '{"a": "\\u0000"}'], 2, "payload holds a NUL"),
        (["enqueue", "echo", "--metadata", '{"a": "\\u0000"}'], 2, "metadata holds a NUL"),
        (["enqueue", "echo", "--payload", '{"a": NaN}'], 2, "the payload is not JSON"),
        (["enqueue", "", "--payload", "{}"], 2, "KIND must not be empty or blank"),
        (["enqueue", "echo", "--priority", "9999"], 2, "jobs_priority_between_minus_1000_and_1000"),
        (["enqueue", "echo", "--priority", "high"], 2, "Invalid value for '--priority'"),
        (["enqueue"], 2, "Missing argument 'kind'"),
        (["run", "--concurrency", "0"], 3, "concurrency (from command line)"),
        (
            ["run", "--concurrency", "4", "--tenant-concurrency", "8"],
            3,
            "cannot exceed concurrency",
        ),
        (["run", "--handlers", "no_such_module_xyz"], 3, "cannot import handler module"),
        (["run", "--kinds", "nope"], 3, "no handler for kind(s) nope"),
        (["run", "--log-format", "xml"], 3, "log_format"),
        (["run", "--no-such-flag"], 2, "No such option"),
        (["frobnicate"], 2, "No such command"),
    ],
)
async def test_bad_arguments_exit_non_zero_with_a_message(
    dsn: str, conn: asyncpg.Connection, args: list[str], code: int, message: str
) -> None:
    done = pgwake(*args, dsn=dsn)
    assert done.returncode == code, (done.stdout, done.stderr)
    assert message in done.stderr + done.stdout
    assert await conn.fetchval("SELECT count(*) FROM pgwake.jobs") == 0


def test_bad_config_file(tmp_path: Path) -> None:
    bad = tmp_path / "pgwake.toml"
    bad.write_text("[pgwake]\nconcurrency = 'lots'\n")
    done = pgwake("run", "--config", str(bad))
    assert done.returncode == 3
    assert f"concurrency (from {bad})" in done.stderr
    broken = tmp_path / "broken.toml"
    broken.write_text("[pgwake\n")
    done = pgwake("run", "--config", str(broken))
    assert done.returncode == 3
    assert "is not valid TOML" in done.stderr
    done = pgwake("run", "--config", str(tmp_path / "missing.toml"))
    assert done.returncode == 3
    assert "does not exist" in done.stderr


def test_version() -> None:
    """The version lives in listener/__init__.py alone: the installed distribution's
    metadata reads it there (pyproject.toml, [tool.hatch.version]), and so does the
    command. A mismatch means the checkout changed it since `pip install -e .`."""
    assert version("pgwake") == __version__
    done = pgwake("version")
    assert done.returncode == 0
    assert done.stdout.startswith(f"pgwake {__version__} (schema {latest_version():04d})")
