"""Settings grouped by concern: every field declares its group, groups are contiguous, a
group's settings can be read as one view, and the TOML file may give a group as a table, while
every flat name (attribute, ``SPROUT_*`` variable, ``[sprout]`` key, argument) keeps working."""

from __future__ import annotations

import dataclasses
import pickle
import re
from pathlib import Path

import pytest

from sprout.config import (
    SETTINGS_GROUPS,
    Settings,
    SettingsGroup,
    load_settings,
    settings_by_group,
)
from sprout.errors import ConfigError
from tests.support.paths import REPO_ROOT

FIELDS = dataclasses.fields(Settings)


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sprout.toml"
    path.write_text(text, encoding="utf-8")
    return path


# --- the grouping ---------------------------------------------------------------------------


def test_the_groups_in_order():
    assert SETTINGS_GROUPS == (
        "ledger",
        "carbon",
        "policy",
        "accounting",
        "engine",
        "meter",
        "server",
        "judge",
        "telemetry",
    )


def test_every_field_has_a_known_group():
    ungrouped = [f.name for f in FIELDS if f.metadata.get("group") not in SETTINGS_GROUPS]
    assert ungrouped == []


def test_groups_are_contiguous_in_declaration_order():
    order = [f.metadata["group"] for f in FIELDS]
    runs = [group for i, group in enumerate(order) if i == 0 or order[i - 1] != group]
    assert runs == list(SETTINGS_GROUPS)  # each group once, in SETTINGS_GROUPS order


@pytest.mark.parametrize(
    ("name", "group"),
    [
        ("db_url", "ledger"),
        ("ledger_spool", "ledger"),
        ("prompt_retention_days", "ledger"),
        ("zone", "carbon"),
        ("carbon_provider", "carbon"),
        ("electricitymaps_api_key", "carbon"),
        ("watttime_password", "carbon"),
        ("uk_base_url", "carbon"),
        ("static_ci_g_per_kwh", "carbon"),
        ("default_ci_g_per_kwh", "carbon"),
        ("signal_max_age_s", "carbon"),
        ("policy_kind", "policy"),
        ("xi", "policy"),
        ("ci_window_hours", "policy"),
        ("retrain_cron", "policy"),
        ("embodied_g", "accounting"),
        ("lifetime_years", "accounting"),
        ("pue", "accounting"),
        ("market_ci_source", "accounting"),
        ("engine", "engine"),
        ("engine_device", "engine"),
        ("babble_guard", "engine"),
        ("meter", "meter"),
        ("rapl_root", "meter"),
        ("server_workers", "server"),
        ("judge_engine", "judge"),
        ("otel_enabled", "telemetry"),
    ],
)
def test_groups_by_concern(name, group):
    assert name in settings_by_group()[group]


def test_groups_follow_the_name_prefixes():
    prefixes = {
        "ledger": ("ledger_",),
        "carbon": ("carbon_", "electricitymaps_", "watttime_", "uk_", "signal_"),
        "policy": ("policy_",),
        "accounting": ("market_ci_",),
        "engine": ("engine_",),
        "meter": ("meter_",),
        "server": ("server_",),
        "judge": ("judge_",),
        "telemetry": ("otel_",),
    }
    for f in FIELDS:
        for group, starts in prefixes.items():
            if f.name.startswith(starts):
                assert f.metadata["group"] == group, f.name


def test_settings_by_group_lists_every_field_once_in_declaration_order():
    by_group = settings_by_group()
    assert tuple(by_group) == SETTINGS_GROUPS
    assert [n for names in by_group.values() for n in names] == [f.name for f in FIELDS]
    by_group["carbon"] = ()  # a copy: the next call is unchanged
    assert settings_by_group()["carbon"]


def test_declarations_keep_defaults_and_secrets():
    s = Settings()
    assert s.zone == "GB" and s.engine == "replay" and s.server_port == 8080
    secrets = {f.name for f in FIELDS if not f.repr}
    assert secrets == {
        "ledger_checkpoint_key",
        "electricitymaps_api_key",
        "watttime_username",
        "watttime_password",
        "engine_api_key",
        "server_api_key",
        "judge_api_key",
    }


def test_short_keys_are_unambiguous():
    """Within a group, no setting ``k`` sits beside ``<group>_k``: every setting of a group
    table can be written short or flat and means the one setting."""
    for group, names in settings_by_group().items():
        clashes = [n for n in names if f"{group}_{n}" in names]
        assert clashes == [], group


# --- Settings.group -------------------------------------------------------------------------


def test_group_view():
    s = Settings(carbon_provider="static", zone="FR", xi=0.2)
    carbon = s.group("carbon")
    assert isinstance(carbon, SettingsGroup)
    assert carbon.name == "carbon"
    assert carbon["carbon_provider"] == "static" and carbon["zone"] == "FR"
    assert tuple(carbon) == settings_by_group()["carbon"]
    assert len(carbon) == len(settings_by_group()["carbon"])
    assert "xi" not in carbon
    assert dict(s.group("policy"))["xi"] == 0.2
    assert s.group("telemetry") == {"otel_enabled": False, "otel_metrics_tenant": False}
    merged = {k: v for g in SETTINGS_GROUPS for k, v in s.group(g).items()}
    assert merged == dataclasses.asdict(s)


def test_group_view_is_read_only():
    carbon = Settings().group("carbon")
    with pytest.raises(TypeError):
        carbon["zone"] = "DE"  # type: ignore[index]
    with pytest.raises(AttributeError):
        carbon.name = "x"  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(carbon)) == carbon


def test_group_view_keeps_secrets_out_of_repr():
    s = Settings(engine_api_key="sk-very-secret", engine_model="m")
    engine = s.group("engine")
    assert engine["engine_api_key"] == "sk-very-secret"  # the value is there to read
    assert "sk-very-secret" not in repr(engine) and "sk-very-secret" not in str(engine)
    assert "'engine_api_key': <secret>" in repr(engine) and "'m'" in repr(engine)


def test_unknown_group():
    with pytest.raises(ConfigError, match=r"unknown settings group 'gpu'; the groups: ledger"):
        Settings().group("gpu")


# --- grouped TOML ---------------------------------------------------------------------------


def test_grouped_toml_short_and_flat_keys(tmp_path):
    path = _config(
        tmp_path,
        "[sprout]\n"
        "xi = 0.2\n"
        "[sprout.carbon]\n"
        'provider = "static"\n'  # short: carbon_provider
        "static_ci_g_per_kwh = 120\n"  # flat, in its group's table
        'zone = "FR"\n'  # neither prefixed: the name itself
        "[sprout.engine]\n"
        'engine = "replay"\n'
        "max_new_tokens = 64\n"
        "babble_guard = true\n"
        "[sprout.judge]\n"
        'engine = "openai"\n'  # judge_engine, not engine
        "[sprout.meter]\n"
        'gpus = "0,1"\n'
        "[sprout.ledger]\n"
        'durability = "buffered"\n'
        "[sprout.accounting]\n"
        "pue = 1.2\n"
        "[sprout.telemetry]\n"
        "otel_enabled = true\n",
    )
    s = load_settings(path, env={})
    assert s.carbon_provider == "static" and s.static_ci_g_per_kwh == 120.0 and s.zone == "FR"
    assert isinstance(s.static_ci_g_per_kwh, float)
    assert s.engine == "replay" and s.engine_max_new_tokens == 64 and s.babble_guard is True
    assert s.judge_engine == "openai"
    assert s.meter_gpus == "0,1" and s.ledger_durability == "buffered" and s.pue == 1.2
    assert s.otel_enabled is True and s.xi == 0.2


def test_grouped_toml_at_the_top_level_and_as_dotted_keys(tmp_path):
    top = _config(tmp_path, '[carbon]\nprovider = "static"\n[policy]\nkind = "lp"\n')
    s = load_settings(top, env={})
    assert s.carbon_provider == "static" and s.policy_kind == "lp"
    dotted = _config(tmp_path, '[sprout]\ncarbon.provider = "uk"\nserver.port = 9000\n')
    s = load_settings(dotted, env={})
    assert s.carbon_provider == "uk" and s.server_port == 9000


def test_every_setting_round_trips_through_its_group_table(tmp_path):
    """Each setting, written short in its group's table, lands on its flat name."""
    for group, names in settings_by_group().items():
        for name in names:
            short = name.removeprefix(f"{group}_")
            value = getattr(Settings(), name)
            if value is None or value == "":
                continue  # TOML has no null; the empty string is the default anyway
            literal = repr(value).lower() if isinstance(value, bool) else repr(value)
            path = _config(tmp_path, f"[sprout.{group}]\n{short} = {literal}\n")
            assert getattr(load_settings(path, env={}), name) == value, (group, short)


def test_env_overrides_a_grouped_value(tmp_path):
    path = _config(tmp_path, '[sprout.carbon]\nprovider = "static"\nzone = "FR"\n')
    env = {"SPROUT_CARBON_PROVIDER": "uk", "SPROUT_CONFIG": str(path)}
    s = load_settings(env=env)
    assert s.carbon_provider == "uk"  # env over file
    assert s.zone == "FR"  # file, since env does not set it
    assert load_settings(env=env, carbon_provider="trace").carbon_provider == "trace"


def test_wrong_group_key(tmp_path):
    path = _config(tmp_path, "[sprout.carbon]\nxi = 0.2\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    message = str(info.value)
    assert message.startswith(f"config file {path}: key 'xi' in table [sprout.carbon] ")
    assert "belongs to another group: xi in [sprout.policy]" in message
    assert "the keys of [sprout.carbon]: " in message and "provider" in message


def test_wrong_group_short_key_names_its_tables(tmp_path):
    path = _config(tmp_path, "[sprout.server]\ntimeout_s = 3\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    message = str(info.value)
    assert "key 'timeout_s' in table [sprout.server] belongs to another group" in message
    assert "carbon_timeout_s in [sprout.carbon]" in message
    assert "engine_timeout_s in [sprout.engine]" in message
    # an engine setting in the judge's table is an error too, not a silent judge setting
    path = _config(tmp_path, "[sprout.judge]\nengine_model = 'm'\n")
    with pytest.raises(ConfigError, match=r"engine_model in \[sprout\.engine\]"):
        load_settings(path, env={})


def test_unknown_key_in_a_group_table(tmp_path):
    path = _config(tmp_path, "[sprout.meter]\ncolour = 'red'\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert str(info.value) == (
        f"config file {path}: unknown key 'colour' in table [sprout.meter]; the keys of "
        "[sprout.meter]: calibrate, gpus, meter, rapl_root (or their flat names)"
    )


def test_unknown_key_in_a_top_level_group_table(tmp_path):
    path = _config(tmp_path, "[telemetry]\nenabled = true\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert str(info.value) == (
        f"config file {path}: unknown key 'enabled' in table [telemetry]; the keys of "
        "[telemetry]: otel_enabled, otel_metrics_tenant"
    )


def test_unknown_table(tmp_path):
    path = _config(tmp_path, "[sprout.gpu]\ncount = 1\n")
    with pytest.raises(ConfigError, match=r"unknown table \[sprout\.gpu\]; the group tables: "):
        load_settings(path, env={})


@pytest.mark.parametrize(
    ("text", "name", "first", "second"),
    [
        (
            '[sprout]\ncarbon_provider = "uk"\n[sprout.carbon]\nprovider = "static"\n',
            "carbon_provider",
            "carbon_provider in [sprout]",
            "provider in [sprout.carbon]",
        ),
        (
            '[sprout.carbon]\nprovider = "uk"\ncarbon_provider = "static"\n',
            "carbon_provider",
            "provider in [sprout.carbon]",
            "carbon_provider in [sprout.carbon]",
        ),
        (
            "xi = 0.1\n[policy]\nxi = 0.2\n",
            "xi",
            "xi in the top-level table",
            "xi in [policy]",
        ),
    ],
)
def test_a_setting_given_twice(tmp_path, text, name, first, second):
    path = _config(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert str(info.value) == (
        f"config file {path}: setting {name} is given twice: as {first} and as {second}"
    )


def test_bad_type_in_a_group_table_names_the_table(tmp_path):
    path = _config(tmp_path, '[sprout.server]\nport = "eighty"\n')
    with pytest.raises(
        ConfigError,
        match=re.escape(f"config file {path}, table [sprout.server]: setting server_port must"),
    ):
        load_settings(path, env={})


def test_the_flat_form_is_unchanged(tmp_path):
    path = _config(tmp_path, '[sprout]\ncarbon_provider = "static"\nengine = "replay"\n')
    s = load_settings(path, env={})
    assert s.carbon_provider == "static" and s.engine == "replay"
    path = _config(tmp_path, "[sprout]\ncolour = 'red'\n")
    with pytest.raises(ConfigError, match=f"config file {re.escape(str(path))}: unknown setting"):
        load_settings(path, env={})
    path = _config(tmp_path, "[sprout]\ncarbon = 'uk'\n")  # a group name is not a setting
    with pytest.raises(ConfigError, match="unknown setting 'carbon'"):
        load_settings(path, env={})


def test_the_documented_toml_examples_load(tmp_path):
    page = REPO_ROOT / "docs" / "configuration.md"
    blocks = re.findall(r"```toml\n(.*?)```", page.read_text(encoding="utf-8"), re.S)
    assert len(blocks) >= 2
    for block in blocks:
        load_settings(_config(tmp_path, block), env={})
    grouped = load_settings(_config(tmp_path, blocks[1]), env={})
    assert grouped.carbon_provider == "uk" and grouped.policy_kind == "auto"
    assert grouped.judge_engine == "replay" and grouped.engine == "openai"
    assert grouped.judge_sample_share == 0.02 and grouped.otel_enabled is True
