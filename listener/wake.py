"""A wake-up signal between loops: set by NOTIFY, promotions, freed slots; awaited with
a timeout by the loop it wakes.

Invariant: a ``set()`` that happens while nobody waits is not lost; the next ``wait``
returns at once with the source of the first ``set()`` since the previous wait.
"""

from __future__ import annotations

import anyio


class Wake:
    """An auto-resetting event that remembers why it was set."""

    def __init__(self) -> None:
        self._event = anyio.Event()
        self._source: str | None = None

    def set(self, source: str) -> None:
        """Wake the waiter (or the next one) and say why."""
        if self._source is None:
            self._source = source
        self._event.set()

    async def wait(self, timeout: float) -> str:
        """Wait until set or ``timeout`` seconds pass; return the source, or "poll"."""
        if not self._event.is_set():
            with anyio.move_on_after(timeout):
                await self._event.wait()
        if not self._event.is_set():
            return "poll"
        source = self._source or "poll"
        self._event = anyio.Event()
        self._source = None
        return source
