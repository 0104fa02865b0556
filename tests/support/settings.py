"""Settings for tests: nothing read from the environment or a config file, no network."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sprout.config import Settings, load_settings


def ledger_url(directory: Path, name: str = "ledger.db") -> str:
    """The URL of the SQLite ledger file ``name`` in ``directory``."""
    return f"sqlite:///{directory / name}"


def make_settings(db: str | Path, **overrides: Any) -> Settings:
    """Settings as a test wants them: read from no ``SPROUT_*`` variable and no config file,
    with the ledger at ``db`` (a URL, or a directory to hold a SQLite ``ledger.db``) and the
    static carbon provider (no network, no trace); ``overrides`` are settings by name, and win.
    """
    db_url = db if isinstance(db, str) else ledger_url(db)
    return load_settings(env={}, **{"db_url": db_url, "carbon_provider": "static", **overrides})


def proxy_settings(db: str | Path, upstream_url: str, model: str, **overrides: Any) -> Settings:
    """:func:`make_settings` for the proxy in front of an OpenAI-compatible ``upstream_url``
    serving ``model``: the estimate meter, no retries, a 5 s timeout and 16 server threads."""
    values = {
        "meter": "estimate",
        "engine": "openai",
        "engine_base_url": upstream_url,
        "engine_model": model,
        "engine_retries": 0,
        "engine_timeout_s": 5.0,
        "server_threads": 16,
    }
    return make_settings(db, **{**values, **overrides})
