"""A plain HTTP GET for the worker's metrics and health endpoints."""

from __future__ import annotations

import urllib.error
import urllib.request


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, str]:
    """Status and body of GET ``path`` on 127.0.0.1:``port``; (0, reason) when nothing
    answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, exc.read().decode()
        finally:
            exc.close()  # it holds the response's socket
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        return 0, str(exc)
