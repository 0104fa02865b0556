"""Directives and policy files, settings resolution, and chat message parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from sprout.chat import ChatRequest, Message, last_user_content, parse_messages
from sprout.config import Settings, load_settings
from sprout.data import default_policy_path
from sprout.directives import Directive, DirectiveSet
from sprout.errors import ConfigError, PolicyFileError, RequestError

# --- policy files ---------------------------------------------------------------------------


def test_bundled_default_policy():
    directives = DirectiveSet.load(default_policy_path())
    assert directives.names == ("L0", "L1", "L2")
    assert directives.baseline.name == "L0"
    assert directives.baseline.system_prompt is None
    assert directives.get("L1").system_prompt == "Always answer briefly"
    assert directives.get("L2").system_prompt == "Always answer very briefly"
    assert all(d.max_new_tokens is None and d.variant is None for d in directives)
    assert directives.index("L2") == 2
    assert directives.source == str(default_policy_path())
    with pytest.raises(KeyError, match="unknown directive 'L7'; known: L0, L1, L2"):
        directives.get("L7")


def test_full_directive_fields(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text(
        '[[directive]]\nname = "L0"\n'
        '[[directive]]\nname = " small "\nsystem_prompt = "Be short"\nmax_new_tokens = 64\n'
        'variant = "int8"\nstop = ["\\n\\n", "END"]\n',
        encoding="utf-8",
    )
    small = DirectiveSet.load(path).get("small")
    assert small == Directive("small", "Be short", 64, "int8", ("\n\n", "END"))


BAD_POLICIES = [
    ("not-toml", '[[directive]\nname = "L0"\n', "", "not valid TOML"),
    ("unknown-top-key", 'colour = 1\n[[directive]]\nname = "L0"\n', "colour", "unknown top-level"),
    (
        "unknown-key",
        '[[directive]]\nname = "L0"\n[[directive]]\nname = "L1"\ncolour = "red"\n',
        "directive[1].colour",
        "unknown key; allowed",
    ),
    ("missing-name", '[[directive]]\nsystem_prompt = "x"\n', "directive[0].name", "required"),
    ("blank-name", '[[directive]]\nname = "  "\n', "directive[0].name", "required"),
    (
        "tokens-zero",
        '[[directive]]\nname = "L0"\nmax_new_tokens = 0\n',
        "directive[0].max_new_tokens",
        "must be an integer >= 1, got 0",
    ),
    (
        "tokens-string",
        '[[directive]]\nname = "L0"\nmax_new_tokens = "64"\n',
        "directive[0].max_new_tokens",
        "must be an integer >= 1, got '64'",
    ),
    (
        "tokens-bool",
        '[[directive]]\nname = "L0"\nmax_new_tokens = true\n',
        "directive[0].max_new_tokens",
        "must be an integer >= 1",
    ),
    (
        "duplicate",
        '[[directive]]\nname = "L0"\n[[directive]]\nname = "L0"\n',
        "directive",
        "duplicate names ['L0']",
    ),
    ("no-directives", 'description = "empty"\n', "directive", "expected one or more"),
    ("directive-not-table", "directive = [1]\n", "directive[0]", "expected a table"),
    (
        "stop-string",
        '[[directive]]\nname = "L0"\nstop = "END"\n',
        "directive[0].stop",
        "must be a list of non-empty strings",
    ),
    (
        "stop-number",
        '[[directive]]\nname = "L0"\nstop = [1]\n',
        "directive[0].stop",
        "must be a list of non-empty strings",
    ),
    (
        "prompt-number",
        '[[directive]]\nname = "L0"\nsystem_prompt = 5\n',
        "directive[0].system_prompt",
        "must be a string",
    ),
    (
        "variant-blank",
        '[[directive]]\nname = "L0"\nvariant = ""\n',
        "directive[0].variant",
        "must be a non-empty string",
    ),
]


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [case[1:] for case in BAD_POLICIES],
    ids=[case[0] for case in BAD_POLICIES],
)
def test_bad_policy_file(tmp_path, text, key, problem):
    path = tmp_path / "policy.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(PolicyFileError) as info:
        DirectiveSet.load(path)
    err = info.value
    assert (err.path, err.key) == (str(path), key)
    assert problem in err.problem
    message = str(err)
    assert str(path) in message and key in message and problem in message


def test_missing_policy_file(tmp_path):
    path = tmp_path / "absent.toml"
    with pytest.raises(PolicyFileError, match="cannot read file") as info:
        DirectiveSet.load(path)
    assert info.value.path == str(path)
    assert str(path) in str(info.value)


def test_policy_file_not_utf8(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[[directive]]\nname = "caf\xe9"\n')
    with pytest.raises(PolicyFileError, match="not UTF-8"):
        DirectiveSet.load(path)


# --- applying a directive -------------------------------------------------------------------

BRIEF = Directive("L1", "Always answer briefly", max_new_tokens=100, variant="int8", stop=("END",))


def test_apply_merges_into_the_apps_system_prompt():
    request = ChatRequest(
        (Message("system", "You are a pirate.  "), Message("user", "hi")),
        max_new_tokens=500,
        stop=("STOP", "END"),
    )
    out = BRIEF.apply(request)
    assert out.messages == (
        Message("system", "You are a pirate.\n\nAlways answer briefly"),
        Message("user", "hi"),
    )
    assert out.max_new_tokens == 100
    assert out.variant == "int8"
    assert out.directive == "L1"
    assert out.stop == ("STOP", "END")
    assert request.messages[0].content == "You are a pirate.  "  # the input is untouched


def test_apply_adds_a_system_prompt_and_caps_tokens():
    request = ChatRequest((Message("user", "hi"),), max_new_tokens=50, variant="7b")
    out = Directive("L2", "Always answer very briefly", max_new_tokens=100).apply(request)
    assert out.messages == (Message("system", "Always answer very briefly"), Message("user", "hi"))
    assert out.max_new_tokens == 50  # the app's smaller cap wins
    assert out.variant == "7b"  # the directive names none: the app's stays
    assert out.directive == "L2"
    uncapped = BRIEF.apply(ChatRequest((Message("user", "hi"),)))
    assert uncapped.max_new_tokens == 100
    assert uncapped.stop == ("END",)


def test_apply_to_an_empty_system_message_and_baseline():
    request = ChatRequest((Message("system", "  "), Message("user", "hi")), max_new_tokens=7)
    assert BRIEF.apply(request).messages[0] == Message("system", "Always answer briefly")
    baseline = Directive("L0").apply(request)
    assert baseline.messages == request.messages
    assert baseline.max_new_tokens == 7
    assert baseline.directive == "L0"


# --- settings -------------------------------------------------------------------------------


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sprout.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings(env={})
    assert settings == Settings()
    assert settings.xi == 0.1 and settings.zone == "GB" and settings.ci_window_hours == 720
    assert settings.db_url == f"sqlite:///{tmp_path / 'sprout-ledger.db'}"


def test_precedence(tmp_path):
    path = _config(tmp_path, '[sprout]\nxi = 0.2\nzone = "FR"\nci_window_hours = 48\n')
    env = {"SPROUT_XI": "0.3", "SPROUT_DB_URL": "sqlite:///x.db"}
    assert load_settings(path, env=env, xi=0.4).xi == 0.4
    from_env = load_settings(path, env=env)
    assert from_env.xi == 0.3
    assert from_env.zone == "FR"  # file, since env does not set it
    assert from_env.ci_window_hours == 48
    assert from_env.db_url == "sqlite:///x.db"
    assert load_settings(path, env={}).xi == 0.2
    assert load_settings(env={}).xi == 0.1
    assert load_settings(path, env=env, xi=None).xi == 0.3  # None: not given
    assert load_settings(path, env={**env, "SPROUT_ZONE": ""}).zone == "FR"  # empty: unset


def test_config_file_from_env_and_top_level_keys(tmp_path):
    path = _config(tmp_path, "xi = 0.05\nsignal_refresh_s = 60\n")
    settings = load_settings(env={"SPROUT_CONFIG": str(path)})
    assert settings.xi == 0.05
    assert settings.signal_refresh_s == 60.0
    assert isinstance(settings.signal_refresh_s, float)


def test_unknown_key_in_file(tmp_path):
    path = _config(tmp_path, "[sprout]\ncolour = 'red'\n")
    with pytest.raises(ConfigError, match="unknown setting 'colour'") as info:
        load_settings(path, env={})
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("env", "var"),
    [
        ({"SPROUT_XI": "lots"}, "SPROUT_XI"),
        ({"SPROUT_CI_WINDOW_HOURS": "a week"}, "SPROUT_CI_WINDOW_HOURS"),
        ({"SPROUT_CI_WINDOW_HOURS": "1.5"}, "SPROUT_CI_WINDOW_HOURS"),
    ],
)
def test_bad_type_in_env_names_the_variable(env, var):
    with pytest.raises(ConfigError, match=f"environment variable {var}: setting .* must be"):
        load_settings(env=env)


def test_bad_types_in_file(tmp_path):
    for text in ("ci_window_hours = 1.5\n", "xi = true\n", 'xi = "high"\n'):
        path = _config(tmp_path, text)
        with pytest.raises(ConfigError, match=f"config file {path}: setting"):
            load_settings(path, env={})


@pytest.mark.parametrize("xi", [1.5, -0.1, float("nan")])
def test_invalid_xi(xi):
    with pytest.raises(ConfigError, match="setting xi="):
        load_settings(env={}, xi=xi)
    with pytest.raises(ConfigError, match="xi"):
        Settings().replace(xi=xi)


def test_other_invalid_settings(tmp_path):
    with pytest.raises(ConfigError, match="unknown setting 'colour'"):
        load_settings(env={}, colour="red")
    with pytest.raises(ConfigError, match="carbon_provider"):
        load_settings(env={"SPROUT_CARBON_PROVIDER": "magic"})
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "absent.toml", env={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(_config(tmp_path, "xi = = 1\n"), env={})
    with pytest.raises(ConfigError, match=r"\[sprout\] must be a table"):
        load_settings(_config(tmp_path, "sprout = 1\n"), env={})


# --- chat messages --------------------------------------------------------------------------


def test_parse_messages_accepts_dicts_and_messages():
    parsed = parse_messages(
        [
            {"role": "system", "content": "be nice"},
            Message("user", "hi"),
            {"role": "user", "content": "again"},
        ]
    )
    assert parsed == (Message("system", "be nice"), Message("user", "hi"), Message("user", "again"))
    assert last_user_content(parsed) == "again"
    assert ChatRequest(parsed).prompt == "again"
    assert parsed[0].as_dict() == {"role": "system", "content": "be nice"}


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ([], "messages: the list is empty"),
        ("hello", "messages: expected a list of messages, got str"),
        ({"role": "user", "content": "hi"}, "messages: expected a list of messages, got dict"),
        (None, "messages: expected a list"),
        ([{"content": "hi"}], r"messages\[0\]: missing 'role'"),
        ([{"role": "user"}], r"messages\[0\]: missing 'content'"),
        (
            [{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}],
            r"messages\[1\]\.role: unknown role 'robot'",
        ),
        ([{"role": "user", "content": 5}], r"messages\[0\]\.content: expected a string, got int"),
        ([{"role": "user", "content": None}], r"messages\[0\]\.content: expected a string"),
        (["hi"], r"messages\[0\]: expected a mapping"),
        ([{"role": "system", "content": "x"}], "no message with role 'user'"),
    ],
)
def test_parse_messages_errors(raw, match):
    with pytest.raises(RequestError, match=match):
        parse_messages(raw)


def test_babble_guard_key_reaches_the_engine_request():
    text = (
        '[[directive]]\nname = "L0"\n'
        '[[directive]]\nname = "L1"\nsystem_prompt = "Always answer briefly"\nbabble_guard = true\n'
    )
    directives = DirectiveSet.from_toml(text, "guard.toml")
    request = ChatRequest((Message("user", "write code"),))
    assert directives.get("L1").apply(request).extra == {"babble_guard": True}
    assert "babble_guard" not in directives.get("L0").apply(request).extra
    with pytest.raises(PolicyFileError, match=r"guard\.toml: directive\[0\]\.babble_guard"):
        DirectiveSet.from_toml('[[directive]]\nname = "L0"\nbabble_guard = "yes"\n', "guard.toml")


@pytest.mark.parametrize("role", [["user"], {"r": 1}, 3, None])
def test_non_string_roles_are_request_errors(role):
    with pytest.raises(RequestError, match=r"messages\[0\]\.role: unknown role"):
        parse_messages([{"role": role, "content": "hi"}])
