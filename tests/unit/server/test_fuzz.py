"""Fuzzing the proxy: whatever a client sends, the answer is never a 5xx.

Hypothesis draws request bodies shaped like the app's OpenAPI schema with every field
also drawn from arbitrary JSON (wrong types, NaN, huge numbers, deep nesting, unknown
fields), raw bytes, and arbitrary header values. An in-process engine answers at once, so
every 5xx would be the proxy's own fault (upstream failures are 502 by design and tested in
``test_server.py``).
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sprout.chat import ChatRequest
from sprout.engines.base import Engine, Generation
from sprout.factory import build_controller
from tests.support.settings import make_settings

pytest.importorskip("fastapi")
from starlette.testclient import TestClient

from sprout.server import create_app

MODEL = "m-1"
KEY = "sk-fuzz"


class EchoEngine(Engine):
    name = "echo"

    def generate(self, request: ChatRequest) -> Generation:
        return Generation(request.prompt[:50], 5, 3, 0.001, "echo-1", finish_reason="stop")


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    cfg = make_settings(tmp, meter="estimate", server_max_body_bytes=64 * 1024, server_api_key=KEY)
    with (
        build_controller(cfg, engine=EchoEngine(), poll=False) as controller,
        TestClient(create_app(controller, settings=cfg, models=[MODEL])) as c,
    ):
        yield c


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def maybe(valid: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly a valid value, sometimes anything."""
    return st.one_of(valid, valid, json_values)


content = st.one_of(
    st.text(max_size=40),
    st.lists(
        st.fixed_dictionaries(
            {"type": st.sampled_from(["text", "image_url"]), "text": maybe(st.text())}
        ),
        max_size=3,
    ),
    json_values,
)
message = st.fixed_dictionaries(
    {},
    optional={
        "role": maybe(st.sampled_from(["system", "user", "assistant", "tool", "developer", "x"])),
        "content": content,
        "name": json_values,
    },
)
body = st.fixed_dictionaries(
    {},
    optional={
        "model": maybe(st.sampled_from([MODEL, "other"])),
        "messages": maybe(st.lists(maybe(message), max_size=4)),
        "max_tokens": maybe(st.integers(min_value=-5, max_value=2**40)),
        "max_completion_tokens": maybe(st.integers(min_value=-5, max_value=100)),
        "stream": maybe(st.booleans()),
        "stream_options": maybe(st.fixed_dictionaries({"include_usage": maybe(st.booleans())})),
        "stop": maybe(st.one_of(st.text(max_size=5), st.lists(st.text(max_size=5), max_size=20))),
        "temperature": maybe(st.floats(min_value=-1, max_value=3)),
        "n": maybe(st.integers(min_value=-1, max_value=3)),
        "tools": json_values,
        "response_format": json_values,
        "logprobs": json_values,
        "top_p": json_values,
        "\u00e9\u0000weird": json_values,
    },
)
valid_message = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["system", "user", "assistant", "developer"]),
        "content": st.one_of(
            st.text(max_size=40),
            st.lists(
                st.fixed_dictionaries({"type": st.just("text"), "text": st.text()}), max_size=2
            ),
        ),
    }
)
valid_body = st.fixed_dictionaries(
    {
        "messages": st.tuples(
            st.lists(valid_message, max_size=3), st.text(min_size=1, max_size=40)
        ).map(lambda t: [*t[0], {"role": "user", "content": t[1]}]),
    },
    optional={
        "model": st.just(MODEL),
        "max_tokens": st.integers(min_value=1, max_value=4096),
        "stream": st.booleans(),
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
        "stop": st.one_of(st.text(max_size=5), st.lists(st.text(max_size=5), max_size=4)),
        "temperature": st.floats(min_value=0, max_value=2),
        "n": st.just(1),
        "top_p": json_values,
        "user": st.text(max_size=10),
    },
)
header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=300)
headers = st.fixed_dictionaries(
    {},
    optional={
        "x-sprout-tenant": header_text,
        "x-sprout-opt-out": st.one_of(st.sampled_from(["1", "true", "no", "off"]), header_text),
        "authorization": st.one_of(st.just(f"Bearer {KEY}"), header_text),
    },
)


STATUSES: list[int] = []


def _check(response) -> None:
    STATUSES.append(response.status_code)
    assert response.status_code < 500, response.text
    if response.status_code != 200:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert isinstance(error["message"], str) and error["message"]


FUZZ = settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)


@FUZZ
@given(payload=st.one_of(valid_body, body), extra=st.one_of(st.just({}), headers))
def test_structured_bodies_never_get_a_5xx(client, payload, extra):
    data = json.dumps(payload, allow_nan=True).encode()
    h = {"authorization": f"Bearer {KEY}", "content-type": "application/json", **extra}
    response = client.post("/v1/chat/completions", content=data, headers=h)
    _check(response)
    if response.status_code == 200 and payload.get("stream") is True:
        assert response.text.rstrip().endswith("data: [DONE]")


@FUZZ
@given(raw=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode)))
def test_raw_bytes_never_get_a_5xx(client, raw):
    response = client.post(
        "/v1/chat/completions", content=raw, headers={"authorization": f"Bearer {KEY}"}
    )
    _check(response)
    assert response.status_code != 200 or raw.strip().startswith(b"{")


@settings(max_examples=60, deadline=None, derandomize=True)
@given(value=json_values)
def test_any_json_document_never_gets_a_5xx(client, value):
    response = client.post(
        "/v1/chat/completions",
        content=json.dumps(value).encode(),
        headers={"authorization": f"Bearer {KEY}"},
    )
    _check(response)


def test_other_routes_never_get_a_5xx(client):
    for method, path in [
        ("GET", "/v1/models"),
        ("GET", "/v1/models/%00"),
        ("DELETE", "/v1/chat/completions"),
        ("PUT", "/metrics"),
        ("GET", "/v1/chat/completions/../../etc/passwd"),
        ("POST", "/healthz"),
    ]:
        _check(client.request(method, path, headers={"authorization": f"Bearer {KEY}"}))


def test_the_fuzzing_reached_both_answers_and_refusals():
    # Runs after the fuzz tests in file order: they must have exercised both paths.
    assert STATUSES.count(200) >= 20, STATUSES
    assert {400, 401, 404} <= set(STATUSES)
