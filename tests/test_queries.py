"""The named-query files: their header format, the naming rule, one definition per name,
and every name used by the code literally."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from listener.cli.bench.queries import BENCH_QUERIES
from listener.jobs import CLAIM_COLUMNS, CLAIMED_FIELDS, Job
from listener.queries import QUERIES, load, parse, query_files
from tests.support.claims import claim, register

ROOT = Path(__file__).resolve().parent.parent
BENCH_SQL = ROOT / "listener" / "cli" / "bench" / "bench.sql"

# The subjects a name may start with (see listener/queries.py for the rule).
SUBJECTS = (
    "job",
    "worker",
    "tenant",
    "schedule",
    "migration",
    "leader",
    "listener",
    "server",
    "limit",
)
NAME_RULE = re.compile(rf"^(?:{'|'.join(SUBJECTS)})_[a-z]+(?:_[a-z0-9]+)*$")
# Names that go with the claim queries and keep them while those are tuned on another
# branch; they are benchmark-only.
OLDER_NAMES = {"bench_create_fifo_index", "bench_ceiling_claim", "bench_ceiling_delete"}

PARAMETER = re.compile(r"\$(\d+)")


def all_files() -> list[Path]:
    return [*query_files(), BENCH_SQL]


def header_problems(name: str, block: str) -> list[str]:
    """What is wrong with one block's header (empty when it follows the format)."""
    lines = block.splitlines()
    comments = []
    for line in lines:
        if not line.startswith("--"):
            break
        comments.append(line.removeprefix("--").strip())
    statement = "\n".join(lines[len(comments) :])
    # Parameters named in the statement (comments inside it do not count).
    code = "\n".join(line.split("--", 1)[0] for line in statement.splitlines())
    used = {int(n) for n in PARAMETER.findall(code)}
    text = " ".join(comments)
    problems = []
    if not comments or not comments[0] or comments[0].startswith(("$", "No parameters")):
        problems.append("no comment saying what it does right after the name line")
    if not statement.strip():
        problems.append("no statement")
    if used:
        if not any(c.startswith(("$1 ", "$1,")) for c in comments):
            problems.append("no parameters line starting with $1")
        documented = {int(n) for n in PARAMETER.findall(text)}
        if missing := sorted(used - documented):
            problems.append(f"parameters used but not described: {missing}")
        if extra := sorted(documented - used):
            problems.append(f"parameters described but not used: {extra}")
        if sorted(used) != list(range(1, max(used) + 1)):
            problems.append(f"parameters are not $1..$n: {sorted(used)}")
    elif "No parameters." not in comments:
        problems.append("takes no parameters but has no 'No parameters.' line")
    return [f"{name}: {p}" for p in problems]


@pytest.mark.parametrize("path", all_files(), ids=lambda p: p.name)
def test_every_block_has_a_name_line_a_description_and_its_parameters(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.startswith("-- "), f"{path.name} has no header comment"
    blocks = parse(text, path.name)
    assert blocks, f"{path.name} has no named block"
    problems = [p for name, block in blocks.items() for p in header_problems(name, block)]
    assert problems == []


def test_the_header_check_finds_each_kind_of_fault() -> None:
    good = (
        "-- Counts jobs of a kind.\n-- $1 kind.\nSELECT count(*) FROM pgwake.jobs WHERE kind = $1;"
    )
    assert header_problems("job_count", good) == []
    assert header_problems("a", "-- $1 kind.\nSELECT $1;") == [
        "a: no comment saying what it does right after the name line"
    ]
    assert header_problems("a", "-- Does it.\nSELECT $1;") == [
        "a: no parameters line starting with $1",
        "a: parameters used but not described: [1]",
    ]
    assert header_problems("a", "-- Does it.\n-- $1 x, $2 y.\nSELECT $2;") == [
        "a: parameters described but not used: [1]",
        "a: parameters are not $1..$n: [2]",
    ]
    assert header_problems("a", "-- Does it.\nSELECT 1;") == [
        "a: takes no parameters but has no 'No parameters.' line"
    ]


def test_names_follow_the_naming_rule() -> None:
    names = [*QUERIES, *BENCH_QUERIES]
    assert [n for n in names if not NAME_RULE.match(n) and n not in OLDER_NAMES] == []
    assert set(BENCH_QUERIES) >= OLDER_NAMES


def test_names_are_unique_across_files() -> None:
    seen: dict[str, str] = {}
    twice = []
    for path in all_files():
        for name in parse(path.read_text(encoding="utf-8"), path.name):
            if name in seen:
                twice.append((name, seen[name], path.name))
            seen[name] = path.name
    assert twice == []
    assert len(seen) == len(QUERIES) + len(BENCH_QUERIES)


def test_load_refuses_a_name_defined_in_two_files(tmp_path: Path) -> None:
    (tmp_path / "a.sql").write_text("-- name: job_x\n-- X.\n-- No parameters.\nSELECT 1;\n")
    (tmp_path / "b.sql").write_text("-- name: job_x\n-- X.\n-- No parameters.\nSELECT 2;\n")
    with pytest.raises(ValueError, match=r"b\.sql and a\.sql both define 'job_x'"):
        load(sorted(tmp_path.glob("*.sql")))


def test_benchmark_queries_stay_out_of_the_runtime_mapping() -> None:
    assert not set(BENCH_QUERIES) & set(QUERIES)
    assert all(path.parent.name == "queries" for path in query_files())
    runtime = {p.name for p in query_files()}
    assert runtime == {
        "api.sql",
        "cli.sql",
        "maintenance.sql",
        "metrics.sql",
        "migrate.sql",
        "worker.sql",
    }


def test_code_names_every_query_literally_in_its_own_mapping() -> None:
    runtime: set[str] = set()
    bench: set[str] = set()
    for path in (ROOT / "listener").rglob("*.py"):
        text = path.read_text()
        runtime |= set(re.findall(r'(?<![A-Z_])QUERIES\["([a-z0-9_]+)"\]', text))
        bench |= set(re.findall(r'BENCH_QUERIES\["([a-z0-9_]+)"\]', text))
    assert runtime == set(QUERIES)
    assert bench == set(BENCH_QUERIES)


@pytest.mark.parametrize(
    "name", ["job_claim", "job_claim_plain", "job_claim_notified", "job_claim_fifo"]
)
async def test_every_claim_starts_its_rows_with_the_columns_of_a_job(
    conn: asyncpg.Connection, name: str
) -> None:
    """Job.from_record reads a claimed row by position: every claim statement's first
    columns are CLAIM_COLUMNS, in that order (and a Job built from a row gets them),
    the times as float8 seconds (Job's ``*_epoch`` fields)."""
    query = QUERIES[name] if name in QUERIES else BENCH_QUERIES[name]
    statement = await conn.prepare(query)
    attributes = statement.get_attributes()
    names = [a.name for a in attributes]
    assert tuple(names[:CLAIMED_FIELDS]) == CLAIM_COLUMNS, names
    assert list(Job._fields) == [
        {"attempts": "attempt", "timeout_seconds": "timeout"}.get(c, c) for c in CLAIM_COLUMNS
    ]
    epochs = [a.type.name for a in attributes if a.name.endswith("_epoch")]
    assert epochs == ["float8"] * 3, epochs


# Times a job may be due at and be claimed now: from run_at's lowest allowed value (year
# 1) to a second ago, with microseconds.
_PAST = st.datetimes(
    min_value=datetime(1, 1, 1, 0, 0, 1),
    max_value=datetime(2026, 1, 1),
).map(lambda d: d.replace(tzinfo=UTC))


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(run_at=_PAST)
@example(run_at=datetime(1, 1, 1, 0, 0, 0, 1, tzinfo=UTC))
@example(run_at=datetime(1697, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC))
@example(run_at=datetime(1970, 1, 1, tzinfo=UTC))
@example(run_at=datetime(2025, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC))
async def test_a_claimed_job_gives_the_times_postgresql_stored(
    conn: asyncpg.Connection, run_at: datetime
) -> None:
    """The claim returns a job's times as seconds since the epoch; the Job gives them back
    as the datetimes PostgreSQL stored: to the microsecond within 272 years of 1970,
    within 8 microseconds before that (run_at may be as early as year 1), and how long
    the job waited as the difference."""
    await conn.execute("DELETE FROM pgwake.jobs")
    worker = await register(conn)
    await conn.execute("INSERT INTO pgwake.jobs (kind, run_at) VALUES ('k', $1)", run_at)
    (row,) = await claim(conn, worker, 10)
    job = Job.from_record(row)
    stored = await conn.fetchrow(
        "SELECT created_at, run_at, started_at FROM pgwake.jobs WHERE id = $1", job.id
    )
    exact = run_at.year >= 1698
    for name in ("created_at", "run_at", "started_at"):
        got, want = getattr(job, name), stored[name]
        if name != "run_at" or exact:
            assert got == want, (name, got, want)
        else:
            assert abs(got - want) <= timedelta(microseconds=8), (name, got, want)
    waited = (stored["started_at"] - stored["run_at"]).total_seconds()
    assert job.waited == pytest.approx(waited, rel=1e-9, abs=1e-5)
