"""The worker's HTTP endpoint: ``/metrics`` (Prometheus), ``/healthz``, ``/readyz``.

Invariants:
- ``/healthz`` answers 200 while the process's event loop runs, whatever the state
  of the database.
- ``/readyz`` answers 200 only while the worker listens for NOTIFY and can claim;
  503 with the reason on one line (``not ready: LISTEN connection down``) before that,
  while the LISTEN connection is down or claims cannot reach the database, and while
  stopping. The endpoint is up before the worker first connects to the database.
- A request is read up to its header end (at most 8 KiB) and answered with
  ``Connection: close``; nothing else is served.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio
from anyio.abc import SocketAttribute, SocketStream, TaskStatus

from listener.errors import ConfigError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

MAX_REQUEST = 8192


def parse_addr(addr: str) -> tuple[str, int]:
    """``host:port`` → (host, port); ValueError naming the setting otherwise."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"metrics_addr must be host:port, like 127.0.0.1:9464 (got {addr!r})")
    return host.strip("[]"), int(port)


class HttpEndpoint:
    """Serves the three paths for one worker."""

    def __init__(
        self, addr: str, registry: CollectorRegistry, not_ready: Callable[[], str | None]
    ) -> None:
        """``not_ready`` returns None when ready, else the reason."""
        self.host, self._port = parse_addr(addr)
        self._registry = registry
        self._not_ready = not_ready
        self.port: int | None = None  # the bound port (useful with port 0)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until cancelled."""
        try:
            listener = await anyio.create_tcp_listener(
                local_host=self.host, local_port=self._port, reuse_port=False
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on {self.host}:{self._port}: {exc.strerror or exc}"
            ) from None
        async with listener:
            self.port = listener.extra(SocketAttribute.local_port)  # noqa: S610 - not Django
            task_status.started()
            await listener.serve(self._handle)

    async def _handle(self, stream: SocketStream) -> None:
        async with stream:
            request = b""
            with anyio.move_on_after(5):
                while b"\r\n\r\n" not in request and len(request) < MAX_REQUEST:
                    try:
                        chunk = await stream.receive(4096)
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        return
                    request += chunk
            line = request.split(b"\r\n", 1)[0].decode("latin-1")
            parts = line.split(" ")
            path = parts[1].split("?", 1)[0] if len(parts) >= 2 else ""
            status, ctype, body = self._route(parts[0] if parts else "", path)
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            try:
                await stream.send(head.encode() + body)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                return

    def _route(self, method: str, path: str) -> tuple[str, str, bytes]:
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain", b"method not allowed\n"
        if path == "/metrics":
            # Imported at the first scrape: the settings check addresses with this module.
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest  # noqa: PLC0415

            return "200 OK", CONTENT_TYPE_LATEST, generate_latest(self._registry)
        if path == "/healthz":
            return "200 OK", "text/plain", b"ok\n"
        if path == "/readyz":
            reason = self._not_ready()
            if reason is None:
                return "200 OK", "text/plain", b"ready\n"
            return "503 Service Unavailable", "text/plain", f"not ready: {reason}\n".encode()
        return "404 Not Found", "text/plain", b"not found\n"
