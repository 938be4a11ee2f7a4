"""Retry policy: exponential backoff with bounded jitter, for jobs and for reaching the
database again.

Invariants:
- Before the cap, every retry waits longer than the one before. The delay for attempt
  ``n`` (1-based) is ``base * 2**(n-1)`` scaled by a factor in [1 - jitter, 1 + jitter]
  (jitter 0.25 by default, so consecutive delays grow by at least 2 * 0.75 / 1.25 =
  1.2x); the result never exceeds ``cap``. Jitter spreads retries of jobs that failed
  together.
- :class:`Reconnect` is the one backoff of the loops that keep a connection or a write
  going (the LISTEN connection, the heartbeat, the completer's writes): it counts the
  failures since the last success, waits ``first`` seconds after the first, doubling up
  to ``cap``, without jitter (each loop retries its own connection; there is nobody to
  spread out from), and starts again from ``first`` after a success.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import anyio


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff: ``base`` seconds for the first retry, at most ``cap``."""

    base: float = 1.0
    cap: float = 3600.0
    rng: random.Random = field(default_factory=random.Random, compare=False)
    jitter: float = 0.25

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        exponent = min(max(attempt - 1, 0), 62)
        raw = self.base * (2.0**exponent)
        if self.jitter:
            raw *= self.rng.uniform(1 - self.jitter, 1 + self.jitter)
        return min(raw, self.cap)


# The first wait before reaching the database again: short, since most cuts (a
# terminated session, a restart that is over) are already over by then.
FIRST_RECONNECT_DELAY = 0.05


class Reconnect:
    """The waits of a loop that retries until the database answers again::

    retry = Reconnect(cap=5.0)
    while True:
        try:
            await write()
        except Exception as exc:
            if not is_transient(exc):
                raise
            await retry.sleep()  # 0.05 s, 0.1 s, 0.2 s ... at most 5 s
        else:
            retry.reset()
    """

    __slots__ = ("_backoff", "_failures")

    def __init__(self, *, cap: float, first: float = FIRST_RECONNECT_DELAY) -> None:
        self._backoff = Backoff(base=first, cap=cap, jitter=0.0)
        self._failures = 0

    def next_delay(self) -> float:
        """Count one more failure; the seconds to wait before trying again."""
        self._failures += 1
        return self._backoff.delay(self._failures)

    async def sleep(self) -> None:
        """Count one more failure and wait before trying again."""
        await anyio.sleep(self.next_delay())

    def reset(self) -> None:
        """It worked: the next failure waits ``first`` seconds again."""
        self._failures = 0
