"""The claim loop and its sizing: claims jobs in batches sized to free capacity and
hands them to the runners (runners.py); the ledger (ledger.py) counts what the worker
holds and the tenants' shares (shares.py) cap each tenant.

Invariants:
- Never holds more handlers running than ``concurrency``, nor more than
  ``tenant_concurrency`` of one tenant while another tenant has ready jobs: the claim
  asks only for free slots, per tenant, in the SQL itself, and the runners start a
  tenant's next job only under its cap (see shares.py for the lone tenant that borrows
  idle slots). A handler's slot frees when it returns, while its outcome is written in
  the background.
- Claims are pipelined and sized by time: when jobs run shorter than a claim takes,
  twice as many jobs as the runners finish during one claim (that many at most
  ``claim_batch``) are claimed ahead of free slots, and a tenant's share of claimed
  jobs grows in proportion, so the runners do not idle while the next claim runs and
  each claim of a backlog is a full one (see ``_free``). A claim asks for no more than
  the runners finish during one claim (at least ``concurrency``; ``_claim_size``), nor
  for more rows than the database claims in ``CLAIM_BUDGET`` seconds at the pace the
  last large claims showed, so a job inserted meanwhile does not wait for a longer
  claim than it must. Jobs that run longer than ``concurrency`` claims take are
  claimed only for free slots.
- Claims only kinds in the registry, on one pool connection kept for the purpose
  (``KeptConnection``), so a claim is one round trip.
- Claims with ``job_claim_plain`` while nothing but fairness decides (no rate limit
  on its kinds, no ready job above the default priority: the statement checks), and
  with the full ``job_claim`` for ``FULL_CLAIM_HOLD`` seconds after a plain claim said
  otherwise (it then took nothing, and the full claim runs at once).
- Claims again as soon as there is room while the last claim came back full (a
  backlog), batching freed slots for a couple of milliseconds so a claim is not one
  round trip per finished job.
- While claims find jobs but are not full (a stream: producers inserting one job at a
  time), looks again every ``STREAM_PAUSE`` seconds (a freed slot of a tenant held to
  its cap, a reconnect, or an outcome write of this worker that released waiting jobs
  or inserted child jobs ends the pause early, a notification does not) with inserts
  told not to notify (``Doorbell.busy``): a notifying commit holds a database-wide
  lock until it is on disk, so a NOTIFY per insert would make the producers commit one
  at a time, and a wake-up per insert would cost a claim per job. Only a claim that
  finds nothing leads to a wait for a wake (NOTIFY, promotion, reconnect) or the poll
  interval.
- A tenant a claim held to its cap may have more ready jobs: the first of its jobs to
  end afterwards wakes the claim loop, so its backlog never waits for a NOTIFY or the
  poll (``TenantShares.freed``).
- Inserts notify only while this worker waits (``Doorbell``, the listener): before
  each wait the claimer asks ``before_sleep`` and claims once more when told to, so a
  job committed while the worker was busy is never left waiting for the poll. A claim
  that could not reach the database is tried again at once, then every second (at most
  the poll interval) until one does, and at once when the listener reconnects or a
  notification comes.
- A claim that finds nothing while a rate limit holds jobs back (a tenant's or a
  kind's window is full) sleeps until the earliest such window opens
  (``reopens_in`` from the claim, measured on the database's clock), not until the
  poll interval: held-back jobs start as soon as their window allows.
- After ``stop()`` no new claim starts. Running jobs get ``drain_timeout`` seconds to
  finish; the rest are cancelled, and the service puts them back.
- Every job a claim returned is in the ledger from its claim until its outcome is
  stored or it is dropped; each handler's end is counted there once (``ended`` or
  ``dropped``, from the runners) and its outcome given to the ``OutcomeSink`` once.
"""

from __future__ import annotations

import math
import random
import string
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from typing import Protocol

import anyio
import asyncpg
from anyio.abc import TaskGroup, TaskStatus

from listener.db import is_transient
from listener.executor import Executor
from listener.jobs import Job, Outcome
from listener.kept_connection import KeptConnection
from listener.ledger import Ledger
from listener.logs import get_logger
from listener.metrics import WAKE_SOURCES, Metrics
from listener.outage import OutageLog
from listener.queries import QUERIES
from listener.runners import Runners
from listener.shares import TenantShares
from listener.wake import NotifiedJob, Wake

# Claims in a row that may continue a walk cut short by its tenant limit before the
# loop waits for a wake: bounds the work when the tenants walked have nothing this
# worker may take now (paused, or their jobs locked by other claims). Tenants whose
# jobs are all of kinds this worker does not handle are not walked at all.
MAX_PARTIAL_WALKS = 100
# Seconds between two claims while claims find jobs but are not full (a stream of
# single inserts): the start latency this adds is half of it on average, and each
# claim and outcome write costs the worker about as much CPU again as a dozen jobs.
# Beside 8 producers on 2 cores (pgwake bench mixed, alternating), 5 ms left them
# 4,794-4,976 rows/s at a start p50 of 6.0 ms, the worker at 34-35 us of CPU a job;
# 8 ms 5,146-5,221 at 7.9 ms, 29 us a job; 10 ms 5,176-5,185 at 9.3 ms (no worker:
# 6,265-6,454). Past 8 ms the producers gain nothing more. Jobs that this worker's own
# outcome writes make ready (dependents, children) do not wait for the pause.
STREAM_PAUSE = 0.008
# Weight of the newest sample in the running averages of claim durations.
SMOOTHING = 0.1
# Seconds one claim should take at most: a backlog of short jobs is claimed in batches
# of as many rows as the database claims in this time (at the pace of the last large
# claims), at least ``concurrency``, at most ``claim_batch``. A claim of 1,000 rows
# took 20 to 56 ms on 2 busy cores (pgwake bench warm-start); a job of another tenant
# committed meanwhile waits for it, and for the next claim: up to twice this. With
# 20 ms, once claims ahead were sized by the average job, a small tenant's job beside
# a big tenant's 1 ms jobs waited up to 36 ms (p99 of three runs: 36, 17 and 7 ms;
# with 10 ms: 5, 6 and 8 ms).
CLAIM_BUDGET = 0.01
# Rows a claim must return for its pace (seconds per row) to count in full: below it,
# the claim's fixed cost (the statement, the tenant walk) would dominate. A smaller
# claim's pace is an upper bound of the real one, so it counts only where it is faster
# than the running average: a pace made slow by one stalled claim is mended by the
# claims of ``concurrency`` rows it still allows.
PACE_MIN_ROWS = 64
# Rows a claim may ask for before any large claim has shown the pace.
FIRST_BUDGET_ROWS = 256
# How much the longest recent job duration fades with every job that ends.
JOB_FADE = 0.99
# Seconds the worker runs the full claim (job_claim) after a plain one (job_claim_plain)
# said a rate limit or a priority above 0 is in play, before it tries the plain one
# again.
FULL_CLAIM_HOLD = 10.0
# Seconds added to a window's opening before the claim that follows it, so that the
# claim's now() is past the opening even with the round trip's jitter.
REOPEN_MARGIN = 0.001


def _running_average(average: float, sample: float) -> float:
    """``average`` moved towards ``sample`` by ``SMOOTHING``; the sample itself when
    ``average`` is 0.0 (no sample yet)."""
    if average == 0.0:
        return sample
    return average + SMOOTHING * (sample - average)


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


class OutcomeSink(Protocol):
    """Where finished jobs' outcomes go to be stored (the completer)."""

    def submit(self, outcome: Outcome) -> None:
        """Store ``outcome`` soon; never blocks."""
        ...


class Claimer:
    """Claims jobs for one worker process and hands them to its runners."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        worker_id: uuid.UUID,
        kinds: Sequence[str],
        executor: Executor,
        outcomes: OutcomeSink,
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
        notified: NotifiedJob | None = None,
    ) -> None:
        # Claims plan ordered index probes whatever the statistics say (see the query).
        self._db = KeptConnection(pool, setup=QUERIES["worker_set_claim_session"])
        # The job the notifications name while this worker waits (filled by the
        # listener); its own, never filled, when none is given.
        self._notified = notified if notified is not None else NotifiedJob()
        self._worker_id = worker_id
        self._kinds = list(kinds)
        self._outcomes = outcomes
        self._wake = wake
        self._doorbell = doorbell
        self._concurrency = concurrency
        self._claim_batch = claim_batch
        self._poll_interval = poll_interval
        self._drain_timeout = drain_timeout
        # fifo: the unfair global-order claim, only for comparison benchmarks.
        self._fifo = fifo
        self._metrics = metrics
        # The labelled counters the wake-up path bumps, looked up once: a lookup by label
        # costs more than the increment, and the path runs cold after every idle wait.
        self._wakes = {source: metrics.wakes.labels(source) for source in WAKE_SOURCES}
        self._notified_claims = {
            result: metrics.notified_claims.labels(result)
            for result in ("claimed", "taken", "passed")
        }
        self.ledger = Ledger()
        self.shares = TenantShares(concurrency=concurrency, tenant_concurrency=tenant_concurrency)
        self.runners = Runners(
            executor, self.shares, self, concurrency=concurrency, metrics=metrics
        )
        # In a backlog, claim again once this many slots are free (or refill_wait passed).
        self._refill = max(1, min(claim_batch, concurrency) // 2)
        self._refill_wait = 0.002
        self._log = get_logger("claimer")
        self._outage = OutageLog(self._log, "claim")
        self._stop = anyio.Event()
        self._stop_now = anyio.Event()
        # Start the round-robin at a random tenant so workers do not all begin together.
        self._cursor = random.choice(string.ascii_letters)
        # Tenants the claim being dispatched held to their cap (set by _claim).
        self._cap_held: list[str] = []
        # Seconds until the earliest full rate limit window opens, from the last claim
        # (None: no window is full).
        self._reopens_in: float | None = None
        # Until when (monotonic seconds) claims are the full job_claim; before that, and
        # while nothing but fairness decides, job_claim_plain.
        self._full_until = 0.0
        # The running average of how long a claim takes, the longest recent job (fading;
        # inf: none ended yet) and the running average of how long a job runs (seconds),
        # and the jobs claimed ahead of free slots that they give (see _update_ahead).
        self._claim_seconds, self._job_seconds, self._ahead = 0.0, math.inf, 0
        self._job_mean = 0.0
        # Running average of the seconds a claim took per row (0.0: none yet; see
        # _update_pace).
        self._row_seconds = 0.0

    def _free(self) -> int:
        """Slots a claim may fill: jobs claimed and not finished stay under
        ``concurrency`` plus ``_ahead`` (the limit), and those plus finished jobs whose
        outcome is not stored yet under twice the limit.

        ``_ahead`` pipelines the claims. Call *covered* the jobs the runners finish
        while one claim is on its way (concurrency x claim time / the average job's
        time, at most claim_batch). The next claim is sent while the last one's jobs
        still run, and it must bring as many as the runners finish before it returns:
        so twice *covered* are claimed before their slots free. The runners do not idle
        while a claim runs, and in a backlog every claim is a full one. (With only *covered*
        ahead, each full claim left room for no more than ``concurrency`` jobs, so it
        was followed by a round trip for that few: the default settings drained a
        backlog of short jobs at 0.7 x the rate of the widest ones.) Claimed jobs wait
        for a runner, and their tenant's turn. While the longest recent job ran longer
        than ``concurrency`` claims take, none are claimed ahead, so no job waits for
        a runner behind a slow one."""
        limit = self._concurrency + self._ahead
        ledger = self.ledger
        return min(limit - ledger.in_flight, 2 * limit - ledger.in_flight - ledger.unacked)

    def _claim_size(self) -> int:
        """The most one claim asks for: what the runners finish during one claim (half
        of ``_ahead``), at least ``concurrency``, at most ``claim_batch``, and no more
        rows than fit in ``CLAIM_BUDGET`` (at least ``concurrency``). A claim larger
        than what the runners need before the next one returns would take longer, and
        a job inserted meanwhile would wait for it."""
        size = min(self._claim_batch, max(self._concurrency, self._ahead // 2))
        return min(size, max(self._concurrency, self._budget_rows()))

    def _budget_rows(self) -> int:
        """Rows the database claims in ``CLAIM_BUDGET`` seconds at the pace of the last
        large claims (``FIRST_BUDGET_ROWS`` before any)."""
        if self._row_seconds == 0.0:
            return FIRST_BUDGET_ROWS
        return int(CLAIM_BUDGET / self._row_seconds)

    def _update_pace(self, took: float, rows: int) -> None:
        """A claim returned ``rows`` jobs in ``took`` seconds: the running average of
        seconds per row, from claims large enough to tell (``PACE_MIN_ROWS``); a
        smaller claim (its fixed cost counted in) only where it shows a faster pace."""
        if rows == 0:
            return
        per_row = took / rows
        if rows < PACE_MIN_ROWS and not 0.0 < per_row < self._row_seconds:
            return
        self._row_seconds = _running_average(self._row_seconds, per_row)

    def _update_ahead(self, took: float) -> None:
        """Jobs to claim ahead of free slots (with a claim that took ``took`` seconds):
        twice those the runners finish during one claim (see ``_free``), a rate, so
        from the average job's duration; none while the longest recent job ran longer
        than ``concurrency`` claims take, so no claimed job waits for a runner behind
        a slow one. (Sized by the longest job, the runners of a lone tenant's 1 ms jobs
        held 23 to 24 of its 30 slots busy, with claims that brought fewer jobs than
        ended while they ran; by the average, 26.)"""
        self._claim_seconds = _running_average(self._claim_seconds, took)
        if self._concurrency * self._claim_seconds < self._job_seconds:  # inf: no job yet
            self._ahead = 0
            return
        covered = self._concurrency * self._claim_seconds / max(self._job_mean, 1e-6)
        self._ahead = 2 * min(self._claim_batch, int(covered))

    @property
    def in_flight(self) -> int:
        """Jobs this worker has claimed and not finished (running or about to)."""
        return self.ledger.in_flight

    @property
    def failing(self) -> bool:
        """True from a claim that could not reach the database until one that did."""
        return self._outage.failing

    @property
    def failure(self) -> str | None:
        """Why the last claim could not reach the database (None while claims work)."""
        return self._outage.reason

    # What the heartbeat and the cancel checker ask of the jobs held (heartbeat.HeldJobs).

    def request_cancel(self, job_ids: Sequence[int]) -> None:
        """Stop the handlers of these jobs (those running here); they end cancelled."""
        self.runners.request_cancel(job_ids)

    def reconcile(self, held: Sequence[int]) -> list[int]:
        """Of the ids the database says this worker runs, those it never claimed (see
        ``Ledger.reconcile``)."""
        return self.ledger.reconcile(held)

    def abandon_all(self) -> None:
        """Stop every running handler and drop the claimed jobs not started yet, without
        recording an outcome: the jobs belong to other workers now."""
        self.runners.abandon_all()

    # How the runners report a job's end (runners.JobEnds).

    def ended(self, job: Job, outcome: Outcome, started: float) -> None:
        """A handler ended with ``outcome``: free its slot and have the outcome stored."""
        self._left(job, self.ledger.ended(job))
        took = time.monotonic() - started
        self._metrics.observe_finished(
            job.kind, outcome.label, took, tenant=job.tenant_id, records=outcome.records
        )
        # The longest recent job, fading by JOB_FADE per job: one long job stops the
        # claims ahead at once, and they resume only after many short ones. The average
        # job sizes them (_update_ahead).
        last = self._job_seconds
        self._job_seconds = took if last == math.inf else max(took, last * JOB_FADE)
        self._job_mean = _running_average(self._job_mean, took)
        # The handler's slot is free, but the job stays `running` in the database until
        # its outcome is stored; such jobs are bounded too (see _free).
        self._outcomes.submit(outcome)

    def dropped(self, job: Job) -> None:
        """A job left with no outcome to record (abandoned, or cut off at shutdown)."""
        self._left(job, self.ledger.dropped(job))

    def _left(self, job: Job, claimed_before: int) -> None:
        if self.shares.freed(job.tenant_id, claimed_before, self._ahead):
            self._wake.set("slot")

    # What the completer reports (Completer.when_stored).

    def stored(self, outcomes: Sequence[Outcome]) -> None:
        """The completer stored these outcomes (or they were fenced off)."""
        self.ledger.stored(outcome.job_id for outcome in outcomes)
        self._metrics.flush_finished()

    def stop(self, *, now: bool = False) -> None:
        """Stop claiming; with ``now`` skip the rest of the drain."""
        self._stop.set()
        if now:
            self._stop_now.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Claim until stopped, then drain. Returns when no job of ours is running."""
        ledger = self.ledger
        try:
            async with anyio.create_task_group() as jobs:
                await jobs.start(self.runners.run)
                task_status.started()
                async with anyio.create_task_group() as loop:
                    loop.start_soon(self._claim_loop)
                    await self._stop.wait()
                    loop.cancel_scope.cancel()
                if ledger.in_flight:
                    self._log.info(
                        "draining", running=ledger.in_flight, timeout=self._drain_timeout
                    )
                    with anyio.move_on_after(self._drain_timeout):
                        async with anyio.create_task_group() as waiters:
                            waiters.start_soon(self._cancel_on, self._stop_now, waiters)
                            await ledger.wait_idle()
                            waiters.cancel_scope.cancel()
                if ledger.in_flight:
                    self._log.warning(
                        "drain timeout: putting back running jobs", running=ledger.in_flight
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
            want = min(self._free(), self._claim_size())
            lone = self.shares.lone
            claimed, walk_cut_short, more = await self._claim(want)
            if claimed:
                self._dispatch(claimed)
            else:
                self._remember_capped()
            if lone is None and self.shares.lone is not None:
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
                # A stream: look again shortly, with inserts not notifying meanwhile.
                # A notification does not end the pause: inserts do not notify a worker
                # in a stream, so one that comes anyway is from an insert that could
                # not tell (two inserts trying the waiting lock at the same instant,
                # tens a second beside 8 producers) or anyone's NOTIFY, and the claim
                # at the end of the pause takes its job. (Ended by each, the pause was
                # cut short in a third of the cycles of `pgwake bench mixed`, every cut
                # a claim and an outcome write more, each for fewer jobs.)
                await self._doorbell.busy()
                await self._wake.pause(STREAM_PAUSE, ignore="notify")
                continue
            await self._idle()

    async def _idle(self) -> None:
        """Wait while the queue holds nothing this worker may take; return when the whole
        queue must be looked at (a full claim). A notification that names the one ready
        job a single-row insert added is claimed here by its id, and the worker waits
        again: it was the only new job, since every insert notifies while the worker
        waits. One that comes within ``STREAM_PAUSE`` of the last claim by id is a
        stream: the full claim takes it and the ones after it in batches, with inserts
        not notifying (each notifying commit holds a database-wide lock until it is on
        disk, so a notification per insert would make producers commit one at a time)."""
        claimed_at = -math.inf
        while True:
            if await self._doorbell.before_sleep():
                return  # jobs may have come without a notification: look once more
            source = await self._sleep()
            job_id = self._notified.take() if source == "notify" else None
            if job_id is None or self._fifo or self._free() <= 0:
                return
            if time.monotonic() - claimed_at < STREAM_PAUSE:
                return
            result = await self._claim_notified(job_id)
            if result == "passed":
                return
            if result == "claimed":
                claimed_at = time.monotonic()
            # else "taken": another worker has it (or no such job): nothing came for us.

    async def _sleep(self) -> str:
        """Wait for a wake, the poll interval, or the opening of the earliest full rate
        limit window, whichever comes first; return what woke it."""
        limit = self._doorbell.sleep_limit(self._poll_interval)
        reopens = self._reopens_in
        if reopens is not None and reopens + REOPEN_MARGIN < limit:
            # Jobs held back by a full rate limit window: look when it opens.
            source = await self._wake.wait(max(reopens, 0.0) + REOPEN_MARGIN)
            if source == "poll":
                source = "rate_limit"
        else:
            source = await self._wake.wait(limit)
        counter = self._wakes.get(source)
        (counter or self._metrics.wakes.labels(source)).inc()
        return source

    async def _wait_for_slots(self, wanted: int, timeout: float | None) -> None:
        """Wait until ``wanted`` slots are free or ``timeout`` seconds passed."""
        with anyio.move_on_after(timeout):
            while self._free() < wanted:
                await self.ledger.wait_freed()

    def _counted(self) -> tuple[int, dict[str, int]]:
        """The claim's cap per tenant, and what each tenant holding jobs here counts
        against it (see TenantShares.counted)."""
        shares, ahead = self.shares, self._ahead
        counted = {
            tenant: shares.counted(tenant, count, ahead)
            for tenant, count in self.ledger.claimed.items()
        }
        return shares.claim_cap(ahead), counted

    @staticmethod
    def _held(got: Counter[str], counted: dict[str, int], cap: int) -> list[str]:
        """The tenants a claim that gave them ``got`` jobs held to their cap: they got
        every slot they had free, and may have more ready jobs."""
        return [tenant for tenant, count in got.items() if count >= cap - counted.get(tenant, 0)]

    def _statement(
        self, want: int, cap: int, busy: dict[str, int]
    ) -> tuple[str, tuple[object, ...]]:
        """The claim statement to run now and its arguments: the plain claim while
        nothing but fairness decides, else the full one (or the fifo comparison)."""
        if self._fifo:
            return QUERIES["job_claim_fifo"], (self._worker_id, self._kinds, want)
        plain = time.monotonic() >= self._full_until
        return QUERIES["job_claim_plain"] if plain else QUERIES["job_claim"], (
            self._worker_id,
            self._kinds,
            want,
            cap,
            list(busy),
            list(busy.values()),
            self._cursor,
        )

    async def _claim(self, want: int) -> tuple[list[Job], bool, bool]:
        """Claim up to ``want`` jobs; also say whether the tenant walk stopped at its
        limit (there may be more tenants after it) and whether a tenant was held to
        its share of the claim (it may have more ready jobs)."""
        # What each tenant holding jobs here counts against tenant_concurrency.
        cap, counted = self._counted()
        query, args = self._statement(want, cap, counted)
        began = time.monotonic()
        self._reopens_in = None
        # This claim looks at the whole queue: the jobs notified until now are its.
        self._notified.clear()
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
        took = time.monotonic() - began
        self._outage.succeeded()
        self._metrics.claims.inc()
        self._metrics.claim_duration.observe(took)
        if rows and rows[-1]["id"] is None and rows[-1].get("needs_full"):
            # A rate limit or a priority above 0 is in play: the full claim weighs it,
            # now and for FULL_CLAIM_HOLD seconds. (The plain claim took nothing then;
            # were a job among the rows, it is dispatched below like any other.)
            self._full_until = time.monotonic() + FULL_CLAIM_HOLD
            if len(rows) == 1:
                return await self._claim(want)
        self._update_ahead(took)
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
                self._reopens_in = row["reopens_in"]
                continue
            job = Job.from_record(row)
            got[job.tenant_id] += 1
            jobs.append(job)
        if not self._fifo:
            # A tenant that got all the slots it had free is held to its cap and may have
            # more ready jobs (see TenantShares.held_to_cap); so may one the walk passed
            # over for being at its cap when the claim began. Both are remembered, so
            # the first of their jobs to end asks for a claim: otherwise a tenant at its
            # cap when a claim began (the cap moves with the jobs claimed ahead) would
            # wait for the poll.
            self._cap_held = self._held(got, counted, cap)
            self._cap_held.extend(
                tenant for tenant, count in counted.items() if count >= cap and tenant not in got
            )
            # A claim that filled its ask, or held a tenant to its share, says nothing
            # about whether a tenant has more.
            full = len(jobs) >= want or more
            # The walk ended before its limit (it found every tenant with ready jobs
            # it could serve), and every tenant it found got jobs.
            whole = walked < want and walked <= len(got)
            self.shares.after_claim(got, counted, cap, self._cap_held, full=full, whole=whole)
        self._update_pace(took, len(jobs))
        self._metrics.observe_claimed((job.kind, job.waited) for job in jobs)
        return jobs, cut_short, more

    async def _claim_notified(self, job_id: int) -> str:
        """Claim the job a notification named, if the full claim would take it first (see
        job_claim_notified), and hand it to the runners. Returns ``claimed``;
        ``taken`` when the job is not queued (another worker claimed it, or the id is
        no job): nothing is left for the full claim; or ``passed``: it is queued but
        the full claim must weigh it (or the database could not be reached)."""
        cap, counted = self._counted()
        at_cap = [tenant for tenant, count in counted.items() if count >= cap]
        try:
            rows = await self._db.fetch(
                QUERIES["job_claim_notified"], self._worker_id, self._kinds, job_id, at_cap
            )
        except Exception as exc:
            if not is_transient(exc):
                raise
            return "passed"  # the full claim that follows meets the outage and reports it
        if len(rows) < 2:  # the summary row alone
            result = "passed" if rows and rows[-1]["queued"] else "taken"
            self._notified_claims[result].inc()
            return result
        self._notified_claims["claimed"].inc()
        job = Job.from_record(rows[0])
        got: Counter[str] = Counter()
        got[job.tenant_id] = 1
        # Held to its cap by this job: the first of its jobs to end asks for a claim.
        self._cap_held = self._held(got, counted, cap)
        # The worker was idle: no lone tenant borrows, and this says nothing of others.
        self.shares.after_claim(got, counted, cap, self._cap_held, full=False, whole=False)
        self._metrics.observe_claimed([(job.kind, job.waited)])
        self._dispatch([job])
        return "claimed"

    def _dispatch(self, jobs: list[Job]) -> None:
        """Count claimed jobs in the ledger and hand them to the runners."""
        self.ledger.add(jobs)
        self._remember_capped()
        self.runners.add(jobs)

    def _remember_capped(self) -> None:
        """Remember the tenants the last claim held (or found) at their cap, once its
        jobs are counted in the ledger."""
        held, self._cap_held = self._cap_held, []
        if self.shares.held_to_cap(held, self.ledger.claimed, self._ahead):
            # One of its jobs ended while the claim was on its way: a slot of a tenant
            # that may have more is free already.
            self._wake.set("slot")
