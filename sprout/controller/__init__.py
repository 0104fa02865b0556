"""The controller: Sprout's in-process middleware for one chat request.

``Controller.chat`` reads the carbon signal, lets the policy choose a directive, applies
it, calls the engine, takes an energy sample, writes a receipt to the ledger and returns the
answer with its receipt. Nothing the ledger or the carbon provider does can fail a request:
the signal falls back, the policy falls back to the baseline directive, the ledger spools.

Modules: :mod:`~sprout.controller._core` (the :class:`Controller`),
:mod:`~sprout.controller.results` (what a request leaves behind),
:mod:`~sprout.controller._receipts` (a generation's receipt),
:mod:`~sprout.controller.sinks` (where a receipt goes) and
:mod:`~sprout.controller._stream` (streamed answers).
"""

from sprout.controller._core import Controller
from sprout.controller._receipts import outcome_of
from sprout.controller._stream import ChatStream, StreamSink
from sprout.controller.results import ChatResult, PendingChat, StreamClosed

__all__ = [
    "ChatResult",
    "ChatStream",
    "Controller",
    "PendingChat",
    "StreamClosed",
    "StreamSink",
    "outcome_of",
]
