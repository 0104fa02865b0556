"""Calibrating the estimate meter from the ledger's measured receipts.

Where a deployment measured energy (NVML or RAPL) for a while, its receipts say what its
own model on its own hardware costs. For each engine and variant with enough measured
receipts, a linear model ``kWh = a + b * input_tokens + c * output_tokens`` is fitted by
non-negative least squares (energy never falls as tokens grow, so no coefficient may be
negative). The estimate meter then uses that fit for the engine's variants; its samples
stay labelled ``estimated`` and name the fit in ``device``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sprout.energy.estimate import EstimateMeter, TokenEnergyModel
from sprout.errors import MeterError


class MeteredRecord(Protocol):
    """What calibration reads from a receipt (typed structurally: energy sits below the ledger)."""

    @property
    def engine(self) -> str: ...

    @property
    def variant(self) -> str | None: ...

    @property
    def energy_source(self) -> str: ...

    @property
    def input_tokens(self) -> int: ...

    @property
    def output_tokens(self) -> int: ...

    @property
    def energy_kwh(self) -> float: ...


class ReceiptSource(Protocol):
    """A store of receipts, such as :class:`sprout.ledger.store.Ledger`."""

    def receipts(self, since: datetime | None = None) -> Iterable[MeteredRecord]: ...


#: Energy sources that count as measurements.
MEASURED_SOURCES = frozenset({"measured-nvml", "measured-rapl"})
#: Fewest measured receipts a variant's fit is made from (3 coefficients need margin).
DEFAULT_MIN_SAMPLES = 8


def fit_linear(
    rows: Sequence[tuple[int, int, float]], label: str, *, min_samples: int = 3
) -> TokenEnergyModel:
    """Fit ``kWh = a + b * in + c * out`` with a, b, c >= 0 to ``(in, out, kWh)`` rows.

    Raises:
        MeterError: fewer than ``min_samples`` rows.
    """
    import numpy as np
    from scipy.optimize import nnls

    if len(rows) < max(3, min_samples):
        raise MeterError(f"{label}: need at least {max(3, min_samples)} rows, got {len(rows)}")
    design = np.array([(1.0, float(i), float(o)) for i, o, _ in rows])
    energy = np.array([float(e) for *_, e in rows])
    # Columns differ by orders of magnitude (1 vs thousands of tokens): scale, then undo.
    scale = np.linalg.norm(design, axis=0)
    scale[scale == 0] = 1.0
    coef, _ = nnls(design / scale, energy)
    coef = coef / scale
    return TokenEnergyModel(float(coef[0]), float(coef[1]), float(coef[2]), len(rows), label)


@dataclass(frozen=True)
class Calibration:
    """Fitted models per ``(engine, variant)``, and what was too thin to fit."""

    models: dict[tuple[str, str | None], TokenEnergyModel]
    skipped: dict[tuple[str, str | None], int]

    def for_engine(self, engine: str) -> dict[str | None, TokenEnergyModel]:
        """The fitted models of ``engine``'s variants."""
        return {variant: m for (name, variant), m in self.models.items() if name == engine}


def calibrate(
    receipts: Iterable[MeteredRecord], *, min_samples: int = DEFAULT_MIN_SAMPLES
) -> Calibration:
    """Fit one token-energy model per engine and variant from measured ``receipts``.

    Receipts whose energy was not measured (``recorded``, ``estimated``) are ignored;
    groups with fewer than ``min_samples`` measured receipts are listed in ``skipped``.
    """
    groups: dict[tuple[str, str | None], list[tuple[int, int, float]]] = defaultdict(list)
    sources: dict[tuple[str, str | None], set[str]] = defaultdict(set)
    for r in receipts:
        if r.energy_source in MEASURED_SOURCES:
            key = (r.engine, r.variant)
            groups[key].append((r.input_tokens, r.output_tokens, r.energy_kwh))
            sources[key].add(r.energy_source)
    models: dict[tuple[str, str | None], TokenEnergyModel] = {}
    skipped: dict[tuple[str, str | None], int] = {}
    for key, rows in groups.items():
        if len(rows) < min_samples:
            skipped[key] = len(rows)
            continue
        engine, variant = key
        label = (
            f"calibrated {engine}/{variant or 'default'} on {len(rows)} "
            f"{'+'.join(sorted(sources[key]))} receipts"
        )
        models[key] = fit_linear(rows, label, min_samples=min_samples)
    return Calibration(models, skipped)


def calibrate_from_ledger(
    ledger: ReceiptSource,
    *,
    since: datetime | None = None,
    min_samples: int = DEFAULT_MIN_SAMPLES,
) -> Calibration:
    """:func:`calibrate` on the ledger's stored receipts (created at or after ``since``).

    Raises:
        LedgerError: the ledger cannot be read.
    """
    return calibrate(ledger.receipts(since=since), min_samples=min_samples)


def calibrated_meter(
    calibration: Calibration, engine: str, fallback: TokenEnergyModel | None = None
) -> EstimateMeter:
    """An estimate meter using ``engine``'s fitted variants, ``fallback`` for the others.

    A variant without its own fit falls back to the engine's default-variant fit when
    there is one, else to ``fallback`` (default: the bundled fit).
    """
    per_variant = calibration.for_engine(engine)
    default = per_variant.get(None, fallback)
    return EstimateMeter(default, per_variant)
