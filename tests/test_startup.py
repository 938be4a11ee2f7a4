"""Start-up costs only what it uses: ``pgwake version`` and ``pgwake --help`` import no
database driver, no settings model (pydantic) and no benchmark code; every other
command is imported when it runs (listener/cli/lazy.py)."""

from __future__ import annotations

import pytest
import typer

from listener.cli.app import Commands, app
from listener.cli.lazy import load
from listener.migrate import latest_version
from listener.paths import known_schema_version
from tests.support.imports import probe

# Never imported by `pgwake version` or `pgwake --help`.
HEAVY = ("asyncpg", "pydantic", "pydantic_settings", "structlog", "anyio", "psycopg")
HEAVY_OURS = ("listener.config", "listener.db", "listener.cli.bench", "listener.cli.options")


@pytest.mark.parametrize("argv", [("version",), ("--help",), ("version", "--help")])
def test_version_and_help_import_no_driver_models_or_benchmarks(argv: tuple[str, ...]) -> None:
    probed = probe(*argv)
    modules = probed.modules
    assert "pgwake" in probed.stdout
    heavy = sorted(
        name for name in modules if name.split(".")[0] in HEAVY or name.startswith(HEAVY_OURS)
    )
    assert heavy == [], heavy


def test_a_command_imports_its_module_when_it_runs() -> None:
    """The probe can fail: a command that reaches the database does import the driver."""
    modules = probe("jobs", "--help").modules
    assert "listener.cli.jobs" in modules
    assert "asyncpg" in modules
    assert not any(name.startswith("listener.cli.bench") for name in modules)


def _first_paragraph(text: str | None) -> str:
    return " ".join((text or "").split("\n\n")[0].split())


def test_each_lazy_commands_listed_help_is_its_own() -> None:
    """The group's help lists each lazy command by the short help given beside it in
    listener/cli/app.py; it must be the command's own first paragraph."""
    for name, spec in Commands.LAZY.items():
        command = load(name, spec)
        assert command.name == name
        own = command.short_help or _first_paragraph(command.help)
        assert " ".join(spec.short_help.split()) == " ".join(own.split()), name


def test_the_group_lists_and_resolves_every_command() -> None:
    group = typer.main.get_command(app)
    names = list(group.commands)  # type: ignore[attr-defined]
    assert names == list(Commands.ORDER)
    assert set(Commands.LAZY) | {"version"} == set(names)


def test_the_light_schema_version_is_the_migrations_count() -> None:
    assert known_schema_version() == latest_version()
