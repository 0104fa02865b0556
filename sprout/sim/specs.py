"""The sweeps of a simulation as written on a command line (pure; imports nothing heavy):
seeds (``0-19``, ``0,3,5``) and xi values (``0.02,0.05,0.1``).

``sprout simulate`` and the benchmarks read ``--seeds`` and ``--xi`` with these, so both
reject the same specs with the same messages.
"""

from __future__ import annotations

from sprout.errors import ConfigError


def parse_seeds(spec: str) -> tuple[int, ...]:
    """Seeds from ``0``, ``0-19``, ``0,3,5`` or a mix (``0-3,7``), in the order given.

    Raises:
        ConfigError: naming the bad part.
    """
    seeds: list[int] = []
    for part in (p.strip() for p in spec.split(",")):
        lo, sep, hi = part.partition("-")
        try:
            if sep:
                first, last = int(lo), int(hi)
                if first > last:
                    raise ValueError
                seeds.extend(range(first, last + 1))
            else:
                seeds.append(int(part))
        except ValueError:
            raise ConfigError(
                f"--seeds: cannot read {part!r} in {spec!r}; use N, N-M (N <= M) or a comma "
                "list of those, with non-negative integers"
            ) from None
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds: {spec!r} names a seed more than once")
    return tuple(seeds)


def parse_xis(spec: str) -> tuple[float, ...]:
    """xi values from ``0.1`` or ``0.02,0.05,0.1``.

    Raises:
        ConfigError: for a value that is not a number in [0, 1].
    """
    values = []
    for part in (p.strip() for p in spec.split(",")):
        try:
            value = float(part)
        except ValueError:
            raise ConfigError(f"--xi: {part!r} is not a number") from None
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"--xi: {value:g} is outside [0, 1]")
        values.append(value)
    return tuple(values)


__all__ = ["parse_seeds", "parse_xis"]
