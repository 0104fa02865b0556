"""The transformers engine on tiny Llama-style models built at test time (no downloads)."""

from __future__ import annotations

import threading

import pytest

from tests.support.settings import make_settings

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from sprout.chat import ChatRequest, Message  # noqa: E402
from sprout.directives import Directive  # noqa: E402
from sprout.engines.guards import BabbleGuard  # noqa: E402
from sprout.engines.hf import HFEngine, ModelVariant  # noqa: E402
from sprout.errors import ConfigError, EngineError  # noqa: E402
from tests.support.tiny_models import BABBLE_ANSWER, CODE_PROMPT, build_tiny_models  # noqa: E402

ASK_CODE = (Message("user", CODE_PROMPT),)
MAX_NEW = 60  # longer than the code block, shorter than the memorised babble


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    # One thread: the machine's cores are shared, and tiny matmuls gain nothing from more.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield build_tiny_models(tmp_path_factory.mktemp("models"))
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def engine(tiny):
    e = HFEngine(tiny.full, small_model_dir=tiny.small, max_new_tokens=MAX_NEW)
    yield e
    e.close()


def _request(messages=ASK_CODE, **kw) -> ChatRequest:
    return ChatRequest(messages, **kw)


def test_chat_template_and_greedy_decoding(engine, tiny):
    gen = engine.generate(_request())
    loaded = engine.load(None)
    expected = loaded.tokenizer.apply_chat_template(
        [m.as_dict() for m in ASK_CODE], add_generation_prompt=True
    )["input_ids"]
    assert gen.input_tokens == len(expected)
    # The tiny model was trained to answer this prompt with BABBLE_ANSWER.
    assert gen.text.startswith(BABBLE_ANSWER[:100])
    assert gen.output_tokens == MAX_NEW and gen.finish_reason == "length"
    assert gen.model == "tiny-llama"
    assert 0 < gen.first_token_s < gen.latency_s
    assert engine.generate(_request()).text == gen.text  # greedy: deterministic


def test_directive_system_prompt_and_token_cap_reach_the_model(engine):
    directive = Directive("L1", system_prompt="Always answer briefly.", max_new_tokens=5)
    app = (Message("system", "You are a helpful assistant."), Message("user", "Hi"))
    request = directive.apply(ChatRequest(app, max_new_tokens=100))
    gen = engine.generate(request)
    tokenizer = engine.load(None).tokenizer
    rendered = tokenizer.apply_chat_template(
        [m.as_dict() for m in request.messages], tokenize=False, add_generation_prompt=True
    )
    assert "You are a helpful assistant.\n\nAlways answer briefly." in rendered
    assert gen.input_tokens == len(tokenizer(rendered)["input_ids"])
    assert gen.output_tokens == 5 and gen.finish_reason == "length"


def test_sampling_is_seeded_and_uses_the_temperature(engine):
    hot = {"temperature": 5.0, "max_new_tokens": 20}
    a = engine.generate(_request(extra={"seed": 1}, **hot))
    b = engine.generate(_request(extra={"seed": 1}, **hot))
    c = engine.generate(_request(extra={"seed": 2}, **hot))
    assert a.text == b.text
    assert c.text != a.text  # at temperature 5 two seeds do not agree on 20 tokens
    greedy = engine.generate(_request(max_new_tokens=20))
    assert a.text != greedy.text


def test_variants_load_lazily_and_stay_cached(tiny):
    engine = HFEngine(tiny.full, small_model_dir=tiny.small, max_new_tokens=8)
    assert engine.loaded_variants == ()
    engine.generate(_request(variant="small"))
    assert engine.loaded_variants == ("small",)
    first = engine.load("small")
    engine.generate(_request(variant="small"))
    assert engine.load("small") is first and engine.loaded_variants == ("small",)
    engine.close()
    assert engine.loaded_variants == ()


def test_int8_variant_quantizes_the_same_weights(engine):
    from torchao.quantization import Int8Tensor

    full = engine.load(None).model
    quant = engine.load("int8").model
    assert quant is not full
    w_full = full.model.layers[0].mlp.up_proj.weight.detach()
    w_int8 = quant.model.layers[0].mlp.up_proj.weight
    assert isinstance(w_int8, Int8Tensor) and not isinstance(w_full, Int8Tensor)
    assert w_int8.qdata.dtype == torch.int8
    # Built from the same weights: dequantized, they are the full-precision ones.
    deq = w_int8.dequantize()
    assert torch.allclose(deq, w_full, atol=float(w_full.abs().max()) / 100)
    gen = engine.generate(_request(variant="int8"))
    assert gen.model == "tiny-llama:int8" and gen.output_tokens == MAX_NEW
    assert gen.text[:24] == BABBLE_ANSWER[:24]  # quantization kept the learnt answer


def test_smaller_model_variant_is_a_separate_model(engine, tiny):
    gen = engine.generate(_request(variant="small", max_new_tokens=4))
    assert gen.model == "tiny-llama-small" and gen.output_tokens == 4
    small, full = engine.load("small").model, engine.load(None).model
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(small) < n(full) / 2


def test_babbling_guard_ends_generation_after_the_code_block(engine):
    unguarded = engine.generate(_request())
    guarded = engine.generate(_request(extra={"babble_guard": BabbleGuard(trailing_chars=10)}))
    assert guarded.text == "```python\nprint(1)\n```"
    assert guarded.finish_reason == "babble-code-block"
    # It stopped generating, not just trimmed: far fewer tokens, so far less energy.
    assert guarded.output_tokens < unguarded.output_tokens / 2
    assert guarded.latency_s < unguarded.latency_s


def test_engine_wide_guard_and_request_opt_out(tiny):
    engine = HFEngine(tiny.full, max_new_tokens=MAX_NEW, guard=BabbleGuard(trailing_chars=10))
    assert engine.generate(_request()).finish_reason == "babble-code-block"
    off = engine.generate(_request(extra={"babble_guard": False}))
    assert off.finish_reason == "length" and off.output_tokens == MAX_NEW


def test_stop_sequences_stop_generation(engine):
    gen = engine.generate(_request(stop=("Hope",)))
    assert gen.text == "```python\nprint(1)\n```\n"
    assert gen.finish_reason == "stop-sequence" and gen.output_tokens < MAX_NEW / 2


def test_bad_variants_and_directories_are_clear_errors(engine, tiny, tmp_path):
    with pytest.raises(EngineError, match=r"unknown variant '7b' \(configured variants: int8, "):
        engine.generate(_request(variant="7b"))
    with pytest.raises(EngineError, match=r"no model at .*config\.json not found"):
        HFEngine(tmp_path / "nothing").generate(_request())
    with pytest.raises(ConfigError, match="unknown quantization 'int4'"):
        ModelVariant(str(tiny.full), "int4")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_new_tokens must be >= 1"):
        HFEngine(tiny.full, max_new_tokens=0)


def test_model_without_chat_template_is_rejected(tiny, tmp_path):
    import shutil

    plain = tmp_path / "plain"
    shutil.copytree(tiny.small, plain)
    for name in ("chat_template.jinja",):
        (plain / name).unlink(missing_ok=True)
    config = plain / "tokenizer_config.json"
    import json

    data = json.loads(config.read_text())
    data.pop("chat_template", None)
    config.write_text(json.dumps(data))
    with pytest.raises(EngineError, match="has no chat template"):
        HFEngine(plain).generate(_request())


def test_concurrent_first_requests_load_a_variant_once(tiny, monkeypatch):
    engine = HFEngine(tiny.small, max_new_tokens=2)
    calls = []
    real = engine._load

    def counting(spec):
        calls.append(spec)
        return real(spec)

    monkeypatch.setattr(engine, "_load", counting)
    threads = [threading.Thread(target=engine.generate, args=(_request(),)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(calls) == 1 and engine.loaded_variants == (None,)


def test_controller_measures_with_nvml_splits_prefill_and_calibrates(tiny, tmp_path, sqlite_url):
    """The whole loop on a (patched) GPU: directives -> hf engine -> NVML -> receipts ->
    an estimate meter calibrated per variant on those measured receipts."""
    import time
    from unittest import mock

    from sprout.energy.select import FallbackMeter
    from sprout.factory import build_controller, build_meter
    from sprout.policy.base import Decision

    policy = tmp_path / "policy.toml"
    policy.write_text(
        '[[directive]]\nname = "L0"\n'
        '[[directive]]\nname = "L1"\nsystem_prompt = "Always answer briefly"\n'
        "max_new_tokens = 12\n"
        '[[directive]]\nname = "L2"\nsystem_prompt = "Always answer very briefly"\n'
        'max_new_tokens = 6\nvariant = "int8"\n'
    )
    settings = make_settings(
        sqlite_url,
        policy_file=str(policy),
        engine="hf",
        engine_model=str(tiny.full),
        engine_variants=f"small={tiny.small}",
        engine_max_new_tokens=24,
        meter="auto",
    )
    watts = 300.0
    with (
        mock.patch("pynvml.nvmlInit", autospec=True),
        mock.patch("pynvml.nvmlShutdown", autospec=True),
        mock.patch("pynvml.nvmlDeviceGetCount", autospec=True, return_value=1),
        mock.patch("pynvml.nvmlDeviceGetHandleByIndex", autospec=True, return_value="h0"),
        mock.patch("pynvml.nvmlDeviceGetName", autospec=True, return_value="NVIDIA H100"),
        mock.patch(
            "pynvml.nvmlDeviceGetTotalEnergyConsumption",
            autospec=True,
            side_effect=lambda h: watts * 1000 * time.monotonic(),  # mJ
        ),
        mock.patch.dict("os.environ", {"CUDA_VISIBLE_DEVICES": ""}),
    ):
        controller = build_controller(settings)
        assert isinstance(controller.meter, FallbackMeter)
        receipts = []
        for name in ["L0", "L2"] * 8 + ["L1"]:
            directive = controller.directives.get(name)
            controller.policy.decide = lambda p, c, r, d=directive: Decision(d, "test")
            result = controller.chat([{"role": "user", "content": CODE_PROMPT}])
            r, energy = result.receipt, result.energy
            receipts.append(r)
            assert r.engine == "hf" and r.energy_source == "measured-nvml"
            assert r.energy_device == "gpu:0 (NVIDIA H100)"
            # The counter ran at 300 W: energy is the window's length at that power.
            assert r.energy_kwh == pytest.approx(
                watts * energy.duration_s / 3_600_000, rel=0.05, abs=1e-9
            )
            assert energy.prefill_kwh > 0 and energy.decode_kwh > 0
            assert energy.prefill_kwh + energy.decode_kwh == pytest.approx(r.energy_kwh)
        controller.ledger.flush()
        by_directive = {r.directive: r for r in receipts}
        assert by_directive["L2"].model == "tiny-llama:int8"
        assert by_directive["L2"].variant == "int8" and by_directive["L2"].output_tokens == 6
        assert by_directive["L1"].output_tokens == 12 and by_directive["L0"].output_tokens == 24

        estimate = build_meter(settings.replace(meter="estimate"), controller.engine,
                               controller.ledger)  # fmt: skip
        controller.close()
    from sprout.energy.base import Usage

    for variant, label in ((None, "hf/default on 9"), ("int8", "hf/int8 on 8")):
        estimate.begin("w")
        sample = estimate.end("w", Usage(13, 24 if variant is None else 6, 0.0, variant))
        assert sample.source == "estimated"
        assert f"calibrated {label} measured-nvml receipts" in sample.device
        assert sample.energy_kwh > 0
