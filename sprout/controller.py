"""The controller: Sprout's in-process middleware for one chat request.

``Controller.chat`` reads the carbon signal, lets the policy choose a directive, applies
it, calls the engine, takes an energy sample, writes a receipt to the ledger and returns the
answer with its receipt. Nothing the ledger or the carbon provider does can fail a request:
the signal falls back, the policy falls back to the baseline directive, the ledger spools.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import queue
import random
import threading
import time
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
from sprout.energy.estimate import approx_tokens
from sprout.engines.base import Engine, Generation
from sprout.engines.guards import (
    BABBLE_CODE_BLOCK,
    BABBLE_REPETITION,
    CONTINUE,
    BabbleGuard,
    GuardDecision,
)
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
        started_s: ``time.perf_counter()`` when the directive was chosen (the duration of
            an interrupted generation is measured from it).
    """

    request_id: str
    request: ChatRequest
    decision: Decision
    signal: SignalReading
    tenant: str | None = None
    prompt_id: str | None = None
    base: ChatRequest | None = None
    policy_version: int | None = None
    started_s: float = 0.0


#: Guard rules whose cut ends a generation as ``guard_cut`` (a stop string the app asked for
#: ends it as ``completed``).
_GUARD_CUTS = frozenset({BABBLE_CODE_BLOCK, BABBLE_REPETITION})
#: Chat-template tokens per message, for the input tokens of an interrupted generation.
_TEMPLATE_TOKENS_PER_MESSAGE = 4


def outcome_of(generation: Generation) -> str:
    """``guard_cut`` when the babbling guard ended ``generation``, else ``completed``."""
    return "guard_cut" if generation.finish_reason in _GUARD_CUTS else "completed"


class StreamClosed(Exception):
    """Raised by a :class:`StreamSink`'s ``text`` when its consumer went away.

    The generation stops at its next token and its receipt says ``client_closed``.
    """


class StreamSink(Protocol):
    """Receives a streamed answer from :meth:`Controller.chat` (``stream=``).

    Both methods are called on the thread that runs the engine. ``text`` may raise
    :class:`StreamClosed` to stop the generation (a client that went away): the engine
    closes its stream, which servers such as vLLM take as an abort, the receipt of what was
    generated so far is written (outcome ``client_closed``) and the exception propagates
    out of ``chat``.
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
    _seen: list[float] = field(default_factory=list)  # perf_counter() of the first text

    @property
    def sent(self) -> str:
        """The text forwarded to the sink so far."""
        return self._sent[0] if self._sent else ""

    @property
    def first_text_at(self) -> float | None:
        """``time.perf_counter()`` when the engine first produced text, if it has."""
        return self._seen[0] if self._seen else None

    def check(self, text: str) -> GuardDecision:
        if text and not self._seen:
            self._seen.append(time.perf_counter())
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


class ChatStream(Iterator[str]):
    """The answer to one request, as text deltas while it is generated.

    Iterate it to the end, then read :attr:`result` (the :class:`ChatResult` with the
    receipt). :attr:`request_id` and :attr:`directive` are set once the first delta
    arrives. Closing it early (``close()`` or leaving a ``with`` block) stops the
    generation at its next token; the receipt of what was generated is still written, with
    outcome ``client_closed``. Errors of the generation (``EngineError``...) are raised from
    the iteration.
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
            raise StreamClosed("the stream's consumer closed it")
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
        self._listeners: list[Callable[[Receipt], None]] = []
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
        from sprout.judge.quality import rewrap

        with self._lock:
            if replacing is not None and self.policy is not replacing:
                return False
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
            request, tap = _tap_request(request, self.engine, stream.text)
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
            outcome_of(generation),
        )
        self._record(receipt)
        if self.sampler is not None and pending.base is not None:
            try:  # a random draw; a sampled prompt is stored by a background thread
                self.sampler.offer(receipt, pending.base, generation.text)
            except Exception as e:  # the quality loop must never fail a request
                log.error("request %s could not be sampled: %s", pending.request_id, e)
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
        generation = Generation(
            text=text,
            input_tokens=sum(
                approx_tokens(m.content) + _TEMPLATE_TOKENS_PER_MESSAGE for m in request.messages
            ),
            output_tokens=approx_tokens(text) if output_tokens is None else output_tokens,
            latency_s=latency_s,
            model=self._model_name(request),
            first_token_s=first_token_s,
            finish_reason=outcome,
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
        receipt = self._receipt(
            pending.request_id,
            request,
            pending.decision,
            generation,
            _split_prefill(sample, generation),
            pending.signal,
            pending.tenant,
            pending.prompt_id,
            pending.policy_version,
            outcome,
        )
        self._record(receipt)
        return receipt

    def _failed(self, pending: PendingChat, tap: _StreamTap | None, error: BaseException) -> None:
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

    def _record(self, receipt: Receipt) -> None:
        """Queue ``receipt`` in the ledger and hand it to the listeners."""
        if self.ledger is not None:
            try:
                self.ledger.append(receipt)
            except Exception as e:  # the ledger must never fail a request
                log.error("receipt %s could not be queued: %s", receipt.request_id, e)
        for listener in self._listeners:
            try:
                listener(receipt)
            except Exception as e:  # a metrics sink must never fail a request
                log.error("receipt listener %r failed: %s", listener, e)

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
        # The caller's context (its current trace span...) goes along, as asyncio.to_thread's.
        context = contextvars.copy_context()
        worker = threading.Thread(
            target=context.run,
            args=(stream._produce, lambda: self.chat(messages, stream=stream, **options)),
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
        outcome: str = "completed",
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
            outcome=outcome,
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
