"""Sampling live requests for the quality loop.

A configured share of served requests is queued for the judge: their prompt (the app's
messages, before any directive shaped them) and the answer served are kept in the ledger's
``sampled_prompts`` table until the retention period ends (``prompt_retention_days``;
:func:`sprout.ledger.retention.prune_prompts`, run by the judge job and by
``sprout ledger prune``). Nothing is kept for the other requests: prompt text is stored only
for sampled ones. Never sampled: requests that opted out (served the baseline with the
reason ``opt-out``), requests of tenants listed as opted out, and the quality loop's own
generations.

Cost on the request path: one random draw. A sampled prompt is handed to a bounded queue
that a background thread writes to the database; a full queue or a database error loses the
sample (logged and counted), never the request.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sprout.chat import ChatRequest
    from sprout.ledger.store import Ledger
    from sprout.receipt import Receipt

log = logging.getLogger("sprout.judge")

#: Sampled prompts waiting for the writer thread before new samples are dropped.
DEFAULT_QUEUE_SIZE = 1000
#: The share of served requests the quality-loop docs (docs/quality-loop.md) recommend judging in
#: production, measured against the loop's own carbon in the simulator.
RECOMMENDED_JUDGE_SHARE = 0.02
#: Decision reason of a request that opted out (see :meth:`sprout.controller.Controller.chat`).
OPT_OUT_REASON = "opt-out"
_STOP = object()


def prompt_payload(request: ChatRequest, answer: str, receipt: Receipt) -> dict[str, Any]:
    """What is kept of a sampled request (JSON data): the app's request, the answer served,
    and how it was served."""
    return {
        "messages": [m.as_dict() for m in request.messages],
        "max_new_tokens": request.max_new_tokens,
        "stop": list(request.stop),
        "temperature": request.temperature,
        "answer": answer,
        "directive": receipt.directive,
        "decision": receipt.decision,
        "prompt_id": receipt.prompt_id,
    }


def parse_tenants(value: str | Iterable[str]) -> frozenset[str]:
    """Tenants from a comma-separated string (or an iterable), blanks dropped."""
    items = value.split(",") if isinstance(value, str) else value
    return frozenset(t.strip() for t in items if t and t.strip())


@dataclass
class SamplerStats:
    """Counts since the sampler started."""

    offered: int = 0
    sampled: int = 0
    stored: int = 0
    dropped: int = 0  # the queue was full
    failed: int = 0  # the database refused or was down


class Sampler:
    """Chooses which served requests the quality loop judges, and keeps their prompts.

    Args:
        ledger: where prompts are kept.
        share: share of eligible requests sampled, in [0, 1].
        rng: randomness of the draws (its own, so that sampling never shifts the policy's
            draws).
        opt_out_tenants: tenants never sampled.
        queue_size: samples waiting for the writer before new ones are dropped.
        background: write from a background thread (False: inline, for tools and tests).

    Raises:
        ValueError: a share outside [0, 1] or a non-positive queue size.
    """

    def __init__(
        self,
        ledger: Ledger,
        share: float,
        *,
        rng: random.Random | None = None,
        opt_out_tenants: Iterable[str] | str = (),
        queue_size: int = DEFAULT_QUEUE_SIZE,
        background: bool = True,
    ) -> None:
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"sample share must lie in [0, 1], got {share!r}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size!r}")
        self.ledger = ledger
        self.share = share
        self.opt_out_tenants = parse_tenants(opt_out_tenants)
        self.stats = SamplerStats()
        self._rng = rng or random.Random()
        self._background = background
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._closed = False
        self._last_drop_log = 0.0

    def eligible(self, receipt: Receipt) -> bool:
        """Whether ``receipt``'s request may be sampled at all (privacy, not chance)."""
        return (
            receipt.purpose == "serve"
            and receipt.decision != OPT_OUT_REASON
            and (receipt.tenant is None or receipt.tenant not in self.opt_out_tenants)
        )

    def offer(self, receipt: Receipt, request: ChatRequest, answer: str) -> bool:
        """Sample the served request with probability ``share``; never raises.

        Args:
            receipt: the request's receipt.
            request: the app's request, before the directive shaped it.
            answer: the answer served.

        Returns:
            Whether it was sampled (its prompt is then queued for storage).
        """
        try:
            self.stats.offered += 1
            if self._closed or self.share <= 0.0 or not self.eligible(receipt):
                return False
            if self._rng.random() >= self.share:
                return False
            self.stats.sampled += 1
            item = (receipt, prompt_payload(request, answer, receipt))
            if not self._background:
                self._store(item)
                return True
            self._ensure_thread()
            try:
                self._queue.put_nowait(item)
            except queue.Full:
                self.stats.dropped += 1
                now = time.monotonic()
                if now - self._last_drop_log > 60.0:  # one line a minute, not one per request
                    self._last_drop_log = now
                    log.warning(
                        "quality loop: sample queue full, %d samples dropped so far "
                        "(is the ledger slow?)",
                        self.stats.dropped,
                    )
            return True
        except Exception as e:  # sampling must never fail a request
            log.error("quality loop: sampling failed: %s", e)
            return False

    def _ensure_thread(self) -> None:
        if self._thread is not None:
            return
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="sprout-judge-sampler", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                self._store(item)
            finally:
                self._queue.task_done()

    def _store(self, item: tuple[Receipt, dict[str, Any]]) -> None:
        receipt, payload = item
        try:
            # Keyed to the receipt: same request id and time, so the judge finds the
            # receipt through its (created_at, request_id) index.
            self.ledger.add_sampled_prompt(
                receipt.request_id,
                payload,
                created_at=receipt.created_at,
                tenant=receipt.tenant,
            )
            self.stats.stored += 1
        except Exception as e:
            self.stats.failed += 1
            log.warning("quality loop: sampled prompt %s not kept: %s", receipt.request_id, e)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until queued samples are written; False if ``timeout_s`` passed first."""
        deadline = time.monotonic() + timeout_s
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._queue.all_tasks_done.wait(remaining)
        return True

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued and stop the writer; later offers are ignored."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self.flush(timeout_s)
            try:
                self._queue.put(_STOP, timeout=timeout_s)
            except queue.Full:
                return
            self._thread.join(timeout_s)


def build_sampler(
    settings: Any, ledger: Ledger | None, rng: random.Random | None = None
) -> Sampler | None:
    """The sampler ``settings`` ask for (``judge_sample_share`` > 0 and a ledger), else None."""
    if ledger is None or settings.judge_sample_share <= 0:
        return None
    return Sampler(
        ledger,
        settings.judge_sample_share,
        rng=rng,
        opt_out_tenants=settings.judge_opt_out_tenants,
    )


__all__ = [
    "DEFAULT_QUEUE_SIZE",
    "OPT_OUT_REASON",
    "RECOMMENDED_JUDGE_SHARE",
    "Sampler",
    "SamplerStats",
    "build_sampler",
    "parse_tenants",
    "prompt_payload",
]
