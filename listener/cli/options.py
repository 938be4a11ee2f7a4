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

import functools
import inspect
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from listener.cli.database import DATABASE_SETTINGS, Database, raw_log_format
from listener.config import Settings, flag_kind, flag_names, shown_default

__all__ = ["DATABASE_SETTINGS", "Database", "JsonOpt", "raw_log_format"]

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

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


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
    kind: Any = flag_kind(name)
    if kind is bool:
        names = [f"{names[0]}/--no-{names[0][2:]}", *names[1:]]
    elif kind is list:
        kind = list[str]
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
