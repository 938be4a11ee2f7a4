"""The exit-code table of docs/cli.md, row by row: for each code, commands that must exit
with it, each with its one-line message (issue 15, points 6 and 7)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.conftest import ROOT
from tests.test_cli import pgwake

BIG = str(2**64)  # beyond bigint
LONG = "x" * 201  # one character more than tenant ids, kinds and names may have
UNREACHABLE = "postgresql://app:Hunter2Secret9@127.0.0.1:1/nowhere"


def readme_codes() -> dict[int, str]:
    """The rows of the exit-code table in docs/cli.md: code -> meaning."""
    text = (ROOT / "docs" / "cli.md").read_text()
    table = text.split("\n## Exit codes\n", 1)[1].split("\n## ", 1)[0]
    return {int(m[1]): m[2] for m in re.finditer(r"^\| (\d+) \| (.*) \|$", table, re.M)}


def _config(tmp: Path, name: str, content: bytes) -> str:
    path = tmp / name
    path.write_bytes(content)
    return str(path)


# code -> (arguments, environment or a marker, what the one line must say). "{dsn}" uses
# the test's database, "{empty}" an unmigrated one, "{tmp}" a temporary directory.
CASES: dict[int, list[tuple[list[str], dict[str, Any], str]]] = {
    0: [(["version"], {}, "")],
    1: [
        (["jobs", "show", "123456"], {}, "job 123456 not found"),
        (["tenants", "show", "nobody"], {}, "no tenant 'nobody'"),
        (["schedules", "remove", "nothing"], {}, "schedule 'nothing' does not exist"),
    ],
    2: [
        (["enqueue", "echo", "--payload", "[1]"], {}, "--payload must be a JSON object"),
        (["enqueue", "echo", "--timeout", "0"], {}, "jobs_timeout_positive_at_most_7_days"),
        (["enqueue", "echo", "--timeout", "9e9"], {}, "jobs_timeout_positive_at_most_7_days"),
        (
            ["enqueue", "echo", "--priority", "5000"],
            {},
            "jobs_priority_between_minus_1000_and_1000",
        ),
        (["enqueue", "echo", "--max-attempts", "0"], {}, "jobs_max_attempts_between_1_and_1000"),
        (["enqueue", " "], {}, "KIND must not be empty or blank"),
        (["enqueue", "echo", "--tenant", ""], {}, "--tenant must not be empty or blank"),
        (["enqueue", "echo", "--tenant", LONG], {}, "--tenant must be at most 200 characters"),
        (["enqueue", LONG], {}, "KIND must be at most 200 characters"),
        (
            ["schedules", "add", "", "--cron", "* * * * *", "--kind", "echo"],
            {},
            "the schedule name must not be empty or blank",
        ),
        (
            ["schedules", "add", LONG, "--cron", "* * * * *", "--kind", "echo"],
            {},
            "the schedule name must be at most 200 characters; got 201",
        ),
        (["jobs", "cancel", "0"], {}, "job id must be from 1 to 9223372036854775807; got 0"),
        (["jobs", "retry", "0"], {}, "job id must be from 1"),
        (["jobs", "show", BIG], {}, f"job id must be from 1 to 9223372036854775807; got {BIG}"),
        (["jobs", "cancel", BIG], {}, "job id must be from 1"),
        (["jobs", "retry", BIG], {}, "job id must be from 1"),
        (["jobs", "list", "--before", BIG], {}, "--before must be from 1"),
        (["jobs", "cancel", "x"], {}, "Invalid value for 'job_ids'"),
        (["run", "--no-such-flag"], {}, "No such option: --no-such-flag"),
    ],
    3: [
        (["status", "--config", "{tmp}/latin1.toml"], {}, "is not UTF-8 text"),
        (["status", "--config", "{tmp}"], {}, "is a directory, not a file"),
        (
            ["status", "--config", "{tmp}/top.toml"],
            {},
            "'dsn' outside the [pgwake] table; settings go under [pgwake]",
        ),
        (["status"], {"PGWAKE_DSN": "postgresql://app:Pw#Hash9xyz@db/app"}, "as %23"),
        (["status"], {"PGWAKE_DSN": "postgresql://app:Pw9xyz@[::1/app"}, "malformed IPv6"),
        (["run", "--concurrency", "0"], {}, "concurrency (from command line)"),
    ],
    4: [(["status"], {"PGWAKE_DSN": UNREACHABLE}, "cannot connect to postgresql://app:***@")],
    5: [(["status"], {"PGWAKE_DSN": "{empty}"}, "pgwake migrate")],
}


def test_every_row_of_the_table_has_commands() -> None:
    assert set(readme_codes()) == set(CASES)


@pytest.mark.parametrize(
    ("code", "args", "env", "message"),
    [(code, args, env, message) for code, cases in CASES.items() for args, env, message in cases],
)
async def test_exit_code(
    code: int,
    args: list[str],
    env: dict[str, str],
    message: str,
    dsn: str,
    empty_dsn: str,
    tmp_path: Path,
    conn: asyncpg.Connection,
) -> None:
    """Fails on 8feecbc for: the database's refusals of enqueue (two lines, the row in a
    DETAIL, exit 1), schedule names (exit 1, "schedules_name_not_empty" for 201
    characters), ids beyond bigint (exit 1, "value out of int64 range"), ``jobs retry
    0`` (exit 1), ``jobs cancel 0`` (exit 2 in a box of several lines), config files
    not UTF-8 or a directory (traceback, exit 1), keys outside [pgwake] (read), DSNs with
    '#' or a malformed IPv6 host (traceback, exit 1), and usage errors (several lines)."""
    _config(tmp_path, "latin1.toml", "[pgwake]\nlog_level = 'débug'\n".encode("latin-1"))
    _config(tmp_path, "top.toml", b"dsn = 'postgresql://x@db/app'\n[pgwake]\n")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    env = {k: v.replace("{empty}", empty_dsn) for k, v in env.items()}
    done = pgwake(*args, dsn=None if "PGWAKE_DSN" in env else dsn, env=env)
    assert done.returncode == code, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    assert "Hunter2Secret9" not in done.stdout + done.stderr
    if code == 0:
        assert done.stderr == ""
        return
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("pgwake: error: "), lines
    assert message in lines[0], lines
    assert "DETAIL" not in done.stderr
    assert await conn.fetchval("SELECT count(*) FROM pgwake.jobs") == 0
    assert await conn.fetchval("SELECT count(*) FROM pgwake.schedules") == 0
