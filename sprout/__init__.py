"""Sprout: carbon-aware LLM generation.

This namespace holds what an application uses: the settings and the builders that wire
Sprout from them, the controller and its result, the wrapper and the proxy's app factory,
the base classes a user implements to plug in a provider, engine, meter, judge or policy,
the receipt, and the root error. Concrete plug-ins are imported from their subpackages
(``sprout.carbon.trace.TraceProvider``, ``sprout.engines.openai_compat.OpenAIEngine``, ...).

Names are loaded lazily, so ``import sprout`` stays cheap and has no side effects.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sprout._version import __version__

# name -> the module it lives in; also what ``__all__`` lists.
_EXPORTS: dict[str, str] = {
    "Settings": "sprout.config",
    "load_settings": "sprout.config",
    "build_controller": "sprout.factory",
    "build_judge_job": "sprout.factory",
    "Controller": "sprout.controller",
    "ChatRequest": "sprout.chat",
    "ChatResult": "sprout.controller",
    "carbon_aware": "sprout.middleware",
    "create_app": "sprout.server",
    "CarbonProvider": "sprout.carbon.base",
    "Engine": "sprout.engines.base",
    "EnergyMeter": "sprout.energy.base",
    "Judge": "sprout.judge.judges",
    "Policy": "sprout.policy.base",
    "Receipt": "sprout.receipt",
    "SproutError": "sprout.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sprout' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from sprout.carbon.base import CarbonProvider as CarbonProvider
    from sprout.chat import ChatRequest as ChatRequest
    from sprout.config import Settings as Settings
    from sprout.config import load_settings as load_settings
    from sprout.controller import ChatResult as ChatResult
    from sprout.controller import Controller as Controller
    from sprout.energy.base import EnergyMeter as EnergyMeter
    from sprout.engines.base import Engine as Engine
    from sprout.errors import SproutError as SproutError
    from sprout.factory import build_controller as build_controller
    from sprout.factory import build_judge_job as build_judge_job
    from sprout.judge.judges import Judge as Judge
    from sprout.middleware import carbon_aware as carbon_aware
    from sprout.policy.base import Policy as Policy
    from sprout.receipt import Receipt as Receipt
    from sprout.server import create_app as create_app
