"""How requests end, as /metrics counts them; a client gone while uploading is not an error."""

from __future__ import annotations

import asyncio
import logging
import socket
import types

import pytest
import requests

from sprout.config import load_settings
from sprout.factory import build_controller
from sprout.metrics import SproutMetrics
from tests.support.fake_openai_server import wait_until
from tests.support.fakes import EchoEngine
from tests.support.settings import make_settings

pytest.importorskip("fastapi")
from starlette.testclient import TestClient

from sprout.server import create_app
from tests.support.servers import running

ASK = b'{"messages": [{"role": "user", "content": "Capital of France?"}]}'


@pytest.fixture
def controller(tmp_path):
    cfg = make_settings(tmp_path)
    with build_controller(cfg.replace(meter="estimate"), engine=EchoEngine(), poll=False) as c:
        yield c


def _samples(text: str) -> dict[str, float]:
    return {
        name: float(value)
        for name, value in (line.rsplit(" ", 1) for line in text.splitlines() if line[:1] != "#")
    }


def _outcome(text: str, outcome: str) -> float:
    return _samples(text)[f'sprout_requests_outcome_total{{outcome="{outcome}"}}']


def test_the_outcome_counter_is_rendered_with_help_and_type():
    metrics = SproutMetrics()
    text = metrics.render()
    assert "# HELP sprout_requests_outcome_total Requests by how they ended" in text
    assert "# TYPE sprout_requests_outcome_total counter" in text
    for name in ("completed", "client_closed", "upstream_failed", "guard_cut"):
        assert _outcome(text, name) == 0  # every series exists before the first request
    metrics.outcome("guard_cut")
    assert _outcome(metrics.render(), "guard_cut") == 1


def test_observe_counts_the_receipts_outcome_defaulting_to_completed():
    metrics = SproutMetrics()
    fields = {
        "directive": "L0",
        "decision": "lp-mix",
        "total_g": 0.1,
        "saving_g": None,
        "energy_kwh": 1e-5,
        "energy_source": "estimated",
        "input_tokens": 3,
        "output_tokens": 5,
    }
    metrics.observe(types.SimpleNamespace(**fields))  # a receipt without an outcome field
    metrics.observe(types.SimpleNamespace(**fields, outcome="upstream_failed"))
    text = metrics.render()
    assert _outcome(text, "completed") == 1 and _outcome(text, "upstream_failed") == 1


def test_an_answered_request_counts_as_completed(controller):
    with TestClient(create_app(controller, settings=load_settings(env={}))) as client:
        assert client.post("/v1/chat/completions", content=ASK).status_code == 200
        assert _outcome(client.get("/metrics").text, "completed") == 1


def _assert_client_closed_quietly(text: str, caplog) -> None:
    assert _outcome(text, "client_closed") == 1
    assert _outcome(text, "completed") == 0
    assert not any(k.startswith("sprout_request_errors_total{") for k in _samples(text))
    assert "request failed unexpectedly" not in caplog.text and "Traceback" not in caplog.text
    closed = [r for r in caplog.records if "while sending its request" in r.getMessage()]
    assert closed and all(r.levelno == logging.INFO and not r.exc_info for r in closed)


def test_a_client_gone_mid_upload_is_client_closed_not_a_500_asgi(controller, caplog):
    caplog.set_level(logging.INFO, logger="sprout.server")
    app = create_app(controller, settings=load_settings(env={}))
    messages = iter(
        [
            {"type": "http.request", "body": ASK[:20], "more_body": True},
            {"type": "http.disconnect"},
        ]
    )
    sent: list[dict] = []

    async def receive() -> dict:
        return next(messages)

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"500")],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8080),
    }
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 499  # never seen by the client; not a 500
    _assert_client_closed_quietly(app.state.metrics.render(), caplog)


def test_a_client_gone_mid_upload_is_client_closed_not_a_500_uvicorn(controller, caplog):
    caplog.set_level(logging.INFO, logger="sprout.server")
    with running(create_app(controller, settings=load_settings(env={}))) as base:
        port = int(base.rsplit(":", 1)[1].split("/", 1)[0])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n" + ASK[:20]
            )
        url = f"http://127.0.0.1:{port}/metrics"

        def counted() -> bool:
            return _outcome(requests.get(url, timeout=5).text, "client_closed") == 1

        assert wait_until(counted, timeout_s=10)
        text = requests.get(url, timeout=5).text
    _assert_client_closed_quietly(text, caplog)
