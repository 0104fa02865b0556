"""The upstream model server behind the proxy: which models it serves, its model list,
and settings pointing the OpenAI-compatible engine at it."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import requests
from requests.adapters import HTTPAdapter

from sprout.config import Settings
from sprout.engines.openai_compat import _public_url
from sprout.engines.replay import VARIANT_MODELS
from sprout.errors import ConfigError

if TYPE_CHECKING:
    from sprout.controller import Controller

# The proxy's one logger (see sprout.server._errors).
log = logging.getLogger("sprout.server")


def served_models(controller: Controller) -> tuple[str, ...] | None:
    """Model names the controller's engine answers as, or None when any name goes."""
    engine = controller.engine
    if engine.name == "replay":
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


def widen_pool(controller: Controller, threads: int) -> None:
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
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=threads)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    if engine.runs_locally:
        session.trust_env = False


def upstream_models(controller: Controller, api_key: str) -> list[dict[str, Any]]:
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
