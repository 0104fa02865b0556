"""The OpenAPI document states the rules the proxy enforces (schemathesis checks the rest in
``test_schema.py``), and 405 answers say what is allowed."""

from __future__ import annotations

import json

import pytest

from sprout.config import load_settings
from sprout.server.keys import key_digest

pytest.importorskip("fastapi")
from starlette.testclient import TestClient

from sprout.server import ApiError, create_app, parse_chat_call

ASK = [{"role": "user", "content": "Capital of France?"}]


def _doc(tmp_path, **settings) -> dict:
    cfg = load_settings(env={}, db_url=f"sqlite:///{tmp_path / 'l.db'}", **settings)
    with TestClient(create_app(cfg)) as client:
        return client.get("/openapi.json").json()


def _chat(doc: dict) -> dict:
    return doc["paths"]["/v1/chat/completions"]["post"]


def test_the_request_schema_states_every_rule(tmp_path):
    doc = _doc(tmp_path)
    assert doc["openapi"].startswith("3.1")  # JSON Schema 2020-12: `contains`, type lists
    body = _chat(doc)["requestBody"]["content"]["application/json"]["schema"]
    props = body["properties"]
    assert props["messages"]["contains"]["properties"]["role"] == {"const": "user"}
    for name in ("max_tokens", "max_completion_tokens"):
        assert props[name]["maximum"] == 2**31 - 1 and props[name]["minimum"] == 1
    assert props["stop"]["oneOf"][1]["maxItems"] == 16
    # The replay engine's models: any other name is a 404.
    assert props["model"]["enum"] == ["llama-2-13b-chat", "llama-2-7b-chat", None]
    (model_id,) = doc["paths"]["/v1/models/{model_id}"]["get"]["parameters"]
    assert model_id["schema"]["enum"] == ["llama-2-13b-chat", "llama-2-7b-chat"]
    headers = {p["name"] for p in _chat(doc)["parameters"] if p["in"] == "header"}
    assert headers == {"x-sprout-tenant", "x-sprout-opt-out"}


def test_every_status_and_content_type_is_documented(tmp_path):
    doc = _doc(tmp_path)
    chat = _chat(doc)["responses"]
    assert sorted(chat) == ["200", "400", "404", "413", "502"]  # open proxy: no 401, 403
    assert set(chat["200"]["content"]) == {"application/json", "text/event-stream"}
    assert chat["502"]["content"]["application/json"]["schema"]["required"] == ["error"]
    model = doc["paths"]["/v1/models/{model_id}"]["get"]["responses"]
    assert sorted(model) == ["200", "404"]  # FastAPI's 422 is never sent: gone
    metrics = doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain; version=0.0.4; charset=utf-8"]
    assert "HTTPValidationError" not in json.dumps(doc)


def test_keys_add_401_403_and_a_bearer_scheme(tmp_path):
    keys = tmp_path / "keys.json"
    entry = {"id": "a", "tenant": "acme", "key_sha256": key_digest("k").hex()}
    keys.write_text(json.dumps([entry]))
    doc = _doc(tmp_path, server_keys_file=str(keys))
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert sorted(_chat(doc)["responses"]) == ["200", "400", "401", "403", "404", "413", "502"]
    assert _chat(doc)["security"] == [{"bearerAuth": []}]
    assert "security" not in doc["paths"]["/healthz"]["get"]  # probes stay open
    legacy = _doc(tmp_path, server_api_key="k")
    assert "401" in _chat(legacy)["responses"] and "403" not in _chat(legacy)["responses"]


def test_405_answers_carry_allow(tmp_path):
    cfg = load_settings(env={}, db_url=f"sqlite:///{tmp_path / 'l.db'}")
    with TestClient(create_app(cfg)) as client:
        for method, path, allowed in [
            ("GET", "/v1/chat/completions", "POST"),
            ("DELETE", "/v1/models", "GET"),
            ("POST", "/metrics", "GET"),
        ]:
            r = client.request(method, path)
            assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
            assert r.headers["allow"] == allowed


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"logprobs": 0}, "logprobs"),  # 0 == False in Python, not in JSON
        ({"top_logprobs": False}, "top_logprobs"),
        ({"user": 5}, "user"),
        ({"n": 1.5}, "n"),
    ],
)
def test_values_the_schema_refuses_are_refused(extra, param):
    with pytest.raises(ApiError) as e:
        parse_chat_call({"messages": ASK, **extra})
    assert e.value.status == 400 and e.value.param == param


def test_values_the_schema_allows_are_accepted():
    # JSON Schema counts 2.0 as an integer and 0.0 as equal to 0.
    call = parse_chat_call(
        {"messages": ASK, "max_tokens": 2.0, "n": 1.0, "top_logprobs": 0.0, "logprobs": False}
    )
    assert call.max_tokens == 2 and isinstance(call.max_tokens, int)
    call = parse_chat_call({"messages": ASK, "user": None, "stream": None, "model": None})
    assert call.model is None and not call.stream
