"""The lines a worker logs per job (a start, an end with its duration and outcome, a
retry at warning, a final failure at error with its traceback), the setting that
silences the info lines, the journal's priority prefixes, and start-up errors as JSON
lines in JSON mode: each read from the output of a real ``pgwake run`` process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import asyncpg

from tests.support.cli import pgwake
from tests.support.paths import ROOT
from tests.support.waiting import eventually
from tests.support.workers import spawn_worker, stop_process

JOBS = """
INSERT INTO pgwake.jobs (tenant_id, kind, payload, max_attempts) VALUES
    ('acme', 'echo', '{"n": 1}', 20),
    ('acme', 'sleep', '{"seconds": 0.3}', 20),
    ('beta', 'log.flaky', '{"reason": "quota"}', 2),
    ('beta', 'log.permanent', '{}', 20)
RETURNING id, kind
"""
PRIORITY = {"critical": 2, "error": 3, "warning": 4, "info": 6, "debug": 7}


def journal_stream(path: Path) -> str:
    """``JOURNAL_STREAM`` as systemd sets it for a service whose stderr is ``path``."""
    stat = os.stat(path)
    return f"{stat.st_dev}:{stat.st_ino}"


async def run_jobs(dsn: str, conn: asyncpg.Connection, log: Path, *args: str) -> dict[str, int]:
    """Run the four jobs above in a real worker writing to ``log`` (with
    ``JOURNAL_STREAM`` naming that file, as under systemd), until each ended for good;
    their ids by kind."""
    with log.open("w") as out:
        worker = spawn_worker(
            dsn,
            "--handlers", "tests.support.logging_handlers",
            "--retry-base", "0.05",
            "--retry-cap", "0.05",
            *args,
            env={"PGWAKE_LOG_FORMAT": "json", "JOURNAL_STREAM": journal_stream(log)},
            log=out,
        )  # fmt: skip
        try:
            ids = {row["kind"]: row["id"] for row in await conn.fetch(JOBS)}

            async def all_ended() -> bool:
                return bool(
                    await conn.fetchval(
                        "SELECT count(*) = 4 FROM pgwake.jobs WHERE finished_at IS NOT NULL"
                    )
                )

            await eventually(all_ended, timeout=30)
        finally:
            code, _ = stop_process(worker)
    assert code == 0, journal_lines(log)
    return ids


def journal_lines(log: Path) -> list[dict[str, Any]]:
    """Each line of ``log``: its priority prefix checked against its level and
    removed, the rest parsed as JSON."""
    events = []
    for line in log.read_text().splitlines():
        match = re.fullmatch(r"<([0-7])>(\{.*\})", line)
        assert match, f"not <priority>JSON: {line!r}"
        event = json.loads(match[2])
        assert int(match[1]) == PRIORITY[event["level"]], line
        events.append(event)
    return events


def of_job(events: list[dict[str, Any]], job_id: int) -> list[tuple[str, str, int]]:
    """(level, event, attempt) of the executor's lines about one job, in order."""
    return [
        (e["level"], e["event"], e["attempt"])
        for e in events
        if e.get("job_id") == job_id and e.get("logger") == "executor"
    ]


async def test_a_start_and_an_end_per_job_retries_at_warning_failures_at_error(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    log = tmp_path / "worker.log"
    ids = await run_jobs(dsn, conn, log)
    events = journal_lines(log)

    assert of_job(events, ids["echo"]) == [
        ("info", "job started", 1),
        ("info", "job succeeded", 1),
    ]
    assert of_job(events, ids["log.flaky"]) == [
        ("info", "job started", 1),
        ("warning", "job will retry", 1),
        ("info", "job started", 2),
        ("error", "job failed", 2),
    ]
    assert of_job(events, ids["log.permanent"]) == [
        ("info", "job started", 1),
        ("error", "job failed", 1),
    ]
    by = {(e.get("job_id"), e["event"], e.get("attempt")): e for e in events}
    started = by[(ids["echo"], "job started", 1)]
    assert started["tenant"] == "acme"
    assert started["kind"] == "echo"
    assert started["wait_seconds"] >= 0
    # The sleep job slept 0.3 s: its duration is at least that, measured by the worker.
    slept = by[(ids["sleep"], "job succeeded", 1)]
    assert slept["outcome"] == "succeeded"
    # (The event loop's timer may fire a fraction of a millisecond early.)
    assert slept["duration_seconds"] >= 0.29
    assert by[(ids["echo"], "job succeeded", 1)]["duration_seconds"] >= 0

    # Records the handler reported go on its end lines; a handler that reports none
    # has no records field (not 0).
    assert "records" not in by[(ids["echo"], "job succeeded", 1)]
    assert by[(ids["log.flaky"], "job failed", 2)]["records"] == 2

    retry = by[(ids["log.flaky"], "job will retry", 1)]
    assert retry["outcome"] == "retried"
    assert retry["records"] == 2
    assert retry["error"] == "RuntimeError: flaky dependency said: quota"
    assert retry["delay"] > 0
    assert "exception" not in retry  # the traceback goes with the final failure

    final = by[(ids["log.flaky"], "job failed", 2)]
    assert (final["outcome"], final["tenant"], final["kind"]) == ("failed", "beta", "log.flaky")
    assert final["error"] == "RuntimeError: flaky dependency said: quota"
    tb = final["exception"]
    assert tb.startswith("Traceback (most recent call last):"), tb
    assert re.search(r"in log_flaky\n.*\n.*in _middle\n.*\n.*in _innermost\n", tb), tb
    assert tb.rstrip().endswith("RuntimeError: flaky dependency said: quota"), tb

    permanent = by[(ids["log.permanent"], "job failed", 1)]
    assert permanent["error"] == "PermanentError: the order does not exist"
    assert "in log_permanent" in permanent["exception"]
    # The worker's own lines are filed at their priorities too.
    assert any(e["event"] == "worker ready" and e["level"] == "info" for e in events)


async def test_log_jobs_off_keeps_only_retries_and_failures(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    log = tmp_path / "worker.log"
    ids = await run_jobs(dsn, conn, log, "--no-log-jobs")
    events = journal_lines(log)
    assert of_job(events, ids["echo"]) == []
    assert of_job(events, ids["sleep"]) == []
    assert of_job(events, ids["log.flaky"]) == [
        ("warning", "job will retry", 1),
        ("error", "job failed", 2),
    ]
    assert of_job(events, ids["log.permanent"]) == [("error", "job failed", 1)]
    assert "Traceback" in next(e for e in events if e["event"] == "job failed")["exception"]


def logged(fmt: str, stream_is: str) -> str:
    """What a process logging in format ``fmt`` writes to stderr for one line at each
    level and one with a traceback; ``stream_is`` says what ``JOURNAL_STREAM`` names:
    ``stderr`` (its dev:ino), ``other`` (another file's)."""
    code = (
        "import logging, sys\n"
        "from listener import logs\n"
        f"logs.configure({fmt!r}, 'debug')\n"
        "log = logs.get_logger('t')\n"
        "log.debug('d'); log.info('i'); log.warning('w'); log.error('e')\n"
        "logging.getLogger('lib').critical('c')\n"
        "try:\n    raise ValueError('boom')\nexcept ValueError:\n    log.exception('x')\n"
    )
    return run_with_stderr_file(code, stream_is)


def run_with_stderr_file(code: str, stream_is: str, *args: str) -> str:
    """Run ``code`` (or, when it is empty, ``pgwake *args``) with stderr a file and
    ``JOURNAL_STREAM`` naming that file (``stderr``) or another one (``other``)."""
    with tempfile.TemporaryDirectory() as directory:
        err, other = Path(directory) / "stderr", Path(directory) / "other"
        other.write_text("")
        with err.open("w") as fh:
            target = err if stream_is == "stderr" else other
            env = {k: v for k, v in os.environ.items() if not k.startswith("PGWAKE_")}
            env |= {"PYTHONPATH": str(ROOT), "JOURNAL_STREAM": journal_stream(target)}
            command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "listener"]
            subprocess.run([*command, *args], env=env, stderr=fh, check=False, timeout=60)
        return err.read_text()


def test_priority_prefixes_only_when_stderr_is_the_journal() -> None:
    out = logged("json", "stderr")
    prefixes = [line[:3] for line in out.splitlines()]
    assert prefixes == ["<7>", "<6>", "<4>", "<3>", "<2>", "<3>"], out
    for line in out.splitlines():
        json.loads(line[3:])
    # Another stream named (stderr redirected in a child of the service): no prefix.
    plain = logged("json", "other")
    assert all(line.startswith("{") for line in plain.splitlines()), plain
    assert [json.loads(line)["level"] for line in plain.splitlines()] == [
        "debug", "info", "warning", "error", "critical", "error"
    ]  # fmt: skip
    # Console lines: every line of a traceback carries its event's priority.
    console = logged("console", "stderr")
    lines = console.splitlines()
    tail = lines[lines.index(next(line for line in lines if "] x" in line)) :]
    assert len(tail) > 3, console
    assert all(line.startswith("<3>") for line in tail), console


def test_start_up_errors_are_json_lines_in_json_mode(empty_dsn: str) -> None:
    """A bad setting (before any configuration is read whole), an unreachable database
    (for `migrate`: `run` waits for it) and an unmigrated one: one JSON line each at
    level error with the exit code, when the log format is json (flag, environment or
    config file); the one plain line otherwise."""
    cases = [
        (["run", "--concurrency", "0", "--log-format", "json"], {}, 3, "concurrency"),
        (["run", "--concurrency", "0"], {"PGWAKE_LOG_FORMAT": "json"}, 3, "concurrency"),
        (["run"], {"PGWAKE_LOG_FORMAT": "json", "PGWAKE_DSN": empty_dsn}, 5, "pgwake migrate"),
        (
            ["migrate"],
            {
                "PGWAKE_LOG_FORMAT": "json",
                "PGWAKE_DSN": "postgresql://a:Start9Secret@127.0.0.1:1/x",
            },
            4,
            "cannot connect to postgresql://a:***@127.0.0.1:1/x",
        ),
    ]
    for args, env, code, message in cases:
        done = pgwake(*args, env=env)
        assert done.returncode == code, (args, done.stderr)
        assert "Start9Secret" not in done.stderr
        (line,) = done.stderr.splitlines()
        event = json.loads(line)
        assert (event["level"], event["logger"], event["exit_code"]) == ("error", "cli", code)
        assert message in event["event"], event
    plain = pgwake("run", "--concurrency", "0", env={"PGWAKE_LOG_FORMAT": "console"})
    assert plain.returncode == 3
    assert plain.stderr.startswith("pgwake: error: invalid configuration: concurrency")


def test_a_config_file_naming_json_makes_a_bad_setting_a_json_line(tmp_path: Path) -> None:
    config = tmp_path / "pgwake.toml"
    config.write_text('[pgwake]\nlog_format = "json"\nconcurrency = 0\n')
    done = pgwake("run", "--config", str(config))
    assert done.returncode == 3, done.stderr
    event = json.loads(done.stderr)
    assert event["event"].startswith(f"invalid configuration: concurrency (from {config})")


def test_a_plain_error_line_carries_the_error_priority_in_the_journal() -> None:
    out = run_with_stderr_file("", "stderr", "run", "--concurrency", "0")
    assert out.startswith("<3>pgwake: error: invalid configuration: concurrency"), out
    assert len(out.splitlines()) == 1
