"""The replay engine: answers bundled prompts with their recorded answers and costs.

For a prompt from the bundled workloads it returns the answer recorded under the chosen
directive (Llama-2-13B-chat at L0/L1/L2, or the 7B model for variant ``7b``), with the
energy and latency measured when it was recorded (energy source ``recorded``). It lets the
demo, tests and evaluations run the real request path with no GPU and no network.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sprout.chat import ChatRequest
from sprout.data import DATASETS, WorkloadRecord, load_responses, load_workload
from sprout.energy.base import EnergySample
from sprout.energy.estimate import approx_tokens
from sprout.engines.base import Engine, Generation
from sprout.errors import EngineError, UnknownPromptError

if TYPE_CHECKING:
    from sprout.config import Settings

RECORDED_MODEL = "llama-2-13b-chat"
VARIANT_MODELS = {None: RECORDED_MODEL, "7b": "llama-2-7b-chat"}


def _normalise(text: str) -> str:
    return " ".join(text.split())


@dataclass(frozen=True)
class _Hit:
    record: WorkloadRecord
    key: str  # recorded level key, e.g. "L1" or "7b_L0"


class ReplayEngine(Engine):
    """Answers bundled prompts from their recordings.

    Prompts are matched on the last user message, whitespace-normalised. The directive name
    on the request picks the recorded level (``L0``, ``L1``, ``L2``); variant ``7b`` picks the
    7B model's recording (only recorded at L0).
    """

    name = "replay"

    def __init__(self, records: Iterable[WorkloadRecord] | None = None) -> None:
        self._records = list(records) if records is not None else load_workload(DATASETS)
        self._by_prompt: dict[str, WorkloadRecord] = {}
        for r in self._records:
            # Several datasets share a few prompts; the first recording wins, consistently.
            self._by_prompt.setdefault(_normalise(r.instruction), r)
        self._lock = threading.Lock()

    @property
    def records(self) -> list[WorkloadRecord]:
        """The recordings this engine can replay."""
        return self._records

    def lookup(self, prompt: str) -> WorkloadRecord:
        """The recording of ``prompt``.

        Raises:
            UnknownPromptError: if the prompt was not recorded.
        """
        record = self._by_prompt.get(_normalise(prompt))
        if record is None:
            shown = prompt if len(prompt) <= 60 else prompt[:57] + "..."
            raise UnknownPromptError(
                f"replay: no recording of the prompt {shown!r}; the replay engine answers only "
                "prompts of the bundled workloads (use a model engine for others)"
            )
        return record

    def _resolve(self, request: ChatRequest) -> _Hit:
        record = self.lookup(request.prompt)
        level = request.directive or "L0"
        key = level if request.variant is None else f"{request.variant}_{level}"
        if key not in record.energy_kwh:
            raise EngineError(
                f"replay: {record.id} has no recording for directive {level!r} with variant "
                f"{request.variant!r} (recorded: {', '.join(sorted(record.energy_kwh))})"
            )
        return _Hit(record, key)

    def _text(self, hit: _Hit) -> str:
        with self._lock:  # load_responses caches; the lock avoids parsing a file twice
            responses = load_responses(hit.record.dataset)
        text = (responses.get(hit.record.id) or {}).get("responses", {}).get(hit.key)
        if text is None:
            raise EngineError(
                f"replay: the answer of {hit.record.id} at {hit.key} was not recorded "
                "(only its energy was); judged prompts have every answer"
            )
        return str(text).strip()

    def generate(self, request: ChatRequest) -> Generation:
        """Replay the recorded answer, energy and latency for ``request``.

        A directive's token cap is applied to the recorded answer; its energy and latency
        are then scaled by the share of tokens kept and labelled ``estimated``.
        """
        hit = self._resolve(request)
        text = self._text(hit)
        record = hit.record
        out_tokens = record.output_tokens.get(hit.key) or approx_tokens(text)
        energy_kwh = record.energy_kwh[hit.key]
        latency_s = record.time_s[hit.key]
        source = "recorded"
        cap = request.max_new_tokens
        if cap is not None and out_tokens > cap:
            kept = cap / out_tokens
            text = text[: max(1, int(len(text) * kept))]
            energy_kwh *= kept
            latency_s *= kept
            out_tokens = cap
            source = "estimated"  # a scaled recording is no longer a measurement
        in_tokens = sum(approx_tokens(m.content) for m in request.messages)
        baseline_key = "L0" if request.variant is None else f"{request.variant}_L0"
        return Generation(
            text=text,
            input_tokens=in_tokens,
            output_tokens=out_tokens,
            latency_s=latency_s,
            model=VARIANT_MODELS.get(request.variant, f"{RECORDED_MODEL}:{request.variant}"),
            energy=EnergySample(
                energy_kwh=energy_kwh,
                source=source,  # type: ignore[arg-type]
                duration_s=latency_s,
                device=f"replay:{record.id}:{hit.key}",
            ),
            baseline_energy_kwh=record.energy_kwh.get(baseline_key, record.energy_kwh["L0"]),
            baseline_time_s=record.time_s.get(baseline_key, record.time_s["L0"]),
        )


def from_settings(settings: Settings) -> ReplayEngine:
    """The replay engine (it needs no setting: it answers from the bundled recordings)."""
    return ReplayEngine()
