"""The suite's own layout: test modules import shared helpers from tests/support/ only,
never from another test module or from conftest.py, and no helper module sits beside
the tests. (Importing a test module from another runs its module code twice under two
names and collects its fixtures where nobody looks for them.)"""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

from tests.support.paths import ROOT

TESTS = ROOT / "tests"


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, absolute names, at any depth of the module."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            if node.level:
                raise AssertionError(f"{path.name}: relative import of {node.module}")
            # `from tests import x` imports the module tests.x.
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def forbidden(module: str) -> bool:
    """A module of the suite that is not a shared helper."""
    return module.startswith("tests.") and not module.startswith("tests.support")


def test_test_modules_import_helpers_only_from_the_support_package() -> None:
    modules = sorted(TESTS.glob("test_*.py"))
    assert len(modules) > 30, modules  # the glob sees the suite
    offences = {
        path.name: sorted(m for m in imported_modules(path) if forbidden(m)) for path in modules
    }
    assert {name: found for name, found in offences.items() if found} == {}


def test_support_modules_do_not_import_test_modules() -> None:
    offences = {
        path.name: sorted(m for m in imported_modules(path) if forbidden(m))
        for path in (TESTS / "support").glob("*.py")
    }
    assert {name: found for name, found in offences.items() if found} == {}


def test_no_helper_module_beside_the_tests() -> None:
    allowed = {"__init__.py", "conftest.py"}
    strays = [
        p.name
        for p in TESTS.glob("*.py")
        if p.name not in allowed and not p.name.startswith("test_")
    ]
    assert strays == [], "shared helpers belong in tests/support/"


def test_handler_modules_named_for_worker_processes_exist() -> None:
    """``--handlers tests.support.x`` strings name modules that a worker can import."""
    named: set[str] = set()
    for path in TESTS.glob("**/*.py"):
        named.update(re.findall(r"\btests\.support\.\w+_handlers\b", path.read_text()))
    assert named, "no handler module named: the pattern no longer matches"
    missing = sorted(m for m in named if importlib.util.find_spec(m) is None)
    assert missing == []
