"""The carbon receipt: what the ledger stores for one request (pure)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sprout.accounting import request_carbon

#: How a generation ended. ``completed``: the model finished (stop, length, a stop string);
#: ``client_closed``: the client went away mid-answer and the generation was stopped;
#: ``upstream_failed``: the model server failed after it had started working; ``guard_cut``:
#: the babbling guard cut the answer. Every one of them spent energy and gets a receipt.
OUTCOMES: tuple[str, ...] = ("completed", "client_closed", "upstream_failed", "guard_cut")

if TYPE_CHECKING:
    from sprout.energy.base import EnergySample
    from sprout.engines.base import Generation
    from sprout.readings import SignalReading


@dataclass(frozen=True)
class Receipt:
    """One request's carbon receipt.

    Energy carries its ``energy_source`` (``measured-nvml``, ``measured-rapl``, ``recorded``
    or ``estimated``); the carbon intensity carries its provider, signal and emission-factor
    type, its age at use and which layer of the signal supplied it (``ci_fallback``:
    ``provider``, ``secondary``, ``cache`` or ``default``). ``baseline_*`` is the always-L0
    counterfactual for the same prompt, when it is known, and how it was obtained.
    """

    request_id: str
    created_at: datetime
    directive: str
    decision: str
    engine: str
    model: str
    input_tokens: int
    output_tokens: int
    latency_s: float
    energy_kwh: float
    energy_source: str
    ci_g_per_kwh: float
    ci_zone: str
    ci_provider: str
    ci_signal_type: str
    ci_emission_factor: str
    ci_time: datetime
    ci_age_s: float
    ci_fallback: str
    operational_g: float
    embodied_g: float
    tenant: str | None = None
    variant: str | None = None
    policy_version: int | None = None
    energy_device: str = ""
    baseline_energy_kwh: float | None = None
    baseline_g: float | None = None
    baseline_source: str | None = None
    prompt_id: str | None = None
    #: ``serve`` for a request served to a user, ``evaluation`` for the quality loop's own
    #: generations (reported as evaluation overhead).
    purpose: str = "serve"
    #: ``energy_kwh`` split into prefill (up to the first token) and decode, where the engine
    #: reports the first token's time; None otherwise.
    prefill_kwh: float | None = None
    decode_kwh: float | None = None
    #: How the generation ended (one of :data:`OUTCOMES`); an interrupted generation's energy
    #: and tokens run up to where it stopped.
    outcome: str = "completed"

    @property
    def total_g(self) -> float:
        """Operational plus embodied carbon, gCO2e."""
        return self.operational_g + self.embodied_g

    @property
    def saving_g(self) -> float | None:
        """Carbon saved against the always-L0 counterfactual, when that is known."""
        return None if self.baseline_g is None else self.baseline_g - self.total_g

    def to_json_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (datetimes as ISO 8601 strings)."""
        out = asdict(self)
        for key in ("created_at", "ci_time"):
            out[key] = out[key].isoformat()
        return out

    @classmethod
    def from_json_dict(cls, raw: dict[str, Any]) -> Receipt:
        """Inverse of :meth:`to_json_dict`; unknown keys are ignored."""
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in raw.items() if k in known}
        for key in ("created_at", "ci_time"):
            data[key] = datetime.fromisoformat(data[key])
        return cls(**data)


def metered_receipt(
    *,
    request_id: str,
    created_at: datetime,
    directive: str,
    decision: str,
    engine: str,
    generation: Generation,
    energy: EnergySample,
    signal: SignalReading,
    embodied_g_per_s: float,
    **extra: Any,
) -> Receipt:
    """The receipt of one metered generation: its tokens, energy and the carbon intensity it
    ran at, with operational and embodied carbon computed from them. ``extra`` sets the
    remaining fields (tenant, variant, counterfactual, purpose...)."""
    reading = signal.reading
    carbon = request_carbon(
        energy.energy_kwh, generation.latency_s, reading.ci_g_per_kwh, embodied_g_per_s
    )
    return Receipt(
        request_id=request_id,
        created_at=created_at,
        directive=directive,
        decision=decision,
        engine=engine,
        model=generation.model,
        input_tokens=generation.input_tokens,
        output_tokens=generation.output_tokens,
        latency_s=generation.latency_s,
        energy_kwh=energy.energy_kwh,
        energy_source=energy.source,
        energy_device=energy.device,
        ci_g_per_kwh=reading.ci_g_per_kwh,
        ci_zone=reading.zone,
        ci_provider=reading.provider,
        ci_signal_type=reading.signal_type,
        ci_emission_factor=reading.emission_factor,
        ci_time=reading.time,
        ci_age_s=signal.age_s,
        ci_fallback=signal.fallback,
        operational_g=carbon.operational_g,
        embodied_g=carbon.embodied_g,
        prefill_kwh=energy.prefill_kwh,
        decode_kwh=energy.decode_kwh,
        **extra,
    )
