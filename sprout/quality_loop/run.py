"""What one tick or run of the judge job did: :class:`JudgeRun` (its counts and a report)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from sprout.judge.quality import QualityEstimate


@dataclass
class JudgeRun:
    """What one tick or run did.

    Attributes:
        at: when (the job's clock).
        reason: ``manual``, ``low-carbon``, ``max-gap`` or ``staleness`` for a run;
            ``idle`` (nothing queued), ``waiting`` (the timing rule defers) or ``locked``
            (another process runs the job) when nothing ran.
        ran: whether requests were processed.
        ci_g_per_kwh: the intensity the run was metered at.
        picked: queued requests taken.
        outcomes: verdicts written, by outcome (``preferred``, ``tie``, ``no-verdict``).
        preferred: verdicts by preferred directive.
        deferred: requests left queued for a later run (receipt not stored yet, engine down).
        answers, judge_calls: evaluation generations written to the ledger.
        energy_kwh, carbon_g: their energy and carbon.
        estimate: the refreshed quality estimate.
        errors: what failed, one line each.
        unjudged: directives the judge cannot judge (no answer generated for them; their
            quality estimate is the prior).
    """

    at: datetime
    reason: str
    ran: bool = False
    ci_g_per_kwh: float | None = None
    picked: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    preferred: Counter[str] = field(default_factory=Counter)
    deferred: int = 0
    answers: int = 0
    judge_calls: int = 0
    energy_kwh: float = 0.0
    carbon_g: float = 0.0
    estimate: QualityEstimate | None = None
    errors: list[str] = field(default_factory=list)
    unjudged: tuple[str, ...] = ()

    @property
    def verdicts(self) -> int:
        """Verdicts written."""
        return sum(self.outcomes.values())

    def describe(self) -> str:
        """A few lines for people."""
        if not self.ran:
            why = {
                "idle": "no sampled request is waiting",
                "waiting": "waiting for a lower-carbon hour (timing rule)",
                "locked": "another process is running the judge job on this ledger",
            }.get(self.reason, self.reason)
            return f"judge job at {self.at:%Y-%m-%d %H:%M} UTC: nothing run ({why})"
        lines = [
            f"judge run at {self.at:%Y-%m-%d %H:%M} UTC ({self.reason}, CI "
            f"{self.ci_g_per_kwh or 0:.0f} g/kWh): {self.picked} queued requests, "
            f"{self.verdicts} verdicts"
            + (
                " (" + ", ".join(f"{n} {k}" for k, n in sorted(self.outcomes.items())) + ")"
                if self.outcomes
                else ""
            )
            + f", {self.deferred} left queued",
            "  preferred: "
            + (", ".join(f"{d} {n}" for d, n in sorted(self.preferred.items())) or "none"),
            f"  evaluation overhead: {self.answers} answers + {self.judge_calls} judge calls, "
            f"{self.energy_kwh * 1000:.3f} Wh, {self.carbon_g:.3f} gCO2e "
            "(ledger receipts, purpose=evaluation)",
        ]
        if self.estimate is not None:
            e = self.estimate
            q = ", ".join(f"{k} {v:.3f}" for k, v in zip(e.levels, e.quality, strict=True))
            pref = "n/a" if e.preference is None else f"{e.preference:.1%}"
            lines.append(
                f"  quality estimate: {q} ({e.weight:.1f} effective verdicts; normalized "
                f"preference {pref}, floor {e.floor:.1%})"
            )
            if e.warning():
                lines.append(f"  WARNING: {e.warning()}")
        if self.unjudged:
            lines.append(
                f"  not judged: {', '.join(self.unjudged)} (the judge cannot judge them: no "
                "answers generated, quality estimate = prior)"
            )
        lines += [f"  error: {err}" for err in self.errors[:10]]
        return "\n".join(lines)


__all__ = ["JudgeRun"]
