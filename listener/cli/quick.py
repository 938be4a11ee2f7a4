"""``pgwake run`` without typer: the worker's start need not pay for the command line.

typer (with the click it vendors, and a pydantic adapter built per option for ``run``'s
thirty-odd flags) cost ``pgwake run`` 40 to 50 ms of its start, for parsing a few
options. A plain ``pgwake run`` line is parsed here instead, from the same definition
of each flag (listener/config.py: ``flag_names``, ``flag_kind``), and given to the same
:func:`listener.cli.serve.run_worker` that typer's ``run`` calls.

Invariants:
- Only what typer would parse to the same values is parsed here: ``run`` followed by
  its options, each ``--name value`` or ``--name=value`` (a switch: ``--x`` or
  ``--no-x``), given once (a list option: any number of times), with a value that does
  not start with ``-``, and a number written plainly (``32``, ``0.5``). Anything else
  (``--help``, an unknown option, a missing or odd value, an argument) goes to typer,
  which parses it or reports it as it always has (tests/test_quick_start.py holds the
  two parsers to the same result).
- The garbage collector is off until the worker is ready or waits for the database
  (:func:`run`; listener/gctune.py turns it back on).
- What typer is given and what this gives :func:`run_worker` are the same: the
  database options, and the settings given as flags (a flag not given is absent, so
  the environment and the file still apply).
"""

from __future__ import annotations

import gc
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# What typer's int and float options read the same way as this parser.
_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?[0-9]+(\.[0-9]+)?")
_DATABASE_OPTIONS = {"--dsn": "dsn", "--config": "config", "--data-dir": "data_dir"}


def _options() -> dict[str, tuple[str, type, Any]]:
    """Each option of ``run``: (setting or database option, kind, value of the flag when
    it takes none: a switch's)."""
    from listener.cli.database import DATABASE_SETTINGS  # noqa: PLC0415
    from listener.config import Settings, flag_kind, flag_names  # noqa: PLC0415

    options: dict[str, tuple[str, type, Any]] = {
        "--dsn": ("dsn", str, None),
        "--config": ("config", Path, None),
        "--data-dir": ("data_dir", Path, None),
    }
    for name in Settings.model_fields:
        if name in DATABASE_SETTINGS:
            continue
        kind = flag_kind(name)
        names = flag_names(name)
        for flag in names:
            options[flag] = (name, kind, True if kind is bool else None)
        if kind is bool:
            options["--no-" + names[0][2:]] = (name, bool, False)
    return options


def _value(kind: type, text: str) -> Any:
    """``text`` read as typer reads a value of ``kind``; None when typer might read it
    otherwise (or refuse it)."""
    if text.startswith("-"):
        return None
    if kind is int:
        return int(text) if _INT.fullmatch(text) else None
    if kind is float:
        return float(text) if _FLOAT.fullmatch(text) else None
    if kind is Path:
        return Path(text)
    return text


def parse_run(argv: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The database options and the settings given of ``argv`` (what follows ``run``),
    as typer's ``run`` command gets them; None when typer must parse it (see the module
    docstring)."""
    options = _options()
    database: dict[str, Any] = dict.fromkeys(_DATABASE_OPTIONS.values())
    flags: dict[str, Any] = {}
    args = list(argv)
    while args:
        arg = args.pop(0)
        flag, eq, text = arg.partition("=")
        found = options.get(flag)
        if found is None:
            return None  # --help, an unknown option, an argument, `--`
        name, kind, switch = found
        if switch is not None:
            if eq:
                return None  # a switch takes no value
            value: Any = switch
        else:
            if not eq:
                if not args:
                    return None  # typer says the value is missing
                text = args.pop(0)
            value = _value(str if kind is list else kind, text)
            if value is None:
                return None
        if kind is list:
            flags.setdefault(name, []).append(value)
        elif name in flags or database.get(name) is not None:
            return None  # given twice
        elif name in database:
            database[name] = value
        else:
            flags[name] = value
    return database, flags


def run(argv: Sequence[str]) -> bool:
    """Run the worker as ``pgwake run`` with ``argv`` (what follows ``run``) and return
    True once it ended; False, having done nothing, when typer must parse ``argv``.

    The garbage collector is off from here until the worker is ready (a sixth of the
    start, for the few hundred objects of cycles imports leave, which the worker keeps
    either way: listener/gctune.py), or until it has to wait for the database."""
    collecting = gc.isenabled()
    gc.disable()
    parsed = parse_run(argv)
    if parsed is None:
        if collecting:
            gc.enable()
        return False
    from listener.cli.database import Database  # noqa: PLC0415
    from listener.cli.serve import run_worker  # noqa: PLC0415

    database, flags = parsed
    run_worker(Database(**database), flags)
    return True
