"""Choosing the energy meter: NVML if a GPU is visible, else RAPL if readable, else estimate.

Hardware meters see only this machine, so ``auto`` measures only engines that run here
(:attr:`sprout.engines.base.Engine.runs_locally`: the transformers engine, an
OpenAI-compatible server on a loopback address) and estimates the others. A measuring
meter is wrapped in :class:`FallbackMeter`: should the hardware fail mid-flight, the
request still gets an energy figure, labelled ``estimated``. Each sample's ``source``
(``measured-nvml``, ``measured-rapl``, ``estimated``) and ``device`` say on the receipt
which meter produced it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sprout.energy import nvml, rapl
from sprout.energy.base import EnergyMeter, EnergySample, Usage
from sprout.energy.estimate import EstimateMeter
from sprout.errors import ConfigError, MeterError
from sprout.plugins import METERS

log = logging.getLogger("sprout.energy")

MeterKind = Literal["auto", "nvml", "rapl", "estimate"]


class FallbackMeter(EnergyMeter):
    """A measuring meter that falls back to an estimate when the hardware fails.

    Args:
        primary: the hardware meter.
        fallback: the estimate meter used for windows the primary cannot measure.
    """

    def __init__(self, primary: EnergyMeter, fallback: EstimateMeter) -> None:
        self.primary = primary
        self.fallback = fallback
        self.source = primary.source
        self._lock = threading.Lock()
        self._estimated: set[str] = set()  # windows the primary failed to open

    def begin(self, window: str) -> None:
        self.fallback.begin(window)  # cheap, and ready should the primary fail at the end
        try:
            self.primary.begin(window)
        except MeterError as e:
            log.warning("%s; estimating the energy of %s", e, window)
            with self._lock:
                self._estimated.add(window)

    def end(self, window: str, usage: Usage) -> EnergySample:
        with self._lock:
            failed = window in self._estimated
            self._estimated.discard(window)
        if not failed:
            try:
                sample = self.primary.end(window, usage)
            except MeterError as e:
                log.warning("%s; estimating the energy of %s", e, window)
            else:
                # Measured: no estimate needed (nor its model loaded).
                self.fallback.discard(window)
                return sample
        return self.fallback.end(window, usage)

    def close(self) -> None:
        """Close the primary meter."""
        self.primary.close()


@dataclass(frozen=True)
class MeterChoice:
    """The chosen meter and why.

    Attributes:
        meter: the meter.
        kind: ``nvml``, ``rapl`` or ``estimate``.
        reasons: what was tried and found, in order (for logs and ``sprout`` output).
    """

    meter: EnergyMeter
    kind: str
    reasons: tuple[str, ...]


def choose_meter(
    kind: str = "auto",
    *,
    engine_local: bool = True,
    gpu_indices: Sequence[int] | None = None,
    rapl_root: str | Path | None = None,
    estimate: EstimateMeter | None = None,
) -> MeterChoice:
    """Choose (and open) the energy meter.

    Args:
        kind: ``auto``, or force ``nvml``, ``rapl`` or ``estimate``.
        engine_local: whether the engine generates on this machine (``auto`` estimates
            remote engines: this machine's counters would not see their work).
        gpu_indices: GPUs for NVML (default: ``CUDA_VISIBLE_DEVICES``, else all).
        rapl_root: powercap directory (default ``/sys/class/powercap``).
        estimate: the estimate meter, e.g. calibrated from the ledger (default: the
            bundled fit); also the fallback of a measuring meter.

    Raises:
        ConfigError: an unknown ``kind``.
        MeterError: a forced ``nvml`` or ``rapl`` meter cannot measure here.
    """

    if kind not in METERS:
        raise ConfigError(f"meter: unknown kind {kind!r}; choose one of {', '.join(METERS.names)}")
    estimate = estimate or EstimateMeter()
    root = rapl_root or rapl.DEFAULT_ROOT
    if kind == "nvml":
        return MeterChoice(FallbackMeter(nvml.NVMLMeter(gpu_indices), estimate), "nvml", ())
    if kind == "rapl":
        return MeterChoice(FallbackMeter(rapl.RAPLMeter(root), estimate), "rapl", ())
    if kind == "estimate":
        return MeterChoice(estimate, "estimate", ("meter=estimate",))
    if not engine_local:
        return MeterChoice(estimate, "estimate", ("the engine runs on another machine",))
    reasons: list[str] = []
    if nvml.gpu_count() > 0:
        try:
            meter = nvml.NVMLMeter(gpu_indices)
        except MeterError as e:
            reasons.append(str(e))
        else:
            how = "power sampling" if meter.sampled else "energy counter"
            reasons.append(f"NVML sees {meter.device} ({how})")
            return MeterChoice(FallbackMeter(meter, estimate), "nvml", tuple(reasons))
    else:
        reasons.append("NVML: no GPU visible")
    try:
        cpu = rapl.RAPLMeter(root)
    except MeterError as e:
        reasons.append(str(e))
    else:
        reasons.append(f"RAPL readable: {cpu.device}")
        return MeterChoice(FallbackMeter(cpu, estimate), "rapl", tuple(reasons))
    reasons.append("estimating from tokens")
    return MeterChoice(estimate, "estimate", tuple(reasons))
