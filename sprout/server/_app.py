"""The proxy as a FastAPI app: :func:`create_app` builds the controller (or takes one),
the state the routes share, and the app with its routes, error handlers, optional
dashboard and OpenAPI document."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import FastAPI
from starlette.exceptions import HTTPException

from sprout._version import __version__
from sprout.config import Settings
from sprout.controller import Controller
from sprout.dashboard.app import add_dashboard_routes
from sprout.dashboard.data import Dashboard
from sprout.errors import ConfigError
from sprout.factory import build_controller
from sprout.metrics import CONTENT_TYPE, SproutMetrics
from sprout.server._auth import Access
from sprout.server._openapi import finish_openapi
from sprout.server._routes import http_error, internal_error, router
from sprout.server._state import ServerState
from sprout.server._upstream import served_models, widen_pool
from sprout.server.keys import KeyRing, key_digest

# The proxy's one logger (see sprout.server._errors).
log = logging.getLogger("sprout.server")


def create_app(
    source: Controller | Settings,
    *,
    settings: Settings | None = None,
    api_key: str | None = None,
    models: Sequence[str] | None = None,
    upstream_api_key: str | None = None,
) -> FastAPI:
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
        ConfigError: a setting is invalid.
    """
    owned = isinstance(source, Settings)
    if isinstance(source, Settings):
        settings = source
        controller = build_controller(settings)
    elif isinstance(source, Controller):
        controller = source
        settings = settings or Settings()
    else:
        raise ConfigError(f"create_app: expected a Controller or Settings, got {source!r}")
    key = (settings.server_api_key if api_key is None else api_key).encode()
    keyring = KeyRing(settings.server_keys_file) if settings.server_keys_file else None
    if keyring is not None:
        log.info("keys file %s: %d key(s)", keyring.path, len(keyring.entries))
    access = Access(
        legacy_digest=key_digest(key) if key else None,
        keyring=keyring,
        tenant_header=settings.server_tenant_header.lower(),
        opt_out_header=settings.server_opt_out_header.lower(),
    )
    executor = ThreadPoolExecutor(settings.server_threads, thread_name_prefix="sprout-engine")
    widen_pool(controller, settings.server_threads)
    metrics = SproutMetrics(controller)
    # Every receipt the controller writes, interrupted generations' too, reaches /metrics.
    controller.add_listener(metrics.observe)
    state = ServerState(
        controller=controller,
        settings=settings,
        owned=owned,
        executor=executor,
        metrics=metrics,
        access=access,
        served=tuple(models) if models is not None else served_models(controller),
        upstream_key=settings.engine_api_key if upstream_api_key is None else upstream_api_key,
    )

    app = FastAPI(
        title="Sprout",
        summary="Carbon-aware OpenAI-compatible proxy",
        version=__version__,
        lifespan=_lifespan,
    )
    app.state.server = state
    # Kept for callers that reach into the app (the workers' log line, tests).
    app.state.controller = controller
    app.state.metrics = metrics
    app.state.executor = executor
    app.state.keyring = keyring
    app.add_exception_handler(HTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, internal_error)
    app.include_router(router)
    if settings.server_dashboard:  # the read-only ledger dashboard, GET /dashboard
        app.state.dashboard = Dashboard.for_controller(settings, controller)
        add_dashboard_routes(app, app.state.dashboard)
    # FastAPI's document is completed with what the routes really do, once, on first use.
    app.openapi = functools.cache(  # type: ignore[method-assign]
        functools.partial(_finished_openapi, app.openapi, state)
    )
    return app


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """On shutdown: finish the engine calls, flush or close the controller, close the
    dashboard."""
    try:
        yield
    finally:
        app.state.server.close()
        if getattr(app.state, "dashboard", None) is not None:
            app.state.dashboard.close()


def _finished_openapi(generate: Callable[[], dict[str, Any]], state: ServerState) -> dict[str, Any]:
    """The OpenAPI document ``generate`` (FastAPI's) gives, completed for this app."""
    access = state.access
    return finish_openapi(
        generate(),
        served=state.served,
        tenant_header=access.tenant_header,
        opt_out_header=access.opt_out_header,
        auth=access.keyed,
        keys=access.keyring is not None,
        metrics_type=CONTENT_TYPE,
    )
