"""The raw-SQL workers that ``pgwake bench mixed`` runs beside its producers, for
reference: no pgwake at all, one connection and one process, claiming every
``STREAM_PAUSE`` seconds (the pause of pgwake's claim loop in a stream) with the least
SQL a queue can run:

- ``two-writes``: each job is written twice, as any queue that survives a crash must:
  once to mark it running (held by this process), once when it is done. pgwake does
  the same, with its bookkeeping (fairness, fencing, heartbeats, outcomes) on top.
- ``one-write``: each job goes straight from queued to succeeded in the claim, as if its
  handler ran inside it. Not a way to run jobs (a crash could not tell a job that ran
  from one that did not): the bound on what not writing claims could save.

Run as ``python -m listener.cli.bench.raw_worker MODE`` with the database's DSN in
``PGWAKE_DSN`` (never on the command line). Prints ``ready`` once connected; stops at
SIGTERM, after its current cycle.

Invariant: it never waits on anything but its own statements and the pause, and it
touches only jobs of the benchmark's database.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import uuid

from listener import db
from listener.claimer import STREAM_PAUSE
from listener.cli.bench.queries import BENCH_QUERIES

MODES = ("two-writes", "one-write")
# Jobs one claim takes at most: more than a stream ever leaves between two claims.
BATCH = 1000


async def run(dsn: str, mode: str) -> None:
    """Claim and finish jobs until SIGTERM."""
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    conn = await db.connect(dsn)
    try:
        claimant = uuid.uuid4()
        # Only the statements of this mode are prepared: the session is the one a queue
        # that runs them would have.
        if mode == "one-write":
            take = await conn.prepare(BENCH_QUERIES["job_take_raw"])
        else:
            claim = await conn.prepare(BENCH_QUERIES["job_claim_raw"])
            finish = await conn.prepare(BENCH_QUERIES["job_finish_raw"])
        print("ready", flush=True)  # the benchmark starts its producers now
        while not stop.is_set():
            if mode == "one-write":
                await take.fetch(BATCH)
            else:
                ids = [row["id"] for row in await claim.fetch(claimant, BATCH)]
                if ids:
                    await finish.fetch(ids)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), STREAM_PAUSE)
    finally:
        await conn.close()


def main() -> None:
    """Entry point: ``python -m listener.cli.bench.raw_worker MODE``."""
    if len(sys.argv) != 2 or sys.argv[1] not in MODES:
        sys.exit(f"usage: python -m listener.cli.bench.raw_worker {{{','.join(MODES)}}}")
    dsn = os.environ.get("PGWAKE_DSN")
    if not dsn:
        sys.exit("raw_worker: PGWAKE_DSN is not set")
    asyncio.run(run(dsn, sys.argv[1]))


if __name__ == "__main__":
    main()
