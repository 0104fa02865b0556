"""Energy samples and the meter base class."""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Literal

EnergySource = Literal["measured-nvml", "measured-rapl", "recorded", "estimated"]
ENERGY_SOURCES: tuple[str, ...] = ("measured-nvml", "measured-rapl", "recorded", "estimated")


@dataclass(frozen=True)
class EnergySample:
    """Energy attributed to one request.

    Attributes:
        energy_kwh: the energy, kWh.
        source: how it was obtained; an estimate is never labelled as a measurement.
        duration_s: the window's wall-clock length, seconds.
        device: what was metered (``gpu:0``, ``package-0``...), or the model that estimated it.
        prefill_kwh, decode_kwh: split of ``energy_kwh`` when the first token's time is known.
    """

    energy_kwh: float
    source: EnergySource
    duration_s: float
    device: str = ""
    prefill_kwh: float | None = None
    decode_kwh: float | None = None

    def __post_init__(self) -> None:
        if not math.isfinite(self.energy_kwh) or self.energy_kwh < 0:
            raise ValueError(f"energy must be a finite number >= 0 kWh, got {self.energy_kwh!r}")
        if self.source not in ENERGY_SOURCES:
            raise ValueError(f"unknown energy source {self.source!r}; known: {ENERGY_SOURCES}")
        if not math.isfinite(self.duration_s) or self.duration_s < 0:
            raise ValueError(f"duration must be a finite number >= 0 s, got {self.duration_s!r}")

    @property
    def measured(self) -> bool:
        """True for hardware measurements (NVML, RAPL)."""
        return self.source.startswith("measured-")


@dataclass(frozen=True)
class Usage:
    """What a generation did, for meters that estimate from tokens.

    ``first_token_s`` (time to the first token, when the engine reports it) lets a meter
    split the energy into prefill and decode.
    """

    input_tokens: int
    output_tokens: int
    duration_s: float
    variant: str | None = None
    first_token_s: float | None = None


class EnergyMeter(abc.ABC):
    """Measures or estimates the energy of named, possibly overlapping, windows.

    ``begin(name)`` opens a window; ``end(name, usage)`` closes it and returns its sample.
    One subclass per hardware vendor, plus the estimate meter.
    """

    #: The ``source`` this meter's samples carry.
    source: EnergySource

    @abc.abstractmethod
    def begin(self, window: str) -> None:
        """Open the window called ``window``."""

    @abc.abstractmethod
    def end(self, window: str, usage: Usage) -> EnergySample:
        """Close ``window`` and return the energy attributed to it."""

    def close(self) -> None:  # noqa: B027 - optional hook, most meters hold nothing
        """Release resources (device handles, sampler threads)."""
