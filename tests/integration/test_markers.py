"""The suite's markers (tests/conftest.py): a run can leave out what it cannot host."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.paths import REPO_ROOT

#: Four collections of the whole suite in subprocesses: about a minute.
pytestmark = pytest.mark.slow


def _collected(marker: str) -> set[str]:
    args = ["--collect-only", "-q", "-p", "no:cacheprovider", "--strict-markers", "-m", marker]
    out = subprocess.run(
        [sys.executable, "-m", "pytest", *args, "tests"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return {line.split("::")[0] for line in out.stdout.splitlines() if "::" in line}


def test_markers_follow_what_a_test_needs():
    postgres = _collected("postgres")
    assert "tests/integration/test_ledger_postgres.py" in postgres  # uses the session's server
    assert "tests/unit/ledger/test_ledger.py" not in postgres  # SQLite only
    hf = _collected("hf")
    assert {"tests/unit/engines/test_hf.py", "tests/unit/judge/test_hf.py"} <= hf
    slow = _collected("slow")
    assert "tests/integration/test_server_workers.py" in slow
    rest = _collected("not slow and not postgres and not hf")
    assert not rest & (
        hf
        | {"tests/integration/test_ledger_postgres.py", "tests/integration/test_server_workers.py"}
    )
