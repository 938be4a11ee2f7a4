"""Logs: JSON lines from a real worker, the job bound to every line inside a job, secrets
masked everywhere (fields, messages, library logs, tracebacks), console output on a
terminal, and the suite's secret watch proven able to fail."""

from __future__ import annotations

import io
import json
import logging
import os
import pty
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import structlog

from listener import logs
from listener.crypto import generate_key, parse_keys
from listener.joblog import JobLog
from listener.jobs import Job, Outcome, Status, job_context
from listener.redact import MASK, redact, redact_value, register_dsn, register_secret
from tests.support import secret_watch
from tests.support.jobs import held_job
from tests.support.paths import ROOT
from tests.support.waiting import eventually
from tests.support.workers import spawn_worker, stop_process


def with_password(dsn: str) -> str:
    """``dsn`` with a password (the test server trusts its clients, so any will do)."""
    parts = urlsplit(dsn)
    if parts.password:
        return dsn
    user, _, host = parts.netloc.rpartition("@")
    netloc = f"{user or 'postgres'}:pw-{secrets.token_hex(8)}@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


async def run_job(conn: asyncpg.Connection, kind: str) -> int:
    job_id: int = await conn.fetchval(
        "INSERT INTO pgwake.jobs (tenant_id, kind) VALUES ('acme', $1) RETURNING id", kind
    )

    async def finished() -> str | None:
        status: str | None = await conn.fetchval(
            "SELECT status FROM pgwake.jobs WHERE id = $1 AND status IN ('succeeded', 'failed')",
            job_id,
        )
        return status

    assert await eventually(finished) == "succeeded"
    return job_id


async def test_lines_inside_a_job_carry_it_and_mask_secrets(
    dsn: str, conn: asyncpg.Connection
) -> None:
    secret_dsn = with_password(dsn)
    password = urlsplit(secret_dsn).password
    assert password
    keys = generate_key("k1")
    material = keys.split(":", 1)[1]
    worker = spawn_worker(
        secret_dsn,
        "--handlers",
        "tests.support.logging_handlers",
        env={"PGWAKE_ENCRYPTION_KEYS": keys, "PGWAKE_LOG_FORMAT": "json"},
    )
    try:
        job_id = await run_job(conn, "log.lines")
    finally:
        code, output = stop_process(worker)
    assert code == 0, output
    assert password not in output
    assert material not in output
    # JSON lines, every one of them.
    events = [json.loads(line) for line in output.splitlines() if line.strip()]
    by_event = {e["event"].split(":")[0]: e for e in events}
    inside = [
        "from ctx.log",
        "from structlog.get_logger",
        "from stdlib logging",
        "from a thread",
        "a traceback",
        "a stdlib traceback",
    ]
    for name in inside:
        line = by_event[name]
        assert (line["job_id"], line["tenant"], line["kind"], line["attempt"]) == (
            job_id,
            "acme",
            "log.lines",
            1,
        ), line
        assert {"timestamp", "level", "logger"} <= line.keys(), line
    assert by_event["from stdlib logging"]["logger"] == "asyncpg.pool"
    assert by_event["from stdlib logging"]["level"] == "warning"
    assert by_event["from a thread"]["logger"] == "some.library"
    masked_dsn = redact(secret_dsn)
    assert f":{MASK}@" in masked_dsn
    assert by_event["from ctx.log"]["dsn"] == masked_dsn
    assert by_event["from ctx.log"]["keys"] == f"k1:{MASK}"
    assert by_event["from structlog.get_logger"]["settings"] == {
        "dsn": masked_dsn,
        "k": [f"k1:{MASK}"],
    }
    assert by_event["from stdlib logging"]["event"] == (
        f"from stdlib logging: {masked_dsn} with k1:{MASK}"
    )
    for name in ("a traceback", "a stdlib traceback"):
        tb = by_event[name]["exception"]
        assert tb.startswith("Traceback (most recent call last):"), tb
        assert f"ConnectionError: cannot reach {masked_dsn} with keys k1:{MASK}" in tb, tb
    # Lines outside the job carry no job.
    ready = by_event["worker ready"]
    assert "job_id" not in ready
    assert ready["dsn"] == masked_dsn


async def test_console_format_is_readable_lines(dsn: str, conn: asyncpg.Connection) -> None:
    worker = spawn_worker(
        dsn,
        "--handlers",
        "tests.support.logging_handlers",
        env={"PGWAKE_ENCRYPTION_KEYS": generate_key("k1"), "PGWAKE_LOG_FORMAT": "console"},
    )
    try:
        job_id = await run_job(conn, "log.lines")
    finally:
        code, output = stop_process(worker)
    assert code == 0, output
    (line,) = [line for line in output.splitlines() if "from ctx.log" in line]
    assert not line.startswith("{"), line
    assert "[info     ] from ctx.log" in line, line
    for part in (f"job_id={job_id}", "tenant=acme", "kind=log.lines", "attempt=1"):
        assert part in line, line
    assert "\x1b[" not in output  # no colours when stderr is not a terminal


def log_once(fmt: str, *, tty: bool) -> str:
    """What a process configured with ``fmt`` writes for one line, to a terminal or a
    pipe."""
    code = (
        "from listener import logs; "
        f"logs.configure({fmt!r}); logs.get_logger('t').info('hello', n=1)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if not tty:
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        return done.stderr
    leader, follower = pty.openpty()
    try:
        subprocess.run([sys.executable, "-c", code], env=env, stderr=follower, check=True)
        return os.read(leader, 65536).decode()
    finally:
        os.close(leader)
        os.close(follower)


def test_auto_is_console_on_a_terminal_and_json_elsewhere() -> None:
    on_tty = log_once("auto", tty=True)
    assert "hello" in on_tty
    assert not on_tty.lstrip().startswith("{"), on_tty
    assert "\x1b[" in on_tty  # colours on a terminal
    piped = log_once("auto", tty=False)
    assert json.loads(piped)["event"] == "hello"
    assert json.loads(log_once("json", tty=True).strip())["n"] == 1


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The process's logs, as JSON, in a buffer; the suite's configuration restored
    afterwards."""
    buffer = io.StringIO()
    logs.configure("json", "debug", stream=buffer)
    try:
        yield buffer
    finally:
        logs.configure("console", "info")


def lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("POSTGRESQL://app:pw1@db/x", "POSTGRESQL://app:***@db/x"),
        ("postgres://:only-pw@db/x", "postgres://:***@db/x"),
        ("dsn='postgresql://a:b@h1,h2:5433/d'", "dsn='postgresql://a:***@h1,h2:5433/d'"),
        ("password='it\\'s a secret' host=db", "password=*** host=db"),
        ("PGPASSWORD=hunter22 psql", "PGPASSWORD=*** psql"),
        ("connect(password='x y', user='u')", "connect(password=***, user='u')"),
    ],
)
def test_redact_forms(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_registered_secrets_are_masked_bare() -> None:
    """The password of the worker's DSN and the material of a loaded keyring are masked
    even where no URL or ``password=`` surrounds them."""
    register_dsn("postgresql://app:Bare%2Fpass-123@db/x")
    loaded = generate_key("kz")
    parse_keys(loaded, "test")  # builds a keyring, which registers its keys
    unloaded = generate_key("other").split(":")[1]
    text = f"auth failed with Bare/pass-123, Bare%2Fpass-123, {loaded} and {unloaded}"
    assert redact(text) == f"auth failed with ***, ***, kz:*** and {unloaded}"
    register_secret("short")  # too short to mask on its own
    assert redact("a short word") == "a short word"


def test_redact_value_walks_structures_and_objects() -> None:
    class Holder:
        def __str__(self) -> str:
            return "Holder(postgresql://u:obj-pw@h/d)"

    value = {
        "nested": {"list": ["postgres://u:p1@h", ("password=p2",)], "n": 3, "ok": True},
        "db_password": "plain",
        "api_key": 12345,
        "error": ValueError("bad postgresql://u:p3@h"),
        "object": Holder(),
        "raw": b"password=p4",
        "none": None,
    }
    assert redact_value(value) == {
        "nested": {"list": ["postgres://u:***@h", ["password=***"]], "n": 3, "ok": True},
        "db_password": MASK,
        "api_key": MASK,
        "error": "ValueError: bad postgresql://u:***@h",
        "object": "Holder(postgresql://u:***@h/d)",
        "raw": "password=***",
        "none": None,
    }


def test_every_way_of_logging_in_process_is_one_redacted_pipeline(
    captured: io.StringIO,
) -> None:
    secret = "postgresql://app:in-process-pw@db/x"
    with structlog.contextvars.bound_contextvars(job_id=7, tenant="t1", kind="k"):
        logs.get_logger("mine").info("structured", dsn=secret, password="plain")
        logging.getLogger("asyncpg").warning("library %s", secret)
        logging.getLogger("asyncpg").debug("debug too")
        try:
            raise OSError(f"cannot connect to {secret}")
        except OSError:
            logs.get_logger("mine").exception("failed")
    logging.getLogger("outside").info("no job here")
    out = captured.getvalue()
    assert "in-process-pw" not in out
    assert "plain" not in out
    got = lines(captured)
    assert [(e["logger"], e["event"]) for e in got] == [
        ("mine", "structured"),
        ("asyncpg", "library postgresql://app:***@db/x"),
        ("asyncpg", "debug too"),
        ("mine", "failed"),
        ("outside", "no job here"),
    ]
    assert [e.get("job_id") for e in got] == [7, 7, 7, 7, None]
    assert got[0]["password"] == MASK
    assert "OSError: cannot connect to postgresql://app:***@db/x" in got[3]["exception"]
    assert list(got[0])[:4] == ["timestamp", "level", "logger", "event"]


def test_records_are_masked_for_every_handler(captured: io.StringIO) -> None:
    """Another handler on the root logger (an application's own, pytest's) sees the
    message and traceback already masked."""
    other = io.StringIO()
    handler = logging.StreamHandler(other)
    logging.getLogger().addHandler(handler)
    try:
        try:
            raise RuntimeError("postgresql://u:tb-pw@h")
        except RuntimeError:
            logging.getLogger("lib").exception("with %s", "password=arg-pw")
    finally:
        logging.getLogger().removeHandler(handler)
    assert "tb-pw" not in other.getvalue()
    assert "arg-pw" not in other.getvalue()
    assert "with password=***" in other.getvalue()
    assert "RuntimeError: postgresql://u:***@h" in other.getvalue()


def test_level_filters_structlog_and_stdlib() -> None:
    buffer = io.StringIO()
    logs.configure("json", "warning", stream=buffer)
    try:
        logs.get_logger("x").info("dropped")
        logging.getLogger("lib").info("dropped too")
        logs.get_logger("x").warning("kept")
        logging.getLogger("lib").error("kept too")
    finally:
        logs.configure("console", "info")
    assert [e["event"] for e in lines(buffer)] == ["kept", "kept too"]


async def test_secret_watch_catches_a_leak_in_a_worker_log(
    dsn: str, conn: asyncpg.Connection
) -> None:
    """The suite-wide check can fail: a worker whose handler writes its DSN and key raw
    to stderr is caught, line by line, and the report shows neither."""
    secret_dsn = with_password(dsn)
    password = urlsplit(secret_dsn).password
    assert password
    keys = generate_key("k1")
    material = keys.split(":", 1)[1]
    with secret_watch.diverted(secret_watch.SecretWatch()) as watch:
        worker = spawn_worker(
            secret_dsn,
            "--handlers",
            "tests.support.logging_handlers",
            env={"PGWAKE_ENCRYPTION_KEYS": keys, "PGWAKE_LOG_FORMAT": "json"},
        )
        try:
            await run_job(conn, "log.leak")
        finally:
            code, output = stop_process(worker)
    assert code == 0
    assert password in watch.secrets
    assert material in watch.secrets
    leaks = watch.leaks()
    leaked_lines = [i + 1 for i, line in enumerate(output.splitlines()) if "leaked" in line]
    assert len(leaked_lines) == 2
    assert sorted({leak.line for leak in leaks}) == leaked_lines
    dsn_line, keys_line = leaked_lines
    whats = {(leak.line, (leak.origin or leak.what).rsplit(": ", 1)[-1]) for leak in leaks}
    assert whats == {
        (dsn_line, "a libpq URL with its password"),
        (dsn_line, "PGWAKE_DSN"),
        (keys_line, "PGWAKE_ENCRYPTION_KEYS"),
    }, leaks
    assert all(leak.log.startswith("output of `") for leak in leaks), leaks
    report = watch.report()
    assert "3 LEAK(S)" in report, report
    assert password not in report
    assert material not in report
    # The masked line logged just before the leak is not one.
    assert any("about to leak" in line for line in output.splitlines())


def test_warnings_and_an_uncaught_exception_are_json_lines_masked() -> None:
    code = (
        "import warnings\n"
        "from listener import logs\n"
        "logs.configure('json')\n"
        "warnings.warn('deprecated: postgresql://u:warn-pw@h/d')\n"
        "raise RuntimeError('crashed on postgresql://u:crash-pw@h/d')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    warning, crash = (json.loads(line) for line in done.stderr.splitlines())
    assert warning["logger"] == "py.warnings"
    assert warning["event"].endswith("UserWarning: deprecated: postgresql://u:***@h/d")
    assert (crash["level"], crash["event"]) == ("critical", "uncaught exception")
    assert crash["exception"].endswith("RuntimeError: crashed on postgresql://u:***@h/d")
    assert "-pw" not in done.stderr


def test_hot_lines_are_the_lines_the_pipeline_writes(captured: io.StringIO) -> None:
    """The per-job lines (HotLogger) render exactly as the pipeline would: same keys in
    the same order, the job's fields and the bound context, every field masked; only the
    timestamp differs. A level above info drops them, and console mode sends them
    through the pipeline."""
    secret = "postgresql://app:hot-pw@db/x"
    now = time.time()
    job = Job(
        id=7, tenant_id="t1", kind=secret, payload={}, priority=0, attempt=2,
        max_attempts=20, timeout=60.0, created_epoch=now, run_epoch=now, started_epoch=now,
    )  # fmt: skip
    with structlog.contextvars.bound_contextvars(worker="w1"), job_context(job):
        logs.HotLogger("executor").info("job started", wait_seconds=0.5, password="plain")
        logs.get_logger("executor").info("job started", wait_seconds=0.5, password="plain")
    hot, piped = lines(captured)
    assert "hot-pw" not in captured.getvalue()
    assert "plain" not in captured.getvalue()
    assert hot.pop("timestamp")
    assert piped.pop("timestamp")
    assert list(hot.items()) == list(piped.items())
    assert hot["job_id"] == 7
    assert hot["worker"] == "w1"
    assert hot["password"] == MASK

    quiet = io.StringIO()
    logs.configure("json", "warning", stream=quiet)
    try:
        logs.HotLogger("executor").info("dropped")
        logs.configure("console", "info", stream=quiet)
        logs.HotLogger("executor").info("through the pipeline", n=1)
    finally:
        logs.configure("console", "info")
    assert "dropped" not in quiet.getvalue()
    assert "through the pipeline" in quiet.getvalue()
    assert "{" not in quiet.getvalue()


async def test_job_lines_beyond_the_budget_are_counted_not_written(
    captured: io.StringIO,
) -> None:
    """log_jobs_per_second: the first N info lines of a second are written, the rest
    counted in one line at the end of that second, outside any job's context; failures
    are never left out."""
    job_log = JobLog(enabled=True, per_second=3)
    for i in range(10):
        job = held_job(i, max_attempts=1)
        with job_context(job):
            job_log.started(job)
            job_log.ended(Outcome(i, 1, Status.SUCCEEDED), time.monotonic())
    with job_context(job):
        job_log.ended(Outcome(99, 1, Status.FAILED, error="boom"), time.monotonic())

    def events() -> list[dict[str, Any]]:
        return [e for e in lines(captured) if e["logger"] == "executor"]

    async def summarised() -> bool:
        return any(e["event"] == "job lines left out" for e in events())

    await eventually(summarised, timeout=5)
    got = events()
    assert [e["event"] for e in got[:3]] == ["job started", "job succeeded", "job started"]
    assert sum(e["event"] == "job failed" for e in got) == 1
    summary = next(e for e in got if e["event"] == "job lines left out")
    assert summary["per_second"] == 3
    assert summary["job_started"] == 8
    assert summary["job_succeeded"] == 9
    assert "job_id" not in summary
