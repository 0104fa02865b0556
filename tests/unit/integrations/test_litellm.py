"""The LiteLLM adapter's hooks, driven one by one the way LiteLLM's proxy drives them.

A stand-in ``litellm.integrations.custom_logger.CustomLogger`` with the documented
interface is put in ``sys.modules``, so that these tests pin the adapter's own logic, with
or without LiteLLM; the adapter must subclass it (LiteLLM finds callbacks by
``isinstance``). Each test then plays the proxy's order of calls: ``async_pre_call_hook``,
the model call (to a fake OpenAI-compatible server on 127.0.0.1), then the success or
failure hooks and log events. The real LiteLLM (SDK and proxy) drives the adapter in
``tests/integration/test_litellm_real.py``.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
import types
from datetime import datetime, timedelta

import pytest
import requests

import sprout.integrations
from sprout.directives import Directive, DirectiveSet
from sprout.errors import EngineError
from sprout.factory import build_controller
from tests.support.fake_openai_server import FakeOpenAIServer
from tests.support.fakes import FixedPolicy
from tests.support.settings import make_settings

ASK = [{"role": "user", "content": "Capital of France?"}]
REPLY = "Paris is the capital of France."
L2 = Directive("L2", system_prompt="Always answer very briefly", max_new_tokens=16)


class StandInCustomLogger:
    """LiteLLM's ``CustomLogger`` as documented: a constructor and no-op hooks."""

    def __init__(self, turn_off_message_logging: bool = False, message_logging: bool = True):
        self.turn_off_message_logging = turn_off_message_logging
        self.message_logging = message_logging


@pytest.fixture
def adapter(monkeypatch):
    """``sprout.integrations.litellm`` imported against the stand-in LiteLLM."""
    package = types.ModuleType("litellm")
    integrations = types.ModuleType("litellm.integrations")
    custom_logger = types.ModuleType("litellm.integrations.custom_logger")
    custom_logger.CustomLogger = StandInCustomLogger
    monkeypatch.setitem(sys.modules, "litellm", package)
    monkeypatch.setitem(sys.modules, "litellm.integrations", integrations)
    monkeypatch.setitem(sys.modules, "litellm.integrations.custom_logger", custom_logger)
    # Set aside the adapter imported against the real LiteLLM (monkeypatch puts it back).
    monkeypatch.delitem(sys.modules, "sprout.integrations.litellm", raising=False)
    monkeypatch.delattr(sprout.integrations, "litellm", raising=False)
    module = importlib.import_module("sprout.integrations.litellm")
    yield module
    sys.modules.pop("sprout.integrations.litellm", None)
    if getattr(sprout.integrations, "litellm", None) is module:
        delattr(sprout.integrations, "litellm")


@pytest.fixture
def upstream():
    with FakeOpenAIServer(REPLY) as server:
        yield server


@pytest.fixture
def controller(tmp_path, adapter):
    settings = make_settings(tmp_path, meter="estimate")
    c = build_controller(settings, engine=adapter.LiteLLMEngine(), poll=False)
    c.directives = DirectiveSet((Directive("L0"), L2))
    c.policy = FixedPolicy(L2)
    yield c
    c.close()


class Key:
    """LiteLLM's ``UserAPIKeyAuth``, reduced to what the adapter reads."""

    team_id = "team-blue"


def _count(controller) -> int:
    controller.ledger.flush()
    return controller.ledger.count_receipts()


async def _proxy_call(hook, data, upstream, *, stream=False, fail=False):
    """One request through the hooks in LiteLLM proxy order; returns (data, response)."""
    data = await hook.async_pre_call_hook(Key(), None, data, "acompletion")
    started = datetime.now()
    if fail:
        upstream.inject(500)
    body = {k: data[k] for k in ("model", "messages", "max_tokens", "stop") if k in data}
    r = requests.post(f"{upstream.url}/chat/completions", json=body, timeout=10)
    ended = started + timedelta(seconds=0.25)
    log_kwargs = {"model": data["model"], "litellm_params": {"metadata": data["metadata"]}}
    if r.status_code != 200:
        error = RuntimeError(r.text)
        await hook.async_post_call_failure_hook(data, error, Key())
        await hook.async_log_failure_event(log_kwargs, None, started, ended)
        return data, None
    response = r.json()
    if stream:  # streams: only the log event, with the assembled response
        await hook.async_log_success_event(
            {**log_kwargs, "complete_streaming_response": response}, None, started, ended
        )
    else:
        response = await hook.async_post_call_success_hook(data, Key(), response)
        await hook.async_log_success_event(log_kwargs, response, started, ended)
    return data, response


def test_the_adapter_is_a_litellm_custom_logger(adapter, controller):
    hook = adapter.SproutLiteLLM(controller)
    assert isinstance(hook, StandInCustomLogger)
    assert hook.message_logging is True  # LiteLLM's own constructor ran


def test_the_directive_shapes_the_request_and_the_receipt_is_written(adapter, controller, upstream):
    hook = adapter.SproutLiteLLM(controller)
    data = {
        "model": "gpt-x",
        "messages": [{"role": "system", "content": "Be nice.", "name": "sys"}, *ASK],
        "max_tokens": 200,
        "proxy_server_request": {"headers": {"X-Sprout-Tenant": "acme"}},
    }
    data, response = asyncio.run(_proxy_call(hook, data, upstream))
    sent = upstream.requests[-1]
    assert sent["messages"][0] == {
        "role": "system",
        "content": "Be nice.\n\nAlways answer very briefly",
        "name": "sys",
    }
    assert sent["max_tokens"] == 16
    request_id = data["metadata"]["sprout_request_id"]
    assert data["metadata"]["sprout_directive"] == "L2"
    assert _count(controller) == 1  # the success hook and the log event: one receipt
    receipt = controller.ledger.receipts(limit=1)[0]
    assert receipt.request_id == request_id and receipt.directive == "L2"
    assert receipt.engine == "litellm" and receipt.tenant == "acme"
    assert receipt.output_tokens == response["usage"]["completion_tokens"]
    headers = asyncio.run(hook.async_post_call_response_headers_hook(data, Key(), response))
    assert headers["x-sprout-directive"] == "L2"
    assert float(headers["x-sprout-gco2e"]) > 0


def test_streams_are_recorded_from_the_assembled_response(adapter, controller, upstream):
    hook = adapter.SproutLiteLLM(controller)
    asyncio.run(_proxy_call(hook, {"model": "gpt-x", "messages": ASK}, upstream, stream=True))
    assert _count(controller) == 1
    receipt = controller.ledger.receipts(limit=1)[0]
    assert receipt.latency_s == pytest.approx(0.25)
    assert receipt.tenant == "team-blue"  # no header: the key's team


def test_failures_write_no_receipt_and_close_the_window(adapter, controller, upstream):
    hook = adapter.SproutLiteLLM(controller)
    _, response = asyncio.run(
        _proxy_call(hook, {"model": "gpt-x", "messages": ASK}, upstream, fail=True)
    )
    assert response is None
    assert _count(controller) == 0 and hook._pending == {}


def test_opt_out_forces_the_baseline(adapter, controller, upstream):
    hook = adapter.SproutLiteLLM(controller)
    data = {"model": "gpt-x", "messages": ASK, "metadata": {"sprout_opt_out": True}}
    asyncio.run(_proxy_call(hook, data, upstream))
    assert upstream.requests[-1]["messages"] == ASK
    assert _count(controller) == 1
    receipt = controller.ledger.receipts(limit=1)[0]
    assert (receipt.directive, receipt.decision) == ("L0", "opt-out")


def test_variants_map_to_litellm_models_or_fail(adapter, controller, upstream):
    controller.policy = FixedPolicy(Directive("L3", variant="small"))
    hook = adapter.SproutLiteLLM(controller, variant_models={"small": "gpt-x-mini"})
    asyncio.run(_proxy_call(hook, {"model": "gpt-x", "messages": ASK}, upstream))
    assert upstream.requests[-1]["model"] == "gpt-x-mini"
    bare = adapter.SproutLiteLLM(controller)
    with pytest.raises(EngineError, match="no LiteLLM model"):
        asyncio.run(bare.async_pre_call_hook(Key(), None, {"messages": ASK}, "acompletion"))


def test_what_sprout_cannot_read_passes_unchanged(adapter, controller):
    hook = adapter.SproutLiteLLM(controller)
    images = {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}
    assert asyncio.run(hook.async_pre_call_hook(Key(), None, dict(images), "acompletion")) == {
        **images,
        "metadata": {},
    }
    embedding = {"input": ["x"]}
    assert asyncio.run(hook.async_pre_call_hook(Key(), None, embedding, "aembedding")) is embedding
    # An outcome Sprout never saw the start of is ignored.
    hook.log_success_event({"metadata": {}}, {"choices": []}, None, None)
    assert _count(controller) == 0


def test_forgotten_requests_are_bounded(adapter, controller):
    hook = adapter.SproutLiteLLM(controller, max_pending=3)
    for _ in range(5):
        hook.apply({"messages": ASK})
    assert len(hook._pending) == 3
