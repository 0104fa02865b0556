"""Shared fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from sprout.config import Settings
from sprout.data import load_workload
from tests.support.clock import FakeClock
from tests.support.postgres import PostgresServer, PostgresUnavailable
from tests.support.settings import ledger_url, make_settings

# LiteLLM fetches its model price map from the network when imported unless told to use
# the copy it ships; set before anything imports it (subprocesses inherit it).
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


#: Test modules that build tiny torch/transformers models (the ``hf`` extra).
_HF_MODULES = ("build_tiny_models", "tiny_models")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test by what it needs, so that a run can pick (``-m "not postgres"``):
    ``postgres`` (the session's PostgreSQL server, :func:`pg`), ``hf`` (tiny torch models
    built at run time) and ``slow`` (modules marked so, simulations and servers)."""
    for item in items:
        if "pg" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)
        module = getattr(item, "module", None)
        names = vars(module) if module is not None else {}
        if any(name in names for name in _HF_MODULES):
            item.add_marker(pytest.mark.hf)


@pytest.fixture(scope="session")
def judged_records():
    """Bundled judged prompts with a clear verdict (every directive's answer recorded)."""
    return [r for r in load_workload() if r.judge_sampled and r.judge_best is not None]


@pytest.fixture
def sqlite_url(tmp_path):
    """URL of a fresh SQLite ledger file."""
    return ledger_url(tmp_path)


@pytest.fixture
def clock() -> FakeClock:
    """A settable clock starting at 2023-06-12 00:00 UTC; its monotonic clock is ``t``'s
    timestamp (tests/support/clock.py)."""
    return FakeClock()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Offline settings over a fresh SQLite ledger in ``tmp_path``: the static carbon provider
    and the estimate meter (tests/support/settings.py)."""
    return make_settings(tmp_path, meter="estimate")


@pytest.fixture
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests to 127.0.0.1 must not be sent to a proxy named in the environment."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="session")
def pg() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the session (tests/support/postgres.py); each test makes
    its own database. Fails, never skips, when the server cannot start."""
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
