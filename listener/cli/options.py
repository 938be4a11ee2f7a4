"""Options of the command line defined once: the database options every command that
reaches the database takes, and ``pgwake run``'s flags, derived from the settings model.

Invariants:
- ``--dsn``, ``--config`` and ``--data-dir`` are defined here only. A command decorated
  with :func:`database_options` has them, gathered into its keyword argument
  ``db: Database``; :class:`Database` loads the settings once (exit 3 on a bad one, a
  DSN given as a flag scrubbed from the process list first) and opens the database
  (a DSN, or the embedded server).
- :func:`settings_options` gives a command one flag per setting of
  :class:`~listener.config.Settings` but the two database options: ``--`` + the name
  with dashes (and any other spelling the field names), the field's type (lists are
  repeatable, booleans a ``--x/--no-x`` switch), its description as help and its
  default as shown. A flag not given is None and does not count, so the environment
  and the file still apply; its value is validated with the others by the model (exit
  3 naming the setting), never by the option parser. Adding a setting adds its flag.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import tomllib
import typing
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import asyncpg
import typer

from listener.cli.support import database, fail, with_connection
from listener.config import ENV_PREFIX, Settings, flag_names, load_settings, shown_default
from listener.errors import PgwakeError
from listener.logs import LogFormat
from listener.proctitle import scrub_argv

T = TypeVar("T")

DsnOpt = Annotated[
    str | None,
    typer.Option(
        "--dsn",
        help="libpq URL of the database (prefer PGWAKE_DSN: argv is visible to other users). "
        "Without one, an embedded PostgreSQL is used.",
        show_default=False,
    ),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", help="TOML config file (also PGWAKE_CONFIG).", show_default=False),
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="Embedded PostgreSQL data directory (no DSN only).", show_default=False
    ),
]

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
        try:
            with path.open("rb") as fh:
                value = tomllib.load(fh).get("pgwake", {}).get("log_format")
        except (OSError, ValueError, AttributeError):
            return None
    return value if value in typing.get_args(LogFormat) else None  # type: ignore[return-value]


_DATABASE_PARAMETERS = [
    inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)
    for name, annotation in (("dsn", DsnOpt), ("config", ConfigOpt), ("data_dir", DataDirOpt))
]


def _extend(
    command: Callable[..., None], drop: str, added: list[inspect.Parameter]
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """A decorator that gives a wrapper of ``command`` the signature typer reads:
    ``command``'s parameters without ``drop``, then ``added``."""
    hints = typing.get_type_hints(command, include_extras=True)
    own = [
        p.replace(annotation=hints[p.name])
        for p in inspect.signature(command).parameters.values()
        if p.name != drop
    ]
    signature = inspect.Signature([*own, *added])

    def dress(wrapper: Callable[..., None]) -> Callable[..., None]:
        functools.update_wrapper(wrapper, command)
        wrapper.__signature__ = signature  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
        return wrapper

    return dress


def database_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give ``command`` the options ``--dsn``, ``--config`` and ``--data-dir``, passed
    to it as one keyword argument ``db: Database``."""
    dress = _extend(command, "db", _DATABASE_PARAMETERS)

    @dress
    def with_database(
        *args: Any, dsn: str | None, config: Path | None, data_dir: Path | None, **kwargs: Any
    ) -> None:
        command(*args, db=Database(dsn, config, data_dir), **kwargs)

    return with_database


def _setting_parameter(name: str) -> inspect.Parameter:
    """The flag of setting ``name`` as a keyword parameter typer reads."""
    field = Settings.model_fields[name]
    names = flag_names(name)
    annotation = field.annotation
    kind: Any
    if annotation is bool:
        kind, names = bool, [f"{names[0]}/--no-{names[0][2:]}", *names[1:]]
    elif typing.get_origin(annotation) is list:
        kind = list[str]
    elif typing.get_origin(annotation) is Literal or annotation is str:
        kind = str  # the model checks the choice, naming the setting (exit 3)
    elif annotation in (int, float):
        kind = annotation
    else:
        raise TypeError(f"setting {name}: no flag for a {annotation}")
    help_text = f"{field.description} Default: {shown_default(name)}."
    option = typer.Option(*names, help=help_text, show_default=False)
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[kind | None, option],
    )


SETTING_FLAGS = [name for name in Settings.model_fields if name not in DATABASE_SETTINGS]


def settings_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give ``command`` a flag per setting (see the module docstring), passed to it as
    one keyword argument ``flags``: the settings given on the command line."""
    dress = _extend(command, "flags", [_setting_parameter(n) for n in SETTING_FLAGS])

    @dress
    def with_settings(*args: Any, **kwargs: Any) -> None:
        values = {name: kwargs.pop(name) for name in SETTING_FLAGS}
        given = {name: v for name, v in values.items() if v is not None and v != []}
        command(*args, flags=given, **kwargs)

    return with_settings
