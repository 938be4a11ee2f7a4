"""The ``pgwake`` command line: :mod:`.app` holds the commands and :func:`main`; the
command groups (``jobs``, ``tenants``, ``schedules``, ``keys``, ``status``) have a module
each, :mod:`.options` the options they share (the database options, and ``run``'s flags
derived from the settings), :mod:`.support` the database and the errors, and
:mod:`.bench` the benchmark command.
"""

from __future__ import annotations

from listener.cli.app import app, main

__all__ = ["app", "main"]
