"""Receipts as OpenTelemetry spans and metrics (``sprout.otel``), checked with the SDK's
in-memory span exporter and metric reader."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta

import pytest

from sprout.config import load_settings
from sprout.errors import ConfigError
from sprout.factory import build_controller
from sprout.ledger.audit import ledger_report
from tests.support.fake_openai_server import wait_until
from tests.support.fakes import ASK, WORDS, TokenEngine
from tests.support.settings import make_settings

pytest.importorskip("opentelemetry.sdk")
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from sprout.otel import JOULES_PER_KWH, OTelSink, span_attributes, span_times_ns


class Telemetry:
    """An SDK tracer and meter provider that keep what they get in memory."""

    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def sink(self, **kw) -> OTelSink:
        return OTelSink(self.tracer_provider, self.meter_provider, **kw)

    def finished(self, name_prefix: str = "chat"):
        return [s for s in self.spans.get_finished_spans() if s.name.startswith(name_prefix)]

    def points(self, name: str) -> list:
        """The data points of metric ``name`` (cumulative)."""
        data = self.reader.get_metrics_data()
        found = []
        for rm in data.resource_metrics if data else ():
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name == name:
                        found.extend(metric.data.data_points)
        return found

    def total(self, name: str, **attrs: str) -> float:
        points = self.points(name)
        return sum(p.value for p in points if attrs.items() <= dict(p.attributes).items())


@pytest.fixture
def telemetry():
    t = Telemetry()
    yield t
    t.tracer_provider.shutdown()
    t.meter_provider.shutdown()


@pytest.fixture
def settings(tmp_path):
    """The shared ``settings`` without the estimate meter (the meter setting's default)."""
    return make_settings(tmp_path)


def _prompts(controller, n: int) -> list[str]:
    """``n`` bundled prompts the replay engine has every answer of (the judged ones)."""
    return [r.instruction for r in controller.engine.records if r.judge_sampled][:n]


def _ask(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


# ---------------------------------------------------------------- spans


def test_a_completed_request_is_one_span_with_the_receipts_values(settings, telemetry):
    with build_controller(settings, poll=False) as controller:
        telemetry.sink().attach(controller)
        prompt = _prompts(controller, 1)[0]
        receipt = controller.chat(_ask(prompt), tenant="acme").receipt
    (span,) = telemetry.finished()
    assert span.name == f"chat {receipt.model}"
    assert span.kind is SpanKind.CLIENT
    assert span.parent is None
    assert span.status.status_code is StatusCode.UNSET
    assert (span.start_time, span.end_time) == span_times_ns(receipt)
    assert datetime.fromtimestamp(span.end_time / 1e9, UTC) == pytest.approx(
        receipt.created_at, abs=timedelta(microseconds=1)
    )
    assert span.end_time - span.start_time == round(receipt.latency_s * 1e9)
    attrs = dict(span.attributes)
    assert attrs == span_attributes(receipt)
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == attrs["gen_ai.system"] == receipt.engine == "replay"
    assert attrs["gen_ai.request.model"] == attrs["gen_ai.response.model"] == receipt.model
    assert attrs["gen_ai.usage.input_tokens"] == receipt.input_tokens
    assert attrs["gen_ai.usage.output_tokens"] == receipt.output_tokens
    assert attrs["sprout.request_id"] == receipt.request_id
    assert attrs["sprout.tenant"] == "acme"
    assert attrs["sprout.directive"] == receipt.directive
    assert attrs["sprout.decision"] == receipt.decision
    assert attrs["sprout.outcome"] == "completed"
    assert attrs["sprout.policy_version"] == receipt.policy_version is not None
    assert attrs["sprout.energy.kwh"] == receipt.energy_kwh
    assert attrs["sprout.energy.joules"] == pytest.approx(receipt.energy_kwh * JOULES_PER_KWH)
    assert attrs["sprout.energy.source"] == receipt.energy_source == "recorded"
    assert attrs["sprout.carbon.operational_gco2e"] == receipt.operational_g
    assert attrs["sprout.carbon.embodied_gco2e"] == receipt.embodied_g
    assert attrs["sprout.carbon.total_gco2e"] == receipt.total_g
    # The replay engine carries the always-L0 recording: the saving is known.
    assert attrs["sprout.carbon.saving_gco2e"] == receipt.saving_g is not None
    assert attrs["sprout.carbon_intensity.g_per_kwh"] == receipt.ci_g_per_kwh == 400.0
    assert attrs["sprout.carbon_intensity.provider"] == receipt.ci_provider
    assert attrs["sprout.carbon_intensity.zone"] == receipt.ci_zone == "GB"
    assert attrs["sprout.carbon_intensity.signal_type"] == receipt.ci_signal_type
    assert attrs["sprout.carbon_intensity.fallback"] == receipt.ci_fallback
    assert attrs["sprout.carbon_intensity.age_s"] == receipt.ci_age_s
    assert "error.type" not in attrs
    # The metrics' exemplars link to the span.
    (point,) = telemetry.points("sprout.request.carbon")
    assert [e.span_id for e in point.exemplars] == [span.context.span_id]


def test_a_closed_stream_is_a_span_that_says_so(settings, telemetry):
    settings = settings.replace(meter="estimate")
    engine = TokenEngine(WORDS, delay_s=0.01)
    seen = []
    with build_controller(settings, engine=engine, poll=False) as controller:
        telemetry.sink().attach(controller)
        controller.add_listener(seen.append)
        stream = controller.chat_stream(ASK, tenant="acme")
        next(stream)
        stream.close()
        assert wait_until(lambda: len(seen) == 1, timeout_s=5)
    (receipt,) = seen
    (span,) = telemetry.finished()
    assert span.name == "chat token-model"
    assert span.attributes["sprout.outcome"] == "client_closed" == receipt.outcome
    assert span.attributes["sprout.energy.source"] == "estimated"
    assert dict(span.attributes) == span_attributes(receipt)
    assert span.status.status_code is StatusCode.UNSET  # the client left: not an error


def test_an_upstream_failure_is_an_error_span(settings, telemetry):
    settings = settings.replace(meter="estimate")
    with build_controller(settings, engine=TokenEngine(WORDS, fail_after=3), poll=False) as c:
        telemetry.sink().attach(c)
        with pytest.raises(Exception, match="dropped"):
            "".join(c.chat_stream(ASK))
    (span,) = telemetry.finished()
    assert span.attributes["sprout.outcome"] == "upstream_failed"
    assert span.attributes["error.type"] == "upstream_failed"
    assert span.status.status_code is StatusCode.ERROR


def test_the_span_is_a_child_of_the_apps_current_span(settings, telemetry):
    app = telemetry.tracer_provider.get_tracer("app")
    with build_controller(settings.replace(meter="estimate"), poll=False) as controller:
        telemetry.sink().attach(controller)
        prompt = _prompts(controller, 1)[0]
        with app.start_as_current_span("handle question") as parent:
            controller.chat(_ask(prompt))
            # chat_stream generates on a worker thread: the caller's context goes with it.
            with controller.chat_stream(_ask(prompt)) as stream:
                "".join(stream)
        controller.chat(_ask(prompt))  # outside: a root span
    chats = telemetry.finished()
    assert len(chats) == 3
    ctx = parent.get_span_context()
    for span in chats[:2]:
        assert span.parent is not None and span.parent.span_id == ctx.span_id
        assert span.context.trace_id == ctx.trace_id
    assert chats[2].parent is None and chats[2].context.trace_id != ctx.trace_id


def test_detach_stops_the_spans(settings, telemetry):
    with build_controller(settings, poll=False) as controller:
        sink = telemetry.sink().attach(controller)
        prompt = _prompts(controller, 1)[0]
        controller.chat(_ask(prompt))
        sink.detach()
        controller.chat(_ask(prompt))
    assert len(telemetry.finished()) == 1


# ---------------------------------------------------------------- metrics


def test_the_metrics_add_up_to_the_ledgers_totals(settings, telemetry):
    with build_controller(settings, poll=False) as controller:
        telemetry.sink().attach(controller)
        for i, prompt in enumerate(_prompts(controller, 12)):
            controller.chat(_ask(prompt), tenant=f"t{i % 3}", opt_out=i % 4 == 0)
        assert controller.ledger.flush()
        receipts = controller.ledger.receipts()
    totals = ledger_report(settings.db_url).totals
    assert totals.requests == len(receipts) == 12
    assert telemetry.total("sprout.requests") == 12
    assert telemetry.total("sprout.carbon.emissions") == pytest.approx(totals.total_g)
    assert telemetry.total("sprout.energy") == pytest.approx(totals.energy_kwh)
    for source, kwh in totals.kwh_by_source.items():
        assert telemetry.total("sprout.energy", **{"sprout.energy.source": source}) == (
            pytest.approx(kwh)
        )
    assert telemetry.total("sprout.tokens", **{"gen_ai.token.type": "input"}) == (
        totals.input_tokens
    )
    assert telemetry.total("sprout.tokens", **{"gen_ai.token.type": "output"}) == (
        totals.output_tokens
    )
    saving = sum(r.saving_g for r in receipts if r.saving_g is not None)
    assert telemetry.total("sprout.carbon.saving") == pytest.approx(saving)
    (histogram,) = telemetry.points("sprout.request.carbon") or [None]
    assert histogram.count == 12 and histogram.sum == pytest.approx(totals.total_g)
    assert histogram.explicit_bounds[0] == 0.001  # per-request grams, not the SDK's defaults
    # By directive: as many series as directives served, summing to the requests.
    directives = {r.directive for r in receipts}
    by_directive = {
        d: telemetry.total("sprout.requests", **{"sprout.directive": d}) for d in directives
    }
    assert by_directive == {d: sum(r.directive == d for r in receipts) for d in directives}
    # Low cardinality: no request ids, no tenants.
    keys = {k for p in telemetry.points("sprout.requests") for k in p.attributes}
    assert keys == {"sprout.directive", "sprout.outcome", "sprout.energy.source"}


def test_tenants_in_the_metrics_only_when_asked(settings, telemetry):
    with build_controller(settings, poll=False) as controller:
        telemetry.sink(metrics_tenant=True).attach(controller)
        for i, prompt in enumerate(_prompts(controller, 4)):
            controller.chat(_ask(prompt), tenant="acme" if i % 2 else None)
    assert telemetry.total("sprout.requests", **{"sprout.tenant": "acme"}) == 2
    assert telemetry.total("sprout.requests", **{"sprout.tenant": ""}) == 2


def test_every_outcome_is_counted(settings, telemetry):
    settings = settings.replace(meter="estimate")
    with build_controller(settings, engine=TokenEngine(WORDS, delay_s=0.005), poll=False) as c:
        telemetry.sink().attach(c)
        c.chat(ASK)
        stream = c.chat_stream(ASK)
        next(stream)
        stream.close()
        assert wait_until(lambda: telemetry.total("sprout.requests") == 2, timeout_s=5)
    assert telemetry.total("sprout.requests", **{"sprout.outcome": "completed"}) == 1
    assert telemetry.total("sprout.requests", **{"sprout.outcome": "client_closed"}) == 1


# ---------------------------------------------------------------- wiring


def test_the_setting_attaches_a_sink(settings, telemetry, monkeypatch):
    made = []

    def sink(**kw):
        made.append(kw)
        return telemetry.sink(**kw)

    monkeypatch.setattr("sprout.otel.OTelSink", sink)
    env = {"SPROUT_OTEL_ENABLED": "true", "SPROUT_OTEL_METRICS_TENANT": "1"}
    enabled = load_settings(env=env, db_url=settings.db_url, carbon_provider="static")
    assert enabled.otel_enabled and enabled.otel_metrics_tenant
    with build_controller(enabled, poll=False) as controller:
        prompt = _prompts(controller, 1)[0]
        receipt = controller.chat(_ask(prompt), tenant="acme").receipt
    assert made == [{"metrics_tenant": True}]
    (span,) = telemetry.finished()
    assert span.attributes["sprout.request_id"] == receipt.request_id
    assert telemetry.total("sprout.requests", **{"sprout.tenant": "acme"}) == 1
    # Off by default: no sink.
    assert not settings.otel_enabled
    with build_controller(settings, poll=False) as controller:
        assert not controller._listeners
    assert len(made) == 1


def test_the_global_providers_by_default(tmp_path):
    """What an app does: set the SDK's providers, then SPROUT_OTEL_ENABLED=true."""
    code = textwrap.dedent(
        f"""
        from opentelemetry import metrics, trace
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        from sprout import build_controller, load_settings

        spans, reader = InMemorySpanExporter(), InMemoryMetricReader()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(spans))
        trace.set_tracer_provider(provider)
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        env = {{"SPROUT_OTEL_ENABLED": "true"}}
        settings = load_settings(env=env, db_url="sqlite:///{tmp_path / "l.db"}")
        with build_controller(settings, poll=False) as controller:
            controller.chat([{{"role": "user", "content": "What nation invented the kilt?"}}])
        (span,) = spans.get_finished_spans()
        assert span.instrumentation_scope.name == "sprout", span.instrumentation_scope
        names = [
            m.name
            for rm in reader.get_metrics_data().resource_metrics
            for sm in rm.scope_metrics
            for m in sm.metrics
        ]
        assert "sprout.requests" in names and "sprout.carbon.emissions" in names, names
        print(span.name)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("chat ")


def test_enabled_without_the_extra_is_a_clear_error(settings, monkeypatch):
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'sprout\[otel\]'"):
        build_controller(settings.replace(otel_enabled=True), poll=False)
    with pytest.raises(ConfigError, match="otel extra"):
        OTelSink()


def test_a_bad_value_names_the_setting():
    with pytest.raises(ConfigError, match="SPROUT_OTEL_ENABLED"):
        load_settings(env={"SPROUT_OTEL_ENABLED": "maybe"})


def test_importing_sprout_imports_no_opentelemetry(tmp_path):
    code = textwrap.dedent(
        f"""
        import sys
        import sprout, sprout.otel, sprout.factory, sprout.controller
        settings = sprout.load_settings(env={{}}, db_url="sqlite:///{tmp_path / "l.db"}")
        with sprout.build_controller(settings, poll=False) as controller:
            controller.chat([{{"role": "user", "content": "What nation invented the kilt?"}}])
        loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
        assert not loaded, loaded
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


# ---------------------------------------------------------------- proxy


def test_the_proxys_span_is_a_child_of_the_http_request_span(settings, telemetry):
    pytest.importorskip("fastapi")
    from starlette.testclient import TestClient

    from sprout.server import create_app

    app_tracer = telemetry.tracer_provider.get_tracer("asgi")

    def traced(app):
        """Stands for an instrumented server (opentelemetry-instrument's ASGI middleware)."""

        async def asgi(scope, receive, send):
            if scope["type"] != "http":
                return await app(scope, receive, send)
            with app_tracer.start_as_current_span(f"{scope['method']} {scope['path']}"):
                await app(scope, receive, send)

        return asgi

    body = {"model": "llama-2-13b-chat", "messages": _ask("What nation invented the kilt?")}
    with build_controller(settings, poll=False) as controller:
        telemetry.sink().attach(controller)
        with TestClient(traced(create_app(controller, settings=settings))) as client:
            assert client.post("/v1/chat/completions", json=body).status_code == 200
            streamed = client.post("/v1/chat/completions", json={**body, "stream": True})
            assert streamed.status_code == 200
    requests_ = telemetry.finished("POST")
    chats = telemetry.finished()
    assert len(requests_) == 2 and len(chats) == 2
    # The engine runs on the proxy's worker threads: the request's context goes with it.
    assert all(c.parent is not None and c.parent.trace_id == c.context.trace_id for c in chats)
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        # No global provider, so FastAPI's own spans (when it has them) record nothing: the
        # request span is the wrapper's.
        spans = {r.context.span_id for r in requests_}
        assert {c.parent.span_id for c in chats} == spans
