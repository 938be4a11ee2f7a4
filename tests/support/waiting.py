"""Waiting on a signal rather than for a fixed time.

``eventually`` polls a check until it holds and fails the test with the check's last
value when it does not hold in time. The timeout is a bound on a hang, never a claim
about speed: a check that holds returns as soon as it holds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

T = TypeVar("T")


async def eventually(
    check: Callable[[], Awaitable[T]], *, timeout: float = 15.0, interval: float = 0.02
) -> T:
    """Poll ``check`` until it returns a truthy value; fail with its last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = await check()
        if last:
            return last
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s; last value: {last!r}")
        await asyncio.sleep(interval)
