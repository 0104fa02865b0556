"""The dashboard's routes: the page, its two static files and its JSON, GET only.

:func:`add_dashboard_routes` adds them to an app under ``/dashboard`` (the proxy does so
when ``server_dashboard`` is on); :func:`create_dashboard_app` is the app of
``sprout dashboard``. Every other method on these paths gets 405. The page and the script
are sent with a Content-Security-Policy that allows nothing but this origin: the page
loads nothing from elsewhere, and runs no inline script.

fastapi and starlette (the ``server`` extra) are imported when routes are made.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from importlib import resources
from typing import TYPE_CHECKING, Any

from sprout.errors import ConfigError, LedgerError

if TYPE_CHECKING:
    from fastapi import FastAPI

    from sprout.dashboard.data import Dashboard

PREFIX = "/dashboard"
#: The static files the page loads, and their media types (nothing else is served).
STATIC_FILES: dict[str, str] = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
PAGE = "index.html"
SECURITY_HEADERS: dict[str, str] = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


def static_file(name: str) -> bytes:
    """A file of the package's ``static/`` folder (the page, its script or its styles)."""
    return resources.files("sprout.dashboard").joinpath("static", name).read_bytes()


def add_dashboard_routes(app: FastAPI, dashboard: Dashboard) -> None:
    """Serve ``dashboard`` on ``app``: ``GET /dashboard`` (the page),
    ``GET /dashboard/data.json?since=&until=&bucket=`` and ``GET /dashboard/static/NAME``.

    The data route answers 400 with ``{"error": ...}`` for a bad query and 503 when the
    ledger cannot be read.
    """
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import Response

    from sprout.dashboard.data import parse_query

    files = {name: static_file(name) for name in (PAGE, *STATIC_FILES)}
    cache = {"cache-control": "no-cache"}

    def error(status: int, message: str) -> Response:
        body = json.dumps({"error": message})
        return Response(body, status, {"cache-control": "no-store"}, "application/json")

    async def page(request: Request) -> Response:
        headers = {**SECURITY_HEADERS, **cache}
        return Response(files[PAGE], 200, headers, "text/html; charset=utf-8")

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        media_type = STATIC_FILES.get(name)
        if media_type is None:
            raise HTTPException(404, f"no dashboard file {name!r}")
        return Response(files[name], 200, {**SECURITY_HEADERS, **cache}, media_type)

    def data(request: Request) -> Response:  # sync: runs on the thread pool
        try:
            since, until, bucket = parse_query(request.query_params)
            doc = dashboard.data(since=since, until=until, bucket=bucket)
        except ConfigError as e:
            return error(400, str(e))
        except LedgerError as e:
            return error(503, str(e))
        body = json.dumps(doc, allow_nan=False, separators=(",", ":"))
        headers = {"cache-control": "no-store", "x-content-type-options": "nosniff"}
        return Response(body, 200, headers, "application/json")

    # Plain Starlette routes (the request is all they take), kept out of any OpenAPI document.
    route: dict[str, Any] = {"methods": ["GET"], "include_in_schema": False}
    app.add_route(PREFIX, page, **route)
    app.add_route(f"{PREFIX}/data.json", data, **route)
    app.add_route(PREFIX + "/static/{name}", static, **route)


def create_dashboard_app(dashboard: Dashboard) -> FastAPI:
    """The app of ``sprout dashboard``: the dashboard's routes, and ``/`` sending the
    browser to ``/dashboard``. The dashboard's engine is closed when the app shuts down.

    Raises:
        ConfigError: the ``server`` extra is not installed.
    """
    try:
        from fastapi import FastAPI
        from starlette.responses import RedirectResponse
    except ImportError as e:  # pragma: no cover - depends on the installed extras
        raise ConfigError(
            f"the dashboard needs the server extra: pip install 'sprout[server]' ({e})"
        ) from None

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            dashboard.close()

    app = FastAPI(
        title="Sprout ledger dashboard",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
    )

    async def root(request: Any) -> RedirectResponse:
        return RedirectResponse(PREFIX.lstrip("/"), 307)

    app.add_route("/", root, methods=["GET"], include_in_schema=False)
    add_dashboard_routes(app, dashboard)
    return app


__all__ = ["PREFIX", "STATIC_FILES", "add_dashboard_routes", "create_dashboard_app", "static_file"]
