"""The systemd notify protocol: datagrams to ``$NOTIFY_SOCKET``.

Invariants:
- Without ``NOTIFY_SOCKET`` every call is a no-op, so the worker runs the same outside
  systemd.
- ``WATCHDOG=1`` is sent from the event loop itself, so a blocked loop stops the pings
  and systemd restarts the service.
"""

from __future__ import annotations

import os
import socket

import anyio


class Notifier:
    """Sends ``READY=1``, ``STATUS=...``, ``STOPPING=1`` and ``WATCHDOG=1``."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        env = dict(os.environ) if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace socket
        self._address = address or None
        watchdog_usec = env.get("WATCHDOG_USEC", "")
        watchdog_pid = env.get("WATCHDOG_PID", "")
        for_us = not watchdog_pid or watchdog_pid == str(os.getpid())
        self.watchdog_interval: float | None = (
            int(watchdog_usec) / 1_000_000 / 2 if watchdog_usec.isdigit() and for_us else None
        )

    @property
    def enabled(self) -> bool:
        """True when running under systemd with a notify socket."""
        return self._address is not None

    def send(self, *fields: str) -> None:
        """Send one datagram with ``fields`` joined by newlines."""
        if self._address is None:
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(self._address)
            sock.sendall("\n".join(fields).encode())

    def ready(self, status: str) -> None:
        """The service is up."""
        self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        """A one-line summary shown by ``systemctl status``."""
        self.send(f"STATUS={status}")

    def stopping(self, status: str) -> None:
        """The service is draining."""
        self.send("STOPPING=1", f"STATUS={status}")

    async def watchdog_loop(self) -> None:
        """Ping the watchdog at half its interval, forever (no-op without a watchdog)."""
        if self.watchdog_interval is None:
            return
        while True:
            self.send("WATCHDOG=1")
            await anyio.sleep(self.watchdog_interval)
