"""The replay engine and the estimate meter."""

from __future__ import annotations

import pytest

from sprout.chat import ChatRequest, Message
from sprout.data import load_responses
from sprout.energy.base import Usage
from sprout.energy.estimate import EstimateMeter, TokenEnergyModel, approx_tokens, bundled_model
from sprout.engines.replay import ReplayEngine
from sprout.errors import EngineError, MeterError, UnknownPromptError


@pytest.fixture(scope="module")
def engine():
    return ReplayEngine()


def _request(prompt: str, directive: str = "L0", **kw) -> ChatRequest:
    return ChatRequest((Message("user", prompt),), directive=directive, **kw)


@pytest.mark.parametrize("level", ["L0", "L1", "L2"])
def test_replays_recorded_answer_energy_and_latency(engine, judged_records, level):
    record = judged_records[123]
    gen = engine.generate(_request(record.instruction, level))
    recorded = load_responses(record.dataset)[record.id]["responses"][level]
    assert gen.text == recorded.strip()
    assert gen.energy is not None
    assert gen.energy.source == "recorded"
    assert gen.energy.energy_kwh == record.energy_kwh[level]
    assert gen.latency_s == record.time_s[level]
    assert gen.baseline_energy_kwh == record.energy_kwh["L0"]
    assert gen.model == "llama-2-13b-chat"


def test_matches_prompt_despite_whitespace_and_system_prompt(engine, judged_records):
    record = judged_records[7]
    messy = "  " + record.instruction.replace(" ", "   ") + "\n"
    request = ChatRequest(
        (Message("system", "Always answer briefly"), Message("user", messy)), directive="L1"
    )
    assert engine.generate(request).energy.energy_kwh == record.energy_kwh["L1"]


def test_variant_7b_replays_the_smaller_model(engine):
    record = next(r for r in engine.records if r.dataset == "triviaqa")
    gen = engine.generate(_request(record.instruction, "L0", variant="7b"))
    assert gen.model == "llama-2-7b-chat"
    assert gen.energy.energy_kwh == record.energy_kwh["7b_L0"]


def test_unknown_prompt_is_a_clear_error(engine):
    with pytest.raises(UnknownPromptError, match="no recording of the prompt"):
        engine.generate(_request("What is the airspeed of an unladen swallow?"))


def test_unrecorded_variant_names_what_was_recorded(engine, judged_records):
    with pytest.raises(EngineError, match="recorded: 7b_L0, L0, L1, L2"):
        engine.generate(_request(judged_records[0].instruction, "L1", variant="7b"))


def test_token_cap_truncates_and_relabels_energy_as_estimated(engine):
    record = next(r for r in engine.records if r.output_tokens.get("L0", 0) > 40)
    gen = engine.generate(_request(record.instruction, "L0", max_new_tokens=10))
    assert gen.output_tokens == 10
    assert gen.energy.source == "estimated"
    expected = record.energy_kwh["L0"] * 10 / record.output_tokens["L0"]
    assert gen.energy.energy_kwh == pytest.approx(expected)


def test_bundled_energy_model_is_physically_sensible():
    model = bundled_model()
    assert model.n_samples > 50_000
    assert model.per_output_token_kwh > 0
    # A 13B model on one GPU: on the order of 1e-6 kWh (a few joules) per output token.
    assert 1e-7 < model.per_output_token_kwh < 1e-5
    assert model.energy_kwh(20, 200) > model.energy_kwh(20, 20)


def test_fit_recovers_a_known_linear_model(judged_records):
    from dataclasses import replace

    truth = TokenEnergyModel(1e-5, 2e-8, 1.5e-6)
    synthetic = []
    for r in judged_records[:200]:
        tokens = dict(r.output_tokens) or {"L1": 30, "L2": 20}
        energy = {k: truth.energy_kwh(approx_tokens(r.instruction), v) for k, v in tokens.items()}
        synthetic.append(replace(r, output_tokens=tokens, energy_kwh=energy))
    fitted = TokenEnergyModel.fit(synthetic)
    assert fitted.per_output_token_kwh == pytest.approx(1.5e-6, rel=1e-6)
    assert fitted.intercept_kwh == pytest.approx(1e-5, rel=1e-6)


def test_estimate_meter_labels_samples_estimated_and_checks_windows():
    meter = EstimateMeter(TokenEnergyModel(0.0, 0.0, 1e-6, label="unit"))
    meter.begin("a")
    meter.begin("b")  # windows overlap
    sample = meter.end("a", Usage(input_tokens=5, output_tokens=100, duration_s=2.0))
    assert sample.source == "estimated" and not sample.measured
    assert sample.energy_kwh == pytest.approx(1e-4)
    assert sample.duration_s == 2.0
    with pytest.raises(MeterError, match="never opened"):
        meter.end("a", Usage(1, 1, 1.0))
    with pytest.raises(MeterError, match="already open"):
        meter.begin("b")


def test_fit_needs_data():
    with pytest.raises(MeterError, match="at least 3"):
        TokenEnergyModel.fit([])
