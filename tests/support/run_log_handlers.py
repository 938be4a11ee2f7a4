"""A handler that notes each of its runs in a file, for tests where the database itself
fails (tests/test_faults.py): a note kept in the database could be lost with the crash
it is meant to witness, one in a file of the test's own cannot.

``logged_sleep`` appends ``<job id> <attempt>`` to the file named by
``PGWAKE_TEST_RUN_LOG`` as its first step, then sleeps ``payload["seconds"]``: a job
whose handler ran twice has two lines, whatever became of its outcomes.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import anyio

from listener.api import JobContext, handler

# The value of --handlers for a worker process that loads this module.
RUN_LOG = "tests.support.run_log_handlers"
# The environment variable naming the file the runs are noted in.
RUN_LOG_ENV = "PGWAKE_TEST_RUN_LOG"


@handler("logged_sleep")
async def logged_sleep(payload: dict[str, Any], ctx: JobContext) -> None:
    """Note this run (one short append, whole: O_APPEND), then sleep."""
    fd = os.open(os.environ[RUN_LOG_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{ctx.job.id} {ctx.attempt}\n".encode())
    finally:
        os.close(fd)
    await anyio.sleep(float(payload.get("seconds", 0)))


def runs_by_job(path: str) -> Counter[int]:
    """How many times each job's handler ran, from the file ``logged_sleep`` writes."""
    with open(path) as f:
        return Counter(int(line.split()[0]) for line in f)
