"""A wake-up signal between loops: set by NOTIFY, promotions, freed slots; awaited with
a timeout by the loop it wakes.

Invariants:
- A ``set()`` that happens while nobody waits is not lost; the next ``wait`` returns at
  once with the source of the first ``set()`` since the previous wait.
- One loop waits at a time. A wait that times out raises nothing: it is a future with a
  timer, not a cancel scope, since the claim loop's pause between the claims of a
  stream ends by timing out hundreds of times a second, and a cancellation costs more
  than the rest of the wait.
- ``pause(seconds, ignore)`` ends early only for a source other than ``ignore``, and
  one set after an ignored one is not lost: the wake remembers, beside the first
  source since the last wait, whether another came. Its time is the loop's timer's:
  it ends when that fires, which uvloop may do up to a millisecond early.
"""

from __future__ import annotations

import asyncio
import math
import time


def _release(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Wake:
    """An auto-resetting event that remembers why it was set."""

    __slots__ = ("_also", "_source", "_waiter")

    def __init__(self) -> None:
        # The first source set since the last wait, and another one set after it.
        self._source: str | None = None
        self._also: str | None = None
        self._waiter: asyncio.Future[None] | None = None

    def set(self, source: str) -> None:
        """Wake the waiter (or the next one) and say why."""
        if self._source is None:
            self._source = source
        elif source != self._source:
            self._also = source
        waiter = self._waiter
        if waiter is not None:
            _release(waiter)

    async def wait(self, timeout: float) -> str:
        """Wait until set or ``timeout`` seconds pass; return the source, or "poll"."""
        source, _also = await self._wait(timeout)
        return source or "poll"

    async def pause(self, seconds: float, *, ignore: str) -> None:
        """Wait ``seconds``, or until set with a source other than ``ignore``. Ends when
        its timer fires: a loop whose timers count whole milliseconds (uvloop's) may fire
        it up to a millisecond early, and waiting out that remainder with timers that
        round to 0 ms turned the loop a hundred times in some pauses of
        ``pgwake bench mixed``."""
        until = time.monotonic() + seconds
        left = seconds
        while True:
            source, also = await self._wait(left)
            if source is None or source != ignore or also is not None:
                return  # its time is up, or a source it does not ignore came
            left = until - time.monotonic()
            if left <= 0:
                return

    async def _wait(self, timeout: float) -> tuple[str | None, str | None]:
        """Wait until set or ``timeout`` seconds pass; the first source set since the
        last wait and another set after it (None, None when it timed out)."""
        if self._source is None:
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = loop.call_later(timeout, _release, waiter) if timeout < math.inf else None
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
        found = self._source, self._also
        self._source = self._also = None
        return found


# The largest job id (pgwake.jobs.id is a bigint).
MAX_JOB_ID = 2**63 - 1


class NotifiedJob:
    """The job the notifications since the claimer last looked name: the one ready job
    of a single-row insert (sql/migrations/0016), which a waiting worker claims by id.

    Invariant: ``take()`` gives an id only when exactly one notification came since the
    last ``take()`` or ``clear()`` and it named a job; any other notification (``''``,
    a second id, text that is not an id) makes it give None, and the claimer runs the
    full claim. Payloads are anyone's text: a hint, checked by the claim by id.
    """

    __slots__ = ("_count", "_id")

    def __init__(self) -> None:
        self._id: int | None = None
        self._count = 0

    @staticmethod
    def parse(payload: object) -> int | None:
        """The job id ``payload`` names (a canonical decimal bigint above 0), else None."""
        if not isinstance(payload, str) or not 0 < len(payload) <= 19:
            return None
        if not (payload.isascii() and payload.isdigit()) or payload[0] == "0":
            return None
        job_id = int(payload)
        return job_id if job_id <= MAX_JOB_ID else None

    def note(self, payload: object) -> None:
        """A notification for the claimers came with ``payload``."""
        self._count += 1
        self._id = self.parse(payload) if self._count == 1 else None

    def take(self) -> int | None:
        """The one job named since the last look (None: look at the whole queue); forgets
        the notifications."""
        job_id = self._id if self._count == 1 else None
        self.clear()
        return job_id

    def clear(self) -> None:
        """Forget the notifications so far (a full claim is about to look at the queue)."""
        self._id, self._count = None, 0
