"""A fake OpenAI-compatible chat-completions server on 127.0.0.1, for tests.

It answers ``POST /v1/chat/completions`` like vLLM does — JSON, or server-sent events in
chunked transfer encoding with ``stream: true`` (usage in a last chunk when
``stream_options.include_usage`` asks) — with a scripted reply split into whitespace
"tokens", honouring ``max_tokens`` (finish ``length``) and ``stop`` (finish ``stop``).

Faults are queued per request with :meth:`FakeOpenAIServer.inject`: an HTTP status
(``503``), ``"drop"`` (close the connection without answering), ``"drop-mid-stream"``
(send a few chunks, then close), ``"garbage"`` (200 with a body that is not JSON),
``("slow", seconds)`` (wait before answering). Every
request is recorded. Waits are interruptible, and :meth:`stop` (or leaving the ``with``
block) shuts everything down within a second.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Fault = int | str | tuple[str, float]
_TOKEN = re.compile(r"\s*\S+\s*")


def tokens_of(text: str) -> list[str]:
    """Whitespace "tokens" whose concatenation is ``text``."""
    return _TOKEN.findall(text) or ([text] if text else [])


class FakeOpenAIServer:
    """A threaded fake server; use as a context manager.

    Args:
        reply: the answer, or a function of the request body giving it.
        usage: whether to report token usage.
        chunk_delay_s: pause between streamed chunks.
        api_key: if set, requests must carry ``Authorization: Bearer <api_key>``; a wrong
            key gets 401 with a message echoing it (as some servers do).
        models: model names served (None: any); others get 404.
        honour_stop: whether to cut the reply at the request's ``stop`` strings (False
            plays a server that ignores them).
    """

    def __init__(
        self,
        reply: str | Callable[[dict[str, Any]], str] = "Hello! How can I help you today?",
        *,
        usage: bool = True,
        chunk_delay_s: float = 0.0,
        api_key: str | None = None,
        models: tuple[str, ...] | None = None,
        honour_stop: bool = True,
    ) -> None:
        self.reply = reply
        self.usage = usage
        self.chunk_delay_s = chunk_delay_s
        self.api_key = api_key
        self.models = models
        self.honour_stop = honour_stop
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.chunks_sent = 0
        self.aborted_streams = 0
        self._faults: deque[Fault] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The API root, ``http://127.0.0.1:PORT/v1``."""
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def inject(self, *faults: Fault) -> None:
        """Queue faults, one per coming request."""
        with self._lock:
            self._faults.extend(faults)

    def _next_fault(self) -> Fault | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def start(self) -> FakeOpenAIServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes handlers waiting in a slow response
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; False if the server is stopping."""
        return not self._stopping.wait(seconds)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 5  # a client that stops sending cannot hold a thread for long

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(min(length, 1 << 20))
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = {"_raw": raw.decode("utf-8", "replace")}
                with server._lock:
                    server.requests.append(body)
                    server.headers.append(dict(self.headers.items()))
                fault = server._next_fault()
                if isinstance(fault, tuple) and fault[0] == "slow":
                    if not server._wait(fault[1]):
                        return
                    fault = None
                if fault == "drop":
                    self._drop()
                    return
                if isinstance(fault, int):
                    self._json(fault, {"error": {"message": f"injected fault {fault}"}})
                    return
                if fault == "garbage":
                    data = b"<html>not json</html>"
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(data)
                    return
                if self.path != "/v1/chat/completions":
                    self._json(404, {"error": {"message": f"no route {self.path}"}})
                    return
                if server.api_key is not None:
                    auth = self.headers.get("Authorization", "")
                    if auth != f"Bearer {server.api_key}":
                        given = auth.removeprefix("Bearer ")
                        msg = f"Incorrect API key provided: {given}"
                        self._json(401, {"error": {"message": msg}})
                        return
                model = body.get("model")
                if server.models is not None and model not in server.models:
                    msg = f"The model `{model}` does not exist."
                    self._json(404, {"error": {"message": msg}})
                    return
                self._answer(body, drop_mid_stream=fault == "drop-mid-stream")

            def _drop(self) -> None:
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)

            def _json(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data)
                self.close_connection = True

            def _answer(self, body: dict[str, Any], drop_mid_stream: bool) -> None:
                reply = server.reply(body) if callable(server.reply) else server.reply
                finish = "stop"
                stops = (body.get("stop") or []) if server.honour_stop else []
                hits = [reply.find(s) for s in ([stops] if isinstance(stops, str) else stops)]
                if any(h >= 0 for h in hits):
                    reply = reply[: min(h for h in hits if h >= 0)]
                toks = tokens_of(reply)
                cap = body.get("max_tokens")
                if isinstance(cap, int) and len(toks) > cap:
                    toks, finish = toks[:cap], "length"
                prompt_tokens = sum(
                    len(tokens_of(str(m.get("content", "")))) for m in body.get("messages", [])
                )
                usage = {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": len(toks),
                    "total_tokens": prompt_tokens + len(toks),
                }
                model = body.get("model", "fake")
                if not body.get("stream"):
                    payload: dict[str, Any] = {
                        "id": "chatcmpl-fake",
                        "object": "chat.completion",
                        "model": model,
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": "".join(toks)},
                                "finish_reason": finish,
                            }
                        ],
                    }
                    if server.usage:
                        payload["usage"] = usage
                    self._json(200, payload)
                    return
                self._stream(body, model, toks, finish, usage, drop_mid_stream)

            def _stream(
                self,
                body: dict[str, Any],
                model: str,
                toks: list[str],
                finish: str,
                usage: dict[str, int],
                drop_mid_stream: bool,
            ) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True

                def event(obj: dict[str, Any] | str) -> None:
                    data = obj if isinstance(obj, str) else json.dumps(obj)
                    frame = f"data: {data}\n\n".encode()
                    self.wfile.write(f"{len(frame):x}\r\n".encode() + frame + b"\r\n")
                    self.wfile.flush()

                def chunk(delta: dict[str, str], reason: str | None) -> dict[str, Any]:
                    return {
                        "id": "chatcmpl-fake",
                        "object": "chat.completion.chunk",
                        "model": model,
                        "choices": [{"index": 0, "delta": delta, "finish_reason": reason}],
                    }

                try:
                    event(chunk({"role": "assistant"}, None))
                    for i, tok in enumerate(toks):
                        if drop_mid_stream and i == max(1, len(toks) // 2):
                            self._drop()
                            return
                        if server.chunk_delay_s and not server._wait(server.chunk_delay_s):
                            return
                        event(chunk({"content": tok}, None))
                        with server._lock:
                            server.chunks_sent += 1
                    event(chunk({}, finish))
                    include = (body.get("stream_options") or {}).get("include_usage")
                    if server.usage and include:
                        last = {"id": "chatcmpl-fake", "model": model, "choices": []}
                        event({**last, "usage": usage})
                    event("[DONE]")
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    with server._lock:
                        server.aborted_streams += 1

        return Handler


def wait_until(predicate: Callable[[], bool], timeout_s: float = 2.0) -> bool:
    """Poll ``predicate`` until it holds or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()
