"""The ``pgwake`` command line: :mod:`.app` holds the commands (typer); the command
groups (``jobs``, ``tenants``, ``schedules``, ``keys``, ``status``) have a module each,
:mod:`.options` the options they share (the database options, and ``run``'s flags
derived from the settings), :mod:`.support` the database and the errors, and
:mod:`.bench` the benchmark command. :func:`main` starts a plain ``pgwake run`` without
typer (:mod:`.quick`) and gives everything else to typer; importing this package
imports no typer (the typer app is ``listener.cli.app.app``).
"""

from __future__ import annotations

import sys

__all__ = ["main"]


def main() -> None:
    """Console-script entry point."""
    argv = sys.argv[1:]
    if argv[:1] == ["run"]:
        from listener.cli import quick  # noqa: PLC0415 - only for `pgwake run`

        try:
            if quick.run(argv[1:]):
                sys.exit(0)
        except KeyboardInterrupt:
            sys.exit(130)
    from listener.cli.app import main as typer_main  # noqa: PLC0415

    typer_main()
