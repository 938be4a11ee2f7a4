"""The systemd notify protocol, implemented here: one datagram per message to the
``AF_UNIX`` socket named by ``$NOTIFY_SOCKET`` (``sd_notify(3)``), newline-separated
``KEY=value`` fields.

Invariants:
- Without ``NOTIFY_SOCKET`` every call is a no-op, so the worker runs the same outside
  systemd.
- :meth:`SystemdNotifier.from_environment` removes ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and
  ``WATCHDOG_PID`` from the process environment (as ``sd_notify``'s
  ``unset_environment`` does), so processes a handler starts do not talk to systemd in
  the worker's name.
- A send never blocks the event loop: it is a non-blocking ``sendto``. A datagram the
  socket cannot take is dropped (the next ping or status line follows soon), and a
  failing socket is logged once per change of state, not once per message.
- ``WATCHDOG=1`` is sent from the event loop itself, every half ``WATCHDOG_USEC``, so a
  blocked loop stops the pings and systemd restarts the service. It is sent only when
  ``WATCHDOG_PID`` is unset or names this process.
- ``STATUS=`` is sent only when the line changed since the last one sent.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping

import anyio

from listener.logs import get_logger

ENV_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
# How often the status line is refreshed while the worker runs (when it changed).
STATUS_INTERVAL = 5.0


def _socket_address(value: str) -> str | None:
    """The address to send to: a path, or ``@name`` for the abstract namespace."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    return None


class SystemdNotifier:
    """Sends ``READY=1``, ``STATUS=``, ``STOPPING=1`` and ``WATCHDOG=1`` to systemd."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._log = get_logger("systemd")
        raw = env.get("NOTIFY_SOCKET", "")
        self._address = _socket_address(raw)
        if raw and self._address is None:
            self._log.warning(
                "NOTIFY_SOCKET is neither a path nor an @abstract name; not notifying systemd",
                notify_socket=raw,
            )
        watchdog_usec = env.get("WATCHDOG_USEC", "")
        watchdog_pid = env.get("WATCHDOG_PID", "")
        for_us = not watchdog_pid or watchdog_pid == str(os.getpid())
        usec = int(watchdog_usec) if watchdog_usec.isdigit() else 0
        self.watchdog_interval: float | None = (
            usec / 1_000_000 / 2 if usec > 0 and for_us and self.enabled else None
        )
        self._sock: socket.socket | None = None
        self._failing = False
        self._last_status: str | None = None

    @classmethod
    def from_environment(cls) -> SystemdNotifier:
        """A notifier for this process, taking the variables out of ``os.environ``."""
        env = {name: os.environ.pop(name) for name in ENV_VARS if name in os.environ}
        return cls(env)

    @property
    def enabled(self) -> bool:
        """True when running under systemd with a notify socket."""
        return self._address is not None

    def send(self, *fields: str) -> bool:
        """Send one datagram of ``fields`` joined by newlines; True when it was sent."""
        if self._address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto("\n".join(fields).encode(), self._address)
        except OSError as exc:
            if not self._failing:
                self._failing = True
                self._log.warning(
                    "cannot notify systemd; retrying with the next message",
                    error=f"{type(exc).__name__}: {exc}",
                )
            return False
        if self._failing:
            self._failing = False
            self._log.info("notifying systemd works again")
        return True

    def ready(self, status: str) -> None:
        """The service is up: listening and able to claim."""
        self._last_status = status
        self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        """A one-line summary shown by ``systemctl status``; sent only when it changed."""
        if status != self._last_status and self.send(f"STATUS={status}"):
            self._last_status = status

    def starting(self, status: str, *, within: float) -> None:
        """The start goes on (waiting for the database, say): show ``status`` and give
        the start ``within`` more seconds from now (``EXTEND_TIMEOUT_USEC``), so systemd's
        start timeout kills only a start that stopped making attempts."""
        self._last_status = status
        self.send(f"STATUS={status}", f"EXTEND_TIMEOUT_USEC={int(within * 1e6)}")

    def stopping(self, status: str, *, within: float) -> None:
        """The service is draining and will be gone within ``within`` seconds: systemd's
        stop timeout is extended to at least that (``EXTEND_TIMEOUT_USEC`` never
        shortens it)."""
        self._last_status = status
        self.send("STOPPING=1", f"STATUS={status}", f"EXTEND_TIMEOUT_USEC={int(within * 1e6)}")

    async def watchdog_loop(self) -> None:
        """Ping the watchdog at half its interval, forever (returns without a watchdog)."""
        if self.watchdog_interval is None:
            return
        while True:
            self.send("WATCHDOG=1")
            await anyio.sleep(self.watchdog_interval)

    async def status_loop(self, line: Callable[[], str], interval: float = STATUS_INTERVAL) -> None:
        """Send ``line()`` as the status every ``interval`` seconds when it changed."""
        if not self.enabled:
            return
        while True:
            await anyio.sleep(interval)
            self.status(line())

    def close(self) -> None:
        """Close the socket (a later send opens a new one)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
