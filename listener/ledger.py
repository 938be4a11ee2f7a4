"""The ledger of the jobs one worker holds: counts and ids, no policy and no I/O.

A job this worker claimed is *in flight* from its claim until its handler ends (waiting
for a runner, then running), then *unacked* until the completer has stored its outcome.
A job dropped without an outcome (abandoned to another worker, or cut off by the end of
the drain) leaves both at once.

Invariants:
- ``in_flight`` is the number of claimed jobs whose handler has not ended, and
  ``claimed`` counts them per tenant (a tenant with none has no entry).
- ``unacked`` is the number of finished jobs whose outcome is not stored yet.
- ``known`` holds the id of every job in flight or unacked, and nothing else: the jobs
  the database may rightly say this worker runs. An id the database reports that is not
  known at two ``reconcile`` calls in a row is an orphan (a claim whose reply was lost).
- ``wait_idle`` returns once nothing is in flight (at once if nothing is);
  ``wait_freed`` returns after any change that frees a slot (a handler ended, a job
  dropped, outcomes stored). The event ``wait_idle`` waits on is made only when someone
  waits: an idle worker's claim by id, the wake-up's hot path, makes none.
- Every method is synchronous and O(1) per job, so the claim loop and the runners can
  call it between two awaits without a task switch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import anyio

from listener.jobs import Job


class Ledger:
    """What one worker holds, by job and by tenant."""

    __slots__ = ("_freed", "_idle", "_suspects", "claimed", "in_flight", "known", "unacked")

    def __init__(self) -> None:
        self.in_flight = 0
        self.unacked = 0
        self.claimed: Counter[str] = Counter()
        self.known: set[int] = set()
        # Unknown ids the database reported at the last reconcile: orphans if still
        # unknown at the next one.
        self._suspects: set[int] = set()
        # Made by wait_idle while jobs are in flight; set and dropped when the last ends.
        self._idle: anyio.Event | None = None
        # Made by wait_freed; set and dropped at the next change that frees a slot (no
        # event is touched per job while nobody waits).
        self._freed: anyio.Event | None = None

    def add(self, jobs: Sequence[Job]) -> None:
        """Jobs a claim returned: in flight from now on."""
        if not jobs:
            return
        self.in_flight += len(jobs)
        claimed, known = self.claimed, self.known
        for job in jobs:
            claimed[job.tenant_id] += 1
            known.add(job.id)

    def ended(self, job: Job) -> int:
        """``job``'s handler ended with an outcome, to be stored: it leaves the jobs in
        flight for the unacked ones. Returns how many jobs of its tenant were in flight
        before (its count against the tenant's cap until now)."""
        self.unacked += 1
        return self._leave(job)

    def dropped(self, job: Job) -> int:
        """``job`` leaves this worker with no outcome to store (abandoned to another
        worker, or cancelled at the end of the drain). Returns, as ``ended`` does, how
        many jobs of its tenant were in flight before."""
        self.known.discard(job.id)
        return self._leave(job)

    def _leave(self, job: Job) -> int:
        self.in_flight -= 1
        tenant = job.tenant_id
        before = self.claimed[tenant]
        if before <= 1:
            del self.claimed[tenant]
        else:
            self.claimed[tenant] = before - 1
        self._set_freed()
        if self.in_flight == 0 and self._idle is not None:
            self._idle.set()
            self._idle = None
        return before

    def stored(self, job_ids: Iterable[int]) -> None:
        """The outcomes of these finished jobs are stored (or were fenced off)."""
        known = self.known
        count = 0
        for job_id in job_ids:
            known.discard(job_id)
            count += 1
        self.unacked -= count
        self._set_freed()

    def _set_freed(self) -> None:
        freed = self._freed
        if freed is not None:
            freed.set()
            self._freed = None

    def reconcile(self, held: Sequence[int]) -> list[int]:
        """Of the ids the database says this worker runs, those it has not known of at
        two calls in a row: claims whose reply never arrived. (One call is not enough:
        a claim's rows may be on their way while the database is asked.)"""
        unknown = {job_id for job_id in held if job_id not in self.known}
        orphans = unknown & self._suspects
        self._suspects = unknown - orphans
        return sorted(orphans)

    async def wait_freed(self) -> None:
        """Wait for the next change that frees a slot (one after this call: the caller
        looks at the slots first)."""
        if self._freed is None:
            self._freed = anyio.Event()
        await self._freed.wait()

    async def wait_idle(self) -> None:
        """Wait until nothing is in flight."""
        if self.in_flight == 0:
            return
        if self._idle is None:
            self._idle = anyio.Event()
        await self._idle.wait()
