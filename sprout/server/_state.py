"""What the proxy's routes share: one :class:`ServerState` per app, on ``app.state.server``."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sprout.config import Settings
    from sprout.controller import Controller
    from sprout.metrics import SproutMetrics
    from sprout.server._auth import Access


@dataclass
class ServerState:
    """One proxy app's controller, thread pool, metrics and access rules.

    Attributes:
        controller: the controller serving the requests.
        settings: the server settings (threads, body limit, header names...).
        owned: the controller was built by the app, which closes it on shutdown.
        executor: the thread pool that runs the (blocking) engine calls.
        metrics: what ``/metrics`` renders.
        access: the keys and per-request headers.
        served: the model names clients may ask for (None: any).
        upstream_key: the upstream's key, for listing its models.
        models_cache: the last model list and when it was made (at most one entry).
    """

    controller: Controller
    settings: Settings
    owned: bool
    executor: ThreadPoolExecutor
    metrics: SproutMetrics
    access: Access
    served: tuple[str, ...] | None
    upstream_key: str
    models_cache: list[tuple[float, list[dict[str, Any]]]] = field(default_factory=list)

    def close(self) -> None:
        """Finish the engine calls in flight, then close (or flush) the controller."""
        self.executor.shutdown(wait=True, cancel_futures=True)
        if self.owned:
            self.controller.close()  # flushes the ledger
        elif self.controller.ledger is not None:
            self.controller.ledger.flush()
