"""The settings are defined once, in listener/config.py: the flags of ``pgwake run``
and the options every command shares are held to the model, and the environment is
read as documented (the docs' settings table is held to the model in test_docs.py)."""

from __future__ import annotations

from typing import Any

import pytest
import typer

from listener.cli.app import app
from listener.cli.options import DATABASE_SETTINGS
from listener.config import Settings, flag_names, load_settings, shown_default

# typer builds click commands (a click it may vendor): read as such, by duck typing.


def run_command() -> Any:
    return typer.main.get_command(app).commands["run"]  # type: ignore[attr-defined]


def test_run_has_a_flag_for_every_setting() -> None:
    """The flags are derived from the model: each setting has its flag(s), its
    description as help, its default shown, and None as the value when not given (so
    the environment and the file still apply)."""
    params = {param.name: param for param in run_command().params}
    for name, field in Settings.model_fields.items():
        param = params[name]
        assert param.param_type_name == "option", name
        assert set(flag_names(name)) <= {*param.opts, *param.secondary_opts}, name
        if name in DATABASE_SETTINGS:
            continue
        assert param.help is not None, name
        assert field.description is not None, name
        assert param.help.startswith(field.description), name
        assert param.help.endswith(f"Default: {shown_default(name)}."), name
        assert param.default is None, name
    assert set(params) == {*Settings.model_fields, "config"}


def test_every_command_that_reaches_the_database_takes_the_same_options() -> None:
    """--dsn, --config and --data-dir are one definition (listener/cli/options.py),
    taken by every command but the two that need no database."""
    without: list[str] = []
    shapes: dict[str, set[str]] = {"dsn": set(), "config": set(), "data_dir": set()}

    def walk(command: Any, path: str) -> None:
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                walk(sub, f"{path} {name}")
            return
        options = {p.name: p for p in command.params if p.name in shapes}
        if not options:
            without.append(path)
        assert options == {} or set(options) == set(shapes), path
        for name, param in options.items():
            assert param.param_type_name == "option", (path, name)
            shapes[name].add(f"{param.opts} {param.help} {param.default}")

    walk(typer.main.get_command(app), "pgwake")
    assert sorted(without) == ["pgwake keys generate", "pgwake version"]
    assert all(len(shape) == 1 for shape in shapes.values()), shapes


def test_the_environment_is_read_as_documented(monkeypatch: pytest.MonkeyPatch) -> None:
    """``PGWAKE_`` + the upper-case name; lists separated by commas (not JSON); an empty
    variable is unset; ``Settings()`` alone reads no environment."""
    env = {
        "PGWAKE_CONCURRENCY": "",
        "pgwake_concurrency": "9",
        "Pgwake_Kinds": "email",
        "PGWAKE_HANDLERS": "a.b, ,c ",
        "PGWAKE_METRICS_TENANTS": '["t1","t2"]',
    }
    settings = load_settings({}, env=env)
    assert settings.concurrency == Settings.model_fields["concurrency"].default
    assert settings.kinds == []
    assert settings.handlers == ["a.b", "c"]
    assert settings.metrics_tenants == ['["t1"', '"t2"]']
    assert load_settings({}, env={"PGWAKE_CONCURRENCY": "9"}).concurrency == 9
    monkeypatch.setenv("PGWAKE_CONCURRENCY", "9")
    assert Settings().concurrency == Settings.model_fields["concurrency"].default
