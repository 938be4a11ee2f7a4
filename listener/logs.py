"""Logging: structlog, JSON lines in production, readable lines on a terminal.

Invariants:
- Every event passes :func:`_redact` last before rendering, so a DSN or password in any
  field is masked whatever the caller logged.
- Context bound with ``structlog.contextvars`` appears on every line logged in that
  context, and so do the job_id, tenant, kind and attempt of the job whose handler runs
  there (``listener.jobs.CURRENT_JOB``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Literal

import structlog

from listener.jobs import add_job_fields
from listener.redact import redact_value

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def _redact(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> dict[str, Any]:
    return {key: redact_value(value) for key, value in event.items()}


def configure(
    fmt: Literal["auto", "json", "console"] = "auto",
    level: Literal["debug", "info", "warning", "error"] = "info",
) -> None:
    """Configure structlog for the worker and the CLI (logs go to stderr)."""
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if use_console
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            add_job_fields,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> Any:
    """A logger with ``logger=name`` bound."""
    return structlog.get_logger().bind(logger=name)
