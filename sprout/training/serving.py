"""Serving the newest stored contextual policy: :func:`load_policy` rebuilds it from the
ledger (which checks the version's hash first); :class:`PolicyWatcher` polls for a newer
version on a background thread and swaps it into a running controller, keeping the current
policy when a load fails.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from sprout.errors import ConfigError, SproutError
from sprout.policy.base import (
    CONTEXTUAL_KIND,
)
from sprout.policy.contextual import (
    ContextualModel,
    ContextualPolicy,
    LevelPrediction,
)

if TYPE_CHECKING:
    from sprout.directives import DirectiveSet
    from sprout.ledger.store import Ledger


log = logging.getLogger("sprout.training")


def policy_from_params(
    params: Mapping[str, Any],
    directives: DirectiveSet,
    xi: float,
    embodied_g_per_s: float,
    **options: Any,
) -> ContextualPolicy:
    """A :class:`ContextualPolicy` from a stored version's params.

    Raises:
        ConfigError: the params are malformed.
        OptimizerError: the model's levels do not fit ``directives``.
    """
    try:
        model = ContextualModel.from_params(params["model"])
        ref = params.get("reference") or {}
        reference = (
            LevelPrediction(
                np.asarray(ref["pref"], dtype=float),
                np.asarray(ref["energy_kwh"], dtype=float),
                np.asarray(ref["time_s"], dtype=float),
            )
            if ref
            else None
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"contextual policy version: malformed params ({e!r})") from e
    k = len(model.levels)
    if reference is not None and not (
        reference.pref.ndim == 2
        and reference.pref.shape[1] == k
        and reference.energy_kwh.shape == reference.pref.shape == reference.time_s.shape
    ):
        raise ConfigError("contextual policy version: reference predictions are malformed")
    return ContextualPolicy(model, directives, xi, embodied_g_per_s, reference=reference, **options)


def load_policy(
    ledger: Ledger,
    directives: DirectiveSet,
    xi: float,
    embodied_g_per_s: float,
    **options: Any,
) -> tuple[ContextualPolicy, int] | None:
    """The newest stored contextual policy and its version id, or None if none is stored.

    The ledger verifies the version's SHA-256 before returning it.

    Raises:
        LedgerError: the ledger cannot be read or the version was altered.
        ConfigError, OptimizerError: the version cannot serve these directives.
    """
    record = ledger.latest_policy_version(CONTEXTUAL_KIND)
    if record is None:
        return None
    policy = policy_from_params(record.params, directives, xi, embodied_g_per_s, **options)
    return policy, record.id


class PolicyWatcher:
    """Swaps the newest stored contextual policy into a running controller.

    Every ``interval_s`` a daemon thread reads the newest contextual policy version; when
    its id differs from the one being served, the version is loaded (its hash verified by
    the ledger) and handed to ``swap(policy, version_id)``. Requests never wait on it. A
    failed read or load is logged and the current policy kept; the same broken version is
    not retried until a newer one appears.

    Args:
        ledger: the ledger to watch.
        load: builds ``(policy, id)`` of the newest version, or None (see :func:`load_policy`).
        swap: installs a policy (e.g. :meth:`Controller.swap_policy`).
        current: the version id being served (None: none).
        interval_s: seconds between checks.
    """

    def __init__(
        self,
        ledger: Ledger,
        load: Callable[[], tuple[Any, int] | None],
        swap: Callable[[Any, int], None],
        *,
        current: int | None = None,
        interval_s: float = 300.0,
    ) -> None:
        if not interval_s > 0:
            raise ConfigError(f"policy refresh interval must be > 0, got {interval_s!r}")
        self.ledger = ledger
        self._load = load
        self._swap = swap
        self.current = current
        self.interval_s = interval_s
        self._failed: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> bool:
        """Look for a newer version now; True if one was swapped in."""
        try:
            record = self.ledger.latest_policy_version(CONTEXTUAL_KIND)
        except SproutError as e:
            log.warning("policy refresh: cannot read the newest policy version: %s", e)
            return False
        if record is None or record.id in (self.current, self._failed):
            return False
        try:
            loaded = self._load()
        except SproutError as e:
            self._failed = record.id
            log.error(
                "policy refresh: version %s cannot be used, keeping version %s: %s",
                record.id,
                self.current,
                e,
            )
            return False
        if loaded is None:
            return False
        policy, version = loaded
        self._swap(policy, version)
        log.info("policy refresh: now serving contextual policy version %s", version)
        self.current = version
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception:  # never let the thread die: the next check may succeed
                log.exception("policy refresh failed")

    def start(self) -> None:
        """Start the background thread (idempotent)."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name="sprout-policy-watcher", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        """Stop the thread (waits for a check in progress)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30.0)
            self._thread = None


# --- the scheduled job ---------------------------------------------------------------------
