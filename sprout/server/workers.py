"""Several proxy processes on one port: ``sprout serve --workers N``.

One proxy process is bound by the GIL (about 1.6 ms of CPU per request). With
``server_workers`` N > 1, :func:`serve_workers` runs uvicorn's own supervisor: the parent
binds the port, spawns N worker processes that accept on the shared socket, restarts a
worker that dies and stops them all (SIGTERM, graceful) when it is stopped. Each worker
builds its app with :func:`app_from_env`, from the settings the parent resolved (passed in
the environment, never on a command line), and so has its own controller, ledger writer,
hash chain and durable journal, all writing the one ledger database:

- shared: the ledger (receipts, rollups, readings, policy versions); its schema is migrated
  once by the parent before the workers start;
- per worker: ``/metrics`` and ``/healthz`` (a scrape is answered by whichever worker takes
  the connection), the carbon signal's cache, the policy's draws and quality state;
- once per cluster: storing carbon readings and forecasts (the ``poll`` job lock), the
  judge and retrain jobs (run by their own commands).

A worker that cannot start (a bad setting, the database unreachable) exits with status 3
and stops the whole server, which reports why. On Linux a worker is told to stop
(SIGTERM) when its parent dies, even by SIGKILL, so none outlives it holding the port.

With a process manager of your own, point it at the factory; settings then come from
``SPROUT_*`` variables and ``SPROUT_CONFIG``::

    uvicorn --factory sprout.server.workers:app_from_env --workers 4 --port 8080
    gunicorn -k uvicorn_worker.UvicornWorker -w 4 -b 127.0.0.1:8080 \\
        'sprout.server.workers:app_from_env()'
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn

from sprout.config import Settings, load_settings
from sprout.errors import ConfigError, SproutError
from sprout.ledger.migrate import ensure_schema, is_sqlite_memory
from sprout.server._app import create_app
from sprout.server._upstream import upstream_settings

if TYPE_CHECKING:
    from fastapi import FastAPI

# The proxy's one logger (see sprout.server._errors).
log = logging.getLogger("sprout.server")

#: The app factory the workers import (uvicorn's import-string form).
APP_FACTORY = "sprout.server.workers:app_from_env"
#: Environment variable carrying a worker's settings from ``sprout serve --workers``.
WORKER_ENV = "SPROUT_SERVE_WORKER"
#: Exit status of a worker that cannot start: uvicorn's STARTUP_FAILURE and gunicorn's
#: WORKER_BOOT_ERROR, so that either supervisor stops instead of restarting it forever.
STARTUP_FAILURE = 3
_LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
_PR_SET_PDEATHSIG = 1


def worker_payload(settings: Settings, *, log_level: str, status_file: str, parent_pid: int) -> str:
    """The JSON a worker reads from :data:`WORKER_ENV`: its settings and how to report."""
    return json.dumps(
        {
            "settings": dataclasses.asdict(settings),
            "log_level": log_level,
            "status_file": status_file,
            "parent_pid": parent_pid,
        }
    )


def _environment_settings() -> Settings:
    """Settings from ``SPROUT_*`` variables and ``SPROUT_CONFIG``, as ``sprout serve`` would
    resolve them with no options (the upstream's first model when none is named)."""
    settings = load_settings()
    if settings.engine == "openai" and settings.engine_base_url and not settings.engine_model:
        settings = upstream_settings(settings, settings.engine_base_url)
    return settings


def _stop_with_parent(parent_pid: int) -> None:
    """Linux: have the kernel send this worker SIGTERM when its parent dies (even by
    SIGKILL), so that it shuts down gracefully, flushing its ledger, instead of serving on
    alone. Elsewhere: nothing."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - no prctl: the parent stops us
        return
    if os.getppid() != parent_pid:  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def app_from_env() -> FastAPI:
    """The proxy app of one worker process (an import-string app factory).

    Under ``sprout serve --workers N`` the settings are those the parent resolved; otherwise
    (uvicorn ``--factory``, gunicorn) they come from ``SPROUT_*`` variables and
    ``SPROUT_CONFIG``. A worker that cannot start logs why and exits with status
    :data:`STARTUP_FAILURE`, which stops uvicorn's and gunicorn's supervisors.
    """
    raw = os.environ.get(WORKER_ENV)
    payload: dict[str, Any] | None = None
    try:
        if raw:
            payload = json.loads(raw)
            os.environ.pop(WORKER_ENV, None)  # its secrets are not for this worker's children
            if not logging.getLogger().handlers:
                logging.basicConfig(level=str(payload["log_level"]).upper(), format=_LOG_FORMAT)
            _stop_with_parent(int(payload["parent_pid"]))
            settings = Settings(**payload["settings"])
        else:
            settings = _environment_settings()
        app = create_app(settings)
    except Exception as e:
        problem = f"worker {os.getpid()} could not start: {e}"
        log.error("sprout serve: %s", problem)
        if payload is not None:
            try:
                with open(payload["status_file"], "a", encoding="utf-8") as out:
                    out.write(problem + "\n")
            except OSError:  # recent uvicorn supervisors still stop on the exit status
                pass
        sys.exit(STARTUP_FAILURE)
    ledger = app.state.controller.ledger
    log.info(
        "sprout serve: worker %d ready (ledger chain %s)",
        os.getpid(),
        ledger.chain_id if ledger is not None else "none",
    )
    return app


def _watch(status: Path, stop: threading.Event) -> None:
    """Stop the supervisor (SIGTERM to this process) once a worker reports a failed start.

    uvicorn's supervisor would otherwise restart such a worker over and over in versions
    that do not recognise the startup-failure status.
    """
    while not stop.wait(0.2):
        if status.exists() and status.stat().st_size:
            os.kill(os.getpid(), signal.SIGTERM)
            return


def serve_workers(settings: Settings, *, log_level: str = "warning") -> None:
    """Run ``settings.server_workers`` proxy processes on ``server_host:server_port`` with
    uvicorn's supervisor until stopped (SIGINT or SIGTERM: each worker finishes its requests,
    up to 10 s, and flushes its ledger).

    Raises:
        ConfigError: an in-memory SQLite ledger (each worker would have its own).
        LedgerError: the ledger cannot be reached or migrated.
        SproutError: a worker could not start (the message says why).
    """
    if is_sqlite_memory(settings.db_url):
        raise ConfigError(
            "setting server_workers: several workers need a shared ledger (a SQLite file or "
            "PostgreSQL), not an in-memory database"
        )
    # Migrate once, here: the workers then find the schema current (concurrent migrators
    # would take turns anyway), and a database that cannot be reached fails before any fork.
    ensure_schema(settings.db_url)
    status_dir = Path(tempfile.mkdtemp(prefix="sprout-serve-"))
    status = status_dir / "failed"
    os.environ[WORKER_ENV] = worker_payload(
        settings, log_level=log_level, status_file=str(status), parent_pid=os.getpid()
    )
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(status, stop), daemon=True)
    watcher.start()
    try:
        uvicorn.run(
            APP_FACTORY,
            factory=True,
            workers=settings.server_workers,
            host=settings.server_host,
            port=settings.server_port,
            log_level=log_level,
            timeout_graceful_shutdown=10,
        )
    finally:
        stop.set()
        watcher.join(timeout=5)
        os.environ.pop(WORKER_ENV, None)
        try:
            failure = status.read_text(encoding="utf-8").strip() if status.exists() else ""
        finally:
            shutil.rmtree(status_dir, ignore_errors=True)
    if failure:
        raise SproutError(failure.splitlines()[0])


__all__ = ["APP_FACTORY", "STARTUP_FAILURE", "WORKER_ENV", "app_from_env", "serve_workers"]
