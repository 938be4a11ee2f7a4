"""Releases of pgwake side by side, for upgrade tests.

A release is a copy of this checkout's code (``listener/``, ``handlers/``, ``sql/``) in
a directory of its own, run as a real process from there: ``python -m listener`` with
the copy first on ``PYTHONPATH``, so its ``listener`` package, its migrations and its
queries are the copy's, whatever the virtualenv has installed. The test handler modules
(``tests.support.*_handlers``) are still found in the checkout, and import the copy's
``listener.api``.

- The *previous* release is this code as it stands: it knows the schema of the newest
  migration here, and marks, as the release before an upgrade would.
- The *next* release is the same code with extra migrations written into its own
  ``sql/migrations``, as a release that brings a migration ships it. Nothing in the
  code under test is pointed at another directory: each release reads the files it
  ships.

``make_release`` copies; the directory belongs to the caller (a ``tmp_path``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tests.support import secret_watch
from tests.support.paths import ROOT

PACKAGE_DIRS = ("listener", "handlers", "sql")


@dataclass(frozen=True)
class Release:
    """One copy of pgwake, and how to run its command line."""

    root: Path
    # The newest schema version it ships (its last migration).
    schema: int

    def env(self, dsn: str, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of its processes: no PGWAKE_ setting but the DSN, JSON logs
        and a free metrics port, unless ``extra`` says otherwise."""
        base = {k: v for k, v in os.environ.items() if not k.startswith("PGWAKE_")}
        return {
            **base,
            "PYTHONPATH": f"{self.root}{os.pathsep}{ROOT}",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PGWAKE_DSN": dsn,
            "PGWAKE_LOG_FORMAT": "json",
            "PGWAKE_METRICS_ADDR": "127.0.0.1:0",
            **(extra or {}),
        }

    def command(
        self, dsn: str, *args: str, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run ``pgwake ARGS`` of this release to its end."""
        return subprocess.run(
            [sys.executable, "-m", "listener", *args],
            env=self.env(dsn, env),
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def spawn_worker(
        self, dsn: str, log: IO[str], *args: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[str]:
        """Start ``pgwake run ARGS`` of this release, its output to ``log``."""
        secret_watch.current().add_log_file(Path(log.name), f"worker log {log.name}")
        return subprocess.Popen(
            [sys.executable, "-m", "listener", "run", *args],
            env=self.env(dsn, env),
            cwd=self.root,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )


def make_release(dest: Path, extra_migrations: dict[str, str] | None = None) -> Release:
    """Copy this checkout's code to ``dest`` and add ``extra_migrations`` (file name:
    text) to its ``sql/migrations``; the release it makes."""
    for name in PACKAGE_DIRS:
        shutil.copytree(
            ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    migrations = dest / "sql" / "migrations"
    for name, text in (extra_migrations or {}).items():
        (migrations / name).write_text(text, encoding="utf-8")
    newest = max(int(path.name[:4]) for path in migrations.glob("[0-9]*.sql"))
    return Release(dest, newest)
