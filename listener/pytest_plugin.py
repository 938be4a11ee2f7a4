"""pytest fixtures for applications' test suites; enable them in a ``conftest.py``::

    pytest_plugins = ["listener.pytest_plugin"]

- ``pgwake_queue``: a :class:`~listener.testing.TestQueue` on the database of
  ``pgwake_test_dsn``, migrated to this pgwake's schema and emptied of jobs for each
  test, with ``enqueue`` and ``drain`` (run the due jobs in this process).
- ``pgwake_test_dsn``: the database to use; ``PGWAKE_TEST_DSN`` by default (the test is
  skipped without it). Override the fixture to hand it your own test database.

Invariant: only the ``pgwake`` schema of that database is touched (created or migrated,
and its jobs deleted before each test); nothing else of it.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from listener.testing import TestQueue


@pytest.fixture
def pgwake_test_dsn() -> str:
    """The test database's libpq URL (``PGWAKE_TEST_DSN``)."""
    dsn = os.environ.get("PGWAKE_TEST_DSN")
    if not dsn:
        pytest.skip("PGWAKE_TEST_DSN is not set (or override the pgwake_test_dsn fixture)")
    return dsn


@pytest_asyncio.fixture
async def pgwake_queue(pgwake_test_dsn: str) -> AsyncIterator[TestQueue]:
    """A migrated pgwake schema without jobs, to enqueue into and drain."""
    async with TestQueue.open(pgwake_test_dsn) as queue:
        yield queue
