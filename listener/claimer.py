"""The claim loop and its runners: claims jobs in batches sized to free capacity and
runs them.

Invariants:
- Never runs more handlers than ``concurrency``, nor more than ``tenant_concurrency``
  of one tenant while another tenant has ready jobs: runners start a tenant's next
  claimed job only while it runs fewer (tenants take turns), and the claim asks only
  for free slots, per tenant, in the SQL itself. A tenant alone with ready jobs, held
  to its cap, may borrow the idle slots but a reserve (an eighth, at least one) kept
  for the next tenant, until a claim serves another tenant. A handler's slot frees
  when it returns, while its outcome is written in the background.
- Claims are pipelined and sized by time: when jobs run shorter than a claim takes,
  as many more jobs as the runners finish during one claim (at most ``claim_batch``)
  are claimed ahead of free slots, and a tenant's share of claimed jobs grows in
  proportion, so the runners do not idle while the next claim runs (see ``_free``).
  Jobs that run longer than a claim takes are claimed only for free slots.
- Claims only kinds in the registry, on one pool connection kept for the purpose
  (``HeldConnection``), so a claim is one round trip.
- Claims again as soon as there is room while the last claim came back full (a
  backlog), batching freed slots for a couple of milliseconds so a claim is not one
  round trip per finished job; otherwise waits for a wake (NOTIFY, promotion,
  reconnect) or the poll interval.
- A tenant a claim held to its cap (it got every slot ``tenant_concurrency`` left it)
  may have more ready jobs: the first of its jobs to finish afterwards wakes the claim
  loop, so its backlog never waits for a NOTIFY or the poll.
- Inserts notify only while this worker waits (``Doorbell``, the listener): before
  each wait the claimer asks ``before_sleep`` and claims once more when told to, so a
  job committed while the worker was busy is never left waiting for the poll; a
  backlog tells the doorbell it is ``busy``. A claim that could not reach the database is tried
  again at once, then every second (at most the poll interval) until one does, and at
  once when the listener reconnects or a notification comes.
- Claimed jobs are run by at most ``concurrency`` runner tasks, started when needed and
  then kept (parked while there is nothing to run). A runner takes claimed jobs one
  after another and wakes one more runner whenever jobs are left waiting, so jobs that
  wait on I/O run side by side while jobs that never wait cost no task switch. No task
  is created per job.
- A runner keeps one cancel scope for as long as its jobs end on their own. Stopping one
  job (a cancel request, an abandon, or its timeout, which one watchdog task enforces
  for all runners) cancels the scope of the runner running it, which records why and
  goes on in a fresh scope. Nothing per job touches a timer.
- After ``stop()`` no new claim starts. Running jobs get ``drain_timeout`` seconds to
  finish; the rest are cancelled, and the service puts them back.
- ``request_cancel`` stops the handlers of jobs whose cancellation was requested; they
  are recorded ``cancelled`` with no retry. ``abandon_all`` (this worker was declared
  lost and its jobs given to others) stops every handler, drops the claimed jobs not
  started yet, and writes nothing for any of them.
"""

from __future__ import annotations

import math
import random
import string
import time
import uuid
from collections import Counter, deque
from collections.abc import Sequence
from typing import Protocol

import anyio
import asyncpg
from anyio.abc import TaskGroup, TaskStatus

from listener.completer import Completer
from listener.db import is_transient
from listener.executor import Executor
from listener.held import HeldConnection
from listener.jobs import Job, Outcome
from listener.logs import get_logger
from listener.metrics import Metrics
from listener.outage import OutageLog
from listener.queries import QUERIES
from listener.wake import Wake

# Claims in a row that may continue a walk cut short by its tenant limit before the
# loop waits for a wake: bounds the work when the tenants walked have nothing this
# worker may take now (paused, or their jobs locked by other claims). Tenants whose
# jobs are all of kinds this worker does not handle are not walked at all.
MAX_PARTIAL_WALKS = 100
# A lone tenant may borrow idle slots beyond tenant_concurrency, but this share of the
# worker's slots (at least one) stays free for a tenant that comes next.
RESERVE_SHARE = 8
STREAM_PAUSE = 0.005
# Weight of the newest sample in the running average of claim durations.
SMOOTHING = 0.1
# How much the longest recent job duration fades with every job that ends.
JOB_FADE = 0.99


class Doorbell(Protocol):
    """What tells the database whether this worker waits to be woken (the listener)."""

    async def before_sleep(self) -> bool:
        """Called before each wait; True: claim once more first."""
        ...

    def sleep_limit(self, poll_interval: float) -> float:
        """The longest the next wait may be."""
        ...

    async def busy(self) -> None:
        """A backlog: no notification needed until the next wait."""
        ...


class _Runner:
    """What one runner task is doing."""

    __slots__ = ("deadline", "job", "scope", "started", "stop_reason")

    def __init__(self) -> None:
        self.job: Job | None = None
        self.scope = anyio.CancelScope()
        self.deadline = math.inf
        self.started = 0.0
        # Why the scope was cancelled: "timeout", "cancel" or "abandon".
        self.stop_reason: str | None = None


class Claimer:
    """Claims and runs jobs for one worker process."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        worker_id: uuid.UUID,
        kinds: Sequence[str],
        executor: Executor,
        completer: Completer,
        wake: Wake,
        doorbell: Doorbell,
        *,
        concurrency: int,
        tenant_concurrency: int,
        claim_batch: int,
        poll_interval: float,
        drain_timeout: float,
        metrics: Metrics,
        fifo: bool = False,
    ) -> None:
        self._db = HeldConnection(pool)
        self._worker_id = worker_id
        self._kinds = list(kinds)
        self._executor = executor
        self._completer = completer
        completer.when_stored(self._stored)
        self._wake = wake
        self._doorbell = doorbell
        self._concurrency = concurrency
        self._tenant_concurrency = tenant_concurrency
        self._claim_batch = claim_batch
        self._poll_interval = poll_interval
        self._drain_timeout = drain_timeout
        # fifo: the unfair global-order claim, only for comparison benchmarks.
        self._fifo = fifo
        self._metrics = metrics
        metrics.capacity.set(concurrency)
        metrics.in_flight.set_function(lambda: self._in_flight)
        # In a backlog, claim again once this many slots are free (or refill_wait passed).
        self._refill = max(1, min(claim_batch, concurrency) // 2)
        self._refill_wait = 0.002
        self._log = get_logger("claimer")
        self._outage = OutageLog(self._log, "claim")
        self._running: Counter[str] = Counter()
        # Tenants the last claims held to their local cap (tenant_concurrency): they may
        # have more ready jobs, so a slot of theirs that frees is claimed again at once.
        self._capped: set[str] = set()
        # The tenant that borrows idle slots: the only one with ready jobs, held to its
        # cap. It may run up to concurrency minus the reserve; every other tenant still
        # up to tenant_concurrency. None while no tenant borrows.
        self._lone: str | None = None
        self._lone_extra = max(
            0, concurrency - max(1, concurrency // RESERVE_SHARE) - tenant_concurrency
        )
        # Jobs this worker knows it holds: claimed (waiting or running), or finished
        # with the outcome not stored yet. Unknown ids the database reports are suspects
        # for one beat.
        self._known: set[int] = set()
        self._suspects: set[int] = set()
        # Claimed jobs waiting for a runner, by tenant; the tenants whose next waiting
        # job a runner may start now (under their cap of running jobs), in turn; how
        # many jobs of each tenant runners run. Then the runners' state and the runners
        # parked (idle).
        self._ready: dict[str, deque[Job]] = {}
        self._startable: deque[str] = deque()
        self._startable_set: set[str] = set()
        self._started: Counter[str] = Counter()
        self._holders: dict[int, _Runner] = {}
        self._parked: list[anyio.Event] = []
        self._runners = 0
        # Runners woken (or started) that have not taken a job yet: at most one, so a
        # batch of jobs that never wait is not spread over many task switches.
        self._waking = 0
        self._jobs: TaskGroup | None = None
        # The earliest deadline the watchdog waits for, and how to make it look again.
        self._next_deadline = math.inf
        self._deadlines_changed = anyio.Event()
        self._in_flight = 0
        self._unacked = 0
        self._slot_freed = anyio.Event()
        self._idle = anyio.Event()
        self._idle.set()
        self._stop = anyio.Event()
        self._stop_now = anyio.Event()
        # Start the round-robin at a random tenant so workers do not all begin together.
        self._cursor = random.choice(string.ascii_letters)
        # Tenants the claim being dispatched held to their cap (set by _claim).
        self._cap_held: list[str] = []
        self.claimed = self.claims = 0
        # Running averages of how long a claim takes and how long a job runs (seconds),
        # and the jobs claimed ahead of free slots that they give (see _free).
        self._claim_seconds, self._job_seconds, self._ahead = 0.0, math.inf, 0

    def _free(self) -> int:
        """Slots a claim may fill: jobs claimed and not finished stay under
        ``concurrency`` plus ``_ahead`` (the limit), and those plus finished jobs whose
        outcome is not stored yet under twice the limit.

        ``_ahead`` pipelines the claims: as many jobs as the runners finish while one
        claim is on its way (concurrency x claim time / job time, at most claim_batch)
        are claimed before their slots free, so the runners do not idle while the next
        claim runs. They wait for a runner, and their tenant's turn (see _take). Jobs
        that run longer than a claim takes get none (the ratio rounds down to 0), so
        no job waits for a runner behind a slow one."""
        limit = self._concurrency + self._ahead
        return min(limit - self._in_flight, 2 * limit - self._in_flight - self._unacked)

    def _update_ahead(self) -> None:
        """Jobs to claim ahead of free slots, from the running averages."""
        if self._job_seconds == math.inf:
            self._ahead = 0
            return
        covered = self._concurrency * self._claim_seconds / max(self._job_seconds, 1e-6)
        self._ahead = min(self._claim_batch, int(covered))

    @property
    def in_flight(self) -> int:
        """Jobs this worker has claimed and not finished (running or about to)."""
        return self._in_flight

    @property
    def failing(self) -> bool:
        """True from a claim that could not reach the database until one that did."""
        return self._outage.failing

    def request_cancel(self, job_ids: Sequence[int]) -> None:
        """Stop the handlers of these jobs (those running here); they end cancelled."""
        for job_id in job_ids:
            runner = self._holders.get(job_id)
            if runner is not None and runner.stop_reason is None:
                runner.stop_reason = "cancel"
                self._log.info("cancelling running job on request", job_id=job_id)
                runner.scope.cancel()

    def reconcile(self, held: Sequence[int]) -> list[int]:
        """Of the ids the database says this worker runs, those it has not known of at
        two calls in a row: claims whose reply never arrived. (One call is not enough:
        a claim's rows may be on their way while the database is asked.)"""
        unknown = {job_id for job_id in held if job_id not in self._known}
        orphans = unknown & self._suspects
        self._suspects = unknown - orphans
        return sorted(orphans)

    def abandon_all(self) -> None:
        """Stop every running handler and drop the claimed jobs not started yet, without
        recording an outcome: the jobs belong to other workers now."""
        for runner in self._holders.values():
            if runner.stop_reason != "abandon":
                runner.stop_reason = "abandon"
                runner.scope.cancel()
        waiting = [job for queue in self._ready.values() for job in queue]
        self._ready.clear()
        self._startable.clear()
        self._startable_set.clear()
        for job in waiting:
            self._release(job)
            self._known.discard(job.id)

    def stop(self, *, now: bool = False) -> None:
        """Stop claiming; with ``now`` skip the rest of the drain."""
        self._stop.set()
        if now:
            self._stop_now.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Claim until stopped, then drain. Returns when no job of ours is running."""
        try:
            async with anyio.create_task_group() as jobs:
                self._jobs = jobs
                jobs.start_soon(self._watch_deadlines)
                task_status.started()
                async with anyio.create_task_group() as loop:
                    loop.start_soon(self._claim_loop)
                    await self._stop.wait()
                    loop.cancel_scope.cancel()
                if self._in_flight:
                    self._log.info("draining", running=self._in_flight, timeout=self._drain_timeout)
                    with anyio.move_on_after(self._drain_timeout):
                        async with anyio.create_task_group() as waiters:
                            waiters.start_soon(self._cancel_on, self._stop_now, waiters)
                            await self._idle.wait()
                            waiters.cancel_scope.cancel()
                if self._in_flight:
                    self._log.warning(
                        "drain timeout: putting back running jobs", running=self._in_flight
                    )
                jobs.cancel_scope.cancel()
        finally:
            await self._db.release()

    @staticmethod
    async def _cancel_on(event: anyio.Event, group: TaskGroup) -> None:
        await event.wait()
        group.cancel_scope.cancel()

    async def _claim_loop(self) -> None:
        backlog = False
        partial_walks = 0
        while True:
            if self._free() <= 0:
                await self._wait_for_slots(1, None)
                continue
            if backlog:
                # A backlog with only a few free slots: give other running jobs a
                # couple of milliseconds to finish, so one claim fills many slots
                # instead of one round trip per finished job.
                await self._wait_for_slots(self._refill, self._refill_wait)
            want = min(self._free(), self._claim_batch)
            lone = self._lone
            claimed, walk_cut_short, more = await self._claim(want)
            if claimed:
                self._dispatch(claimed)
            if lone is None and self._lone is not None:
                continue  # a lone tenant may borrow the idle slots: claim them now
            # A full claim, or one where a tenant was held to its share, leaves ready
            # jobs behind: claim again as soon as there is room.
            backlog = bool(claimed) and (len(claimed) >= want or more)
            if backlog:
                await self._doorbell.busy()
            if backlog or self._outage.failing:
                # A failed claim is retried after its pause, not at the next wake: the
                # worker is not ready until a claim reaches the database again.
                continue
            if walk_cut_short and partial_walks < MAX_PARTIAL_WALKS:
                # The walk stopped at its tenant limit (past tenants with nothing for
                # us, say): go on from where it ended rather than wait for a poll.
                partial_walks += 1
                continue
            partial_walks = 0
            if claimed:
                # A stream of jobs (producers inserting one at a time): look again after
                # a short pause instead of asking every insert to notify.
                await self._doorbell.busy()
                await self._wake.wait(STREAM_PAUSE)
                continue
            if await self._doorbell.before_sleep():
                continue  # jobs may have come without a notification: look once more
            source = await self._wake.wait(self._doorbell.sleep_limit(self._poll_interval))
            self._metrics.wakes.labels(source).inc()

    async def _wait_for_slots(self, wanted: int, timeout: float | None) -> None:
        """Wait until ``wanted`` slots are free or ``timeout`` seconds passed."""
        with anyio.move_on_after(timeout):
            while self._free() < wanted:
                await self._slot_freed.wait()
                self._slot_freed = anyio.Event()

    async def _claim(self, want: int) -> tuple[list[Job], bool, bool]:
        """Claim up to ``want`` jobs; also say whether the tenant walk stopped at its
        limit (there may be more tenants after it) and whether a tenant was held to
        its share of the claim (it may have more ready jobs)."""
        # What each tenant running here counts against tenant_concurrency: its jobs, but
        # for the lone tenant fewer by the slots it may borrow (the count may go below
        # zero; the claim gives it tenant_concurrency minus the count).
        cap = self._claim_cap()
        busy = [(tenant, self._counted(tenant, count)) for tenant, count in self._running.items()]
        args: tuple[object, ...]
        if self._fifo:
            query, args = QUERIES["job_claim_fifo"], (self._worker_id, self._kinds, want)
        else:
            query, args = (
                QUERIES["job_claim"],
                (
                    self._worker_id,
                    self._kinds,
                    want,
                    cap,
                    [tenant for tenant, _ in busy],
                    [count for _, count in busy],
                    self._cursor,
                ),
            )
        began = time.monotonic()
        try:
            rows = await self._db.fetch(query, *args)
        except Exception as exc:
            if not is_transient(exc):
                raise
            again = self._outage.failing
            self._outage.failed(exc)
            if again:
                # Pause, but not past the listener's reconnect or a notification:
                # either says the database is back, and a job may be waiting.
                await self._wake.wait(min(self._poll_interval, 1.0))
            # else: a first failure is most often the kept connection the server
            # dropped (a restart); the retry, at once, takes a fresh one. Inserts do not
            # notify a worker that is not waiting, so a pause would leave their jobs
            # waiting for it.
            return [], False, False
        self._outage.succeeded()
        self.claims += 1
        took = time.monotonic() - began
        if self._claim_seconds == 0.0:
            self._claim_seconds = took
        else:
            self._claim_seconds += SMOOTHING * (took - self._claim_seconds)
        self._update_ahead()
        jobs: list[Job] = []
        cut_short = more = False
        walked = 0
        got: Counter[str] = Counter()
        for row in rows:
            if row["id"] is None:  # the walk summary row (job_claim only)
                if row["walk_end"] is not None:
                    self._cursor = row["walk_end"]
                walked = row["walked"]
                cut_short = walked >= want
                more = bool(row["more"])
                continue
            job = Job.from_record(row)
            got[job.tenant_id] += 1
            jobs.append(job)
        if not self._fifo:
            # A tenant that got all the slots it had free is held to its cap and may have
            # more ready jobs (see _capped, _dispatch).
            running_then = dict(busy)
            self._cap_held = [
                tenant
                for tenant, count in got.items()
                if count >= cap - running_then.get(tenant, 0)
            ]
            # A claim that filled its ask, or held a tenant to its share, says nothing
            # about whether a tenant has more.
            full = len(jobs) >= want or more
            # The walk ended before its limit (it found every tenant with ready jobs
            # it could serve), and every tenant it found got jobs.
            whole = walked < want and walked <= len(got)
            self._borrowing(got, running_then, cap, full=full, whole=whole)
        self._metrics.observe_claimed((job.kind, job.started_at, job.run_at) for job in jobs)
        self.claimed += len(jobs)
        return jobs, cut_short, more

    def _claim_cap(self, extra: int = 0) -> int:
        """The jobs of one tenant (``extra`` more for the lone tenant) this worker may
        hold claimed and not finished: its cap of running jobs, grown in proportion to
        the jobs claimed ahead (see _free), since those wait for a runner."""
        slots = self._tenant_concurrency + extra
        return math.ceil(slots * (self._concurrency + self._ahead) / self._concurrency)

    def _counted(self, tenant: str, running: int) -> int:
        """What ``running`` claimed jobs of ``tenant`` count against the claim's cap
        (``_claim_cap()``): all of them, but fewer by the slots the lone tenant borrows
        (the count may go below zero; the claim gives a tenant the cap minus it)."""
        if tenant == self._lone:
            return running - (self._claim_cap(self._lone_extra) - self._claim_cap())
        return running

    def _borrowing(
        self, got: Counter[str], counted: dict[str, int], cap: int, *, full: bool, whole: bool
    ) -> None:
        """After a claim (``got`` jobs per tenant, ``counted`` claimed jobs per tenant
        when it began, against ``cap``; ``full``: it filled its ask or held a tenant to
        its share; ``whole``: its walk found every tenant with ready jobs and each got
        jobs): decide whether a lone tenant borrows idle slots.

        A tenant starts borrowing when a whole claim found no tenant with ready jobs but
        that one, held to its cap (by this claim, or at it when the claim began), and no
        other tenant was at its cap then: no other tenant waits. It stops as soon as a
        claim serves another tenant (one has come: from the next claim on the lone
        tenant counts all its jobs again, so freed slots go to the newcomer until it is
        back under its cap), or when a claim that was not ``full`` gave it fewer jobs
        than it had slots for (its backlog is done)."""
        lone = self._lone
        if lone is not None:
            free = cap - counted.get(lone, 0)
            done = not full and free > 0 and got[lone] < free
            if done or any(tenant != lone for tenant in got):
                self._lone = None
        elif self._lone_extra > 0:
            # The tenants this claim held to their cap, and those it passed over for
            # being at it when it began (they may have ready jobs too).
            held = {tenant for tenant, count in counted.items() if count >= cap}
            held.update(self._cap_held)
            # The walk found every tenant with ready jobs, and they all are that one.
            if whole and len(held) == 1 and held.issuperset(got):
                (self._lone,) = held

    def _dispatch(self, jobs: list[Job]) -> None:
        """Hand claimed jobs to the runners."""
        if self._in_flight == 0:
            self._idle = anyio.Event()
        self._in_flight += len(jobs)
        running = self._running
        known = self._known
        ready = self._ready
        for job in jobs:
            tenant = job.tenant_id
            running[tenant] += 1
            known.add(job.id)
            queue = ready.get(tenant)
            if queue is None:
                queue = ready[tenant] = deque()
            queue.append(job)
            self._make_startable(tenant)
        held, self._cap_held = self._cap_held, []
        for tenant in held:
            if self._counted(tenant, running[tenant]) >= self._claim_cap():
                self._capped.add(tenant)
            else:
                # One of its jobs finished while the claim was on its way: a slot of a
                # tenant that may have more is free already.
                self._wake.set("slot")
        self._wake_runner()

    def _wake_runner(self) -> None:
        """Get one more runner onto the waiting jobs, unless one is on its way."""
        if self._waking or not self._startable:
            return
        if self._parked:
            self._waking += 1
            self._parked.pop().set()
        elif self._runners < self._concurrency and self._jobs is not None:
            self._waking += 1
            self._runners += 1
            self._jobs.start_soon(self._runner)
        # Otherwise every runner is busy, and each takes the next job when it is done.

    async def _runner(self) -> None:
        me = _Runner()
        self._waking -= 1
        try:
            while True:
                with anyio.CancelScope() as me.scope:
                    await self._run_jobs(me)
                self._interrupted(me)
        finally:
            self._runners -= 1
            job = me.job
            if job is not None:
                # Cancelled at shutdown (the drain timed out): the service puts it back.
                me.job = None
                del self._holders[job.id]
                self._stopped(job)
                self._release(job)
                self._known.discard(job.id)

    def _run_cap(self, tenant: str) -> int:
        """How many jobs of ``tenant`` runners may run at once."""
        if tenant == self._lone:
            return self._tenant_concurrency + self._lone_extra
        return self._tenant_concurrency

    def _take(self) -> Job | None:
        """The next job a runner may start: the first waiting job of the next tenant in
        turn that runs fewer jobs than its cap (None if there is none)."""
        startable, ready, started = self._startable, self._ready, self._started
        while startable:
            tenant = startable.popleft()
            self._startable_set.discard(tenant)
            queue = ready.get(tenant)
            if not queue:
                continue
            count = started[tenant]
            if count >= self._run_cap(tenant):
                continue  # its cap shrank (it stopped borrowing): back when one ends
            job = queue.popleft()
            started[tenant] = count + 1
            if not queue:
                del ready[tenant]
            elif count + 1 < self._run_cap(tenant):
                startable.append(tenant)
                self._startable_set.add(tenant)
            return job
        return None

    def _stopped(self, job: Job) -> None:
        """A runner is done with ``job``: its tenant may start its next waiting job."""
        tenant = job.tenant_id
        count = self._started[tenant] - 1
        if count:
            self._started[tenant] = count
        else:
            del self._started[tenant]
        if self._make_startable(tenant):
            self._wake_runner()

    def _make_startable(self, tenant: str) -> bool:
        """Put ``tenant`` in turn to start a job if it has one waiting and runs fewer
        than its cap; True if it was not in turn before."""
        if (
            tenant in self._startable_set
            or tenant not in self._ready
            or self._started[tenant] >= self._run_cap(tenant)
        ):
            return False
        self._startable.append(tenant)
        self._startable_set.add(tenant)
        return True

    async def _run_jobs(self, me: _Runner) -> None:
        """Run waiting jobs one after another; return when this runner's scope was
        cancelled during a job that still ended on its own (the scope is spent)."""
        while True:
            job = self._take()
            if job is None:
                await self._park()
                continue
            if self._startable:
                self._wake_runner()
            me.job = job
            self._holders[job.id] = me
            me.started = started = time.monotonic()
            me.deadline = started + job.timeout
            if me.deadline < self._next_deadline:
                self._deadlines_changed.set()
            outcome = await self._executor.attempt(job)
            me.job = None
            del self._holders[job.id]
            self._stopped(job)
            self._finished(job, outcome, me.started)
            if me.scope.cancel_called:
                return

    async def _park(self) -> None:
        """Wait until woken for more jobs."""
        event = anyio.Event()
        self._parked.append(event)
        try:
            await event.wait()
        finally:
            if event.is_set():
                self._waking -= 1
            else:
                self._parked.remove(event)

    async def _watch_deadlines(self) -> None:
        """Stop jobs that run past their timeout: sleeps until the earliest deadline of
        the running jobs, and looks again when a job starts with an earlier one."""
        while True:
            now = time.monotonic()
            soonest = math.inf
            for runner in self._holders.values():
                if runner.deadline <= now:
                    if runner.stop_reason is None:
                        runner.stop_reason = "timeout"
                        runner.scope.cancel()
                elif runner.deadline < soonest:
                    soonest = runner.deadline
            self._next_deadline = soonest
            with anyio.move_on_after(soonest - now):
                await self._deadlines_changed.wait()
            self._deadlines_changed = anyio.Event()

    def _interrupted(self, me: _Runner) -> None:
        """The runner's scope caught a cancellation: record how the job it ran ended."""
        job, me.job = me.job, None
        reason, me.stop_reason = me.stop_reason, None
        if job is None:
            return
        del self._holders[job.id]
        self._stopped(job)
        if reason == "abandon":
            self._release(job)
            self._known.discard(job.id)  # another worker's now
            return
        if reason == "cancel":
            self._metrics.jobs_cancelled_running.inc()
            outcome = Outcome(
                job.id, job.attempt, "cancelled", error="cancelled: requested while running"
            )
        else:
            outcome = self._executor.timed_out(job)
        self._finished(job, outcome, me.started)

    def _finished(self, job: Job, outcome: Outcome, started: float) -> None:
        """A handler ended with ``outcome``: free its slot and have the outcome stored."""
        self._release(job)
        took = time.monotonic() - started
        self._metrics.observe_finished(job.kind, outcome.label, took)
        # The longest recent job, fading by JOB_FADE per job: one long job stops the
        # claims ahead at once, and they resume only after many short ones.
        last = self._job_seconds
        self._job_seconds = took if last == math.inf else max(took, last * JOB_FADE)
        # The handler's slot is free, but the job stays `running` in the database until
        # its outcome is stored; such jobs are bounded too (see _free).
        self._unacked += 1
        self._completer.submit(outcome)

    def _stored(self, outcomes: Sequence[Outcome]) -> None:
        """The completer stored these outcomes (or they were fenced off)."""
        self._unacked -= len(outcomes)
        self._metrics.flush_finished()
        known = self._known
        for outcome in outcomes:
            known.discard(outcome.job_id)
        self._slot_freed.set()

    def _release(self, job: Job) -> None:
        self._in_flight -= 1
        tenant = job.tenant_id
        running = self._running[tenant]
        if tenant in self._capped and self._counted(tenant, running - 1) < self._claim_cap():
            # The tenant was held to its cap and is under it now, so it may have more
            # ready jobs: claim again now rather than at the next wake or poll.
            self._capped.discard(tenant)
            self._wake.set("slot")
        elif (
            self._lone is None
            and self._lone_extra
            and len(self._capped) == 1
            and tenant not in self._capped
        ):
            # One tenant is held to its cap and another's job ended: if that one has
            # nothing more, the capped tenant is alone and may borrow (see _borrowing).
            self._wake.set("slot")
        if running <= 1:
            del self._running[tenant]
        else:
            self._running[tenant] = running - 1
        self._slot_freed.set()
        if self._in_flight == 0:
            self._idle.set()
