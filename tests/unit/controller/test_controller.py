"""The controller: one request end to end, and every fault it must survive."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import timedelta

import pytest

from sprout.accounting import embodied_rate_g_per_s
from sprout.carbon.base import CarbonProvider
from sprout.carbon.trace import load_trace
from sprout.config import load_settings
from sprout.data import load_responses
from sprout.energy.base import EnergySample
from sprout.engines.base import Engine, Generation
from sprout.errors import ProviderError, RequestError, UnknownPromptError
from sprout.factory import build_controller
from sprout.ledger.store import Ledger
from sprout.policy.base import Decision, Policy
from tests.support.settings import make_settings

START_HOUR = 3912  # 2023-06-12 00:00 UTC in the bundled traces


@pytest.fixture
def controller(sqlite_url, clock):
    trace = load_trace("GB")
    clock.t = trace.time_of(START_HOUR)
    settings = load_settings(env={}, db_url=sqlite_url, zone="GB")
    c = build_controller(settings, clock=clock.now, monotonic=clock.monotonic, rng=random.Random(1))
    yield c
    c.close()


def _ask(controller, record, **kw):
    return controller.chat([{"role": "user", "content": record.instruction}], **kw)


def test_one_request_end_to_end(controller, judged_records, clock):
    record = judged_records[42]
    trace = load_trace("GB")
    result = _ask(controller, record, tenant="acme", prompt_id=record.id)
    r = result.receipt
    ci = float(trace.ci_g_per_kwh[START_HOUR])
    assert r.ci_g_per_kwh == ci and r.ci_zone == "GB" and r.ci_provider == "trace"
    assert r.ci_signal_type == "average" and r.ci_emission_factor == "direct"
    assert r.ci_fallback == "provider" and r.ci_age_s == 0.0
    assert r.directive in ("L0", "L1", "L2") and r.decision == "lp-mix"
    assert (
        result.text == load_responses(record.dataset)[record.id]["responses"][r.directive].strip()
    )
    assert r.energy_source == "recorded"
    assert r.energy_kwh == record.energy_kwh[r.directive]
    assert r.operational_g == pytest.approx(record.energy_kwh[r.directive] * ci)
    rate = embodied_rate_g_per_s()
    assert r.embodied_g == pytest.approx(record.time_s[r.directive] * rate)
    assert r.baseline_g == pytest.approx(record.energy_kwh["L0"] * ci + record.time_s["L0"] * rate)
    assert r.tenant == "acme" and r.prompt_id == record.id
    assert r.policy_version is not None
    controller.ledger.flush()
    stored = controller.ledger.receipts()
    assert [s.request_id for s in stored] == [r.request_id]
    assert stored[0] == r


def test_cleanest_hour_serves_l0_and_dirtiest_hour_saves_carbon(controller, judged_records, clock):
    trace = load_trace("GB")
    window = trace.ci_g_per_kwh[START_HOUR - 720 : START_HOUR + 24]
    day = trace.ci_g_per_kwh[START_HOUR : START_HOUR + 24]
    clean = START_HOUR + int(day.argmin())
    dirty = START_HOUR + int(day.argmax())
    clock.t = trace.time_of(clean)
    at_clean = [_ask(controller, r).receipt for r in judged_records[:40]]
    clock.t = trace.time_of(dirty)
    at_dirty = [_ask(controller, r).receipt for r in judged_records[:40]]
    assert day.max() > day.min()
    if trace.ci_g_per_kwh[clean] <= window.min():
        # At the window's minimum the floor is q_L0, the best level: only L0 meets it.
        assert {r.directive for r in at_clean} == {"L0"}
    assert sum(r.total_g for r in at_dirty) < sum(r.baseline_g for r in at_dirty)
    share_l0 = [sum(r.directive == "L0" for r in rs) / len(rs) for rs in (at_clean, at_dirty)]
    assert share_l0[0] > share_l0[1]


def test_opt_out_forces_the_baseline(controller, judged_records, clock):
    trace = load_trace("GB")
    day = trace.ci_g_per_kwh[START_HOUR : START_HOUR + 24]
    clock.t = trace.time_of(START_HOUR + int(day.argmax()))
    receipts = [_ask(controller, r, opt_out=True).receipt for r in judged_records[:20]]
    assert {(r.directive, r.decision) for r in receipts} == {("L0", "opt-out")}
    assert all(r.saving_g == pytest.approx(0.0) for r in receipts)


@pytest.mark.parametrize(
    "messages, problem",
    [
        ([], "empty"),
        ("hello", "expected a list"),
        ([{"role": "user"}], "missing 'content'"),
        ([{"role": "wizard", "content": "x"}], "unknown role"),
        ([{"role": "system", "content": "x"}], "no message with role 'user'"),
        ([{"role": "user", "content": 3}], "expected a string"),
    ],
)
def test_malformed_requests_are_rejected_without_a_receipt(controller, messages, problem):
    with pytest.raises(RequestError, match=problem):
        controller.chat(messages)
    controller.ledger.flush()
    assert controller.ledger.count_receipts() == 0


def test_unknown_prompt_fails_the_request_and_writes_no_receipt(controller):
    with pytest.raises(UnknownPromptError):
        controller.chat([{"role": "user", "content": "not a bundled prompt at all"}])
    controller.ledger.flush()
    assert controller.ledger.count_receipts() == 0


class _Failing(CarbonProvider):
    name = "flaky"

    def latest(self, zone):
        raise ProviderError(self.name, "HTTP 503 from upstream")


def test_provider_failure_still_serves_and_records_the_fallback(controller, judged_records, clock):
    first = _ask(controller, judged_records[0]).receipt
    controller.signal.provider = _Failing()
    clock.t += timedelta(minutes=30)  # past the refresh interval: the provider is asked
    cached = _ask(controller, judged_records[1]).receipt
    assert cached.ci_fallback == "cache"
    assert cached.ci_g_per_kwh == first.ci_g_per_kwh
    assert cached.ci_age_s == pytest.approx(30 * 60)
    clock.t += timedelta(hours=5)  # the last good reading is now too old
    default = _ask(controller, judged_records[2]).receipt
    assert default.ci_fallback == "default" and default.ci_provider == "default"
    assert default.ci_g_per_kwh == 400.0
    controller.ledger.flush()
    assert controller.ledger.count_receipts() == 3


def test_ledger_failure_never_fails_a_request(controller, judged_records, monkeypatch):
    def boom(receipt):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(controller.ledger, "append", boom)
    result = _ask(controller, judged_records[3])
    assert result.text and result.receipt.energy_kwh > 0


def test_policy_failure_falls_back_to_the_baseline(controller, judged_records, monkeypatch):
    from sprout.errors import OptimizerError

    def broken(*a, **k):
        raise OptimizerError("quality: values must lie in [0, 1]")

    monkeypatch.setattr(controller.policy, "decide", broken)
    receipt = _ask(controller, judged_records[4]).receipt
    assert (receipt.directive, receipt.decision) == ("L0", "fallback")


class _Echo(Engine):
    """An engine with no energy figure of its own, like most model servers."""

    name = "echo"

    def generate(self, request):
        return Generation(
            text=request.prompt, input_tokens=10, output_tokens=50, latency_s=0.5, model="echo-1"
        )


def test_engine_without_energy_gets_an_estimate_labelled_so(sqlite_url, clock):
    settings = make_settings(sqlite_url)
    with build_controller(settings, engine=_Echo(), clock=clock.now) as c:
        r = c.chat([{"role": "user", "content": "hi"}], opt_out=True).receipt
    assert r.energy_source == "estimated" and r.engine == "echo" and r.model == "echo-1"
    assert r.energy_kwh > 0
    assert r.ci_provider == "static" and r.ci_g_per_kwh == 400.0
    # An L0 request is its own counterfactual, and says how it was obtained.
    assert r.baseline_g == pytest.approx(r.total_g) and r.baseline_source == "estimated"


def test_directive_caps_and_app_system_prompt_reach_the_engine(sqlite_url, tmp_path, clock):
    seen = []

    class Spy(_Echo):
        def generate(self, request):
            seen.append(request)
            return super().generate(request)

    policy = tmp_path / "capped.toml"
    policy.write_text(
        '[[directive]]\nname = "L0"\n'
        '[[directive]]\nname = "L1"\nsystem_prompt = "Always answer briefly"\nmax_new_tokens = 64\n'
        '[[directive]]\nname = "L2"\nsystem_prompt = "Always answer very briefly"\n'
        'max_new_tokens = 16\nvariant = "int8"\n'
    )
    settings = make_settings(sqlite_url, policy_file=str(policy))
    with build_controller(settings, engine=Spy(), clock=clock.now) as c:
        c.policy.decide = lambda prompt, carbon, rng: Decision(c.directives.get("L2"), "test")
        r = c.chat(
            [
                {"role": "system", "content": "You are Acme's bot."},
                {"role": "user", "content": "q"},
            ],
            max_new_tokens=100,
        ).receipt
    request = seen[0]
    assert request.messages[0].content == "You are Acme's bot.\n\nAlways answer very briefly"
    assert request.max_new_tokens == 16 and request.variant == "int8"
    assert r.directive == "L2" and r.variant == "int8"


def test_fresh_sqlite_file_is_migrated_on_first_use(tmp_path, clock):
    from sprout.ledger.migrate import current_revision

    url = f"sqlite:///{tmp_path / 'sub' / 'new.db'}"
    settings = make_settings(url)
    with build_controller(settings, engine=_Echo(), clock=clock.now):
        pass
    assert current_revision(url) is not None


def test_policy_version_is_stored_once_and_reused(sqlite_url, clock):
    settings = make_settings(sqlite_url)
    ids = []
    for _ in range(2):
        with build_controller(settings, engine=_Echo(), clock=clock.now) as c:
            ids.append(c.policy_version)
    assert ids[0] == ids[1] is not None
    with Ledger(sqlite_url) as ledger:
        version = ledger.latest_policy_version("sprout-lp")
    assert version.params["xi"] == 0.1
    assert version.params["stats"]["levels"] == ["L0", "L1", "L2"]


def test_durable_setting_reaches_the_ledger(sqlite_url, clock):
    settings = make_settings(sqlite_url, ledger_durability="durable")
    with build_controller(settings, engine=_Echo(), clock=clock.now) as c:
        assert c.ledger.durability == "durable"


class _FirstToken(_Echo):
    """An engine that reports the first token's time (and, if given, its own energy)."""

    name = "first-token"

    def __init__(self, first_token_s, energy=None):
        self.first_token_s = first_token_s
        self.energy = energy

    def generate(self, request):
        return replace(
            super().generate(request), energy=self.energy, first_token_s=self.first_token_s
        )


@pytest.mark.parametrize("recorded", [True, False], ids=["recorded", "estimated"])
def test_receipt_splits_energy_into_prefill_and_decode(sqlite_url, clock, recorded):
    energy = EnergySample(2e-5, "recorded", 0.5) if recorded else None
    settings = make_settings(sqlite_url)
    with build_controller(settings, engine=_FirstToken(0.1, energy), clock=clock.now) as c:
        result = c.chat([{"role": "user", "content": "hi"}])
        assert c.ledger.flush()
        stored = c.ledger.receipts()
        assert c.ledger.verify().ok
    r = result.receipt
    assert r.prefill_kwh > 0 and r.decode_kwh > 0
    assert r.prefill_kwh + r.decode_kwh == pytest.approx(r.energy_kwh, rel=1e-12)
    assert (r.prefill_kwh, r.decode_kwh) == (result.energy.prefill_kwh, result.energy.decode_kwh)
    if recorded:  # no split of its own: by the first token's share of the time
        assert r.prefill_kwh == pytest.approx(2e-5 * 0.1 / 0.5)
    assert stored == [r]


def test_receipt_has_no_split_without_the_first_token_time(sqlite_url, clock):
    settings = make_settings(sqlite_url)
    engine = _FirstToken(None, EnergySample(2e-5, "recorded", 0.5))
    with build_controller(settings, engine=engine, clock=clock.now) as c:
        r = c.chat([{"role": "user", "content": "hi"}]).receipt
        assert c.ledger.flush()
        stored = c.ledger.receipts()
    assert r.prefill_kwh is None and r.decode_kwh is None
    assert stored == [r]


class _Baseline(Policy):
    """A policy that always serves the baseline (a stand-in for a retrained version)."""

    kind = "fixed"

    def __init__(self, directives):
        self.directives = directives

    def decide(self, prompt, carbon, rng):
        return Decision(self.directives.baseline, "fixed")


def test_a_swap_derived_from_a_replaced_policy_is_refused(controller):
    before, version = controller.serving()
    retrained = _Baseline(controller.directives)
    assert controller.swap_policy(retrained, 99)  # no condition: always swaps
    # A writer that derived its policy from `before` must not undo the retrained version.
    stale = _Baseline(controller.directives)
    assert not controller.swap_policy(stale, version, replacing=before)
    assert controller.serving() == (retrained, 99)
    assert controller.swap_policy(stale, 100, replacing=retrained)
    assert controller.serving() == (stale, 100)


class _Successor(_Baseline):
    """Records the policy it was asked to take over from."""

    def __init__(self, directives):
        super().__init__(directives)
        self.predecessors = []

    def take_over(self, previous):
        self.predecessors.append(previous)


def test_a_swapped_in_policy_takes_over_from_the_one_serving(controller):
    from sprout.judge.quality import QualityGuardPolicy, unwrap

    first = _Successor(controller.directives)
    serving, _ = controller.serving()
    controller.swap_policy(first, 1)
    assert first.predecessors == [unwrap(serving)]
    # Inside a quality guard, the policies inside take over from each other.
    guard = QualityGuardPolicy(first, controller.directives.baseline, 0.5)
    assert controller.swap_policy(guard, 1, keep_guard=False)
    assert first.predecessors[-1] is first  # the guard's own swap: the same policy
    second = _Successor(controller.directives)
    controller.swap_policy(second, 2)
    assert second.predecessors == [first]
    assert isinstance(controller.serving()[0], QualityGuardPolicy)  # the guard kept


def test_a_quality_estimate_applies_to_the_policy_swapped_in_meanwhile(controller, monkeypatch):
    from sprout.judge.quality import QualityEstimate, QualityGuardPolicy, unwrap
    from sprout.quality_loop import live as job_module

    levels = tuple(d.name for d in controller.directives)
    estimate = QualityEstimate(
        levels=levels,
        quality=tuple(1.0 / len(levels) for _ in levels),
        at=controller.now(),
        n_verdicts=50,
        weight=50.0,
        preference=0.5,
        floor=0.9,
        l0_share=0.8,
    )
    retrained = _Baseline(controller.directives)
    real = job_module.policy_with_estimate
    calls = []

    def racing(policy, est, baseline):
        calls.append(unwrap(policy))
        if len(calls) == 1:  # a retrained version lands while the estimate is applied
            controller.swap_policy(retrained, 7)
        return real(policy, est, baseline)

    monkeypatch.setattr(job_module, "policy_with_estimate", racing)
    job_module.apply_estimate(controller, estimate, 0.1)
    policy, version = controller.serving()
    assert len(calls) == 2 and calls[1] is retrained
    # The guard wraps the retrained version: neither writer undid the other.
    assert isinstance(policy, QualityGuardPolicy) and unwrap(policy) is retrained
    assert version == 7
