"""A provider that serves one configured carbon intensity: for offline use, tests and as an
operator's stand-in when no live source is available."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sprout.carbon.base import CarbonProvider, CarbonReading, EmissionFactor, SignalType, utcnow
from sprout.errors import ConfigError, UnknownZoneError

if TYPE_CHECKING:
    from sprout.config import Settings


class StaticProvider(CarbonProvider):
    """Always the same intensity, timestamped at the current hour of ``clock``.

    Readings are marked ``is_estimated=True``: the value is configured, not observed.

    Args:
        ci_g_per_kwh: the intensity to serve, gCO2e/kWh (finite, >= 0).
        zone: serve only this zone (others raise :class:`UnknownZoneError`); None serves any.
        signal_type: ``average`` or ``marginal``, recorded in readings.
        emission_factor: ``direct`` or ``lifecycle``, recorded in readings.
        clock: wall clock giving the reading's hour (timezone-aware).

    Raises:
        ConfigError: naming the argument, if one is invalid.
    """

    name = "static"

    def __init__(
        self,
        ci_g_per_kwh: float,
        *,
        zone: str | None = None,
        signal_type: SignalType = "average",
        emission_factor: EmissionFactor = "direct",
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        if isinstance(ci_g_per_kwh, bool) or not isinstance(ci_g_per_kwh, (int, float)):
            raise ConfigError(
                f"static provider: ci_g_per_kwh must be a number, got {ci_g_per_kwh!r}"
            )
        if not math.isfinite(ci_g_per_kwh) or ci_g_per_kwh < 0:
            raise ConfigError(
                f"static provider: ci_g_per_kwh must be a finite number >= 0 g/kWh, "
                f"got {ci_g_per_kwh!r}"
            )
        if zone is not None and (not isinstance(zone, str) or not zone.strip()):
            raise ConfigError(f"static provider: zone must be a non-empty string, got {zone!r}")
        if signal_type not in ("average", "marginal"):
            raise ConfigError(
                f"static provider: signal_type must be 'average' or 'marginal', got {signal_type!r}"
            )
        if emission_factor not in ("direct", "lifecycle"):
            raise ConfigError(
                "static provider: emission_factor must be 'direct' or 'lifecycle', "
                f"got {emission_factor!r}"
            )
        self.ci_g_per_kwh = float(ci_g_per_kwh)
        self.zone = zone
        self.signal_type: SignalType = signal_type
        self.emission_factor: EmissionFactor = emission_factor
        self._clock = clock

    def latest(self, zone: str) -> CarbonReading:
        """The configured value for ``zone`` at the start of the clock's current hour.

        Raises:
            UnknownZoneError: if the provider was given a zone and ``zone`` is another.
        """
        if self.zone is not None and zone != self.zone:
            raise UnknownZoneError(
                f"static: zone {zone!r} is not configured (this provider serves {self.zone!r})"
            )
        now = self._clock()
        if now.tzinfo is not None:
            now = now.astimezone(UTC)
        return CarbonReading(
            zone=zone,
            ci_g_per_kwh=self.ci_g_per_kwh,
            time=now.replace(minute=0, second=0, microsecond=0),
            provider=self.name,
            signal_type=self.signal_type,
            emission_factor=self.emission_factor,
            is_estimated=True,
        )


def from_settings(
    settings: Settings, clock: Callable[[], datetime] = utcnow, zone: str | None = None
) -> StaticProvider:
    """One fixed intensity, ``settings.static_ci_g_per_kwh``, for every zone."""
    return StaticProvider(settings.static_ci_g_per_kwh, clock=clock)
