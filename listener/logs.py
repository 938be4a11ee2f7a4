"""Logging: structlog, JSON lines in production, readable lines on a terminal.

Invariants:
- One pipeline for everything the process logs. structlog events and stdlib
  ``logging`` records (asyncpg, asyncio, a handler's own ``logging.getLogger``, Python
  warnings, an uncaught exception) are all rendered by one ``ProcessorFormatter`` on one
  handler of the root logger, to stderr: JSON lines, or console lines on a terminal.
- Every event is redacted (listener/redact.py) after its traceback is turned into text
  and before anything renders it, so a DSN password or a key in any field, message,
  exception text or traceback is masked. Stdlib records are redacted when they are
  created, so any other handler (pytest's capture, an embedding application's own
  handlers) gets them masked too.
- Context bound with ``structlog.contextvars`` appears on every line logged in that
  context, and so do the job_id, tenant, kind and attempt of the job whose handler runs
  there (``listener.jobs.CURRENT_JOB``), for lines logged through ``ctx.log``,
  ``structlog.get_logger()`` and ``logging`` alike.
- Tracebacks are plain text, never with local variables (pretty tracebacks that show
  locals would print a connection string held in one).
- When stderr is the journal (systemd's ``JOURNAL_STREAM`` names the device and inode
  of the stream written to), every line starts with its syslog priority in the form
  sd-daemon(3) defines: ``<2>`` critical, ``<3>`` error, ``<4>`` warning, ``<6>`` info,
  ``<7>`` debug; journald files the line at that priority and strips the prefix (the
  JSON or console text stays as it is). Every line of a multi-line event carries it.
  Anywhere else, no prefix.
- The lines logged for every job (listener/joblog.py) are rendered by :class:`HotLogger`
  in JSON mode: the same line the pipeline would write (the same keys in the same
  order, contextvars and job fields, every field redacted, the journal prefix), built
  directly rather than through a stdlib record and the formatter, which cost about six
  times as much; at thousands of jobs a second that difference was most of the
  worker's own work. In console mode they go through the pipeline like any line.
- A command's error that ends it (:func:`report_error`) is one line on stderr: a JSON
  line at level error, with ``exit_code``, when the command's log format is ``json``;
  otherwise ``pgwake: error: <message>``, with control characters escaped. Both are
  filed at priority error by the journal.
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
import traceback
from collections.abc import MutableMapping
from types import TracebackType
from typing import Any, Literal, TextIO

from listener.jobs import add_job_fields
from listener.redact import redact, redact_field


def _import_structlog_without_rich() -> None:
    """Import structlog with ``rich`` hidden from it. structlog.dev imports rich (30 ms
    of a worker's start) for pretty tracebacks, which pgwake never uses: tracebacks
    are plain text before any renderer sees them (``format_exc_info``). Nothing else
    changes: rich stays importable for whoever imports it later (typer's help)."""
    if "structlog" in sys.modules or "rich" in sys.modules:
        return
    sys.modules["rich"] = None  # type: ignore[assignment] # `import rich` raises ImportError
    try:
        import structlog  # noqa: F401, PLC0415
    finally:
        del sys.modules["rich"]


_import_structlog_without_rich()

import structlog  # noqa: E402 - after the import above
from structlog.stdlib import ProcessorFormatter  # noqa: E402

LogFormat = Literal["auto", "json", "console"]
LogLevel = Literal["debug", "info", "warning", "error"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
# Keys ProcessorFormatter adds to an event for its own use; not data to redact.
_META = frozenset({"_record", "_from_structlog"})
# Stdlib loggers of pgwake's own modules live under this name.
ROOT_LOGGER = "pgwake"


# Rendered first, in this order, when present (JSON keeps the order).
_FIRST = ("timestamp", "level", "logger", "event")


def _redact(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> dict[str, Any]:
    if isinstance(event.get("event"), str):
        event["event"] = event["event"].rstrip()  # Python warnings end with a newline
    keys = [k for k in _FIRST if k in event] + [k for k in event if k not in _FIRST]
    return {key: event[key] if key in _META else redact_field(key, event[key]) for key in keys}


def _logger_name(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> Any:
    """``logger``: the name bound by :func:`get_logger`, else the stdlib logger's name
    (``asyncpg.pool``, a handler's module...)."""
    record = event.get("_record")
    if "logger" not in event and record is not None:
        event["logger"] = record.name
    return event


class _RedactingRecordFactory:
    """Wraps the stdlib record factory: a record's message and traceback text are
    formatted and redacted once, at creation, for every handler."""

    def __init__(self, base: Any) -> None:
        self.base = base

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record: logging.LogRecord = self.base(*args, **kwargs)
        if isinstance(record.msg, str):  # structlog's records carry an event, redacted
            try:
                message = record.getMessage()
            except (TypeError, ValueError):
                return record  # a bad format string: logging reports it when emitting
            record.msg, record.args = redact(message), None
        if record.exc_info and record.exc_info[1] is not None:
            text = "".join(traceback.format_exception(record.exc_info[1])).rstrip("\n")
            record.exc_text = redact(text)  # as logging.Formatter would write it, masked
        return record


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record is emitted."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


# syslog priorities (sd-daemon(3)) of the stdlib levels, highest level first.
_PRIORITIES = (
    (logging.CRITICAL, 2),
    (logging.ERROR, 3),
    (logging.WARNING, 4),
    (logging.INFO, 6),
)
DEBUG_PRIORITY = 7


def syslog_priority(levelno: int) -> int:
    """The syslog priority of a stdlib level: 2 critical, 3 error, 4 warning, 6 info,
    7 debug (and below)."""
    return next((p for level, p in _PRIORITIES if levelno >= level), DEBUG_PRIORITY)


def writes_to_journal(stream: TextIO) -> bool:
    """True when ``stream`` is the journal's: ``JOURNAL_STREAM`` (set by systemd for a
    service whose stderr or stdout goes to the journal, and inherited by its children
    whatever their streams are) names the device and inode of its file descriptor."""
    value = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    try:
        expected = (int(device), int(inode))
        stat = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError, io.UnsupportedOperation):
        return False
    return (stat.st_dev, stat.st_ino) == expected


def with_priority(text: str, levelno: int) -> str:
    """``text`` with the journal's priority prefix on each of its lines."""
    prefix = f"<{syslog_priority(levelno)}>"
    return prefix + text.replace("\n", "\n" + prefix)


class _Formatter(ProcessorFormatter):
    """structlog's formatter, adding the journal's priority prefix when ``journal``."""

    def __init__(self, *args: Any, journal: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return with_priority(text, record.levelno) if self.journal else text


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, exc, tb)
        return
    structlog.get_logger(ROOT_LOGGER).critical("uncaught exception", exc_info=(kind, exc, tb))


def configure(
    fmt: LogFormat = "auto", level: LogLevel = "info", *, stream: TextIO | None = None
) -> None:
    """Send every log of the process to ``stream`` (default: stderr, looked up at each
    write) in format ``fmt``; ``auto`` is console on a terminal, JSON lines otherwise.
    Calling it again replaces the previous configuration."""
    target = stream if stream is not None else sys.stderr
    is_tty = target.isatty()
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=is_tty)
        if fmt == "console" or (fmt == "auto" and is_tty)
        else structlog.processors.JSONRenderer()
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        add_job_fields,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            _redact,
            ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.name = ROOT_LOGGER
    handler.setFormatter(
        _Formatter(
            journal=writes_to_journal(target),
            foreign_pre_chain=[
                *shared,
                _logger_name,
                structlog.processors.format_exc_info,
                _redact,
            ],
            processors=[_logger_name, ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.name == ROOT_LOGGER]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_LEVELS[level])
    factory = logging.getLogRecordFactory()
    if not isinstance(factory, _RedactingRecordFactory):
        logging.setLogRecordFactory(_RedactingRecordFactory(factory))
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    global _configured_format, _hot  # noqa: PLW0603 - one logging configuration per process
    _configured_format = fmt
    json_lines = isinstance(renderer, structlog.processors.JSONRenderer)
    journal = writes_to_journal(target)
    _hot = _HotJson(stream, _LEVELS[level], journal=journal) if json_lines else None


# The log format of the last configure(), None before the first.
_configured_format: LogFormat | None = None


class _HotJson:
    """Renders and writes an event as the pipeline does in JSON mode (see the module
    docstring), for :class:`HotLogger`."""

    __slots__ = ("_journal", "_stamp", "_stream", "levelno")

    def __init__(self, stream: TextIO | None, levelno: int, *, journal: bool) -> None:
        self._stream = stream  # None: sys.stderr, looked up at each write
        self.levelno = levelno
        self._journal = journal
        self._stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)

    def write(self, levelno: int, level: str, logger: str, event: str, fields: Any) -> None:
        data: dict[str, Any] = dict(fields)
        for key, value in structlog.contextvars.get_contextvars().items():
            data.setdefault(key, value)
        add_job_fields(None, "", data)
        # The first four are pgwake's own constants and the clock: nothing to mask.
        line = self._stamp(None, "", {})
        line.update(level=level, logger=logger, event=event)
        for key, value in data.items():
            line[key] = redact_field(key, value)
        text = json.dumps(line, default=repr)
        if self._journal:
            text = with_priority(text, levelno)
        stream = self._stream or sys.stderr
        stream.write(text + "\n")
        stream.flush()


# How HotLogger renders in the current configuration: None outside JSON mode.
_hot: _HotJson | None = None


class HotLogger:
    """A logger for the lines written for every job: in JSON mode it renders them
    directly (see the module docstring), otherwise through the pipeline. Only the
    levels the job lines use."""

    __slots__ = ("_fallback", "_name")

    def __init__(self, name: str) -> None:
        self._name = name
        self._fallback = get_logger(name)

    @property
    def info_enabled(self) -> bool:
        """False when an info line would be dropped (JSON lines at a higher level), so
        a caller can skip building it; True otherwise (the pipeline decides)."""
        hot = _hot
        return hot is None or hot.levelno <= logging.INFO

    def info(self, event: str, **fields: Any) -> None:
        """Log ``event`` at info."""
        hot = _hot
        if hot is None:
            self._fallback.info(event, **fields)
        elif hot.levelno <= logging.INFO:
            hot.write(logging.INFO, "info", self._name, event, fields)


def report_error(message: str, exit_code: int, line: str, *, fmt: LogFormat | None = None) -> None:
    """Write the error that ends a command as one line on stderr: ``message`` (redacted
    here) as a JSON line (level error, logger ``cli``, ``exit_code``) when the log
    format is ``json`` (``fmt``, else the one configured); else ``line``, the command
    line's own form of it."""
    fmt = fmt or _configured_format
    if fmt == "json":
        if _configured_format != "json":
            configure("json")  # an error before the configuration (a bad setting)
        get_logger("cli").error(redact(message), exit_code=exit_code)
        return
    if writes_to_journal(sys.stderr):
        line = with_priority(line, logging.ERROR)
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def get_logger(name: str) -> Any:
    """A logger with ``logger=name`` bound (stdlib logger ``pgwake.<name>``)."""
    return structlog.get_logger(f"{ROOT_LOGGER}.{name}").bind(logger=name)
