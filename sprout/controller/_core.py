"""The :class:`Controller`: one chat request from carbon reading to receipt.

``Controller.chat`` reads the carbon signal, lets the policy choose a directive, applies
it, calls the engine, takes an energy sample, writes a receipt and fans it out (ledger,
listeners, the quality loop's sampler: :mod:`sprout.controller.sinks`). Nothing the ledger
or the carbon provider does can fail a request: the signal falls back, the policy falls back
to the baseline directive, the ledger spools.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sprout.accounting import embodied_rate_g_per_s
from sprout.carbon.base import utcnow
from sprout.chat import ChatRequest, Message, parse_messages
from sprout.controller._receipts import (
    build_receipt,
    interrupted_generation,
    outcome_of,
    split_prefill,
)
from sprout.controller._stream import ChatStream, StreamSink, StreamTap, start_stream, tap_request
from sprout.controller.results import ChatResult, PendingChat, StreamClosed
from sprout.controller.sinks import LedgerSink, ListenerSink, ReceiptSink, SamplerSink, fan_out
from sprout.directives import DirectiveSet
from sprout.energy.base import EnergyMeter, EnergySample, Usage
from sprout.energy.estimate import EstimateMeter
from sprout.engines.base import Engine, Generation
from sprout.errors import SproutError
from sprout.judge.quality import rewrap, unwrap
from sprout.policy.base import Decision, Policy
from sprout.policy.history import CIWindow
from sprout.receipt import Receipt

if TYPE_CHECKING:
    from sprout.carbon.signal import CarbonSignal, SignalReading
    from sprout.judge.sampler import Sampler
    from sprout.ledger.store import Ledger


# The package's one logger, named as before it was split: logging configurations name it.
log = logging.getLogger("sprout.controller")

#: The ledger, listener list and sampler that a controller's receipt sinks were built from,
#: and the sinks.
_BuiltSinks = tuple[
    "Ledger | None",
    "list[Callable[[Receipt], None]] | None",
    "Sampler | None",
    tuple[ReceiptSink, ...],
]


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
        sampler: samples served requests for the quality loop (see :mod:`sprout.judge`).
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
        sampler: Sampler | None = None,
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
        self.sampler = sampler
        # Re-entrant: begin() holds it around _decide() so that the policy that decides is
        # the one whose version the receipt records, even across a swap_policy().
        self._lock = threading.RLock()
        self._closers: list[Callable[[], None]] = []
        self._listeners: list[Callable[[Receipt], None]] = []
        # (ledger, listeners, sampler, the sinks built from them): see _sinks().
        self._built_sinks: _BuiltSinks = (None, None, None, ())
        self._seed_history()

    @property
    def meter(self) -> EnergyMeter:
        """The energy meter (the estimate meter unless one was given)."""
        if self._meter is None:
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

    def swap_policy(
        self,
        policy: Policy,
        policy_version: int | None,
        *,
        replacing: Policy | None = None,
        keep_guard: bool = True,
    ) -> bool:
        """Serve later requests with ``policy`` (e.g. a retrained version), no restart. The
        one way the serving policy changes: under the lock that decides requests, the policy
        and its version together.

        Args:
            policy: the new policy.
            policy_version: its version id (what later receipts name).
            replacing: the policy ``policy`` was derived from: swap only if it is still the
                one serving (else nothing changes and False is returned: derive again from
                :meth:`serving`), so that two writers (a retrained version, the quality
                loop's estimate) cannot undo each other.
            keep_guard: keep a quality guard engaged around the current policy around the
                new one until the quality loop's next estimate (see
                :func:`sprout.judge.quality.rewrap`); False: ``policy`` carries its own.

        Returns:
            Whether the swap happened.
        """
        with self._lock:
            if replacing is not None and self.policy is not replacing:
                return False
            # A retrained version carries on the serving history (e.g. the quality pacing).
            unwrap(policy).take_over(unwrap(self.policy))
            self.policy = rewrap(self.policy, policy) if keep_guard else policy
            self.policy_version = policy_version
            return True

    def serving(self) -> tuple[Policy, int | None]:
        """The policy deciding requests now and its version id, read together."""
        with self._lock:
            return self.policy, self.policy_version

    def now(self) -> datetime:
        """The controller's clock (a replay clock in the demo and in tests)."""
        return self._clock()

    def add_listener(self, listener: Callable[[Receipt], None]) -> None:
        """Call ``listener(receipt)`` for every receipt written, whatever its outcome
        (metrics, telemetry); on the generating thread, after the ledger has it. A listener
        that raises is logged and skipped: it never fails a request."""
        with self._lock:
            self._listeners = [*self._listeners, listener]

    def remove_listener(self, listener: Callable[[Receipt], None]) -> None:
        """Stop calling ``listener`` (see :meth:`add_listener`)."""
        with self._lock:
            self._listeners = [fn for fn in self._listeners if fn != listener]

    def on_close(self, closer: Callable[[], None]) -> None:
        """Call ``closer`` first in :meth:`close` (e.g. to stop a background watcher)."""
        self._closers.append(closer)

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
        stop: Sequence[str] = (),
        temperature: float | None = None,
        stream: StreamSink | None = None,
    ) -> ChatResult:
        """Answer one chat request carbon-aware.

        Args:
            messages: OpenAI-style messages (dicts with ``role`` and ``content``).
            max_new_tokens: the app's own token cap (the directive's cap may lower it).
            tenant: the app's tenant id, recorded in the receipt.
            opt_out: serve the baseline directive (recorded as ``opt-out``).
            request_id: an id for the receipt (default: a random UUID).
            prompt_id: an id of the prompt (e.g. a bundled workload id), for audits.
            stop: the app's own stop sequences (the directive's are added).
            temperature: the app's sampling temperature (None: the engine's default).
            stream: receives the answer as it is generated (see :meth:`chat_stream`);
                engines that cannot stream deliver it whole when they finish.

        A generation that stops early still gets its receipt, with the energy and tokens up
        to where it stopped: ``client_closed`` when ``stream`` raised :class:`StreamClosed`,
        ``upstream_failed`` when the engine failed after the model had started (an
        ``EngineError`` with ``reached_model``, or any failure once text was streamed).

        Raises:
            RequestError: the messages are malformed (nothing is generated).
            EngineError: the engine failed (a receipt is written only if the model had
                started: see above).
        """
        pending = self.begin(
            messages,
            max_new_tokens=max_new_tokens,
            tenant=tenant,
            opt_out=opt_out,
            request_id=request_id,
            prompt_id=prompt_id,
            stop=stop,
            temperature=temperature,
        )
        request, tap = pending.request, None
        if stream is not None:
            request, tap = tap_request(request, self.engine, stream.text)
            stream.start(pending.request_id, request, pending.decision)
        try:
            generation = self.engine.generate(request)
        except BaseException as e:
            self._failed(pending, tap, e)  # the receipt of what was spent; the error wins
            raise
        result = self.finish(pending, generation)
        if tap is not None:  # the rest of the answer (all of it from engines that don't stream)
            tap.forward(generation.text, len(generation.text))
        return result

    def begin(
        self,
        messages: Sequence[Message | dict[str, Any]],
        *,
        max_new_tokens: int | None = None,
        tenant: str | None = None,
        opt_out: bool = False,
        request_id: str | None = None,
        prompt_id: str | None = None,
        stop: Sequence[str] = (),
        temperature: float | None = None,
    ) -> PendingChat:
        """Choose the directive of a request that something else will generate.

        The first half of :meth:`chat`, for callers whose generation happens elsewhere
        (a LiteLLM proxy's hooks): send ``pending.request`` (the shaped request), then call
        :meth:`finish` with the generation, or :meth:`abort` if it failed. Takes the
        arguments of :meth:`chat`; opens the energy meter's window.

        Raises:
            RequestError: the messages are malformed.
        """
        parsed = parse_messages(messages)
        request_id = request_id or uuid.uuid4().hex
        signal = self.signal.read()
        base = ChatRequest(
            parsed, max_new_tokens=max_new_tokens, stop=tuple(stop), temperature=temperature
        )
        with self._lock:
            decision = self._decide(base.prompt, signal, opt_out)
            version = self.policy_version
        request = decision.directive.apply(base)
        self.meter.begin(request_id)
        return PendingChat(
            request_id,
            request,
            decision,
            signal,
            tenant,
            prompt_id,
            base,
            version,
            time.perf_counter(),
        )

    def finish(self, pending: PendingChat, generation: Generation) -> ChatResult:
        """Close the meter's window, write the receipt and return the result (see
        :meth:`begin`)."""
        request = pending.request
        sample = self.meter.end(
            pending.request_id,
            Usage(
                generation.input_tokens,
                generation.output_tokens,
                generation.latency_s,
                request.variant,
                generation.first_token_s,
            ),
        )
        # An engine that knows its own energy (a replay's recording) takes precedence.
        energy = split_prefill(generation.energy or sample, generation)
        receipt = self._receipt(pending, generation, energy, outcome_of(generation))
        fan_out(self._sinks(), receipt, pending.base, generation.text)
        return ChatResult(generation.text, receipt, generation, energy)

    def abort(self, pending: PendingChat) -> None:
        """Close the meter's window of a request that never reached a model (no receipt:
        nothing was spent). For one that stopped early, call :meth:`interrupt`."""
        with contextlib.suppress(Exception):
            self.meter.end(pending.request_id, Usage(0, 0, 0.0, pending.request.variant))

    def interrupt(
        self,
        pending: PendingChat,
        outcome: str,
        *,
        text: str = "",
        first_token_s: float | None = None,
        output_tokens: int | None = None,
    ) -> Receipt:
        """Write the receipt of a generation that stopped early, and return it.

        Its energy is the meter's for the time since :meth:`begin` (measured where the
        meter sees the model, else estimated and labelled so); its tokens are the prompt's
        and those of ``text``, the answer produced before it stopped (estimated by length
        unless ``output_tokens`` is given). The quality loop does not sample it.

        Args:
            pending: from :meth:`begin`.
            outcome: ``client_closed``, ``upstream_failed`` or ``guard_cut``.
            text: what the model generated before it stopped.
            first_token_s: seconds from the start to the first text, if any came.
            output_tokens: the engine's count of generated tokens, when it has one.
        """
        request = pending.request
        latency_s = max(0.0, time.perf_counter() - pending.started_s)
        generation = interrupted_generation(
            request,
            outcome,
            text=text,
            latency_s=latency_s,
            model=self._model_name(request),
            first_token_s=first_token_s,
            output_tokens=output_tokens,
        )
        sample = self.meter.end(
            pending.request_id,
            Usage(
                generation.input_tokens,
                generation.output_tokens,
                latency_s,
                request.variant,
                first_token_s,
            ),
        )
        receipt = self._receipt(pending, generation, split_prefill(sample, generation), outcome)
        fan_out(self._sinks(), receipt)  # no base: the quality loop does not sample it
        return receipt

    def _failed(self, pending: PendingChat, tap: StreamTap | None, error: BaseException) -> None:
        """After the engine raised: the receipt of what was spent, or none if nothing was."""
        sent = tap.sent if tap is not None else ""
        closed = isinstance(error, StreamClosed)
        if not (closed or sent or getattr(error, "reached_model", False)):
            self.abort(pending)
            return
        first_at = tap.first_text_at if tap is not None else None
        try:
            self.interrupt(
                pending,
                "client_closed" if closed else "upstream_failed",
                text=sent,
                first_token_s=None if first_at is None else max(0.0, first_at - pending.started_s),
            )
        except Exception as e:  # the original error is what the caller must see
            log.error("receipt of interrupted request %s failed: %s", pending.request_id, e)

    def _model_name(self, request: ChatRequest) -> str:
        """The model an engine serves ``request`` with, as far as it says."""
        model_for = getattr(self.engine, "model_for", None)
        if callable(model_for):
            with contextlib.suppress(Exception):
                return str(model_for(request.variant))
        return str(getattr(self.engine, "model", "") or request.variant or self.engine.name)

    def _receipt(
        self,
        pending: PendingChat,
        generation: Generation,
        energy: EnergySample,
        outcome: str,
    ) -> Receipt:
        """The receipt of ``pending``'s ``generation``, with this controller's figures."""
        return build_receipt(
            pending,
            generation,
            energy,
            outcome,
            baseline=self.directives.baseline.name,
            engine=self.engine.name,
            embodied_g_per_s=self.embodied_g_per_s,
            clock=self._clock,
        )

    def _sinks(self) -> tuple[ReceiptSink, ...]:
        """Where a receipt goes now, in order: the ledger, the listeners, the sampler."""
        # Each may change while the controller serves (``ledger`` and ``sampler`` are plain
        # attributes; add_listener() replaces the list), so the sinks are rebuilt when one
        # did; not per receipt, which would cost the request path a microsecond or two.
        ledger, listeners, sampler = self.ledger, self._listeners, self.sampler
        built = self._built_sinks
        if built[0] is not ledger or built[1] is not listeners or built[2] is not sampler:
            sinks: list[ReceiptSink] = [] if ledger is None else [LedgerSink(ledger)]
            sinks += [ListenerSink(listener) for listener in listeners]
            if sampler is not None:
                sinks.append(SamplerSink(sampler))
            # One tuple, swapped in whole: a concurrent request reads the old or the new.
            built = self._built_sinks = (ledger, listeners, sampler, tuple(sinks))
        return built[3]

    def chat_stream(
        self,
        messages: Sequence[Message | dict[str, Any]],
        **options: Any,
    ) -> ChatStream:
        """Answer one chat request, yielding its text as it is generated.

        Takes the options of :meth:`chat` (but ``stream``). The engine runs on a worker
        thread; the receipt is written when the generation ends and is then in the
        stream's ``result``::

            with controller.chat_stream(messages) as stream:
                for delta in stream:
                    print(delta, end="")
            print(stream.result.receipt.directive)

        Raises:
            RequestError: the messages are malformed (raised here, before any generation).
        """
        parse_messages(messages)  # malformed requests fail here, not mid-iteration
        return start_stream(lambda stream: self.chat(messages, stream=stream, **options))

    def close(self) -> None:
        """Stop the carbon poller, flush the ledger and release the engine."""
        for closer in self._closers:  # background watchers first: nothing left to serve
            closer()
        self.signal.close()  # first, so the poller writes nothing to a closed ledger
        if self.sampler is not None:
            self.sampler.close()  # its queued prompts go to the ledger before it closes
        if self.ledger is not None:
            self.ledger.close()
        self.engine.close()
        if self._meter is not None:
            self._meter.close()  # stops NVML power samplers

    def __enter__(self) -> Controller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
