"""Every advisory-lock key literal in sql/, listener/ and the docs is one of
listener/locks.py's, and the migrations agree with it."""

from __future__ import annotations

import re
from pathlib import Path

from listener import locks
from listener.migrate import load_migrations

ROOT = Path(__file__).resolve().parent.parent

# A two-int key's class id (pgwake's are 1885828961..7; any 1885xxxxxx is taken for one,
# so that a typo is caught too), with the object id that follows it when there is one:
# "(1885828967, 100", "1885828962, $1", "classid = 1885828963::oid AND l.objid = 1::oid".
# A comma after "::oid" starts the next item of a list of class ids ("IN (a::oid,
# b::oid)"), never an object id.
TWO_INT_KEY = re.compile(
    r"\b(?P<classid>1885\d{6})\b"
    r"(?:(?:\s*,\s*|(?:::oid)?\s+AND\s+(?:\w+\.)?objid\s*=\s*)(?P<objid>\d+)\b)?"
)
# The migration lock's bigint, in any spelling.
BIGINT_KEY = re.compile(r"0x7067_?7761_?6[bB]65|\b123584411954021\b")

LIVE = [key for key in locks.LOCKS if key.retired_in is None]
RETIRED = [key for key in locks.LOCKS if key.retired_in is not None]


def literals(text: str) -> list[tuple[int, int | None]]:
    """Every lock-key literal in a text, as (classid, objid or None)."""
    found: list[tuple[int, int | None]] = [
        (int(m["classid"]), int(m["objid"]) if m["objid"] else None)
        for m in TWO_INT_KEY.finditer(text)
    ]
    found += [(locks.MIGRATE.classid, None) for _ in BIGINT_KEY.finditer(text)]
    return found


def unregistered(found: list[tuple[int, int | None]], keys: list[locks.LockKey]) -> list:
    """The literals that are none of ``keys``: a fixed object id must match a key of its
    class exactly; a varying one (a column, a parameter) needs a key of its class."""
    bad = []
    for classid, objid in found:
        of_class = [k for k in keys if k.classid == classid]
        if not of_class or (objid is not None and objid not in [k.objid for k in of_class]):
            bad.append((classid, objid))
    return bad


def current_files() -> list[Path]:
    """Everything but the migrations and the registry itself that may name a lock key:
    schema, queries, code, docs."""
    files = [ROOT / "sql" / "schema.sql", *sorted((ROOT / "sql" / "queries").glob("*.sql"))]
    files += sorted((ROOT / "listener").rglob("*.sql"))
    files += sorted(p for p in (ROOT / "listener").rglob("*.py") if p.name != "locks.py")
    files += sorted(ROOT.glob("*.md")) + sorted((ROOT / "docs").rglob("*.md"))
    return files


def test_the_registry_names_each_key_once() -> None:
    assert len({k.name for k in locks.LOCKS}) == len(locks.LOCKS)
    fixed = [(k.classid, k.objid) for k in locks.LOCKS if k.fixed]
    assert len(set(fixed)) == len(fixed)
    # A varying object id takes a whole class.
    varying = {k.classid for k in locks.LOCKS if not k.fixed}
    assert not varying & {classid for classid, _ in fixed}
    assert all(k.guards for k in locks.LOCKS)
    latest = load_migrations()[-1].version
    assert all(1 < k.retired_in <= latest for k in RETIRED if k.retired_in)


def test_every_literal_in_sql_code_and_docs_is_a_registered_key() -> None:
    found = {path: literals(path.read_text(encoding="utf-8")) for path in current_files()}
    assert sum(map(len, found.values())) > 10, "the scan found no lock keys at all"
    docs = {p for p in found if p.suffix == ".md"}
    problems = []
    for path, keys in found.items():
        # The docs may tell the history (retired keys); sql/ and listener/ use live keys.
        allowed = list(locks.LOCKS) if path in docs else LIVE
        problems += [(path.relative_to(ROOT), key) for key in unregistered(keys, allowed)]
    assert problems == []


def test_python_spells_lock_keys_only_in_the_registry() -> None:
    spelled = [
        path.relative_to(ROOT)
        for path in (ROOT / "listener").rglob("*.py")
        if path.name != "locks.py" and literals(path.read_text())
    ]
    assert spelled == []


def test_every_live_key_is_taken_somewhere() -> None:
    sql = [*sorted((ROOT / "sql" / "queries").glob("*.sql")), ROOT / "sql" / "schema.sql"]
    in_sql = {key for path in sql for key in literals(path.read_text())}
    code = "\n".join(p.read_text() for p in (ROOT / "listener").rglob("*.py"))
    for key in LIVE:
        used = (
            f"locks.{key.name.upper()}" in code
            or (key.classid, key.objid) in in_sql
            or (not key.fixed and any(c == key.classid for c, _ in in_sql))
        )
        assert used, f"{key.name} is registered but nothing takes it"


def test_migrations_agree_with_the_registry() -> None:
    """Migrations are history and stay as they are; each key they name is registered,
    and a retired key appears only in migrations before the one that retired it."""
    problems = []
    for migration in load_migrations():
        keys = literals(migration.sql)
        problems += [(migration.name, k) for k in unregistered(keys, list(locks.LOCKS))]
        retired_later = [
            k for k in RETIRED if k.retired_in is not None and k.retired_in <= migration.version
        ]
        for key in keys:
            # A number that names a key retired by now, and no live key, in a newer
            # migration: it uses a lock it should no longer take.
            if not unregistered([key], retired_later) and unregistered([key], LIVE):
                problems.append((migration.name, key, "retired"))
    assert problems == []


def test_the_scan_catches_unknown_and_retired_keys() -> None:
    text = "pg_try_advisory_lock(1885828968, 0); SELECT pg_advisory_lock(1885828967, 7)"
    assert unregistered(literals(text), LIVE) == [(1885828968, 0), (1885828967, 7)]
    retired = "pg_try_advisory_xact_lock(1885828964, 0)"
    assert unregistered(literals(retired), LIVE) == [(1885828964, 0)]
    assert unregistered(literals(retired), list(locks.LOCKS)) == []
    seen = "l.classid = 1885828962::oid AND l.objid = w.lock_key::oid; (1885828963, 1)"
    assert literals(seen) == [(1885828962, None), (1885828963, 1)]
    classes = "l.classid IN (1885828962::oid, 1885828963::oid)"
    assert literals(classes) == [(1885828962, None), (1885828963, None)]
    assert unregistered(literals(seen), LIVE) == []
    assert literals("MIGRATE = 0x7067_7761_6B65") == [(locks.MIGRATE.classid, None)]
