"""The OpenAI-compatible proxy: ``sprout serve`` in front of any chat-completions server.

A chat app points its OpenAI client at this server instead of its model server (vLLM,
Ollama, llama.cpp, TGI...). Each ``POST /v1/chat/completions`` goes through
:meth:`sprout.controller.Controller.chat`: the directive is chosen from the grid's carbon
intensity, the shaped request is sent upstream, and the answer comes back with its carbon
receipt — in ``x-sprout-*`` headers and a ``sprout`` field of the JSON body (when
streaming: headers for what is known up front, the receipt in the final chunk).

Routes: ``POST /v1/chat/completions`` (JSON or server-sent events), ``GET /v1/models``,
``GET /v1/models/{id}``, ``GET /healthz`` and ``GET /metrics`` (Prometheus text); their
OpenAPI document (``/openapi.json``, :mod:`sprout.server_openapi`) states exactly what each
accepts and answers.

Clients authenticate with a bearer key of the keys file (``server_keys_file``,
:mod:`sprout.server_keys`), which names the tenant their receipts are recorded under: the
tenant header is honoured only for keys marked ``trusted_gateway`` (an ordinary key naming
another tenant gets a 403), so a receipt's tenant cannot be forged. The single
``server_api_key`` still works, bound to no tenant (the header is taken as sent), as does
an open proxy with no key at all.

Errors use OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``: a bad
request gets a 4xx naming the problem (never a 5xx), a failed upstream a 502. Engine
calls block (``requests``), so they run on a thread pool of ``server_threads`` workers and
concurrent requests do not wait on each other. fastapi and starlette (the ``server`` extra)
are imported when an app is created, not when this module is.
"""

import asyncio
import contextlib
import contextvars
import dataclasses
import functools
import hmac
import json
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sprout.config import Settings
from sprout.controller import StreamClosed
from sprout.errors import ConfigError, EngineError, RequestError, UnknownPromptError
from sprout.server_keys import TENANT_MAX_LENGTH, KeyRing, key_digest, valid_tenant
from sprout.server_openapi import (
    MAX_STOP_STRINGS,
    MAX_TOKENS,
    OPT_OUT_FALSE,
    OPT_OUT_TRUE,
    finish_openapi,
)

if TYPE_CHECKING:
    from fastapi import FastAPI
    from starlette.requests import Request

    from sprout.chat import ChatRequest
    from sprout.controller import ChatResult, Controller
    from sprout.policy.base import Decision
    from sprout.receipt import Receipt

log = logging.getLogger("sprout.server")

#: Request fields the proxy honours; other fields are ignored and named in a header.
_HANDLED = frozenset(
    {
        "messages",
        "model",
        "max_tokens",
        "max_completion_tokens",
        "stream",
        "stream_options",
        "stop",
        "temperature",
        "n",
        "tools",
        "functions",
        "tool_choice",
        "function_call",
        "response_format",
        "logprobs",
        "top_logprobs",
        "user",
    }
)
_PARAM_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
#: How long an upstream model list is reused.
_MODELS_TTL_S = 60.0


class ApiError(Exception):
    """A request the proxy answers with an OpenAI-style error.

    Attributes:
        status: the HTTP status.
        message: what is wrong, for the client.
        type: OpenAI's error type (``invalid_request_error``, ``api_error``...).
        param: the offending parameter, or None.
        code: a machine-readable code (``model_not_found``, ``upstream_error``...).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        """The JSON error body."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def _bad(message: str, param: str | None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


@dataclass(frozen=True)
class ChatCall:
    """A validated chat-completions request.

    Attributes:
        messages: the messages, content parts flattened to text.
        model: the model asked for (None: the default).
        max_tokens: the app's token cap.
        stream: answer with server-sent events.
        include_usage: send a usage chunk at the end of a stream.
        stop: the app's stop sequences.
        temperature: the app's temperature.
        ignored: names of request fields the proxy does not honour.
    """

    messages: list[dict[str, Any]]
    model: str | None = None
    max_tokens: int | None = None
    stream: bool = False
    include_usage: bool = False
    stop: tuple[str, ...] = ()
    temperature: float | None = None
    ignored: tuple[str, ...] = ()


@dataclass(frozen=True)
class Caller:
    """Who sent a request, as its API key says.

    Attributes:
        tenant: the key's tenant (None: a key bound to no tenant, or an open proxy).
        may_name_tenant: the tenant header is honoured (a trusted gateway's key, the
            single ``server_api_key``, an open proxy).
        key_id: the keys-file entry's id, or None.
    """

    tenant: str | None
    may_name_tenant: bool
    key_id: str | None = None


_ANYONE = Caller(None, True)


def _is_int(value: object) -> bool:
    """An integer, as JSON Schema counts them: ``2`` or ``2.0``, never ``true``."""
    if isinstance(value, float):
        return value.is_integer()
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _text_content(content: object, at: str) -> object:
    """Message content with OpenAI's text parts joined; other content returned as is."""
    if not isinstance(content, list):
        return content
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, Mapping) or part.get("type") != "text":
            kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
            raise _bad(
                f"{at}.content[{j}]: only text content parts are supported, got {kind!r}",
                f"{at}.content[{j}]",
                "unsupported_content",
            )
        text = part.get("text")
        if not isinstance(text, str):
            raise _bad(f"{at}.content[{j}].text: expected a string", f"{at}.content[{j}].text")
        texts.append(text)
    return "\n".join(texts)


def parse_chat_call(body: object, served: Sequence[str] | None = None) -> ChatCall:
    """Validate a decoded ``/v1/chat/completions`` body.

    Args:
        body: the decoded JSON.
        served: the model names accepted (None: any).

    Raises:
        ApiError: 400 naming the parameter and the problem, or 404 for an unknown model.
    """
    from sprout.chat import parse_messages

    if not isinstance(body, dict):
        raise _bad(
            f"the request body must be a JSON object, got {type(body).__name__}",
            None,
            "invalid_type",
        )
    if "messages" not in body:
        raise _bad("'messages' is required", "messages", "missing_required_parameter")
    raw = body["messages"]
    if not isinstance(raw, list):
        raise _bad("'messages' must be a list of messages", "messages", "invalid_type")
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise _bad(f"messages[{i}]: expected an object", f"messages[{i}]", "invalid_type")
        if "role" in item and not isinstance(item["role"], str):
            raise _bad(
                f"messages[{i}].role: expected a string", f"messages[{i}].role", "invalid_type"
            )
        if "content" in item:
            item = {**item, "content": _text_content(item["content"], f"messages[{i}]")}
        messages.append(item)
    try:
        parse_messages(messages)
    except RequestError as e:
        text = str(e)
        param = text.split(":", 1)[0] if text.startswith("messages") else "messages"
        raise _bad(text, param) from None

    model = body.get("model")
    if model is not None:
        if not isinstance(model, str):
            raise _bad("'model' must be a string", "model", "invalid_type")
        if served is not None and model not in served:
            raise ApiError(
                404,
                f"The model {model!r} does not exist or is not served by this proxy "
                f"(served: {', '.join(served) or 'none'})",
                param="model",
                code="model_not_found",
            )

    max_tokens = None
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if not _is_int(value) or not 1 <= value <= MAX_TOKENS:
            raise _bad(f"'{name}' must be an integer in [1, {MAX_TOKENS}]", name)
        value = int(value)
        max_tokens = value if max_tokens is None else min(max_tokens, value)

    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _bad("'stream' must be true or false", "stream", "invalid_type")
    include_usage = False
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise _bad("'stream_options' must be an object", "stream_options", "invalid_type")
        usage = options.get("include_usage")
        if usage is not None and not isinstance(usage, bool):
            raise _bad(
                "'stream_options.include_usage' must be true or false",
                "stream_options.include_usage",
                "invalid_type",
            )
        include_usage = bool(usage)

    stop = body.get("stop")
    stops: tuple[str, ...] = ()
    if isinstance(stop, str):
        stops = (stop,)
    elif isinstance(stop, list):
        if len(stop) > MAX_STOP_STRINGS or not all(isinstance(s, str) for s in stop):
            raise _bad(f"'stop' must be a string or up to {MAX_STOP_STRINGS} strings", "stop")
        stops = tuple(stop)
    elif stop is not None:
        raise _bad("'stop' must be a string or a list of strings", "stop", "invalid_type")

    temperature = body.get("temperature")
    if temperature is not None and (
        not _is_number(temperature) or not math.isfinite(temperature) or not 0 <= temperature <= 2
    ):
        raise _bad("'temperature' must be a number in [0, 2]", "temperature")

    n = body.get("n")
    if n is not None and (not _is_int(n) or n < 1):
        raise _bad("'n' must be an integer >= 1", "n")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise _bad("'user' must be a string", "user", "invalid_type")
    # Fields that change what the answer is: refused rather than silently ignored. Checked
    # by type as well as value (``0 == False`` in Python, not in JSON).
    top_logprobs = body.get("top_logprobs")
    unsupported = {
        "n": n is not None and n != 1,
        "tools": body.get("tools") not in (None, []),
        "functions": body.get("functions") not in (None, []),
        "logprobs": not (body.get("logprobs") is None or body.get("logprobs") is False),
        "top_logprobs": top_logprobs is not None
        and (not _is_number(top_logprobs) or top_logprobs != 0),
        "response_format": body.get("response_format") not in (None, {"type": "text"}),
    }
    for name, refused in unsupported.items():
        if refused:
            raise _bad(
                f"'{name}' is not supported by the Sprout proxy", name, "unsupported_parameter"
            )
    ignored = tuple(sorted(k for k in body if k not in _HANDLED))
    return ChatCall(
        messages=messages,
        model=model,
        max_tokens=max_tokens,
        stream=bool(stream),
        include_usage=include_usage,
        stop=tuple(s for s in stops if s),
        temperature=float(temperature) if temperature is not None else None,
        ignored=ignored,
    )


def _header_list(names: Sequence[str]) -> str:
    """Field names safe for a header (latin-1, no controls); others counted."""
    safe = [n for n in names if _PARAM_NAME.fullmatch(n)][:20]
    rest = len(names) - len(safe)
    return ", ".join(safe + ([f"+{rest} more"] if rest else []))


@functools.cache
def _receipt_fields() -> tuple[str, ...]:
    from sprout.receipt import Receipt

    return tuple(f.name for f in dataclasses.fields(Receipt))


def _float(value: float) -> str:
    return f"{value:.6g}"


def receipt_json(receipt: "Receipt") -> dict[str, Any]:
    """The ``sprout`` field: the receipt (as :meth:`Receipt.to_json_dict` gives it), with
    its total and saving."""
    # A shallow copy: the receipt holds only scalars, and asdict's deep copy costs ~0.1 ms.
    out = {name: getattr(receipt, name) for name in _receipt_fields()}
    for key in ("created_at", "ci_time"):
        out[key] = out[key].isoformat()
    out["total_g"] = receipt.total_g
    out["saving_g"] = receipt.saving_g
    return out


def receipt_headers(receipt: "Receipt") -> dict[str, str]:
    """The ``x-sprout-*`` headers of an answered request."""
    headers = {
        "x-sprout-request-id": receipt.request_id,
        "x-sprout-directive": receipt.directive,
        "x-sprout-decision": receipt.decision,
        "x-sprout-gco2e": _float(receipt.total_g),
        "x-sprout-kwh": _float(receipt.energy_kwh),
        "x-sprout-energy-source": receipt.energy_source,
        "x-sprout-ci-g-per-kwh": _float(receipt.ci_g_per_kwh),
        "x-sprout-ci-fallback": receipt.ci_fallback,
    }
    if receipt.saving_g is not None:
        headers["x-sprout-saving-gco2e"] = _float(receipt.saving_g)
    return headers


def _finish_reason(reason: str | None) -> str:
    # Guard rules (``stop-sequence``, ``babble-...``) end an answer as a stop string does.
    return "length" if reason == "length" else "stop"


def _completion(call: ChatCall, result: "ChatResult", created: int) -> dict[str, Any]:
    generation, receipt = result.generation, result.receipt
    return {
        "id": f"chatcmpl-{receipt.request_id}",
        "object": "chat.completion",
        "created": created,
        "model": generation.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.text},
                "finish_reason": _finish_reason(generation.finish_reason),
                "logprobs": None,
            }
        ],
        "usage": _usage(result),
        "sprout": receipt_json(receipt),
    }


def _usage(result: "ChatResult") -> dict[str, int]:
    g = result.generation
    return {
        "prompt_tokens": g.input_tokens,
        "completion_tokens": g.output_tokens,
        "total_tokens": g.input_tokens + g.output_tokens,
    }


def _dumps(payload: object) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


def _sse(payload: object) -> bytes:
    return b"data: " + _dumps(payload) + b"\n\n"


def _map_error(error: BaseException) -> ApiError:
    """The client's answer to an exception raised while serving."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, RequestError):
        return _bad(str(error), "messages")
    if isinstance(error, UnknownPromptError):  # the replay engine: a prompt it never recorded
        return _bad(str(error), "messages", "unknown_prompt")
    if isinstance(error, EngineError):
        return ApiError(
            502,
            f"the upstream model server failed: {error}",
            type="api_error",
            code="upstream_error",
        )
    log.error("request failed unexpectedly", exc_info=error)
    return ApiError(
        500, f"internal error ({type(error).__name__})", type="api_error", code="internal_error"
    )


def served_models(controller: "Controller") -> tuple[str, ...] | None:
    """Model names the controller's engine answers as, or None when any name goes."""
    engine = controller.engine
    if engine.name == "replay":
        from sprout.engines.replay import VARIANT_MODELS

        return tuple(dict.fromkeys(VARIANT_MODELS.values()))
    model = getattr(engine, "model", None)
    if isinstance(model, str) and model:
        variants = getattr(engine, "variant_models", None) or {}
        return tuple(dict.fromkeys([model, *variants.values()]))
    return None


def discover_model(base_url: str, api_key: str = "", timeout_s: float = 5.0) -> str:
    """The first model an OpenAI-compatible server lists at ``{base_url}/models``.

    Raises:
        ConfigError: the server cannot be asked or lists no model.
    """
    import requests

    from sprout.engines.openai_compat import _public_url

    url = f"{base_url.rstrip('/')}/models"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    where = _public_url(url)
    try:
        response = requests.get(url, headers=headers, timeout=(min(2.0, timeout_s), timeout_s))
        response.raise_for_status()
        ids = [m["id"] for m in response.json()["data"] if isinstance(m.get("id"), str)]
    except (requests.RequestException, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ConfigError(
            f"no model named and {where} could not list one ({type(e).__name__}); "
            "pass --model or set engine_model"
        ) from None
    if not ids:
        raise ConfigError(f"{where} lists no model; pass --model or set engine_model")
    return ids[0]


def upstream_settings(settings: Settings, upstream: str, model: str | None = None) -> Settings:
    """``settings`` with the OpenAI-compatible engine at ``upstream`` (its ``/v1`` root).

    The model is ``model``, else ``settings.engine_model``, else the first one the upstream
    lists.
    """
    model = model or settings.engine_model
    if not model:
        model = discover_model(upstream, settings.engine_api_key, settings.engine_timeout_s)
    return settings.replace(engine="openai", engine_base_url=upstream, engine_model=model)


class _Sink:
    """Carries a streamed answer from the engine's thread to the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.cancelled = False

    def put(self, kind: str, value: Any) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, value))

    def start(self, request_id: str, request: "ChatRequest", decision: "Decision") -> None:
        self.put("start", (request_id, decision))

    def text(self, delta: str) -> None:
        if self.cancelled:
            raise StreamClosed("the streaming client disconnected")
        self.put("text", delta)


async def _disconnected(request: "Request") -> None:
    """Return once the client of ``request`` (whose body was read) disconnects."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def create_app(
    source: "Controller | Settings",
    *,
    settings: Settings | None = None,
    api_key: str | None = None,
    models: Sequence[str] | None = None,
    upstream_api_key: str | None = None,
) -> "FastAPI":
    """The proxy as a FastAPI app.

    Args:
        source: a controller to serve (the caller closes it), or settings to build one
            from (closed when the app shuts down).
        settings: the server settings when ``source`` is a controller (default:
            :class:`Settings` defaults): threads, body limit, header names, API key.
        api_key: clients must send ``Authorization: Bearer <api_key>`` (default:
            ``settings.server_api_key``; empty: no key required).
        models: the model names clients may ask for (default: the engine's model and
            variant models; any name for engines without one).
        upstream_api_key: the upstream's key for listing its models (default:
            ``settings.engine_api_key``).

    Raises:
        ConfigError: the ``server`` extra is not installed, or a setting is invalid.
    """
    try:
        from fastapi import FastAPI, Request
        from starlette.exceptions import HTTPException
        from starlette.requests import ClientDisconnect
        from starlette.responses import Response, StreamingResponse
    except ImportError as e:  # pragma: no cover - depends on the installed extras
        raise ConfigError(
            f"the proxy needs the server extra: pip install 'sprout[server]' ({e})"
        ) from None
    from sprout.controller import Controller
    from sprout.metrics import CONTENT_TYPE, SproutMetrics

    owned = isinstance(source, Settings)
    if isinstance(source, Settings):
        from sprout.factory import build_controller

        settings = source
        controller = build_controller(settings)
    elif isinstance(source, Controller):
        controller = source
        settings = settings or Settings()
    else:
        raise ConfigError(f"create_app: expected a Controller or Settings, got {source!r}")
    key = (settings.server_api_key if api_key is None else api_key).encode()
    legacy_digest = key_digest(key) if key else None
    keyring = KeyRing(settings.server_keys_file) if settings.server_keys_file else None
    if keyring is not None:
        log.info("keys file %s: %d key(s)", keyring.path, len(keyring.entries))
    upstream_key = settings.engine_api_key if upstream_api_key is None else upstream_api_key
    served = tuple(models) if models is not None else served_models(controller)
    max_body = settings.server_max_body_bytes
    tenant_header = settings.server_tenant_header.lower()
    opt_out_header = settings.server_opt_out_header.lower()
    executor = ThreadPoolExecutor(settings.server_threads, thread_name_prefix="sprout-engine")
    _widen_pool(controller, settings.server_threads)
    metrics = SproutMetrics(controller)
    # Every receipt the controller writes, interrupted generations' too, reaches /metrics.
    controller.add_listener(metrics.observe)
    models_cache: list[tuple[float, list[dict[str, Any]]]] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
            if owned:
                controller.close()  # flushes the ledger
            elif controller.ledger is not None:
                controller.ledger.flush()
            if getattr(app.state, "dashboard", None) is not None:
                app.state.dashboard.close()

    app = FastAPI(
        title="Sprout",
        summary="Carbon-aware OpenAI-compatible proxy",
        version=_version(),
        lifespan=lifespan,
    )
    app.state.controller = controller
    app.state.metrics = metrics
    app.state.executor = executor
    app.state.keyring = keyring

    def error_response(error: ApiError, headers: Mapping[str, str] | None = None) -> Response:
        metrics.error(error.status, error.code or error.type)
        out = dict(headers or {})
        if error.status == 401:
            out["www-authenticate"] = "Bearer"
        return Response(_dumps(error.body()), error.status, out, media_type="application/json")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        # Starlette's headers kept: a 405 says which methods are allowed (``Allow``).
        return error_response(ApiError(exc.status_code, str(exc.detail), code=code), exc.headers)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> Response:
        return error_response(_map_error(exc))

    def authorize(request: Request) -> Caller:
        if legacy_digest is None and keyring is None:
            return _ANYONE
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        given = given.strip()
        # Keys are compared as SHA-256 digests, in constant time (so response times tell
        # nothing about them), against every key; a key is never logged.
        digest = key_digest(given)
        entry = keyring.match(digest) if keyring is not None else None
        legacy = legacy_digest is not None and hmac.compare_digest(digest, legacy_digest)
        if scheme.lower() == "bearer" and given:
            if entry is not None and entry.revoked:
                log.info("refused revoked API key %r (tenant %r)", entry.id, entry.tenant)
                raise ApiError(
                    401,
                    f"This API key (id {entry.id!r}) has been revoked; ask the proxy's "
                    "operator for a new one",
                    code="revoked_api_key",
                )
            if entry is not None:
                return Caller(entry.tenant, entry.trusted_gateway, entry.id)
            if legacy:
                return _ANYONE
        raise ApiError(
            401,
            "Incorrect or missing API key: send 'Authorization: Bearer <key>'",
            param=None,
            code="invalid_api_key",
        )

    async def read_body(request: Request) -> bytes:
        length = request.headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise _bad("invalid Content-Length header", None, "invalid_header")
            if int(length) > max_body:
                raise ApiError(
                    413, f"request body exceeds {max_body} bytes", code="request_too_large"
                )
        body = bytearray()
        async for chunk in request.stream():  # ClientDisconnect if the client leaves
            body += chunk
            if len(body) > max_body:  # a chunked body without (or lying about) its length
                raise ApiError(
                    413, f"request body exceeds {max_body} bytes", code="request_too_large"
                )
        return bytes(body)

    def per_request(request: Request, caller: Caller) -> tuple[str | None, bool]:
        tenant = caller.tenant
        sent = request.headers.get(tenant_header)
        if sent is not None:
            if not caller.may_name_tenant and sent.strip(" \t") != caller.tenant:
                raise ApiError(
                    403,
                    f"header {tenant_header}: this API key (id {caller.key_id!r}) is bound to "
                    f"tenant {caller.tenant!r} and may not name another; drop the header, or "
                    "use a key marked trusted_gateway in the keys file",
                    type="permission_error",
                    param=tenant_header,
                    code="tenant_header_not_allowed",
                )
            if not valid_tenant(sent):
                raise _bad(
                    f"header {tenant_header}: expected 1 to {TENANT_MAX_LENGTH} printable "
                    "ASCII characters",
                    tenant_header,
                    "invalid_header",
                )
            tenant = sent.strip(" ")
        flag = request.headers.get(opt_out_header)
        opt_out = False
        if flag is not None:
            value = flag.strip(" \t").lower()
            if value not in (*OPT_OUT_TRUE, *OPT_OUT_FALSE):
                raise _bad(
                    f"header {opt_out_header}: expected true or false",
                    opt_out_header,
                    "invalid_header",
                )
            opt_out = value in OPT_OUT_TRUE
        return tenant, opt_out

    @app.post("/v1/chat/completions", summary="Create a chat completion (carbon-aware)")
    async def chat_completions(request: Request) -> Response:
        metrics.in_flight.inc()
        try:
            tenant, opt_out = per_request(request, authorize(request))
            raw = await read_body(request)
            try:
                body = json.loads(raw)
            except (ValueError, RecursionError) as e:
                raise _bad(
                    f"the request body is not valid JSON ({type(e).__name__})", None, "invalid_json"
                ) from None
            call = parse_chat_call(body, served)
            run = functools.partial(
                controller.chat,
                call.messages,
                max_new_tokens=call.max_tokens,
                tenant=tenant,
                opt_out=opt_out,
                stop=call.stop,
                temperature=call.temperature,
            )
            if call.stream:
                return await stream(request, call, run)
            loop = asyncio.get_running_loop()
            try:
                # The request's context (an instrumented app's span) goes along, as in to_thread.
                result = await loop.run_in_executor(executor, contextvars.copy_context().run, run)
            except Exception as e:
                raise _map_error(e) from None
            headers = receipt_headers(result.receipt)
            if call.ignored:
                headers["x-sprout-ignored-params"] = _header_list(call.ignored)
            payload = _completion(call, result, int(time.time()))
            return Response(_dumps(payload), 200, headers, media_type="application/json")
        except ApiError as e:
            return error_response(e)
        except ClientDisconnect:
            # Gone while sending its request: nothing ran, no one to answer. Not an error.
            metrics.outcome("client_closed")
            log.info("client closed the connection while sending its request")
            return Response(status_code=499)
        finally:
            metrics.in_flight.inc(-1)

    async def stream(
        request: Request, call: ChatCall, run: "functools.partial[ChatResult]"
    ) -> Response:
        loop = asyncio.get_running_loop()
        sink = _Sink(loop)

        def produce() -> None:
            try:
                sink.put("done", run(stream=sink))
            except BaseException as e:  # handed to the event loop
                sink.put("error", e)

        executor.submit(contextvars.copy_context().run, produce)
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
                    raise _map_error(value)
                else:
                    first.append((kind, value))
        finally:
            gone.cancel()
        created = int(time.time())
        model = call.model or (served[0] if served else "")

        def chunk(delta: dict[str, Any], reason: str | None, model: str = model) -> dict[str, Any]:
            return {
                "id": f"chatcmpl-{request_id}",
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": reason}],
            }

        async def events() -> AsyncIterator[bytes]:
            pending = first
            metrics.in_flight.inc()  # the handler has returned; the answer is still going
            try:
                yield _sse(chunk({"role": "assistant", "content": ""}, None))
                while True:
                    kind, value = pending.pop() if pending else await sink.queue.get()
                    if kind == "text":
                        yield _sse(chunk({"content": value}, None))
                        continue
                    if kind == "error":
                        error = _map_error(value)
                        metrics.error(error.status, error.code or error.type)
                        yield _sse(error.body())
                        break
                    result: ChatResult = value
                    final = chunk({}, _finish_reason(result.generation.finish_reason))
                    final["model"] = result.generation.model
                    if call.include_usage:
                        yield _sse(final)
                        final = {**final, "choices": [], "usage": _usage(result)}
                    final["sprout"] = receipt_json(result.receipt)
                    yield _sse(final)
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
            headers["x-sprout-ignored-params"] = _header_list(call.ignored)
        return StreamingResponse(events(), headers=headers, media_type="text/event-stream")

    async def model_list() -> list[dict[str, Any]]:
        now = time.monotonic()
        if models_cache and now - models_cache[0][0] < _MODELS_TTL_S:
            return models_cache[0][1]
        listed = await asyncio.get_running_loop().run_in_executor(
            executor, _upstream_models, controller, upstream_key
        )
        names = served or tuple(m["id"] for m in listed)
        by_id = {m["id"]: m for m in listed}
        data = [
            by_id.get(name) or {"id": name, "object": "model", "created": 0, "owned_by": "sprout"}
            for name in names
        ]
        models_cache[:] = [(now, data)]
        return data

    @app.get("/v1/models", summary="List the models served")
    async def list_models(request: Request) -> Response:
        try:
            authorize(request)
        except ApiError as e:
            return error_response(e)
        payload = {"object": "list", "data": await model_list()}
        return Response(_dumps(payload), media_type="application/json")

    @app.get("/v1/models/{model_id:path}", summary="Retrieve a served model")
    async def get_model(request: Request, model_id: str) -> Response:
        try:
            authorize(request)
            for entry in await model_list():
                if entry["id"] == model_id:
                    return Response(_dumps(entry), media_type="application/json")
            raise ApiError(
                404, f"The model {model_id!r} does not exist", param="model", code="model_not_found"
            )
        except ApiError as e:
            return error_response(e)

    @app.get("/healthz", summary="Liveness, with the carbon signal and ledger state")
    async def healthz() -> Response:
        signal = controller.signal.read()
        payload: dict[str, Any] = {
            "status": "ok",
            "engine": controller.engine.name,
            "carbon": {
                "ci_g_per_kwh": signal.reading.ci_g_per_kwh,
                "age_s": signal.age_s,
                "fallback": signal.fallback,
            },
        }
        if controller.ledger is not None:
            payload["ledger_backlog"] = controller.ledger.pending()
        return Response(_dumps(payload), media_type="application/json")

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    if settings.server_dashboard:  # the read-only ledger dashboard, GET /dashboard
        from sprout.dashboard.app import add_dashboard_routes
        from sprout.dashboard.data import Dashboard

        app.state.dashboard = Dashboard.for_controller(settings, controller)
        add_dashboard_routes(app, app.state.dashboard)

    generate_openapi = app.openapi
    documents: list[dict[str, Any]] = []

    def openapi() -> dict[str, Any]:
        if not documents:
            documents.append(
                finish_openapi(
                    generate_openapi(),
                    served=served,
                    tenant_header=tenant_header,
                    opt_out_header=opt_out_header,
                    auth=legacy_digest is not None or keyring is not None,
                    keys=keyring is not None,
                    metrics_type=CONTENT_TYPE,
                )
            )
        return documents[0]

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _version() -> str:
    from sprout import __version__

    return __version__


def _widen_pool(controller: "Controller", threads: int) -> None:
    """Let the engine's HTTP session keep a connection per worker thread.

    requests keeps 10 connections per host by default; with more concurrent requests the
    others would open and close a connection each time. A model server on this machine is
    never reached through an HTTP proxy, so the session stops reading proxy variables from
    the environment on every request (a fifth of requests' own time per call).
    """
    engine = controller.engine
    session = getattr(engine, "session", None)
    if session is None or not hasattr(session, "mount"):
        return
    from requests.adapters import HTTPAdapter

    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=threads)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    if engine.runs_locally:
        session.trust_env = False


def _upstream_models(controller: "Controller", api_key: str) -> list[dict[str, Any]]:
    """The upstream's model list (empty when it has none or cannot be asked)."""
    engine = controller.engine
    base_url, session = getattr(engine, "base_url", None), getattr(engine, "session", None)
    if not isinstance(base_url, str) or session is None:
        return []
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = session.get(f"{base_url}/models", headers=headers, timeout=(2.0, 5.0))
        response.raise_for_status()
        data = response.json()["data"]
        return [
            {
                "id": m["id"],
                "object": "model",
                "created": int(m.get("created") or 0),
                "owned_by": str(m.get("owned_by") or "upstream"),
            }
            for m in data
            if isinstance(m, dict) and isinstance(m.get("id"), str)
        ]
    except Exception as e:  # the configured names are the answer then
        log.info("upstream model list unavailable: %s", type(e).__name__)
        return []


def serve(settings: Settings, *, log_level: str = "warning") -> None:
    """Run the proxy with uvicorn on ``settings.server_host:server_port`` until stopped:
    ``settings.server_workers`` processes (see :mod:`sprout.server_workers`), one by default."""
    try:
        import uvicorn
    except ImportError as e:  # pragma: no cover - depends on the installed extras
        raise ConfigError(
            f"the proxy needs the server extra: pip install 'sprout[server]' ({e})"
        ) from None
    if settings.server_workers > 1:
        from sprout.server_workers import serve_workers

        serve_workers(settings, log_level=log_level)
        return
    app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.server_host,
        port=settings.server_port,
        log_level=log_level,
        timeout_graceful_shutdown=10,
    )
