"""Prometheus metrics in the text exposition format, written without a client library.

The format is a few lines per sample (``# HELP``, ``# TYPE``, ``name{label="v"} value``),
so a small thread-safe registry here saves a dependency. :class:`SproutMetrics` holds what
the proxy exports: requests by directive and by outcome, carbon and energy served, errors,
and gauges read at scrape time (carbon intensity, signal age, ledger backlog).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

# How a request ended; a client gone while still sending its request is client_closed too.
from sprout.receipt import OUTCOMES

if TYPE_CHECKING:
    from sprout.carbon.signal import SignalReading
    from sprout.controller import Controller
    from sprout.receipt import Receipt

#: The ``Content-Type`` of the text exposition format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = tuple[tuple[str, str], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _sample(name: str, labels: Labels, value: float) -> str:
    if not labels:
        return f"{name} {_number(value)}"
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return f"{name}{{{inner}}} {_number(value)}"


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help_text: str, labelnames: tuple[str, ...] = ()) -> None:
        self.name = name
        self.help = help_text
        self.labelnames = labelnames
        self._values: dict[Labels, float] = {}
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> Labels:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name}: labels {sorted(labels)} != {list(self.labelnames)}")
        return tuple((k, str(labels[k])) for k in self.labelnames)

    def samples(self) -> Iterable[tuple[Labels, float]]:
        with self._lock:
            return list(self._values.items())

    def value(self, **labels: str) -> float:
        """The current value for ``labels`` (0 if never set)."""
        with self._lock:
            return self._values.get(self._key(labels), 0.0)


class Counter(_Metric):
    """A monotonically increasing total."""

    kind = "counter"

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        """Add ``amount`` (>= 0)."""
        if amount < 0:
            raise ValueError(f"{self.name}: a counter cannot decrease")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount


class Gauge(_Metric):
    """A value that goes up and down, set directly or read at scrape time."""

    kind = "gauge"

    def __init__(
        self,
        name: str,
        help_text: str,
        labelnames: tuple[str, ...] = (),
        read: Callable[[], Iterable[tuple[dict[str, str], float]]] | None = None,
    ) -> None:
        super().__init__(name, help_text, labelnames)
        self._read = read

    def set(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def samples(self) -> Iterable[tuple[Labels, float]]:
        if self._read is None:
            return super().samples()
        return [(self._key(labels), value) for labels, value in self._read()]


class Registry:
    """Metrics rendered together."""

    def __init__(self) -> None:
        self._metrics: list[_Metric] = []

    def counter(self, name: str, help_text: str, labelnames: tuple[str, ...] = ()) -> Counter:
        metric = Counter(name, help_text, labelnames)
        self._metrics.append(metric)
        return metric

    def gauge(
        self,
        name: str,
        help_text: str,
        labelnames: tuple[str, ...] = (),
        read: Callable[[], Iterable[tuple[dict[str, str], float]]] | None = None,
    ) -> Gauge:
        metric = Gauge(name, help_text, labelnames, read)
        self._metrics.append(metric)
        return metric

    def render(self) -> str:
        """All metrics in the text exposition format."""
        lines: list[str] = []
        for metric in self._metrics:
            try:
                samples = list(metric.samples())
            except Exception as e:  # a failing gauge must not take the whole page down
                lines.append(f"# {metric.name} unavailable: {type(e).__name__}")
                continue
            lines.append(f"# HELP {metric.name} {_escape(metric.help)}")
            lines.append(f"# TYPE {metric.name} {metric.kind}")
            lines.extend(_sample(metric.name, labels, value) for labels, value in samples)
        return "\n".join(lines) + "\n"


class SproutMetrics:
    """What a Sprout proxy exports about the requests it served.

    Args:
        controller: read at scrape time for the carbon signal and the ledger backlog.
    """

    def __init__(self, controller: Controller | None = None) -> None:
        self.controller = controller
        r = self.registry = Registry()
        self.requests = r.counter(
            "sprout_requests_total",
            "Requests answered, by directive and decision reason.",
            ("directive", "decision"),
        )
        self.outcomes = r.counter(
            "sprout_requests_outcome_total",
            "Requests by how they ended: completed, client_closed, upstream_failed, guard_cut.",
            ("outcome",),
        )
        for name in OUTCOMES:  # every series exists from the start, so rate() sees the first
            self.outcomes.inc(0, outcome=name)
        self.errors = r.counter(
            "sprout_request_errors_total",
            "Requests refused or failed, by HTTP status and error code.",
            ("status", "code"),
        )
        self.carbon = r.counter(
            "sprout_carbon_gco2e_total", "Carbon of the answered requests (operational + embodied)."
        )
        # A gauge: a frugal directive can, rarely, cost more than L0 would have.
        self.saving = r.gauge(
            "sprout_carbon_saving_gco2e",
            "Net carbon saved against always-L0, over the requests whose counterfactual is known.",
        )
        self.saving.set(0)
        self.energy = r.counter(
            "sprout_energy_kwh_total", "Energy of the answered requests, by source.", ("source",)
        )
        self.tokens = r.counter(
            "sprout_tokens_total", "Tokens of the answered requests.", ("kind",)
        )
        self.in_flight = r.gauge("sprout_requests_in_flight", "Requests being answered now.")
        self.in_flight.set(0)
        r.gauge(
            "sprout_carbon_intensity_g_per_kwh",
            "Carbon intensity the next request is decided on.",
            read=lambda: [({}, self._signal().reading.ci_g_per_kwh)] if self._has_signal() else [],
        )
        r.gauge(
            "sprout_carbon_signal_age_seconds",
            "Age of the carbon reading in use.",
            read=lambda: [({}, self._signal().age_s)] if self._has_signal() else [],
        )
        r.gauge(
            "sprout_carbon_signal_info",
            "The carbon reading in use: provider, zone and fallback layer (value 1).",
            ("provider", "zone", "fallback"),
            read=self._signal_info,
        )
        r.gauge(
            "sprout_ledger_backlog",
            "Receipts queued for the ledger and not yet committed.",
            read=lambda: [({}, float(self._ledger_pending()))] if self._has_ledger() else [],
        )
        r.gauge(
            "sprout_ledger_spooled",
            "Receipts spooled to disk while the ledger database was unreachable.",
            read=lambda: [({}, float(self._ledger_spooled()))] if self._has_ledger() else [],
        )

    def _has_signal(self) -> bool:
        return self.controller is not None

    def _signal(self) -> SignalReading:
        assert self.controller is not None
        return self.controller.signal.read()

    def _signal_info(self) -> list[tuple[dict[str, str], float]]:
        if not self._has_signal():
            return []
        signal = self._signal()
        reading = signal.reading
        return [
            ({"provider": reading.provider, "zone": reading.zone, "fallback": signal.fallback}, 1.0)
        ]

    def _has_ledger(self) -> bool:
        return self.controller is not None and self.controller.ledger is not None

    def _ledger_pending(self) -> int:
        assert self.controller is not None and self.controller.ledger is not None
        return self.controller.ledger.pending()

    def _ledger_spooled(self) -> int:
        assert self.controller is not None and self.controller.ledger is not None
        return self.controller.ledger.spooled()

    def observe(self, receipt: Receipt) -> None:
        """Count one request that has a receipt (answered, or stopped after it started)."""
        self.outcome(getattr(receipt, "outcome", "completed"))
        self.requests.inc(directive=receipt.directive, decision=receipt.decision)
        self.carbon.inc(max(0.0, receipt.total_g))
        saving = receipt.saving_g
        if saving is not None:
            self.saving.inc(saving)
        self.energy.inc(max(0.0, receipt.energy_kwh), source=receipt.energy_source)
        self.tokens.inc(receipt.input_tokens, kind="input")
        self.tokens.inc(receipt.output_tokens, kind="output")

    def outcome(self, name: str) -> None:
        """Count one request that ended as ``name`` (one of :data:`sprout.receipt.OUTCOMES`)."""
        self.outcomes.inc(outcome=name)

    def error(self, status: int, code: str) -> None:
        """Count one refused or failed request."""
        self.errors.inc(status=str(status), code=code)

    def render(self) -> str:
        """The metrics page."""
        return self.registry.render()
