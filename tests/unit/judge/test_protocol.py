"""Judge protocols: prompts, order shuffling mapped back, strict verdict parsing (pure)."""

from __future__ import annotations

import random

import pytest

from sprout.chat import Message
from sprout.judge.protocol import (
    JUDGE_SYSTEM_PROMPT,
    LABELS,
    NO_VERDICT,
    TIE,
    TIED,
    Verdict,
    listwise_prompt,
    listwise_verdict,
    pairs,
    pairwise_prompts,
    pairwise_verdict,
    parse_label,
    render_conversation,
    round_robin,
    shuffled_order,
)


def _shown(prompt_text: str) -> list[str]:
    """The answers in the order a prompt shows them."""
    out = []
    for label in LABELS:
        head = f"[Answer {label}]\n"
        if head not in prompt_text:
            break
        out.append(prompt_text.split(head, 1)[1].split(f"\n[End of answer {label}]", 1)[0])
    return out


def test_the_prompt_asks_for_quality_accuracy_correctness_regardless_of_length() -> None:
    text = JUDGE_SYSTEM_PROMPT.lower()
    for word in ("quality", "accuracy", "correctness", "length", "order"):
        assert word in text
    assert "short answer that is correct and complete is as good as a long one" in text
    prompt = listwise_prompt("What is 2+2?", ["four", "4", "It is 4."], (2, 0, 1))
    assert prompt.messages[0] == Message("system", JUDGE_SYSTEM_PROMPT)
    user = prompt.messages[1].content
    assert user.startswith("[Request]\nWhat is 2+2?")
    assert _shown(user) == ["It is 4.", "four", "4"]
    assert "[[B]]" in user and "single best answer" in user


def test_shuffled_order_is_a_seeded_permutation_and_varies_per_item() -> None:
    orders = {shuffled_order(3, random.Random(f"0:{k}")) for k in range(60)}
    assert all(sorted(o) == [0, 1, 2] for o in orders)
    assert len(orders) == 6  # every permutation turns up: no directive owns a position
    assert shuffled_order(3, random.Random("0:x")) == shuffled_order(3, random.Random("0:x"))


@pytest.mark.parametrize("seed", range(25))
def test_listwise_verdict_maps_the_shown_label_back_to_the_answer(seed: int) -> None:
    answers = ["long careful answer", "brief answer", "BEST"]
    order = shuffled_order(3, random.Random(seed))
    prompt = listwise_prompt("q", answers, order)
    label = LABELS[_shown(prompt.messages[1].content).index("BEST")]
    for reply in (f"[[{label}]]", f"Verdict: [[{label}]]", label, f"Answer {label}."):
        assert listwise_verdict(reply, prompt.order) == Verdict(2, "preferred")


@pytest.mark.parametrize(
    "reply",
    [
        "",
        "   ",
        "I'm sorry, but I can't judge these answers.",
        "As an AI language model I cannot decide which is best.",
        "Both [[A]] and [[C]] are good.",  # several answers
        "[[A]] [[B]]",
        "[[D]]",  # out of range for three answers
        "[[Z]]",
        "[[TIE]]",  # no ties in the listwise protocol
        "The best is not [[A]].",  # a negated label is no verdict, never A
        "Neither [[A]] nor [[B]]",
        "A is wrong and B is right",  # prose without the marker: no guessing
        "ABC",
        "The answer is 4",
        "[[]]",
    ],
)
def test_junk_refusals_and_several_answers_give_no_verdict(reply: str) -> None:
    assert parse_label(reply, 3) is None
    assert listwise_verdict(reply, (0, 1, 2)) == NO_VERDICT


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("[[B]]", 1),
        ("[[b]]", 1),
        ("[[ C ]]", 2),
        ("After comparing them, [[B]] is the best. Final verdict: [[B]]", 1),
        ("B", 1),
        ("**B**", 1),
        ("(C)", 2),
        ("[A]", 0),
        ("Answer: A", 0),
        ("Final verdict: C.", 2),
        ("Best answer is B", 1),
    ],
)
def test_well_formed_verdicts_are_read(reply: str, expected: int) -> None:
    assert parse_label(reply, 3) == expected


def test_ties_only_where_allowed() -> None:
    assert parse_label("[[TIE]]", 2, allow_tie=True) == TIE
    assert parse_label("tie", 2, allow_tie=True) == TIE
    assert parse_label("[[TIE]]", 2) is None
    assert parse_label("[[A]] or [[TIE]]", 2, allow_tie=True) is None


def test_pairwise_prompts_swap_the_order() -> None:
    ab, ba = pairwise_prompts("q", "first answer", "second answer")
    assert _shown(ab.messages[1].content) == ["first answer", "second answer"]
    assert _shown(ba.messages[1].content) == ["second answer", "first answer"]
    assert ab.order == (0, 1) and ba.order == (1, 0)
    assert "[[TIE]]" in ab.messages[1].content
    assert ab.messages[0].content == JUDGE_SYSTEM_PROMPT


@pytest.mark.parametrize(
    "r1, r2, expected",
    [
        ("[[A]]", "[[B]]", Verdict(0, "preferred")),  # consistent: the first answer both times
        ("[[B]]", "[[A]]", Verdict(1, "preferred")),
        ("[[A]]", "[[A]]", TIED),  # position bias: each run picked what was shown first
        ("[[B]]", "[[B]]", TIED),
        ("[[TIE]]", "[[TIE]]", TIED),
        ("[[A]]", "[[TIE]]", TIED),
        ("[[A]]", "I cannot tell", NO_VERDICT),
        ("junk", "[[B]]", NO_VERDICT),
    ],
)
def test_pairwise_verdict_ties_when_the_swapped_runs_disagree(r1, r2, expected) -> None:
    assert pairwise_verdict(r1, r2) == expected


def test_round_robin_picks_the_top_scorer_and_ties_a_cycle() -> None:
    assert pairs(3) == [(0, 1), (0, 2), (1, 2)]
    win = Verdict(0, "preferred")
    lose = Verdict(1, "preferred")
    # 1 beats 0 and 2: preferred.
    assert round_robin(3, {(0, 1): lose, (0, 2): win, (1, 2): win}) == Verdict(1, "preferred")
    # 0 > 1, 1 > 2, 2 > 0: a cycle is a tie.
    assert round_robin(3, {(0, 1): win, (0, 2): lose, (1, 2): win}) == TIED
    # Ties count half: 0 ties 1, beats 2 -> 1.5; 1 ties 0, ties 2 -> 1.0.
    assert round_robin(3, {(0, 1): TIED, (0, 2): win, (1, 2): TIED}) == Verdict(0, "preferred")
    # A missing comparison could change the winner: no verdict.
    assert round_robin(3, {(0, 1): win, (0, 2): win}) == NO_VERDICT
    assert round_robin(2, {(0, 1): lose}) == Verdict(1, "preferred")


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError):
        listwise_prompt("q", ["only one"], (0,))
    with pytest.raises(ValueError):
        listwise_prompt("q", ["a", "b"], (0, 0))
    with pytest.raises(ValueError):
        Verdict(None, "preferred")
    with pytest.raises(ValueError):
        round_robin(1, {})


def test_render_conversation_keeps_context_of_multi_turn_requests() -> None:
    assert render_conversation([Message("user", "hi")]) == "hi"
    text = render_conversation(
        [Message("system", "be kind"), Message("user", "hi"), Message("assistant", "hello")]
    )
    assert "[system]\nbe kind" in text and "[assistant]\nhello" in text
