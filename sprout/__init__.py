"""Sprout: carbon-aware LLM generation.

The public API is loaded lazily, so ``import sprout`` stays cheap and has no side effects;
each name below is imported from its module on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "Settings": "sprout.config",
    "load_settings": "sprout.config",
    "Directive": "sprout.directives",
    "DirectiveSet": "sprout.directives",
    "ChatRequest": "sprout.chat",
    "Message": "sprout.chat",
    "CarbonReading": "sprout.carbon.base",
    "CarbonProvider": "sprout.carbon.base",
    "TraceProvider": "sprout.carbon.trace",
    "StaticProvider": "sprout.carbon.static",
    "ElectricityMapsProvider": "sprout.carbon.electricitymaps",
    "WattTimeProvider": "sprout.carbon.watttime",
    "UKCarbonIntensityProvider": "sprout.carbon.uk",
    "CarbonSignal": "sprout.carbon.signal",
    "load_trace": "sprout.carbon.trace",
    "solve_mix": "sprout.policy.optimizer",
    "SproutLPPolicy": "sprout.policy.sprout_lp",
    "ContextualPolicy": "sprout.policy.contextual",
    "retrain": "sprout.policy.retrain",
    "Engine": "sprout.engines.base",
    "Generation": "sprout.engines.base",
    "ReplayEngine": "sprout.engines.replay",
    "OpenAIEngine": "sprout.engines.openai_compat",
    "HFEngine": "sprout.engines.hf",
    "NVMLMeter": "sprout.energy.nvml",
    "RAPLMeter": "sprout.energy.rapl",
    "CarbonPoller": "sprout.carbon.poller",
    "EnergyMeter": "sprout.energy.base",
    "EnergySample": "sprout.energy.base",
    "EstimateMeter": "sprout.energy.estimate",
    "Ledger": "sprout.ledger.store",
    "Receipt": "sprout.receipt",
    "Controller": "sprout.controller",
    "ChatResult": "sprout.controller",
    "ChatStream": "sprout.controller",
    "PendingChat": "sprout.controller",
    "FunctionEngine": "sprout.middleware",
    "carbon_aware": "sprout.middleware",
    "create_app": "sprout.server",
    "build_controller": "sprout.factory",
    "JudgeJob": "sprout.judge.job",
    "build_judge_job": "sprout.judge.job",
    "LLMJudge": "sprout.judge.judges",
    "ReplayJudge": "sprout.judge.judges",
    "SproutError": "sprout.errors",
}

__all__ = [
    "CarbonPoller",
    "CarbonProvider",
    "CarbonReading",
    "CarbonSignal",
    "ChatRequest",
    "ChatResult",
    "ChatStream",
    "ContextualPolicy",
    "Controller",
    "Directive",
    "DirectiveSet",
    "ElectricityMapsProvider",
    "EnergyMeter",
    "EnergySample",
    "Engine",
    "EstimateMeter",
    "FunctionEngine",
    "Generation",
    "HFEngine",
    "JudgeJob",
    "LLMJudge",
    "Ledger",
    "Message",
    "NVMLMeter",
    "OpenAIEngine",
    "PendingChat",
    "RAPLMeter",
    "Receipt",
    "ReplayEngine",
    "ReplayJudge",
    "Settings",
    "SproutError",
    "SproutLPPolicy",
    "StaticProvider",
    "TraceProvider",
    "UKCarbonIntensityProvider",
    "WattTimeProvider",
    "__version__",
    "build_controller",
    "build_judge_job",
    "carbon_aware",
    "create_app",
    "load_settings",
    "load_trace",
    "retrain",
    "solve_mix",
]


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
    from sprout.carbon.base import CarbonProvider, CarbonReading
    from sprout.carbon.electricitymaps import ElectricityMapsProvider
    from sprout.carbon.poller import CarbonPoller
    from sprout.carbon.signal import CarbonSignal
    from sprout.carbon.static import StaticProvider
    from sprout.carbon.trace import TraceProvider, load_trace
    from sprout.carbon.uk import UKCarbonIntensityProvider
    from sprout.carbon.watttime import WattTimeProvider
    from sprout.chat import ChatRequest, Message
    from sprout.config import Settings, load_settings
    from sprout.controller import ChatResult, ChatStream, Controller, PendingChat
    from sprout.directives import Directive, DirectiveSet
    from sprout.energy.base import EnergyMeter, EnergySample
    from sprout.energy.estimate import EstimateMeter
    from sprout.energy.nvml import NVMLMeter
    from sprout.energy.rapl import RAPLMeter
    from sprout.engines.base import Engine, Generation
    from sprout.engines.hf import HFEngine
    from sprout.engines.openai_compat import OpenAIEngine
    from sprout.engines.replay import ReplayEngine
    from sprout.errors import SproutError
    from sprout.factory import build_controller
    from sprout.judge.job import JudgeJob, build_judge_job
    from sprout.judge.judges import LLMJudge, ReplayJudge
    from sprout.ledger.store import Ledger
    from sprout.middleware import FunctionEngine, carbon_aware
    from sprout.policy.contextual import ContextualPolicy
    from sprout.policy.optimizer import solve_mix
    from sprout.policy.retrain import retrain
    from sprout.policy.sprout_lp import SproutLPPolicy
    from sprout.receipt import Receipt
    from sprout.server import create_app
