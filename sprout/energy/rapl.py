"""CPU (and DRAM) energy through Linux RAPL: ``/sys/class/powercap/intel-rapl:*``.

Each package zone (``intel-rapl:N``, named ``package-N``) has a counter ``energy_uj``, µJ,
that wraps to zero past ``max_energy_range_uj``; DRAM subzones (``intel-rapl:N:M`` named
``dram``) are counted too, since the package counter excludes them. Core and uncore
subzones are part of their package and are skipped, and so is ``psys`` (the whole
platform, which would count the packages twice). AMD CPUs expose the same interface.

The counters are read at every window boundary; a wrap between two reads is undone with
``max_energy_range_uj`` (a counter that wraps more than once between two reads — minutes
to hours of full load, depending on the CPU — cannot be told apart). Concurrent requests
share the energy by the rule in :mod:`sprout.energy.sharing`.

``energy_uj`` is readable by root only on Linux 5.10 and later (CVE-2020-8694); a
permission error says so.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sprout.energy.sharing import CounterMeter
from sprout.errors import MeterError

DEFAULT_ROOT = "/sys/class/powercap"
_ZONE = re.compile(r"^intel-rapl:(\d+)(?::(\d+))?$")


def _read_text(path: Path) -> str:
    with open(path, encoding="ascii") as f:
        return f.read()


def _read_int(path: Path) -> int:
    try:
        text = _read_text(path)
    except PermissionError as e:
        raise MeterError(
            f"RAPL: permission denied reading {path}: since Linux 5.10 RAPL counters are "
            "readable by root only (CVE-2020-8694). Run as root, grant read access (e.g. "
            f"`chmod o+r {path}` or a udev rule), or use the estimate meter"
        ) from e
    except OSError as e:
        raise MeterError(f"RAPL: cannot read {path} ({e.strerror or e})") from e
    try:
        return int(text.strip())
    except ValueError:
        raise MeterError(f"RAPL: {path} does not hold an integer: {text[:40]!r}") from None


@dataclass
class RaplZone:
    """One counted RAPL zone."""

    path: Path
    name: str
    max_range_uj: int
    last_uj: int = 0
    fd: int | None = None  # energy_uj kept open: pread is ~10x cheaper than open + read


def find_zones(root: str | Path = DEFAULT_ROOT) -> list[RaplZone]:
    """Package and DRAM zones under ``root`` (unread).

    Raises:
        MeterError: there is no powercap directory or no package zone in it.
    """
    root = Path(root)
    if not root.is_dir():
        raise MeterError(f"RAPL: {root} does not exist (no powercap interface on this machine)")
    zones: list[RaplZone] = []
    for path in sorted(root.iterdir()):
        match = _ZONE.match(path.name)
        if match is None or not path.is_dir():
            continue
        try:
            name = _read_text(path / "name").strip()
        except OSError:
            continue  # a zone without a readable name is not one we can classify
        top_level = match.group(2) is None
        if (top_level and name.startswith("package")) or (not top_level and name == "dram"):
            zones.append(RaplZone(path, name, 0))
    if not any(z.name.startswith("package") for z in zones):
        raise MeterError(f"RAPL: no package zone under {root}")
    return zones


class RAPLMeter(CounterMeter):
    """Measures CPU package (and DRAM) energy with RAPL.

    Args:
        root: the powercap directory (a fake one in tests).
        clock: monotonic clock, seconds.

    Raises:
        MeterError: no RAPL zones, or a counter is unreadable (permission errors explain
            the root-only rule).
    """

    source = "measured-rapl"

    def __init__(
        self, root: str | Path = DEFAULT_ROOT, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__(clock=clock)
        self.zones = find_zones(root)
        try:
            for zone in self.zones:
                zone.max_range_uj = _read_int(zone.path / "max_energy_range_uj")
                if zone.max_range_uj <= 0:
                    raise MeterError(f"RAPL: {zone.path}/max_energy_range_uj must be > 0")
                zone.last_uj = _read_int(zone.path / "energy_uj")
                zone.fd = _open_fd(zone.path / "energy_uj")
        except BaseException:
            self.close()
            raise
        self._total_uj = 0
        self.device = "rapl:" + ",".join(
            f"{z.name}" if z.name.startswith("package") else f"{z.path.name}/{z.name}"
            for z in self.zones
        )

    def read_mj(self) -> float:
        # Called under the meter's lock: the running total needs no lock of its own.
        for zone in self.zones:
            now_uj = _pread_int(zone)
            delta = now_uj - zone.last_uj
            if delta < 0:  # the counter wrapped past max_energy_range_uj
                delta += zone.max_range_uj
            self._total_uj += max(0, delta)
            zone.last_uj = now_uj
        return self._total_uj / 1000

    def close(self) -> None:
        """Close the counter files."""
        for zone in self.zones:
            if zone.fd is not None:
                with contextlib.suppress(OSError):
                    os.close(zone.fd)
                zone.fd = None


def _open_fd(path: Path) -> int:
    try:
        return os.open(path, os.O_RDONLY)
    except OSError as e:
        raise MeterError(f"RAPL: cannot open {path} ({e.strerror or e})") from e


def _pread_int(zone: RaplZone) -> int:
    path = zone.path / "energy_uj"
    if zone.fd is None:
        raise MeterError(f"RAPL: {path} is closed (the meter was closed)")
    try:
        text = os.pread(zone.fd, 32, 0)
    except OSError as e:
        raise MeterError(f"RAPL: cannot read {path} ({e.strerror or e})") from e
    try:
        return int(text.strip())
    except ValueError:
        raise MeterError(f"RAPL: {path} does not hold an integer: {text[:40]!r}") from None


def rapl_readable(root: str | Path = DEFAULT_ROOT) -> bool:
    """Whether RAPL counters can be read here."""
    try:
        RAPLMeter(root).close()
    except MeterError:
        return False
    return True
