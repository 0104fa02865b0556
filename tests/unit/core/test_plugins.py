"""The registries own their plug-ins' names: settings, CLI choices and builders read them."""

from __future__ import annotations

import importlib.util

import pytest

from sprout.config import load_settings
from sprout.errors import ConfigError
from sprout.plugins import (
    CARBON_PROVIDERS,
    ENGINES,
    JUDGES,
    METERS,
    POLICY_KINDS,
    Plugin,
    Registry,
    choices_phrase,
)

ALL = [CARBON_PROVIDERS, ENGINES, JUDGES, METERS, POLICY_KINDS]


@pytest.mark.parametrize("registry", ALL, ids=lambda r: r.setting)
def test_every_target_exists(registry: Registry) -> None:
    for plugin in registry:
        module = plugin.target.partition(":")[0]
        if module == "sprout.engines.hf" and importlib.util.find_spec("torch") is None:
            continue  # the hf extra is not installed: its module imports torch lazily anyway
        assert callable(plugin.load()), plugin.target


@pytest.mark.parametrize("registry", ALL, ids=lambda r: r.setting)
def test_settings_accept_exactly_the_registered_names(registry: Registry) -> None:
    for name in registry.names:
        assert getattr(load_settings(env={}, **{registry.setting: name}), registry.setting) == name
    with pytest.raises(ConfigError, match=rf"setting {registry.setting}='nonesuch'.*must be"):
        load_settings(env={}, **{registry.setting: "nonesuch"})


def test_unknown_name_names_the_setting_and_the_choices() -> None:
    with pytest.raises(ConfigError) as e:
        ENGINES.get("vllm")
    assert str(e.value) == (
        "setting engine='vllm': unknown engine; must be 'replay', 'openai' or 'hf'"
    )
    assert choices_phrase(["a"]) == "'a'"


def test_only_the_network_providers_are_live() -> None:
    live = {p.name for p in CARBON_PROVIDERS if p.live}
    assert live == {"electricitymaps", "watttime", "uk"}


def test_a_registered_plugin_is_built_by_name() -> None:
    registry = Registry("thing", "thing", [Plugin("json", "json:dumps", "JSON text")])
    assert registry.build("json", [1]) == "[1]"
    with pytest.raises(ValueError, match="module:attribute"):
        registry.register(Plugin("bad", "nocolon", "no target"))
