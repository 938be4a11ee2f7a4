"""sd_notify: a real ``pgwake run`` process talking to a notify socket of the test's own.

The socket is a real ``AF_UNIX`` datagram socket with ``SO_PASSCRED``, so every message
carries the kernel's ``SCM_CREDENTIALS`` and the test checks it came from the worker's
own pid, as systemd does with ``NotifyAccess=main``.
"""

from __future__ import annotations

import itertools
import os
import socket
import statistics
import struct
import threading
import time
import uuid
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from listener.service import RELEASE_MARGIN
from listener.systemd import SystemdNotifier
from tests.conftest import eventually, spawn_worker, stop_process, wait_ready

RECORDING = "tests.recording_handlers"
UCRED = struct.Struct("iII")  # struct ucred: pid, uid, gid


@dataclass(frozen=True)
class Message:
    """One datagram: when it arrived, who sent it, its fields in order."""

    at: float
    pid: int
    fields: tuple[str, ...]

    def get(self, key: str) -> str | None:
        prefix = f"{key}="
        return next((f.removeprefix(prefix) for f in self.fields if f.startswith(prefix)), None)


class NotifySocket:
    """The service manager's end: a thread reads every datagram as it arrives (as
    systemd does; the kernel queues only ``net.unix.max_dgram_qlen`` of them) and records
    it with the sender's pid from ``SCM_CREDENTIALS``."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(address)
        self.sock.settimeout(0.05)
        self.messages: list[Message] = []
        self._closing = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._closing.is_set():
            try:
                data, ancillary, _flags, _addr = self.sock.recvmsg(
                    4096, socket.CMSG_SPACE(UCRED.size)
                )
            except TimeoutError:
                continue
            at = time.monotonic()
            pids = [
                UCRED.unpack(cmsg_data[: UCRED.size])[0]
                for level, kind, cmsg_data in ancillary
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS
            ]
            # No credentials would be recorded as pid 0, which no assertion accepts.
            pid = pids[0] if len(pids) == 1 else 0
            self.messages.append(Message(at, pid, tuple(data.decode().split("\n"))))

    def close(self) -> None:
        self._closing.set()
        self._reader.join()
        self.sock.close()

    def with_field(self, key: str, value: str | None = None) -> list[Message]:
        """The messages so far with ``key`` set (to ``value``, when given)."""
        return [
            m for m in list(self.messages) if m.get(key) is not None and value in (None, m.get(key))
        ]

    async def received(self, key: str, value: str | None = None, *, after: float = 0) -> int:
        """How many such messages arrived after ``after`` (for ``eventually``)."""
        return len([m for m in self.with_field(key, value) if m.at > after])

    def pings(self) -> list[float]:
        """Arrival times of the ``WATCHDOG=1`` messages."""
        return [m.at for m in list(self.messages) if m.fields == ("WATCHDOG=1",)]


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, NotifySocket]]:
    path = str(tmp_path / "notify.sock")
    receiver = NotifySocket(path)
    try:
        yield path, receiver
    finally:
        receiver.close()


async def test_worker_notifies_ready_watchdog_status_and_stopping_from_its_own_pid(
    dsn: str, conn: asyncpg.Connection, notify_socket: tuple[str, NotifySocket]
) -> None:
    path, systemd = notify_socket
    done = "ready: 0/4 running; 3 succeeded, 0 failed, 0 retried; listening"
    watchdog_usec = 1_000_000
    interval = watchdog_usec / 1e6 / 2
    worker = spawn_worker(
        dsn,
        "--drain-timeout",
        "7",
        "--concurrency",
        "4",
        "--tenant-concurrency",
        "2",
        env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": str(watchdog_usec)},
    )
    try:
        await wait_ready(conn)
        await eventually(lambda: systemd.received("READY", "1"))
        ready = systemd.with_field("READY", "1")[0]
        assert ready.get("STATUS") == done.replace("3 succeeded", "0 succeeded")
        # The status line follows the work done.
        await conn.execute(
            "INSERT INTO pgwake.jobs (kind, payload) SELECT 'echo', '{}' FROM generate_series(1, 3)"
        )
        await eventually(lambda: systemd.received("STATUS", done))
        # Enough pings to measure their rate.
        await eventually(lambda: _at_least(6, systemd.received("WATCHDOG", after=ready.at)))
    finally:
        code, out = stop_process(worker)
    assert code == 0, out
    messages = list(systemd.messages)
    assert {m.pid for m in messages} == {worker.pid}, "a notify message from another process"
    first = messages[0]
    assert first.get("READY") == "1", f"READY=1 must come first: {first}"
    stopping = systemd.with_field("STOPPING", "1")
    assert len(stopping) == 1
    assert stopping[0].get("STATUS") == done.replace("ready:", "draining:")
    assert stopping[0].get("EXTEND_TIMEOUT_USEC") == str(int((7 + RELEASE_MARGIN) * 1e6))
    gaps = [b - a for a, b in itertools.pairwise(systemd.pings())]
    # Half of WATCHDOG_USEC: never faster (a sleep does not end early), and the typical
    # gap well inside the timeout systemd enforces.
    assert min(gaps) >= 0.8 * interval, gaps
    assert statistics.median(gaps) < 2 * interval, gaps


async def test_a_blocked_event_loop_stops_the_watchdog_pings(
    dsn: str, conn: asyncpg.Connection, notify_socket: tuple[str, NotifySocket]
) -> None:
    path, systemd = notify_socket
    block = 2.0
    worker = spawn_worker(
        dsn, "--handlers", RECORDING, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"}
    )
    try:
        await wait_ready(conn)
        job_id = await conn.fetchval(
            "INSERT INTO pgwake.jobs (kind, payload) VALUES ('stall', $1) RETURNING id",
            {"block": block},
        )
        await eventually(
            lambda: conn.fetchval(
                "SELECT status = 'succeeded' FROM pgwake.jobs WHERE id = $1", job_id
            )
        )
    finally:
        code, out = stop_process(worker)
    assert code == 0, out
    gaps = [b - a for a, b in itertools.pairwise(systemd.pings())]
    # The pings come from the loop, not from a thread: the synchronous sleep silenced them.
    assert max(gaps) >= block * 0.9, gaps


async def _at_least(n: int, count: Awaitable[int]) -> bool:
    return await count >= n


def test_notifier_is_silent_without_systemd() -> None:
    notifier = SystemdNotifier(env={})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    assert not notifier.send("READY=1")
    notifier.ready("x")  # no socket: nothing to send, nothing raised


def test_watchdog_interval_is_half_of_watchdog_usec_for_this_pid_only() -> None:
    here = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "2000000"}
    assert SystemdNotifier(env=here).watchdog_interval == 1.0
    assert SystemdNotifier(env={**here, "WATCHDOG_PID": str(os.getpid())}).watchdog_interval == 1.0
    assert SystemdNotifier(env={**here, "WATCHDOG_PID": "1"}).watchdog_interval is None
    assert SystemdNotifier(env={**here, "WATCHDOG_USEC": "0"}).watchdog_interval is None
    assert SystemdNotifier(env={"WATCHDOG_USEC": "2000000"}).watchdog_interval is None
    assert not SystemdNotifier(env={"NOTIFY_SOCKET": "vsock:2:1"}).enabled


def test_from_environment_takes_the_variables_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    notifier = SystemdNotifier.from_environment()
    assert notifier.enabled
    assert notifier.watchdog_interval == 15.0
    # Processes started by handlers must not notify systemd in the worker's name.
    assert not {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"} & set(os.environ)


async def test_abstract_socket_and_status_sent_once_per_change() -> None:
    name = f"pgwake-test-{uuid.uuid4().hex}"
    systemd = NotifySocket("\0" + name)
    try:
        notifier = SystemdNotifier(env={"NOTIFY_SOCKET": "@" + name})
        notifier.status("a")
        notifier.status("a")
        notifier.status("b")
        notifier.stopping("c", within=1.5)
        notifier.close()
        await eventually(lambda: systemd.received("STOPPING"))
        assert [m.fields for m in systemd.messages] == [
            ("STATUS=a",),
            ("STATUS=b",),
            ("STOPPING=1", "STATUS=c", "EXTEND_TIMEOUT_USEC=1500000"),
        ]
        assert {m.pid for m in systemd.messages} == {os.getpid()}
    finally:
        systemd.close()


async def test_a_missing_socket_is_survived(tmp_path: Path) -> None:
    # The socket is not there (systemd re-executing, or gone): sends fail, never raise.
    path = tmp_path / "later.sock"
    notifier = SystemdNotifier(env={"NOTIFY_SOCKET": str(path)})
    assert not notifier.send("WATCHDOG=1")
    notifier.status("x")
    systemd = NotifySocket(str(path))
    try:
        notifier.status("x")  # it was not sent before, so it is sent now
        await eventually(lambda: systemd.received("STATUS", "x"))
        assert [m.fields for m in systemd.messages] == [("STATUS=x",)]
    finally:
        systemd.close()
        notifier.close()
