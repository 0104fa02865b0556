"""The proxy's OpenAPI document: exactly what :mod:`sprout.server` accepts and answers.

FastAPI derives little from routes that read the raw request, so each operation's
parameters, request body and responses are written here and put into the generated
document by :func:`finish_openapi`. The request body schema mirrors
:func:`sprout.server.openai.parse_chat_call` rule for rule (a body the schema allows is
accepted, one it refuses gets a 4xx), and every status a route can answer is listed with its
content type; ``tests/unit/server/test_schema.py`` checks both with schemathesis.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from sprout.chat import ROLES
from sprout.server.keys import TENANT_MAX_LENGTH, TENANT_PATTERN

#: Largest token cap accepted (a 32-bit count, as servers use).
MAX_TOKENS = 2**31 - 1
MAX_STOP_STRINGS = 16
#: Values of the opt-out header (case-insensitive, blanks around them ignored).
OPT_OUT_TRUE = ("1", "true", "yes", "on")
OPT_OUT_FALSE = ("", "0", "false", "no", "off")
#: The name of the bearer scheme in ``components.securitySchemes``.
BEARER = "bearerAuth"

_CHAT = ("/v1/chat/completions", "post")
_MODELS = ("/v1/models", "get")
_MODEL = ("/v1/models/{model_id}", "get")
_HEALTH = ("/healthz", "get")
_METRICS = ("/metrics", "get")


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "type": [schema["type"], "null"]}


def _any_case(word: str) -> str:
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in word)


#: The opt-out header's values as a regular expression (JSON Schema has no ignore-case flag).
OPT_OUT_PATTERN = (
    r"^[ \t]*(" + "|".join(_any_case(w) for w in OPT_OUT_TRUE + OPT_OUT_FALSE) + r")[ \t]*$"
)

_TEXT_PART = {
    "type": "object",
    "required": ["type", "text"],
    "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
}
_MESSAGE = {
    "type": "object",
    "required": ["role", "content"],
    "properties": {
        "role": {"type": "string", "enum": sorted(ROLES)},
        "content": {
            "oneOf": [{"type": "string"}, {"type": "array", "items": _TEXT_PART}],
            "description": "text, or text parts (joined with newlines); other parts are refused",
        },
    },
}
_TOKENS = {"type": "integer", "minimum": 1, "maximum": MAX_TOKENS}


def request_body(served: Sequence[str] | None) -> dict[str, Any]:
    """The ``requestBody`` of ``POST /v1/chat/completions``.

    Args:
        served: the model names accepted (None: any name).
    """
    model: dict[str, Any] = {"type": ["string", "null"]}
    if served is not None:
        model["enum"] = [*served, None]
    refused = "not supported: absent, null or "
    schema = {
        "type": "object",
        "required": ["messages"],
        "description": "OpenAI's chat-completions request. Fields not listed are ignored "
        "and named in the x-sprout-ignored-params response header.",
        "properties": {
            "model": model,
            "messages": {
                "type": "array",
                "minItems": 1,
                "items": _MESSAGE,
                "contains": {
                    "type": "object",
                    "required": ["role"],
                    "properties": {"role": {"const": "user"}},
                },
                "description": "the conversation; at least one message has role 'user' "
                "(the last one is what the request asks)",
            },
            "max_tokens": _nullable(_TOKENS),
            "max_completion_tokens": _nullable(_TOKENS),
            "stream": {"type": ["boolean", "null"]},
            "stream_options": {
                "type": ["object", "null"],
                "properties": {"include_usage": {"type": ["boolean", "null"]}},
            },
            "stop": {
                "oneOf": [
                    {"type": "string"},
                    {"type": "array", "items": {"type": "string"}, "maxItems": MAX_STOP_STRINGS},
                    {"type": "null"},
                ]
            },
            "temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 2},
            "n": {"enum": [1, None], "description": refused + "1"},
            "tools": {"type": ["array", "null"], "maxItems": 0, "description": refused + "[]"},
            "functions": {
                "type": ["array", "null"],
                "maxItems": 0,
                "description": refused + "[]",
            },
            "logprobs": {"enum": [False, None], "description": refused + "false"},
            "top_logprobs": {"enum": [0, None], "description": refused + "0"},
            "response_format": {
                "oneOf": [
                    {"type": "null"},
                    {
                        "type": "object",
                        "required": ["type"],
                        "properties": {"type": {"const": "text"}},
                        "additionalProperties": False,
                    },
                ],
                "description": refused + '{"type": "text"}',
            },
            "user": {"type": ["string", "null"]},
        },
    }
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def header_parameters(tenant_header: str, opt_out_header: str) -> list[dict[str, Any]]:
    """The per-request control headers of ``POST /v1/chat/completions``."""
    return [
        {
            "name": tenant_header,
            "in": "header",
            "required": False,
            "description": "the tenant recorded in the receipt. Honoured for trusted-gateway "
            "keys, the legacy server_api_key and an open proxy; an ordinary key may only "
            "name its own tenant (else 403).",
            "schema": {"type": "string", "maxLength": TENANT_MAX_LENGTH, "pattern": TENANT_PATTERN},
        },
        {
            "name": opt_out_header,
            "in": "header",
            "required": False,
            "description": "true: serve the baseline directive (recorded as opt-out)",
            "schema": {"type": "string", "pattern": OPT_OUT_PATTERN},
        },
    ]


ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
_RECEIPT = {
    "type": "object",
    "description": "the carbon receipt as the ledger stores it, with total_g and saving_g",
    "required": ["request_id", "directive", "decision", "energy_kwh", "total_g", "saving_g"],
    "properties": {
        "request_id": {"type": "string"},
        "directive": {"type": "string"},
        "decision": {"type": "string"},
        "tenant": {"type": ["string", "null"]},
        "energy_kwh": {"type": "number"},
        "energy_source": {"type": "string"},
        "ci_g_per_kwh": {"type": "number"},
        "total_g": {"type": "number"},
        "saving_g": {"type": ["number", "null"]},
    },
}
_COUNT = {"type": "integer", "minimum": 0}
_COMPLETION = {
    "type": "object",
    "required": ["id", "object", "created", "model", "choices", "usage", "sprout"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "chat.completion"},
        "created": {"type": "integer"},
        "model": {"type": "string"},
        "choices": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["index", "message", "finish_reason"],
                "properties": {
                    "index": {"type": "integer"},
                    "message": {
                        "type": "object",
                        "required": ["role", "content"],
                        "properties": {
                            "role": {"const": "assistant"},
                            "content": {"type": "string"},
                        },
                    },
                    "finish_reason": {"enum": ["stop", "length"]},
                },
            },
        },
        "usage": {
            "type": "object",
            "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
            "properties": {
                "prompt_tokens": _COUNT,
                "completion_tokens": _COUNT,
                "total_tokens": _COUNT,
            },
        },
        "sprout": _RECEIPT,
    },
}
_MODEL_ENTRY = {
    "type": "object",
    "required": ["id", "object", "created", "owned_by"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "model"},
        "created": {"type": "integer"},
        "owned_by": {"type": "string"},
    },
}
_HEALTH_SCHEMA = {
    "type": "object",
    "required": ["status", "engine", "carbon"],
    "properties": {
        "status": {"const": "ok"},
        "engine": {"type": "string"},
        "carbon": {
            "type": "object",
            "required": ["ci_g_per_kwh", "age_s", "fallback"],
            "properties": {
                "ci_g_per_kwh": {"type": "number"},
                "age_s": {"type": "number"},
                "fallback": {"type": "string"},
            },
        },
        "ledger_backlog": _COUNT,
    },
}
#: One server-sent event of a streamed answer (OpenAPI before 3.2: ``schema`` is per event).
_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "data": {
            "type": "string",
            "description": "a chat.completion.chunk as JSON (the last one carries the receipt "
            "in `sprout`), an OpenAI-style error object if the upstream fails mid-answer, "
            "then [DONE]",
        }
    },
}
_STRING = {"schema": {"type": "string"}}
_RECEIPT_HEADERS = {
    "x-sprout-request-id": {"required": True, "description": "the receipt's id", **_STRING},
    "x-sprout-directive": {"description": "the directive served (L0...)", **_STRING},
    "x-sprout-decision": {"description": "why (lp-mix, opt-out, fallback...)", **_STRING},
    "x-sprout-gco2e": {"description": "carbon of the request (not when streaming)", **_STRING},
    "x-sprout-saving-gco2e": {"description": "carbon saved against always-L0", **_STRING},
    "x-sprout-kwh": {"description": "energy of the request (not when streaming)", **_STRING},
    "x-sprout-energy-source": {"description": "estimated, recorded or measured-*", **_STRING},
    "x-sprout-ci-g-per-kwh": {"description": "carbon intensity used", **_STRING},
    "x-sprout-ci-fallback": {"description": "which layer of the signal supplied it", **_STRING},
    "x-sprout-ignored-params": {"description": "request fields not passed on", **_STRING},
}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int, auth: bool, keys: bool = False) -> dict[str, Any]:
    why = {
        400: "a malformed request: the message names the parameter and the problem (also a "
        "prompt the replay engine has no recording of)",
        401: "a missing, unknown or revoked API key",
        403: "the tenant header, sent with a key that may not name that tenant",
        404: "an unknown model",
        413: "a request body over server_max_body_bytes",
        502: "the upstream model server failed",
    }
    out: dict[str, Any] = {}
    for status in statuses:
        if (status == 401 and not auth) or (status == 403 and not keys):
            continue
        out[str(status)] = _json(f"OpenAI-style error: {why[status]}", ERROR_SCHEMA)
        if status == 401:
            out["401"]["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    return out


def _operations(
    served: Sequence[str] | None,
    tenant_header: str,
    opt_out_header: str,
    auth: bool,
    keys: bool,
    metrics_type: str,
) -> dict[tuple[str, str], dict[str, Any]]:
    completion = {
        "description": "A chat completion with its carbon receipt in `sprout` and x-sprout-* "
        "headers; with stream=true, server-sent events (chat.completion.chunk objects, the "
        "receipt in the final one, then [DONE])",
        "headers": _RECEIPT_HEADERS,
        "content": {
            "application/json": {"schema": _COMPLETION},
            "text/event-stream": {"schema": _EVENT},
        },
    }
    models = {
        "type": "object",
        "required": ["object", "data"],
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": _MODEL_ENTRY},
        },
    }
    return {
        _CHAT: {
            "parameters": header_parameters(tenant_header, opt_out_header),
            "requestBody": request_body(served),
            "responses": {
                "200": completion,
                **_errors(400, 401, 403, 404, 413, 502, auth=auth, keys=keys),
            },
        },
        _MODELS: {
            "responses": {"200": _json("The models served", models), **_errors(401, auth=auth)}
        },
        _MODEL: {
            "responses": {
                "200": _json("A model served", _MODEL_ENTRY),
                **_errors(401, 404, auth=auth),
            }
        },
        _HEALTH: {
            "responses": {
                "200": _json(
                    "Liveness, the carbon reading in use, the ledger backlog", _HEALTH_SCHEMA
                )
            }
        },
        _METRICS: {
            "responses": {
                "200": {
                    "description": "Prometheus text exposition format",
                    "content": {metrics_type: {"schema": {"type": "string"}}},
                }
            }
        },
    }


def finish_openapi(
    generated: dict[str, Any],
    *,
    served: Sequence[str] | None,
    tenant_header: str,
    opt_out_header: str,
    auth: bool,
    keys: bool = False,
    metrics_type: str,
) -> dict[str, Any]:
    """FastAPI's document for the proxy, completed with what the routes really do.

    Args:
        generated: the document FastAPI generated (not modified).
        served: the model names accepted (None: any).
        tenant_header, opt_out_header: the per-request header names.
        auth: whether clients must send a bearer key.
        keys: whether keys are bound to tenants (a keys file: the tenant header can get 403).
        metrics_type: the ``Content-Type`` of ``/metrics``.
    """
    doc = copy.deepcopy(generated)
    paths = doc.setdefault("paths", {})
    for (path, method), spec in _operations(
        served, tenant_header, opt_out_header, auth, keys, metrics_type
    ).items():
        operation = paths[path][method]
        for key in ("parameters", "requestBody"):
            if key in spec:
                operation[key] = spec[key]
        # Replaces FastAPI's defaults: its 422 (never sent: these routes validate
        # themselves) and an empty application/json 200.
        operation["responses"] = spec["responses"]
        for parameter in operation.get("parameters", []):
            if parameter.get("name") == "model_id" and served is not None:
                parameter["schema"] = {"type": "string", "enum": list(served)}
        if auth and (path, method) in (_CHAT, _MODELS, _MODEL):
            operation["security"] = [{BEARER: []}]
    components = doc.setdefault("components", {})
    schemas = components.get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    if not schemas:
        components.pop("schemas", None)
    if auth:
        components["securitySchemes"] = {
            BEARER: {
                "type": "http",
                "scheme": "bearer",
                "description": "a client key of the keys file (bound to a tenant), or "
                "server_api_key; /healthz and /metrics stay open",
            }
        }
    if not components:
        doc.pop("components")
    return doc
