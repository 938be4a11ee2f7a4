"""Jobs a handler starts (``ctx.enqueue``) and the results of the jobs it depends on
(``ctx.dependency_results``).

Invariants:
- A child job is inserted only with its parent's outcome, in the transaction that
  stores it, and only when that outcome is a success written by this worker (the
  fenced update changed the parent's row): an attempt that fails, times out, is
  cancelled, snoozed or put back creates none, and a write retried after a commit whose
  reply was lost finds the parent no longer running and inserts nothing again. So each
  child of a successful attempt exists exactly once.
- A child's id is reserved from the jobs' sequence when it is enqueued (nextval, the
  id an insert would get; fetched in blocks that double up to ``MAX_ID_BLOCK``, so a
  handler enqueuing 10,000 jobs asks 14 times, and ids left over are simply never
  used), so it can be given at once as a dependency of another child
  or kept in the parent's result. Ids come from the sequence in increasing order, and
  children are inserted in id order, so a child's dependencies among its siblings are
  inserted before it (the insert trigger wants a dependency to exist).
- Children belong to the parent's tenant (dependencies never cross tenants) and are
  checked as an INSERT would check them; what the client can check (the payload and
  metadata are JSON objects) is checked at ``enqueue``, so a handler learns of it in
  its own attempt. A child the database still refuses fails its parent's outcome write,
  which the completer isolates: the parent alone is recorded failed, with the
  database's message, and none of its children is created.
- A run that is never written as an outcome (``pgwake exec --dry-run``, a test's
  ``run_handler``) gives its children placeholder ids, -1, -2, ... in the order they
  were enqueued, never the sequence's: they are shown, not inserted, and a rehearsal
  takes nothing from the database. ``results`` stands in for the database's
  dependency results where there is none (a test's run).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from pydantic import BaseModel

from listener.jobs import Job
from listener.queries import QUERIES

# The most ids one attempt reserves at a time.
MAX_ID_BLOCK = 1024


@dataclass(frozen=True, slots=True)
class ChildJob:
    """A job a handler enqueued, inserted with its parent's successful outcome."""

    id: int
    tenant_id: str
    kind: str
    payload: dict[str, Any]
    depends_on: tuple[int, ...] = ()
    run_anyway: bool = False
    priority: int = 0
    delay: float = 0.0
    max_attempts: int | None = None
    timeout: float | None = None
    metadata: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class DependencyResult:
    """How a job this one depends on ended: its status (succeeded, or with run_anyway
    failed or cancelled), its result, and its last error."""

    status: str
    result: Any
    error: str | None


def _object(value: Any, what: str) -> dict[str, Any]:
    """``value`` when it is a dict that encodes as a JSON object, else a TypeError or
    ValueError naming ``what``."""
    if not isinstance(value, dict):
        raise TypeError(f"{what} must be a dict (a JSON object), not {type(value).__name__}")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"{what} is not JSON: {exc}") from exc
    return value


@dataclass(slots=True)
class Children:
    """The children one attempt has enqueued so far, and the database to ask for ids."""

    pool: asyncpg.Pool | None
    job: Job
    placeholders: bool = False
    """Placeholder ids (-1, -2, ...) for children that are never inserted."""
    results: Mapping[int, DependencyResult] | None = None
    """The dependency results to give without asking the database."""
    enqueued: list[ChildJob] = field(default_factory=list)
    # Ids reserved and not given out yet (increasing), and the size of the next block.
    spare: list[int] = field(default_factory=list)
    block: int = 1

    async def enqueue(
        self,
        kind: str,
        payload: Mapping[str, Any] | BaseModel | None = None,
        *,
        depends_on: Sequence[int] = (),
        run_anyway: bool = False,
        priority: int = 0,
        delay: float = 0.0,
        max_attempts: int | None = None,
        timeout: float | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> int:
        """Reserve an id for a child job and keep it for the outcome; returns the id."""
        if self.pool is None and not self.placeholders:
            raise RuntimeError("this worker cannot enqueue jobs from handlers (no database)")
        if not isinstance(kind, str) or not kind.strip():
            raise ValueError("kind must be a non-empty string")
        if isinstance(payload, BaseModel):
            payload = payload.model_dump(mode="json")
        body = _object(dict(payload or {}), "payload")
        meta = None if metadata is None else _object(dict(metadata), "metadata")
        deps = tuple(int(d) for d in depends_on)
        if delay < 0:
            raise ValueError(f"delay must be 0 or more, not {delay}")
        if self.placeholders:
            self.spare = [-1 - len(self.enqueued)]
        elif not self.spare and self.pool is not None:
            self.spare = list(await self.pool.fetchval(QUERIES["job_reserve_ids"], self.block))
            self.block = min(self.block * 2, MAX_ID_BLOCK)
        child_id = self.spare.pop(0)
        self.enqueued.append(
            ChildJob(
                child_id,
                self.job.tenant_id,
                kind,
                body,
                deps,
                bool(run_anyway),
                int(priority),
                float(delay),
                max_attempts,
                timeout,
                meta,
            )
        )
        return child_id

    async def dependency_results(self) -> dict[int, DependencyResult]:
        """How each job this one depends on ended, by id (a job removed by retention
        since is left out)."""
        if self.results is not None:
            return dict(self.results)
        if self.pool is None:
            raise RuntimeError("this worker cannot read dependencies (no database)")
        rows = await self.pool.fetch(QUERIES["job_list_dependency_results"], self.job.id)
        return {r["id"]: DependencyResult(r["status"], r["result"], r["last_error"]) for r in rows}


async def insert_children(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
    stored: set[int],
    children: Sequence[tuple[int, ChildJob]],
) -> int:
    """Insert ``children`` ((parent id, child) pairs) of the parents in ``stored`` (those
    whose successful outcome this transaction wrote), in id order, in one statement;
    returns how many were inserted."""
    kept = sorted((c for parent, c in children if parent in stored), key=lambda c: c.id)
    if not kept:
        return 0
    rows = await conn.fetch(
        QUERIES["job_insert_children"],
        [c.id for c in kept],
        [c.tenant_id for c in kept],
        [c.kind for c in kept],
        [json.dumps(c.payload) for c in kept],
        [c.priority for c in kept],
        [c.delay for c in kept],
        [c.max_attempts for c in kept],
        [c.timeout for c in kept],
        [json.dumps(list(c.depends_on)) if c.depends_on else None for c in kept],
        [c.run_anyway for c in kept],
        [None if c.metadata is None else json.dumps(c.metadata) for c in kept],
    )
    return len(rows)
