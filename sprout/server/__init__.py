"""The OpenAI-compatible proxy: ``sprout serve`` in front of any chat-completions server.

A chat app points its OpenAI client at this server instead of its model server (vLLM,
Ollama, llama.cpp, TGI...). Each ``POST /v1/chat/completions`` goes through
:meth:`sprout.controller.Controller.chat`: the directive is chosen from the grid's carbon
intensity, the shaped request is sent upstream, and the answer comes back with its carbon
receipt — in ``x-sprout-*`` headers and a ``sprout`` field of the JSON body (when
streaming: headers for what is known up front, the receipt in the final chunk).

Routes: ``POST /v1/chat/completions`` (JSON or server-sent events), ``GET /v1/models``,
``GET /v1/models/{id}``, ``GET /healthz`` and ``GET /metrics`` (Prometheus text); their
OpenAPI document (``/openapi.json``, :mod:`sprout.server._openapi`) states exactly what each
accepts and answers. Errors use OpenAI's shape, ``{"error": {"message", "type", "param",
"code"}}``: a bad request gets a 4xx naming the problem (never a 5xx), a failed upstream a
502.

The modules, one job each:

- :mod:`~sprout.server._app`: :func:`create_app`, the FastAPI app and its shared state
  (:mod:`~sprout.server._state`);
- :mod:`~sprout.server._routes`: the route handlers; :mod:`~sprout.server._sse`: streamed
  answers;
- :mod:`~sprout.server.openai`: OpenAI's request and response bodies, mapped to and from
  Sprout's; :mod:`~sprout.server._errors`: the error answers;
- :mod:`~sprout.server._auth` and :mod:`~sprout.server.keys`: client keys and tenants;
- :mod:`~sprout.server._upstream`: the model server behind the proxy;
- :mod:`~sprout.server._launch` and :mod:`~sprout.server.workers`: running it, in one
  process or several.

Modules whose names start with ``_`` are the server's implementation, imported only inside
this package; an app uses the names below, and a process manager the factory in
:mod:`~sprout.server.workers`.

The names below load lazily, so that :mod:`sprout.server.keys` (``sprout keys``) and
:mod:`sprout.server.openai` (the LiteLLM adapter) work without the ``server`` extra; asking
for :func:`create_app` or :func:`serve` without it raises a :class:`ConfigError` naming it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sprout.errors import ConfigError

_EXPORTS: dict[str, str] = {
    "create_app": "sprout.server._app",
    "serve": "sprout.server._launch",
    "ApiError": "sprout.server._errors",
    "Caller": "sprout.server._auth",
    "ChatCall": "sprout.server.openai",
    "parse_chat_call": "sprout.server.openai",
    "receipt_headers": "sprout.server.openai",
    "receipt_json": "sprout.server.openai",
    "discover_model": "sprout.server._upstream",
    "served_models": "sprout.server._upstream",
    "upstream_settings": "sprout.server._upstream",
}
#: Top-level packages of the ``server`` extra (and what they bring).
_SERVER_EXTRA = frozenset({"fastapi", "starlette", "uvicorn"})

__all__ = [
    "ApiError",
    "Caller",
    "ChatCall",
    "create_app",
    "discover_model",
    "parse_chat_call",
    "receipt_headers",
    "receipt_json",
    "serve",
    "served_models",
    "upstream_settings",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sprout.server' has no attribute {name!r}")
    try:
        value = getattr(importlib.import_module(module), name)
    except ImportError as e:
        if (e.name or "").partition(".")[0] not in _SERVER_EXTRA:
            raise
        raise ConfigError(
            f"the proxy needs the server extra: pip install 'sprout[server]' ({e})"
        ) from None
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from sprout.server._app import create_app
    from sprout.server._auth import Caller
    from sprout.server._errors import ApiError
    from sprout.server._launch import serve
    from sprout.server._upstream import discover_model, served_models, upstream_settings
    from sprout.server.openai import ChatCall, parse_chat_call, receipt_headers, receipt_json
