"""The OpenAI-compatible engine: any server with ``POST /v1/chat/completions``.

vLLM, Ollama, the llama.cpp server, TGI and OpenAI itself speak this protocol. The engine
sends the request as the directive shaped it — the merged system prompt (the app's own is
never dropped: :meth:`sprout.directives.Directive.apply` appends to it), ``max_tokens``
capped by the directive, ``stop`` sequences and the model name mapped from the directive's
variant — with or without streaming (server-sent events).

Token counts come from the server's ``usage`` when it sends one (streams ask for it with
``stream_options.include_usage``); otherwise the input is approximated from the text and
the output counted as streamed chunks (one token each on vLLM, Ollama and llama.cpp) or
approximated from the text.

Faults: every call has a connect and a read timeout, and a stream an overall deadline.
HTTP 5xx and 429, refused or dropped connections and streams cut short are retried with
exponential back-off (bounded; ``Retry-After`` honoured up to the cap). A read timeout is
not retried: the server may still be generating, and asking again would double its work.
Errors are :class:`~sprout.errors.EngineError` naming the server, the status and the
server's message; the API key never appears in them (nor in ``repr``).

With ``stream=True``, a babbling guard and stop sequences end generation on the client:
the stream is closed, which vLLM and llama.cpp take as an abort, so the tokens the guard
saves are never generated. Without streaming the server generates everything and the
guard only trims the text.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import requests

from sprout.chat import ChatRequest
from sprout.energy.estimate import approx_tokens
from sprout.engines.base import Engine, Generation
from sprout.engines.guards import BabbleGuard, TextGuard
from sprout.engines.settings import babble_guard, required, variant_models
from sprout.errors import ConfigError, EngineError

if TYPE_CHECKING:
    from sprout.config import Settings

log = logging.getLogger("sprout.engines.openai")

#: Statuses worth another attempt: overloaded, restarting or rate-limiting servers.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
#: Characters of a server's error body quoted in messages.
_SNIPPET_CHARS = 300
#: Tokens a chat template adds per message (role markers), for approximate input counts.
_TEMPLATE_TOKENS_PER_MESSAGE = 4
_LOOPBACK_HOSTS = frozenset({"localhost", "::1"})


class _Retryable(Exception):
    """One attempt failed in a way another attempt may not."""

    def __init__(
        self, message: str, retry_after_s: float | None = None, *, reached_model: bool = False
    ) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.reached_model = reached_model  # the server had accepted the request


@dataclass
class _Result:
    text: str
    model: str
    input_tokens: int | None
    output_tokens: int | None
    first_token_s: float | None
    finish_reason: str | None
    chunks: int = 0


def _public_url(url: str) -> str:
    """``url`` without user info (``user:password@``), for messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _retry_after_s(value: str | None) -> float | None:
    try:
        seconds = float(value) if value is not None else math.nan
    except ValueError:
        return None  # an HTTP date: rare from model servers; fall back to our back-off
    return max(0.0, seconds) if math.isfinite(seconds) else None


class OpenAIEngine(Engine):
    """Generates with an OpenAI-compatible chat-completions server.

    Args:
        base_url: the API root, e.g. ``http://127.0.0.1:8000/v1`` (``/chat/completions`` is
            appended).
        model: model name for requests without a variant.
        variant_models: model name per variant (e.g. ``{"int8": "llama-3-8b-awq",
            "small": "llama-3.2-1b"}``); a request for a variant not listed fails rather
            than silently being served, and recorded, as another model.
        api_key: sent as ``Authorization: Bearer``; never logged or shown.
        stream: use server-sent events (lets the guard stop generation early, and gives
            the first token's time for the prefill/decode split).
        max_tokens: cap for requests that carry none (None: the server's default).
        guard: babbling guard applied to every request (a request's
            ``extra["babble_guard"]`` may turn it off or on).
        connect_timeout_s: connection timeout.
        timeout_s: read timeout: longest wait for the response or for the next chunk.
        deadline_s: longest a whole streamed generation may take.
        max_retries: further attempts after a retryable failure.
        backoff_s: first back-off, doubled per retry, capped at ``max_backoff_s``.
        extra_body: more fields for every request body (``top_p``, ``seed``...).
        session: a ``requests.Session`` to use (default: a new one, closed by :meth:`close`).
        sleep: how to wait between attempts (injectable so tests do not sleep).
        clock: monotonic clock for latencies.

    Raises:
        ConfigError: an invalid URL, model name or limit.
    """

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        variant_models: Mapping[str, str] | None = None,
        api_key: str | None = None,
        stream: bool = False,
        max_tokens: int | None = None,
        guard: BabbleGuard | None = None,
        connect_timeout_s: float = 5.0,
        timeout_s: float = 120.0,
        deadline_s: float = 600.0,
        max_retries: int = 2,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        extra_body: Mapping[str, Any] | None = None,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        parts = urlsplit(base_url or "")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"openai engine: base URL must be an http(s) URL such as "
                f"http://127.0.0.1:8000/v1, got {_public_url(base_url or '')!r}"
            )
        if not isinstance(model, str) or not model.strip():
            raise ConfigError("openai engine: a model name is required")
        for what, value in (
            ("connect_timeout_s", connect_timeout_s),
            ("timeout_s", timeout_s),
            ("deadline_s", deadline_s),
        ):
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"openai engine: {what} must be > 0 seconds, got {value!r}")
        if max_retries < 0:
            raise ConfigError(f"openai engine: max_retries must be >= 0, got {max_retries!r}")
        if max_tokens is not None and max_tokens < 1:
            raise ConfigError(f"openai engine: max_tokens must be >= 1, got {max_tokens!r}")
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.where = f"openai engine at {_public_url(self.base_url)}"
        self.model = model.strip()
        self.variant_models = dict(variant_models or {})
        self.stream = stream
        self.max_tokens = max_tokens
        self.guard = guard
        self.timeout = (float(connect_timeout_s), float(timeout_s))
        self.deadline_s = float(deadline_s)
        self.max_retries = int(max_retries)
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.extra_body = dict(extra_body or {})
        self._api_key = api_key or None
        self._own_session = session is None
        self.session = session or requests.Session()
        self._sleep = sleep
        self._clock = clock
        host = (parts.hostname or "").lower()
        # A server on this machine is seen by this machine's meters.
        self.runs_locally = host in _LOOPBACK_HOSTS or host.startswith("127.")

    def __repr__(self) -> str:
        key = ", api_key=***" if self._api_key else ""
        return f"OpenAIEngine({_public_url(self.base_url)!r}, model={self.model!r}{key})"

    def model_for(self, variant: str | None) -> str:
        """The model name serving ``variant``.

        Raises:
            EngineError: the variant has no model name configured.
        """
        if variant is None:
            return self.model
        try:
            return self.variant_models[variant]
        except KeyError:
            known = ", ".join(sorted(self.variant_models)) or "none"
            raise EngineError(
                f"{self.where}: no model configured for variant {variant!r} "
                f"(configured variants: {known}); map it in variant_models"
            ) from None

    def _guard(self, request: ChatRequest) -> TextGuard:
        babble: Any = request.extra.get("babble_guard", self.guard)
        if babble is True:
            babble = self.guard or BabbleGuard()
        elif not isinstance(babble, BabbleGuard):
            babble = None
        return TextGuard.build(request.stop, babble)

    def _payload(self, request: ChatRequest, model: str, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            **self.extra_body,
            "model": model,
            "messages": [m.as_dict() for m in request.messages],
            "stream": stream,
        }
        cap = request.max_new_tokens if request.max_new_tokens is not None else self.max_tokens
        if cap is not None:
            body["max_tokens"] = cap
        if request.stop:
            body["stop"] = list(request.stop)
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    def generate(self, request: ChatRequest) -> Generation:
        """Answer ``request`` with the server.

        ``request.extra`` may hold ``stream`` (override the engine's choice) and
        ``babble_guard`` (True, False or a :class:`BabbleGuard`).

        Raises:
            EngineError: the server failed (after retries), timed out or answered nonsense.
        """
        model = self.model_for(request.variant)
        stream = bool(request.extra.get("stream", self.stream))
        payload = self._payload(request, model, stream)
        guard = self._guard(request)
        started = self._clock()
        result = self._with_retries(payload, stream, guard, started)
        latency_s = self._clock() - started
        text, cut_by = guard.finish(result.text)
        in_tokens = result.input_tokens
        if in_tokens is None:
            in_tokens = sum(
                approx_tokens(m.content) + _TEMPLATE_TOKENS_PER_MESSAGE for m in request.messages
            )
        out_tokens = result.output_tokens
        if out_tokens is None:
            out_tokens = result.chunks if stream else approx_tokens(result.text)
        return Generation(
            text=text,
            input_tokens=in_tokens,
            output_tokens=out_tokens,
            latency_s=latency_s,
            model=result.model or model,
            first_token_s=result.first_token_s,
            finish_reason=cut_by or result.finish_reason,
        )

    def _with_retries(
        self, payload: dict[str, Any], stream: bool, guard: TextGuard, started: float
    ) -> _Result:
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            try:
                return self._attempt(payload, stream, guard, started)
            except _Retryable as e:
                if attempt == attempts - 1:
                    raise self._error(
                        f"{e} (gave up after {attempts} attempts)", reached=e.reached_model
                    ) from None
                delay = min(self.max_backoff_s, self.backoff_s * 2**attempt)
                if e.retry_after_s is not None:
                    delay = min(self.max_backoff_s, max(delay, e.retry_after_s))
                log.warning("%s: %s; retrying in %.2f s", self.where, self._redact(str(e)), delay)
                self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _attempt(
        self, payload: dict[str, Any], stream: bool, guard: TextGuard, started: float
    ) -> _Result:
        headers = {"Accept": "text/event-stream" if stream else "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        try:
            response = self.session.post(
                self.url, json=payload, headers=headers, timeout=self.timeout, stream=stream
            )
        except requests.exceptions.ReadTimeout:
            raise self._error(
                f"no response within {self.timeout[1]:g} s (read timeout; not retried, the "
                "server may still be generating)",
                reached=True,
            ) from None
        except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError) as e:
            raise _Retryable(f"connection failed ({type(e).__name__})") from None
        except requests.exceptions.RequestException as e:
            raise self._error(f"request failed ({type(e).__name__}: {e})") from None
        with response:
            if response.status_code != 200:
                self._raise_status(response)
            try:
                if stream:
                    return self._read_stream(response, guard, started)
                return self._read_json(response, started)
            except requests.exceptions.ReadTimeout:
                raise self._error(
                    f"no data within {self.timeout[1]:g} s (read timeout)", reached=True
                ) from None
            except (
                requests.exceptions.ConnectionError,
                requests.exceptions.ChunkedEncodingError,
            ) as e:
                raise _Retryable(
                    f"connection dropped mid-response ({type(e).__name__})", reached_model=True
                ) from None

    def _raise_status(self, response: requests.Response) -> None:
        status = response.status_code
        try:
            raw = response.content[:4096]
        except requests.exceptions.RequestException:
            raw = b""
        message = raw.decode("utf-8", "replace")
        try:
            body = json.loads(message)
            err = body.get("error", body) if isinstance(body, dict) else body
            message = str(err.get("message", err) if isinstance(err, dict) else err)
        except (ValueError, AttributeError):
            pass
        message = " ".join(message.split())[:_SNIPPET_CHARS]
        what = f"HTTP {status} from /chat/completions" + (f": {message}" if message else "")
        if status in RETRY_STATUSES:
            raise _Retryable(what, _retry_after_s(response.headers.get("Retry-After")))
        if status in (401, 403):
            what += " (check the API key)"
        elif status == 404:
            what += f" (is {_requested_model(response)!r} served there, and the URL the API root?)"
        raise self._error(what)

    def _read_json(self, response: requests.Response, started: float) -> _Result:
        try:
            body = response.json()
        except ValueError:
            raise self._error("response is not JSON", reached=True) from None
        try:
            choice = body["choices"][0]
            text = choice["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise self._error("response has no choices[0].message.content", reached=True) from None
        usage = body.get("usage") or {}
        return _Result(
            text=str(text),
            model=str(body.get("model") or ""),
            input_tokens=_int_or_none(usage.get("prompt_tokens")),
            output_tokens=_int_or_none(usage.get("completion_tokens")),
            first_token_s=None,
            finish_reason=choice.get("finish_reason"),
        )

    def _read_stream(
        self, response: requests.Response, guard: TextGuard, started: float
    ) -> _Result:
        parts: list[str] = []
        result = _Result("", "", None, None, None, None)
        done = False
        for data in _sse_data(response.iter_lines()):
            if self._clock() - started > self.deadline_s:
                raise self._error(
                    f"stream exceeded its deadline of {self.deadline_s:g} s", reached=True
                )
            if data == "[DONE]":
                done = True
                break
            try:
                chunk = json.loads(data)
            except ValueError:
                raise self._error(
                    f"stream chunk is not JSON: {data[:80]!r}", reached=True
                ) from None
            if not isinstance(chunk, dict):
                raise self._error(f"stream chunk is not an object: {data[:80]!r}", reached=True)
            if "error" in chunk:
                err = chunk["error"]
                message = err.get("message", err) if isinstance(err, dict) else err
                raise self._error(
                    f"server error mid-stream: {str(message)[:_SNIPPET_CHARS]}", reached=True
                )
            result.model = result.model or str(chunk.get("model") or "")
            usage = chunk.get("usage") or {}
            if usage:
                result.input_tokens = _int_or_none(usage.get("prompt_tokens"))
                result.output_tokens = _int_or_none(usage.get("completion_tokens"))
            for choice in chunk.get("choices") or ():
                content = (choice.get("delta") or {}).get("content")
                if content:
                    if result.first_token_s is None:
                        result.first_token_s = self._clock() - started
                    parts.append(content)
                    result.chunks += 1
                result.finish_reason = choice.get("finish_reason") or result.finish_reason
            if guard.active and parts:
                decision = guard.check("".join(parts))
                if decision.stop:
                    # Closing the stream aborts the generation on the server.
                    result.finish_reason = decision.reason
                    done = True
                    break
        if not done and result.finish_reason is None:
            raise _Retryable("stream ended before [DONE]", reached_model=True)
        result.text = "".join(parts)
        return result

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    def _error(self, message: str, *, reached: bool = False) -> EngineError:
        return EngineError(self._redact(f"{self.where}: {message}"), reached_model=reached)

    def close(self) -> None:
        """Close the HTTP session (if this engine created it)."""
        if self._own_session:
            self.session.close()


def _requested_model(response: requests.Response) -> str:
    """The model name a request asked for, read back from the prepared request."""
    try:
        body = response.request.body
        raw = body.decode() if isinstance(body, bytes) else body or "{}"
        return str(json.loads(raw).get("model", "?"))
    except (ValueError, AttributeError):
        return "?"


def _int_or_none(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return None
    return int(value)


def _sse_data(lines: Iterator[bytes | str]) -> Iterator[str]:
    """The ``data`` payloads of a server-sent event stream (one per event)."""
    buffer: list[str] = []
    for raw in lines:
        line = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        if not line:
            if buffer:
                yield "\n".join(buffer)
                buffer = []
            continue
        if line.startswith(":"):
            continue  # a comment / keep-alive
        field, _, value = line.partition(":")
        if field == "data":
            buffer.append(value[1:] if value.startswith(" ") else value)
    if buffer:
        yield "\n".join(buffer)


def from_settings(settings: Settings) -> OpenAIEngine:
    """The engine at ``settings.engine_base_url`` serving ``settings.engine_model``.

    Raises:
        ConfigError: the model or base URL is missing, or the variants are malformed.
    """
    variants = variant_models(settings)
    model = required(settings, "engine_model", "engine='openai'")
    return OpenAIEngine(
        required(settings, "engine_base_url", "engine='openai'"),
        model,
        variant_models=variants,
        api_key=settings.engine_api_key or None,
        stream=settings.engine_stream,
        max_tokens=settings.engine_max_new_tokens,
        guard=babble_guard(settings),
        timeout_s=settings.engine_timeout_s,
        max_retries=settings.engine_retries,
    )
