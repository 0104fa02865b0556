"""The registries: one per kind of plug-in, each owning its names.

A registry maps a setting's value (``carbon_provider="watttime"``) to the function that builds
that plug-in from the settings. Targets are written ``"module:attribute"`` and imported only
when built, the way packaging entry points are: naming a plug-in costs nothing, a heavy one
(torch, transformers) is imported only when chosen, and this module imports no plug-in, so the
settings can validate names against it without depending on any vendor module.

Every vendor module's builder has the registry's signature; an application adds its own
plug-in with :meth:`Registry.register` before building from the settings.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from sprout.errors import ConfigError


@dataclass(frozen=True)
class Plugin:
    """One named plug-in: where its builder lives, and what it is."""

    name: str
    target: str  # "module:attribute[.attribute]", imported on first build
    summary: str
    live: bool = False  # for carbon providers: asks a network API

    def load(self) -> Callable[..., Any]:
        """The builder ``target`` names (imported now)."""
        module_name, _, attribute = self.target.partition(":")
        obj: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            obj = getattr(obj, part)
        return obj


def choices_phrase(names: Iterable[str]) -> str:
    """``'a', 'b' or 'c'``: the names as an error message lists them."""
    quoted = [f"'{n}'" for n in names]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


class Registry:
    """The plug-ins of one kind, by name, in registration order."""

    def __init__(self, kind: str, setting: str, plugins: Iterable[Plugin] = ()) -> None:
        self.kind = kind
        self.setting = setting
        self._plugins: dict[str, Plugin] = {}
        for plugin in plugins:
            self.register(plugin)

    def register(self, plugin: Plugin) -> Plugin:
        """Add ``plugin`` (replacing one of the same name)."""
        if not plugin.name or ":" not in plugin.target:
            raise ValueError(f"{self.kind} plug-in needs a name and a 'module:attribute' target")
        self._plugins[plugin.name] = plugin
        return plugin

    @property
    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        return tuple(self._plugins)

    def __contains__(self, name: object) -> bool:
        return name in self._plugins

    def __iter__(self) -> Iterator[Plugin]:
        return iter(self._plugins.values())

    def get(self, name: str) -> Plugin:
        """The plug-in called ``name``.

        Raises:
            ConfigError: an unknown name, naming the setting and the known names.
        """
        try:
            return self._plugins[name]
        except KeyError:
            raise ConfigError(
                f"setting {self.setting}={name!r}: unknown {self.kind}; "
                f"must be {choices_phrase(self.names)}"
            ) from None

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Build the plug-in called ``name`` with its builder's arguments."""
        return self.get(name).load()(*args, **kwargs)


CARBON_PROVIDERS = Registry(
    "carbon provider",
    "carbon_provider",
    (
        Plugin("trace", "sprout.carbon.trace:from_settings", "a recorded trace, replayed"),
        Plugin("static", "sprout.carbon.static:from_settings", "one fixed intensity"),
        Plugin(
            "electricitymaps",
            "sprout.carbon.electricitymaps:from_settings",
            "Electricity Maps API",
            live=True,
        ),
        Plugin("watttime", "sprout.carbon.watttime:from_settings", "WattTime API", live=True),
        Plugin("uk", "sprout.carbon.uk:from_settings", "GB Carbon Intensity API", live=True),
    ),
)
"""Builders: ``(settings, clock, zone) -> CarbonProvider``."""

ENGINES = Registry(
    "engine",
    "engine",
    (
        Plugin("replay", "sprout.engines.replay:from_settings", "the recorded answers"),
        Plugin("openai", "sprout.engines.openai_compat:from_settings", "an OpenAI-compatible API"),
        Plugin("hf", "sprout.engines.hf:from_settings", "a local transformers model"),
    ),
)
"""Builders: ``(settings) -> Engine``."""

JUDGES = Registry(
    "judge engine",
    "judge_engine",
    (
        Plugin("replay", "sprout.judge.judges:replay_judge", "the recorded GPT-4 verdicts"),
        Plugin("openai", "sprout.judge.judges:openai_judge", "an LLM behind an OpenAI API"),
        Plugin("hf", "sprout.judge.judges:hf_judge", "a local transformers model"),
    ),
)
"""Builders: ``(settings) -> Judge``."""

METERS = Registry(
    "meter",
    "meter",
    (
        Plugin("auto", "sprout.energy.select:choose_meter", "NVML, else RAPL, else estimate"),
        Plugin("nvml", "sprout.energy.nvml:NVMLMeter", "NVIDIA GPU energy (measured)"),
        Plugin("rapl", "sprout.energy.rapl:RAPLMeter", "Intel/AMD CPU energy (measured)"),
        Plugin("estimate", "sprout.energy.estimate:EstimateMeter", "a token-energy model"),
    ),
)
"""The meter kinds; :func:`sprout.energy.select.choose_meter` builds the chosen one."""

POLICY_KINDS = Registry(
    "policy kind",
    "policy_kind",
    (
        Plugin("auto", "sprout.factory:contextual_policy", "the stored contextual policy, else lp"),
        Plugin("lp", "sprout.policy.sprout_lp:SproutLPPolicy", "the hourly directive mix"),
        Plugin("contextual", "sprout.policy.contextual:ContextualPolicy", "per-request"),
    ),
)
"""The policy kinds ``policy_kind`` accepts: each names its policy class, and ``auto`` the
function that picks the stored contextual policy when there is one."""
