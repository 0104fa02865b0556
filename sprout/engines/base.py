"""Generation results and the engine base class."""

from __future__ import annotations

import abc
from dataclasses import dataclass

from sprout.chat import ChatRequest
from sprout.energy.base import EnergySample


@dataclass(frozen=True)
class Generation:
    """One generated answer.

    Attributes:
        text: the answer.
        input_tokens, output_tokens: token counts (from the engine or its tokenizer).
        latency_s: wall-clock time of the generation.
        model: the model (or model variant) that answered.
        energy: the engine's own energy figure (e.g. ``recorded`` for replays), or None when
            the controller's meter must provide one.
        baseline_energy_kwh, baseline_time_s: the engine's figure for the same prompt under
            the baseline directive, when it knows one (replays do), for the always-L0
            counterfactual.
        first_token_s: time to the first token, when the engine reports it.
        finish_reason: why generation ended, when the engine says (``stop``, ``length``, or
            the guard rule that cut it: ``stop-sequence``, ``babble-code-block``...).
    """

    text: str
    input_tokens: int
    output_tokens: int
    latency_s: float
    model: str
    energy: EnergySample | None = None
    baseline_energy_kwh: float | None = None
    baseline_time_s: float | None = None
    first_token_s: float | None = None
    finish_reason: str | None = None


class Engine(abc.ABC):
    """Something that answers chat requests: a model server, a local model, a replay."""

    #: Engine name recorded in receipts.
    name: str = "abstract"
    #: Whether generation runs on this machine, so that its GPU or CPU meters see it
    #: (automatic meter choice measures only local engines and estimates the others).
    runs_locally: bool = False

    @abc.abstractmethod
    def generate(self, request: ChatRequest) -> Generation:
        """Answer ``request`` (its directive already applied)."""

    def close(self) -> None:  # noqa: B027 - optional hook, most engines hold nothing
        """Release resources (connections, models)."""
