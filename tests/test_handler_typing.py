"""What handler authors rely on: ``handlers/`` imports nothing of pgwake but
``listener.api``, and a handler module type-checks with ``mypy --strict`` against pgwake
installed from its wheel (the wheel ships ``listener/py.typed``; ``ctx.log`` is
structlog's typed logger, not ``Any``)."""

from __future__ import annotations

import ast
import site
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.paths import ROOT

HANDLER_MODULE = """
from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from listener.api import Cancel, JobContext, PermanentError, Retry, Snooze, handler


class Resize(BaseModel):
    image_id: int
    width: int = 640


@handler("images.resize")
async def resize(payload: Resize, ctx: JobContext) -> dict[str, int]:
    log = ctx.log.bind(image_id=payload.image_id, tenant=ctx.tenant)
    log.info("resizing", width=payload.width, attempt=ctx.attempt)
    await ctx.log.adebug("async logging too")
    await ctx.progress(1, 3, "fetched")
    if payload.width <= 0:
        raise PermanentError("width must be positive")
    if payload.image_id < 0:
        raise Cancel("no such image")
    async with ctx.tenant_db() as conn:
        busy: bool | None = await conn.fetchval("SELECT pg_is_in_recovery()")
    if busy:
        raise Snooze(30, "the tenant's database is a standby")
    if busy is None and not ctx.is_last_attempt:
        raise Retry("no answer", delay=5.0)
    await ctx.progress(3, 3)
    return {"image_id": payload.image_id, "job": ctx.job.id}


@handler("report.build")
async def build(payload: dict[str, Any], ctx: JobContext) -> None:
    ctx.log.warning("building", keys=sorted(payload))
"""

# Type errors mypy finds only if ctx.log and the outcomes are typed: with ``log: Any``
# the first line passes.
WRONG_MODULE = """
from __future__ import annotations

from listener.api import JobContext, Snooze, handler


@handler("wrong")
async def wrong(payload: dict[str, int], ctx: JobContext) -> None:
    ctx.log.no_such_level("typo")
    raise Snooze("thirty")
"""


# An application enqueuing on its own connections: the results are typed (an id, or
# None only where a unique key may be taken), so mypy --strict checks the callers.
ENQUEUE_MODULE = """
from __future__ import annotations

from datetime import timedelta

import asyncpg
import psycopg
from pydantic import BaseModel

from listener.api import NewJob, enqueue, enqueue_many


class Invoice(BaseModel):
    order_id: int


async def place_order(conn: asyncpg.Connection, pconn: psycopg.AsyncConnection[object]) -> int:
    async with conn.transaction():
        job_id: int = await enqueue(conn, "invoice.send", Invoice(order_id=7), tenant="acme")
        maybe: int | None = await enqueue(conn, "report", {}, unique_key="daily")
        ids: list[int] = await enqueue_many(
            conn, [NewJob("invoice.send", Invoice(order_id=n), priority=5) for n in range(9)]
        )
        final: int = await enqueue(
            conn, "report", {}, depends_on=[job_id, *ids], run_anyway=True, metadata={"b": 1}
        )
        more: list[int] = await enqueue_many(
            conn, [NewJob("report", depends_on=(final,), metadata={"by": "me"})]
        )
    async with pconn.transaction():
        other: int = await enqueue(pconn, "invoice.send", {"order_id": 8}, run_at=timedelta(1))
    return job_id + len(ids) + other + (maybe or 0) + final + len(more)
"""

WRONG_ENQUEUE = """
from __future__ import annotations

import asyncpg

from listener.api import NewJob, enqueue


async def wrong(conn: asyncpg.Connection) -> None:
    taken: int = await enqueue(conn, "report", {}, unique_key="daily")
    await enqueue(conn, "k", [1, 2])
    await enqueue(conn, "k", {}, priority="high")
    NewJob("k", {}, tenant=3)
    NewJob("k", {}, depends_on=["1"])
"""


def listener_imports(path: Path) -> set[str]:
    """The ``listener`` modules ``path`` imports (``from listener import x`` counts as
    ``listener.x``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module is not None and not node.level:
            names = (
                [f"listener.{alias.name}" for alias in node.names]
                if node.module == "listener"
                else [node.module]
            )
        else:
            continue
        found.update(n for n in names if n == "listener" or n.startswith("listener."))
    return found


def test_handlers_import_only_the_public_api() -> None:
    modules = sorted((ROOT / "handlers").rglob("*.py"))
    assert any(listener_imports(path) for path in modules), "the check sees no import"
    offences = {
        str(path.relative_to(ROOT)): sorted(listener_imports(path) - {"listener.api"})
        for path in modules
    }
    assert {path: found for path, found in offences.items() if found} == {}


@pytest.fixture(scope="module")
def installed_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A Python with pgwake installed from a freshly built wheel (not the source tree),
    and the test environment's packages (pydantic, structlog, asyncpg-stubs) beside it."""
    base = tmp_path_factory.mktemp("wheel")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "-w", str(base / "dist"), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = (base / "dist").glob("pgwake-*.whl")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    subprocess.run(
        [*pip, "--python", python, "install", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
    )
    target = subprocess.run(
        [python, "-c", "import site; print(site.getsitepackages()[0])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # The dependencies, from this environment. A path in a .pth file is not a site
    # directory, so this environment's editable install of pgwake is not seen there.
    (Path(target) / "test_environment.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    found = subprocess.run(
        [python, "-c", "import listener; print(listener.__file__)"],
        check=True,
        capture_output=True,
        text=True,
        cwd=base,
    ).stdout.strip()
    assert found.startswith(target), found  # the wheel's copy, not the source tree
    return python


def mypy_strict(python: str, source: str, directory: Path) -> subprocess.CompletedProcess[str]:
    module = directory / "my_handlers.py"
    module.write_text(textwrap.dedent(source))
    config = directory / "mypy.ini"  # the author's own: none of this project's settings
    config.write_text("[mypy]\n")
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--python-executable",
            python,
            "--cache-dir",
            str(directory / ".mypy_cache"),
            "--config-file",
            str(config),
            str(module),
        ],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_a_handler_module_type_checks_strictly_against_the_wheel(
    installed_python: str, tmp_path: Path
) -> None:
    done = mypy_strict(installed_python, HANDLER_MODULE, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Success: no issues found in 1 source file" in done.stdout


def test_mistakes_in_a_handler_module_are_found(installed_python: str, tmp_path: Path) -> None:
    done = mypy_strict(installed_python, WRONG_MODULE, tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert '"FilteringBoundLogger" has no attribute "no_such_level"' in done.stdout
    assert 'Argument 1 to "Snooze" has incompatible type "str"' in done.stdout


def test_enqueue_callers_type_check_strictly_against_the_wheel(
    installed_python: str, tmp_path: Path
) -> None:
    done = mypy_strict(installed_python, ENQUEUE_MODULE, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Success: no issues found in 1 source file" in done.stdout


def test_mistakes_in_enqueue_calls_are_found(installed_python: str, tmp_path: Path) -> None:
    done = mypy_strict(installed_python, WRONG_ENQUEUE, tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout
    assert 'Incompatible types in assignment (expression has type "int | None"' in out, out
    assert 'my_handlers.py:11: error: No overload variant of "enqueue" matches' in out, out
    assert 'argument types "Connection[Record]", "str", "list[int]"' in out, out
    assert 'my_handlers.py:12: error: No overload variant of "enqueue" matches' in out, out
    assert 'Argument "tenant" to "NewJob" has incompatible type "int"' in out, out
    assert 'my_handlers.py:14: error: List item 0 has incompatible type "str"' in out, out
