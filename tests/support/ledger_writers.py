"""Ledger writers in subprocesses, to be killed with SIGKILL: receipts are counted before and
after, against a progress file the writer extends after each ``append`` returns."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.paths import REPO_ROOT

#: Scheduling slack on a loaded 2-core machine, on top of the flush interval.
SLACK_S = 1.5

#: A writer appending receipts at a steady rate until it is killed (bounded all the same).
WRITER = r"""
import sys, time
from dataclasses import replace
sys.path.insert(0, sys.argv[1])
from tests.support.receipts import make_receipt
from sprout.ledger.store import Ledger

url, spool, mode, progress, prefix = sys.argv[2:7]
rate, interval = float(sys.argv[7]), float(sys.argv[8])
ledger = Ledger(url, spool_path=spool, durability=mode, flush_interval_s=interval)
out = open(progress, "a", buffering=1)
period, next_t = 1.0 / rate, time.monotonic()
for i in range(200_000):
    ledger.append(replace(make_receipt(i), request_id=f"{prefix}-{i:06d}"))
    out.write(f"{i} {time.monotonic():.6f}\n")  # written once append has returned
    next_t += period
    time.sleep(max(0.0, next_t - time.monotonic()))
"""


def start_writer(
    url: str, spool: Path, mode: str, progress: Path, *, prefix: str = "w", rate: float = 400
) -> subprocess.Popen[bytes]:
    """Start :data:`WRITER` on ``url``, logging each append to ``progress``."""
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            WRITER,
            str(REPO_ROOT),
            url,
            str(spool),
            mode,
            str(progress),
            prefix,
            str(rate),
            "0.2",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def appended(progress: Path) -> dict[str, float]:
    """request_id -> when its append returned (complete lines only)."""
    out = {}
    for line in progress.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            out[f"w-{int(parts[0]):06d}"] = float(parts[1])
    return out


def wait_for(progress: Path, n: int, proc: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    """Wait until the writer logged ``n`` appends; fail if it exits or takes too long."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            pytest.fail(f"writer exited early ({proc.returncode}):\n{err}")
        if progress.exists() and len(appended(progress)) >= n:
            return
        time.sleep(0.02)
    pytest.fail(f"writer did not append {n} receipts within {timeout_s} s")


def kill(proc: subprocess.Popen[bytes]) -> float:
    """SIGKILL the writer; returns when (monotonic) it was killed."""
    killed_at = time.monotonic()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    if proc.stderr:
        proc.stderr.close()
    return killed_at
