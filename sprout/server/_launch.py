"""Running the proxy: :func:`serve` picks one uvicorn process or, with
``server_workers`` > 1, several (:mod:`sprout.server.workers`).

Apart from :mod:`sprout.server._app` and :mod:`sprout.server.workers` so that both can be
imported without a loop: the workers build their apps with ``create_app``, and this
module chooses between the two.
"""

from __future__ import annotations

import uvicorn

from sprout.config import Settings
from sprout.server._app import create_app
from sprout.server.workers import serve_workers


def serve(settings: Settings, *, log_level: str = "warning") -> None:
    """Run the proxy with uvicorn on ``settings.server_host:server_port`` until stopped:
    ``settings.server_workers`` processes (see :mod:`sprout.server.workers`), one by default."""
    if settings.server_workers > 1:
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
