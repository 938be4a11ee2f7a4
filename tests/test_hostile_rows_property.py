"""Property-based acceptance test of issue 13: whatever row PostgreSQL accepts into
pgwake.jobs or pgwake.schedules, no worker goes down and nothing else is held up.

Hypothesis generates rows for every column an application may set (the columns
``pgwake.confine_role_to_tenant`` grants for jobs; every column but the bookkeeping
ones for schedules): JSON payloads of any shape, written as text so that they hold what
Python's encoder would never write (numbers of thousands of digits and exponents of
thousands, nesting thousands deep, unicode escapes, surrogate pairs and lone
surrogates), timestamps and intervals at and past their limits, integers past their
ranges, text of any length and script. Each row is inserted by a plain connection
(nothing on the client side decodes it) while a worker process runs beside a steady
stream of ordinary jobs.

The invariant, checked row by row as it is inserted and for all rows at the end:

- a row is refused at INSERT either by a named constraint (SQLSTATE class 23, with the
  constraint's name) or because PostgreSQL does not accept the value at all (class 22,
  a data exception such as ``\\u0000`` in jsonb, or class 54, a program limit such as
  nesting deeper than its parser's stack): then it is not a row PostgreSQL accepts (nor
  is text holding a lone surrogate, which the client cannot even send);
- or, for a job of a handled kind (echo, noop) that is due, it reaches a final state:
  ``succeeded``, or ``failed`` with a last_error naming the problem (a payload Python
  cannot decode fails for good at its first attempt); a payload Python decodes (and is
  not nested near its recursion limit) succeeds, or fails only for a result it cannot
  store;
- a job of a kind nobody handles, or due in a later year, is left as inserted;
- a schedule is enqueued and moved to its next slot, or disabled with the reason in
  last_error (or was inserted disabled, or is not due);
- the worker stays up (and stops cleanly at the end), and every ordinary job succeeds.

Examples: a fixed seed (derandomize) and PGWAKE_HYPOTHESIS_EXAMPLES rows per test
(default 120 jobs and 40 schedules, well under a minute). A longer run:
``PGWAKE_HYPOTHESIS_EXAMPLES=2000 .venv/bin/pytest tests/test_hostile_rows_property.py``.
Each test prints how many rows it tried and how they ended.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from listener.db import UndecodableJson, decode_json
from tests.support.waiting import eventually
from tests.support.workers import spawn_worker, stop_process, wait_ready

EXAMPLES = int(os.environ.get("PGWAKE_HYPOTHESIS_EXAMPLES", "0"))
JOB_EXAMPLES = EXAMPLES or 120
SCHEDULE_EXAMPLES = EXAMPLES or 40
HANDLED = ("echo", "noop")
FINAL = ("succeeded", "failed", "cancelled")
# What a failed generated job's last_error says: the problem, named.
NAMED_PROBLEM = re.compile(
    r"invalid payload for '[^']*': |the handler's result |this job's outcome cannot be"
    r"|the database refused this job's outcome: |TimeoutError: job timed out"
)
ONE_MIB = 1_048_576

# --- JSON as text ---------------------------------------------------------------------

NUMBERS = st.one_of(
    st.integers().map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.tuples(
        st.sampled_from(["1", "-1", "9.99", "123456789", "0.5", "-0", "1.0"]),
        st.sampled_from(["e", "E", "e+", "e-", "E-"]),
        st.integers(0, 20_000),
    ).map(lambda t: f"{t[0]}{t[1]}{t[2]}"),
    st.integers(1, 6_000).map(lambda n: "9" * n),
    st.sampled_from(
        ["1e5000", "-1e5000", "1e-5000", "1e4299", "1e4300", "1e131071", "1e131072", "-0.0"]
    ),
)
STRINGS = st.one_of(
    st.text(max_size=20).map(json.dumps),
    st.text(max_size=20).map(lambda s: json.dumps(s, ensure_ascii=False)),
    st.sampled_from(
        [
            '"\\ud83d\\ude00"',  # a surrogate pair: one emoji
            '"\\ud800"',  # a lone high surrogate
            '"\\udc00\\ud800"',  # the pair in the wrong order
            '"\\u0000"',  # NUL, which jsonb cannot hold
            '"\\u00e9\\u20ac"',
            '"\\t\\n\\r\\\\\\/\\"\\b\\f"',
            '"\\u001b]0;title\\u0007"',
        ]
    ),
)
SCALARS = st.one_of(NUMBERS, STRINGS, st.sampled_from(["true", "false", "null"]))


def _array(items: list[str]) -> str:
    return "[" + ",".join(items) + "]"


def _object(pairs: list[tuple[str, str]]) -> str:
    return "{" + ",".join(f"{k}:{v}" for k, v in pairs) + "}"


VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(_array),
        st.lists(st.tuples(STRINGS, inner), max_size=4).map(_object),
    ),
    max_leaves=12,
)
# Nesting from a few levels to well past Python's recursion limit (and PostgreSQL's).
DEEP = st.tuples(st.integers(1, 6_000), SCALARS, st.booleans()).map(
    lambda t: ("[" * t[0] + t[1] + "]" * t[0]) if t[2] else ('{"a":' * t[0] + t[1] + "}" * t[0])
)
OBJECTS = st.one_of(
    st.lists(st.tuples(STRINGS, VALUES), max_size=5).map(_object),
    st.tuples(STRINGS, DEEP).map(lambda t: _object([t])),
)
# Objects PostgreSQL takes whose one value Python cannot decode or only just can: a
# number of thousands of digits, nesting around Python's recursion limit.
HOSTILE_OBJECTS = st.one_of(
    NUMBERS.map(lambda n: _object([('"n"', n)])),
    st.tuples(st.integers(900, 4_000), st.booleans()).map(
        lambda t: _object(
            [('"d"', "[" * t[0] + "]" * t[0] if t[1] else '{"a":' * t[0] + "1" + "}" * t[0])]
        )
    ),
)
PAYLOADS = st.one_of(
    OBJECTS,
    HOSTILE_OBJECTS,
    VALUES,  # mostly not an object: jobs_payload_must_be_json_object
    st.sampled_from(
        [
            '{"big": "' + "x" * (ONE_MIB - 20) + '"}',  # just under 1 MiB as text
            '{"big": "' + "x" * ONE_MIB + '"}',  # over: jobs_payload_at_most_1mib
            '{"a": 1e5000}',
        ]
    ),
)

# --- Other columns, as the text PostgreSQL casts ------------------------------------

INTEGERS = st.one_of(
    st.integers(-1_100, 1_100),
    st.integers(-(2**40), 2**40),
    st.sampled_from([-1001, -1000, 0, 1, 1000, 1001, 2**31 - 1, 2**31, -(2**31), -(2**31) - 1]),
).map(str)
LIMIT_TIMES = st.sampled_from(
    [
        "infinity",
        "-infinity",
        "0001-01-01 00:00:00+00",
        "0001-01-01 00:00:00+01",  # year 0 (1 BC) in UTC
        "0001-01-01 00:00:00-14",
        "4713-01-01 00:00:00+00 BC",
        "294276-12-31 23:59:59+00",
        "9999-12-31 23:59:59.999999+00",
        "10000-01-01 00:00:00+00",
        "epoch",
        "yesterday",
        "1970-01-01 00:00:00+15:59",
    ]
)
PAST_TIMES = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(2025, 1, 1), timezones=st.just(UTC)
).map(datetime.isoformat)


def _soon(ms: int) -> str:
    return (datetime.now(UTC) + timedelta(milliseconds=ms)).isoformat()


TIMES = st.one_of(LIMIT_TIMES, PAST_TIMES, st.integers(-2_000, 500).map(_soon))
INTERVALS = st.one_of(
    st.sampled_from(
        [
            "1 microsecond",
            "0",
            "-1 second",
            "00:00:00.5",
            "7 days",
            "7 days 00:00:00.000001",
            "168 hours",
            "1 mon",
            "-1 day +8 days",
            "178000000 years",
            "-178000000 years",
            "infinity",
        ]
    ),
    st.integers(-(10**13), 10**13).map(lambda us: f"{us} microseconds"),
)
# Text without NUL (which PostgreSQL text cannot hold): most generated text is stored,
# so that the rows get as far as the worker; NUL comes in now and then below.
PLAIN_TEXT = st.text(st.characters(blacklist_characters="\x00"), min_size=1, max_size=40)
TEXTS = st.one_of(
    PLAIN_TEXT,
    st.text(max_size=30),
    st.text(st.characters(blacklist_characters="\x00"), min_size=195, max_size=205),
    st.sampled_from(["", " ", "\t", "t" * 200, "t" * 201, "evil", "a\x00b", "\u202eevil"]),
)
KINDS = st.one_of(st.sampled_from(HANDLED), st.sampled_from(HANDLED), TEXTS)
# Each column: often a value the table takes, else anything (limits and past them), so
# that most rows get to the worker while every column is tried at its edges.
TENANTS = st.one_of(PLAIN_TEXT, PLAIN_TEXT, PLAIN_TEXT, TEXTS)
VALID_PRIORITY = st.integers(-1000, 1000).map(str)
PRIORITIES = st.one_of(VALID_PRIORITY, VALID_PRIORITY, VALID_PRIORITY, INTEGERS)
VALID_ATTEMPTS = st.integers(1, 1000).map(str)
ATTEMPTS = st.one_of(VALID_ATTEMPTS, VALID_ATTEMPTS, VALID_ATTEMPTS, INTEGERS)
RUN_ATS = st.one_of(PAST_TIMES, PAST_TIMES, PAST_TIMES, TIMES)
VALID_TIMEOUT = st.sampled_from(["1 second", "10 minutes", "7 days", "00:00:00.001"])
TIMEOUTS = st.one_of(VALID_TIMEOUT, VALID_TIMEOUT, VALID_TIMEOUT, INTERVALS)
VALID_UNIQUE_FOR = st.sampled_from(["1 second", "00:00:00.5", "1 hour", "1 day", "366 days"])
UNIQUE_FORS = st.one_of(st.none(), VALID_UNIQUE_FOR, VALID_UNIQUE_FOR, INTERVALS)

JOB_ROWS = st.fixed_dictionaries(
    {"kind": KINDS},
    optional={
        "tenant_id": TENANTS,
        "payload": st.one_of(PAYLOADS, OBJECTS, OBJECTS, HOSTILE_OBJECTS),
        "priority": PRIORITIES,
        "run_at": RUN_ATS,
        "max_attempts": ATTEMPTS,
        "unique_key": st.one_of(st.none(), TEXTS, st.text(min_size=995, max_size=1005)),
        "unique_for": UNIQUE_FORS,
        "timeout": TIMEOUTS,
    },
)
JOB_TYPES = {
    "tenant_id": "text",
    "kind": "text",
    "payload": "jsonb",
    "priority": "integer",
    "run_at": "timestamptz",
    "max_attempts": "integer",
    "unique_key": "text",
    "unique_for": "interval",
    "timeout": "interval",
}

CRONS = st.sampled_from(
    [
        "* * * * *",
        "* * * * *",
        "* * * * *",
        "*/5 * * * *",
        "0 0 29 2 *",
        "59 23 31 12 *",
        "0 9 * * 1-5",
        "61 * * * *",
        "* * * *",
        "0 0 30 2 *",
        "@hourly",
        "",
        " ",
        "x y z w v",
    ]
)
ZONES = st.sampled_from(
    [
        "UTC",
        "UTC",
        "America/New_York",
        "Pacific/Kiritimati",
        "Etc/GMT+12",
        "Europe/Paris",
        "Mars/Olympus",
        "",
        "../../etc/passwd",
        "utc",
    ]
)


def _minutes_ago(minutes: int) -> str:
    return (datetime.now(UTC) - timedelta(minutes=minutes)).isoformat()


SCHEDULE_ROWS = st.fixed_dictionaries(
    {
        "cron": CRONS,
        "kind": KINDS,
        "missed": st.sampled_from(["skip", "skip", "skip", "catch_up", "catch_up", "later"]),
        # Mostly due already, so that the leader serves most rows during the test.
        "next_run_at": st.one_of(st.none(), RUN_ATS, RUN_ATS, RUN_ATS),
    },
    optional={
        "timezone": ZONES,
        "payload": st.one_of(PAYLOADS, OBJECTS, OBJECTS, HOSTILE_OBJECTS),
        "tenant_id": st.one_of(st.none(), TENANTS),
        "priority": PRIORITIES,
        "max_attempts": ATTEMPTS,
        "enabled": st.sampled_from(["true", "true", "false"]),
        "last_slot": st.one_of(st.none(), RUN_ATS),
    },
)
SCHEDULE_TYPES = {
    "name": "text",
    "cron": "text",
    "timezone": "text",
    "kind": "text",
    "payload": "jsonb",
    "tenant_id": "text",
    "priority": "integer",
    "max_attempts": "integer",
    "missed": "text",
    "enabled": "boolean",
    "next_run_at": "timestamptz",
    "last_slot": "timestamptz",
}


def _settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )


def _insert_sql(table: str, row: dict[str, str | None], types: dict[str, str]) -> str:
    columns = list(row)
    values = ", ".join(f"${i}::text::{types[c]}" for i, c in enumerate(columns, 1))
    returning = "id" if table == "jobs" else "name"
    if not columns:
        return f"INSERT INTO pgwake.{table} DEFAULT VALUES RETURNING {returning}"
    return (
        f"INSERT INTO pgwake.{table} ({', '.join(columns)}) VALUES ({values}) RETURNING {returning}"
    )


def refusal(exc: asyncpg.PostgresError, seen: dict[str, str]) -> str:
    """How PostgreSQL refused a generated row: a named constraint, or the value itself.
    Anything else is a defect."""
    state = exc.sqlstate or ""
    if state.startswith("23"):
        name = getattr(exc, "constraint_name", None)
        if state == "23502":  # not_null_violation names the column, not a constraint
            name = f"not null {getattr(exc, 'column_name', None)}"
        assert name, f"refused by a constraint with no name: {exc!r}"
        return f"constraint {name}"
    assert state[:2] in ("22", "54"), f"refused for an unexpected reason: {state} {exc}"
    if str(exc).startswith("invalid input for query argument"):
        # asyncpg's own DataError: a Python str holding a lone surrogate cannot be sent
        # as UTF-8 at all, so PostgreSQL never sees the row.
        return "not sendable (lone surrogate in a Python str)"
    kind = f"value {state}"
    seen.setdefault(kind, str(exc).split("\n", 1)[0][:80])
    return kind


def _depth(text: str) -> int:
    """How deeply ``text`` (JSON) nests arrays and objects."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


class Beside:
    """A worker process, and a steady stream of ordinary jobs beside it."""

    def __init__(self, dsn: str, conn: asyncpg.Connection) -> None:
        self.dsn = dsn
        self.conn = conn
        self.ordinary: list[int] = []
        self.stop = anyio.Event()

    async def stream(self) -> None:
        """Insert an ordinary echo job every 20 ms until told to stop."""
        feeder = await asyncpg.connect(self.dsn)
        try:
            while not self.stop.is_set():
                self.ordinary.append(
                    await feeder.fetchval(
                        "INSERT INTO pgwake.jobs (tenant_id, kind, payload) "
                        "VALUES ('ordinary', 'echo', $1::text::jsonb) RETURNING id",
                        json.dumps({"n": len(self.ordinary)}),
                    )
                )
                await anyio.sleep(0.02)
        finally:
            await feeder.close()

    async def ordinary_done(self) -> bool:
        done = await self.conn.fetchval(
            "SELECT count(*) FROM pgwake.jobs WHERE id = ANY($1) AND status = 'succeeded'",
            self.ordinary,
        )
        return bool(done == len(self.ordinary))


def _start_worker(dsn: str, log: Any) -> Any:
    return spawn_worker(
        dsn,
        env={
            "PGWAKE_RETRY_BASE": "0.05",
            "PGWAKE_RETRY_CAP": "0.2",
            "PGWAKE_POLL_INTERVAL": "1",
        },
        log=log,
    )


@pytest.mark.timeout(3600)
async def test_generated_job_rows_never_stop_the_worker(dsn: str, conn: asyncpg.Connection) -> None:
    """Jobs: see the module docstring for the invariant."""
    started = time.monotonic()
    plain = await asyncpg.connect(dsn)
    log = tempfile.NamedTemporaryFile("w+", prefix="pgwake-hostile-", suffix=".log")  # noqa: SIM115
    proc = _start_worker(dsn, log)
    beside = Beside(dsn, conn)
    accepted: dict[int, dict[str, str | None]] = {}
    refused: Counter[str] = Counter()
    messages: dict[str, str] = {}  # the first message of each kind of value refused
    tried = 0

    async def insert(row: dict[str, str | None]) -> None:
        nonlocal tried
        tried += 1
        sql = _insert_sql("jobs", row, JOB_TYPES)
        try:
            job_id = await plain.fetchval(sql, *row.values())
        except asyncpg.PostgresError as exc:
            refused[refusal(exc, messages)] += 1
            return
        accepted[job_id] = row
        assert proc.poll() is None, "the worker exited"

    @_settings(JOB_EXAMPLES)
    @given(JOB_ROWS)
    def try_row(row: dict[str, str | None]) -> None:
        anyio.from_thread.run(insert, row)

    try:
        await wait_ready(conn)
        async with anyio.create_task_group() as tg:
            tg.start_soon(beside.stream)
            await anyio.to_thread.run_sync(try_row)
            beside.stop.set()
        await eventually(beside.ordinary_done, timeout=60)
        (rows,) = await eventually(lambda: _settled_rows(conn, list(accepted)), timeout=120)
        assert proc.poll() is None, "the worker exited"
    finally:
        code, _ = stop_process(proc, timeout=60)
        await plain.close()
        worker_log = (log.seek(0), log.read())[1]
        log.close()
    assert code == 0, worker_log[-4000:]
    assert "Traceback" not in worker_log, worker_log[-4000:]
    endings: Counter[str] = Counter()
    for row in rows:
        endings[_check_job(row)] += 1
    print(
        f"\n{tried} generated job rows in {time.monotonic() - started:.1f}s: "
        f"{sum(refused.values())} refused at INSERT {dict(refused)} {messages}; "
        f"{len(accepted)} accepted {dict(endings)}; "
        f"{len(beside.ordinary)} ordinary jobs beside them, all succeeded"
    )


async def _settled_rows(
    conn: asyncpg.Connection, ids: list[int]
) -> tuple[list[asyncpg.Record], ...]:
    """The rows of ``ids`` once no due job of a handled kind among them is unfinished.

    Whether a job is due and whether it has finished are read in one statement,
    so one snapshot and one ``now()``: a job inserted to run a few hundred
    milliseconds later cannot be read as not due by the wait and as due by the
    check. The rows come back wrapped in a tuple, which is true even when they
    are none; while a job is left unfinished the tuple is empty, so false.
    """
    rows = await conn.fetch(
        """SELECT id, kind, status, attempts, last_error, payload::text AS payload,
                  run_at <= now() AS due
             FROM pgwake.jobs WHERE id = ANY($1)""",
        ids,
    )
    unfinished = [r for r in rows if r["kind"] in HANDLED and r["due"] and r["status"] not in FINAL]
    return () if unfinished else (rows,)


def _check_job(row: asyncpg.Record) -> str:
    """The invariant for one accepted generated job; returns how it ended."""
    what = f"job {row['id']} ({row['kind']!r}, {row['status']}): {(row['payload'] or '')[:200]}"
    if row["kind"] not in HANDLED or not row["due"]:
        # Nobody handles it, or it is due in a later year: left as inserted.
        assert row["status"] in ("queued", "scheduled"), what
        assert row["attempts"] == 0, what
        return "left alone (unhandled kind or due later)"
    assert row["status"] in FINAL, what
    decoded = decode_json(row["payload"])
    if isinstance(decoded, UndecodableJson):
        assert row["status"] == "failed", what
        assert row["attempts"] == 1, what
        assert "JSON Python cannot decode" in row["last_error"], what
        return "failed: payload Python cannot decode"
    if row["status"] == "failed":
        assert NAMED_PROBLEM.search(row["last_error"] or ""), (what, row["last_error"])
        if _depth(row["payload"]) < 500 and row["kind"] == "noop":
            pytest.fail(f"a noop job with a payload Python decodes failed: {what}")
        return "failed: " + NAMED_PROBLEM.search(row["last_error"]).group(0).strip(" :'")
    assert row["status"] == "succeeded", what
    return "succeeded"


@pytest.mark.timeout(3600)
async def test_generated_schedule_rows_never_stop_the_leader(
    dsn: str, conn: asyncpg.Connection
) -> None:
    """Schedules: see the module docstring for the invariant."""
    started = time.monotonic()
    plain = await asyncpg.connect(dsn)
    await conn.execute("INSERT INTO pgwake.tenants (tenant_id) VALUES ('t1'), ('t2')")
    log = tempfile.NamedTemporaryFile("w+", prefix="pgwake-hostile-", suffix=".log")  # noqa: SIM115
    proc = _start_worker(dsn, log)
    beside = Beside(dsn, conn)
    accepted: dict[str, dict[str, str | None]] = {}
    refused: Counter[str] = Counter()
    messages: dict[str, str] = {}  # the first message of each kind of value refused
    tried = 0

    async def insert(row: dict[str, str | None]) -> None:
        nonlocal tried
        tried += 1
        row = {"name": f"s{tried}", **row}
        if row.get("missed") == "catch_up" and row.get("next_run_at") is not None:
            # A catch-up from centuries back enqueues 1000 jobs a round for ever, by
            # design; keep catch-ups within the last hour.
            row["next_run_at"] = _minutes_ago(tried % 60)
        sql = _insert_sql("schedules", row, SCHEDULE_TYPES)
        try:
            name = await plain.fetchval(sql, *row.values())
        except asyncpg.PostgresError as exc:
            refused[refusal(exc, messages)] += 1
            return
        accepted[name] = row
        assert proc.poll() is None, "the worker exited"

    @_settings(SCHEDULE_EXAMPLES)
    @given(SCHEDULE_ROWS)
    def try_row(row: dict[str, str | None]) -> None:
        anyio.from_thread.run(insert, row)

    try:
        await wait_ready(conn)
        async with anyio.create_task_group() as tg:
            tg.start_soon(beside.stream)
            await anyio.to_thread.run_sync(try_row)
            beside.stop.set()
        await eventually(beside.ordinary_done, timeout=60)

        async def schedules_served() -> bool:
            left = await conn.fetchval(
                "SELECT count(*) FROM pgwake.schedules WHERE enabled "
                "AND (next_run_at IS NULL OR next_run_at < now() - interval '3 seconds')"
            )
            return left == 0

        await eventually(schedules_served, timeout=60)
        enqueued = [
            r["id"]
            for r in await conn.fetch(
                "SELECT id FROM pgwake.jobs WHERE unique_key LIKE 'schedule:%'"
            )
        ]
        (jobs,) = await eventually(lambda: _settled_rows(conn, enqueued), timeout=120)
        schedules = await conn.fetch("SELECT * FROM pgwake.schedules")
        assert proc.poll() is None, "the worker exited"
    finally:
        code, _ = stop_process(proc, timeout=60)
        await plain.close()
        worker_log = (log.seek(0), log.read())[1]
        log.close()
    assert code == 0, worker_log[-4000:]
    assert "Traceback" not in worker_log, worker_log[-4000:]
    endings: Counter[str] = Counter()
    for schedule in schedules:
        row = accepted[schedule["name"]]
        what = f"schedule {dict(schedule)!r} from {row!r}"[:2000]
        if not schedule["enabled"]:
            if row.get("enabled") == "false":
                endings["inserted disabled"] += 1
            else:
                assert schedule["last_error"], what
                assert f'"schedule": "{schedule["name"]}"' in worker_log, what  # logged
                endings["disabled by the leader: " + schedule["last_error"].split(":")[0]] += 1
        else:
            assert schedule["next_run_at"] is not None, what
            endings["served or not due"] += 1
    job_endings = Counter(_check_job(job) for job in jobs)
    print(
        f"\n{tried} generated schedule rows in {time.monotonic() - started:.1f}s: "
        f"{sum(refused.values())} refused at INSERT {dict(refused)} {messages}; "
        f"{len(accepted)} accepted {dict(endings)}; {len(jobs)} jobs enqueued "
        f"{dict(job_endings)}; {len(beside.ordinary)} ordinary jobs, all succeeded"
    )
