"""Judges: an LLM judge over an OpenAI-compatible server (a fake on 127.0.0.1), the replay
judge of GPT-4's recorded verdicts, and building them from settings."""

from __future__ import annotations

import re

import pytest

from sprout.chat import Message
from sprout.config import load_settings
from sprout.data import LEVELS
from sprout.energy.estimate import EstimateMeter
from sprout.engines.openai_compat import OpenAIEngine
from sprout.errors import ConfigError, EngineError
from sprout.judge.judges import (
    REPLAY_JUDGE_NAME,
    JudgeItem,
    LLMJudge,
    ReplayJudge,
    build_judge,
)
from sprout.judge.protocol import LABELS
from tests.support.fake_openai_server import FakeOpenAIServer

ANSWERS = {"L0": "A long answer that is wrong.", "L1": "BEST answer.", "L2": "meh"}


def _item(key: str = "req-1", answers=ANSWERS) -> JudgeItem:
    return JudgeItem((Message("user", "What is the capital of France?"),), answers, key)


def _shown(text: str) -> list[str]:
    return re.findall(r"\[Answer [A-Z]\]\n(.*?)\n\[End of answer", text, flags=re.S)


def oracle(body: dict) -> str:
    """A consistent judge: picks the answer containing BEST (pairwise: A/B, else TIE)."""
    shown = _shown(body["messages"][-1]["content"])
    best = [i for i, a in enumerate(shown) if "BEST" in a]
    return f"[[{LABELS[best[0]]}]]" if best else "[[TIE]]"


def test_listwise_llm_judge_maps_the_shuffled_verdict_back() -> None:
    with FakeOpenAIServer(oracle) as server:
        engine = OpenAIEngine(server.url, "judge-model", max_retries=0)
        judge = LLMJudge(engine, owns_engine=True)
        results = [judge.judge(_item(f"req-{k}"), EstimateMeter()) for k in range(12)]
        again = judge.judge(_item("req-0"))
        judge.close()
    assert {r.preferred for r in results} == {"L1"}
    assert all(r.outcome == "preferred" and r.protocol == "listwise" for r in results)
    # One call each, metered (estimated: the judge is remote), its reply kept for audits.
    assert all(len(r.calls) == 1 for r in results)
    assert {r.calls[0].energy.source for r in results} == {"estimated"}
    assert re.fullmatch(r"\[\[[ABC]\]\]", results[0].detail["replies"][0])
    # The order was shuffled per item: L1 was not always shown at the same position.
    assert len({tuple(r.detail["order"]).index("L1") for r in results}) > 1
    assert again.detail["order"] == results[0].detail["order"]  # stable per item key
    body = server.requests[0]
    assert body["model"] == "judge-model" and body["temperature"] == 0.0
    assert body["max_tokens"] == 32
    assert "length" in body["messages"][0]["content"]
    assert judge.name == "openai:judge-model"


def test_pairwise_llm_judge_swaps_order_and_runs_a_round_robin() -> None:
    with FakeOpenAIServer(oracle) as server:
        judge = LLMJudge(OpenAIEngine(server.url, "m", max_retries=0), protocol="pairwise")
        result = judge.judge(_item())
    assert result.preferred == "L1" and result.outcome == "preferred"
    assert len(result.calls) == 6  # 3 pairs, each judged in both orders
    pairs = result.detail["pairs"]
    assert [(p["a"], p["b"]) for p in pairs] == [("L0", "L1"), ("L0", "L2"), ("L1", "L2")]
    assert pairs[1]["outcome"] == "tie"  # neither has BEST: both runs answer TIE
    # The second call of each pair shows the answers swapped.
    first, second = (_shown(server.requests[k]["messages"][-1]["content"]) for k in (0, 1))
    assert first == list(reversed(second))


def test_a_position_biased_judge_gives_ties_not_verdicts() -> None:
    with FakeOpenAIServer("[[A]]") as server:  # always the first answer shown
        judge = LLMJudge(OpenAIEngine(server.url, "m", max_retries=0), protocol="pairwise")
        result = judge.judge(_item(answers={"L0": "x", "L1": "y"}))
    assert result.preferred is None and result.outcome == "tie" and len(result.calls) == 2


@pytest.mark.parametrize("reply", ["I cannot help with that.", "[[A]] or [[B]]", "", "[[Q]]"])
def test_junk_replies_are_no_verdict(reply: str) -> None:
    with FakeOpenAIServer(reply) as server:
        for protocol, calls in (("listwise", 1), ("pairwise", 2)):
            judge = LLMJudge(OpenAIEngine(server.url, "m", max_retries=0), protocol=protocol)
            result = judge.judge(_item())
            assert result.preferred is None and result.outcome == "no-verdict"
            assert len(result.calls) == calls  # pairwise stops at the first pair without one


def test_engine_failures_propagate_for_a_later_retry() -> None:
    with FakeOpenAIServer(oracle) as server:
        server.inject(503)
        judge = LLMJudge(OpenAIEngine(server.url, "m", max_retries=0))
        meter = EstimateMeter()
        with pytest.raises(EngineError):
            judge.judge(_item(), meter)
        assert meter._open == {}  # the meter's window was closed


def test_llm_judge_validates_its_options() -> None:
    engine = OpenAIEngine("http://127.0.0.1:9/v1", "m")
    with pytest.raises(ConfigError):
        LLMJudge(engine, protocol="tournament")
    with pytest.raises(ConfigError):
        LLMJudge(engine, max_new_tokens=0)
    with pytest.raises(ValueError):
        LLMJudge(engine).judge(_item(answers={"L0": "only"}))


def test_replay_judge_returns_gpt4s_recorded_verdict(judged_records) -> None:
    judge = ReplayJudge()
    for record in judged_records[:50]:
        answers = dict.fromkeys(LEVELS, "x")
        by_text = judge.judge(JudgeItem((Message("user", record.instruction),), answers, "k"))
        by_id = judge.judge(JudgeItem((Message("user", "?"),), answers, "k", record.id))
        assert by_text.preferred == by_id.preferred == LEVELS[record.judge_best]
        assert by_text.calls == () and by_text.detail["recorded"] == record.id
    assert judge.name == REPLAY_JUDGE_NAME


def test_replay_judge_gives_no_verdict_when_it_has_none(judged_records) -> None:
    judge = ReplayJudge()
    unknown = judge.judge(JudgeItem((Message("user", "Not a bundled prompt"),), ANSWERS, "k"))
    assert unknown.preferred is None and "not one of the bundled" in unknown.detail["reason"]
    record = next(r for r in judged_records if r.judge_best != 0)
    partial = judge.judge(
        JudgeItem((Message("user", record.instruction),), {"L0": "a", "X": "b"}, "k")
    )
    assert partial.outcome == "no-verdict" and "not among the answers" in partial.detail["reason"]
    from sprout.data import load_workload

    unjudged = next(r for r in load_workload() if not r.judge_sampled)
    result = judge.judge(JudgeItem((Message("user", unjudged.instruction),), ANSWERS, "k"))
    assert result.outcome == "no-verdict" and "no verdict" in result.detail["reason"]


def test_build_judge_from_settings() -> None:
    assert isinstance(build_judge(load_settings(env={})), ReplayJudge)
    settings = load_settings(
        env={},
        judge_engine="openai",
        judge_base_url="http://127.0.0.1:9/v1",
        judge_model="gpt-4o",
        judge_protocol="pairwise",
        judge_api_key="sk-secret",
    )
    judge = build_judge(settings)
    assert isinstance(judge, LLMJudge) and judge.protocol == "pairwise"
    assert judge.name == "openai:gpt-4o" and "sk-secret" not in repr(settings)
    with pytest.raises(ConfigError, match="judge_model"):
        build_judge(load_settings(env={}, judge_engine="openai"))
    with pytest.raises(ConfigError, match="judge_base_url"):
        build_judge(load_settings(env={}, judge_engine="openai", judge_model="m"))
    with pytest.raises(ConfigError, match="judge_engine"):
        load_settings(env={}, judge_engine="oracle")
    with pytest.raises(ConfigError, match="judge_protocol"):
        load_settings(env={}, judge_protocol="tournament")
