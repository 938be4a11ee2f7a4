"""Named SQL blocks from ``sql/queries.sql``, loaded once at import.

Invariants:
- Every statement pgwake runs at runtime comes from this mapping; no SQL is built from
  strings in Python.
- The mapping is read-only and complete at import: a missing name is a KeyError at the
  call site, and a test PREPAREs every block against the migrated schema.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import MappingProxyType
from typing import Final

_NAME_LINE = re.compile(r"^-- name: (?P<name>[a-z][a-z0-9_]*)\s*$", re.MULTILINE)


def sql_dir() -> Path:
    """The directory holding schema.sql, queries.sql and migrations/.

    In an installed wheel the files ship inside the package (``listener/sql``); in a
    source checkout they live in the repository's top-level ``sql/``.
    """
    here = Path(__file__).resolve().parent
    packaged = here / "sql"
    if (packaged / "queries.sql").is_file():
        return packaged
    return here.parent / "sql"


def parse(text: str) -> dict[str, str]:
    """Split a queries file into ``{name: statement}``; the leading comments stay in."""
    blocks: dict[str, str] = {}
    matches = list(_NAME_LINE.finditer(text))
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        name = match.group("name")
        if name in blocks:
            raise ValueError(f"sql/queries.sql defines {name!r} twice")
        body = text[match.end() : end].strip()
        if not body:
            raise ValueError(f"sql/queries.sql: block {name!r} is empty")
        blocks[name] = body
    return blocks


QUERIES: Final = MappingProxyType(parse((sql_dir() / "queries.sql").read_text(encoding="utf-8")))
