"""An application's handler for a kind named like a built-in replaces the built-in in the
workers that load it, with a log line saying so; other workers keep the built-in."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import pytest
from structlog.testing import capture_logs

import handlers.builtin  # noqa: F401 - registers the built-ins into DEFAULT_REGISTRY
from listener.api import JobContext
from listener.errors import ConfigError
from listener.registry import DEFAULT_REGISTRY, Registry
from tests.support.waiting import eventually
from tests.support.workers import spawn_worker, stop_process

# The handler module defining its own ``sleep``: loaded only by the worker processes,
# never imported here (it would register into this process's DEFAULT_REGISTRY).
OVERRIDE = "tests.support.override_handlers"


async def builtin_sleep(payload: dict[str, Any], ctx: JobContext) -> str:
    return "builtin"


async def app_sleep(payload: dict[str, Any], ctx: JobContext) -> str:
    return "application"


async def other_app_sleep(payload: dict[str, Any], ctx: JobContext) -> str:
    return "other application"


@pytest.mark.parametrize("builtin_first", [True, False])
def test_an_application_handler_replaces_a_builtin_in_either_order(builtin_first: bool) -> None:
    registry = Registry()
    with capture_logs() as logged:
        if builtin_first:
            registry.register("sleep", builtin_sleep, builtin=True)
            registry.register("sleep", app_sleep)
        else:
            registry.register("sleep", app_sleep)
            registry.register("sleep", builtin_sleep, builtin=True)
    chosen = registry.get("sleep")
    assert chosen is not None
    assert chosen.fn is app_sleep
    assert not chosen.builtin
    lines = [line for line in logged if line["event"].startswith("application handler replaces")]
    assert len(lines) == 1, logged
    assert lines[0]["kind"] == "sleep"
    assert lines[0]["handler"].endswith("app_sleep")
    assert lines[0]["builtin"].endswith("builtin_sleep")


def test_two_application_handlers_or_two_builtins_of_one_kind_still_conflict() -> None:
    registry = Registry()
    registry.register("sleep", builtin_sleep, builtin=True)
    with pytest.raises(ConfigError, match="already handled by"):
        registry.register("sleep", builtin_sleep, builtin=True)
    registry.register("sleep", app_sleep)
    with pytest.raises(ConfigError, match=r"already handled by .*app_sleep"):
        registry.register("sleep", other_app_sleep)


def test_builtins_are_registered_as_builtins() -> None:
    for kind in ("echo", "sleep", "noop"):
        found = DEFAULT_REGISTRY.get(kind)
        assert found is not None
        assert found.builtin, kind


async def _result(conn: asyncpg.Connection, job_id: int) -> Any:
    row = await conn.fetchrow("SELECT status, result FROM pgwake.jobs WHERE id = $1", job_id)
    if row is None or row["status"] not in ("succeeded", "failed"):
        return None
    return row


@pytest.mark.parametrize("with_app_module", [True, False])
async def test_a_worker_runs_the_application_sleep_and_another_the_builtin(
    dsn: str, conn: asyncpg.Connection, with_app_module: bool
) -> None:
    args = ("--handlers", OVERRIDE) if with_app_module else ()
    worker = spawn_worker(dsn, *args)
    try:
        job_id = await conn.fetchval(
            "INSERT INTO pgwake.jobs (kind, payload) VALUES ('sleep', '{\"seconds\": 0}') "
            "RETURNING id"
        )
        row = await eventually(lambda: _result(conn, job_id), timeout=30)
    finally:
        code, output = stop_process(worker)
    assert code == 0, output
    assert row["status"] == "succeeded", output
    result = row["result"]
    if isinstance(result, str):
        result = json.loads(result)
    replaced = [
        json.loads(line)
        for line in output.splitlines()
        if "application handler replaces the built-in kind" in line
    ]
    if with_app_module:
        assert result == {"handled_by": "application", "payload": {"seconds": 0}}
        assert len(replaced) == 1, output
        assert replaced[0]["kind"] == "sleep"
    else:
        assert set(result) == {"slept"}
        assert replaced == []
