"""Handlers that log, for tests of the log pipeline in a real worker process.

``log.lines`` logs through every way a handler may (``ctx.log``, ``structlog``, stdlib
``logging`` under a library's name, from a worker thread, with tracebacks), each line
carrying the worker's DSN and its encryption key text, which must come out masked.
``log.leak`` writes them raw to stderr, around the logging pipeline: a leak on purpose,
for the test that proves the secret watch catches one. ``log.flaky`` fails every attempt
with a traceback three frames deep, and ``log.permanent`` raises ``PermanentError``, for
the tests of the job lines (start, end, retry, final failure).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import anyio
import structlog

from listener.api import JobContext, PermanentError, handler


def _secrets() -> tuple[str, str]:
    return os.environ["PGWAKE_DSN"], os.environ["PGWAKE_ENCRYPTION_KEYS"]


@handler("log.lines")
async def log_lines(payload: dict[str, Any], ctx: JobContext) -> dict[str, bool]:
    """Log one line each way; every line names the DSN and the key text."""
    dsn, keys = _secrets()
    ctx.log.info("from ctx.log", dsn=dsn, keys=keys)
    structlog.get_logger().info("from structlog.get_logger", settings={"dsn": dsn, "k": [keys]})
    logging.getLogger("asyncpg.pool").warning("from stdlib logging: %s with %s", dsn, keys)
    await anyio.to_thread.run_sync(
        lambda: logging.getLogger("some.library").info("from a thread: %s", dsn)
    )
    try:
        raise ConnectionError(f"cannot reach {dsn} with keys {keys}")
    except ConnectionError:
        ctx.log.exception("a traceback")
        logging.getLogger("some.library").exception("a stdlib traceback")
    return {"logged": True}


@handler("log.leak")
async def log_leak(payload: dict[str, Any], ctx: JobContext) -> None:
    """Write the DSN and the key text raw to stderr, bypassing the logging pipeline."""
    dsn, keys = _secrets()
    ctx.log.info("about to leak", dsn=dsn)  # masked: this line is no leak
    print(f"leaked dsn {dsn}", file=sys.stderr, flush=True)
    print(f"leaked keys {keys}", file=sys.stderr, flush=True)


def _innermost(reason: str) -> None:
    raise RuntimeError(f"flaky dependency said: {reason}")


def _middle(reason: str) -> None:
    _innermost(reason)


@handler("log.flaky")
async def log_flaky(payload: dict[str, Any], ctx: JobContext) -> None:
    """Report 2 records, then fail every attempt, from a function two calls down (so the
    traceback shows it)."""
    ctx.add_records(2)
    _middle(str(payload.get("reason", "no")))


@handler("log.permanent")
async def log_permanent(payload: dict[str, Any], ctx: JobContext) -> None:
    """Fail for good at once."""
    raise PermanentError("the order does not exist")
