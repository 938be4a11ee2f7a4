"""What a ``pgwake`` command line imports: the command run in a fresh interpreter, which
reports its exit code and the modules loaded when it ended (tests/test_startup.py,
tests/test_quick_start.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass

from tests.support.paths import ROOT

# Runs `pgwake <argv>` as `python -m listener` would, then prints the exit code and the
# modules loaded, each on a line of its own on stderr.
_PROBE = """
import json, runpy, sys
sys.argv = ["pgwake", *json.loads(sys.argv[1])]
try:
    runpy.run_module("listener", run_name="__main__")
except SystemExit as exc:
    sys.stdout.flush()
    print("\\nEXIT " + json.dumps(exc.code), file=sys.stderr)
print("\\nMODULES " + json.dumps(sorted(sys.modules)), file=sys.stderr)
"""


@dataclass(frozen=True)
class Probed:
    """How a probed command line ended: its stdout, its stderr before the report, and
    the modules it had imported."""

    stdout: str
    stderr: str
    modules: set[str]


def probe(*argv: str) -> Probed:
    """Run ``pgwake *argv`` in a fresh interpreter from the repository root."""
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(argv)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    text, _, modules = done.stderr.rpartition("\nMODULES ")
    return Probed(done.stdout, text, set(json.loads(modules)))
