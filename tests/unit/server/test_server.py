"""The OpenAI-compatible proxy (``sprout serve``) in front of a fake upstream on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from sprout.directives import Directive
from sprout.factory import build_controller
from tests.support.fake_openai_server import FakeOpenAIServer, wait_until
from tests.support.fakes import FixedPolicy
from tests.support.servers import free_port, running
from tests.support.settings import ledger_url, make_settings, proxy_settings

pytest.importorskip("fastapi")
from starlette.testclient import TestClient

from sprout.server import create_app, discover_model, upstream_settings

REPLY = "Paris is the capital of France. It is known for the Eiffel Tower and fine food."
MODEL = "llama-3-8b"
KEY = "sk-proxy-0123456789abcdef"
ASK = [{"role": "user", "content": "Capital of France?"}]


@pytest.fixture
def upstream():
    with FakeOpenAIServer(REPLY) as server:
        yield server


@pytest.fixture
def controller(tmp_path, upstream):
    c = build_controller(proxy_settings(tmp_path, upstream.url, MODEL), poll=False)
    yield c
    c.close()


@pytest.fixture
def client(tmp_path, controller, upstream):
    with TestClient(
        create_app(controller, settings=proxy_settings(tmp_path, upstream.url, MODEL))
    ) as c:
        yield c


def _receipts(controller) -> int:
    controller.ledger.flush()
    return controller.ledger.count_receipts()


# -- answers and receipts ---------------------------------------------------------------------


def test_completion_carries_its_receipt_in_headers_and_body(client, controller, upstream):
    r = client.post("/v1/chat/completions", json={"model": MODEL, "messages": ASK})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": REPLY}
    assert body["usage"]["completion_tokens"] > 0
    receipt = body["sprout"]
    assert receipt["request_id"] == r.headers["x-sprout-request-id"]
    assert r.headers["x-sprout-directive"] == receipt["directive"]
    assert float(r.headers["x-sprout-gco2e"]) == pytest.approx(receipt["total_g"], rel=1e-5)
    assert float(r.headers["x-sprout-kwh"]) == pytest.approx(receipt["energy_kwh"], rel=1e-5)
    assert r.headers["x-sprout-energy-source"] == "estimated"
    assert float(r.headers["x-sprout-ci-g-per-kwh"]) == 400.0
    assert receipt["engine"] == "openai" and receipt["model"] == MODEL
    assert _receipts(controller) == 1
    stored = controller.ledger.receipts(limit=1)[0]
    assert stored.request_id == receipt["request_id"]


def test_the_directive_shapes_the_upstream_request(tmp_path, upstream):
    brief = Directive("L2", system_prompt="Always answer very briefly", max_new_tokens=6)
    settings = proxy_settings(tmp_path, upstream.url, MODEL)
    with build_controller(settings, poll=False) as controller:
        controller.policy = FixedPolicy(brief)
        with TestClient(create_app(controller, settings=settings)) as client:
            r = client.post(
                "/v1/chat/completions",
                json={
                    "model": MODEL,
                    "messages": [{"role": "system", "content": "You are Acme's bot."}, *ASK],
                    "max_tokens": 100,
                    "stop": "###",
                    "temperature": 0.3,
                },
            )
    assert r.status_code == 200 and r.headers["x-sprout-directive"] == "L2"
    sent = upstream.requests[-1]
    assert sent["messages"][0]["content"] == "You are Acme's bot.\n\nAlways answer very briefly"
    assert sent["max_tokens"] == 6 and sent["stop"] == ["###"] and sent["temperature"] == 0.3
    assert r.json()["choices"][0]["finish_reason"] == "length"


def _events(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            out.append(json.loads(line[len("data: ") :]))
    return out


@pytest.mark.parametrize("include_usage", [False, True])
def test_streaming_sends_sse_with_the_receipt_in_the_final_chunk(
    client, controller, upstream, include_usage
):
    body = {"model": MODEL, "messages": ASK, "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["x-sprout-directive"] and r.headers["x-sprout-request-id"]
    assert r.text.rstrip().endswith("data: [DONE]")
    events = _events(r.text)
    text = "".join(
        c["choices"][0]["delta"].get("content") or "" for c in events if c.get("choices")
    )
    assert text == REPLY
    assert len(events) > 5  # streamed token by token, not in one piece
    final = events[-1]
    assert final["sprout"]["request_id"] == r.headers["x-sprout-request-id"]
    assert final["sprout"]["output_tokens"] > 0
    assert ("usage" in final) is include_usage
    assert all("sprout" not in c for c in events[:-1])
    assert upstream.requests[-1]["stream"] is True  # the upstream streamed too
    assert _receipts(controller) == 1


def test_streamed_text_never_shows_a_stop_string(tmp_path):
    with FakeOpenAIServer("one two three STOP four five", honour_stop=False) as upstream:
        settings = proxy_settings(tmp_path, upstream.url, MODEL)
        with (
            build_controller(settings, poll=False) as controller,
            TestClient(create_app(controller, settings=settings)) as client,
        ):
            r = client.post(
                "/v1/chat/completions",
                json={"model": MODEL, "messages": ASK, "stream": True, "stop": ["STOP"]},
            )
    events = _events(r.text)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in events if c["choices"])
    assert text == "one two three "
    assert events[-1]["sprout"]["output_tokens"] >= 3


def test_the_official_openai_client_works_streaming_and_not(tmp_path, upstream):
    openai = pytest.importorskip("openai")
    settings = proxy_settings(tmp_path, upstream.url, MODEL, server_api_key=KEY)
    controller = build_controller(settings, poll=False)
    with running(create_app(controller, settings=settings)) as base_url:
        client = openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0, timeout=10)
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=ASK, extra_headers={"x-sprout-tenant": "acme"}
        )
        completion = raw.parse()
        assert completion.choices[0].message.content == REPLY
        assert raw.headers["x-sprout-directive"] == completion.sprout["directive"]
        assert completion.sprout["tenant"] == "acme"
        assert completion.usage.completion_tokens > 0

        chunks = list(
            client.chat.completions.create(
                model=MODEL,
                messages=ASK,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == REPLY
        assert chunks[-1].usage.completion_tokens > 0
        assert chunks[-1].sprout["directive"] in ("L0", "L1", "L2")

        assert [m.id for m in client.models.list()] == [MODEL]
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="gpt-4o", messages=ASK)
        bad = openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0, timeout=10)
        with pytest.raises(openai.AuthenticationError):
            bad.chat.completions.create(model=MODEL, messages=ASK)
    try:
        assert _receipts(controller) == 2
    finally:
        controller.close()


# -- per-request controls -----------------------------------------------------------------------


def test_tenant_header_is_recorded_and_opt_out_forces_the_baseline(tmp_path, upstream):
    brief = Directive("L2", system_prompt="Always answer very briefly")
    settings = proxy_settings(tmp_path, upstream.url, MODEL)
    with build_controller(settings, poll=False) as controller:
        controller.policy = FixedPolicy(brief)
        with TestClient(create_app(controller, settings=settings)) as client:
            r = client.post(
                "/v1/chat/completions",
                json={"model": MODEL, "messages": ASK},
                headers={"x-sprout-tenant": "acme", "x-sprout-opt-out": "true"},
            )
            assert r.status_code == 200
            assert r.headers["x-sprout-directive"] == "L0"
            assert r.headers["x-sprout-decision"] == "opt-out"
            assert r.json()["sprout"]["tenant"] == "acme"
            assert upstream.requests[-1]["messages"] == ASK  # no directive prompt

            r = client.post("/v1/chat/completions", json={"model": MODEL, "messages": ASK})
            assert r.headers["x-sprout-directive"] == "L2"
            assert r.json()["sprout"]["tenant"] is None

            for header in ({"x-sprout-opt-out": "maybe"}, {"x-sprout-tenant": "a" * 300}):
                r = client.post(
                    "/v1/chat/completions", json={"model": MODEL, "messages": ASK}, headers=header
                )
                assert r.status_code == 400
                assert r.json()["error"]["param"] == next(iter(header))
        controller.ledger.flush()
        stored = sorted(controller.ledger.receipts(limit=5), key=lambda x: x.decision)
    assert [(s.decision, s.tenant) for s in stored] == [("fixed", None), ("opt-out", "acme")]


def test_custom_header_names(tmp_path, upstream):
    settings = proxy_settings(
        tmp_path, upstream.url, MODEL, server_tenant_header="X-Team", server_opt_out_header="X-Full"
    )
    with (
        build_controller(settings, poll=False) as controller,
        TestClient(create_app(controller, settings=settings)) as client,
    ):
        r = client.post(
            "/v1/chat/completions",
            json={"model": MODEL, "messages": ASK},
            headers={"x-team": "blue", "x-full": "1"},
        )
    assert r.json()["sprout"]["tenant"] == "blue"
    assert r.headers["x-sprout-decision"] == "opt-out"


def test_api_key_is_required_compared_in_constant_time_and_never_logged(
    tmp_path, upstream, caplog, monkeypatch
):
    import hmac

    import sprout.server._auth

    compared = []
    real = hmac.compare_digest
    monkeypatch.setattr(
        sprout.server._auth.hmac, "compare_digest", lambda a, b: compared.append(1) or real(a, b)
    )
    settings = proxy_settings(tmp_path, upstream.url, MODEL, server_api_key=KEY)
    assert KEY not in repr(settings)
    caplog.set_level(logging.DEBUG)
    with TestClient(create_app(settings)) as client:
        body = {"model": MODEL, "messages": ASK}
        for headers in ({}, {"authorization": "Bearer nope"}, {"authorization": KEY}):
            r = client.post("/v1/chat/completions", json=body, headers=headers)
            assert r.status_code == 401
            assert r.json()["error"]["code"] == "invalid_api_key"
            assert KEY not in r.text
        assert client.get("/v1/models").status_code == 401
        ok = client.post(
            "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {KEY}"}
        )
        assert ok.status_code == 200
        # Probes and metrics stay open for load balancers and scrapers.
        assert client.get("/healthz").status_code == 200
        assert client.get("/metrics").status_code == 200
    assert compared  # hmac.compare_digest decided
    assert KEY not in caplog.text


# -- bad requests and upstream failures ---------------------------------------------------------

BAD = [
    (b"{not json", 400, "invalid_json", None),
    (b"\xff\xfe", 400, "invalid_json", None),
    (b"[" * 100_000, 400, "invalid_json", None),
    (b"[]", 400, "invalid_type", None),
    (b"{}", 400, "missing_required_parameter", "messages"),
    ({"model": MODEL, "messages": "hi"}, 400, "invalid_type", "messages"),
    ({"model": MODEL, "messages": []}, 400, "invalid_value", "messages"),
    ({"model": MODEL, "messages": [1]}, 400, "invalid_type", "messages[0]"),
    ({"messages": [{"role": "user", "content": 5}]}, 400, "invalid_value", "messages[0].content"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, 400, "invalid_value", "messages[0].role"),
    ({"messages": [{"role": "system", "content": "x"}]}, 400, "invalid_value", "messages"),
    ({"messages": [{"role": "user"}]}, 400, "invalid_value", "messages[0]"),
    ({"messages": [{"role": ["user"], "content": "x"}]}, 400, "invalid_type", "messages[0].role"),
    (
        {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
        400,
        "unsupported_content",
        "messages[0].content[0]",
    ),
    ({"messages": ASK, "model": 7}, 400, "invalid_type", "model"),
    ({"messages": ASK, "model": "gpt-4o"}, 404, "model_not_found", "model"),
    ({"messages": ASK, "max_tokens": 0}, 400, "invalid_value", "max_tokens"),
    ({"messages": ASK, "max_tokens": "5"}, 400, "invalid_value", "max_tokens"),
    ({"messages": ASK, "max_tokens": 10**40}, 400, "invalid_value", "max_tokens"),
    (
        {"messages": ASK, "max_completion_tokens": 1.5},
        400,
        "invalid_value",
        "max_completion_tokens",
    ),
    ({"messages": ASK, "temperature": 3}, 400, "invalid_value", "temperature"),
    ({"messages": ASK, "temperature": True}, 400, "invalid_value", "temperature"),
    ({"messages": ASK, "stream": "yes"}, 400, "invalid_type", "stream"),
    ({"messages": ASK, "stream_options": []}, 400, "invalid_type", "stream_options"),
    ({"messages": ASK, "stop": [1]}, 400, "invalid_value", "stop"),
    ({"messages": ASK, "stop": {"a": 1}}, 400, "invalid_type", "stop"),
    ({"messages": ASK, "n": 2}, 400, "unsupported_parameter", "n"),
    ({"messages": ASK, "tools": [{"type": "function"}]}, 400, "unsupported_parameter", "tools"),
    ({"messages": ASK, "logprobs": True}, 400, "unsupported_parameter", "logprobs"),
    (
        {"messages": ASK, "response_format": {"type": "json_object"}},
        400,
        "unsupported_parameter",
        "response_format",
    ),
]


@pytest.mark.parametrize(("body", "status", "code", "param"), BAD)
def test_bad_requests_get_openai_style_4xx_errors(client, upstream, body, status, code, param):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = client.post(
        "/v1/chat/completions", content=content, headers={"content-type": "application/json"}
    )
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code and error["param"] == param
    assert error["type"] == "invalid_request_error" and error["message"]
    assert upstream.requests == []  # nothing reached the model


def test_huge_bodies_are_refused_with_413(tmp_path, upstream):
    settings = proxy_settings(tmp_path, upstream.url, MODEL, server_max_body_bytes=4096)
    big = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x" * 5000}]})
    with TestClient(create_app(settings)) as client:
        r = client.post("/v1/chat/completions", content=big)
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

        def chunked():  # no Content-Length: counted while read
            for i in range(0, len(big), 1000):
                yield big[i : i + 1000].encode()

        r = client.post("/v1/chat/completions", content=chunked())
        assert r.status_code == 413
        r = client.post("/v1/chat/completions", content=b"{}", headers={"content-length": "abc"})
        assert 400 <= r.status_code < 500
    assert upstream.requests == []


def test_ignored_fields_are_named_in_a_header(client):
    r = client.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": ASK, "top_p": 0.5, "seed": 1, "user": "u1"},
    )
    assert r.status_code == 200
    assert r.headers["x-sprout-ignored-params"] == "seed, top_p"


def test_text_content_parts_are_accepted(client, upstream):
    parts = [{"type": "text", "text": "Capital of"}, {"type": "text", "text": "France?"}]
    r = client.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": parts}]},
    )
    assert r.status_code == 200
    assert upstream.requests[-1]["messages"][-1]["content"] == "Capital of\nFrance?"


def test_unknown_routes_and_methods_get_openai_style_errors(client):
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = client.get("/v1/chat/completions")
    assert r.status_code == 405 and "error" in r.json()


@pytest.mark.parametrize("stream", [False, True])
def test_upstream_failure_is_a_502_with_a_clear_message(client, controller, upstream, stream):
    upstream.inject(503)
    r = client.post(
        "/v1/chat/completions", json={"model": MODEL, "messages": ASK, "stream": stream}
    )
    assert r.status_code == 502
    error = r.json()["error"]
    assert error["code"] == "upstream_error" and error["type"] == "api_error"
    assert "upstream model server failed" in error["message"] and "HTTP 503" in error["message"]
    assert _receipts(controller) == 0  # nothing served, nothing recorded


def test_upstream_down_is_a_502(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = proxy_settings(tmp_path, f"http://127.0.0.1:{port}/v1", MODEL)
    with TestClient(create_app(settings)) as client:
        r = client.post("/v1/chat/completions", json={"model": MODEL, "messages": ASK})
    assert r.status_code == 502 and "connection failed" in r.json()["error"]["message"]


def test_a_stream_that_fails_midway_ends_with_an_error_event(client, controller, upstream):
    upstream.inject("drop-mid-stream")
    r = client.post("/v1/chat/completions", json={"model": MODEL, "messages": ASK, "stream": True})
    assert r.status_code == 200  # the first tokens were already sent
    events = _events(r.text)
    assert "error" in events[-1] and events[-1]["error"]["code"] == "upstream_error"
    # The tokens generated before the drop spent energy: their receipt says so.
    assert _receipts(controller) == 1
    (receipt,) = controller.ledger.receipts()
    assert receipt.outcome == "upstream_failed" and receipt.energy_source == "estimated"
    assert receipt.output_tokens > 0 and receipt.energy_kwh > 0


# -- models, health, metrics ---------------------------------------------------------------------


class _ModelsUpstream:
    """Answers GET /v1/models like an OpenAI-compatible server."""

    def __init__(self, ids: list[str]) -> None:
        payload = json.dumps(
            {
                "object": "list",
                "data": [{"id": i, "object": "model", "owned_by": "vllm"} for i in ids],
            }
        ).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                code = 200 if self.path == "/v1/models" else 404
                self.send_response(code)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_models_come_from_the_upstream_or_the_configuration(tmp_path, client):
    data = client.get("/v1/models").json()
    assert data["object"] == "list" and [m["id"] for m in data["data"]] == [MODEL]
    assert client.get(f"/v1/models/{MODEL}").json()["id"] == MODEL
    assert client.get("/v1/models/nope").status_code == 404

    with _ModelsUpstream(["m-big", "m-small"]) as up:
        assert discover_model(up.url) == "m-big"
        settings = upstream_settings(
            make_settings(
                ledger_url(tmp_path, "m.db"), meter="estimate", engine_variants="small=m-small"
            ),
            up.url,
        )
        assert settings.engine_model == "m-big"
        with TestClient(create_app(settings)) as c:
            listed = c.get("/v1/models").json()["data"]
    assert [(m["id"], m["owned_by"]) for m in listed] == [("m-big", "vllm"), ("m-small", "vllm")]


def test_health_and_metrics(client, controller):
    for stream in (False, True):
        client.post(
            "/v1/chat/completions", json={"model": MODEL, "messages": ASK, "stream": stream}
        )
    client.post("/v1/chat/completions", content=b"{oops")
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["carbon"]["ci_g_per_kwh"] == 400.0
    r = client.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = r.text
    directive = controller.ledger.receipts(limit=1)[0].directive if _receipts(controller) else ""
    lines = dict(
        line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#")
    )
    total = sum(float(v) for k, v in lines.items() if k.startswith("sprout_requests_total{"))
    assert total == 2 and f'directive="{directive}"' in text
    assert float(lines["sprout_carbon_gco2e_total"]) > 0
    assert float(lines['sprout_energy_kwh_total{source="estimated"}']) > 0
    assert float(lines["sprout_carbon_intensity_g_per_kwh"]) == 400.0
    assert float(lines["sprout_carbon_signal_age_seconds"]) >= 0
    assert "sprout_ledger_backlog" in lines
    assert float(lines['sprout_request_errors_total{status="400",code="invalid_json"}']) == 1
    assert "# TYPE sprout_requests_total counter" in text


def test_openapi_schema_documents_the_request_body(client):
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/v1/chat/completions"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"]["required"] == ["messages"]


# -- concurrency and the command ------------------------------------------------------------------


def test_concurrent_requests_run_in_parallel(tmp_path):
    with FakeOpenAIServer(REPLY) as upstream:
        upstream.inject(*[("slow", 0.4)] * 8)
        settings = proxy_settings(tmp_path, upstream.url, MODEL, server_threads=8)
        with running(create_app(settings)) as base_url:
            results: list[int] = []

            def one() -> None:
                r = requests.post(
                    f"{base_url}/chat/completions",
                    json={"model": MODEL, "messages": ASK},
                    timeout=10,
                )
                results.append(r.status_code)

            started = time.monotonic()
            threads = [threading.Thread(target=one) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=10)
            elapsed = time.monotonic() - started
    assert results == [200] * 8
    assert elapsed < 1.6, elapsed  # 8 x 0.4 s one after another would be 3.2 s


def test_sprout_serve_command_runs_the_proxy(tmp_path, upstream):
    port = free_port()
    exe = Path(sys.executable).with_name("sprout")
    cmd = [str(exe), "serve", "--upstream", upstream.url, "--model", MODEL, "--port", str(port)]
    cmd += ["--db", f"sqlite:///{tmp_path / 'serve.db'}"]
    env = {"SPROUT_CARBON_PROVIDER": "static", "SPROUT_METER": "estimate", "PATH": "/usr/bin"}
    env["SPROUT_SERVER_API_KEY"] = KEY
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path
    )
    try:
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return requests.get(f"{url}/healthz", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        assert wait_until(up, timeout_s=30), "sprout serve did not start"
        r = requests.post(
            f"{url}/v1/chat/completions",
            json={"model": MODEL, "messages": ASK},
            headers={"authorization": f"Bearer {KEY}"},
            timeout=10,
        )
        assert r.status_code == 200 and r.json()["sprout"]["directive"]
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    assert f"http://127.0.0.1:{port}/v1" in out and "API key required" in out
    assert KEY not in out
    import sqlalchemy

    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'serve.db'}")
    with engine.connect() as conn:
        count = conn.execute(sqlalchemy.text("select count(*) from receipts")).scalar()
    engine.dispose()
    assert count == 1  # flushed on shutdown
