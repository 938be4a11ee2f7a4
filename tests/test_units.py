"""Pieces without a database: settings, registry, backoff, redaction, wake, executor."""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest
from pydantic import BaseModel

from listener.api import JobContext, Registry
from listener.claimer import CLAIM_BUDGET, FIRST_BUDGET_ROWS, Claimer
from listener.config import load_settings
from listener.db import is_transient
from listener.errors import ConfigError
from listener.executor import Executor
from listener.jobs import Job, Outcome, Status
from listener.logs import get_logger
from listener.maintenance.rounds import run_paced_rounds
from listener.metrics import Metrics
from listener.outage import OutageLog
from listener.redact import redact
from listener.retry import FIRST_RECONNECT_DELAY, Backoff, Reconnect
from listener.runners import RUN_SLICE, Runners
from listener.shares import TenantShares
from listener.wake import Wake
from tests.support.jobs import held_job


def test_settings_precedence_flags_over_env_over_file(tmp_path: Path) -> None:
    config = tmp_path / "pgwake.toml"
    config.write_text(
        "[pgwake]\nconcurrency = 10\ntenant_concurrency = 3\npoll_interval = 7.5\n"
        "handlers = ['a.b']\n"
    )
    env = {"PGWAKE_CONCURRENCY": "20", "PGWAKE_KINDS": "echo, sleep"}
    settings = load_settings({"concurrency": 30}, env=env, config_file=config)
    assert settings.concurrency == 30
    assert settings.tenant_concurrency == 3
    assert settings.poll_interval == 7.5
    assert settings.kinds == ["echo", "sleep"]
    assert settings.handlers == ["a.b"]
    assert load_settings({}, env=env, config_file=config).concurrency == 20
    assert load_settings({}, env={}, config_file=config).concurrency == 10


def test_settings_file_from_env_and_secret_dsn(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[pgwake]\ndsn = 'postgresql://u:s3cret@db/x'\n")
    settings = load_settings({}, env={"PGWAKE_CONFIG": str(config)})
    assert settings.dsn is not None
    assert settings.dsn.get_secret_value() == "postgresql://u:s3cret@db/x"
    assert "s3cret" not in repr(settings)
    assert "s3cret" not in str(settings)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"concurrency": -1}, "concurrency (from command line): Input should be greater"),
        ({"poll_interval": 0}, "poll_interval (from command line)"),
        ({"dsn": "mysql://x"}, "dsn must be a libpq URL"),
        ({"concurrency": 2, "tenant_concurrency": 3}, "cannot exceed concurrency"),
        ({"retry_base": 10, "retry_cap": 1}, "retry_base (10.0) cannot exceed retry_cap"),
        ({"unknown_setting": 1}, "unknown_setting (from command line): Extra inputs"),
    ],
)
def test_bad_settings_name_the_problem(flags: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match="invalid configuration") as info:
        load_settings(flags, env={})
    assert message in str(info.value)


def test_bad_env_value_names_its_source() -> None:
    with pytest.raises(ConfigError, match=r"drain_timeout \(from environment\)"):
        load_settings({}, env={"PGWAKE_DRAIN_TIMEOUT": "soon"})


class Pay(BaseModel):
    n: int


def test_registry_rules() -> None:
    registry = Registry()

    @registry.handler("typed")
    async def typed(payload: Pay, ctx: JobContext) -> int:
        return payload.n

    @registry.handler("raw")
    async def raw(payload: dict[str, Any], ctx: JobContext) -> None:
        return None

    typed_handler = registry.get("typed")
    raw_handler = registry.get("raw")
    assert typed_handler is not None
    assert raw_handler is not None
    assert typed_handler.payload_model is Pay
    assert raw_handler.payload_model is None
    assert registry.kinds() == ["raw", "typed"]
    with pytest.raises(ConfigError, match="already handled by"):
        registry.register("typed", raw)

    def sync(payload: dict[str, Any], ctx: JobContext) -> None:
        return None

    with pytest.raises(ConfigError, match="must be an async function"):
        registry.register("sync", sync)  # type: ignore[arg-type]

    async def one_arg(payload: dict[str, Any]) -> None:
        return None

    with pytest.raises(ConfigError, match=r"must take exactly \(payload, ctx\)"):
        registry.register("one", one_arg)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="no handler for kind"):
        registry.restricted_to(["typed", "ghost"])
    assert registry.restricted_to(["typed"]).kinds() == ["typed"]


def test_backoff_grows_with_jitter_and_respects_the_cap() -> None:
    backoff = Backoff(base=1.0, cap=100.0, rng=random.Random(7))
    for _ in range(200):
        delays = [backoff.delay(n) for n in range(1, 8)]
        assert all(b > a for a, b in itertools.pairwise(delays)), delays
        assert 0.75 <= delays[0] <= 1.25
        assert all(d <= 100.0 for d in delays)
    assert backoff.delay(200) == 100.0


def test_backoff_without_jitter_doubles_exactly() -> None:
    backoff = Backoff(base=0.5, cap=3.0, jitter=0.0)
    assert [backoff.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_reconnect_doubles_from_first_to_the_cap_and_starts_again_after_a_success() -> None:
    retry = Reconnect(cap=1.0)
    waits = [retry.next_delay() for _ in range(7)]
    first = FIRST_RECONNECT_DELAY
    assert waits == [first, first * 2, first * 4, first * 8, first * 16, 1.0, 1.0]
    retry.reset()
    assert retry.next_delay() == first
    assert retry.next_delay() == first * 2


def test_reconnect_never_waits_longer_than_its_cap() -> None:
    """A cap below the first wait (a heartbeat of a fraction of a second) wins."""
    retry = Reconnect(first=0.1, cap=0.03)
    assert [retry.next_delay() for _ in range(3)] == [0.03, 0.03, 0.03]
    assert [Reconnect(first=0.1, cap=5.0).next_delay() for _ in range(2)] == [0.1, 0.1]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://app:hunter2@db:5432/x", "postgresql://app:***@db:5432/x"),
        (
            "failed: postgres://u:p%40ss@h/d?x=1 went away",
            "failed: postgres://u:***@h/d?x=1 went away",
        ),
        ("host=db password=hunter2 user=app", "host=db password=*** user=app"),
        ("PASSWORD = 'a b c' dbname=x", "PASSWORD = *** dbname=x"),
        ("postgresql://app@db/x", "postgresql://app@db/x"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected


async def test_wake_remembers_a_set_without_a_waiter() -> None:
    wake = Wake()
    assert await wake.wait(0.01) == "poll"
    wake.set("notify")
    wake.set("reconnect")
    assert await wake.wait(10) == "notify"
    assert await wake.wait(0.01) == "poll"


async def test_a_pause_sits_out_the_ignored_source_only() -> None:
    """The claim loop's pause in a stream: notifications do not end it, any other source
    does, also one set after a notification, before or during the pause."""
    wake = Wake()
    ended: list[str] = []
    async with anyio.create_task_group() as tg:

        async def pause(name: str) -> None:
            await wake.pause(60, ignore="notify")
            ended.append(name)

        tg.start_soon(pause, "first")
        for _ in range(3):
            await anyio.sleep(0.01)
            wake.set("notify")
        await anyio.sleep(0.01)
        assert ended == []  # three notifications, and it still waits
        wake.set("notify")
        wake.set("slot")  # after a notification not yet seen: not lost
        await anyio.sleep(0.01)
        assert ended == ["first"]
        # Set before the pause: a notification alone is sat out, anything else ends it.
        wake.set("notify")
        tg.start_soon(pause, "second")
        await anyio.sleep(0.02)
        assert ended == ["first"]
        wake.set("reconnect")
        await anyio.sleep(0.01)
        assert ended == ["first", "second"]
    wake.set("slot")
    await wake.pause(60, ignore="notify")  # returns at once
    with anyio.fail_after(5):
        await wake.pause(0.01, ignore="notify")  # and ends when its time is up
    assert await wake.wait(0.01) == "poll"  # nothing left behind


class _MillisecondLoop(asyncio.SelectorEventLoop):
    """A loop whose timers count whole milliseconds, as uvloop's (libuv's) do: the
    fraction of a millisecond of a delay is dropped, so a timer fires early, and one of
    less than a millisecond at the next turn of the loop."""

    def call_later(self, delay: float, callback: Any, *args: Any, context: Any = None) -> Any:
        whole = math.floor(delay * 1000) / 1000
        return super().call_later(whole, callback, *args, context=context)


class _CountingWake(Wake):
    """A wake that counts the waits its pauses make."""

    def __init__(self) -> None:
        super().__init__()
        self.waits = 0

    async def _wait(self, timeout: float) -> tuple[str | None, str | None]:
        self.waits += 1
        return await super()._wait(timeout)


def test_a_pause_on_a_millisecond_clock_waits_once() -> None:
    """A pause that nothing ends is one wait, however the loop's timers round: on
    millisecond timers a pause woke early and waited out the rest with timers of 0 ms,
    up to a hundred turns of the loop in one pause."""
    loop = _MillisecondLoop()
    wake = _CountingWake()

    async def pauses() -> float:
        began = time.monotonic()
        for _ in range(40):
            await wake.pause(0.0035, ignore="notify")
        return time.monotonic() - began

    try:
        took = loop.run_until_complete(pauses())
    finally:
        loop.close()
    assert wake.waits == 40
    assert took >= 40 * 0.002  # and they still wait, to within the timers' millisecond


async def test_wake_wakes_its_waiter_and_a_cancelled_wait_leaves_nothing_behind() -> None:
    wake = Wake()
    got: list[str] = []
    async with anyio.create_task_group() as tg:

        async def waiter() -> None:
            got.append(await wake.wait(60))

        tg.start_soon(waiter)
        await anyio.sleep(0.01)
        wake.set("slot")
    assert got == ["slot"]
    # A wait cancelled from outside ends with the cancellation, and the next set is
    # kept for the next wait.
    with anyio.move_on_after(0.01) as scope:
        await wake.wait(60)
    assert scope.cancelled_caught
    wake.set("notify")
    assert await wake.wait(60) == "notify"
    # An infinite timeout waits for a set only.
    with anyio.move_on_after(0.02) as scope:
        await wake.wait(math.inf)
    assert scope.cancelled_caught


async def test_executor_fails_unknown_kinds_and_configuration_errors_without_retry() -> None:
    from listener.errors import ConfigurationError

    registry = Registry()

    @registry.handler("misconfigured")
    async def misconfigured(payload: dict[str, Any], ctx: JobContext) -> None:
        raise ConfigurationError("SMTP_HOST is not set")

    executor = Executor(registry, Backoff(base=1.0))

    def job(kind: str) -> Job:
        return held_job(1, kind=kind, max_attempts=5, timeout=10.0)

    unknown = await executor.execute(job("nobody.handles"))
    assert (unknown.status, unknown.delay) == ("failed", None)
    assert (
        unknown.error == "ConfigurationError: no handler for kind 'nobody.handles' in this worker"
    )
    broken = await executor.execute(job("misconfigured"))
    assert broken.status == "failed"
    assert broken.error is not None
    assert broken.error.startswith("ConfigurationError: SMTP_HOST is not set")


async def test_a_handler_cannot_change_its_context_or_its_job() -> None:
    """The context and the job are read-only to the handler: what it tries to change
    raises, and the outcome keeps the job and attempt that were claimed (the fence of
    the outcome write). Reports the handler makes still reach the outcome."""
    registry = Registry()
    refused: list[str] = []

    @registry.handler("meddler")
    async def meddler(payload: dict[str, Any], ctx: JobContext) -> None:
        attempts: list[tuple[str, Any]] = [
            ("job", held_job(99)),
            ("log", None),
            ("dry_run", True),
            ("tenant", "other"),
            ("attempt", 7),
            ("records", 5),
            ("progress_reporter", None),
            ("children", None),
            ("anything_new", 1),
        ]
        for name, value in attempts:
            try:
                setattr(ctx, name, value)
            except AttributeError:
                refused.append(name)
        for name in ("id", "attempt", "tenant_id"):
            try:
                setattr(ctx.job, name, 0)
            except AttributeError:
                refused.append(f"job.{name}")
        ctx.add_records(3)

    outcome = await Executor(registry, Backoff(base=1.0)).execute(held_job(5, kind="meddler"))
    assert refused == [
        "job", "log", "dry_run", "tenant", "attempt", "records", "progress_reporter",
        "children", "anything_new",
        "job.id", "job.attempt", "job.tenant_id",
    ]  # fmt: skip
    assert (outcome.job_id, outcome.attempt, outcome.status) == (5, 1, "succeeded")
    assert outcome.records == 3


def test_settings_load_for_a_user_with_no_home(monkeypatch: pytest.MonkeyPatch) -> None:
    # A systemd DynamicUser on a host without nss-systemd: no $HOME, no passwd entry.
    import pwd

    def no_entry(uid: int) -> Any:
        raise KeyError(uid)

    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setattr(pwd, "getpwuid", no_entry)
    settings = load_settings({"dsn": "postgresql://db/x"}, env={})
    assert settings.data_dir == Path("/var/lib/pgwake/pgdata")


def test_transient_errors_are_those_a_new_attempt_can_outlive() -> None:
    transient = [
        asyncpg.SerializationError("could not serialize"),
        asyncpg.DeadlockDetectedError("deadlock"),
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.CannotConnectNowError("the database system is starting up"),
        asyncpg.ConnectionDoesNotExistError("connection was closed"),
        # The server ended the session between two protocol messages.
        asyncpg.InternalClientError("cannot switch to state 15"),
        ConnectionResetError(),
        TimeoutError(),
        # The database dropped, recreated and not migrated yet, a password rotated, a
        # standby after a failover, a statement timeout: all waited out.
        asyncpg.InvalidCatalogNameError('database "app" does not exist'),
        asyncpg.UndefinedTableError("relation does not exist"),
        asyncpg.InvalidPasswordError("password authentication failed"),
        asyncpg.InvalidAuthorizationSpecificationError("no pg_hba.conf entry"),
        asyncpg.ReadOnlySQLTransactionError("cannot execute INSERT in a read-only transaction"),
        asyncpg.QueryCanceledError("canceling statement due to statement timeout"),
    ]
    lasting = [
        asyncpg.UniqueViolationError("duplicate key"),
        asyncpg.InsufficientPrivilegeError("permission denied for table jobs"),
        asyncpg.DataError("invalid input"),
        ValueError("a bug"),
    ]
    assert [is_transient(e) for e in transient] == [True] * len(transient)
    assert [is_transient(e) for e in lasting] == [False] * len(lasting)


async def test_paced_rounds_wait_what_each_round_asks_and_ride_out_transient_errors() -> None:
    """Each round's answer is the next wait (none when not positive); a transient error
    is recorded, ``after_failure`` runs and the next round comes ``retry_after`` later;
    any other error ends the loop."""
    answers: list[float | Exception] = [0.5, ConnectionError("cut"), 0.0, 2.0, ValueError("bug")]
    waits: list[float] = []
    cleanups: list[int] = []
    outage = OutageLog(get_logger("test"), "test rounds")

    async def one_round() -> float:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        assert not outage.failing or answer == 0.0  # the round after the failure
        return answer

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    async def after_failure() -> None:
        cleanups.append(len(waits))

    with pytest.raises(ValueError, match="bug"):
        await run_paced_rounds(
            one_round, outage, retry_after=1.0, sleep=sleep, after_failure=after_failure
        )
    assert waits == [0.5, 1.0, 2.0]
    assert cleanups == [1]  # once, right after the failed round
    assert not outage.failing  # the rounds after it succeeded
    assert answers == []


class _Ends:
    """Where the runners report how jobs ended (runners.JobEnds): kept in a list."""

    def __init__(self) -> None:
        self.outcomes: list[Outcome] = []

    def ended(self, job: Job, outcome: Outcome, started: float) -> None:
        self.outcomes.append(outcome)

    def dropped(self, job: Job) -> None:
        raise AssertionError(f"no job is dropped here, yet {job.id} was")


async def test_jobs_that_never_wait_let_the_loop_turn_every_slice() -> None:
    """A runner running jobs that never wait lets the event loop turn once per
    RUN_SLICE: other tasks (the claim loop reading the next claim's reply, the
    listener, the completer) wait about that long for a claim's batch, not for all of
    it. 200 jobs of 0.5 ms each, none awaiting anything, hold the loop 100 ms in all;
    a task that counts loop turns meanwhile gets about one a slice (without the slice:
    none until the last job ended)."""
    registry = Registry()

    @registry.handler("spin")
    async def spin(payload: dict[str, Any], ctx: JobContext) -> None:
        until = time.perf_counter() + 0.0005
        while time.perf_counter() < until:
            pass

    ends = _Ends()
    runners = Runners(
        Executor(registry, Backoff(base=1.0)),
        TenantShares(concurrency=32, tenant_concurrency=32),
        ends,
        concurrency=32,
        metrics=Metrics(),
    )
    jobs = [held_job(i, f"t{i % 4}", "spin") for i in range(200)]
    turns = 0
    async with anyio.create_task_group() as tg:
        await tg.start(runners.run)
        runners.add(jobs)
        while len(ends.outcomes) < len(jobs):
            await anyio.lowlevel.checkpoint()
            turns += 1
        tg.cancel_scope.cancel()
    assert [o.status for o in ends.outcomes] == ["succeeded"] * len(jobs)
    # 100 ms of jobs in slices of RUN_SLICE (2 ms): about 50 turns. (Had each runner
    # woken for the jobs left waiting run a slice of its own, the count turned would
    # have been one per up to 32 slices: 10.)
    assert turns >= 0.1 / RUN_SLICE / 3, turns


class _NoOutcomes:
    """An outcome sink for a claimer that runs no job (claimer.OutcomeSink)."""

    def submit(self, outcome: Outcome) -> None:
        raise AssertionError(f"no job runs here, yet an outcome came: {outcome}")


class _NoDoorbell:
    """A doorbell for a claimer that never waits (claimer.Doorbell)."""

    async def before_sleep(self) -> bool:
        return False

    def sleep_limit(self, poll_interval: float) -> float:
        return poll_interval

    async def busy(self) -> None:
        return None


def _claimer(concurrency: int, claim_batch: int) -> Claimer:
    """A claimer that is never run: its sizing alone."""
    return Claimer(
        None,  # type: ignore[arg-type] # never reaches the database
        uuid.uuid4(),
        ["k"],
        Executor(Registry(), Backoff(base=1.0)),
        _NoOutcomes(),
        Wake(),
        _NoDoorbell(),
        concurrency=concurrency,
        tenant_concurrency=concurrency,
        claim_batch=claim_batch,
        poll_interval=5.0,
        drain_timeout=1.0,
        metrics=Metrics(),
    )


class _KeptOutcomes:
    """An outcome sink that keeps what it is given (claimer.OutcomeSink)."""

    def __init__(self) -> None:
        self.outcomes: list[Outcome] = []

    def submit(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)


def test_jobs_claimed_ahead_follow_the_average_job_and_stop_behind_a_slow_one() -> None:
    """The jobs claimed ahead of free slots are twice those the runners finish during
    one claim: ``concurrency`` x claim time / the average job's time. Here claims take
    3 ms and jobs 1 ms, one in ten 2 ms (1.1 ms on average): about 2 x 87 ahead, where
    sized by the longest recent job (2 ms) they were 2 x 48. One job longer than
    ``concurrency`` claims take (0.2 s > 32 x 3 ms) stops them at once."""
    sink = _KeptOutcomes()
    claimer = Claimer(
        None,  # type: ignore[arg-type] # never reaches the database
        uuid.uuid4(),
        ["k"],
        Executor(Registry(), Backoff(base=1.0)),
        sink,
        Wake(),
        _NoDoorbell(),
        concurrency=32,
        tenant_concurrency=32,
        claim_batch=1000,
        poll_interval=5.0,
        drain_timeout=1.0,
        metrics=Metrics(),
    )
    ids = itertools.count(1)

    def run(seconds: float) -> None:
        """A claimed job whose handler ran for ``seconds`` ends."""
        job = held_job(next(ids))
        claimer.ledger.add([job])
        claimer.ended(job, Outcome(job.id, 1, Status.SUCCEEDED), time.monotonic() - seconds)

    claimer._update_ahead(0.003)
    assert claimer._ahead == 0  # no job has ended: nothing tells how many end per claim
    for i in range(300):
        run(0.002 if i % 10 == 9 else 0.001)
    claimer._update_ahead(0.003)
    # The average of the last jobs, with the timer's jitter: 1.0 to 1.25 ms.
    assert 2 * int(32 * 0.003 / 0.00125) <= claimer._ahead <= 2 * int(32 * 0.003 / 0.001)
    assert claimer._ahead > 2 * int(32 * 0.003 / 0.002)
    run(0.2)
    claimer._update_ahead(0.003)
    assert claimer._ahead == 0
    # They come back once the slow job has faded under 96 ms as the longest recent one
    # (by 1% a job: after 73 jobs).
    for _ in range(50):
        run(0.001)
    claimer._update_ahead(0.003)
    assert claimer._ahead == 0
    for _ in range(50):
        run(0.001)
    claimer._update_ahead(0.003)
    assert claimer._ahead >= 2 * int(32 * 0.003 / 0.00125)
    assert len(sink.outcomes) == 401


def test_claims_are_sized_by_the_pace_and_a_stalled_claim_does_not_cap_them_for_good() -> None:
    """A claim asks for the rows the database claims in CLAIM_BUDGET at the pace of the
    last claims: FIRST_BUDGET_ROWS before any, then as the pace says, at least
    ``concurrency`` and at most ``claim_batch``. One claim that stalled (10 s for 256
    rows) shrinks the claims to ``concurrency``; those count where they show a faster
    pace, so the claims grow back to what the real pace allows (100 µs a row and 1 ms
    a claim here), where a pace counted only from claims of 64 rows or more would have
    kept them at 32 for good."""
    claimer = _claimer(concurrency=32, claim_batch=1000)
    claimer._ahead = 4000  # jobs that return at once: the runners want full claims
    assert claimer._claim_size() == FIRST_BUDGET_ROWS
    claimer._update_pace(0.0256, 256)  # 100 µs a row
    assert claimer._claim_size() == int(CLAIM_BUDGET / 0.0001)
    claimer._update_pace(10.0, 256)  # stalled
    assert claimer._claim_size() == 32
    for _ in range(100):
        size = claimer._claim_size()
        claimer._update_pace(0.001 + 0.0001 * size, size)  # 100 µs a row, 1 ms a claim
    # Back to most of the rows that take CLAIM_BUDGET (1 ms + rows x 100 µs).
    assert claimer._claim_size() >= 0.8 * (CLAIM_BUDGET - 0.001) / 0.0001
    claimer._update_pace(0.0001, 1000)  # a fast database: claim_batch bounds it
    for _ in range(60):
        claimer._update_pace(0.0001 * claimer._claim_size() / 1000, claimer._claim_size())
    assert claimer._claim_size() == 1000
