"""``pgwake run`` starts without typer (listener/cli/quick.py): what the quick parser
accepts, it parses as typer's ``run`` command does; what it refuses, typer parses."""

from __future__ import annotations

from typing import Any

import pytest
import typer

from listener.cli.app import app
from listener.cli.options import SETTING_FLAGS
from listener.cli.quick import parse_run
from tests.support.imports import probe


def typer_parse(argv: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """What typer's ``run`` command passes on: the database options, and the flags
    given (as listener/cli/options.py: settings_options gathers them)."""
    command = typer.main.get_command(app).commands["run"]  # type: ignore[attr-defined]
    params = command.make_context("run", list(argv)).params
    database = {name: params[name] for name in ("dsn", "config", "data_dir")}
    flags = {
        name: list(value) if isinstance(value, list | tuple) else value
        for name in SETTING_FLAGS
        if (value := params[name]) is not None and value not in ([], ())
    }
    return database, flags


PARSED = [
    [],
    ["--dsn", "postgresql://u@h/db"],
    ["--dsn=postgresql://u@h/db", "--config", "pgwake.toml", "--data-dir=/var/lib/x"],
    ["--concurrency", "4", "--tenant-concurrency=2", "--poll-interval", "0.5"],
    ["--poll-interval", "3", "--drain-timeout=+10", "--concurrency", "+7"],
    ["--kinds", "a", "--kinds=b", "--handlers", "my.jobs", "--kinds", "c"],
    ["--metrics-tenants", "t1", "--metrics-tenant", "t2"],
    ["--log-jobs", "--no-job-events", "--retention-archive"],
    ["--no-log-jobs", "--log-format", "json", "--log-level=debug", "--claim-order", "fifo"],
    ["--metrics-addr", "127.0.0.1:0", "--concurrency", "0"],  # the model refuses 0, not typer
    ["--log-format", "xml"],  # likewise
]


@pytest.mark.parametrize("argv", PARSED)
def test_the_quick_parser_parses_as_typer_does(argv: list[str]) -> None:
    assert parse_run(argv) == typer_parse(argv)


REFUSED = [
    ["--help"],
    ["-h"],
    ["--no-such-flag"],
    ["argument"],
    ["--"],
    ["--concurrency"],  # no value
    ["--concurrency", "1e3"],
    ["--concurrency", "1_000"],
    ["--concurrency", " 4"],
    ["--concurrency", "-4"],
    ["--poll-interval", "inf"],
    ["--poll-interval", ".5"],
    ["--log-jobs=true"],  # a switch takes no value
    ["--concurrency", "4", "--concurrency", "5"],  # given twice
    ["--dsn", "postgresql://a", "--dsn=postgresql://b"],
    ["--log-jobs", "--no-log-jobs"],
    ["--dsn", "--concurrency"],
]


@pytest.mark.parametrize("argv", REFUSED)
def test_what_the_quick_parser_refuses_typer_parses(argv: list[str]) -> None:
    assert parse_run(argv) is None


def test_every_option_of_run_is_known_to_the_quick_parser() -> None:
    """A flag typer's ``run`` has and the quick parser does not know would send every
    ``pgwake run`` that uses it through typer: slower, still right."""
    command = typer.main.get_command(app).commands["run"]  # type: ignore[attr-defined]
    for param in command.params:
        for flag in [*param.opts, *param.secondary_opts]:
            if flag != "--help":
                assert parse_run([flag, "1"] if param.secondary_opts == [] else [flag]), flag


def test_run_that_fails_on_its_settings_imports_no_typer() -> None:
    """The quick start is the one taken: a bad setting stops ``pgwake run`` (exit 3,
    naming it) without typer ever imported."""
    probed = probe("run", "--dsn", "postgresql://postgres@127.0.0.1:1/x", "--concurrency", "0")
    assert "concurrency (from command line)" in probed.stderr
    assert "\nEXIT 3" in probed.stderr
    assert not [name for name in probed.modules if name.split(".")[0] in ("typer", "click")]
