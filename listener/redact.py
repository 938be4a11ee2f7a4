"""Keep secrets out of logs, errors and metrics.

Invariant: any text that may carry a connection string passes through :func:`redact`
before it is logged or stored; the password of a libpq URL and ``password=`` key/value
pairs are replaced by ``***``.
"""

from __future__ import annotations

import re
from typing import Any

_URL_PASSWORD = re.compile(r"(?P<scheme>postgres(?:ql)?://)(?P<user>[^:@/\s]*):(?P<pw>[^@\s]*)@")
_KV_PASSWORD = re.compile(r"(?P<key>\bpassword\s*=\s*)(?P<pw>'[^']*'|\S+)", re.IGNORECASE)


def redact(text: str) -> str:
    """Return ``text`` with passwords in libpq URLs and key=value strings masked."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    return _KV_PASSWORD.sub(lambda m: f"{m['key']}***", text)


def display_dsn(dsn: str) -> str:
    """A DSN safe to show a person: password masked."""
    return redact(dsn)


def redact_value(value: Any) -> Any:
    """Redact strings; leave other values alone (used by the log processor)."""
    if isinstance(value, str):
        return redact(value)
    return value
