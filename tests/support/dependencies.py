"""Jobs that depend on jobs, for the tests of issue 19: inserting graphs from plain SQL,
and finishing chosen jobs with the worker's own outcome statement (job_finish_many)."""

from __future__ import annotations

import uuid

import asyncpg

from listener.queries import QUERIES
from tests.support.claims import register

# A chain in one plain INSERT: ids drawn from the jobs' sequence first, each row
# depending on the one before it ($1 rows of kind $2; the first row depends on $3 when
# given). Rows are inserted in id order, so each dependency exists before its dependent.
CHAIN = """
WITH ids AS (SELECT g, nextval('pgwake.jobs_id_seq') AS id FROM generate_series(1, $1::int) g)
INSERT INTO pgwake.jobs (id, kind, depends_on)
SELECT i.id, $2::text,
       CASE WHEN i.g > 1 THEN ARRAY[lag(i.id) OVER (ORDER BY i.g)]
            WHEN $3::bigint IS NOT NULL THEN ARRAY[$3::bigint] END
  FROM ids AS i
 ORDER BY i.g
RETURNING id
"""


async def chain(
    conn: asyncpg.Connection, n: int, kind: str = "k", after: int | None = None
) -> list[int]:
    """Insert a chain of ``n`` jobs in one statement; their ids in chain order."""
    return sorted(r["id"] for r in await conn.fetch(CHAIN, n, kind, after))


async def finish(
    conn: asyncpg.Connection,
    ids: list[int],
    status: str = "succeeded",
    *,
    worker: uuid.UUID | None = None,
) -> list[int]:
    """Mark ``ids`` running under a worker (as a claim would), then write their outcome
    with job_finish_many; the ids it changed."""
    worker = worker or await register(conn)
    attempts = await conn.fetch(
        "UPDATE pgwake.jobs SET status = 'running', claimed_by = $2, attempts = attempts + 1, "
        "started_at = now() WHERE id = ANY ($1::bigint[]) RETURNING id, attempts",
        ids,
        worker,
    )
    by_id = {r["id"]: r["attempts"] for r in attempts}
    done = await conn.fetch(
        QUERIES["job_finish_many"],
        worker,
        ids,
        [by_id[i] for i in ids],
        [status] * len(ids),
        [0] * len(ids),
        None,
        None,
        None if status == "succeeded" else [f"boom {i}" for i in ids],
    )
    (row,) = done  # one row, whatever the batch
    return sorted(row["ids"] or ())


async def statuses(conn: asyncpg.Connection, ids: list[int]) -> list[str]:
    """The status of each of ``ids``, in that order."""
    rows = dict(
        await conn.fetch("SELECT id, status FROM pgwake.jobs WHERE id = ANY ($1::bigint[])", ids)
    )
    return [rows[i] for i in ids]
