"""Retry policy: exponential backoff with bounded jitter.

Invariant: before the cap, every retry waits longer than the one before. The delay for
attempt ``n`` (1-based) is ``base * 2**(n-1)`` scaled by a factor in [0.75, 1.25], so
consecutive delays grow by at least 2 * 0.75 / 1.25 = 1.2x; the result never exceeds
``cap``. Jitter spreads retries of jobs that failed together.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff: ``base`` seconds for the first retry, at most ``cap``."""

    base: float = 1.0
    cap: float = 3600.0
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        exponent = min(max(attempt - 1, 0), 62)
        raw = self.base * (2.0**exponent)
        return min(raw * self.rng.uniform(0.75, 1.25), self.cap)
