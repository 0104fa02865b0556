"""Shared fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from postgres import PostgresServer, PostgresUnavailable

from sprout.data import load_workload

# LiteLLM fetches its model price map from the network when imported unless told to use
# the copy it ships; set before anything imports it (subprocesses inherit it).
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


@pytest.fixture(scope="session")
def judged_records():
    """Bundled judged prompts with a clear verdict (every directive's answer recorded)."""
    return [r for r in load_workload() if r.judge_sampled and r.judge_best is not None]


@pytest.fixture
def sqlite_url(tmp_path):
    """URL of a fresh SQLite ledger file."""
    return f"sqlite:///{tmp_path / 'ledger.db'}"


class FakeClock:
    """A settable wall clock and matching monotonic clock."""

    def __init__(self, start: datetime | None = None) -> None:
        self.t = start or datetime(2023, 6, 12, 0, 0, tzinfo=UTC)

    def now(self) -> datetime:
        return self.t

    def monotonic(self) -> float:
        return self.t.timestamp()


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture(scope="session")
def pg() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the session (tests/postgres.py); each test makes its own
    database. Fails, never skips, when the server cannot start."""
    try:
        server = PostgresServer()
    except PostgresUnavailable as e:
        pytest.fail(f"cannot set up the test PostgreSQL server: {e}", pytrace=False)
    try:
        server.start()
    except PostgresUnavailable as e:
        server.close()
        pytest.fail(f"cannot start the test PostgreSQL server: {e}", pytrace=False)
    yield server
    server.close()
