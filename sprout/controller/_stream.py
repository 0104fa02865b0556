"""Streaming: the sink a streamed answer goes to, the tap that feeds it, and :class:`ChatStream`.

Engines stream through their babbling guard's ``check`` hook (see :class:`StreamTap`), so no
engine needs a streaming API of its own; :class:`ChatStream` runs the generation on a worker
thread and hands its deltas to an iterating consumer.
"""

from __future__ import annotations

import contextvars
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from sprout.chat import ChatRequest
from sprout.controller.results import ChatResult, StreamClosed
from sprout.engines.base import Engine
from sprout.engines.guards import CONTINUE, BabbleGuard, GuardDecision
from sprout.errors import EngineError
from sprout.policy.base import Decision


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
class StreamTap(BabbleGuard):
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


def tap_request(
    request: ChatRequest, engine: Engine, sink: Callable[[str], None]
) -> tuple[ChatRequest, StreamTap]:
    """``request`` asking ``engine`` to stream (``extra["stream"]``) through a tap."""
    own: Any = request.extra.get("babble_guard", getattr(engine, "guard", None))
    if own is True:
        own = getattr(engine, "guard", None) or BabbleGuard()
    inner = own if isinstance(own, BabbleGuard) else None
    tap = StreamTap(sink=sink, inner=inner, stop_strings=tuple(s for s in request.stop if s))
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


def start_stream(chat: Callable[[ChatStream], ChatResult]) -> ChatStream:
    """A :class:`ChatStream` fed by ``chat(stream)``, which runs on a worker thread."""
    stream = ChatStream()
    # The caller's context (its current trace span...) goes along, as asyncio.to_thread's.
    context = contextvars.copy_context()
    worker = threading.Thread(
        target=context.run,
        args=(stream._produce, lambda: chat(stream)),
        name="sprout-chat-stream",
        daemon=True,  # bounded by the engine's own timeouts
    )
    worker.start()
    return stream
