"""The proxy's routes: chat completions, the model list, ``/healthz`` and ``/metrics``,
and the handlers that turn every failure into an OpenAI-style error.

Each handler finds its app's :class:`~sprout.server._state.ServerState` on
``request.app.state.server``. Engine calls block (``requests``), so they run on the app's
thread pool and concurrent requests do not wait on each other.
"""

# No ``from __future__ import annotations``: FastAPI reads the handlers' annotations to
# know which parameters are the request and which are path parameters.

import asyncio
import contextvars
import functools
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from sprout.metrics import CONTENT_TYPE, SproutMetrics
from sprout.server._errors import ApiError, bad, map_error
from sprout.server._sse import stream_chat
from sprout.server._state import ServerState
from sprout.server._upstream import upstream_models
from sprout.server.openai import completion, dumps, header_list, parse_chat_call, receipt_headers

# The proxy's one logger (see sprout.server._errors).
log = logging.getLogger("sprout.server")

#: How long an upstream model list is reused.
_MODELS_TTL_S = 60.0

router = APIRouter()


def server_state(request: Request) -> ServerState:
    """The state of the app serving ``request``."""
    state: ServerState = request.app.state.server
    return state


def error_response(
    metrics: SproutMetrics, error: ApiError, headers: Mapping[str, str] | None = None
) -> Response:
    """``error`` as a JSON response, counted in ``metrics``."""
    metrics.error(error.status, error.code or error.type)
    out = dict(headers or {})
    if error.status == 401:
        out["www-authenticate"] = "Bearer"
    return Response(dumps(error.body()), error.status, out, media_type="application/json")


async def http_error(request: Request, exc: HTTPException) -> Response:
    """Starlette's own errors (an unknown path, a wrong method) in OpenAI's shape."""
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    # Starlette's headers kept: a 405 says which methods are allowed (``Allow``).
    error = ApiError(exc.status_code, str(exc.detail), code=code)
    return error_response(server_state(request).metrics, error, exc.headers)


async def internal_error(request: Request, exc: Exception) -> Response:
    """Anything else that escaped a handler: a 500 (logged) in OpenAI's shape."""
    return error_response(server_state(request).metrics, map_error(exc))


async def _read_body(request: Request, max_body: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise bad("invalid Content-Length header", None, "invalid_header")
        if int(length) > max_body:
            raise ApiError(413, f"request body exceeds {max_body} bytes", code="request_too_large")
    body = bytearray()
    async for chunk in request.stream():  # ClientDisconnect if the client leaves
        body += chunk
        if len(body) > max_body:  # a chunked body without (or lying about) its length
            raise ApiError(413, f"request body exceeds {max_body} bytes", code="request_too_large")
    return bytes(body)


@router.post("/v1/chat/completions", summary="Create a chat completion (carbon-aware)")
async def chat_completions(request: Request) -> Response:
    state = server_state(request)
    metrics = state.metrics
    metrics.in_flight.inc()
    try:
        caller = state.access.authorize(request.headers)
        tenant, opt_out = state.access.tenant_and_opt_out(request.headers, caller)
        raw = await _read_body(request, state.settings.server_max_body_bytes)
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError) as e:
            raise bad(
                f"the request body is not valid JSON ({type(e).__name__})", None, "invalid_json"
            ) from None
        call = parse_chat_call(body, state.served)
        run = functools.partial(
            state.controller.chat,
            call.messages,
            max_new_tokens=call.max_tokens,
            tenant=tenant,
            opt_out=opt_out,
            stop=call.stop,
            temperature=call.temperature,
        )
        if call.stream:
            return await stream_chat(state, request, call, run)
        loop = asyncio.get_running_loop()
        try:
            # The request's context (an instrumented app's span) goes along, as in to_thread.
            result = await loop.run_in_executor(state.executor, contextvars.copy_context().run, run)
        except Exception as e:
            raise map_error(e) from None
        headers = receipt_headers(result.receipt)
        if call.ignored:
            headers["x-sprout-ignored-params"] = header_list(call.ignored)
        payload = completion(call, result, int(time.time()))
        return Response(dumps(payload), 200, headers, media_type="application/json")
    except ApiError as e:
        return error_response(metrics, e)
    except ClientDisconnect:
        # Gone while sending its request: nothing ran, no one to answer. Not an error.
        metrics.outcome("client_closed")
        log.info("client closed the connection while sending its request")
        return Response(status_code=499)
    finally:
        metrics.in_flight.inc(-1)


async def _model_list(state: ServerState) -> list[dict[str, Any]]:
    """The served models, as the upstream describes them (its list reused for a while)."""
    now = time.monotonic()
    cache = state.models_cache
    if cache and now - cache[0][0] < _MODELS_TTL_S:
        return cache[0][1]
    listed = await asyncio.get_running_loop().run_in_executor(
        state.executor, upstream_models, state.controller, state.upstream_key
    )
    names = state.served or tuple(m["id"] for m in listed)
    by_id = {m["id"]: m for m in listed}
    data = [
        by_id.get(name) or {"id": name, "object": "model", "created": 0, "owned_by": "sprout"}
        for name in names
    ]
    cache[:] = [(now, data)]
    return data


@router.get("/v1/models", summary="List the models served")
async def list_models(request: Request) -> Response:
    state = server_state(request)
    try:
        state.access.authorize(request.headers)
    except ApiError as e:
        return error_response(state.metrics, e)
    payload = {"object": "list", "data": await _model_list(state)}
    return Response(dumps(payload), media_type="application/json")


@router.get("/v1/models/{model_id:path}", summary="Retrieve a served model")
async def get_model(request: Request, model_id: str) -> Response:
    state = server_state(request)
    try:
        state.access.authorize(request.headers)
        for entry in await _model_list(state):
            if entry["id"] == model_id:
                return Response(dumps(entry), media_type="application/json")
        raise ApiError(
            404, f"The model {model_id!r} does not exist", param="model", code="model_not_found"
        )
    except ApiError as e:
        return error_response(state.metrics, e)


@router.get("/healthz", summary="Liveness, with the carbon signal and ledger state")
async def healthz(request: Request) -> Response:
    controller = server_state(request).controller
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
    return Response(dumps(payload), media_type="application/json")


@router.get("/metrics", summary="Prometheus metrics")
async def prometheus(request: Request) -> Response:
    return Response(server_state(request).metrics.render(), media_type=CONTENT_TYPE)
