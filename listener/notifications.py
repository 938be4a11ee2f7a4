"""The one LISTEN connection: turns NOTIFY on ``pgwake_jobs`` into wake-ups.

Invariants:
- NOTIFY is only a hint. Every loop that waits on a wake also polls, so a lost
  notification delays work by at most one poll interval.
- A notification whose payload is ``later`` (a job inserted due later) wakes only the
  promoter; any other (ready jobs: ``''``, or the id of the one ready job a single-row
  insert added) wakes only the claimer, and is noted in ``NotifiedJob`` for its claim
  by id. Anyone may notify, so a payload is a hint about which loop should look and
  which job to try, never more: the claim by id checks the row.
- After any reconnect the listener re-LISTENs and wakes everyone at once ("reconnect"),
  so jobs inserted while it was away do not wait for the next poll.
- State changes (listening / lost) are logged once each, not once per retry.
- The connection is proven alive every ``probe_interval`` seconds by a round trip of
  its own notification: it NOTIFYs a channel only it listens on and must receive that
  notification within ``probe_timeout``. This catches what a plain query would not (a
  session that answers queries but no longer delivers notifications) and, with TCP
  keepalives (db.py), a half-open socket whose peer vanished without a FIN.
- Inserts notify only while some worker waits (see sql/migrations/0009). The claimer
  calls ``before_sleep`` each time it is about to wait for a wake: the first call on a
  connection starts waiting (the session's waiting lock) and asks for one more claim;
  so does the call that finds every transaction gone that looked before the lock was
  taken (until then ``sleep_limit`` keeps the sleeps short). Only then may the claimer
  sleep on notifications. ``busy`` (a backlog, or a stream of jobs the claimer
  looks for every few milliseconds) stops waiting. A new connection starts
  not waiting, and the reconnect wakes the claimer, which starts again.
- Queries on the connection (probes, waiting) take turns; asyncpg runs one at a time.
- A notification on ``pgwake_cancel`` only sets ``cancel_hints``; it never names a
  job to stop (cancels.py reads the rows).
"""

from __future__ import annotations

import uuid

import anyio
import asyncpg
from anyio.abc import TaskStatus

from listener import db
from listener.errors import DatabaseUnavailableError
from listener.logs import get_logger
from listener.metrics import Metrics
from listener.queries import QUERIES
from listener.redact import redact
from listener.retry import Reconnect
from listener.wake import NotifiedJob, Wake

CHANNEL = "pgwake_jobs"
# The payload of a notification on CHANNEL about jobs due later (sql/schema.sql,
# jobs_after_insert): it is for the promoters.
DUE_LATER = "later"
# pgwake.cancel_job notifies here when it marks a running job's row for cancelling. A
# hint only: anyone can notify any channel, so the worker checks the rows (cancels.py).
CANCEL_CHANNEL = "pgwake_cancel"
# Seconds between looks while starting to wait is not settled (transactions that looked
# before are still open, or the waiting lock was busy for an instant).
SETTLE_INTERVAL = 0.01


class Listener:
    """Keeps a LISTEN connection open and sets the wakes on every notification."""

    def __init__(
        self,
        dsn: str,
        ready: Wake,
        due_later: Wake,
        *,
        probe_interval: float = 5.0,
        probe_timeout: float = 5.0,
        metrics: Metrics,
        max_backoff: float = 5.0,
        cancel_hints: Wake | None = None,
        notified: NotifiedJob | None = None,
    ) -> None:
        self._dsn = dsn
        self._notified = notified
        self._cancel_hints = cancel_hints
        # Set for notifications about ready jobs (the claimer's) and about jobs due later
        # (the promoter's); both on a reconnect.
        self._ready, self._due_later = ready, due_later
        self._probe_interval = probe_interval
        self._probe_timeout = probe_timeout
        self._max_backoff = max_backoff
        self._log = get_logger("listener")
        self._metrics = metrics
        self.listening = False
        # Why the connection is down, on one line (None while listening): for /readyz.
        self.down_reason: str | None = None
        self._state = "starting"
        # This listener's private probe channel, and the reply awaited from it.
        self._probe_channel = f"pgwake_probe_{uuid.uuid4().hex}"
        self._probe_token = ""
        self._probe_reply = anyio.Event()
        # The connection now listening (None while down), and one query at a time on it.
        self._conn: asyncpg.Connection | None = None
        self._conn_lock = anyio.Lock()
        # Whether this connection holds the waiting lock; the transactions that looked
        # before it was taken and were open then; whether taking it must be tried again.
        self._waiting = False
        self._looking: list[str] = []
        self._retry_wait = False

    def _wake_all(self, source: str) -> None:
        self._ready.set(source)
        self._due_later.set(source)

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        if payload == DUE_LATER:
            self._due_later.set("notify")
            return
        if self._notified is not None:
            self._notified.note(payload)
        self._ready.set("notify")

    def _on_probe(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        if payload == self._probe_token:
            self._probe_reply.set()

    async def _probe(self, conn: asyncpg.Connection) -> None:
        """One self-NOTIFY round trip; raises TimeoutError when it does not come back."""
        self._probe_token = uuid.uuid4().hex
        self._probe_reply = anyio.Event()
        with anyio.fail_after(self._probe_timeout):
            async with self._conn_lock:
                await conn.execute(
                    QUERIES["listener_probe"], self._probe_channel, self._probe_token
                )
            await self._probe_reply.wait()

    def _on_cancel_notify(self, _conn: object, _pid: int, _channel: str, _payload: object) -> None:
        # The payload is not trusted, not even parsed: the rows say what to cancel.
        if self._cancel_hints is not None:
            self._cancel_hints.set("cancel")

    async def before_sleep(self) -> bool:
        """Called before the claimer waits for a wake. True: claim once more first (new
        jobs committed until now may not have notified). False: sleep (at most
        ``sleep_limit``); whatever commits from now on notifies."""
        conn = self._conn
        if conn is None:
            return False  # down: the reconnect wakes the claimer
        try:
            async with self._conn_lock:
                if not self._waiting:
                    looked: list[str] | None = await conn.fetchval(
                        QUERIES["listener_start_waiting"]
                    )
                    self._retry_wait = looked is None
                    if looked is None:
                        return False  # someone is looking this instant: soon again
                    self._waiting, self._looking = True, looked
                    return True
                if self._looking:
                    still: list[str] = await conn.fetchval(
                        QUERIES["listener_list_open_transactions"], self._looking
                    )
                    self._looking = still
                    return not still
        except Exception as exc:
            if not db.is_transient(exc):
                raise
            # The connection is failing; the listener notices and reconnects.
        return False

    @property
    def waiting(self) -> bool:
        """True while inserts notify this worker: it waits, settled (every transaction
        that looked before it started waiting has ended)."""
        return self._waiting and not self._looking

    def sleep_limit(self, poll_interval: float) -> float:
        """How long the claimer may sleep now: short while waiting is not settled."""
        if self._retry_wait or self._looking:
            return min(poll_interval, SETTLE_INTERVAL)
        return poll_interval

    async def busy(self) -> None:
        """The claimer has a backlog, or a stream of jobs it looks for every few
        milliseconds: it claims without being woken, so inserts need not notify."""
        conn = self._conn
        if conn is None or not self._waiting:
            return
        try:
            async with self._conn_lock:
                await conn.execute(QUERIES["listener_stop_waiting"])
                self._waiting, self._looking = False, []
        except Exception as exc:
            if not db.is_transient(exc):
                raise

    def _set_down(self, error: str) -> None:
        error = redact(error)
        self.down_reason = error.strip().split("\n", 1)[0]
        if self._state != "down":
            self._log.warning("listener disconnected; reconnecting", error=error)
        self._state = "down"
        self.listening = False
        self._conn = None
        self._waiting, self._looking, self._retry_wait = False, [], False
        self._metrics.listener_up.set(0)

    async def open(self) -> asyncpg.Connection:
        """A connection for :meth:`run`'s first LISTEN, opened ahead (the service opens
        it while it checks the schema)."""
        return await db.connect(self._dsn, timeout=self._probe_timeout)

    async def run(
        self,
        *,
        opened: asyncpg.Connection | None = None,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen forever, reconnecting with backoff; started() once first listening.
        ``opened`` (from :meth:`open`) is the first connection, which this then owns."""
        started = False
        retry = Reconnect(cap=self._max_backoff)
        while True:
            try:
                conn = opened if opened is not None else await self.open()
                opened = None
            except DatabaseUnavailableError as exc:
                if not exc.transient:
                    raise
                self._set_down(str(exc))
                await retry.sleep()
                continue
            retry.reset()
            try:
                await self._serve(conn, first=not started, task_status=task_status)
            except db.DATABASE_ERRORS as exc:
                self._set_down(f"{type(exc).__name__}: {exc}")
            finally:
                conn.terminate()
            started = True

    async def _serve(
        self, conn: asyncpg.Connection, *, first: bool, task_status: TaskStatus[None]
    ) -> None:
        lost = anyio.Event()
        conn.add_termination_listener(lambda _c: lost.set())
        await conn.add_listener(CHANNEL, self._on_notify)
        await conn.add_listener(CANCEL_CHANNEL, self._on_cancel_notify)
        await conn.add_listener(self._probe_channel, self._on_probe)
        self._conn = conn
        self._waiting, self._looking, self._retry_wait = False, [], False
        self.listening = True
        self.down_reason = None
        self._state = "listening"
        self._metrics.listener_up.set(1)
        if first:
            task_status.started()
        else:
            self._metrics.listener_reconnects.inc()
            self._log.info("listener reconnected")
            self._wake_all("reconnect")
        while not lost.is_set():
            with anyio.move_on_after(self._probe_interval):
                await lost.wait()
            if lost.is_set():
                break
            await self._probe(conn)
        raise ConnectionError("LISTEN connection closed")
