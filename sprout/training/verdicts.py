"""The ledger's verdicts as training data for the per-request policy.

Each judged request whose prompt is still kept becomes an example shaped like a bundled
workload record (:class:`sprout.data.WorkloadRecord`): the prompt text, each directive's
energy, time and output tokens (the served answer's from its receipt, the others' from the
judge job's own generations, kept in the verdict's detail) and the judge's preference as
``judge_best``. Each carries a recency weight, ``2 ** (-age / half_life)``, as the quality
estimates do, so that a retrain follows the live workload.

Privacy: only prompts still kept are used. A prompt pruned at the end of its retention
period takes its example with it; retrain within ``prompt_retention_days`` of judging.

The live controller's margin is revised from these examples by
:func:`sprout.quality_loop.live.refresh_margin`; retraining reads them through
:class:`sprout.training.sources.LedgerSource`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sprout.data import WorkloadRecord
from sprout.policy.recency import DEFAULT_HALF_LIFE_H, age_weight

if TYPE_CHECKING:
    from sprout.ledger.store import Ledger

#: ``WorkloadRecord.dataset`` of examples taken from the ledger.
LEDGER_DATASET = "ledger"
#: Decision reason of a request the contextual policy decided.
CONTEXTUAL_DECISION = "contextual"


@dataclass(frozen=True)
class VerdictExample:
    """One judged live request as a training example.

    Attributes:
        record: prompt text, per-directive costs and the verdict (``judge_best`` indexes
            the source's ``levels``; None for a tie or no verdict).
        weight: recency weight in (0, 1].
        time: when the request was served.
        served: the directive it was served.
        energy_sources: each directive's energy source (``measured-nvml``, ``recorded``,
            ``estimated``...), as its receipt carries it.
        decision: why the served directive was chosen (the receipt's decision reason).
        policy_version: the policy version that chose it (None: unknown).
    """

    record: WorkloadRecord
    weight: float
    time: datetime
    served: str
    energy_sources: Mapping[str, str] = field(default_factory=dict)
    decision: str = ""
    policy_version: int | None = None


def _prompt_text(prompt: Any) -> str | None:
    """The last user message of a kept prompt, or None when it cannot be read."""
    messages = prompt.get("messages") if isinstance(prompt, dict) else None
    if not isinstance(messages, list):
        return None
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else None
    return None


def verdict_example(
    index: int,
    verdict: Mapping[str, Any],
    prompt: Any,
    levels: Sequence[str],
    now: datetime,
    half_life_h: float = DEFAULT_HALF_LIFE_H,
) -> VerdictExample | None:
    """The example of one stored verdict and its kept prompt (pure), or None when the
    prompt is unreadable or a level's cost is missing (an answer that was not generated)."""
    text = _prompt_text(prompt)
    costs = (verdict.get("detail") or {}).get("costs") or {}
    if text is None or any(level not in costs for level in levels):
        return None
    try:
        energy = {level: float(costs[level]["energy_kwh"]) for level in levels}
        time_s = {level: float(costs[level]["time_s"]) for level in levels}
        tokens = {level: int(costs[level]["output_tokens"]) for level in levels}
        sources = {level: str(costs[level].get("energy_source", "")) for level in levels}
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    preferred = verdict.get("preferred_directive")
    served_at: datetime = verdict["receipt_created_at"]
    record = WorkloadRecord(
        id=str(verdict["request_id"]),
        dataset=LEDGER_DATASET,
        index=index,
        instruction=text,
        energy_kwh=energy,
        time_s=time_s,
        output_tokens=tokens,
        judge_sampled=True,
        judge_best=list(levels).index(preferred)
        if isinstance(preferred, str) and preferred in levels
        else None,
    )
    weight = age_weight((now - served_at).total_seconds() / 3600.0, half_life_h)
    detail = verdict.get("detail") or {}
    version = detail.get("served_policy_version")
    return VerdictExample(
        record,
        weight,
        served_at,
        str(verdict["served_directive"]),
        sources,
        decision=str(detail.get("served_decision") or ""),
        policy_version=version if isinstance(version, int) else None,
    )


class LedgerVerdictSource:
    """Training examples from the quality loop's verdicts in a ledger.

    Args:
        ledger: the ledger.
        levels: directive names, in the policy's order.
        half_life_h: half-life of the recency weights.
        max_age_h: only requests served this recently (default: 8 half-lives).
    """

    name = "ledger-verdicts"

    def __init__(
        self,
        ledger: Ledger,
        levels: Sequence[str],
        *,
        half_life_h: float = DEFAULT_HALF_LIFE_H,
        max_age_h: float | None = None,
    ) -> None:
        self.ledger = ledger
        self.levels = tuple(levels)
        self.half_life_h = half_life_h
        self.max_age_h = 8 * half_life_h if max_age_h is None else max_age_h

    def examples(
        self, now: datetime, verdicts: Iterable[Mapping[str, Any]] | None = None
    ) -> Iterator[VerdictExample]:
        """The examples as of ``now`` (the latest verdict of each request), oldest first.

        Args:
            now: the time ages are measured at.
            verdicts: the verdict rows of the last ``max_age_h`` hours when the caller has
                read them already (default: read from the ledger).

        Raises:
            LedgerError: the ledger cannot be read.
        """
        since = now - timedelta(hours=self.max_age_h)
        prompts = {
            row["request_id"]: row["prompt"] for row in self.ledger.sampled_prompts(since=since)
        }
        latest: dict[str, Mapping[str, Any]] = {}
        for verdict in self.ledger.verdicts(since=since) if verdicts is None else verdicts:
            latest[verdict["request_id"]] = verdict
        for index, (request_id, verdict) in enumerate(latest.items()):
            if request_id not in prompts:
                continue  # pruned at the end of its retention: privacy wins
            example = verdict_example(
                index, verdict, prompts[request_id], self.levels, now, self.half_life_h
            )
            if example is not None:
                yield example


def margin_verdicts(
    examples: Iterable[VerdictExample], levels: Sequence[str], policy_version: int | None
) -> list[tuple[str, str, str | None, float]]:
    """``(prompt, served, preferred, weight)`` of the requests the contextual policy version
    ``policy_version`` decided itself (not the quality guard, not another version): what
    :meth:`ContextualPolicy.learn_verdicts` revises that version's safety margin from."""
    out: list[tuple[str, str, str | None, float]] = []
    for ex in examples:
        if ex.decision != CONTEXTUAL_DECISION or ex.policy_version != policy_version:
            continue
        best = ex.record.judge_best
        preferred = levels[best] if best is not None and 0 <= best < len(levels) else None
        out.append((ex.record.instruction, ex.served, preferred, ex.weight))
    return out


__all__ = [
    "LEDGER_DATASET",
    "LedgerVerdictSource",
    "VerdictExample",
    "margin_verdicts",
    "verdict_example",
]
