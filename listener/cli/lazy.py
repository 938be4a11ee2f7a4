"""A command group that imports a command's module only when that command runs.

``pgwake version`` and ``pgwake --help`` must not pay for what they do not use: the
database driver, the settings model (pydantic), the renderers and the benchmark code
are imported by the commands that need them, not by the command line itself.

Invariants:
- A lazy command is named by ``"module:attribute"``, the attribute a ``typer.Typer`` (a
  command group) or a function typer makes a command of. It is imported the first time
  the command is looked up (to run it, or to show its own help), and kept. The garbage
  collector is off while it is imported (a sixth of the import time of ``run``, for
  objects that live as long as the process) and back on after.
- The group's own help lists every command with the short help given beside it, and
  imports nothing for it; tests/test_startup.py holds each given short help to the
  command's real one, so the two cannot drift apart.
- ``commands`` lists all command names, loaded or not, so click's suggestions for a
  mistyped command and any walk over ``commands`` see them all (a walk loads them).
"""

from __future__ import annotations

import gc
import importlib
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import typer
from typer.core import TyperCommand, TyperGroup


@dataclass(frozen=True, slots=True)
class LazyCommand:
    """Where a command is defined, and the one line the group's help shows for it."""

    target: str
    short_help: str


def load(name: str, spec: LazyCommand) -> Any:
    """Import ``spec.target`` and make the click command ``name`` of it."""
    module_name, _, attribute = spec.target.partition(":")
    collecting = gc.isenabled()
    gc.disable()  # imports make objects that live as long as the process: nothing to find
    try:
        obj = getattr(importlib.import_module(module_name), attribute)
    finally:
        if collecting:
            gc.enable()
    if isinstance(obj, typer.Typer):
        command: Any = typer.main.get_group(obj)
    else:
        single = typer.Typer(add_completion=False)
        single.command(name)(obj)
        command = typer.main.get_command(single)
    command.name = name
    return command


class _AsGiven:
    """Typer's value coercion for the ``--help`` flag, which needs none: typer builds a
    pydantic adapter for every option it coerces, and importing pydantic for the help
    flag alone would cost ``pgwake version`` a third of its start-up."""

    def coerce(self, value: Any, **_: Any) -> Any:
        return value


def light_help_option(option: Any) -> Any:
    """``option`` (a command's help option) with no coercion; left as it is when typer
    no longer lazily builds its coercion in ``_runtime_param`` (tests/test_startup.py
    then fails on pydantic being imported)."""
    if option is not None and getattr(option, "_runtime_param", ...) is None:
        option._runtime_param = _AsGiven()
    return option


class LightCommand(TyperCommand):
    """A command whose help flag costs no pydantic import (for ``pgwake version``)."""

    def get_help_option(self, ctx: Any) -> Any:
        return light_help_option(super().get_help_option(ctx))


class LazyCommands(MutableMapping[str, Any]):
    """The commands of a :class:`LazyGroup`: the ones typer built, then the lazy ones,
    each loaded on first access."""

    def __init__(
        self,
        eager: MutableMapping[str, Any],
        lazy: Mapping[str, LazyCommand],
        order: Sequence[str] = (),
    ) -> None:
        self._loaded = dict(eager)
        self._lazy = dict(lazy)
        self._order = {name: i for i, name in enumerate(order)}

    def loaded(self, name: str) -> bool:
        """True when ``name`` is built (never lazy, or looked up once)."""
        return name in self._loaded

    def __getitem__(self, name: str) -> Any:
        found = self._loaded.get(name)
        if found is None:
            found = self._loaded[name] = load(name, self._lazy[name])
        return found

    def __setitem__(self, name: str, command: Any) -> None:
        self._loaded[name] = command

    def __delitem__(self, name: str) -> None:
        self._lazy.pop(name, None)
        del self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        names = [*self._loaded, *(name for name in self._lazy if name not in self._loaded)]
        last = len(self._order)
        return iter(sorted(names, key=lambda name: self._order.get(name, last)))

    def __len__(self) -> int:
        return len(self._loaded.keys() | self._lazy.keys())


class LazyGroup(TyperGroup):
    """A typer group whose ``LAZY`` commands are imported when used. Subclass it with
    ``LAZY`` set and pass it as ``typer.Typer(cls=...)``."""

    LAZY: ClassVar[Mapping[str, LazyCommand]] = {}
    # The order the help lists the commands in (others after them, as defined).
    ORDER: ClassVar[Sequence[str]] = ()

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.commands = LazyCommands(self.commands, self.LAZY, self.ORDER)
        self._listing = False

    def get_help_option(self, ctx: Any) -> Any:
        return light_help_option(super().get_help_option(ctx))

    def list_commands(self, ctx: Any) -> list[str]:
        return list(self.commands)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        commands = self.commands
        spec = self.LAZY.get(cmd_name)
        if (
            self._listing
            and spec is not None
            and isinstance(commands, LazyCommands)
            and not commands.loaded(cmd_name)
        ):
            return TyperCommand(name=cmd_name, help=spec.short_help, short_help=spec.short_help)
        return commands.get(cmd_name)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        """The group's help, listing the lazy commands by their given short help."""
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False
