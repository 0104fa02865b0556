"""The controller: Sprout's in-process middleware for one chat request.

``Controller.chat`` reads the carbon signal, lets the policy choose a directive, applies
it, calls the engine, takes an energy sample, writes a receipt to the ledger and returns the
answer with its receipt. Nothing the ledger or the carbon provider does can fail a request:
the signal falls back, the policy falls back to the baseline directive, the ledger spools.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sprout.accounting import embodied_rate_g_per_s, request_carbon
from sprout.carbon.base import utcnow
from sprout.chat import ChatRequest, Message, parse_messages
from sprout.directives import DirectiveSet
from sprout.energy.base import EnergyMeter, EnergySample, Usage
from sprout.engines.base import Engine, Generation
from sprout.errors import SproutError
from sprout.policy.base import Decision, Policy
from sprout.policy.history import CIWindow
from sprout.receipt import Receipt

if TYPE_CHECKING:
    from sprout.carbon.signal import CarbonSignal, SignalReading
    from sprout.ledger.store import Ledger


log = logging.getLogger("sprout.controller")


@dataclass(frozen=True)
class ChatResult:
    """The answer to one request, with its receipt."""

    text: str
    receipt: Receipt
    generation: Generation


class Controller:
    """Carbon-aware middleware around an engine.

    Args:
        engine: answers the shaped requests.
        signal: the cached carbon signal.
        policy: chooses each request's directive.
        directives: the directive set (its first directive is the baseline).
        ledger: where receipts go (None: receipts are only returned).
        meter: measures or estimates energy when the engine reports none.
        ci_window_hours: history the policy's CI min/max/mean is taken over.
        embodied_g_per_s: embodied carbon rate of the serving hardware.
        policy_version: id of the stored policy version, recorded in receipts.
        clock: wall clock (injectable for replays and tests).
        rng: randomness for mixed policies (seed it for reproducible runs).
    """

    def __init__(
        self,
        engine: Engine,
        signal: CarbonSignal,
        policy: Policy,
        directives: DirectiveSet,
        *,
        ledger: Ledger | None = None,
        meter: EnergyMeter | None = None,
        ci_window_hours: int = 720,
        embodied_g_per_s: float | None = None,
        policy_version: int | None = None,
        clock: Callable[[], datetime] = utcnow,
        rng: random.Random | None = None,
    ) -> None:
        self.engine = engine
        self.signal = signal
        self.policy = policy
        self.directives = directives
        self.ledger = ledger
        self._meter = meter
        self.window = CIWindow(ci_window_hours)
        self.embodied_g_per_s = (
            embodied_rate_g_per_s() if embodied_g_per_s is None else embodied_g_per_s
        )
        self.policy_version = policy_version
        self._clock = clock
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._seed_history()

    @property
    def meter(self) -> EnergyMeter:
        """The energy meter (the estimate meter unless one was given)."""
        if self._meter is None:
            from sprout.energy.estimate import EstimateMeter

            self._meter = EstimateMeter()
        return self._meter

    def _seed_history(self) -> None:
        """Fill the CI window from the provider's history, when it has one."""
        now = self._clock()
        start = now - timedelta(hours=self.window.hours)
        try:
            readings = self.signal.provider.history(self.signal.zone, start, now)
        except Exception as e:  # history is an optimisation: the window also fills live
            log.warning("carbon history unavailable, starting with an empty window: %s", e)
            return
        for reading in readings:
            self.window.add(reading.time, reading.ci_g_per_kwh)

    def _decide(self, prompt: str, signal: SignalReading, opt_out: bool) -> Decision:
        if opt_out:
            return Decision(self.directives.baseline, "opt-out")
        with self._lock:
            observed = signal.fallback != "default"  # a configured default is no observation
            if observed:
                self.window.add(signal.reading.time, signal.reading.ci_g_per_kwh)
            context = self.window.context(signal.reading.ci_g_per_kwh, include_current=observed)
            try:
                return self.policy.decide(prompt, context, self._rng)
            except SproutError as e:
                # Serving the baseline costs carbon but never quality: the safe side.
                log.warning("policy failed, serving the baseline directive: %s", e)
                return Decision(self.directives.baseline, "fallback")

    def chat(
        self,
        messages: Sequence[Message | dict[str, Any]],
        *,
        max_new_tokens: int | None = None,
        tenant: str | None = None,
        opt_out: bool = False,
        request_id: str | None = None,
        prompt_id: str | None = None,
    ) -> ChatResult:
        """Answer one chat request carbon-aware.

        Args:
            messages: OpenAI-style messages (dicts with ``role`` and ``content``).
            max_new_tokens: the app's own token cap (the directive's cap may lower it).
            tenant: the app's tenant id, recorded in the receipt.
            opt_out: serve the baseline directive (recorded as ``opt-out``).
            request_id: an id for the receipt (default: a random UUID).
            prompt_id: an id of the prompt (e.g. a bundled workload id), for audits.

        Raises:
            RequestError: the messages are malformed (nothing is generated).
            EngineError: the engine failed (no receipt is written: nothing was served).
        """
        parsed = parse_messages(messages)
        request_id = request_id or uuid.uuid4().hex
        signal = self.signal.read()
        base = ChatRequest(parsed, max_new_tokens=max_new_tokens)
        decision = self._decide(base.prompt, signal, opt_out)
        request = decision.directive.apply(base)

        meter = self.meter
        meter.begin(request_id)
        try:
            generation = self.engine.generate(request)
        except BaseException:
            with contextlib.suppress(Exception):  # close the window; the engine error wins
                meter.end(request_id, Usage(0, 0, 0.0, request.variant))
            raise
        sample = meter.end(
            request_id,
            Usage(
                generation.input_tokens,
                generation.output_tokens,
                generation.latency_s,
                request.variant,
            ),
        )
        # An engine that knows its own energy (a replay's recording) takes precedence.
        energy = generation.energy or sample
        receipt = self._receipt(
            request_id, request, decision, generation, energy, signal, tenant, prompt_id
        )
        if self.ledger is not None:
            try:
                self.ledger.append(receipt)
            except Exception as e:  # the ledger must never fail a request
                log.error("receipt %s could not be queued: %s", request_id, e)
        return ChatResult(generation.text, receipt, generation)

    def _receipt(
        self,
        request_id: str,
        request: ChatRequest,
        decision: Decision,
        generation: Generation,
        energy: EnergySample,
        signal: SignalReading,
        tenant: str | None,
        prompt_id: str | None,
    ) -> Receipt:
        reading = signal.reading
        ci = reading.ci_g_per_kwh
        carbon = request_carbon(energy.energy_kwh, generation.latency_s, ci, self.embodied_g_per_s)
        baseline_kwh = generation.baseline_energy_kwh
        baseline_time = generation.baseline_time_s
        baseline_source: str | None = "recorded" if baseline_kwh is not None else None
        if baseline_kwh is None and decision.directive.name == self.directives.baseline.name:
            baseline_kwh, baseline_time, baseline_source = (
                energy.energy_kwh,
                generation.latency_s,
                energy.source,
            )
        baseline_g = None
        if baseline_kwh is not None and baseline_time is not None:
            baseline_g = request_carbon(
                baseline_kwh, baseline_time, ci, self.embodied_g_per_s
            ).total_g
        return Receipt(
            request_id=request_id,
            created_at=self._clock(),
            directive=decision.directive.name,
            decision=decision.reason,
            engine=self.engine.name,
            model=generation.model,
            input_tokens=generation.input_tokens,
            output_tokens=generation.output_tokens,
            latency_s=generation.latency_s,
            energy_kwh=energy.energy_kwh,
            energy_source=energy.source,
            energy_device=energy.device,
            ci_g_per_kwh=ci,
            ci_zone=reading.zone,
            ci_provider=reading.provider,
            ci_signal_type=reading.signal_type,
            ci_emission_factor=reading.emission_factor,
            ci_time=reading.time,
            ci_age_s=signal.age_s,
            ci_fallback=signal.fallback,
            operational_g=carbon.operational_g,
            embodied_g=carbon.embodied_g,
            variant=request.variant,
            policy_version=self.policy_version,
            tenant=tenant,
            prompt_id=prompt_id,
            baseline_energy_kwh=baseline_kwh,
            baseline_g=baseline_g,
            baseline_source=baseline_source,
        )

    def close(self) -> None:
        """Flush the ledger and release the engine."""
        if self.ledger is not None:
            self.ledger.close()
        self.engine.close()

    def __enter__(self) -> Controller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
