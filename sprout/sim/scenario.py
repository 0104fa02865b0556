"""Traffic scenarios of ``sprout simulate`` (pure): a shifted family mix and unseen families.

- ``--family-share FAMILY=S[,FAMILY=S...]``: each named family gets share ``S`` of every
  hour's traffic; the other families keep their relative shares of the rest
  (:func:`shift_shares`).
- ``--unseen FAMILY[,FAMILY...]``: those families are kept out of every training input (no
  verdict, no prompt text, no cost regression touches them) while their prompts still
  arrive as traffic (:class:`~sprout.sim.workload.PromptSplit` ``unseen``).

Parsing and validation live here so that the command line and the Python API reject the
same specs with the same messages.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from sprout.data import DATASETS
from sprout.errors import ConfigError


def _known(name: str, option: str, families: Sequence[str]) -> str:
    if name not in families:
        raise ConfigError(f"{option}: unknown family {name!r}; known: {', '.join(families)}")
    return name


def parse_family_share(
    spec: str | None, families: Sequence[str] = DATASETS
) -> tuple[tuple[str, float], ...]:
    """``math=0.5,mmlu=0.1`` as ``(("math", 0.5), ("mmlu", 0.1))``; ``()`` for none.

    Raises:
        ConfigError: naming the problem (bad syntax, unknown or repeated family, a share
            outside (0, 1), shares summing past 1).
    """
    if spec is None or not spec.strip():
        return ()
    out: list[tuple[str, float]] = []
    for part in (p.strip() for p in spec.split(",")):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ConfigError(f"--family-share: cannot read {part!r}; use FAMILY=SHARE")
        _known(name, "--family-share", families)
        try:
            share = float(value)
        except ValueError:
            raise ConfigError(f"--family-share: {name}={value.strip()!r} is not a number") from None
        if not (math.isfinite(share) and 0.0 < share < 1.0):
            raise ConfigError(f"--family-share: {name}={share:g} is outside (0, 1)")
        if any(n == name for n, _ in out):
            raise ConfigError(f"--family-share: family {name!r} named more than once")
        out.append((name, share))
    validate_family_share(out, families)
    return tuple(out)


def validate_family_share(
    family_share: Sequence[tuple[str, float]], families: Sequence[str] = DATASETS
) -> None:
    """Check a parsed family share (also for :class:`SimConfig` built in Python).

    Raises:
        ConfigError: as :func:`parse_family_share`.
    """
    seen: set[str] = set()
    for name, share in family_share:
        _known(name, "--family-share", families)
        if name in seen:
            raise ConfigError(f"--family-share: family {name!r} named more than once")
        seen.add(name)
        if not (math.isfinite(share) and 0.0 < share < 1.0):
            raise ConfigError(f"--family-share: {name}={share:g} is outside (0, 1)")
    total = sum(s for _, s in family_share)
    if total > 1.0 + 1e-12:
        raise ConfigError(f"--family-share: the shares sum to {total:g}, past 1")
    if len(seen) == len(families) and abs(total - 1.0) > 1e-9:
        raise ConfigError(
            f"--family-share: every family is named but the shares sum to {total:g}, not 1"
        )


def parse_unseen(spec: str | None, families: Sequence[str] = DATASETS) -> tuple[str, ...]:
    """``math,mmlu`` as ``("math", "mmlu")``; ``()`` for none.

    Raises:
        ConfigError: an unknown or repeated family, or every family unseen.
    """
    if spec is None or not spec.strip():
        return ()
    names = tuple(p.strip() for p in spec.split(","))
    if any(not n for n in names):
        raise ConfigError(f"--unseen: empty family name in {spec!r}")
    validate_unseen(names, families)
    return names


def validate_unseen(unseen: Sequence[str], families: Sequence[str] = DATASETS) -> None:
    """Check unseen family names.

    Raises:
        ConfigError: as :func:`parse_unseen`.
    """
    for name in unseen:
        _known(name, "--unseen", families)
    if len(set(unseen)) != len(unseen):
        raise ConfigError("--unseen: a family is named more than once")
    if set(families) <= set(unseen):
        raise ConfigError("--unseen: every family is unseen; nothing is left to train on")


def shift_shares(
    shares: np.ndarray,
    families: Sequence[str],
    family_share: Sequence[tuple[str, float]],
) -> np.ndarray:
    """Each hour's shares with the named families fixed at their share and the others scaled
    to fill the rest in their relative proportions (equally, if they had none this hour).

    Args:
        shares: (hours, families) rows summing to 1.
        families: the column names.
        family_share: ``(family, share)`` pairs (validated).
    """
    shares = np.asarray(shares, dtype=float)
    if not family_share:
        return shares
    validate_family_share(family_share, families)
    fixed = np.zeros(len(families), dtype=bool)
    out = np.zeros_like(shares)
    for name, share in family_share:
        i = list(families).index(name)
        fixed[i] = True
        out[:, i] = share
    rest = 1.0 - sum(s for _, s in family_share)
    if fixed.all() or rest <= 0:
        return out
    free = shares[:, ~fixed]
    total = free.sum(axis=1, keepdims=True)
    equal = np.full_like(free, 1.0 / free.shape[1])
    safe = np.where(total > 0, total, 1.0)
    out[:, ~fixed] = rest * np.where(total > 0, free / safe, equal)
    return out
