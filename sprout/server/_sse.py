"""Streamed answers: ``"stream": true`` chat completions as server-sent events.

The engine runs on the app's thread pool and hands each piece of text to the event loop
through a :class:`_Sink`; the response opens only once the first text (or a failure) is
known, so that a failure before any output still gets a proper status. The receipt goes
in the final chunk, then ``data: [DONE]``. A client that leaves stops the generation at
its next token (its receipt then says ``client_closed``).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from sprout.controller import StreamClosed
from sprout.server._errors import map_error
from sprout.server.openai import (
    ChatCall,
    completion_chunk,
    dumps,
    finish_reason,
    header_list,
    receipt_json,
    usage,
)

if TYPE_CHECKING:
    from sprout.chat import ChatRequest
    from sprout.controller import ChatResult
    from sprout.policy.base import Decision
    from sprout.server._state import ServerState


class _Sink:
    """Carries a streamed answer from the engine's thread to the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.cancelled = False

    def put(self, kind: str, value: Any) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, value))

    def start(self, request_id: str, request: ChatRequest, decision: Decision) -> None:
        self.put("start", (request_id, decision))

    def text(self, delta: str) -> None:
        if self.cancelled:
            raise StreamClosed("the streaming client disconnected")
        self.put("text", delta)


async def _disconnected(request: Request) -> None:
    """Return once the client of ``request`` (whose body was read) disconnects."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def sse(payload: object) -> bytes:
    """One server-sent event carrying ``payload`` as JSON."""
    return b"data: " + dumps(payload) + b"\n\n"


async def stream_chat(
    state: ServerState,
    request: Request,
    call: ChatCall,
    run: functools.partial[ChatResult],
) -> Response:
    """Answer ``call`` with server-sent events; ``run`` is the controller call to make.

    Raises:
        ApiError: the request failed before any text (or a decision) came out.
    """
    loop = asyncio.get_running_loop()
    sink = _Sink(loop)
    metrics = state.metrics

    def produce() -> None:
        try:
            sink.put("done", run(stream=sink))
        except BaseException as e:  # handed to the event loop
            sink.put("error", e)

    state.executor.submit(contextvars.copy_context().run, produce)
    # Wait for the first text (or the end) before answering, so that a failure before
    # any output still gets a proper status instead of a 200 with an error event. A
    # client that gives up meanwhile stops the generation at its first token.
    request_id, decision = "", None
    first: list[tuple[str, Any]] = []
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        while not first:
            getter = asyncio.ensure_future(sink.queue.get())
            await asyncio.wait((getter, gone), return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                sink.cancelled = True
                # Nothing to answer; the receipt is written when the engine stops.
                return Response(status_code=499)
            kind, value = getter.result()
            if kind == "start":
                request_id, decision = value
            elif kind == "error":
                raise map_error(value)
            else:
                first.append((kind, value))
    finally:
        gone.cancel()
    created = int(time.time())
    model = call.model or (state.served[0] if state.served else "")

    def chunk(delta: dict[str, Any], reason: str | None) -> dict[str, Any]:
        return completion_chunk(request_id, created, model, delta, reason)

    async def events() -> AsyncIterator[bytes]:
        pending = first
        metrics.in_flight.inc()  # the handler has returned; the answer is still going
        try:
            yield sse(chunk({"role": "assistant", "content": ""}, None))
            while True:
                kind, value = pending.pop() if pending else await sink.queue.get()
                if kind == "text":
                    yield sse(chunk({"content": value}, None))
                    continue
                if kind == "error":
                    error = map_error(value)
                    metrics.error(error.status, error.code or error.type)
                    yield sse(error.body())
                    break
                result: ChatResult = value
                final = chunk({}, finish_reason(result.generation.finish_reason))
                final["model"] = result.generation.model
                if call.include_usage:
                    yield sse(final)
                    final = {**final, "choices": [], "usage": usage(result)}
                final["sprout"] = receipt_json(result.receipt)
                yield sse(final)
                break
            yield b"data: [DONE]\n\n"
        finally:
            sink.cancelled = True  # a client that left stops the generation
            metrics.in_flight.inc(-1)

    headers = {"cache-control": "no-cache", "x-accel-buffering": "no"}
    headers["x-sprout-request-id"] = request_id
    if decision is not None:
        headers["x-sprout-directive"] = decision.directive.name
        headers["x-sprout-decision"] = decision.reason
    if call.ignored:
        headers["x-sprout-ignored-params"] = header_list(call.ignored)
    return StreamingResponse(events(), headers=headers, media_type="text/event-stream")
