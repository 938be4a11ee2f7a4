"""``chain``: how soon a job that waits for another starts once that one has finished.

One plain SQL statement inserts a chain of ``links`` ``echo`` jobs, each depending on
the one before (ids from the jobs' sequence, as docs/enqueue-sql.md shows). One worker
(default settings) runs them; each link is released by the statement that writes its
predecessor's outcome. Reports the gap between a link's ``started_at`` (its claim's
time) and its predecessor's ``finished_at`` (the outcome's time), median and p99 in
milliseconds, and whether the links ran in order.

Invariant: both times are the database's (``now()`` of the claiming and the finishing
transaction), so the gap includes the outcome write's commit, the wake-up of the
claimer (the release notifies a waiting worker) and the claim.

``pgwake bench chain``, or on its own: ``python -m listener.cli.bench.chain [DSN]
[LINKS]`` (a server DSN; the chain runs in a database of its own, dropped after).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import anyio

from listener import db
from listener.cli.bench.common import (
    bench_database,
    median_run,
    ms,
    percentile,
    wait_all_finished,
    worker_processes,
)
from listener.cli.bench.queries import BENCH_QUERIES


@dataclass(frozen=True, slots=True)
class ChainRun:
    """The gaps of one chain."""

    links: int
    in_order: bool
    median_ms: float
    p99_ms: float
    max_ms: float


async def chain_run(server_dsn: str, *, links: int, timeout: float = 300) -> ChainRun:
    """Insert a chain of ``links`` jobs in one statement and measure its gaps."""
    async with bench_database(server_dsn) as dsn, worker_processes(dsn):
        conn = await db.connect(dsn)
        try:
            await conn.execute(BENCH_QUERIES["job_insert_chain"], links)
            await wait_all_finished(conn, links, timeout)
            rows = await conn.fetch(BENCH_QUERIES["job_list_chain_gaps"])
        finally:
            await conn.close()
    gaps = [r["gap"] * 1000 for r in rows]
    return ChainRun(
        links=links,
        in_order=all(r["in_order"] and r["status"] == "succeeded" for r in rows),
        median_ms=ms(percentile(gaps, 50)),
        p99_ms=ms(percentile(gaps, 99)),
        max_ms=ms(max(gaps)),
    )


async def chain(server_dsn: str, *, links: int, repeat: int) -> list[ChainRun]:
    """``repeat`` chains; one row of medians (in order only when every chain was)."""
    runs = [await chain_run(server_dsn, links=links) for _ in range(repeat)]
    row = median_run(runs)
    return [
        ChainRun(row.links, all(r.in_order for r in runs), row.median_ms, row.p99_ms, row.max_ms)
    ]


def render_chain(runs: list[ChainRun]) -> str:
    """Chain gaps as a table."""
    lines = [f"{'links':>6} {'in order':>8} {'median ms':>9} {'p99 ms':>7} {'max ms':>7}"]
    lines += [
        f"{r.links:>6} {'yes' if r.in_order else 'NO':>8} {r.median_ms:>9g} {r.p99_ms:>7g} "
        f"{r.max_ms:>7g}"
        for r in runs
    ]
    return "\n".join(lines)


def main() -> None:
    """``python -m listener.cli.bench.chain [SERVER_DSN] [LINKS]``."""
    dsn = sys.argv[1] if len(sys.argv) > 1 else "postgresql://postgres@127.0.0.1:5432/postgres"
    links = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    print(render_chain([anyio.run(lambda: chain_run(dsn, links=links))]))


if __name__ == "__main__":
    main()
