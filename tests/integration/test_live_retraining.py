"""Live, not only simulated: a controller serving the per-request (contextual) policy meets
a family of prompts its bundled model never saw, the quality loop samples and judges them,
the scheduled retrain (``sprout retrain --schedule``) learns from the verdicts, and the
running controller picks the new version up through its policy watcher. The delivered
preference on the family climbs back to the floor, and the receipts name the new version.

The family: "zorblat" reconciliation requests, where brevity ruins the answer (the judge, an
LLM judge on a fake judge model, prefers the complete L0 answer every time). The bundled
model reads them as short factoid prompts and serves them briefly.
"""

from __future__ import annotations

import random
import re
import time
from collections import Counter
from collections.abc import Sequence
from datetime import timedelta

import pytest

from sprout.carbon.trace import load_trace
from sprout.chat import ChatRequest
from sprout.cli import main
from sprout.config import load_settings
from sprout.controller import Controller
from sprout.engines.base import Engine, Generation
from sprout.factory import build_controller, build_judge_job
from sprout.judge.judges import LLMJudge
from sprout.ledger.store import Ledger
from sprout.policy.base import CONTEXTUAL_KIND
from tests.support.workloads import SmallBundled

#: The synthetic family's marker, and the directive its judge always prefers.
FAMILY = "zorblat"
PREFERRED = "L0"
#: Requests served per phase (before and after retraining).
PER_PHASE = 80
#: What the product promises: a normalized preference of at least 1 - xi (xi = 0.1).
FLOOR = 0.9
HOUR = timedelta(hours=1)


class AnyPromptEngine(Engine):
    """A serving engine that answers any prompt: a complete answer without a directive's
    system prompt, a shorter one under "briefly", shorter still under "very briefly", with
    token counts and latency to match (its energy comes from the estimate meter)."""

    name = "any-prompt"

    def model_for(self, variant: str | None) -> str:
        return "any-model"

    def generate(self, request: ChatRequest) -> Generation:
        system = next((m.content for m in request.messages if m.role == "system"), "")
        question = request.messages[-1].content
        if "very briefly" in system:
            tokens, text = 12, f"Short: {question[:30]}."
        elif "briefly" in system:
            tokens, text = 60, f"Brief answer to {question[:40]}: done."
        else:
            tokens, text = 220, f"Complete answer to {question}: " + "step " * 40
        return Generation(text, 24 + len(question) // 4, tokens, 0.025 * tokens, "any-model")


class FamilyJudgeModel(Engine):
    """A fake judge model for :class:`LLMJudge`'s listwise prompt: on a zorblat request it
    names the most complete answer (brevity ruins those), on anything else the shortest."""

    name = "fake-judge"
    model = "judge-model"

    def __init__(self) -> None:
        self.calls = 0

    def generate(self, request: ChatRequest) -> Generation:
        self.calls += 1
        shown = request.messages[-1].content
        answers = dict(re.findall(r"\[Answer ([A-Z])\]\n(.*?)\n\[End of answer \1\]", shown, re.S))
        pick = max if FAMILY in shown.split("[Answer", 1)[0] else min
        label = pick(sorted(answers), key=lambda k: len(answers[k]))
        return Generation(f"[[{label}]]", len(shown) // 4, 4, 0.05, self.model)


def family_prompts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    words = ("flux", "quorn", "vel", "drasp", "mib", "toke", "snerl", "pax", "grell", "yot")
    return [
        f"{FAMILY} query {seed * 1000 + i}: reconcile the {rng.choice(words)} ledger of "
        f"{rng.choice(words)} against {rng.choice(words)} {rng.randint(2, 99)}"
        for i in range(n)
    ]


def serve(controller: Controller, prompts: Sequence[str], clock, start) -> list:
    receipts = []
    for i, prompt in enumerate(prompts):
        clock.t = start + i * timedelta(seconds=30)
        receipts.append(controller.chat([{"role": "user", "content": prompt}]).receipt)
    return receipts


def delivered(receipts: Sequence) -> float:
    """Share of served requests under the judge's preferred directive: the normalized
    preference, as the family's judge prefers the baseline (L0) every time."""
    return sum(r.directive == PREFERRED for r in receipts) / len(receipts)


def judged_preference(verdicts: Sequence[dict], version: int) -> tuple[float, int]:
    """The project's normalized preference from the judge's verdicts on requests ``version``
    decided: served the preferred directive, over those where the judge preferred L0."""
    mine = [v for v in verdicts if (v["detail"] or {}).get("served_policy_version") == version]
    hits = sum(v["served_directive"] == v["preferred_directive"] for v in mine)
    base = sum(v["preferred_directive"] == "L0" for v in mine)
    return hits / max(1, base), len(mine)


def scheduled_retrain(url: str, as_of: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """One run of ``sprout retrain --schedule``'s job: the command sets up its cron job as
    it would for the long-running process, and the scheduler's loop fires it once."""
    import sprout.scheduler

    fired: list[str] = []

    def fire_once(scheduler) -> None:
        (job,) = scheduler.get_jobs()
        fired.append(job.id)
        job.func()

    monkeypatch.setattr(sprout.scheduler, "run_blocking", fire_once)
    # --refit-all: the stored model learns from every verdict, the held-out ones included
    # (they are few: the quality guard needs no more than that to stay out of the picture).
    args = ["retrain", "--db", url, "--schedule", "--cron", "0 3 * * *", "--refit-all"]
    code = main([*args, "--as-of", as_of])
    assert code == 0 and fired == ["sprout-retrain"]


def test_live_retraining_restores_the_preference_on_an_unseen_family(
    sqlite_url, clock, monkeypatch, capsys
) -> None:
    from sprout.training import sources as retrain_module

    started = time.perf_counter()
    monkeypatch.setattr(retrain_module, "BundledSource", SmallBundled)
    # The bundled version, as a fresh install stores it.
    assert main(["retrain", "--db", sqlite_url, "--data", "bundled"]) == 0
    with Ledger(sqlite_url) as led:
        v1 = led.latest_policy_version(CONTEXTUAL_KIND)
    assert v1 is not None

    start = load_trace("GB").time_of(3912)
    clock.t = start
    settings = load_settings(
        env={},
        db_url=sqlite_url,
        zone="GB",
        meter="estimate",
        policy_kind="contextual",
        policy_refresh_s=0.05,  # the watcher thread's interval
        # Under judge_min_verdicts (50) verdicts on the family before the retrain: the
        # quality guard stays off, so what the delivered preference does is the retrain's.
        judge_sample_share=0.4,
    )
    engine = AnyPromptEngine()
    judge_model = FamilyJudgeModel()
    controller = build_controller(
        settings, engine=engine, clock=clock.now, monotonic=clock.monotonic, rng=random.Random(7)
    )
    job = build_judge_job(
        settings,
        controller=controller,
        judge=LLMJudge(judge_model, name="fake-llm-judge"),
        clock=clock.now,
    )
    try:
        assert controller.policy_version == v1.id and controller.policy.kind == CONTEXTUAL_KIND
        # What the bundled model does with the family: brief answers, never what the judge
        # prefers.
        before = serve(controller, family_prompts(PER_PHASE, seed=1), clock, start)
        mix_before = Counter(r.directive for r in before)
        assert {r.policy_version for r in before} == {v1.id}
        assert {r.decision for r in before} == {"contextual"}

        # The judge job's scheduled wake-up, once the oldest sample is due (staleness).
        clock.t = start + 24 * HOUR
        first = job.tick()
        assert first.ran and first.verdicts > 0 and not first.errors
        assert set(first.preferred) == {PREFERRED}
        assert first.judge_calls == first.verdicts  # one listwise call of the LLM judge each
        with Ledger(sqlite_url) as led:
            judged_before, n_before = judged_preference(led.verdicts(), v1.id)
        guard_before = first.estimate.l0_share

        # The scheduled retrain learns from the verdicts (the ledger's beside the bundled,
        # as `--data auto` chooses while the ledger holds few), weighed at the ledger's time.
        clock.t = start + 25 * HOUR
        scheduled_retrain(sqlite_url, clock.t.isoformat(), monkeypatch)
        with Ledger(sqlite_url) as led:
            v2 = led.latest_policy_version(CONTEXTUAL_KIND)
        assert v2 is not None and v2.id != v1.id
        assert v2.metrics["examples"]["sources"] == ["ledger", "bundled-small"]

        # The running controller's watcher swaps it in (no restart, no attribute set here).
        deadline = time.monotonic() + 20.0
        while controller.policy_version != v2.id and time.monotonic() < deadline:
            time.sleep(0.02)
        assert controller.policy_version == v2.id

        after = serve(controller, family_prompts(PER_PHASE, seed=2), clock, start + 26 * HOUR)
        mix_after = Counter(r.directive for r in after)
        assert {r.policy_version for r in after} == {v2.id}
        clock.t = start + 50 * HOUR
        second = job.tick()
        assert second.ran and set(second.preferred) == {PREFERRED}
        assert judge_model.calls == first.judge_calls + second.judge_calls
        with Ledger(sqlite_url) as led:
            judged_after, n_after = judged_preference(led.verdicts(), v2.id)
    finally:
        job.close()
        controller.close()
    elapsed = time.perf_counter() - started

    with capsys.disabled():
        print(
            f"\nlive retraining: family '{FAMILY}', judge prefers {PREFERRED}; "
            f"version {v1.id} served {dict(mix_before)}: delivered {delivered(before):.3f}, "
            f"judged {judged_before:.3f} over {n_before} verdicts (guard {guard_before:.3f}); "
            f"version {v2.id} served {dict(mix_after)}: delivered {delivered(after):.3f}, "
            f"judged {judged_after:.3f} over {n_after} verdicts; {elapsed:.1f} s"
        )
    # Before: the bundled model serves the family briefly, and the guard is not engaged.
    assert mix_before[PREFERRED] == 0 and judged_before == 0.0
    assert guard_before == 0.0
    # After: back at the floor, by the model's own choices (not the quality guard's).
    assert delivered(after) >= FLOOR and judged_after >= FLOOR
    assert {r.decision for r in after} == {"contextual"}
