"""The values a request leaves behind: its result, its pending state, a closed stream."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sprout.chat import ChatRequest
from sprout.energy.base import EnergySample
from sprout.engines.base import Generation
from sprout.policy.base import Decision
from sprout.receipt import Receipt

if TYPE_CHECKING:
    from sprout.carbon.signal import SignalReading


@dataclass(frozen=True)
class ChatResult:
    """The answer to one request, with its receipt.

    ``energy`` is the sample the receipt's energy came from, with its prefill/decode split
    when the engine reported the first token's time.
    """

    text: str
    receipt: Receipt
    generation: Generation
    energy: EnergySample | None = None


@dataclass(frozen=True)
class PendingChat:
    """A request whose directive is chosen, awaiting its generation (see
    :meth:`Controller.begin`).

    Attributes:
        request_id: the receipt's id.
        request: the request as the directive shaped it: what to send to the model.
        decision: the directive and why it was chosen.
        signal: the carbon reading the decision was made on.
        tenant, prompt_id: recorded in the receipt.
        base: the request before the directive shaped it (what the quality loop keeps of a
            sampled request).
        policy_version: the stored policy version that chose the directive.
        started_s: ``time.perf_counter()`` when the directive was chosen (the duration of
            an interrupted generation is measured from it).
    """

    request_id: str
    request: ChatRequest
    decision: Decision
    signal: SignalReading
    tenant: str | None = None
    prompt_id: str | None = None
    base: ChatRequest | None = None
    policy_version: int | None = None
    started_s: float = 0.0


class StreamClosed(Exception):
    """Raised by a :class:`StreamSink`'s ``text`` when its consumer went away.

    The generation stops at its next token and its receipt says ``client_closed``.
    """
