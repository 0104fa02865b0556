"""The OpenAI-compatible engine against a fake server on 127.0.0.1."""

from __future__ import annotations

import logging
import time

import pytest

from sprout.chat import ChatRequest, Message
from sprout.directives import Directive
from sprout.engines.guards import BabbleGuard
from sprout.engines.openai_compat import OpenAIEngine
from sprout.errors import ConfigError, EngineError
from tests.support.fake_openai_server import FakeOpenAIServer, tokens_of, wait_until

REPLY = "Paris is the capital of France. It is known for the Eiffel Tower and fine food."
APP = (Message("system", "You are Acme's travel bot."), Message("user", "Capital of France?"))
KEY = "sk-test-0123456789abcdef"


@pytest.fixture
def server():
    with FakeOpenAIServer(REPLY) as s:
        yield s


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def _engine(server, **kw):
    kw.setdefault("sleep", Sleeps())
    kw.setdefault("timeout_s", 5.0)
    return OpenAIEngine(server.url, "llama-3-8b", **kw)


def _shaped(directive: Directive, max_new_tokens: int | None = None) -> ChatRequest:
    return directive.apply(ChatRequest(APP, max_new_tokens=max_new_tokens))


L1 = Directive("L1", system_prompt="Always answer briefly.", max_new_tokens=8, stop=("###",))


@pytest.mark.parametrize("stream", [False, True])
def test_directive_reaches_the_server_and_usage_is_read(server, stream):
    engine = _engine(server, stream=stream)
    gen = engine.generate(_shaped(L1, max_new_tokens=100))
    body = server.requests[-1]
    # The app's system prompt is kept, the directive's appended to it.
    assert body["messages"][0] == {
        "role": "system",
        "content": "You are Acme's travel bot.\n\nAlways answer briefly.",
    }
    assert body["messages"][1] == {"role": "user", "content": "Capital of France?"}
    assert body["max_tokens"] == 8 and body["stop"] == ["###"]
    assert body["model"] == "llama-3-8b" and body["stream"] is stream
    assert gen.text == "".join(tokens_of(REPLY)[:8])
    assert gen.output_tokens == 8 and gen.input_tokens == 8 + 3  # the fake counts words
    assert gen.finish_reason == "length" and gen.model == "llama-3-8b"
    assert gen.latency_s > 0
    if stream:
        assert body["stream_options"] == {"include_usage": True}
        assert 0 < gen.first_token_s <= gen.latency_s
    else:
        assert gen.first_token_s is None
    engine.close()


def test_variant_maps_to_a_model_name_and_unknown_variants_fail(server):
    engine = _engine(server, variant_models={"small": "llama-3.2-1b"})
    gen = engine.generate(_shaped(Directive("L2", variant="small")))
    assert server.requests[-1]["model"] == "llama-3.2-1b" and gen.model == "llama-3.2-1b"
    with pytest.raises(EngineError, match=r"no model configured for variant 'int8'.*small"):
        engine.generate(_shaped(Directive("L2", variant="int8")))
    assert len(server.requests) == 1  # nothing was sent for the unknown variant


@pytest.mark.parametrize("stream", [False, True])
def test_without_usage_tokens_are_approximated_or_counted(stream):
    with FakeOpenAIServer(REPLY, usage=False) as server:
        gen = _engine(server, stream=stream).generate(_shaped(Directive("L0")))
    assert gen.text == REPLY
    assert gen.input_tokens > 0
    if stream:
        assert gen.output_tokens == len(tokens_of(REPLY))  # one chunk per token
    else:
        assert gen.output_tokens == round(len(REPLY) / 4)


@pytest.mark.parametrize("stream", [False, True])
def test_5xx_and_dropped_connections_are_retried_with_backoff(server, stream):
    sleeps = Sleeps()
    engine = _engine(server, stream=stream, sleep=sleeps, backoff_s=0.1, max_retries=3)
    server.inject(503, "drop", "drop-mid-stream" if stream else 502)
    gen = engine.generate(_shaped(Directive("L0")))
    assert gen.text == REPLY
    assert len(server.requests) == 4
    assert sleeps == pytest.approx([0.1, 0.2, 0.4])


def test_retries_are_bounded_and_the_error_is_clear(server):
    sleeps = Sleeps()
    engine = _engine(server, sleep=sleeps, backoff_s=1.0, max_backoff_s=1.5, max_retries=2)
    server.inject(500, 503, 503, 503)
    with pytest.raises(EngineError) as info:
        engine.generate(_shaped(Directive("L0")))
    message = str(info.value)
    assert server.url in message and "HTTP 503" in message and "injected fault 503" in message
    assert "gave up after 3 attempts" in message
    assert len(server.requests) == 3 and sleeps == [1.0, 1.5]  # capped back-off


def test_retry_after_is_honoured_up_to_the_cap(server):
    sleeps = Sleeps()
    engine = _engine(server, sleep=sleeps, backoff_s=0.1, max_backoff_s=2.0)

    def limited(*args, **kwargs):
        response = real_post(*args, **kwargs)
        if response.status_code == 429:
            response.headers["Retry-After"] = "30"
        return response

    real_post = engine.session.post
    engine.session.post = limited
    server.inject(429)
    assert engine.generate(_shaped(Directive("L0"))).text == REPLY
    assert sleeps == [2.0]


def test_4xx_is_not_retried(server):
    engine = OpenAIEngine(server.url, "llama", sleep=Sleeps())
    server.inject(400)
    with pytest.raises(EngineError, match="HTTP 400 from /chat/completions: injected fault 400"):
        engine.generate(_shaped(Directive("L0")))
    assert len(server.requests) == 1


def test_unknown_model_names_the_model():
    with (
        FakeOpenAIServer(REPLY, models=("other",)) as server,
        pytest.raises(EngineError, match=r"HTTP 404.*`llama-3-8b` does not exist"),
    ):
        _engine(server).generate(_shaped(Directive("L0")))


def test_slow_server_times_out_without_retrying(server):
    engine = _engine(server, timeout_s=0.3)
    server.inject(("slow", 5.0))
    t0 = time.perf_counter()
    with pytest.raises(EngineError, match=r"no response within 0\.3 s \(read timeout"):
        engine.generate(_shaped(Directive("L0")))
    assert time.perf_counter() - t0 < 3
    assert len(server.requests) == 1  # the server may still be working: not asked twice


def test_stream_deadline_bounds_a_slow_stream():
    with FakeOpenAIServer(REPLY * 5, chunk_delay_s=0.05) as server:
        engine = _engine(server, stream=True, deadline_s=0.3)
        with pytest.raises(EngineError, match=r"deadline of 0\.3 s"):
            engine.generate(_shaped(Directive("L0")))


def test_refused_connection_fails_after_retries():
    with FakeOpenAIServer() as server:
        url = server.url
    engine = OpenAIEngine(url, "m", sleep=Sleeps(), max_retries=1, connect_timeout_s=1.0)
    with pytest.raises(EngineError, match=r"connection failed.*gave up after 2 attempts"):
        engine.generate(_shaped(Directive("L0")))


def test_garbage_response_is_a_clear_error(server):
    server.inject("garbage")
    with pytest.raises(EngineError, match="response is not JSON"):
        _engine(server).generate(_shaped(Directive("L0")))


def test_api_key_is_sent_and_never_shown(caplog):
    caplog.set_level(logging.WARNING, logger="sprout")
    with FakeOpenAIServer(REPLY, api_key=KEY) as server:
        good = _engine(server, api_key=KEY)
        assert good.generate(_shaped(Directive("L0"))).text == REPLY
        assert server.headers[-1]["Authorization"] == f"Bearer {KEY}"
        wrong = "sk-wrong-key-fedcba9876543210"
        bad = _engine(server, api_key=wrong)
        server.inject(503)  # a retry is logged: the log must not carry the key either
        with pytest.raises(EngineError) as info:
            bad.generate(_shaped(Directive("L0")))
    message = str(info.value)
    assert "HTTP 401" in message and "check the API key" in message
    assert wrong not in message and "***" in message  # the server echoed it: redacted
    assert KEY not in repr(good) and "api_key=***" in repr(good)
    assert all(wrong not in r.getMessage() and KEY not in r.getMessage() for r in caplog.records)


def test_streamed_babble_is_stopped_on_the_client_and_the_stream_aborted():
    code = "```python\nprint(1)\n```\n"
    chatter = "Hope this helps! " + " ".join(["Let me know if you need anything else."] * 10)
    with FakeOpenAIServer(code + chatter, chunk_delay_s=0.01) as server:
        engine = _engine(server, stream=True, guard=BabbleGuard(trailing_chars=20))
        gen = engine.generate(_shaped(Directive("L0")))
        assert gen.text == code.rstrip("\n")
        assert gen.finish_reason == "babble-code-block"
        total = len(tokens_of(code + chatter))
        assert gen.output_tokens < total / 3
        # The server notices the closed stream and stops generating.
        assert wait_until(lambda: server.aborted_streams == 1)
        assert server.chunks_sent < total / 2
        # A request can turn the engine's guard off.
        request = ChatRequest(APP, extra={"babble_guard": False})
        assert engine.generate(request).text == code + chatter


def test_request_can_ask_for_the_guard_without_streaming(server):
    server.reply = "```\nx = 1\n```\n" + "Blah blah blah, more chatter after the code. " * 3
    gen = _engine(server).generate(ChatRequest(APP, extra={"babble_guard": True}))
    assert gen.text == "```\nx = 1\n```" and gen.finish_reason == "babble-code-block"


@pytest.mark.parametrize("stream", [False, True])
def test_stop_sequences_apply_on_the_client_too(stream):
    with FakeOpenAIServer("First part. END second part.", honour_stop=False) as server:
        gen = _engine(server, stream=stream).generate(ChatRequest(APP, stop=("END",)))
    assert server.requests[-1]["stop"] == ["END"]
    assert gen.text == "First part. " and gen.finish_reason == "stop-sequence"


@pytest.mark.parametrize(
    "kwargs, problem",
    [
        ({"base_url": "ftp://x"}, "base URL must be an http"),
        ({"base_url": "http://u:hunter2@"}, "base URL must be an http"),
        ({"model": " "}, "a model name is required"),
        ({"timeout_s": 0}, "timeout_s must be > 0"),
        ({"max_retries": -1}, "max_retries must be >= 0"),
        ({"max_tokens": 0}, "max_tokens must be >= 1"),
    ],
)
def test_bad_configuration_is_rejected(kwargs, problem):
    args = {"base_url": "http://127.0.0.1:9/v1", "model": "m", **kwargs}
    with pytest.raises(ConfigError, match=problem) as info:
        OpenAIEngine(args.pop("base_url"), args.pop("model"), **args)
    assert "hunter2" not in str(info.value)


def test_loopback_servers_run_locally():
    assert OpenAIEngine("http://127.0.0.1:8000/v1", "m").runs_locally
    assert OpenAIEngine("http://localhost:8000/v1", "m").runs_locally
    assert not OpenAIEngine("https://api.example.com/v1", "m").runs_locally


def test_controller_drives_the_engine_from_settings(server, sqlite_url):
    from sprout.config import load_settings
    from sprout.factory import build_controller

    env = {"SPROUT_ENGINE_API_KEY": KEY}
    settings = load_settings(
        env=env,
        db_url=sqlite_url,
        carbon_provider="static",
        engine="openai",
        engine_base_url=server.url,
        engine_model="llama-3-8b",
        engine_variants="int8 = llama-3-8b-awq, small=llama-3.2-1b",
        engine_stream=True,
        meter="estimate",
    )
    assert KEY not in repr(settings)
    with build_controller(settings) as controller:
        engine = controller.engine
        assert isinstance(engine, OpenAIEngine) and engine.variant_models == {
            "int8": "llama-3-8b-awq",
            "small": "llama-3.2-1b",
        }
        result = controller.chat([{"role": "user", "content": "Capital of France?"}], opt_out=True)
    r = result.receipt
    assert server.headers[-1]["Authorization"] == f"Bearer {KEY}"
    assert (r.engine, r.model, r.directive) == ("openai", "llama-3-8b", "L0")
    assert (r.input_tokens, r.output_tokens) == (3, len(tokens_of(REPLY)))  # server's usage
    assert r.energy_source == "estimated" and r.energy_kwh > 0
    assert result.energy.prefill_kwh + result.energy.decode_kwh == pytest.approx(r.energy_kwh)


@pytest.mark.parametrize(
    "settings, problem",
    [
        ({"engine": "openai", "engine_model": "m"}, "engine_base_url: required"),
        ({"engine": "openai", "engine_base_url": "http://127.0.0.1:1/v1"}, "engine_model"),
        (
            {"engine": "openai", "engine_model": "m", "engine_base_url": "http://h/v1",
             "engine_variants": "int8"},
            "expected variant=model pairs",
        ),
    ],
)  # fmt: skip
def test_engine_settings_are_checked(settings, problem):
    from sprout.config import load_settings
    from sprout.factory import build_engine

    with pytest.raises(ConfigError, match=problem):
        build_engine(load_settings(env={}, **settings))
    with pytest.raises(ConfigError, match=r"engine=.*must be 'replay', 'openai' or 'hf'"):
        load_settings(env={}, engine="vllm")
