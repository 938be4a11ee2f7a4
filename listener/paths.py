"""Where pgwake's SQL files are, and the schema version their names give: read without
importing the database driver (``pgwake version`` needs only this).

Invariants:
- :func:`known_schema_version` is the number of the newest migration file, which is
  the count of migrations (:func:`listener.migrate.load_migrations` checks they are
  numbered 1, 2, 3... with no gap; a test holds the two together).
"""

from __future__ import annotations

import re
from pathlib import Path

_MIGRATION = re.compile(r"^(\d{4})_\w+\.sql$")


def sql_dir() -> Path:
    """The directory holding schema.sql, queries/ and migrations/.

    In an installed wheel the files ship inside the package (``listener/sql``); in a
    source checkout they live in the repository's top-level ``sql/``.
    """
    here = Path(__file__).resolve().parent
    packaged = here / "sql"
    if (packaged / "schema.sql").is_file():
        return packaged
    return here.parent / "sql"


def known_schema_version() -> int:
    """The schema version this pgwake knows: its newest migration's number."""
    numbers = [
        int(match.group(1))
        for path in (sql_dir() / "migrations").glob("*.sql")
        if (match := _MIGRATION.match(path.name)) is not None
    ]
    return max(numbers, default=0)
