"""The controller: Sprout's in-process middleware for one chat request.

``Controller.chat`` reads the carbon signal, lets the policy choose a directive, applies
it, calls the engine, takes an energy sample, writes a receipt to the ledger and returns the
answer with its receipt. Nothing the ledger or the carbon provider does can fail a request:
the signal falls back, the policy falls back to the baseline directive, the ledger spools.

Modules: :mod:`~sprout.controller.core` (the :class:`Controller`),
:mod:`~sprout.controller.results` (what a request leaves behind),
:mod:`~sprout.controller.receipts` (a generation's receipt),
:mod:`~sprout.controller.sinks` (where a receipt goes) and
:mod:`~sprout.controller.stream` (streamed answers).
"""

from sprout.controller.core import Controller
from sprout.controller.receipts import outcome_of
from sprout.controller.results import ChatResult, PendingChat, StreamClosed
from sprout.controller.stream import ChatStream, StreamSink

__all__ = [
    "ChatResult",
    "ChatStream",
    "Controller",
    "PendingChat",
    "StreamClosed",
    "StreamSink",
    "outcome_of",
]
