"""Rate limit text, as the command line takes it: ``N/PERIOD``, for example ``10/s``,
``600/min``, ``5/10s``, ``1000/day``.

Invariants:
- :func:`parse_rate` accepts exactly what the schema accepts (pgwake.tenants and
  pgwake.limits: 1 to 1,000,000 jobs in a period of one second to one day, in whole
  seconds) and raises :class:`RateError` with a message naming the problem for
  anything else; it never returns a rate the database would refuse.
- :func:`format_rate` writes a rate back in the shortest unit that divides its period,
  so ``parse_rate(format_rate(r)) == r``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_JOBS = 1_000_000
MIN_PERIOD = 1
MAX_PERIOD = 86_400

# Seconds per unit, by every name the parser accepts.
UNITS = {
    "s": 1,
    "sec": 1,
    "second": 1,
    "seconds": 1,
    "m": 60,
    "min": 60,
    "minute": 60,
    "minutes": 60,
    "h": 3600,
    "hour": 3600,
    "hours": 3600,
    "d": 86_400,
    "day": 86_400,
    "days": 86_400,
}
_RATE = re.compile(r"(?P<jobs>[0-9]{1,9})/(?P<count>[0-9]{1,6})?(?P<unit>[a-z]+)")


class RateError(ValueError):
    """A rate text that does not describe a valid rate limit."""


@dataclass(frozen=True)
class Rate:
    """At most ``jobs`` jobs started in any ``seconds`` seconds."""

    jobs: int
    seconds: int


def parse_rate(text: str) -> Rate:
    """The rate of ``text`` (``N/PERIOD``); raises RateError saying what is wrong."""
    match = _RATE.fullmatch(text.strip().lower())
    if match is None:
        raise RateError(
            f"rate {text!r} is not of the form N/PERIOD (for example 10/s, 600/min, 5/10s, "
            "1000/day)"
        )
    unit = UNITS.get(match["unit"])
    if unit is None:
        raise RateError(
            f"rate {text!r}: unknown period unit {match['unit']!r} (use s, min, h or day)"
        )
    jobs = int(match["jobs"])
    if not 1 <= jobs <= MAX_JOBS:
        raise RateError(f"rate {text!r}: the number of jobs must be 1 to {MAX_JOBS:,}")
    seconds = int(match["count"] or "1") * unit
    if not MIN_PERIOD <= seconds <= MAX_PERIOD:
        raise RateError(f"rate {text!r}: the period must be one second to one day")
    return Rate(jobs, seconds)


def format_rate(jobs: int, seconds: float) -> str:
    """``jobs`` per ``seconds`` as rate text (``10/s``, ``600/min``, ``5/10s``)."""
    whole = round(seconds)
    for name, size in (("day", 86_400), ("h", 3600), ("min", 60), ("s", 1)):
        if whole % size == 0:
            count = whole // size
            return f"{jobs}/{name}" if count == 1 else f"{jobs}/{count}{name}"
    return f"{jobs}/{whole}s"  # pragma: no cover - every whole number divides by 1
