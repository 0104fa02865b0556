"""Sampling live requests for the quality loop: the share, opt-outs, prompts stored only for
sampled requests, and never a cost or a failure on the request path."""

from __future__ import annotations

import random
import threading
import time
from datetime import UTC, datetime

import pytest

from sprout.carbon.trace import load_trace
from sprout.chat import ChatRequest, Message
from sprout.config import load_settings
from sprout.factory import build_controller
from sprout.judge.sampler import Sampler, parse_tenants, prompt_payload
from sprout.ledger.store import Ledger
from sprout.receipt import Receipt

T0 = datetime(2023, 6, 13, tzinfo=UTC)
REQUEST = ChatRequest((Message("user", "hello?"),), max_new_tokens=64)


def _receipt(n: int, **kw) -> Receipt:
    base = dict(
        request_id=f"r{n}",
        created_at=T0,
        directive="L1",
        decision="lp-mix",
        engine="replay",
        model="m",
        input_tokens=1,
        output_tokens=1,
        latency_s=0.1,
        energy_kwh=1e-5,
        energy_source="recorded",
        ci_g_per_kwh=100.0,
        ci_zone="GB",
        ci_provider="trace",
        ci_signal_type="average",
        ci_emission_factor="direct",
        ci_time=T0,
        ci_age_s=0.0,
        ci_fallback="provider",
        operational_g=1e-3,
        embodied_g=1e-4,
    )
    return Receipt(**{**base, **kw})


class _RecordingLedger:
    """Stands in for the ledger: records, or blocks, or fails."""

    def __init__(self, delay_s: float = 0.0, fail: bool = False) -> None:
        self.rows: list[tuple] = []
        self.delay_s, self.fail = delay_s, fail
        self.gate = threading.Event()

    def add_sampled_prompt(self, request_id, prompt, **kw):
        if self.delay_s:
            self.gate.wait(self.delay_s)
        if self.fail:
            raise RuntimeError("database is down")
        self.rows.append((request_id, prompt, kw))
        return True


def test_a_configured_share_is_sampled_with_its_own_draws() -> None:
    ledger = _RecordingLedger()
    sampler = Sampler(ledger, 0.25, rng=random.Random(3), background=False)
    picked = [sampler.offer(_receipt(n), REQUEST, "answer") for n in range(4000)]
    assert sum(picked) == sampler.stats.sampled == len(ledger.rows)
    assert sum(picked) / len(picked) == pytest.approx(0.25, abs=0.03)
    _request_id, payload, kw = ledger.rows[0]
    assert kw == {"created_at": T0, "tenant": None}  # keyed to the receipt
    assert payload == prompt_payload(REQUEST, "answer", _receipt(0))
    assert payload["messages"] == [{"role": "user", "content": "hello?"}]
    assert payload["answer"] == "answer" and payload["directive"] == "L1"


def test_opted_out_requests_and_tenants_and_evaluations_are_never_sampled() -> None:
    ledger = _RecordingLedger()
    sampler = Sampler(ledger, 1.0, opt_out_tenants="acme, beta ,", background=False)
    assert sampler.opt_out_tenants == frozenset({"acme", "beta"})
    never = [
        _receipt(1, decision="opt-out"),
        _receipt(2, tenant="acme"),
        _receipt(3, tenant="beta"),
        _receipt(4, purpose="evaluation"),
    ]
    assert not any(sampler.offer(r, REQUEST, "a") for r in never)
    assert sampler.offer(_receipt(5, tenant="gamma"), REQUEST, "a")
    assert [row[0] for row in ledger.rows] == ["r5"]
    assert parse_tenants(["x", " ", "y "]) == frozenset({"x", "y"})


def test_share_zero_stores_nothing() -> None:
    ledger = _RecordingLedger()
    sampler = Sampler(ledger, 0.0, background=False)
    assert not any(sampler.offer(_receipt(n), REQUEST, "a") for n in range(100))
    assert ledger.rows == [] and sampler.stats.offered == 100


def test_storing_never_blocks_or_fails_the_caller() -> None:
    slow = _RecordingLedger(delay_s=5.0)
    sampler = Sampler(slow, 1.0, queue_size=2)
    started = time.perf_counter()
    for n in range(10):
        assert sampler.offer(_receipt(n), REQUEST, "a")
    assert time.perf_counter() - started < 0.5  # the writer thread waits, not the caller
    assert sampler.stats.dropped >= 7  # a full queue drops samples, never blocks
    slow.gate.set()
    assert sampler.flush(5.0)
    sampler.close()
    assert len(slow.rows) == 10 - sampler.stats.dropped

    broken = Sampler(_RecordingLedger(fail=True), 1.0)
    assert broken.offer(_receipt(1), REQUEST, "a")
    assert broken.flush(5.0) and broken.stats.failed == 1
    broken.close()
    assert not broken.offer(_receipt(2), REQUEST, "a")  # closed: ignored


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        Sampler(_RecordingLedger(), 1.5)
    with pytest.raises(ValueError):
        Sampler(_RecordingLedger(), 0.5, queue_size=0)
    from sprout.errors import ConfigError

    with pytest.raises(ConfigError, match="judge_sample_share"):
        load_settings(env={}, judge_sample_share=2)


@pytest.fixture
def controller(sqlite_url, clock):
    trace = load_trace("GB")
    clock.t = trace.time_of(3912)
    settings = load_settings(
        env={}, db_url=sqlite_url, judge_sample_share=0.5, judge_opt_out_tenants="private"
    )
    c = build_controller(settings, clock=clock.now, monotonic=clock.monotonic, rng=random.Random(2))
    yield c
    c.close()


def test_controller_keeps_prompts_only_of_sampled_requests(controller, judged_records) -> None:
    results = []
    for k, record in enumerate(judged_records[:40]):
        results.append(
            controller.chat(
                [
                    {"role": "system", "content": "Be precise."},
                    {"role": "user", "content": record.instruction},
                ],
                prompt_id=record.id,
                tenant="private" if k % 4 == 0 else "public",
                opt_out=k % 4 == 1,
            )
        )
    assert controller.sampler.flush()
    controller.ledger.flush()
    rows = controller.ledger.sampled_prompts()
    by_id = {r.receipt.request_id: r for r in results}
    assert 0 < len(rows) == controller.sampler.stats.stored == controller.sampler.stats.sampled
    for row in rows:
        result = by_id[row["request_id"]]
        assert result.receipt.tenant == "public" and result.receipt.decision != "opt-out"
        assert row["created_at"] == result.receipt.created_at
        # The app's own messages (before the directive's system prompt was merged in).
        assert row["prompt"]["messages"][0] == {"role": "system", "content": "Be precise."}
        assert row["prompt"]["answer"] == result.text
        assert row["prompt"]["prompt_id"] == result.receipt.prompt_id
    assert len(controller.ledger.receipts()) == 40  # sampling never cost a receipt


def test_a_failing_sampler_never_fails_a_request(controller, judged_records, monkeypatch) -> None:
    def boom(*a, **k):
        raise RuntimeError("sampler bug")

    monkeypatch.setattr(controller.sampler, "offer", boom)
    result = controller.chat([{"role": "user", "content": judged_records[0].instruction}])
    assert result.text and result.receipt.directive in ("L0", "L1", "L2")


def test_sampling_is_off_by_default(sqlite_url, clock) -> None:
    c = build_controller(load_settings(env={}, db_url=sqlite_url), clock=clock.now)
    try:
        assert c.sampler is None
    finally:
        c.close()
    ledger = Ledger(sqlite_url)
    try:
        assert ledger.sampled_prompts() == []
    finally:
        ledger.close()
