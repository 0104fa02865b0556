"""Judge protocols: the prompts an LLM judge is shown and how its replies are read (pure).

Two protocols:

- **listwise** (Sprout's): every directive's answer is shown at once, labelled ``A``, ``B``,
  ``C``... in an order shuffled per item (so that no directive profits from a position the
  judge favours), and the judge names the single best one. The label is mapped back
  through the order to the directive.
- **pairwise** (A/B): two answers are judged twice, the second time with their order
  swapped; when the two runs disagree (or either calls it even) the pair is a tie. With more
  than two directives every pair is judged (round robin) and the directive with the most
  wins (ties count half) is preferred; a shared top score is a tie.

The prompt asks for quality, accuracy and correctness regardless of length: brevity
directives must not lose merely for being short, nor win for it.

Parsing is strict: the verdict is a label in double square brackets (``[[B]]``), or a reply
that is nothing but the label (``B``, ``Answer B.``). Junk, refusals, a label out of range,
several different labels, or a negated label (``not [[A]]``) are "no verdict" (None), never
a guess.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from sprout.chat import Message

#: Answer labels, in presentation order.
LABELS: str = string.ascii_uppercase
#: The pairwise protocol's label for "equally good".
TIE = "TIE"
PROTOCOLS: tuple[str, ...] = ("listwise", "pairwise")

Outcome = Literal["preferred", "tie", "no-verdict"]

JUDGE_SYSTEM_PROMPT = (
    "You are an impartial judge of answers to a user's request. Judge every answer on its "
    "quality, accuracy and correctness: whether it is right, whether it does what was asked, "
    "and how helpful it is. Do not let the length of an answer sway you: a short answer that "
    "is correct and complete is as good as a long one, and a long answer is no better for "
    "being long. Do not let the order in which the answers are shown sway you."
)

_LISTWISE_ASK = (
    "Which answer is the best? Reply with the label of the single best answer in double "
    "square brackets, for example [[{example}]], and nothing else."
)
_PAIRWISE_ASK = (
    "Which answer is better? Reply with [[A]] if answer A is better, [[B]] if answer B is "
    "better, or [[TIE]] if they are equally good, and nothing else."
)

# A label in double square brackets; the content is checked against the allowed labels.
_BRACKETED = re.compile(r"\[\[\s*([A-Za-z]{1,8})\s*\]\]")
# A negation right before a bracketed label: "not [[A]]", "neither [[A]] nor [[B]]".
_NEGATED = re.compile(r"\b(?:not|neither|nor|none|no)\b\W{0,3}\[\[", re.IGNORECASE)
# A reply that is nothing but a label, possibly introduced ("Answer: B", "Verdict - (B).").
_BARE = re.compile(
    r"(?:(?:final\s+)?(?:verdict|answer|choice|best(?:\s+answer)?)\s*(?:is)?\s*[:\-]?\s*)?"
    r"(?:answer\s+)?[(\[]?([A-Za-z]{1,3})[)\]]?",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class JudgePrompt:
    """One judge call: the messages, and the order the answers are shown in.

    Attributes:
        messages: system and user message.
        order: ``order[p]`` is the index (into the answers given) of the answer shown at
            position ``p`` (label ``LABELS[p]``).
    """

    messages: tuple[Message, ...]
    order: tuple[int, ...]


@dataclass(frozen=True)
class Verdict:
    """A protocol's verdict over the answers of one item.

    Attributes:
        preferred: index (into the answers given) of the preferred answer; None for a tie or
            no verdict.
        outcome: ``preferred``, ``tie`` or ``no-verdict``.
    """

    preferred: int | None
    outcome: Outcome

    def __post_init__(self) -> None:
        if (self.preferred is None) == (self.outcome == "preferred"):
            raise ValueError(f"inconsistent verdict: {self.preferred!r}, {self.outcome!r}")


NO_VERDICT = Verdict(None, "no-verdict")
TIED = Verdict(None, "tie")


def render_conversation(messages: Sequence[Message]) -> str:
    """The request as the judge reads it: the last user message alone when the conversation
    is a single turn, else every message with its role (system prompts included: they are
    part of what the app asked for)."""
    if len(messages) == 1:
        return messages[0].content
    return "\n\n".join(f"[{m.role}]\n{m.content}" for m in messages)


def shuffled_order(n: int, rng: random.Random) -> tuple[int, ...]:
    """A uniformly random presentation order of ``n`` answers."""
    order = list(range(n))
    rng.shuffle(order)
    return tuple(order)


def _body(question: str, shown: Sequence[str]) -> str:
    parts = [f"[Request]\n{question.strip()}"]
    for label, answer in zip(LABELS, shown, strict=False):
        parts.append(f"[Answer {label}]\n{answer.strip()}\n[End of answer {label}]")
    return "\n\n".join(parts)


def listwise_prompt(question: str, answers: Sequence[str], order: Sequence[int]) -> JudgePrompt:
    """The listwise prompt: ``answers`` shown in ``order``, the judge to name the best.

    Raises:
        ValueError: fewer than two answers, more than there are labels, or ``order`` not a
            permutation of the answers' indexes.
    """
    n = len(answers)
    if not 2 <= n <= len(LABELS):
        raise ValueError(f"listwise judging needs 2..{len(LABELS)} answers, got {n}")
    if sorted(order) != list(range(n)):
        raise ValueError(f"order {list(order)} is not a permutation of {n} answers")
    shown = [answers[i] for i in order]
    ask = _LISTWISE_ASK.format(example=LABELS[min(1, n - 1)])
    return JudgePrompt(
        (
            Message("system", JUDGE_SYSTEM_PROMPT),
            Message("user", f"{_body(question, shown)}\n\n{ask}"),
        ),
        tuple(order),
    )


def pairwise_prompts(question: str, first: str, second: str) -> tuple[JudgePrompt, JudgePrompt]:
    """The two pairwise prompts: ``first`` as A and ``second`` as B, then swapped."""

    def prompt(order: tuple[int, int]) -> JudgePrompt:
        shown = [(first, second)[i] for i in order]
        return JudgePrompt(
            (
                Message("system", JUDGE_SYSTEM_PROMPT),
                Message("user", f"{_body(question, shown)}\n\n{_PAIRWISE_ASK}"),
            ),
            order,
        )

    return prompt((0, 1)), prompt((1, 0))


def parse_label(text: str, n_options: int, *, allow_tie: bool = False) -> int | str | None:
    """The position a judge's reply names, ``TIE``, or None when it names nothing clearly.

    Accepted: labels in double square brackets (all of them the same), or a reply that is
    only the label. Refused (None): no label, an unknown or out-of-range label, different
    labels, a negated label, ``TIE`` where no tie is allowed.

    Args:
        text: the judge's reply.
        n_options: answers shown (labels ``A`` up to ``LABELS[n_options - 1]``).
        allow_tie: whether ``[[TIE]]`` is a valid reply.
    """
    if not isinstance(text, str) or not text.strip():
        return None
    allowed = {LABELS[i]: i for i in range(min(n_options, len(LABELS)))}
    found = [m.upper() for m in _BRACKETED.findall(text)]
    if found:
        if _NEGATED.search(text):
            return None
        picks = set(found)
    else:
        # No brackets: only a reply that is nothing but a label counts.
        bare = text.strip().strip("*_`'\" \t\r\n").rstrip(".!").strip()
        match = _BARE.fullmatch(bare)
        if match is None:
            return None
        picks = {match.group(1).upper()}
    if len(picks) != 1:
        return None
    (pick,) = picks
    if pick == TIE:
        return TIE if allow_tie else None
    return allowed.get(pick)


def listwise_verdict(text: str, order: Sequence[int]) -> Verdict:
    """The listwise verdict of reply ``text`` to a prompt shown in ``order``, mapped back to
    the answers' own indexes."""
    position = parse_label(text, len(order))
    if not isinstance(position, int):
        return NO_VERDICT
    return Verdict(order[position], "preferred")


def _pairwise_side(text: str, order: Sequence[int]) -> int | str | None:
    """0 (first), 1 (second), ``TIE`` or None for one of the two pairwise replies."""
    position = parse_label(text, 2, allow_tie=True)
    if position is None or position == TIE:
        return position
    assert isinstance(position, int)
    return order[position]


def pairwise_verdict(text_ab: str, text_ba: str) -> Verdict:
    """Combine the replies to the two pairwise prompts (see :func:`pairwise_prompts`).

    Both runs naming the same answer prefer it; a disagreement, or a tie in either run, is
    a tie; no verdict in either run is no verdict.
    """
    one = _pairwise_side(text_ab, (0, 1))
    two = _pairwise_side(text_ba, (1, 0))
    if one is None or two is None:
        return NO_VERDICT
    if one == two and one != TIE:
        assert isinstance(one, int)
        return Verdict(one, "preferred")
    return TIED


def pairs(n: int) -> list[tuple[int, int]]:
    """Every unordered pair of ``n`` answers, in a fixed order (round robin)."""
    return [(i, j) for i in range(n) for j in range(i + 1, n)]


def round_robin(n: int, results: Mapping[tuple[int, int], Verdict]) -> Verdict:
    """The preferred answer of a round robin of pairwise verdicts.

    ``results[(i, j)]`` is the pairwise verdict of answers ``i`` (first) and ``j`` (second).
    A win scores 1 and a tie 1/2; the answer with the highest score is preferred, a shared
    highest score (a cycle, say) is a tie. A pair without a verdict leaves the whole item
    without one: the missing comparison could have changed the winner.
    """
    if n < 2:
        raise ValueError(f"a round robin needs at least 2 answers, got {n}")
    score = [0.0] * n
    for i, j in pairs(n):
        verdict = results.get((i, j), NO_VERDICT)
        if verdict.outcome == "no-verdict":
            return NO_VERDICT
        if verdict.outcome == "tie":
            score[i] += 0.5
            score[j] += 0.5
        else:
            score[i if verdict.preferred == 0 else j] += 1.0
    best = max(score)
    top = [k for k, s in enumerate(score) if s == best]
    return Verdict(top[0], "preferred") if len(top) == 1 else TIED


__all__ = [
    "JUDGE_SYSTEM_PROMPT",
    "LABELS",
    "NO_VERDICT",
    "PROTOCOLS",
    "TIE",
    "TIED",
    "JudgePrompt",
    "Outcome",
    "Verdict",
    "listwise_prompt",
    "listwise_verdict",
    "pairs",
    "pairwise_prompts",
    "pairwise_verdict",
    "parse_label",
    "render_conversation",
    "round_robin",
    "shuffled_order",
]
