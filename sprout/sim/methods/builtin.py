"""Imports the built-in methods so that they register (done lazily by the registry)."""

# ruff: noqa: I001 - import order is registration order, which is the report's row order.
from __future__ import annotations

from sprout.sim.methods import simple, lp, oracle_request, contextual

__all__ = ["contextual", "lp", "oracle_request", "simple"]
