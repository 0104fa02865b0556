"""Every generation that spent energy gets a receipt, with how it ended.

Outcomes: ``completed``, ``client_closed``, ``upstream_failed``, ``guard_cut``; through
:meth:`Controller.chat`, :meth:`Controller.chat_stream` and the proxy (``sprout serve``) in
front of a fake upstream on 127.0.0.1, streamed and not.
"""

from __future__ import annotations

import json
import time

import pytest
import requests

from sprout.cli import main
from sprout.controller import Controller, StreamClosed
from sprout.energy.base import EnergyMeter, EnergySample, Usage
from sprout.engines.guards import BABBLE_CODE_BLOCK
from sprout.errors import EngineError
from sprout.factory import build_controller
from sprout.ledger.audit import ledger_report
from tests.support.fake_openai_server import FakeOpenAIServer, wait_until
from tests.support.fakes import ASK, WORDS, TokenEngine
from tests.support.settings import ledger_url, proxy_settings


class MeasuringMeter(EnergyMeter):
    """A meter that sees the model's device (as NVML would): 1 J per 10 ms."""

    source = "measured-nvml"

    def __init__(self) -> None:
        self.opened: dict[str, float] = {}

    def begin(self, window: str) -> None:
        self.opened[window] = time.perf_counter()

    def end(self, window: str, usage: Usage) -> EnergySample:
        seconds = time.perf_counter() - self.opened.pop(window)
        return EnergySample(seconds * 100 / 3_600_000, "measured-nvml", seconds, "gpu:0")


def _controller(settings, engine, **kw):
    return build_controller(settings, engine=engine, poll=False, **kw)


def _receipts(controller):
    assert controller.ledger.flush()
    return controller.ledger.receipts()


# ---------------------------------------------------------------- controller


def test_a_completed_generation_says_so(settings):
    with _controller(settings, TokenEngine(WORDS[:5])) as controller:
        result = controller.chat(ASK)
        assert result.receipt.outcome == "completed"
        assert [r.outcome for r in _receipts(controller)] == ["completed"]


def test_a_guard_cut_generation_says_so(settings):
    engine = TokenEngine(WORDS[:5], finish_reason=BABBLE_CODE_BLOCK)
    with _controller(settings, engine) as controller:
        assert controller.chat(ASK).receipt.outcome == "guard_cut"
        assert [r.outcome for r in _receipts(controller)] == ["guard_cut"]


def test_a_guard_cut_chat_stream_says_so(settings):
    engine = TokenEngine(WORDS[:6], finish_reason=BABBLE_CODE_BLOCK)
    with _controller(settings, engine) as controller:
        with controller.chat_stream(ASK) as stream:
            deltas = list(stream)
        assert "".join(deltas) == "".join(WORDS[:6])
        assert stream.result.receipt.outcome == "guard_cut"
        assert [r.outcome for r in _receipts(controller)] == ["guard_cut"]


def test_a_closed_chat_stream_records_what_was_generated(settings):
    engine = TokenEngine(WORDS, delay_s=0.01)
    seen = []
    with _controller(settings, engine) as controller:
        controller.add_listener(seen.append)
        stream = controller.chat_stream(ASK, tenant="acme")
        first = [next(stream) for _ in range(3)]
        stream.close()
        assert wait_until(lambda: len(seen) == 1, timeout_s=5)
        (receipt,) = _receipts(controller)
    assert first == WORDS[:3]
    assert receipt == seen[0] and receipt.request_id == stream.request_id
    assert receipt.outcome == "client_closed" and receipt.tenant == "acme"
    # Energy and tokens up to where it stopped: an estimate, and labelled so.
    assert receipt.energy_source == "estimated" and receipt.energy_kwh > 0
    assert 3 <= receipt.output_tokens < len(WORDS) and engine.generated < len(WORDS)
    assert receipt.input_tokens > 0 and receipt.latency_s >= 0.03
    assert receipt.total_g > 0


def test_an_interrupted_generation_is_measured_where_the_meter_sees_it(settings):
    engine = TokenEngine(WORDS, delay_s=0.01)
    with _controller(settings, engine) as built:
        c = Controller(
            engine, built.signal, built.policy, built.directives,
            ledger=built.ledger, meter=MeasuringMeter(),
        )  # fmt: skip
        stream = c.chat_stream(ASK)
        next(stream)
        stream.close()
        assert wait_until(lambda: c.ledger.flush() and c.ledger.count_receipts() == 1)
        (receipt,) = c.ledger.receipts()
    assert receipt.outcome == "client_closed"
    assert receipt.energy_source == "measured-nvml" and receipt.energy_device == "gpu:0"


def test_an_upstream_failure_mid_stream_records_what_was_generated(settings):
    engine = TokenEngine(WORDS, fail_after=7)
    with _controller(settings, engine) as controller:
        stream = controller.chat_stream(ASK)
        deltas = []
        with pytest.raises(EngineError, match="dropped"):
            deltas.extend(stream)
        (receipt,) = _receipts(controller)
    assert "".join(deltas) == "".join(WORDS[:7])
    assert receipt.outcome == "upstream_failed" and receipt.energy_source == "estimated"
    assert receipt.output_tokens >= 7 and receipt.model == "token-model"


@pytest.mark.parametrize(("reached", "receipts"), [(True, 1), (False, 0)])
def test_a_failed_non_streamed_call_has_a_receipt_only_if_the_model_worked(
    settings, reached, receipts
):
    engine = TokenEngine(WORDS[:3], fail_after=3, reached=reached)
    with _controller(settings, engine) as controller:
        with pytest.raises(EngineError):
            controller.chat(ASK)
        stored = _receipts(controller)
    assert len(stored) == receipts
    if stored:  # the model ran, the answer never arrived: its time, no output tokens
        assert stored[0].outcome == "upstream_failed" and stored[0].output_tokens == 0
        assert stored[0].input_tokens > 0 and stored[0].energy_kwh > 0


def test_a_listener_that_raises_fails_no_request(settings):
    def broken(receipt):
        raise RuntimeError("metrics backend down")

    with _controller(settings, TokenEngine(WORDS[:2])) as controller:
        controller.add_listener(broken)
        assert controller.chat(ASK).receipt.outcome == "completed"
        controller.remove_listener(broken)
        assert len(_receipts(controller)) == 1


def test_stream_closed_is_what_a_sink_raises(settings):
    class LeavingSink:
        def start(self, request_id, request, decision):
            pass

        def text(self, delta):
            raise StreamClosed("gone")

    with _controller(settings, TokenEngine(WORDS)) as controller:
        with pytest.raises(StreamClosed):
            controller.chat(ASK, stream=LeavingSink())
        (receipt,) = _receipts(controller)
    assert receipt.outcome == "client_closed" and receipt.output_tokens >= 1


def test_the_report_groups_and_filters_by_outcome(settings, capsys):
    with _controller(settings, TokenEngine(WORDS[:4], delay_s=0.005)) as controller:
        for _ in range(3):
            controller.chat(ASK)
        stream = controller.chat_stream(ASK)
        next(stream)
        stream.close()
        assert wait_until(lambda: controller.ledger.flush() and len(_receipts(controller)) == 4)
    report = ledger_report(settings.db_url, group_by="outcome")
    counts = {row.group: row.requests for row in report.rows}
    assert counts == {"completed": 3, "client_closed": 1}
    only = ledger_report(settings.db_url, group_by="day", filters={"outcome": "client_closed"})
    assert sum(row.requests for row in only.rows) == 1
    # The same from the command line.
    assert main(["ledger", "report", "--db", settings.db_url, "--group-by", "outcome"]) == 0
    table = capsys.readouterr().out
    assert "client_closed" in table and "completed" in table
    args = ["ledger", "report", "--db", settings.db_url, "--outcome", "completed", "--format"]
    assert main([*args, "json"]) == 0
    assert sum(row["requests"] for row in json.loads(capsys.readouterr().out)["rows"]) == 3


# ---------------------------------------------------------------- proxy


fastapi = pytest.importorskip("fastapi")

from sprout.server import create_app  # noqa: E402
from tests.support.servers import running  # noqa: E402


def _proxy_settings(tmp_path, upstream_url, **kw):
    db = ledger_url(tmp_path, "proxy.db")
    return proxy_settings(db, upstream_url, "m", **{"server_threads": 8, **kw})


def _outcome_counts(metrics_text: str) -> dict[str, float]:
    """The non-zero series of ``sprout_requests_outcome_total``, by outcome."""
    counts = {}
    for line in metrics_text.splitlines():
        if line.startswith("sprout_requests_outcome_total{"):
            label = line.split('outcome="', 1)[1].split('"', 1)[0]
            value = float(line.rsplit(" ", 1)[1])
            if value:
                counts[label] = value
    return counts


@pytest.fixture
def proxy(tmp_path):
    """A running proxy in front of a slow 50-chunk upstream: (base URL, controller, server)."""
    reply = "".join(WORDS)
    with FakeOpenAIServer(reply, chunk_delay_s=0.02) as upstream:
        controller = build_controller(_proxy_settings(tmp_path, upstream.url), poll=False)
        try:
            app = create_app(controller, settings=_proxy_settings(tmp_path, upstream.url))
            with running(app) as base:
                yield base, controller, upstream
        finally:
            controller.close()


def _stream_body(content: str = "Tell me about the Eiffel Tower.") -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": content}], "stream": True}


def test_proxy_client_that_reads_three_chunks_and_leaves_gets_a_receipt(proxy):
    base, controller, upstream = proxy
    for _ in range(2):
        with requests.post(f"{base}/chat/completions", json=_stream_body(), stream=True) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            read = 0
            while read < 3:  # the role chunk, then text chunks
                if next(lines).startswith(b"data: "):
                    read += 1
    assert wait_until(lambda: upstream.aborted_streams == 2, timeout_s=5)
    assert upstream.chunks_sent < 2 * len(WORDS)
    assert wait_until(lambda: controller.ledger.flush() and controller.ledger.count_receipts() == 2)
    receipts = controller.ledger.receipts()
    assert {r.outcome for r in receipts} == {"client_closed"}
    assert all(0 < r.output_tokens < len(WORDS) and r.energy_kwh > 0 for r in receipts)
    assert _outcome_counts(requests.get(f"{base.removesuffix('/v1')}/metrics").text) == {
        "client_closed": 2.0
    }


def test_proxy_client_that_times_out_before_the_first_token_gets_a_receipt(proxy):
    base, controller, upstream = proxy
    upstream.inject(("slow", 1.0))
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(f"{base}/chat/completions", json=_stream_body(), timeout=(2.0, 0.3))
    # The upstream answers after a second; the proxy stops it at its first token.
    assert wait_until(lambda: upstream.aborted_streams == 1, timeout_s=5)
    assert wait_until(lambda: controller.ledger.flush() and controller.ledger.count_receipts() == 1)
    (receipt,) = controller.ledger.receipts()
    assert receipt.outcome == "client_closed" and receipt.latency_s >= 0.9
    assert receipt.output_tokens <= 2


@pytest.mark.parametrize("stream", [False, True])
def test_proxy_upstream_failures_after_the_model_started_get_a_receipt(proxy, stream):
    base, controller, upstream = proxy
    upstream.inject("garbage" if not stream else "drop-mid-stream", 503)
    body = {**_stream_body(), "stream": stream}
    first = requests.post(f"{base}/chat/completions", json=body, timeout=10)
    second = requests.post(f"{base}/chat/completions", json=body, timeout=10)
    assert second.status_code == 502  # the 503: refused, nothing generated, no receipt
    assert first.status_code == (200 if stream else 502)
    assert controller.ledger.flush()
    (receipt,) = controller.ledger.receipts()
    assert receipt.outcome == "upstream_failed" and receipt.energy_source == "estimated"
    counts = _outcome_counts(requests.get(f"{base.removesuffix('/v1')}/metrics").text)
    assert counts == {"upstream_failed": 1.0}


def test_proxy_guard_cut_is_counted(tmp_path):
    reply = "```python\nprint(1)\n```\n" + "Hope this helps! Let me know if you need more. " * 5
    with FakeOpenAIServer(reply) as upstream:
        settings = _proxy_settings(tmp_path, upstream.url, babble_guard=True)
        controller = build_controller(settings, poll=False)
        try:
            with running(create_app(controller, settings=settings)) as base:
                for stream in (False, True):
                    body = {**_stream_body("Print one in Python."), "stream": stream}
                    r = requests.post(f"{base}/chat/completions", json=body, timeout=10)
                    assert r.status_code == 200 and "Hope this helps" not in r.text
                metrics = requests.get(f"{base.removesuffix('/v1')}/metrics").text
            assert controller.ledger.flush()
            assert [r.outcome for r in controller.ledger.receipts()] == ["guard_cut"] * 2
            assert _outcome_counts(metrics) == {"guard_cut": 2.0}
        finally:
            controller.close()
