"""``sprout serve --workers 2``: two proxy processes on one port, one ledger.

Under load from 16 client threads, then a graceful stop (or SIGKILL of the whole process
group and a restart): every answered request has exactly one receipt, both workers wrote
(one hash chain each), and ``sprout ledger verify`` finds the chains intact with nothing
pending. On SQLite and on a real PostgreSQL server (tests/support/postgres.py; never skipped).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from sqlalchemy import create_engine, text

from sprout.config import load_settings
from sprout.errors import ConfigError
from tests.support.fake_openai_server import FakeOpenAIServer, wait_until
from tests.support.postgres import PostgresServer
from tests.support.servers import free_port

#: Servers, subprocesses or a browser: seconds per test (deselect with -m "not slow").
pytestmark = pytest.mark.slow

pytest.importorskip("fastapi")

MODEL = "workers-model"
REPLY = "Lisbon is the capital of Portugal. It sits on the Tagus estuary."
WORKERS = 2
CLIENTS = 16
#: Load until this many requests are answered, for at most ``LOAD_MAX_S`` (a loaded CI
#: machine answers a few dozen a second, an idle one hundreds).
ANSWERED = 100
LOAD_MAX_S = 30.0
REQUESTS_PER_CONNECTION = 10
SPROUT = Path(sys.executable).with_name("sprout")


@pytest.fixture
def upstream() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(REPLY) as server:
        yield server


def _journals(spool_dir: Path) -> list[Path]:
    return sorted(spool_dir.glob("*.spool.jsonl.journal-*"))


def _ready(log: Path) -> int:
    """How many workers have logged that their app is built."""
    return len(re.findall(r"worker \d+ ready", log.read_text())) if log.exists() else 0


def _start(
    tmp_path: Path, upstream: str, port: int, db_url: str, log: Path
) -> subprocess.Popen[bytes]:
    """``sprout serve --workers 2`` in its own process group; returns once both workers
    have built their apps (they log "ready"; a worker still starting would leave the other
    to take every connection) and the port answers."""
    cmd = [str(SPROUT), "-v", "serve", "--upstream", upstream, "--model", MODEL]
    cmd += ["--port", str(port)]
    cmd += ["--db", db_url, "--workers", str(WORKERS), "--threads", "32"]
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin"),
        "SPROUT_CARBON_PROVIDER": "static",
        "SPROUT_METER": "estimate",
        "SPROUT_METER_CALIBRATE": "false",
        "TMPDIR": str(tmp_path),  # where a SIGKILLed parent leaves its (empty) status directory
    }
    ready_before = _ready(log)  # a restart appends to the same log
    with open(log, "ab") as out:  # a file, not a pipe: nobody reads it while it runs
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
            start_new_session=True,
        )  # fmt: skip

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"sprout serve exited: {log.read_text()}")
        if _ready(log) < ready_before + WORKERS:
            return False
        try:
            return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok
        except requests.RequestException:
            return False

    assert wait_until(up, timeout_s=60), f"sprout serve did not start: {log.read_text()}"
    return proc


def _load(port: int, seconds: float, until: Callable[[list[str]], bool] | None = None) -> list[str]:
    """Drive ``CLIENTS`` threads for ``seconds`` (or until ``until(answered)``); the request
    ids of the answered requests."""
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Capital of Portugal?"}]}
    answered: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            # A fresh connection every few requests, as pooled clients recycle theirs: a
            # worker takes whole connections, so a few held open for good would all stay
            # with the worker that accepted them.
            with requests.Session() as session:
                for _ in range(REQUESTS_PER_CONNECTION):
                    if stop.is_set():
                        break
                    try:
                        r = session.post(url, json=body, timeout=10)
                    except requests.RequestException:
                        break  # the proxy was killed mid-request: not answered
                    if r.status_code == 200:
                        with lock:
                            answered.append(r.headers["x-sprout-request-id"])

    threads = [threading.Thread(target=client, daemon=True) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with lock:
            seen = list(answered)
        if until is not None and until(seen):
            break
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join(timeout=15)
    with lock:
        return list(answered)


def _stop(proc: subprocess.Popen[bytes], log: Path) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    out = log.read_text()
    assert proc.returncode == 0, out
    return out


def _receipts(db_url: str) -> list[tuple[str, str]]:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT request_id, chain_id FROM receipts")).all()
    finally:
        engine.dispose()
    return [(r[0], r[1]) for r in rows]


def _verify(db_url: str, cwd: Path) -> None:
    out = subprocess.run(
        [str(SPROUT), "ledger", "verify", "--db", db_url],
        capture_output=True, text=True, cwd=cwd, timeout=60,
        env={"PATH": os.environ.get("PATH", "/usr/bin")},
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr


def _check(answered: list[str], db_url: str, cwd: Path) -> set[str]:
    """Every answered request has exactly one receipt; the chains that wrote them."""
    rows = _receipts(db_url)
    ids = [rid for rid, _ in rows]
    assert len(ids) == len(set(ids)), "a receipt was stored twice"
    missing = set(answered) - set(ids)
    assert not missing, f"{len(missing)} of {len(answered)} answered requests have no receipt"
    _verify(db_url, cwd)
    assert not _journals(cwd), "journals left behind"
    return {chain for _, chain in rows}


def _serve_load_stop(tmp_path: Path, upstream: str, db_url: str) -> None:
    port, log = free_port(), tmp_path / "serve.log"
    started = time.monotonic()
    proc = _start(tmp_path, upstream, port, db_url, log)
    try:
        loaded = time.monotonic()
        answered = _load(port, LOAD_MAX_S, until=lambda seen: len(seen) >= ANSWERED)
        load_s = time.monotonic() - loaded
    finally:
        out = _stop(proc, log)
    assert f"{WORKERS} workers" in out and f"127.0.0.1:{port}/v1" in out
    assert not list(tmp_path.glob("sprout-serve-*")), "the parent's status directory is left"
    assert len(answered) >= ANSWERED, f"only {len(answered)} answered in {load_s:.0f} s"
    chains = _check(answered, db_url, tmp_path)
    assert len(chains) >= WORKERS, f"one worker served everything: {chains}"
    pids = {chain.split(":")[1] for chain in chains}
    assert len(pids) >= WORKERS  # chains of distinct processes
    rate = len(answered) / load_s
    print(f"{len(answered)} answered ({rate:.0f}/s), {len(chains)} chains, "
          f"{time.monotonic() - started:.1f} s in all")  # fmt: skip


def test_two_workers_on_sqlite(tmp_path: Path, upstream: FakeOpenAIServer) -> None:
    db_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    _serve_load_stop(tmp_path, upstream.url, db_url)
    engine = create_engine(db_url)
    with engine.connect() as conn:
        kinds = list(conn.scalars(text("SELECT kind FROM policy_versions")))
    engine.dispose()
    assert kinds == ["sprout-lp"]  # the workers took turns: one version, not one each


def test_two_workers_on_postgres(
    tmp_path: Path, upstream: FakeOpenAIServer, pg: PostgresServer
) -> None:
    if not pg.running:
        pg.start()
    _serve_load_stop(tmp_path, upstream.url, pg.create_database("t_server_workers"))


def test_sigkill_of_parent_and_workers_loses_no_answered_receipt(
    tmp_path: Path, upstream: FakeOpenAIServer
) -> None:
    db_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    port, log = free_port(), tmp_path / "serve.log"
    proc = _start(tmp_path, upstream.url, port, db_url, log)
    try:
        # Killed mid-load: requests are in flight in both workers.
        answered = _load(port, 20.0, until=lambda seen: len(seen) >= 150 and _kill(proc))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert len(_journals(tmp_path)) >= WORKERS, "the dead workers' journals should be left"
    restarted = _start(tmp_path, upstream.url, port, db_url, log)
    _stop(restarted, log)  # the restarted workers adopted and replayed the journals
    chains = _check(answered, db_url, tmp_path)
    assert len(chains) >= WORKERS
    left = [p.name for p in tmp_path.glob("ledger.db.spool.jsonl*") if p.suffix != ".lock"]
    assert not left, f"receipts left pending in {left}"


def _kill(proc: subprocess.Popen[bytes]) -> bool:
    os.killpg(proc.pid, signal.SIGKILL)  # the parent and every worker at once
    return True


def test_a_worker_that_cannot_start_stops_the_server(tmp_path: Path) -> None:
    # Every worker fails to build its controller: the policy file does not exist.
    cmd = [str(SPROUT), "serve", "--workers", "2", "--port", str(free_port())]
    cmd += ["--db", f"sqlite:///{tmp_path / 'ledger.db'}"]
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin"),
        "SPROUT_CARBON_PROVIDER": "static",
        "SPROUT_POLICY_FILE": str(tmp_path / "missing-policy.toml"),
        "TMPDIR": str(tmp_path),
    }
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert out.returncode == 1, out.stdout + out.stderr
    assert not list(tmp_path.glob("sprout-serve-*")), "the parent's status directory is left"
    assert re.search(r"worker \d+ could not start: .*missing-policy\.toml", out.stderr), out.stderr


def test_in_memory_ledger_is_refused_with_workers(tmp_path: Path) -> None:
    cmd = [str(SPROUT), "serve", "--workers", "2", "--db", "sqlite://"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert out.returncode == 2 and "server_workers" in out.stderr, out.stderr


MIGRATE = """
import sys, time
from sprout.ledger.migrate import ensure_schema
start = float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
ensure_schema(sys.argv[1])
"""


@pytest.mark.parametrize("round_", range(3))
def test_processes_migrating_one_sqlite_file_take_turns(tmp_path: Path, round_: int) -> None:
    # Workers (or replicas) starting together on a fresh file: each would have created the
    # tables at once, and all but one failed with "database is locked".
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    start = str(time.time() + 2.0)  # all at once, once their imports are done
    procs = [
        subprocess.Popen([sys.executable, "-c", MIGRATE, url, start], stderr=subprocess.PIPE)
        for _ in range(4)
    ]
    errors = [p.communicate(timeout=60)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(errors)


def test_server_workers_setting() -> None:
    assert load_settings(env={"SPROUT_SERVER_WORKERS": "4"}).server_workers == 4
    assert load_settings(env={}).server_workers == 1
    with pytest.raises(ConfigError, match="server_workers"):
        load_settings(env={"SPROUT_SERVER_WORKERS": "0"})
