"""Judges: an LLM judge on any engine, and a replay judge of the recorded GPT-4 verdicts.

:class:`LLMJudge` runs a protocol of :mod:`sprout.judge.protocol` on any
:class:`~sprout.engines.base.Engine`: an OpenAI-compatible endpoint (a hosted GPT-4-class
model, vLLM, Ollama...) or a local transformers model. Each of its calls can be metered, so
the job can write it to the ledger as evaluation overhead.

:class:`ReplayJudge` returns GPT-4's recorded verdict for the bundled prompts (the judge of
the Sprout paper's artifact), so the demo, the tests and the simulator run the whole loop
with no model and no network.
"""

from __future__ import annotations

import abc
import contextlib
import random
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sprout.chat import ChatRequest, Message, last_user_content
from sprout.data import LEVELS, load_workload
from sprout.energy.base import EnergyMeter, EnergySample, Usage
from sprout.engines.hf import HFEngine
from sprout.engines.settings import required
from sprout.errors import ConfigError
from sprout.judge.protocol import (
    NO_VERDICT,
    PROTOCOLS,
    JudgePrompt,
    Outcome,
    Verdict,
    listwise_prompt,
    listwise_verdict,
    pairs,
    pairwise_prompts,
    pairwise_verdict,
    render_conversation,
    round_robin,
    shuffled_order,
)
from sprout.plugins import JUDGES

if TYPE_CHECKING:
    from sprout.config import Settings
    from sprout.data import WorkloadRecord
    from sprout.engines.base import Engine, Generation

#: Characters of each judge reply kept in a verdict's detail (for audits of odd verdicts).
REPLY_CHARS = 300
#: Name of the replay judge: the verdicts were GPT-4's.
REPLAY_JUDGE_NAME = "replay:gpt-4"
#: Default cap on a judge reply's tokens: the verdict is a label such as ``[[B]]``.
DEFAULT_JUDGE_MAX_NEW_TOKENS = 32


@dataclass(frozen=True)
class JudgeItem:
    """What a judge is asked about: one request and each directive's answer to it.

    Attributes:
        messages: the app's request (before any directive shaped it).
        answers: directive name to its answer, in the directive set's order.
        key: a stable id of the item (the request id): seeds the per-item shuffle, so a
            re-run shows the answers in the same order.
        prompt_id: the app's prompt id (the replay judge finds bundled prompts by it).
    """

    messages: tuple[Message, ...]
    answers: Mapping[str, str]
    key: str
    prompt_id: str | None = None


@dataclass(frozen=True)
class JudgeCall:
    """One call a judge made: the request, the engine's generation, its energy if metered."""

    request: ChatRequest
    generation: Generation
    energy: EnergySample | None = None


@dataclass(frozen=True)
class JudgeResult:
    """A judge's verdict on one item.

    Attributes:
        preferred: the preferred directive (None: a tie or no verdict).
        outcome: ``preferred``, ``tie`` or ``no-verdict``.
        protocol: ``listwise`` or ``pairwise``.
        calls: the judge's own generations (empty for the replay judge).
        detail: what the verdict rests on (orders shown, replies), JSON data.
    """

    preferred: str | None
    outcome: Outcome
    protocol: str
    calls: tuple[JudgeCall, ...] = ()
    detail: Mapping[str, Any] = field(default_factory=dict)


class Judge(abc.ABC):
    """Picks the best of a request's answers under several directives."""

    #: Recorded in verdicts.
    name: str = "abstract"
    protocol: str = "listwise"

    @abc.abstractmethod
    def judge(self, item: JudgeItem, meter: EnergyMeter | None = None) -> JudgeResult:
        """Judge ``item``; ``meter`` measures or estimates each of the judge's calls.

        Raises:
            EngineError: the judge's engine failed (the item may be retried later).
        """

    def can_judge(self, directives: Iterable[str]) -> frozenset[str]:
        """Which of ``directives`` (names) this judge can give verdicts on.

        The judge job generates evaluation answers only for these: an answer the judge
        cannot use would cost carbon for nothing. An LLM judge reads any answer; a judge
        that looks verdicts up (the replay judge) only knows what it has.
        """
        return frozenset(directives)

    def limitation(self, directives: Iterable[str]) -> str:
        """Why the directives :meth:`can_judge` leaves out cannot be judged (for people)."""
        return f"the judge {self.name} cannot judge them"

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the judge's engine."""


def _result(
    names: list[str], verdict: Verdict, protocol: str, calls: list[JudgeCall], **detail: Any
) -> JudgeResult:
    preferred = None if verdict.preferred is None else names[verdict.preferred]
    return JudgeResult(preferred, verdict.outcome, protocol, tuple(calls), detail)


class LLMJudge(Judge):
    """An LLM judge on any engine.

    Args:
        engine: the judge model's engine.
        protocol: ``listwise`` (one call per item) or ``pairwise`` (two calls per pair of
            directives, order swapped).
        max_new_tokens: cap on each reply (the verdict is a short label).
        temperature: sampling temperature (0: greedy, for repeatable verdicts).
        seed: seeds the per-item answer order, with the item's key.
        name: recorded in verdicts (default: the engine and its model).
        owns_engine: close the engine with the judge.

    Raises:
        ConfigError: an unknown protocol or a non-positive ``max_new_tokens``.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        protocol: str = "listwise",
        max_new_tokens: int = DEFAULT_JUDGE_MAX_NEW_TOKENS,
        temperature: float | None = 0.0,
        seed: int = 0,
        name: str | None = None,
        owns_engine: bool = False,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ConfigError(f"judge protocol {protocol!r}: use one of {', '.join(PROTOCOLS)}")
        if max_new_tokens < 1:
            raise ConfigError(f"judge max_new_tokens must be >= 1, got {max_new_tokens!r}")
        self.engine = engine
        self.protocol = protocol
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.seed = seed
        model = getattr(engine, "model", None) or getattr(engine, "model_dir", None)
        self.name = name or (f"{engine.name}:{model}" if model else engine.name)
        self._owns_engine = owns_engine

    def _call(self, prompt: JudgePrompt, meter: EnergyMeter | None) -> JudgeCall:
        request = ChatRequest(
            prompt.messages, max_new_tokens=self.max_new_tokens, temperature=self.temperature
        )
        if meter is None:
            return JudgeCall(request, self.engine.generate(request))
        window = f"judge-{uuid.uuid4().hex}"
        meter.begin(window)
        try:
            generation = self.engine.generate(request)
        except BaseException:
            with contextlib.suppress(Exception):  # close the window; the engine error wins
                meter.end(window, Usage(0, 0, 0.0))
            raise
        sample = meter.end(
            window,
            Usage(
                generation.input_tokens,
                generation.output_tokens,
                generation.latency_s,
                None,
                generation.first_token_s,
            ),
        )
        # An engine that knows its own energy (a replay's recording) takes precedence.
        return JudgeCall(request, generation, generation.energy or sample)

    def judge(self, item: JudgeItem, meter: EnergyMeter | None = None) -> JudgeResult:
        names = list(item.answers)
        if len(names) < 2:
            raise ValueError(f"judging needs answers under 2 or more directives, got {names}")
        question = render_conversation(item.messages)
        answers = [item.answers[name] for name in names]
        calls: list[JudgeCall] = []
        if self.protocol == "listwise":
            order = shuffled_order(len(names), random.Random(f"{self.seed}:{item.key}"))
            call = self._call(listwise_prompt(question, answers, order), meter)
            calls.append(call)
            return _result(
                names,
                listwise_verdict(call.generation.text, order),
                self.protocol,
                calls,
                order=[names[i] for i in order],
                replies=[call.generation.text[:REPLY_CHARS]],
            )
        results: dict[tuple[int, int], Verdict] = {}
        shown: list[dict[str, Any]] = []
        for i, j in pairs(len(names)):
            ab, ba = pairwise_prompts(question, answers[i], answers[j])
            first, second = self._call(ab, meter), self._call(ba, meter)
            calls += (first, second)
            verdict = pairwise_verdict(first.generation.text, second.generation.text)
            results[(i, j)] = verdict
            shown.append(
                {
                    "a": names[i],
                    "b": names[j],
                    "outcome": verdict.outcome,
                    "preferred": None
                    if verdict.preferred is None
                    else (names[i], names[j])[verdict.preferred],
                    "replies": [
                        first.generation.text[:REPLY_CHARS],
                        second.generation.text[:REPLY_CHARS],
                    ],
                }
            )
            if verdict.outcome == "no-verdict":
                break  # the round robin cannot conclude: spare the remaining calls
        return _result(names, round_robin(len(names), results), self.protocol, calls, pairs=shown)

    def close(self) -> None:
        if self._owns_engine:
            self.engine.close()


def _normalise(text: str) -> str:
    return " ".join(text.split())


class ReplayJudge(Judge):
    """Returns GPT-4's recorded verdict on bundled prompts (listwise over L0, L1, L2).

    It can judge only those three levels (:meth:`can_judge`): the judge job generates no
    answer under any other directive for it.

    A prompt is found by its prompt id, else by its text (the last user message,
    whitespace-normalised). Prompts that were not recorded, or that GPT-4 gave no verdict
    on, get "no verdict".

    Args:
        records: the recordings (default: every bundled workload).
    """

    name = REPLAY_JUDGE_NAME
    protocol = "listwise"

    def __init__(self, records: list[WorkloadRecord] | None = None) -> None:

        self._records = records if records is not None else load_workload()
        self._by_id = {r.id: r for r in self._records}
        self._by_text: dict[str, WorkloadRecord] = {}
        for r in self._records:
            self._by_text.setdefault(_normalise(r.instruction), r)  # as the replay engine does

    def can_judge(self, directives: Iterable[str]) -> frozenset[str]:
        """Only the recorded levels (L0, L1, L2): GPT-4's verdicts were over their answers,
        and there is no verdict to look up for any other directive."""

        return frozenset(directives) & frozenset(LEVELS)

    def limitation(self, directives: Iterable[str]) -> str:

        return (
            f"the replay judge only has GPT-4's recorded verdicts over {', '.join(LEVELS)}; "
            "configure an LLM judge (judge_engine = openai or hf) to judge other directives"
        )

    def judge(self, item: JudgeItem, meter: EnergyMeter | None = None) -> JudgeResult:

        record = self._by_id.get(item.prompt_id or "")
        if record is None:
            record = self._by_text.get(_normalise(last_user_content(item.messages)))
        if record is None:
            return _no_verdict("the prompt is not one of the bundled, recorded prompts")
        if not record.judge_sampled or record.judge_best is None:
            return _no_verdict(f"GPT-4 gave no verdict on {record.id}", recorded=record.id)
        if record.judge_best >= len(LEVELS) or LEVELS[record.judge_best] not in item.answers:
            return _no_verdict(
                f"GPT-4 preferred level {record.judge_best} of {record.id}, which is not among "
                f"the answers judged ({', '.join(item.answers)})",
                recorded=record.id,
            )
        return JudgeResult(
            LEVELS[record.judge_best], "preferred", self.protocol, (), {"recorded": record.id}
        )


def _no_verdict(reason: str, **detail: Any) -> JudgeResult:
    return JudgeResult(None, NO_VERDICT.outcome, "listwise", (), {"reason": reason, **detail})


def build_judge(settings: Settings) -> Judge:
    """The judge ``settings.judge_engine`` names (see :data:`sprout.plugins.JUDGES`).

    Raises:
        ConfigError: a setting the judge needs is missing or malformed (naming it).
    """
    judge: Judge = JUDGES.build(settings.judge_engine, settings)
    return judge


def replay_judge(settings: Settings) -> ReplayJudge:
    """GPT-4's recorded verdicts on the bundled prompts (no setting needed)."""
    return ReplayJudge()


def _llm_judge(settings: Settings, engine: Engine) -> LLMJudge:
    return LLMJudge(
        engine,
        protocol=settings.judge_protocol,
        max_new_tokens=settings.judge_max_new_tokens,
        owns_engine=True,
    )


def openai_judge(settings: Settings) -> LLMJudge:
    """``settings.judge_model`` behind the OpenAI-compatible API at ``judge_base_url``.

    Raises:
        ConfigError: the model or the base URL is missing.
    """
    from sprout.engines.openai_compat import OpenAIEngine

    model = required(settings, "judge_model", "judge_engine='openai'")
    engine = OpenAIEngine(
        required(settings, "judge_base_url", "judge_engine='openai'"),
        model,
        api_key=settings.judge_api_key or None,
        max_tokens=settings.judge_max_new_tokens,
        timeout_s=settings.engine_timeout_s,
        max_retries=settings.engine_retries,
    )
    return _llm_judge(settings, engine)


def hf_judge(settings: Settings) -> LLMJudge:
    """The local transformers model at ``settings.judge_model``.

    Raises:
        ConfigError: the model is missing.
    """
    engine = HFEngine(
        required(settings, "judge_model", "judge_engine='hf'"),
        variants={},
        device=settings.engine_device,
        max_new_tokens=settings.judge_max_new_tokens,
    )
    return _llm_judge(settings, engine)


__all__ = [
    "DEFAULT_JUDGE_MAX_NEW_TOKENS",
    "REPLAY_JUDGE_NAME",
    "Judge",
    "JudgeCall",
    "JudgeItem",
    "JudgeResult",
    "LLMJudge",
    "ReplayJudge",
    "build_judge",
]
