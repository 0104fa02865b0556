"""``sprout serve``: the carbon-aware OpenAI-compatible proxy (see :mod:`sprout.server`).

Kept apart from :mod:`sprout.server` so that building the ``sprout`` parser imports
nothing of the ``server`` extra.
"""

from __future__ import annotations

import argparse
import sys

from sprout.cli.options import (
    LOOPBACK_HOSTS,
    add_config_option,
    settings_for,
    uvicorn_log_level,
)


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Add ``sprout serve``."""
    serve = subparsers.add_parser(
        "serve",
        help="run the carbon-aware OpenAI-compatible proxy",
        description="Serves POST /v1/chat/completions (streaming or not), GET /v1/models, "
        "GET /healthz and GET /metrics in front of an OpenAI-compatible server, choosing each "
        "request's directive from the grid's carbon intensity and writing its receipt to the "
        "ledger. Without --upstream the configured engine answers (the replay engine by "
        "default). Client keys, each bound to a tenant, are read from server_keys_file "
        "($SPROUT_SERVER_KEYS_FILE; make them with `sprout keys add`); a single key bound to no "
        "tenant from $SPROUT_SERVER_API_KEY or the config file, never from the command line.",
    )
    serve.add_argument(
        "--upstream",
        metavar="URL",
        help="the upstream server's API root, e.g. http://127.0.0.1:8000/v1",
    )
    serve.add_argument(
        "--model", help="the upstream model name (default: engine_model, else the first listed)"
    )
    add_config_option(serve)
    serve.add_argument(
        "--db", metavar="URL", help="ledger SQLAlchemy URL (default: $SPROUT_DB_URL or SQLite)"
    )
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8080)")
    serve.add_argument("--threads", type=int, help="worker threads for engine calls (default 256)")
    serve.add_argument(
        "--workers",
        type=int,
        help="proxy processes on the port, each with its own ledger chain (default 1)",
    )
    serve.set_defaults(func=_cmd_serve)
    return serve


def _cmd_serve(args: argparse.Namespace) -> int:
    from sprout.server import serve, upstream_settings

    settings = settings_for(
        args,
        server_host=args.host,
        server_port=args.port,
        server_threads=args.threads,
        server_workers=args.workers,
        engine_model=args.model,
    )
    upstream = args.upstream or (settings.engine == "openai" and settings.engine_base_url)
    if upstream:
        settings = upstream_settings(settings, upstream, args.model)
    keyed = bool(settings.server_api_key or settings.server_keys_file)
    if settings.server_host not in LOOPBACK_HOSTS and not keyed:
        print(
            f"sprout serve: warning: listening on {settings.server_host} with no API key; "
            "set SPROUT_SERVER_KEYS_FILE (see `sprout keys add`) to require one",
            file=sys.stderr,
            flush=True,
        )
    where = settings.engine_base_url if settings.engine == "openai" else settings.engine
    print(
        f"sprout serve: http://{settings.server_host}:{settings.server_port}/v1 -> {where} "
        f"(model {settings.engine_model or 'bundled'}, "
        f"API key {'required' if keyed else 'not required'}, "
        f"{settings.server_workers} worker{'s' if settings.server_workers > 1 else ''})",
        flush=True,
    )
    serve(settings, log_level=uvicorn_log_level())
    return 0


__all__ = ["register"]
