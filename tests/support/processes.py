"""Processes a test started and did not stop: found and killed at the end of the test.

A test that fails between starting a process (a worker, a command line, a Prometheus)
and stopping it would leave it running. ``children()`` lists the live processes whose
parent is this one (from /proc, so it sees every ``subprocess.Popen`` whoever made
it); ``kill_new_children(before)`` kills those that were not there before the test and
waits for them, so no process outlives the test that started it. Processes that
detach from their parent (a PostgreSQL started by ``pg_ctl``) are not children: the
fixture that starts one stops it in a ``finally``. A process started with ``keep``
(a background scenario's worker, tests/support/background.py) is left alone: its
scenario outlives the tests that run meanwhile and stops it itself.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar


class _HasPid(Protocol):
    @property
    def pid(self) -> int: ...


P = TypeVar("P", bound=_HasPid)

_kept: set[int] = set()
# Held while a kept process starts and is recorded, and while a test's leftovers are
# found and signalled: no test's end can see a kept process before it is recorded.
_lock = threading.Lock()


def keep(start: Callable[[], P]) -> P:
    """Start a process with ``start()`` that ``kill_new_children`` leaves alone (its
    starter stops it, then calls ``release``)."""
    with _lock:
        proc = start()
        _kept.add(proc.pid)
    return proc


def release(pid: int) -> None:
    """Forget a kept process (once it has been stopped and reaped)."""
    with _lock:
        _kept.discard(pid)


def children() -> set[int]:
    """The live (non-zombie) processes whose parent is this process."""
    me = os.getpid()
    found: set[int] = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # it exited meanwhile
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        state, ppid = text.rpartition(")")[2].split()[:2]
        if int(ppid) == me and state != "Z":
            found.add(int(stat.parent.name))
    return found


def kill_new_children(before: set[int], grace: float = 5.0) -> list[int]:
    """SIGTERM the children not in ``before`` (nor kept), SIGKILL those still alive
    after ``grace`` seconds, reap them; return the ids of those it found."""
    with _lock:
        left = sorted(children() - before - _kept)
        for pid in left:
            _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    waiting = set(left)
    while waiting and time.monotonic() < deadline:
        waiting = {pid for pid in waiting if not _reaped(pid)}
        if waiting:
            time.sleep(0.02)
    for pid in waiting:
        _signal(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    return left


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _reaped(pid: int) -> bool:
    """True once ``pid`` has exited and been reaped (by us or by its Popen)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True  # already reaped elsewhere
    return done == pid
