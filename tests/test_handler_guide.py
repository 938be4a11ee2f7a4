"""The handler guide's example and its tests (docs/handlers.md) run as written: the
handler module and both test modules are taken from the page, put in a project of
their own, and run by pytest in a process of their own, against pgwake as installed
here, with ``PGWAKE_TEST_DSN`` naming a database for the queue fixture."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.support.paths import ROOT


def blocks() -> dict[str, str]:
    """The page's Python blocks, by the file their first line names."""
    page = (ROOT / "docs" / "handlers.md").read_text()
    found: dict[str, str] = {}
    for code in re.findall(r"```python\n(.*?)```", page, re.DOTALL):
        first = re.match(r'"""([\w/]+\.py):', code)
        if first is not None:
            found[first.group(1)] = code
    return found


def test_the_guide_names_its_files() -> None:
    assert set(blocks()) >= {"my_app/jobs.py", "tests/test_jobs.py", "tests/test_jobs_queue.py"}


async def test_the_guides_tests_pass_as_written(tmp_path: Path, empty_dsn: str) -> None:
    for name, code in blocks().items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(code)
    (tmp_path / "my_app" / "__init__.py").write_text("")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PGWAKE_")},
        "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}",
        "PGWAKE_TEST_DSN": empty_dsn,  # the fixture migrates it
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path),
            "tests/test_jobs.py",
            "tests/test_jobs_queue.py",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 passed" in done.stdout, done.stdout
