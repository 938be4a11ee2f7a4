"""Worker registration, liveness lock and heartbeat: one write per interval per worker,
never per job.

Invariants:
- The worker holds its liveness lock (a session advisory lock keyed by its row's
  ``lock_key``) on a connection of its own from registration until it stops. If the
  process dies, the lock dies with the connection and the maintenance leader recovers
  the worker's jobs within seconds (recovery.py).
- While this loop runs, the worker's row has a heartbeat no older than the interval
  (plus the write's latency). When the connection is lost (a session cut by
  ``pg_terminate_backend``, a network error) it reconnects at once, then with backoff of
  at most a quarter of the interval, takes the lock again and beats, logging once per
  change of state. So a cut session costs the worker one reconnect, well within the
  grace of one and a half intervals recovery allows a missing lock (recovery.py).
- Anyone can take an advisory lock, so the lock counts only in the session that holds
  it: each beat from a session holding it records that session (``session_pid``), and
  recovery ignores the key held by any other session. A key some other session holds
  does not stop the worker: it runs without its lock (found dead by the heartbeat's age
  alone, after the same grace) and tries again at every beat.
- If the row is gone (the leader declared the worker lost: it was silent longer than
  the heartbeat timeout), ``jobs.abandon_all`` is called first, so the worker drops the
  jobs it no longer owns, and then the worker registers again under the same id and
  lock key.
  Its late writes for the lost jobs change nothing (every write is fenced).
- Each beat also returns the running jobs of this worker whose cancellation was
  requested; ``jobs.request_cancel`` gets them, in case their NOTIFY was missed.
- Each beat hands the ids the database says this worker runs to ``jobs.reconcile``,
  which returns those the worker has not known of for two beats in a row (a claim that
  committed while its reply was lost); they are put back to queued with the attempt
  given back, so no job stays running for a live worker that does not run it.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Sequence
from typing import Protocol

import anyio
import asyncpg
from anyio.abc import TaskStatus

from listener import db
from listener.errors import DatabaseUnavailableError
from listener.logs import get_logger
from listener.queries import QUERIES
from listener.redact import redact
from listener.retry import Reconnect


class HeldJobs(Protocol):
    """What the heartbeat asks of the jobs this worker holds (the claimer)."""

    def abandon_all(self) -> None:
        """This worker was declared lost: drop every job, recording no outcome."""
        ...

    def request_cancel(self, job_ids: Sequence[int]) -> None:
        """Stop the handlers of these jobs, whose cancellation was requested."""
        ...

    def reconcile(self, held: Sequence[int]) -> Sequence[int]:
        """Of the ids the database says this worker runs, those it never received."""
        ...


class Heartbeat:
    """Registers the worker, holds its liveness lock and keeps its heartbeat fresh."""

    def __init__(
        self,
        dsn: str,
        worker_id: uuid.UUID,
        kinds: Sequence[str],
        concurrency: int,
        *,
        interval: float,
        jobs: HeldJobs,
        session_settings: dict[str, str] | None = None,
        max_backoff: float = 5.0,
    ) -> None:
        self._dsn = dsn
        self._worker_id = worker_id
        self._kinds = list(kinds)
        self._concurrency = concurrency
        self._interval = interval
        self._jobs = jobs
        self._session_settings = session_settings
        self._max_backoff = max_backoff
        self._conn: asyncpg.Connection | None = None
        self._lock_key: int | None = None
        self._log = get_logger("heartbeat")
        # Set when the heartbeat session ends under the worker: reconnect at once.
        self._cut = anyio.Event()
        self._down = False
        self._locked = False
        # Whether "liveness lock held by another session" was logged since the lock was
        # last held (logged once per change).
        self._lock_busy_logged = False
        # time.monotonic() of the last heartbeat written (registration included).
        self.last_beat: float | None = None

    @property
    def lock_key(self) -> int | None:
        """The key of this worker's liveness lock (None before registration)."""
        return self._lock_key

    async def open(self) -> asyncpg.Connection:
        """A connection for :meth:`register`, opened ahead (the service opens it while
        it checks the schema). Whoever opened it terminates it when it is not given to
        :meth:`register`."""
        return await self._connect(timeout=10.0)

    async def register(self, conn: asyncpg.Connection | None = None) -> None:
        """Open the heartbeat connection (or take ``conn``, from :meth:`open`), insert
        the worker's row and take its lock. A failed attempt leaves nothing open
        (``conn`` included), so the caller may try again."""
        await self.close()
        self._locked = False
        if conn is None:
            conn = await self._connect(timeout=10.0)
        try:
            await self._register(conn)
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn
        self._cut = anyio.Event()  # set by the termination of a failed attempt's session

    async def _connect(self, timeout: float) -> asyncpg.Connection:
        conn = await db.connect(self._dsn, timeout=timeout, session_settings=self._session_settings)
        conn.add_termination_listener(lambda _c: self._cut.set())
        return conn

    async def _register(self, conn: asyncpg.Connection) -> None:
        async with conn.transaction():
            key: int = await conn.fetchval(
                QUERIES["worker_register"],
                self._worker_id,
                socket.gethostname(),
                os.getpid(),
                self._kinds,
                self._concurrency,
                self._lock_key,
            )
            if not self._locked:
                self._locked = bool(await conn.fetchval(QUERIES["worker_lock"], key))
                if not self._locked:
                    # Some session that is not this worker's took the key (advisory locks
                    # need no privilege); it proves nothing about this worker.
                    self._lock_busy_logged = True
                    self._log.warning(
                        "liveness lock held by another session; running without it until "
                        "it is free (recovery then judges this worker by its heartbeat)",
                        lock_key=key,
                    )
        self._lock_key = key
        self.last_beat = time.monotonic()

    async def close(self) -> None:
        """Close the heartbeat connection (which releases the liveness lock)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close(timeout=2)
            except db.DATABASE_ERRORS:
                conn.terminate()  # the server or the network is gone: just drop it

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Beat forever, reconnecting (and re-locking) when the connection is lost."""
        task_status.started()
        # Reconnects wait at most a quarter of the interval: recovery's grace for a
        # missing lock is one and a half intervals. A cut session is tried again at
        # once, then after 0.1 s, 0.2 s...
        retry = Reconnect(first=0.1, cap=min(self._max_backoff, self._interval / 4))
        wait = self._interval
        while True:
            with anyio.move_on_after(wait):
                await self._cut.wait()
            if self._cut.is_set():
                self._cut = anyio.Event()
                if not self._down:
                    self._set_down("the heartbeat session was closed by the server")
                retry.reset()
            try:
                await self._beat()
            except db.DATABASE_ERRORS as exc:
                self._set_down(f"{type(exc).__name__}: {redact(str(exc))}")
                wait = retry.next_delay()
            except DatabaseUnavailableError as exc:
                self._set_down(str(exc))
                wait = retry.next_delay()
            else:
                retry.reset()
                wait = self._interval
                if self._down:
                    self._down = False
                    self._log.info("heartbeat connection restored")

    def _set_down(self, error: str) -> None:
        if not self._down:
            self._log.warning("heartbeat connection lost; reconnecting", error=error)
        self._down = True
        self._locked = False
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None

    async def _beat(self) -> None:
        conn = self._conn
        if conn is None or conn.is_closed():
            self._locked = False
            conn = await self._connect(timeout=max(self._interval, 2.0))
            self._conn = conn
        if not self._locked and self._lock_key is not None:
            self._locked = await conn.fetchval(QUERIES["worker_lock"], self._lock_key)
            if not self._locked and not self._lock_busy_logged:
                # Our previous connection has not ended yet, or a session that is not
                # this worker's holds the key. Beat anyway and try again next time.
                self._lock_busy_logged = True
                self._log.info(
                    "liveness lock held by another session (a previous connection not yet "
                    "gone, or not this worker's); beating without it until it is free"
                )
            elif self._locked:
                self._lock_busy_logged = False
        with anyio.fail_after(max(self._interval, 2.0) * 2):
            row = await conn.fetchrow(QUERIES["worker_heartbeat"], self._worker_id, self._locked)
        if row is None:
            self._log.error(
                "this worker was declared lost (no heartbeat for longer than the heartbeat "
                "timeout); dropping its running jobs, which were given to other workers, "
                "and registering again"
            )
            self._jobs.abandon_all()
            await self._register(conn)
            return
        self.last_beat = time.monotonic()
        if row["cancel_ids"]:
            self._jobs.request_cancel(list(row["cancel_ids"]))
        unknown = self._jobs.reconcile(list(row["held_ids"]))
        if unknown:
            put_back = await conn.fetch(QUERIES["job_put_back_unknown"], self._worker_id, unknown)
            if put_back:
                await conn.execute(QUERIES["worker_wake"])
                self._log.warning(
                    "put back jobs claimed for this worker that it never received "
                    "(the claim's reply was lost)",
                    jobs=[r["id"] for r in put_back],
                )
