"""OpenTelemetry: each carbon receipt as a span and as metrics, beside an app's own telemetry.

:class:`OTelSink` listens to a controller's receipts (:meth:`Controller.add_listener`) and,
for each one, whatever its outcome:

* ends one span named ``chat {model}`` after the GenAI semantic conventions (their
  ``gen_ai.*`` attributes where they define one, Sprout's own under ``sprout.``), timed by
  the receipt (start ``created_at - latency_s``, end ``created_at``) and parented under the
  span current on the generating thread, so that an app's request span contains it;
* adds to counters of requests, carbon, energy and tokens and to a histogram of each
  request's carbon, by directive, outcome and energy source (low cardinality: no request
  ids, and tenants only when asked for).

The ``otel`` extra (``opentelemetry-api``) is imported when a sink is made, never by
``import sprout``. Exporters are the app's business: the global tracer and meter providers
are used unless others are given (see docs/opentelemetry.md).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sprout._version import __version__
from sprout.errors import ConfigError

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

    from sprout.controller import Controller
    from sprout.receipt import Receipt

#: Instrumentation scope of the spans and metrics.
SCOPE = "sprout"
#: ``gen_ai.operation.name`` of a chat completion.
OPERATION = "chat"
#: The energy unit conversion (exact).
JOULES_PER_KWH = 3_600_000
#: Bucket bounds of the per-request carbon histogram, gCO2e: a short answer on a GPU is
#: around 0.01 g, a long one at a dirty hour a few grams (the SDK's defaults start at 5).
CARBON_BUCKETS_G = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def span_name(receipt: Receipt) -> str:
    """``{gen_ai.operation.name} {gen_ai.request.model}``, as the GenAI conventions name a span."""
    return f"{OPERATION} {receipt.model}" if receipt.model else OPERATION


def span_attributes(receipt: Receipt) -> dict[str, str | int | float]:
    """The span attributes of ``receipt`` (unknown values are left out, as OTel wants).

    ``gen_ai.request.model`` and ``gen_ai.response.model`` are both the model that answered
    (the directive's variant, if it named one); ``gen_ai.provider.name`` (and the older
    ``gen_ai.system``, for backends that predate its rename) is the engine's name.
    """
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": OPERATION,
        "gen_ai.provider.name": receipt.engine,
        "gen_ai.system": receipt.engine,
        "gen_ai.request.model": receipt.model,
        "gen_ai.response.model": receipt.model,
        "gen_ai.usage.input_tokens": receipt.input_tokens,
        "gen_ai.usage.output_tokens": receipt.output_tokens,
        "sprout.request_id": receipt.request_id,
        "sprout.tenant": receipt.tenant,
        "sprout.directive": receipt.directive,
        "sprout.decision": receipt.decision,
        "sprout.outcome": receipt.outcome,
        "sprout.policy_version": receipt.policy_version,
        "sprout.variant": receipt.variant,
        "sprout.purpose": receipt.purpose,
        "sprout.energy.kwh": receipt.energy_kwh,
        "sprout.energy.joules": receipt.energy_kwh * JOULES_PER_KWH,
        "sprout.energy.source": receipt.energy_source,
        "sprout.energy.device": receipt.energy_device or None,
        "sprout.carbon.operational_gco2e": receipt.operational_g,
        "sprout.carbon.embodied_gco2e": receipt.embodied_g,
        "sprout.carbon.total_gco2e": receipt.total_g,
        "sprout.carbon.saving_gco2e": receipt.saving_g,
        "sprout.carbon.baseline_source": receipt.baseline_source,
        "sprout.carbon_intensity.g_per_kwh": receipt.ci_g_per_kwh,
        "sprout.carbon_intensity.provider": receipt.ci_provider,
        "sprout.carbon_intensity.zone": receipt.ci_zone,
        "sprout.carbon_intensity.signal_type": receipt.ci_signal_type,
        "sprout.carbon_intensity.emission_factor": receipt.ci_emission_factor,
        "sprout.carbon_intensity.fallback": receipt.ci_fallback,
        "sprout.carbon_intensity.age_s": receipt.ci_age_s,
    }
    if receipt.outcome == "upstream_failed":
        attrs["error.type"] = receipt.outcome
    return {key: value for key, value in attrs.items() if value is not None}


def metric_attributes(receipt: Receipt, *, tenant: bool = False) -> dict[str, str]:
    """The attributes ``receipt`` is counted under: directive, outcome and energy source, and
    its tenant when ``tenant`` (one series per tenant: mind the cardinality)."""
    attrs = {
        "sprout.directive": receipt.directive,
        "sprout.outcome": receipt.outcome,
        "sprout.energy.source": receipt.energy_source,
    }
    if tenant:
        attrs["sprout.tenant"] = receipt.tenant or ""
    return attrs


def span_times_ns(receipt: Receipt) -> tuple[int, int]:
    """Start and end of ``receipt``'s span, ns since the epoch, on the controller's clock."""
    created = receipt.created_at
    if created.tzinfo is None:  # receipts are UTC; a naive time is taken as such
        created = created.replace(tzinfo=UTC)
    end = (created - _EPOCH) // _MICROSECOND * 1000
    return end - max(0, round(receipt.latency_s * 1e9)), end


class OTelSink:
    """Receipts as OpenTelemetry spans and metrics (see the module's docstring).

    Args:
        tracer_provider: where spans go (default: the global one, ``trace.set_tracer_provider``
            or ``opentelemetry-instrument``).
        meter_provider: where metrics go (default: the global one).
        metrics_tenant: add ``sprout.tenant`` to the metrics' attributes (spans always
            carry it).

    Raises:
        ConfigError: the ``otel`` extra is not installed.
    """

    def __init__(
        self,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        *,
        metrics_tenant: bool = False,
    ) -> None:
        try:
            from opentelemetry import metrics, trace
        except ImportError as e:
            raise ConfigError(
                f"OpenTelemetry needs the otel extra: pip install 'sprout[otel]' ({e})"
            ) from None

        self._trace = trace
        self.metrics_tenant = metrics_tenant
        self.tracer = trace.get_tracer(SCOPE, __version__, tracer_provider)
        meter = metrics.get_meter(SCOPE, __version__, meter_provider)
        self.requests = meter.create_counter(
            "sprout.requests", "{request}", "Requests with a carbon receipt, however they ended."
        )
        self.carbon = meter.create_counter(
            "sprout.carbon.emissions",
            "g{CO2e}",
            "Carbon of the requests, operational plus embodied, gCO2e.",
        )
        # Up and down: a frugal directive can, rarely, cost more than L0 would have.
        self.saving = meter.create_up_down_counter(
            "sprout.carbon.saving",
            "g{CO2e}",
            "Carbon saved against always-L0, over the requests whose counterfactual is known.",
        )
        self.energy = meter.create_counter(
            "sprout.energy", "kW.h", "Energy of the requests, kWh, by how it was obtained."
        )
        self.tokens = meter.create_counter(
            "sprout.tokens", "{token}", "Tokens of the requests, by gen_ai.token.type."
        )
        self.request_carbon = meter.create_histogram(
            "sprout.request.carbon",
            "g{CO2e}",
            "Carbon of one request, operational plus embodied, gCO2e.",
            explicit_bucket_boundaries_advisory=CARBON_BUCKETS_G,
        )
        self._controller: Controller | None = None

    def attach(self, controller: Controller) -> OTelSink:
        """Record every receipt ``controller`` writes, until :meth:`detach` or its close."""
        self.detach()
        controller.add_listener(self.record)
        controller.on_close(self.detach)
        self._controller = controller
        return self

    def detach(self) -> None:
        """Stop recording the attached controller's receipts."""
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.remove_listener(self.record)

    def record(self, receipt: Receipt) -> None:
        """One receipt's span and metrics (a controller listener: on the generating thread,
        so the span's parent is that thread's current span)."""
        trace = self._trace
        start, end = span_times_ns(receipt)
        span = self.tracer.start_span(
            span_name(receipt),
            kind=trace.SpanKind.CLIENT,
            attributes=span_attributes(receipt),
            start_time=start,
        )
        if receipt.outcome == "upstream_failed":
            span.set_status(trace.Status(trace.StatusCode.ERROR, "the model server failed"))
        try:
            # The metrics' exemplars point at this request's span.
            with trace.use_span(span, record_exception=False, set_status_on_exception=False):
                self._count(receipt)
        finally:
            span.end(end_time=end)

    def _count(self, receipt: Receipt) -> None:
        attrs = metric_attributes(receipt, tenant=self.metrics_tenant)
        total_g = max(0.0, receipt.total_g)
        self.requests.add(1, attrs)
        self.carbon.add(total_g, attrs)
        self.request_carbon.record(total_g, attrs)
        self.energy.add(max(0.0, receipt.energy_kwh), attrs)
        self.tokens.add(receipt.input_tokens, {**attrs, "gen_ai.token.type": "input"})
        self.tokens.add(receipt.output_tokens, {**attrs, "gen_ai.token.type": "output"})
        saving = receipt.saving_g
        if saving is not None:
            self.saving.add(saving, attrs)
