"""The process-wide background refit of the live policies' multipliers.

When a live policy's period closes (hourly), recording it in the pacer and solving for the
next multiplier is handed to one daemon thread, so that the request that closed the period
does not pay for it. The thread is started on first use, never at import.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sprout.policy.base import CarbonContext

#: Requests of a closed period whose preference curve a background refit computes.
LIVE_CURVE_ROWS = 256


@dataclass(frozen=True)
class RefitJob:
    """A closed period and the next period's opening, handed to the refit."""

    rows: np.ndarray | None  # the closed period's predictions (pref, energy, time)
    ci: float  # its intensity
    q0: float  # the q0^ it was served with
    floor: float  # its floor (without margin)
    achieved: float  # its expected normalized preference
    next_q0: float  # q0^ of the next period
    carbon: CarbonContext  # the next period's carbon context


_WORKER_LOCK = threading.Lock()
_WORKER: queue.SimpleQueue[Callable[[], None]] | None = None


def refit_worker() -> queue.SimpleQueue[Callable[[], None]]:
    """The queue of the process's refit thread (one daemon thread, started on first use,
    shared by every policy: refits are rare, hourly, and must run in order)."""
    global _WORKER
    with _WORKER_LOCK:
        if _WORKER is None:
            jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()

            def run() -> None:
                while True:
                    job = jobs.get()
                    try:
                        job()
                    except Exception:  # a failed refit keeps the last multiplier
                        logging.getLogger("sprout.policy").exception("multiplier refit failed")

            threading.Thread(target=run, name="sprout-policy-refit", daemon=True).start()
            _WORKER = jobs
        return _WORKER
