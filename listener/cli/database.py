"""The database a command works on and the settings it reads: ``--dsn``, ``--config``
and ``--data-dir`` (listener/cli/options.py defines them as options), the environment
and the config file. Nothing here imports typer, so ``pgwake run`` can start without it
(listener/cli/quick.py).
"""

from __future__ import annotations

import contextlib
import os
import typing
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from listener.cli.support import database, fail, with_connection
from listener.config import ENV_PREFIX, Settings, load_settings
from listener.errors import PgwakeError
from listener.logs import LogFormat
from listener.proctitle import scrub_argv

T = TypeVar("T")

# The settings that are database options rather than flags of their own.
DATABASE_SETTINGS = ("dsn", "data_dir")


class Database:
    """The database a command works on, from ``--dsn``, ``--config``, ``--data-dir``,
    the environment and the config file."""

    def __init__(self, dsn: str | None, config: Path | None, data_dir: Path | None) -> None:
        self._flags: dict[str, Any] = {"dsn": dsn, "data_dir": data_dir}
        self._config = config
        self._settings: Settings | None = None

    def settings(self, flags: Mapping[str, Any] | None = None) -> Settings:
        """The settings, with ``flags`` (None: not given) over the other sources; loaded
        on the first call. A bad setting exits 3 with one line naming it."""
        if self._settings is None:
            if self._flags["dsn"] is not None:
                scrub_argv()
            try:
                self._settings = load_settings(
                    {**self._flags, **(flags or {})}, config_file=self._config
                )
            except PgwakeError as exc:
                given = {**self._flags, **(flags or {})}
                fmt = raw_log_format(given.get("log_format"), self._config)
                raise fail(str(exc), exc.exit_code, log_format=fmt) from None
        return self._settings

    @contextlib.contextmanager
    def url(self, *, announce: bool = False) -> Iterator[str]:
        """The DSN to connect to (the embedded server's, started for the occasion, when
        none is configured); ``announce`` says so on stderr."""
        with database(self.settings(), announce=announce) as url:
            yield url

    def run(self, fn: Callable[[asyncpg.Connection], Awaitable[T]], *, what: str = "request") -> T:
        """Run ``fn`` on a connection to the database (see support.with_connection)."""
        with self.url() as url:
            return with_connection(url, fn, what=what)


def raw_log_format(flag: object, config: Path | None) -> LogFormat | None:
    """The log format the sources name when the settings as a whole are invalid, so a
    bad setting is reported in that format: the flag, else ``PGWAKE_LOG_FORMAT``, else
    the config file's ``log_format``, whichever is given first; None when that one is
    not a format (or none is given, or the file cannot be read)."""
    value: object = flag or os.environ.get(ENV_PREFIX + "LOG_FORMAT")
    path = config or (
        Path(os.environ[ENV_PREFIX + "CONFIG"]) if os.environ.get(ENV_PREFIX + "CONFIG") else None
    )
    if not value and path is not None:
        import tomllib  # noqa: PLC0415 - only with a config file

        try:
            with path.open("rb") as fh:
                value = tomllib.load(fh).get("pgwake", {}).get("log_format")
        except (OSError, ValueError, AttributeError):
            return None
    return value if value in typing.get_args(LogFormat) else None  # type: ignore[return-value]
