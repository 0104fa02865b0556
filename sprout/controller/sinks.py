"""Where a written receipt goes: the ledger, the receipt listeners, the quality loop's sampler.

Each sink has one method, ``emit``, and never raises: the answer is ready by the time its
receipt goes out, and nothing downstream of it may fail the request. :func:`fan_out` hands
a receipt to the sinks in order; the controller lists them ledger first, so that a
listener (metrics, telemetry) sees a receipt the ledger has already queued.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from sprout.chat import ChatRequest
from sprout.receipt import Receipt

if TYPE_CHECKING:
    from sprout.judge.sampler import Sampler
    from sprout.ledger.store import Ledger

# The package's one logger, named as before it was split: logging configurations name it.
log = logging.getLogger("sprout.controller")


class ReceiptSink(Protocol):
    """Receives every receipt the controller writes; must not raise."""

    def emit(self, receipt: Receipt, base: ChatRequest | None, text: str) -> None:
        """Take ``receipt`` (on the generating thread).

        ``base`` and ``text`` are the request before its directive shaped it and the
        answer: what the quality loop keeps of a sampled request. ``base`` is None for a
        generation that stopped early, which the quality loop does not sample.
        """


@dataclass(frozen=True, slots=True)
class LedgerSink:
    """Queues receipts in the ledger (its writer thread stores them)."""

    ledger: Ledger

    def emit(self, receipt: Receipt, base: ChatRequest | None, text: str) -> None:
        try:
            self.ledger.append(receipt)
        except Exception as e:  # the ledger must never fail a request
            log.error("receipt %s could not be queued: %s", receipt.request_id, e)


@dataclass(frozen=True, slots=True)
class ListenerSink:
    """Calls a receipt listener (see :meth:`Controller.add_listener`)."""

    listener: Callable[[Receipt], None]

    def emit(self, receipt: Receipt, base: ChatRequest | None, text: str) -> None:
        try:
            self.listener(receipt)
        except Exception as e:  # a metrics sink must never fail a request
            log.error("receipt listener %r failed: %s", self.listener, e)


@dataclass(frozen=True, slots=True)
class SamplerSink:
    """Offers completed requests to the quality loop's sampler."""

    sampler: Sampler

    def emit(self, receipt: Receipt, base: ChatRequest | None, text: str) -> None:
        if base is None:  # stopped early (or begun without one): not sampled
            return
        try:  # a random draw; a sampled prompt is stored by a background thread
            self.sampler.offer(receipt, base, text)
        except Exception as e:  # the quality loop must never fail a request
            log.error("request %s could not be sampled: %s", receipt.request_id, e)


def fan_out(
    sinks: Iterable[ReceiptSink], receipt: Receipt, base: ChatRequest | None = None, text: str = ""
) -> None:
    """Hand ``receipt`` to each of ``sinks``, in order (see :meth:`ReceiptSink.emit`)."""
    for sink in sinks:
        sink.emit(receipt, base, text)
