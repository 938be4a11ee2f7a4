"""The named-query files: their header format, the naming rule, one definition per name,
and every name used by the code literally."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import asyncpg
import pytest

from listener.cli.bench.queries import BENCH_QUERIES
from listener.jobs import CLAIM_COLUMNS, CLAIMED_FIELDS, Job
from listener.queries import QUERIES, load, parse, query_files

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
    columns are CLAIM_COLUMNS, in that order (and a Job built from a row gets them)."""
    query = QUERIES[name] if name in QUERIES else BENCH_QUERIES[name]
    statement = await conn.prepare(query)
    names = [a.name for a in statement.get_attributes()]
    assert tuple(names[:CLAIMED_FIELDS]) == CLAIM_COLUMNS, names
    assert [f.name for f in fields(Job)] == [
        {"attempts": "attempt", "timeout_seconds": "timeout"}.get(c, c) for c in CLAIM_COLUMNS
    ]
