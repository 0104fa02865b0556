"""In-process middleware: the ``carbon_aware`` wrapper and ``Controller.chat_stream``."""

from __future__ import annotations

import asyncio

import pytest

from sprout.directives import Directive, DirectiveSet
from sprout.errors import EngineError, RequestError
from sprout.factory import build_controller
from sprout.middleware import FunctionEngine, carbon_aware, read_output
from tests.support.fake_openai_server import FakeOpenAIServer, tokens_of, wait_until
from tests.support.fakes import FixedPolicy

ASK = [{"role": "user", "content": "Capital of France?"}]
L1 = Directive(
    "L1", system_prompt="Always answer briefly", max_new_tokens=20, stop=("###",), variant="small"
)


def _fixed(settings, directive):
    """A controller factory whose policy always picks ``directive``."""

    def factory(engine):
        controller = build_controller(settings, engine=engine, poll=False)
        controller.directives = DirectiveSet((Directive("L0"), directive))
        controller.policy = FixedPolicy(directive)
        return controller

    return factory


def _count(fn) -> int:
    fn.controller.ledger.flush()
    return fn.controller.ledger.count_receipts()


# -- carbon_aware ----------------------------------------------------------------------------


def test_the_wrapped_function_is_a_drop_in_and_writes_receipts(settings):
    receipts = []

    @carbon_aware(settings=settings, on_receipt=receipts.append)
    def generate(messages, **kw):
        return "Paris."

    assert generate.__name__ == "generate"
    assert generate._controller is None  # nothing built until first use
    with generate:
        assert generate(ASK) == "Paris."
        result = generate.chat(ASK, tenant="acme")
        assert result.text == "Paris." and result.receipt.tenant == "acme"
        assert result.receipt.engine == "function" and result.receipt.model == "generate"
        assert len(receipts) == 2 and receipts[1] == result.receipt
        assert _count(generate) == 2


def test_the_directive_shapes_the_call(settings):
    calls = []

    def generate(messages, model="app-model", max_tokens=None, stop=None, temperature=None):
        calls.append((messages, model, max_tokens, stop, temperature))
        return "Paris."

    wrapped = carbon_aware(
        generate,
        controller_factory=_fixed(settings, L1),
        variant_models={"small": "app-model-mini"},
    )
    with wrapped:
        app_messages = [{"role": "system", "content": "You are Acme's bot."}, *ASK]
        wrapped(app_messages, max_tokens=100, stop="END", temperature=0.2)
        messages, model, cap, stop, temperature = calls[0]
        assert messages[0] == {
            "role": "system",
            "content": "You are Acme's bot.\n\nAlways answer briefly",
        }
        assert messages[1:] == ASK
        assert (model, cap, stop, temperature) == ("app-model-mini", 20, ["END", "###"], 0.2)
        receipt = wrapped.chat(ASK).receipt
        assert receipt.directive == "L1" and receipt.model == "app-model-mini"
        assert receipt.variant == "small"


def test_only_arguments_the_function_accepts_are_passed(settings):
    calls = []

    def generate(messages):
        calls.append(messages)
        return "ok"

    with carbon_aware(
        generate, controller_factory=_fixed(settings, L1), variant_models={"small": "m"}
    ) as wrapped:
        assert wrapped(ASK) == "ok"
    assert calls[0][-1] == ASK[-1]


def test_tenant_and_opt_out(settings):
    seen = {}

    def generate(messages, tenant=None, **kw):
        seen.update(kw, tenant=tenant)
        return "ok"

    with carbon_aware(generate, controller_factory=_fixed(settings, L1)) as wrapped:
        result = wrapped.chat(ASK, tenant="acme", opt_out=True, top_p=0.9)
    assert result.receipt.decision == "opt-out" and result.receipt.directive == "L0"
    assert result.receipt.tenant == "acme"
    assert seen == {"tenant": "acme", "top_p": 0.9}  # its own parameter, and the app's extras


def test_openai_shaped_answers_give_tokens_and_model(settings):
    completion = {
        "model": "served-model",
        "choices": [
            {"message": {"role": "assistant", "content": "Paris."}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 11, "completion_tokens": 2},
    }
    with carbon_aware(lambda messages, **kw: completion, settings=settings) as wrapped:
        assert wrapped(ASK) is completion
        result = wrapped.chat(ASK)
    assert result.text == "Paris."
    receipt = result.receipt
    assert (receipt.input_tokens, receipt.output_tokens, receipt.model) == (11, 2, "served-model")
    assert result.generation.finish_reason == "stop"


def test_objects_shaped_like_the_openai_client_response_are_read():
    class Obj:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    response = Obj(
        model="m",
        choices=[Obj(message=Obj(content="hi"), finish_reason="length")],
        usage=Obj(prompt_tokens=3, completion_tokens=1),
    )
    assert read_output(response) == ("hi", 3, 1, "m")
    assert read_output("plain") == ("plain", None, None, None)
    with pytest.raises(EngineError, match="expected a string or an OpenAI-style"):
        read_output(42)
    with pytest.raises(EngineError):
        read_output({"choices": []})


def test_async_functions_are_awaited(settings):
    @carbon_aware(settings=settings)
    async def generate(messages, **kw):
        await asyncio.sleep(0.01)
        return "async Paris."

    async def app():
        return await asyncio.gather(*(generate(ASK, tenant=f"t{i}") for i in range(3)))

    with generate:
        assert asyncio.run(app()) == ["async Paris."] * 3
        assert _count(generate) == 3


def test_the_apps_exceptions_propagate_and_nothing_is_recorded(settings):
    class Boom(Exception):
        pass

    def generate(messages, **kw):
        raise Boom("model down")

    with carbon_aware(generate, settings=settings) as wrapped:
        with pytest.raises(Boom):
            wrapped(ASK)
        with pytest.raises(EngineError, match="expected a string"):
            carbon_aware(lambda m: 3, settings=settings)(ASK)
        with pytest.raises(RequestError, match="no message with role 'user'"):
            wrapped([{"role": "system", "content": "x"}])
        assert _count(wrapped) == 0


def test_a_variant_without_a_model_fails_clearly(settings):
    wrapped = carbon_aware(lambda m, **kw: "x", controller_factory=_fixed(settings, L1))
    with wrapped, pytest.raises(EngineError, match="no model configured for variant 'small'"):
        wrapped(ASK)


def test_function_engine_in_a_hand_built_controller(settings):
    engine = FunctionEngine(lambda messages, **kw: "Paris.", model="my-model")
    with build_controller(settings, engine=engine, poll=False) as controller:
        result = controller.chat(ASK)
    assert result.text == "Paris." and result.receipt.model == "my-model"


# -- Controller.chat_stream --------------------------------------------------------------------

REPLY = "Paris is the capital of France. It is known for the Eiffel Tower and fine food."


def _openai(settings, server, **kw):
    return build_controller(
        settings.replace(
            engine="openai", engine_base_url=server.url, engine_model="m", engine_retries=0, **kw
        ),
        poll=False,
    )


def test_chat_stream_yields_deltas_then_the_receipt(settings):
    with FakeOpenAIServer(REPLY) as server, _openai(settings, server) as controller:
        with controller.chat_stream(ASK, tenant="acme") as stream:
            deltas = list(stream)
        assert len(deltas) == len(tokens_of(REPLY))  # token by token
        assert "".join(deltas) == REPLY == stream.result.text
        assert stream.result.receipt.tenant == "acme"
        assert stream.directive == stream.result.receipt.directive
        assert server.requests[-1]["stream"] is True
        controller.ledger.flush()
        assert controller.ledger.count_receipts() == 1
        assert list(stream) == []  # exhausted


def test_closing_a_stream_stops_the_generation_and_records_what_it_spent(settings):
    with (
        FakeOpenAIServer(REPLY * 20, chunk_delay_s=0.01) as server,
        _openai(settings, server) as controller,
    ):
        stream = controller.chat_stream(ASK)
        first = next(stream)
        stream.close()
        assert first
        assert wait_until(lambda: server.aborted_streams == 1, timeout_s=5)
        assert server.chunks_sent < len(tokens_of(REPLY * 20))
        assert wait_until(lambda: controller.ledger.flush() and controller.ledger.count_receipts())
        (receipt,) = controller.ledger.receipts()
        assert receipt.outcome == "client_closed" and receipt.energy_source == "estimated"
        # Up to where it stopped: at least the delta read, far less than the whole answer.
        assert 1 <= receipt.output_tokens < len(tokens_of(REPLY * 20))
        assert receipt.request_id == stream.request_id


def test_stream_holds_back_a_stop_string_the_server_ignores(settings):
    with (
        FakeOpenAIServer("one two STOP three four", honour_stop=False) as server,
        _openai(settings, server) as controller,
    ):
        deltas = list(controller.chat_stream(ASK, stop=["STOP"]))
    assert "".join(deltas) == "one two "


def test_stream_errors_are_raised_and_bad_requests_fail_at_once(settings):
    with FakeOpenAIServer(REPLY) as server, _openai(settings, server) as controller:
        with pytest.raises(RequestError):
            controller.chat_stream([{"role": "system", "content": "x"}])
        server.inject(503)
        with pytest.raises(EngineError, match="HTTP 503"):
            list(controller.chat_stream(ASK))


def test_engines_that_do_not_stream_deliver_the_whole_answer(settings):
    with build_controller(settings, poll=False) as controller:  # the replay engine
        stream = controller.chat_stream(
            [{"role": "user", "content": "What nation invented the kilt?"}]
        )
        deltas = list(stream)
    assert len(deltas) == 1 and deltas[0] == stream.result.text
