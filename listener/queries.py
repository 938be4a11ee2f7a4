"""Named SQL blocks from ``sql/queries/*.sql``, loaded once at import.

The files group the statements by who runs them: ``worker.sql`` (the worker process:
registration, heartbeat, claim, outcomes, LISTEN), ``maintenance.sql`` (the leader
loops), ``metrics.sql`` (the sampler), ``cli.sql`` (the command line) and
``migrate.sql``. The benchmark's statements live beside its code
(``listener/cli/bench/bench.sql``) and are not part of this mapping.

A block is a ``-- name: <subject>_<verb>[_<detail>]`` line, comment lines saying what the
statement does, a line giving its parameters (``$1 ..., $2 ...`` or ``No parameters.``),
then the statement. The naming rule: the subject is the table or object the statement is
about, in the singular (job, worker, tenant, schedule, migration, leader, listener,
server, limit), then a verb, then what narrows it (``job_list``, ``worker_list_lost``,
``tenant_get_dsn``).

Invariants:
- Every statement pgwake runs at runtime comes from this mapping; no SQL is built from
  strings in Python.
- The mapping is read-only and complete at import: a missing name is a KeyError at the
  call site, and a test PREPAREs every block against the migrated schema.
- A name is defined once across all the files: a second definition fails the import.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Final

from listener.paths import sql_dir

_NAME_LINE = re.compile(r"^-- name: (?P<name>[a-z][a-z0-9_]*)\s*$", re.MULTILINE)


def query_files() -> list[Path]:
    """The runtime queries files, in name order."""
    return sorted((sql_dir() / "queries").glob("*.sql"))


def parse(text: str, source: str = "queries") -> dict[str, str]:
    """Split a queries file into ``{name: statement}``; the leading comments stay in."""
    blocks: dict[str, str] = {}
    matches = list(_NAME_LINE.finditer(text))
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        name = match.group("name")
        if name in blocks:
            raise ValueError(f"{source} defines {name!r} twice")
        body = text[match.end() : end].strip()
        if not body:
            raise ValueError(f"{source}: block {name!r} is empty")
        blocks[name] = body
    return blocks


def load(paths: Iterable[Path]) -> Mapping[str, str]:
    """Every block of the given files as one read-only mapping; a name defined in two
    files is a ValueError naming both."""
    blocks: dict[str, str] = {}
    origin: dict[str, str] = {}
    paths = list(paths)
    for path in paths:
        for name, body in parse(path.read_text(encoding="utf-8"), path.name).items():
            if name in blocks:
                raise ValueError(f"{path.name} and {origin[name]} both define {name!r}")
            blocks[name] = body
            origin[name] = path.name
    if not blocks:
        raise ValueError(f"no named queries in {', '.join(map(str, paths)) or 'no files'}")
    return MappingProxyType(blocks)


QUERIES: Final = load(query_files())
