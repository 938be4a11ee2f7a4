"""The runners: the tasks that run claimed jobs, with their cancel scopes and deadlines.

Invariants:
- At most ``concurrency`` runner tasks, started when needed and then kept (parked while
  there is nothing to run). A runner takes waiting jobs one after another and wakes one
  more runner whenever jobs are left waiting, so jobs that wait on I/O run side by side
  while jobs that never wait cost no task switch. No task is created per job.
- Tenants take turns: a runner starts the first waiting job of the next tenant in turn
  that runs fewer jobs than its cap (``TenantShares.run_cap``). A tenant is in turn
  (``_startable``) exactly while it has a waiting job and runs fewer than its cap.
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

import math
import time
from collections import Counter, deque
from collections.abc import Sequence
from typing import Protocol

import anyio
from anyio.abc import TaskGroup, TaskStatus

from listener.executor import Executor
from listener.jobs import Job, Outcome
from listener.logs import get_logger
from listener.metrics import Metrics
from listener.shares import TenantShares


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
        # Claimed jobs waiting for a runner, by tenant; the tenants in turn to start
        # one (a deque for the order, a set to test membership); how many jobs of each
        # tenant runners run; the runner running each job.
        self._ready: dict[str, deque[Job]] = {}
        self._startable: deque[str] = deque()
        self._startable_set: set[str] = set()
        self._started: Counter[str] = Counter()
        self._holders: dict[int, _Runner] = {}
        # Runners parked (idle), how many there are, and how many were woken (or
        # started) and have not taken a job yet: at most one, so a batch of jobs that
        # never wait is not spread over many task switches.
        self._parked: list[anyio.Event] = []
        self._runners = 0
        self._waking = 0
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
        ready, startable, startable_set = self._ready, self._startable, self._startable_set
        started, run_cap = self._started, self._shares.run_cap
        for job in jobs:
            tenant = job.tenant_id
            queue = ready.get(tenant)
            if queue is None:
                queue = ready[tenant] = deque()
            queue.append(job)
            if tenant not in startable_set and started[tenant] < run_cap(tenant):
                startable.append(tenant)
                startable_set.add(tenant)
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
        waiting = [job for queue in self._ready.values() for job in queue]
        self._ready.clear()
        self._startable.clear()
        self._startable_set.clear()
        for job in waiting:
            self._ends.dropped(job)

    def _wake_runner(self) -> None:
        """Get one more runner onto the waiting jobs, unless one is on its way."""
        if self._waking or not self._startable:
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

    def _take(self) -> Job | None:
        """The next job a runner may start: the first waiting job of the next tenant in
        turn that runs fewer jobs than its cap (None if there is none)."""
        startable, ready, started = self._startable, self._ready, self._started
        run_cap = self._shares.run_cap
        while startable:
            tenant = startable.popleft()
            self._startable_set.discard(tenant)
            queue = ready.get(tenant)
            if not queue:
                continue
            count = started[tenant]
            cap = run_cap(tenant)
            if count >= cap:
                continue  # its cap shrank (it stopped borrowing): back when one ends
            job = queue.popleft()
            started[tenant] = count + 1
            if not queue:
                del ready[tenant]
            elif count + 1 < cap:
                startable.append(tenant)
                self._startable_set.add(tenant)
            return job
        return None

    def _stopped(self, job: Job) -> None:
        """A runner is done with ``job``: its tenant may start its next waiting job."""
        tenant = job.tenant_id
        started = self._started
        count = started[tenant] - 1
        if count:
            started[tenant] = count
        else:
            del started[tenant]
        if (
            tenant not in self._startable_set
            and tenant in self._ready
            and count < self._shares.run_cap(tenant)
        ):
            self._startable.append(tenant)
            self._startable_set.add(tenant)
            self._wake_runner()

    async def _run_jobs(self, me: _Runner) -> None:
        """Run waiting jobs one after another; return when this runner's scope was
        cancelled during a job that still ended on its own (the scope is spent)."""
        holders, attempt = self._holders, self._executor.attempt
        while True:
            job = self._take()
            if job is None:
                await self._park()
                continue
            if self._startable:
                self._wake_runner()
            me.job = job
            holders[job.id] = me
            me.started = started = time.monotonic()
            me.deadline = started + job.timeout
            if me.deadline < self._next_deadline:
                self._deadlines_changed.set()
            outcome = await attempt(job)
            me.job = None
            del holders[job.id]
            self._stopped(job)
            self._ends.ended(job, outcome, started)
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
            self._ends.dropped(job)  # another worker's now
            return
        if reason == "cancel":
            self._metrics.jobs_cancelled_running.inc()
            outcome = Outcome(
                job.id, job.attempt, "cancelled", error="cancelled: requested while running"
            )
        else:
            outcome = self._executor.timed_out(job)
        self._ends.ended(job, outcome, me.started)
