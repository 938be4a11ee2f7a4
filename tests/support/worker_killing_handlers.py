"""Handlers that try to take their worker down, for tests/test_worker_deaths.py.

``raise_base`` raises a ``BaseException`` (``KeyboardInterrupt``, ``SystemExit(3)``...)
out of the handler; ``kill_worker`` kills its worker process while the job runs, from
outside the handler (a ``KeyboardInterrupt`` raised by an event-loop callback) or with
SIGKILL.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from typing import Any

import anyio

from listener.api import JobContext, handler


class HandlersOwnBaseError(BaseException):
    """A BaseException subclass of the handler's own."""


_RAISE: dict[str, Callable[[], BaseException]] = {
    "keyboard": KeyboardInterrupt,
    "exit": lambda: SystemExit(3),
    "generator": GeneratorExit,
    "own": lambda: HandlersOwnBaseError("a BaseException of the handler's own"),
    "cancelled": asyncio.CancelledError,  # nobody cancelled the job
    "group": lambda: BaseExceptionGroup("several", [KeyboardInterrupt(), ValueError("x")]),
}


@handler("raise_base")
async def raise_base(payload: dict[str, Any], ctx: JobContext) -> None:
    """Raise the BaseException named by ``payload["what"]``."""
    error = _RAISE[payload["what"]]()
    raise error


def _interrupt() -> None:
    raise KeyboardInterrupt


@handler("kill_worker")
async def kill_worker(payload: dict[str, Any], ctx: JobContext) -> None:
    """End the worker process while this job runs: ``payload["how"]`` is ``interrupt``
    (a KeyboardInterrupt from an event-loop callback: the worker's tasks are cancelled
    and it exits without a clean stop) or ``sigkill``."""
    if payload["how"] == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    else:
        asyncio.get_running_loop().call_soon(_interrupt)
    await anyio.sleep(60)
