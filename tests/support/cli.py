"""The ``pgwake`` command line run as a real process."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support.paths import ROOT


def pgwake(
    *args: str,
    dsn: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60,
    stdin: str = "",
) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a process; only the PGWAKE_ variables given here are set."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("PGWAKE_")}
    base["PGWAKE_METRICS_ADDR"] = "127.0.0.1:0"  # tests run many workers side by side
    if dsn is not None:
        base["PGWAKE_DSN"] = dsn
    return subprocess.run(
        [sys.executable, "-m", "listener", *args],
        env={**base, "PYTHONPATH": str(ROOT), **(env or {})},
        cwd=ROOT,
        capture_output=True,
        text=True,
        input=stdin,
        timeout=timeout,
        check=False,
    )
