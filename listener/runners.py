"""The runners: the tasks that run claimed jobs, with their cancel scopes and deadlines.

Invariants:
- At most ``concurrency`` runner tasks, started when needed and then kept (parked while
  there is nothing to run). A runner takes waiting jobs one after another and wakes one
  more runner whenever jobs are left waiting, so jobs that wait on I/O run side by side
  while jobs that never wait cost no task switch. No task is created per job.
- Tenants take turns: a runner starts the first waiting job of the next tenant in turn
  that runs fewer jobs than its cap (``TenantShares.run_cap``). A tenant is in turn
  exactly while it has a waiting job and runs fewer than its cap (``_Turns``). Where no
  cap can bind (``tenant_concurrency`` equals ``concurrency``), jobs start in the order
  the claim returned them, which interleaves tenants already (``_Fifo``), and nothing
  is counted per tenant.
- A runner lets the event loop turn once it has run jobs for ``RUN_SLICE`` seconds
  without waiting, and the other runners park meanwhile, so no other task waits longer
  than about that for a batch of jobs that never wait.
- A runner keeps one cancel scope for as long as its jobs end on their own. Stopping one
  job (a cancel request, an abandon, or its timeout, which one watchdog task enforces
  for all runners) cancels the scope of the runner running it, which records why and
  goes on in a fresh scope. Nothing per job touches a timer.
- Every job given to ``add`` ends exactly once at the ``JobEnds`` given: ``ended``
  with its outcome (returned, raised, timed out, or cancelled on request), or
  ``dropped`` with none (``abandon_all``, or cancelled with the runners at the end of
  the drain).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Sequence
from typing import Protocol

import anyio
from anyio.abc import TaskGroup, TaskStatus

from listener.executor import Executor
from listener.jobs import Job, Outcome
from listener.logs import get_logger
from listener.metrics import Metrics
from listener.shares import TenantShares

# Seconds a runner runs jobs that never wait before it lets the event loop turn once. A
# claim of hundreds of jobs that return at once would otherwise hold the loop until the
# last one ends: the next claim's reply, notifications and outcome writes would wait for
# all of them, and the claim would look as slow as the batch (its pace sizes claims).
RUN_SLICE = 0.002


class JobEnds(Protocol):
    """Where the runners report how each job ended (the claimer)."""

    def ended(self, job: Job, outcome: Outcome, started: float) -> None:
        """``job``'s handler, started at ``started`` (monotonic), ended with ``outcome``."""
        ...

    def dropped(self, job: Job) -> None:
        """``job`` leaves this worker with no outcome to record."""
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


class _Turns:
    """Waiting jobs by tenant, and the tenants in turn to start one: a tenant is in
    turn exactly while it has a waiting job and runs fewer jobs than its cap."""

    __slots__ = ("_ready", "_run_cap", "_started", "_turn", "_turn_set")

    def __init__(self, shares: TenantShares) -> None:
        self._run_cap = shares.run_cap
        self._ready: dict[str, deque[Job]] = {}
        # The tenants in turn (a deque for the order, a set to test membership), and
        # how many jobs of each tenant runners run.
        self._turn: deque[str] = deque()
        self._turn_set: set[str] = set()
        # A plain dict, not a Counter: a tenant's count comes and goes with nearly every
        # job that never waits, and a Counter's missing key and deletion are Python calls.
        self._started: dict[str, int] = {}

    def __bool__(self) -> bool:
        """True while a runner may start a job."""
        return bool(self._turn)

    def add(self, jobs: Sequence[Job]) -> None:
        ready, turn, turn_set = self._ready, self._turn, self._turn_set
        started, run_cap = self._started, self._run_cap
        for job in jobs:
            tenant = job.tenant_id
            queue = ready.get(tenant)
            if queue is None:
                queue = ready[tenant] = deque()
            queue.append(job)
            if tenant not in turn_set and started.get(tenant, 0) < run_cap(tenant):
                turn.append(tenant)
                turn_set.add(tenant)

    def take(self) -> Job | None:
        """The first waiting job of the next tenant in turn (None if none is)."""
        turn, ready, started, run_cap = self._turn, self._ready, self._started, self._run_cap
        while turn:
            tenant = turn.popleft()
            self._turn_set.discard(tenant)
            queue = ready.get(tenant)
            if not queue:
                continue
            count = started.get(tenant, 0)
            cap = run_cap(tenant)
            if count >= cap:
                continue  # its cap shrank (it stopped borrowing): back when one ends
            job = queue.popleft()
            started[tenant] = count + 1
            if not queue:
                del ready[tenant]
            elif count + 1 < cap:
                turn.append(tenant)
                self._turn_set.add(tenant)
            return job
        return None

    def stopped(self, job: Job) -> bool:
        """A runner is done with ``job``. True if its tenant came in turn again."""
        tenant = job.tenant_id
        started = self._started
        count = started[tenant] - 1
        if count:
            started[tenant] = count
        else:
            del started[tenant]
        if tenant not in self._turn_set and tenant in self._ready and count < self._run_cap(tenant):
            self._turn.append(tenant)
            self._turn_set.add(tenant)
            return True
        return False

    def clear(self) -> list[Job]:
        """Drop every waiting job; return them."""
        waiting = [job for queue in self._ready.values() for job in queue]
        self._ready.clear()
        self._turn.clear()
        self._turn_set.clear()
        return waiting


class _Fifo:
    """Waiting jobs in claim order, when no tenant's cap can bind (``tenant_concurrency``
    equals ``concurrency``): the claim already interleaves tenants, and nothing per
    tenant needs counting."""

    __slots__ = ("_queue",)

    def __init__(self) -> None:
        self._queue: deque[Job] = deque()

    def __bool__(self) -> bool:
        return bool(self._queue)

    def add(self, jobs: Sequence[Job]) -> None:
        self._queue.extend(jobs)

    def take(self) -> Job | None:
        queue = self._queue
        return queue.popleft() if queue else None

    def stopped(self, job: Job) -> bool:
        return False

    def clear(self) -> list[Job]:
        waiting = list(self._queue)
        self._queue.clear()
        return waiting


class Runners:
    """Runs claimed jobs, tenants in turn, each under its timeout."""

    def __init__(
        self,
        executor: Executor,
        shares: TenantShares,
        ends: JobEnds,
        *,
        concurrency: int,
        metrics: Metrics,
    ) -> None:
        self._executor = executor
        self._shares = shares
        self._ends = ends
        self._concurrency = concurrency
        self._metrics = metrics
        self._log = get_logger("runners")
        # Claimed jobs waiting for a runner, and the runner running each job.
        self._waiting = _Turns(shares) if shares.caps_bind else _Fifo()
        self._holders: dict[int, _Runner] = {}
        # Runners parked (idle), how many there are, and how many were woken (or
        # started) and have not taken a job yet: at most one, so a batch of jobs that
        # never wait is not spread over many task switches.
        self._parked: list[anyio.Event] = []
        self._runners = 0
        self._waking = 0
        # Runners letting the loop turn between jobs that never wait (at most one runs
        # such jobs at a time). A runner that finds one parks instead of taking a job:
        # woken because jobs were left waiting, it would run a slice of its own before
        # the other tasks' next turn, and wake one more, up to ``concurrency`` slices.
        self._slicing = 0
        # Turns of the event loop since the runners began counting, and whether a tick
        # to count the next one is scheduled (see _arm_tick).
        self._turns = 0
        self._tick_armed = False
        self._tasks: TaskGroup | None = None
        # The earliest deadline the watchdog waits for, and how to make it look again.
        self._next_deadline = math.inf
        self._deadlines_changed = anyio.Event()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Hold the runner tasks and the deadline watchdog until cancelled (which
        cancels every running handler; their jobs are ``dropped``)."""
        async with anyio.create_task_group() as tasks:
            self._tasks = tasks
            task_status.started()
            await self._watch_deadlines()

    def add(self, jobs: Sequence[Job]) -> None:
        """Queue claimed jobs for the runners, each behind its tenant's earlier ones."""
        self._waiting.add(jobs)
        self._wake_runner()

    def request_cancel(self, job_ids: Sequence[int]) -> None:
        """Stop the handlers of these jobs (those running here); they end cancelled."""
        for job_id in job_ids:
            runner = self._holders.get(job_id)
            if runner is not None and runner.stop_reason is None:
                runner.stop_reason = "cancel"
                self._log.info("cancelling running job on request", job_id=job_id)
                runner.scope.cancel()

    def abandon_all(self) -> None:
        """Stop every running handler and drop the jobs not started yet, recording no
        outcome for any: the jobs belong to other workers now."""
        for runner in self._holders.values():
            if runner.stop_reason != "abandon":
                runner.stop_reason = "abandon"
                runner.scope.cancel()
        for job in self._waiting.clear():
            self._ends.dropped(job)

    def _wake_runner(self) -> None:
        """Get one more runner onto the waiting jobs, unless one is on its way."""
        if self._waking or not self._waiting:
            return
        if self._parked:
            self._waking += 1
            self._parked.pop().set()
        elif self._runners < self._concurrency and self._tasks is not None:
            self._waking += 1
            self._runners += 1
            self._tasks.start_soon(self._runner)
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
                # Cancelled with the runners (the drain timed out): the service puts
                # it back.
                me.job = None
                del self._holders[job.id]
                self._stopped(job)
                self._ends.dropped(job)

    def _stopped(self, job: Job) -> None:
        """A runner is done with ``job``: its tenant may start its next waiting job."""
        if self._waiting.stopped(job):
            self._wake_runner()

    async def _run_jobs(self, me: _Runner) -> None:
        """Run waiting jobs one after another; return when this runner's scope was
        cancelled during a job that still ended on its own (the scope is spent)."""
        holders, attempt, waiting = self._holders, self._executor.attempt, self._waiting
        # When this runner's slice began, and the loop's turns then (see _arm_tick).
        seen, turned = self._arm_tick(), time.monotonic()
        while True:
            job = None if self._slicing else waiting.take()
            if job is None:
                # Nothing waits, or another runner only lets the loop turn between jobs
                # that never wait and goes on with them: this one is not needed.
                await self._park()
                seen, turned = self._arm_tick(), time.monotonic()
                continue
            if waiting:
                self._wake_runner()
            me.job = job
            holders[job.id] = me
            me.started = started = time.monotonic()
            me.deadline = deadline = started + job.timeout
            if deadline < self._next_deadline:
                # The watchdog looks again when it next runs; until then the later
                # jobs of the batch need not tell it (it sees them all then).
                self._next_deadline = deadline
                self._deadlines_changed.set()
            outcome = await attempt(job)
            me.job = None
            del holders[job.id]
            self._stopped(job)
            self._ends.ended(job, outcome, started)
            if me.scope.cancel_called:
                return
            if started - turned >= RUN_SLICE:
                if self._turns == seen:
                    # Jobs have run for a slice and none waited: let the tasks that are
                    # ready run, the runners among them park (see _slicing).
                    self._slicing += 1
                    try:
                        await anyio.lowlevel.checkpoint()
                    finally:
                        self._slicing -= 1
                seen, turned = self._arm_tick(), time.monotonic()

    def _arm_tick(self) -> int:
        """The loop's turns counted so far, with a tick scheduled to count the next:
        a runner that sees the count change knows the loop has turned since (one of its
        jobs waited), and needs not let it turn."""
        if not self._tick_armed:
            self._tick_armed = True
            asyncio.get_running_loop().call_soon(self._tick)
        return self._turns

    def _tick(self) -> None:
        self._tick_armed = False
        self._turns += 1

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
            self._ends.dropped(job)  # another worker's now
            return
        if reason == "cancel":
            self._metrics.jobs_cancelled_running.inc()
            outcome = self._executor.cancelled(job, me.started)
        else:
            outcome = self._executor.timed_out(job, me.started)
        self._ends.ended(job, outcome, me.started)
