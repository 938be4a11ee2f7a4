"""The ``pgwake`` command line: :mod:`.app` holds the commands and :func:`main`; the
command groups (``jobs``, ``tenants``, ``schedules``, ``keys``, ``status``) have a module
each, :mod:`.support` the options and errors they share, and :mod:`.bench` the benchmark
command.
"""

from __future__ import annotations

from listener.cli.app import app, main

__all__ = ["app", "main"]
