"""The estimate meter: energy from token counts with a fitted linear model.

For engines that cannot measure (no GPU counter, no RAPL), energy is estimated as
``kWh = a + b * input_tokens + c * output_tokens``. The bundled fit comes from the recorded
Llama-2-13B workloads (GPU energy measured per request on vLLM), so it describes that
model on that hardware; :mod:`sprout.energy.calibrate` fits one per engine and variant
from the ledger's measured receipts instead. Every sample it produces is labelled
``estimated``, and split into prefill (``a + b * input_tokens``: the per-request cost and
reading the prompt) and decode (``c * output_tokens``).
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sprout.data import LEVELS, WorkloadRecord, load_workload
from sprout.energy.base import EnergyMeter, EnergySample, Usage
from sprout.errors import MeterError

#: Characters per token of Llama-style tokenizers on English text, for prompts whose
#: token count was not recorded.
CHARS_PER_TOKEN = 4.0


def approx_tokens(text: str) -> int:
    """Approximate token count of ``text`` (for when no tokenizer is at hand)."""
    return max(1, round(len(text) / CHARS_PER_TOKEN)) if text else 0


@dataclass(frozen=True)
class TokenEnergyModel:
    """``kWh = intercept_kwh + per_input_token_kwh * in + per_output_token_kwh * out``."""

    intercept_kwh: float
    per_input_token_kwh: float
    per_output_token_kwh: float
    n_samples: int = 0
    label: str = "custom"

    def energy_kwh(self, input_tokens: int, output_tokens: int) -> float:
        """Estimated energy of one request (never negative)."""
        value = (
            self.intercept_kwh
            + self.per_input_token_kwh * input_tokens
            + self.per_output_token_kwh * output_tokens
        )
        return max(0.0, value)

    def split_kwh(self, input_tokens: int, output_tokens: int) -> tuple[float, float]:
        """``(prefill, decode)`` parts of :meth:`energy_kwh`, each >= 0, summing to it."""
        total = self.energy_kwh(input_tokens, output_tokens)
        prefill = self.intercept_kwh + self.per_input_token_kwh * input_tokens
        prefill = min(total, max(0.0, prefill))
        return prefill, total - prefill

    @classmethod
    def fit(cls, records: Iterable[WorkloadRecord], label: str = "fit") -> TokenEnergyModel:
        """Least-squares fit on every (prompt, level) with a recorded output token count."""
        import numpy as np

        rows: list[tuple[float, float, float]] = []
        energy: list[float] = []
        for r in records:
            in_tokens = approx_tokens(r.instruction)
            for level in LEVELS:
                if level in r.output_tokens and level in r.energy_kwh:
                    rows.append((1.0, in_tokens, r.output_tokens[level]))
                    energy.append(r.energy_kwh[level])
        if len(rows) < 3:
            raise MeterError(f"need at least 3 recorded generations to fit, got {len(rows)}")
        coef, *_ = np.linalg.lstsq(np.asarray(rows), np.asarray(energy), rcond=None)
        return cls(float(coef[0]), float(coef[1]), float(coef[2]), len(rows), label)


@functools.lru_cache(maxsize=1)
def bundled_model() -> TokenEnergyModel:
    """The model fitted on the bundled Llama-2-13B recordings (fitted once, then cached)."""
    return TokenEnergyModel.fit(load_workload(), label="llama-2-13b-chat@vllm (bundled fit)")


class EstimateMeter(EnergyMeter):
    """Estimates a window's energy from the tokens the generation used.

    Args:
        model: the token-energy model (default: the bundled fit).
        variant_models: models for particular variants (``Usage.variant``), e.g. fitted
            per variant by :func:`sprout.energy.calibrate.calibrated_meter`; other variants
            use ``model``.
    """

    source = "estimated"

    def __init__(
        self,
        model: TokenEnergyModel | None = None,
        variant_models: Mapping[str | None, TokenEnergyModel] | None = None,
    ) -> None:
        self._model = model
        self.variant_models: dict[str | None, TokenEnergyModel] = dict(variant_models or {})
        self._open: dict[str, float] = {}
        self._lock = threading.Lock()

    @property
    def model(self) -> TokenEnergyModel:
        """The token-energy model (the bundled fit unless one was given)."""
        if self._model is None:
            self._model = bundled_model()
        return self._model

    def model_for(self, variant: str | None) -> TokenEnergyModel:
        """The model that estimates ``variant``'s generations."""
        return self.variant_models.get(variant) or self.model

    def begin(self, window: str) -> None:
        with self._lock:
            if window in self._open:
                raise MeterError(f"energy window {window!r} is already open")
            self._open[window] = time.perf_counter()

    def discard(self, window: str) -> None:
        """Forget ``window`` without estimating it (its energy was measured)."""
        with self._lock:
            self._open.pop(window, None)

    def end(self, window: str, usage: Usage) -> EnergySample:
        with self._lock:
            started = self._open.pop(window, None)
        if started is None:
            raise MeterError(f"energy window {window!r} was never opened")
        model = self.model_for(usage.variant)
        prefill, decode = model.split_kwh(usage.input_tokens, usage.output_tokens)
        return EnergySample(
            energy_kwh=model.energy_kwh(usage.input_tokens, usage.output_tokens),
            source="estimated",
            duration_s=usage.duration_s if usage.duration_s > 0 else time.perf_counter() - started,
            device=model.label,
            prefill_kwh=prefill,
            decode_kwh=decode,
        )
