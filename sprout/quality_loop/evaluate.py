"""One sampled request evaluated: answered under the other directives, judged, recorded.

The served answer was kept with the prompt; each other directive the judge can judge is
answered now by the serving engine (an answer nobody judges would be carbon for nothing).
Every generation and judge call is metered and written as a receipt with
``purpose="evaluation"`` (reports count it as the quality loop's overhead, attributed to the
tenant whose request was judged), then the verdict is stored with each answer's receipt id
and cost: a training example for the per-request policy (:mod:`sprout.training.verdicts`).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sprout.chat import ChatRequest, parse_messages
from sprout.energy.base import EnergyMeter, EnergySample, Usage
from sprout.energy.estimate import EstimateMeter
from sprout.errors import EngineError, MeterError, RequestError, UnknownPromptError
from sprout.judge.judges import Judge, JudgeCall, JudgeItem, LLMJudge
from sprout.quality_loop.run import JudgeRun
from sprout.receipt import Receipt, metered_receipt

if TYPE_CHECKING:
    from sprout.carbon.signal import SignalReading
    from sprout.directives import Directive, DirectiveSet
    from sprout.engines.base import Engine, Generation
    from sprout.ledger.store import Ledger

#: Receipt ``directive`` of a judge call, and ``decision`` of the loop's receipts.
JUDGE_DIRECTIVE = "judge"
ANSWER_DECISION = "judge-answer"
CALL_DECISION = "judge-call"


def _cost(receipt: Receipt) -> dict[str, Any]:
    """What an answer cost, as kept in its verdict's detail."""
    return {
        "energy_kwh": receipt.energy_kwh,
        "time_s": receipt.latency_s,
        "output_tokens": receipt.output_tokens,
        "energy_source": receipt.energy_source,
    }


class Evaluator:
    """Evaluates the judge job's queued requests, one at a time (:meth:`process`).

    Args:
        ledger: where the receipts and verdicts are written.
        judge: the judge.
        engine: answers under the other directives (the serving engine).
        directives: the directive set.
        meter: meters the answers.
        judge_meter: meters the judge's calls.
        embodied_g_per_s: embodied carbon rate for the evaluation receipts.
        max_staleness_h: a request that still fails this long after it was served gets a
            "no verdict" with the error, so that it leaves the queue.
        clock: wall clock of the receipts.
    """

    def __init__(
        self,
        ledger: Ledger,
        judge: Judge,
        engine: Engine,
        directives: DirectiveSet,
        *,
        meter: EnergyMeter,
        judge_meter: EnergyMeter,
        embodied_g_per_s: float,
        max_staleness_h: float,
        clock: Callable[[], datetime],
    ) -> None:
        self.ledger = ledger
        self.judge = judge
        self.engine = engine
        self.directives = directives
        self.meter = meter
        self.judge_meter = judge_meter
        self.embodied_g_per_s = embodied_g_per_s
        self.max_staleness_h = max_staleness_h
        self._clock = clock
        #: The directives the judge can give verdicts on: the only ones answered.
        self.judgeable = judge.can_judge(directives.names)

    def process(
        self, row: Mapping[str, Any], signal: SignalReading, now: datetime, result: JudgeRun
    ) -> None:
        """Answer, judge and record one queued request (a row of
        :meth:`Ledger.sampled_prompts`), counting what was done into ``result``; a request
        that may succeed later (its receipt not stored yet, the engine down) stays queued."""
        request_id, created_at = row["request_id"], row["created_at"]
        receipt = self.ledger.find_receipt(request_id, created_at)
        if receipt is None:  # still buffered or spooled by its writer: next run
            result.deferred += 1
            return
        payload = row["prompt"] if isinstance(row["prompt"], dict) else {}
        try:
            base = ChatRequest(
                parse_messages(payload.get("messages")),
                max_new_tokens=payload.get("max_new_tokens"),
                stop=tuple(payload.get("stop") or ()),
                temperature=payload.get("temperature"),
            )
        except (RequestError, TypeError, ValueError) as e:
            self._verdict(
                receipt,
                payload,
                None,
                "no-verdict",
                {"error": f"unreadable prompt: {e}"},
                now,
                result,
            )
            return
        unusable = self._unusable(receipt, payload)
        if unusable:  # decided before generating anything: no carbon for answers not judged
            self._verdict(receipt, payload, None, "no-verdict", {"reason": unusable}, now, result)
            return
        stale = now >= created_at + timedelta(hours=self.max_staleness_h)
        evaluation: dict[str, str] = {}
        costs: dict[str, dict[str, Any]] = {}
        try:
            answers = self._answers(receipt, base, payload, signal, evaluation, costs, result)
            judged = self.judge.judge(
                JudgeItem(base.messages, answers, request_id, payload.get("prompt_id")),
                self.judge_meter,
            )
        except (RequestError, EngineError, MeterError, KeyError, ValueError) as e:
            # Never answerable (a prompt the replay has no recording of, a directive set too
            # small to compare) versus worth another try (a server that is down).
            permanent = not isinstance(e, (EngineError, MeterError)) or isinstance(
                e, UnknownPromptError
            )
            if permanent or stale:
                # Out of time (or never answerable): close it with the error, not silently.
                self._verdict(
                    receipt,
                    payload,
                    None,
                    "no-verdict",
                    {"error": str(e)[:500], "evaluation": evaluation},
                    now,
                    result,
                )
            else:
                result.deferred += 1
            result.errors.append(f"{request_id}: {e}")
            return
        calls = [self._call_receipt(c, signal, receipt, result) for c in judged.calls]
        result.judge_calls += len(calls)
        detail = {
            "outcome": judged.outcome,
            "evaluation": evaluation,
            "costs": costs,
            "judge_calls": calls,
            "judge": dict(judged.detail),
        }
        self._verdict(
            receipt, payload, judged.preferred, judged.outcome, detail, now, result, judged.protocol
        )

    def _unusable(self, receipt: Receipt, payload: Mapping[str, Any]) -> str | None:
        """Why no verdict the judge could give on this request would be usable, or None."""
        if not self.judge.can_judge([receipt.directive]):
            return (
                f"served under {receipt.directive}, which the judge {self.judge.name} cannot "
                f"judge ({self.judge.limitation([receipt.directive])})"
            )
        kept = {receipt.directive} if isinstance(payload.get("answer"), str) else set()
        if len(self.judgeable | kept) < 2:
            return (
                f"the judge {self.judge.name} can judge fewer than 2 of the directives "
                f"({', '.join(sorted(self.judgeable)) or 'none'})"
            )
        return None

    def _answers(
        self,
        receipt: Receipt,
        base: ChatRequest,
        payload: Mapping[str, Any],
        signal: SignalReading,
        evaluation: dict[str, str],
        costs: dict[str, dict[str, Any]],
        result: JudgeRun,
    ) -> dict[str, str]:
        """Each directive's answer: the served one as kept, the others generated now.

        ``evaluation`` gets each answer's receipt id (``served`` for the served one),
        ``costs`` its energy, time and tokens: with the verdict, a training example of the
        per-request policy (see :mod:`sprout.training.verdicts`).
        """
        served_answer = payload.get("answer")
        answers: dict[str, str] = {}
        # Only what the judge can use: an answer it cannot judge is carbon for nothing.
        names = [name for name in self.directives.names if name in self.judgeable]
        if receipt.directive not in names and isinstance(served_answer, str):
            # Served under a directive since removed: its answer is still judged.
            names.insert(0, receipt.directive)
        for name in names:
            if name == receipt.directive and isinstance(served_answer, str):
                answers[name] = served_answer
                evaluation[name] = "served"
                costs[name] = _cost(receipt)
                continue
            directive = self.directives.get(name)
            text, made = self._generate(directive, base, signal, receipt, result)
            answers[name] = text
            evaluation[name] = made.request_id
            costs[name] = _cost(made)
        return answers

    def _generate(
        self,
        directive: Directive,
        base: ChatRequest,
        signal: SignalReading,
        served: Receipt,
        result: JudgeRun,
    ) -> tuple[str, Receipt]:
        """Generate ``directive``'s answer, metered, and write its evaluation receipt."""
        request = directive.apply(base)
        request_id = f"eval-{uuid.uuid4().hex}"
        self.meter.begin(request_id)
        try:
            generation = self.engine.generate(request)
        except BaseException:
            with contextlib.suppress(Exception):  # close the window; the engine error wins
                self.meter.end(request_id, Usage(0, 0, 0.0, request.variant))
            raise
        sample = self.meter.end(
            request_id,
            Usage(
                generation.input_tokens,
                generation.output_tokens,
                generation.latency_s,
                request.variant,
                generation.first_token_s,
            ),
        )
        receipt = self._receipt(
            request_id,
            directive.name,
            ANSWER_DECISION,
            self.engine.name,
            generation,
            generation.energy or sample,
            signal,
            served,
            request.variant,
        )
        self._append(receipt, result)
        result.answers += 1
        return generation.text, receipt

    def _call_receipt(
        self, call: JudgeCall, signal: SignalReading, served: Receipt, result: JudgeRun
    ) -> str:
        """Write a judge call's evaluation receipt; returns its id."""
        energy = call.energy
        if energy is None:  # a judge that did not meter its call: estimate it
            g = call.generation
            model = EstimateMeter().model
            energy = EnergySample(
                model.energy_kwh(g.input_tokens, g.output_tokens),
                "estimated",
                g.latency_s,
                model.label,
            )
        engine = self.judge.engine.name if isinstance(self.judge, LLMJudge) else self.judge.name
        receipt = self._receipt(
            f"eval-{uuid.uuid4().hex}",
            JUDGE_DIRECTIVE,
            CALL_DECISION,
            engine,
            call.generation,
            energy,
            signal,
            served,
            None,
        )
        self._append(receipt, result)
        return receipt.request_id

    def _receipt(
        self,
        request_id: str,
        directive: str,
        decision: str,
        engine: str,
        generation: Generation,
        energy: EnergySample,
        signal: SignalReading,
        served: Receipt,
        variant: str | None,
    ) -> Receipt:
        return metered_receipt(
            request_id=request_id,
            created_at=self._clock(),
            directive=directive,
            decision=decision,
            engine=engine,
            generation=generation,
            energy=energy,
            signal=signal,
            embodied_g_per_s=self.embodied_g_per_s,
            tenant=served.tenant,  # the overhead is attributed to whose request was judged
            variant=variant,
            prompt_id=served.prompt_id,
            purpose="evaluation",
        )

    def _append(self, receipt: Receipt, result: JudgeRun) -> None:
        self.ledger.append(receipt)
        result.energy_kwh += receipt.energy_kwh
        result.carbon_g += receipt.total_g

    def _verdict(
        self,
        receipt: Receipt,
        payload: Mapping[str, Any],
        preferred: str | None,
        outcome: str,
        detail: dict[str, Any],
        now: datetime,
        result: JudgeRun,
        protocol: str | None = None,
    ) -> None:
        detail = {
            "outcome": outcome,
            "served_decision": payload.get("decision") or receipt.decision,
            # Which policy version decided: its own verdicts revise its safety margin.
            "served_policy_version": receipt.policy_version,
            **detail,
        }
        self.ledger.add_verdict(
            receipt,
            preferred,
            judge=self.judge.name,
            protocol=protocol or self.judge.protocol,
            detail=detail,
            created_at=now,
        )
        result.outcomes[outcome] += 1
        if preferred is not None:
            result.preferred[preferred] += 1


__all__ = ["ANSWER_DECISION", "CALL_DECISION", "JUDGE_DIRECTIVE", "Evaluator"]
