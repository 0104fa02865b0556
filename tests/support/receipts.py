"""Receipts to fill a ledger with: every field set from one number, and edge cases."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

from sprout.receipt import Receipt

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


def make_receipt(i: int, **overrides: object) -> Receipt:
    """A receipt whose every field depends on ``i`` (odd ones carry the optional fields, every
    third one the prefill/decode split)."""
    odd = i % 2 == 1
    energy_kwh = 1e-5 * (i + 1) / 7
    prefill_kwh = energy_kwh * (i % 5 + 1) / 9 if i % 3 == 0 else None
    fields: dict[str, object] = {
        "request_id": f"req-{i:06d}",
        "created_at": T0 + timedelta(seconds=i, microseconds=i),
        "directive": ("L0", "L1", "L2")[i % 3],
        "decision": "lp-mix",
        "engine": "replay",
        "model": "llama-2-13b",
        "input_tokens": 10 + i,
        "output_tokens": 100 + i,
        "latency_s": 0.1 * i + 1 / 3,
        "energy_kwh": energy_kwh,
        "energy_source": "recorded",
        "ci_g_per_kwh": 123.456 + i,
        "ci_zone": "GB",
        "ci_provider": "trace",
        "ci_signal_type": "average",
        "ci_emission_factor": "direct",
        "ci_time": T0.replace(minute=0),
        "ci_age_s": float(i),
        "ci_fallback": "provider",
        "operational_g": 0.01 * i,
        "embodied_g": 0.002,
        "tenant": f"tenant-{i % 4}" if odd else None,
        "variant": "q4" if odd else None,
        "policy_version": i if odd else None,
        "energy_device": "gpu0" if odd else "",
        "baseline_energy_kwh": 2e-5 if odd else None,
        "baseline_g": 0.05 if odd else None,
        "baseline_source": "recorded" if odd else None,
        "prompt_id": f"alpaca-{i}" if odd else None,
        "prefill_kwh": prefill_kwh,
        "decode_kwh": None if prefill_kwh is None else energy_kwh - prefill_kwh,
    }
    fields.update(overrides)
    return Receipt(**fields)  # type: ignore[arg-type]


def edge_receipts() -> list[Receipt]:
    """Receipts with values that tempt a non-canonical encoding."""
    base = make_receipt(1)
    plus5 = timezone(timedelta(hours=5, minutes=30))
    return [
        base,
        make_receipt(2),
        replace(base, request_id="naïve-€-✓", directive="L1", tenant="Zürich-租户"),
        replace(base, request_id="neg-zero", operational_g=-0.0, embodied_g=0.0),
        replace(base, request_id="int-floats", latency_s=3, energy_kwh=1, baseline_g=2),
        replace(base, request_id="naive-dt", created_at=datetime(2024, 3, 1, 12, 0, 0)),
        replace(base, request_id="tz", created_at=datetime(2024, 3, 1, 17, 30, 0, 7, plus5)),
        replace(base, request_id="tiny", energy_kwh=5e-324, ci_g_per_kwh=1e300),
        replace(base, request_id="eval", purpose="evaluation"),
        replace(base, request_id="split", prefill_kwh=1e-6, decode_kwh=2.5e-6),
        replace(base, request_id="split-zero", prefill_kwh=-0.0, decode_kwh=base.energy_kwh),
        replace(base, request_id="prefill-only", prefill_kwh=3, decode_kwh=None),
    ]
