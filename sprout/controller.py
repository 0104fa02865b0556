"""The controller: Sprout's in-process middleware for one chat request.

``Controller.chat`` reads the carbon signal, lets the policy choose a directive, applies
it, calls the engine, takes an energy sample, writes a receipt to the ledger and returns the
answer with its receipt. Nothing the ledger or the carbon provider does can fail a request:
the signal falls back, the policy falls back to the baseline directive, the ledger spools.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from sprout.accounting import embodied_rate_g_per_s, request_carbon
from sprout.carbon.base import utcnow
from sprout.chat import ChatRequest, Message, parse_messages
from sprout.directives import DirectiveSet
from sprout.energy.base import EnergyMeter, EnergySample, Usage
from sprout.engines.base import Engine, Generation
from sprout.engines.guards import CONTINUE, BabbleGuard, GuardDecision
from sprout.errors import EngineError, SproutError
from sprout.policy.base import Decision, Policy
from sprout.policy.history import CIWindow
from sprout.receipt import Receipt, metered_receipt

if TYPE_CHECKING:
    from sprout.carbon.signal import CarbonSignal, SignalReading
    from sprout.judge.sampler import Sampler
    from sprout.ledger.store import Ledger


log = logging.getLogger("sprout.controller")


@dataclass(frozen=True)
class ChatResult:
    """The answer to one request, with its receipt.

    ``energy`` is the sample the receipt's energy came from, with its prefill/decode split
    when the engine reported the first token's time.
    """

    text: str
    receipt: Receipt
    generation: Generation
    energy: EnergySample | None = None


def _split_prefill(energy: EnergySample, generation: Generation) -> EnergySample:
    """``energy`` split into prefill and decode by the first token's time, if not yet split.

    Meters that see the window split it themselves; for the others the power is taken to
    be even over the generation.
    """
    first = generation.first_token_s
    if energy.prefill_kwh is not None or first is None or generation.latency_s <= 0:
        return energy
    prefill_kwh = energy.energy_kwh * min(1.0, max(0.0, first / generation.latency_s))
    return replace(energy, prefill_kwh=prefill_kwh, decode_kwh=energy.energy_kwh - prefill_kwh)


@dataclass(frozen=True)
class PendingChat:
    """A request whose directive is chosen, awaiting its generation (see
    :meth:`Controller.begin`).

    Attributes:
        request_id: the receipt's id.
        request: the request as the directive shaped it: what to send to the model.
        decision: the directive and why it was chosen.
        signal: the carbon reading the decision was made on.
        tenant, prompt_id: recorded in the receipt.
        base: the request before the directive shaped it (what the quality loop keeps of a
            sampled request).
        policy_version: the stored policy version that chose the directive.
    """

    request_id: str
    request: ChatRequest
    decision: Decision
    signal: SignalReading
    tenant: str | None = None
    prompt_id: str | None = None
    base: ChatRequest | None = None
    policy_version: int | None = None


class StreamSink(Protocol):
    """Receives a streamed answer from :meth:`Controller.chat` (``stream=``).

    Both methods are called on the thread that runs the engine. ``text`` may raise to stop
    the generation (a client that went away): the engine closes its stream, which servers
    such as vLLM take as an abort, and the exception propagates out of ``chat``.
    """

    def start(self, request_id: str, request: ChatRequest, decision: Decision) -> None:
        """The directive is chosen and the engine is about to be called."""

    def text(self, delta: str) -> None:
        """More of the answer, in order; the deltas concatenate to the final text."""


@dataclass(frozen=True, eq=False)
class _StreamTap(BabbleGuard):
    """Forwards the text an engine generates to a sink as it grows.

    Engines that generate token by token already hand the text so far to their guard's
    ``check`` after every token (the OpenAI-compatible engine while reading a stream, the
    transformers engine from its stopping criteria), so riding on that hook streams any of
    them without a streaming API of their own. The request's own guard still decides
    (``inner`` and the stop strings); text a stop string may still cut is held back.
    """

    sink: Callable[[str], None] | None = None
    inner: BabbleGuard | None = None
    stop_strings: tuple[str, ...] = ()
    _sent: list[str] = field(default_factory=list)  # the text forwarded so far, one item

    def check(self, text: str) -> GuardDecision:
        decision = self.inner.check(text) if self.inner is not None else CONTINUE
        end = len(text)
        hits = [i for i in (text.find(s) for s in self.stop_strings) if i >= 0]
        if hits:
            end = min(hits)
        elif self.stop_strings:  # the end may be the start of a stop string
            end -= max(len(s) for s in self.stop_strings) - 1
        if decision.stop and decision.cut is not None:
            end = min(end, decision.cut)
        self.forward(text, max(0, end))
        return decision

    def forward(self, text: str, end: int) -> None:
        """Send ``text[:end]`` beyond what was sent already."""
        sent = self._sent[0] if self._sent else ""
        shared = min(end, len(sent))
        if text[:shared] != sent[:shared]:
            # An engine retried after a dropped stream and the model answered differently:
            # what the client already has cannot be taken back.
            raise EngineError(
                "the stream was restarted by a retry and answered differently; the text "
                "already sent cannot be corrected"
            )
        if end > len(sent) and self.sink is not None:
            self._sent[:] = [text[:end]]
            self.sink(text[len(sent) : end])


def _tap_request(
    request: ChatRequest, engine: Engine, sink: Callable[[str], None]
) -> tuple[ChatRequest, _StreamTap]:
    """``request`` asking ``engine`` to stream (``extra["stream"]``) through a tap."""
    own: Any = request.extra.get("babble_guard", getattr(engine, "guard", None))
    if own is True:
        own = getattr(engine, "guard", None) or BabbleGuard()
    inner = own if isinstance(own, BabbleGuard) else None
    tap = _StreamTap(sink=sink, inner=inner, stop_strings=tuple(s for s in request.stop if s))
    return replace(request, extra={**request.extra, "stream": True, "babble_guard": tap}), tap


class _StreamClosed(Exception):
    """The consumer of a :class:`ChatStream` stopped reading."""


class ChatStream(Iterator[str]):
    """The answer to one request, as text deltas while it is generated.

    Iterate it to the end, then read :attr:`result` (the :class:`ChatResult` with the
    receipt). :attr:`request_id` and :attr:`directive` are set once the first delta
    arrives. Closing it early (``close()`` or leaving a ``with`` block) stops the
    generation; no receipt is written for an answer that was not finished. Errors of
    the generation (``EngineError``...) are raised from the iteration.
    """

    def __init__(self) -> None:
        self.result: ChatResult | None = None
        self.request_id: str | None = None
        self.directive: str | None = None
        self._queue: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._closed = threading.Event()
        self._finished = False

    # The sink side, called on the generating thread.
    def start(self, request_id: str, request: ChatRequest, decision: Decision) -> None:
        self.request_id, self.directive = request_id, decision.directive.name

    def text(self, delta: str) -> None:
        if self._closed.is_set():
            raise _StreamClosed()
        self._queue.put(("text", delta))

    def _produce(self, run: Callable[[], ChatResult]) -> None:
        try:
            self._queue.put(("done", run()))
        except BaseException as e:  # handed to the consumer, who re-raises it
            self._queue.put(("error", e))

    # The consumer side.
    def __next__(self) -> str:
        if self._finished:
            raise StopIteration
        kind, value = self._queue.get()
        if kind == "text":
            return str(value)
        self._finished = True
        if kind == "error":
            raise value
        self.result = value
        raise StopIteration

    def close(self) -> None:
        """Stop reading; an unfinished generation is stopped at its next token."""
        self._closed.set()

    def __enter__(self) -> ChatStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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

    def swap_policy(self, policy: Policy, policy_version: int | None) -> None:
        """Serve later requests with ``policy`` (e.g. a retrained version), no restart.

        A quality guard engaged around the current policy stays engaged around the new one
        until the quality loop's next estimate (see :func:`sprout.judge.quality.rewrap`).
        """
        from sprout.judge.quality import rewrap

        with self._lock:
            self.policy = rewrap(self.policy, policy)
            self.policy_version = policy_version

    def serving(self) -> tuple[Policy, int | None]:
        """The policy deciding requests now and its version id, read together."""
        with self._lock:
            return self.policy, self.policy_version

    def now(self) -> datetime:
        """The controller's clock (a replay clock in the demo and in tests)."""
        return self._clock()

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

        Raises:
            RequestError: the messages are malformed (nothing is generated).
            EngineError: the engine failed (no receipt is written: nothing was served).
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
            request, tap = _tap_request(request, self.engine, stream.text)
            stream.start(pending.request_id, request, pending.decision)
        try:
            generation = self.engine.generate(request)
        except BaseException:
            self.abort(pending)  # the engine error wins
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
        return PendingChat(request_id, request, decision, signal, tenant, prompt_id, base, version)

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
        energy = _split_prefill(generation.energy or sample, generation)
        receipt = self._receipt(
            pending.request_id,
            request,
            pending.decision,
            generation,
            energy,
            pending.signal,
            pending.tenant,
            pending.prompt_id,
            pending.policy_version,
        )
        if self.ledger is not None:
            try:
                self.ledger.append(receipt)
            except Exception as e:  # the ledger must never fail a request
                log.error("receipt %s could not be queued: %s", pending.request_id, e)
        if self.sampler is not None and pending.base is not None:
            try:  # a random draw; a sampled prompt is stored by a background thread
                self.sampler.offer(receipt, pending.base, generation.text)
            except Exception as e:  # the quality loop must never fail a request
                log.error("request %s could not be sampled: %s", pending.request_id, e)
        return ChatResult(generation.text, receipt, generation, energy)

    def abort(self, pending: PendingChat) -> None:
        """Close the meter's window of a request that was not served (no receipt)."""
        with contextlib.suppress(Exception):
            self.meter.end(pending.request_id, Usage(0, 0, 0.0, pending.request.variant))

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
        stream = ChatStream()
        worker = threading.Thread(
            target=stream._produce,
            args=(lambda: self.chat(messages, stream=stream, **options),),
            name="sprout-chat-stream",
            daemon=True,  # bounded by the engine's own timeouts
        )
        worker.start()
        return stream

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
        policy_version: int | None = None,
    ) -> Receipt:
        ci = signal.reading.ci_g_per_kwh
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
        return metered_receipt(
            request_id=request_id,
            created_at=self._clock(),
            directive=decision.directive.name,
            decision=decision.reason,
            engine=self.engine.name,
            generation=generation,
            energy=energy,
            signal=signal,
            embodied_g_per_s=self.embodied_g_per_s,
            variant=request.variant,
            policy_version=policy_version,
            tenant=tenant,
            prompt_id=prompt_id,
            baseline_energy_kwh=baseline_kwh,
            baseline_g=baseline_g,
            baseline_source=baseline_source,
        )

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
