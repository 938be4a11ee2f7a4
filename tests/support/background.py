"""Scenarios that take minutes of wall-clock time and little else, run beside the rest
of the suite instead of holding it up.

A test marked ``@pytest.mark.background(scenario=function)`` has ``function`` started in a
thread of its own (with an event loop of its own) when the session starts, by the
``background`` fixture in conftest.py; the test itself waits for the scenario's result
(``Background.result``) and makes its assertions on it. Run alone, the test simply
waits the scenario's whole time; run with the suite, the minutes have passed by the
time pytest reaches it.

Invariants:
- A scenario starts only when its test is selected and not skipped by a ``skipif``
  whose condition is a plain bool (as ``PGWAKE_SKIP_SLOW`` is), so a run without the
  test never pays for it.
- A scenario owns what it makes: its database (``fresh_database``) and its processes,
  which it starts with :func:`tests.support.processes.keep` (so the end of whichever
  test runs meanwhile does not kill them) and stops itself in a ``finally``.
- Its workers see the environment of the session's start (``Scenario.environ``), never
  what a test running meanwhile put in ``os.environ``.
- Whatever it raises (a failed ``eventually``, an assertion) is raised again in its
  test; nothing it raises escapes the thread. At the end of the session a scenario
  still running (its test failed early, or the run was stopped) is cancelled and
  waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pytest


@dataclass(frozen=True)
class Scenario:
    """What a scenario gets: the session's server and migrated template, and the
    environment of the session's start."""

    server_dsn: str
    template_db: str
    environ: Mapping[str, str]


ScenarioFunction = Callable[[Scenario], Awaitable[Any]]


class _Run:
    """One scenario in its thread: its result or what it raised, once done."""

    def __init__(self, function: ScenarioFunction, scenario: Scenario) -> None:
        self.function = function
        self.scenario = scenario
        self.result: Any = None
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._ready = threading.Event()
        self.thread = threading.Thread(
            target=self._main, name=f"background {function.__name__}", daemon=True
        )

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            self._loop = loop
            self._task = loop.create_task(self.function(self.scenario))
            self._ready.set()
            self.result = loop.run_until_complete(self._task)
        except BaseException as exc:  # raised again in the scenario's test
            self.error = exc
        finally:
            self._ready.set()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def start(self) -> None:
        self.thread.start()
        self._ready.wait()

    def cancel(self) -> None:
        loop, task = self._loop, self._task
        if loop is not None and task is not None and not loop.is_closed():
            # RuntimeError: the loop closed meanwhile, the scenario is done.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(task.cancel)


class Background:
    """The scenarios of a session, started at its start (see the module docstring)."""

    def __init__(self) -> None:
        self._runs: dict[ScenarioFunction, _Run] = {}

    def start(self, function: ScenarioFunction, scenario: Scenario) -> None:
        """Start ``function(scenario)`` in a thread of its own (once per session)."""
        if function not in self._runs:
            run = _Run(function, scenario)
            self._runs[function] = run
            run.start()

    def result(self, function: ScenarioFunction, timeout: float) -> Any:
        """Wait up to ``timeout`` seconds for ``function`` to end; return its result, or
        raise what it raised."""
        run = self._runs.get(function)
        if run is None:
            pytest.fail(f"background scenario {function.__name__} was not started")
        run.thread.join(timeout)
        if run.thread.is_alive():
            pytest.fail(f"background scenario {function.__name__} did not end in {timeout}s")
        if run.error is not None:
            raise run.error
        return run.result

    def close(self, timeout: float = 120.0) -> None:
        """Cancel the scenarios still running and wait for them to clean up."""
        for run in self._runs.values():
            if run.thread.is_alive():
                run.cancel()
        for run in self._runs.values():
            run.thread.join(timeout)


def scenarios_of(items: list[pytest.Item]) -> list[ScenarioFunction]:
    """The scenarios of the selected tests marked ``background`` that no ``skip`` or
    bool ``skipif`` skips."""
    found: list[ScenarioFunction] = []
    for item in items:
        mark = item.get_closest_marker("background")
        if mark is None or item.get_closest_marker("skip") is not None:
            continue
        if any(m.args and m.args[0] is True for m in item.iter_markers("skipif")):
            continue
        function = mark.kwargs["scenario"]
        if function not in found:
            found.append(function)
    return found


def session_environ() -> dict[str, str]:
    """A copy of the environment now (at the session's start)."""
    return dict(os.environ)
