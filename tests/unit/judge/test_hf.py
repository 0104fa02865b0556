"""The LLM judge on a local transformers model (a tiny one built at test time)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from sprout.chat import Message
from sprout.config import load_settings
from sprout.energy.estimate import EstimateMeter
from sprout.judge.judges import JudgeItem, LLMJudge, build_judge
from tests.support.tiny_models import build_tiny_models


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine's cores are shared
    yield build_tiny_models(tmp_path_factory.mktemp("models"))
    torch.set_num_threads(threads)


def test_a_local_model_judges_and_its_junk_is_no_verdict(tiny):
    settings = load_settings(
        env={}, judge_engine="hf", judge_model=str(tiny.small), judge_max_new_tokens=8
    )
    judge = build_judge(settings)
    assert isinstance(judge, LLMJudge) and judge.engine.name == "hf"
    item = JudgeItem(
        (Message("user", "What is the capital of France?"),),
        {"L0": "Paris is the capital of France.", "L1": "Paris.", "L2": "Lyon."},
        "req-1",
    )
    try:
        result = judge.judge(item, EstimateMeter())
    finally:
        judge.close()
    # An untrained model babbles: strict parsing gives no verdict, never a guessed one.
    assert result.outcome == "no-verdict" and result.preferred is None
    (call,) = result.calls
    assert call.generation.input_tokens > 50 and 1 <= call.generation.output_tokens <= 8
    assert call.energy is not None and call.energy.source == "estimated"
    assert call.request.temperature == 0.0 and call.request.max_new_tokens == 8
