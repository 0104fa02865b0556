"""Trace-driven evaluation of policies: the Sprout paper's protocol (see docs/results.md).

Modules, one job each: ``workload`` (bundled prompts as arrays, the evaluated split),
``mix`` (the shifting workload mix), ``scenario`` (``--family-share``, ``--unseen``),
``sampling`` (per-hour samples), ``carbon`` (per-hour carbon context, paper or causal),
``methods`` (the method interface, registry and built-ins), ``evaluate`` (grading a method's
decisions and charging its verdicts), ``metrics``, ``engine`` (seeds and xi sweeps),
``report``, ``plot`` and ``cli`` (``sprout simulate``).

The names below are imported lazily, on first use, so importing this package is cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "SimConfig": "sprout.sim.engine",
    "SimResult": "sprout.sim.engine",
    "simulate": "sprout.sim.engine",
    "DEFAULT_METHODS": "sprout.sim.engine",
    "Method": "sprout.sim.methods.base",
    "HourInputs": "sprout.sim.methods.base",
    "SimSetup": "sprout.sim.methods.base",
    "Shares": "sprout.sim.methods.base",
    "Assignment": "sprout.sim.methods.base",
    "register_method": "sprout.sim.methods.registry",
    "method_names": "sprout.sim.methods.registry",
    "PromptSplit": "sprout.sim.workload",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sprout.sim' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
