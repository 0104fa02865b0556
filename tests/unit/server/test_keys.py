"""Client keys bound to tenants: the keys file, authentication, the tenant header, the CLI."""

from __future__ import annotations

import hashlib
import json
import logging
import re

import pytest

from sprout.cli import main
from sprout.config import load_settings
from sprout.errors import ConfigError
from sprout.factory import build_controller
from sprout.server.keys import KeyRing, key_digest, load_keys, new_key, parse_keys
from tests.support.fakes import EchoEngine
from tests.support.settings import make_settings

pytest.importorskip("fastapi")
from starlette.testclient import TestClient

from sprout.server import create_app

ACME_KEY, GATEWAY_KEY, OLD_KEY, LEGACY_KEY = (
    "sk-acme-0123456789",
    "sk-gw-0123456789",
    "sk-old-0123456789",
    "sk-legacy-0123456789",
)
ASK = {"messages": [{"role": "user", "content": "Capital of France?"}]}


def _sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


ENTRIES = [
    {"id": "acme-1", "tenant": "acme", "key_sha256": _sha(ACME_KEY)},
    {"id": "gw", "tenant": "gateway", "key_sha256": _sha(GATEWAY_KEY), "trusted_gateway": True},
    {"id": "acme-old", "tenant": "acme", "key_sha256": _sha(OLD_KEY), "revoked": True},
]


def _write(path, entries=ENTRIES):
    path.write_text(json.dumps({"keys": entries}), encoding="utf-8")
    return path


@pytest.fixture
def keys_file(tmp_path):
    return _write(tmp_path / "keys.json")


@pytest.fixture
def served(tmp_path, keys_file):
    """A controller and an app that takes the keys file and the legacy single key."""
    cfg = make_settings(
        tmp_path,
        meter="estimate",
        server_threads=4,
        server_keys_file=str(keys_file),
        server_api_key=LEGACY_KEY,
    )
    with build_controller(cfg, engine=EchoEngine(), poll=False) as controller:
        app = create_app(controller, settings=cfg)
        with TestClient(app) as client:
            yield controller, client


def _post(client, key: str | None, **headers: str):
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    return client.post("/v1/chat/completions", json=ASK, headers=headers)


def _tenants(controller) -> list[str | None]:
    controller.ledger.flush()
    return sorted(r.tenant or "" for r in controller.ledger.receipts(limit=50))


# -- the keys file ---------------------------------------------------------------------------


def test_keys_file_in_toml_and_json(tmp_path):
    toml = tmp_path / "keys.toml"
    toml.write_text(
        f'[[keys]]\nid = "a"\ntenant = "acme"\nkey_sha256 = "{_sha(ACME_KEY).upper()}"\n\n'
        f'[[keys]]\nid = "g"\ntenant = "gw"\nkey_sha256 = "{_sha(GATEWAY_KEY)}"\n'
        "trusted_gateway = true\nrevoked = false\n"
    )
    a, g = load_keys(toml)
    assert (a.id, a.tenant, a.trusted_gateway, a.revoked) == ("a", "acme", False, False)
    assert a.digest == key_digest(ACME_KEY) and g.trusted_gateway
    bare_list = tmp_path / "keys"  # no suffix: told apart by its content
    bare_list.write_text(json.dumps(ENTRIES))
    assert [e.id for e in load_keys(bare_list)] == ["acme-1", "gw", "acme-old"]
    assert load_keys(_write(tmp_path / "empty.json", [])) == ()


BAD_FILES = [
    ("{not json", "json", "not valid JSON"),
    ("keys = [", "toml", "not valid TOML"),
    ('{"keys": {"id": "x"}}', "json", "expected a 'keys' list"),
    ('{"keys": [], "extra": 1}', "json", "unknown top-level key(s) extra"),
    ('{"keys": [5]}', "json", "entry 0: expected a table/object, got int"),
    ('{"keys": [{"id": "x", "tenant": "t"}]}', "json", "entry 0 (id 'x'): missing 'key_sha256'"),
    (json.dumps({"keys": [{"id": "x", "key_sha256": "0" * 64}]}), "json", "missing 'tenant'"),
    (json.dumps({"keys": [{"tenant": "t", "key_sha256": "0" * 64}]}), "json", "missing 'id'"),
    (
        json.dumps({"keys": [{"id": "x", "tenant": "t", "key_sha256": "xyz" * 20}]}),
        "json",
        "key_sha256 must be the key's SHA-256 as 64 hex digits, got 60 characters",
    ),
    (
        json.dumps({"keys": [{"id": "x", "tenant": "t", "key_sha256": "0" * 64, "revoked": 1}]}),
        "json",
        "revoked must be true or false",
    ),
    (
        json.dumps({"keys": [{"id": "x", "tenant": "t", "key_sha256": "0" * 64, "trusted": True}]}),
        "json",
        "unknown field(s) trusted",
    ),
    (
        json.dumps({"keys": [{"id": "x", "tenant": "caf\u00e9", "key_sha256": "0" * 64}]}),
        "json",
        "tenant must be 1 to 256 printable ASCII characters",
    ),
    (
        json.dumps({"keys": [{"id": "x", "tenant": "t", "key_sha256": "0" * 64}] * 2}),
        "json",
        "entries 0 and 1 share id 'x'",
    ),
    (
        json.dumps(
            {
                "keys": [
                    {"id": "x", "tenant": "t", "key_sha256": "0" * 64},
                    {"id": "y", "tenant": "u", "key_sha256": "0" * 64},
                ]
            }
        ),
        "json",
        "keys 'x' and 'y' have the same key_sha256",
    ),
]


@pytest.mark.parametrize(("text", "fmt", "problem"), BAD_FILES)
def test_a_bad_keys_file_is_a_config_error_naming_the_problem(tmp_path, text, fmt, problem):
    path = tmp_path / f"keys.{fmt}"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_keys(path)
    assert problem in str(e.value) and str(path) in str(e.value)


def test_a_key_pasted_in_place_of_its_hash_is_refused_without_echoing_it(tmp_path):
    key = new_key()
    path = _write(tmp_path / "keys.json", [{"id": "x", "tenant": "t", "key_sha256": key}])
    with pytest.raises(ConfigError) as e:
        load_keys(path)
    assert key not in str(e.value) and "store only the hash" in str(e.value)


def test_the_app_refuses_to_start_on_a_bad_or_missing_keys_file(tmp_path):
    bad = tmp_path / "keys.json"
    bad.write_text('{"keys": [{"id": "x"}]}')
    for path, problem in ((bad, "missing 'tenant'"), (tmp_path / "nope.json", "cannot read")):
        cfg = load_settings(
            env={}, db_url=f"sqlite:///{tmp_path / 'l.db'}", server_keys_file=str(path)
        )
        with pytest.raises(ConfigError, match=re.escape(problem)):
            create_app(build_controller(cfg, engine=EchoEngine(), poll=False), settings=cfg)


def test_the_keys_file_setting_comes_from_the_environment(tmp_path, keys_file):
    cfg = load_settings(env={"SPROUT_SERVER_KEYS_FILE": str(keys_file)})
    assert cfg.server_keys_file == str(keys_file)


# -- authentication and tenants --------------------------------------------------------------


def test_a_receipts_tenant_comes_from_the_key(served):
    controller, client = served
    r = _post(client, ACME_KEY)
    assert r.status_code == 200 and r.json()["sprout"]["tenant"] == "acme"
    # Naming its own tenant is allowed (clients that already send the header keep working).
    assert _post(client, ACME_KEY, **{"x-sprout-tenant": "acme"}).status_code == 200
    assert _tenants(controller) == ["acme", "acme"]


def test_an_ordinary_key_cannot_name_another_tenant(served):
    controller, client = served
    r = _post(client, ACME_KEY, **{"x-sprout-tenant": "globex"})
    assert r.status_code == 403
    error = r.json()["error"]
    assert error["code"] == "tenant_header_not_allowed" and error["param"] == "x-sprout-tenant"
    assert "'acme-1'" in error["message"] and "trusted_gateway" in error["message"]
    assert _tenants(controller) == []  # nothing ran, nothing recorded


def test_a_trusted_gateway_names_the_tenant(served):
    controller, client = served
    assert _post(client, GATEWAY_KEY, **{"x-sprout-tenant": "globex"}).status_code == 200
    assert _post(client, GATEWAY_KEY).json()["sprout"]["tenant"] == "gateway"
    bad = _post(client, GATEWAY_KEY, **{"x-sprout-tenant": "x" * 300})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_header"
    assert _tenants(controller) == ["gateway", "globex"]


def test_the_single_legacy_key_still_works_as_before(served):
    controller, client = served
    assert _post(client, LEGACY_KEY).json()["sprout"]["tenant"] is None
    assert _post(client, LEGACY_KEY, **{"x-sprout-tenant": "t1"}).status_code == 200
    assert _tenants(controller) == ["", "t1"]


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer sk-unknown", "Bearer ", f"Basic {ACME_KEY}", ACME_KEY, f"Bearer {ACME_KEY}x"],
)
def test_unknown_or_missing_keys_get_401(served, authorization):
    controller, client = served
    headers = {} if authorization is None else {"authorization": authorization}
    r = client.post("/v1/chat/completions", json=ASK, headers=headers)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"]["code"] == "invalid_api_key"
    assert client.get("/v1/models", headers=headers).status_code == 401
    assert _tenants(controller) == []


def test_a_revoked_key_gets_401_saying_so(served):
    controller, client = served
    r = _post(client, OLD_KEY)
    assert r.status_code == 401
    error = r.json()["error"]
    assert error["code"] == "revoked_api_key" and "revoked" in error["message"]
    assert "acme-old" in error["message"]
    r = client.get("/v1/models", headers={"authorization": f"Bearer {OLD_KEY}"})
    assert r.status_code == 401
    assert _tenants(controller) == []
    metrics = client.get("/metrics").text
    assert 'sprout_request_errors_total{status="401",code="revoked_api_key"} 2.0' in metrics


def test_keys_are_compared_as_digests_in_constant_time_and_never_kept(served, monkeypatch, caplog):
    import hmac

    controller, client = served
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: compared.append((a, b)) or real(a, b))
    caplog.set_level(logging.DEBUG)
    for key in (ACME_KEY, "sk-unknown", OLD_KEY):
        compared.clear()
        _post(client, key)
        # Every entry and the legacy key, whichever matched: nothing shows in the timing.
        assert len(compared) == len(ENTRIES) + 1
        assert all(len(a) == len(b) == 32 for a, b in compared)  # SHA-256 digests
        assert all(key.encode() not in (a, b) for a, b in compared)
    controller.ledger.flush()
    stored = json.dumps([r.to_json_dict() for r in controller.ledger.receipts(limit=10)])
    for key in (ACME_KEY, OLD_KEY, LEGACY_KEY, GATEWAY_KEY):
        assert key not in caplog.text and key not in stored and _sha(key) not in stored


def test_a_changed_keys_file_is_picked_up_without_a_restart(served, keys_file, caplog):
    _, client = served
    ring = client.app.state.keyring
    ring.reload_interval_s = 0.0
    assert _post(client, ACME_KEY).status_code == 200
    _write(keys_file, [{**ENTRIES[0], "revoked": True}, *ENTRIES[1:]])
    assert _post(client, ACME_KEY).json()["error"]["code"] == "revoked_api_key"
    keys_file.write_text("{broken")  # a bad edit: logged, the keys read before stay
    with caplog.at_level(logging.ERROR, logger="sprout.server"):
        assert _post(client, ACME_KEY).json()["error"]["code"] == "revoked_api_key"
    assert "not valid JSON" in caplog.text and "stay in force" in caplog.text


def test_keyring_matches_the_right_entry(tmp_path, keys_file):
    ring = KeyRing(keys_file, reload_interval_s=0)
    assert ring.match(key_digest(GATEWAY_KEY)).id == "gw"
    assert ring.match(key_digest("nope")) is None
    assert parse_keys("[]", "x", "json") == ()


# -- sprout keys add -------------------------------------------------------------------------


def _printed_key(out: str) -> str:
    return re.search(r"^  (sk-sprout-\S+)$", out, re.M).group(1)


@pytest.mark.parametrize("suffix", ["toml", "json"])
def test_keys_add_makes_a_key_that_authenticates(tmp_path, capsys, suffix):
    path = tmp_path / f"keys.{suffix}"
    assert main(["keys", "add", "--tenant", "acme", "--file", str(path)]) == 0
    assert main(["keys", "add", "--tenant", "gw", "--trusted-gateway", "--file", str(path)]) == 0
    out = capsys.readouterr().out
    acme_key, gw_key = re.findall(r"^  (sk-sprout-\S+)$", out, re.M)
    text = path.read_text()
    assert acme_key not in text and gw_key not in text and _sha(acme_key) in text
    entries = load_keys(path)
    assert [(e.tenant, e.trusted_gateway) for e in entries] == [("acme", False), ("gw", True)]
    cfg = load_settings(env={}, db_url=f"sqlite:///{tmp_path / 'l.db'}", server_keys_file=str(path))
    with (
        build_controller(cfg, engine=EchoEngine(), poll=False) as controller,
        TestClient(create_app(controller, settings=cfg)) as client,
    ):
        assert _post(client, acme_key).json()["sprout"]["tenant"] == "acme"
        assert _post(client, acme_key, **{"x-sprout-tenant": "b"}).status_code == 403
        assert _post(client, gw_key, **{"x-sprout-tenant": "b"}).json()["sprout"]["tenant"] == "b"


def test_keys_add_prints_an_entry_without_a_file(capsys):
    assert main(["keys", "add", "--tenant", "acme", "--id", "k1", "--format", "json"]) == 0
    out = capsys.readouterr().out
    key = _printed_key(out)
    entry = json.loads(out.strip().splitlines()[-1])
    assert entry == {
        "id": "k1",
        "tenant": "acme",
        "key_sha256": _sha(key),
        "trusted_gateway": False,
        "revoked": False,
    }


def test_keys_add_refuses_bad_input(tmp_path, capsys):
    assert main(["keys", "add", "--tenant", "caf\u00e9"]) == 2
    path = tmp_path / "keys.toml"
    assert main(["keys", "add", "--tenant", "a", "--id", "x", "--file", str(path)]) == 0
    assert main(["keys", "add", "--tenant", "b", "--id", "x", "--file", str(path)]) == 2
    assert "id 'x' is taken" in capsys.readouterr().err
    assert [e.id for e in load_keys(path)] == ["x"]
