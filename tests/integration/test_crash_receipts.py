"""``sprout serve`` killed with SIGKILL under load, on default settings: every request the
client saw answered (a 200, or a stream that reached ``[DONE]``) has its receipt after a
restart, and none has two.

The receipt is on disk (the ledger's journal, synced by group commit) before the answer is
released; the restarted proxy adopts the dead one's journal and replays it.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests

from tests.support.fake_openai_server import FakeOpenAIServer, wait_until
from tests.support.servers import free_port

#: Servers, subprocesses or a browser: seconds per test (deselect with -m "not slow").
pytestmark = pytest.mark.slow

pytest.importorskip("fastapi")

MODEL = "crash-model"
REPLY = "The Eiffel Tower is in Paris. It was built for the 1889 World's Fair."
CLIENTS = 12
KILL_AFTER = 150


def _start_proxy(tmp_path: Path, upstream: str, port: int) -> subprocess.Popen[str]:
    exe = Path(sys.executable).with_name("sprout")
    cmd = [str(exe), "serve", "--upstream", upstream, "--model", MODEL, "--port", str(port)]
    cmd += ["--db", f"sqlite:///{tmp_path / 'ledger.db'}"]
    # Default settings but for the carbon provider and meter (no network, no calibration).
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin"),
        "SPROUT_CARBON_PROVIDER": "static",
        "SPROUT_METER": "estimate",
        "SPROUT_METER_CALIBRATE": "false",
    }
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path
    )

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"sprout serve exited: {proc.communicate()[0]}")
        try:
            return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok
        except requests.RequestException:
            return False

    assert wait_until(up, timeout_s=60), "sprout serve did not start"
    return proc


def _ask(session: requests.Session, url: str, stream: bool) -> str | None:
    """One request; its request id if the client saw it answered, else None."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Where?"}], "stream": stream}
    try:
        with session.post(url, json=body, stream=stream, timeout=10) as r:
            if r.status_code != 200:
                return None
            if not stream:
                return r.headers["x-sprout-request-id"]
            request_id, done = None, False
            for line in r.iter_lines():
                if line == b"data: [DONE]":
                    done = True
                elif line.startswith(b"data: "):
                    event = json.loads(line[6:])
                    request_id = (event.get("sprout") or {}).get("request_id", request_id)
            return request_id if done else None
    except (requests.RequestException, ValueError):
        return None  # the proxy died mid-answer: not answered


def _stored(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [rid for (rid,) in conn.execute("SELECT request_id FROM receipts")]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "streamed"])
def test_sigkill_under_load_loses_no_answered_receipt(tmp_path, stream):
    answered: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    with FakeOpenAIServer(REPLY, chunk_delay_s=0.001 if stream else 0.0) as upstream:
        port = free_port()
        proxy = _start_proxy(tmp_path, upstream.url, port)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"

        def client() -> None:
            with requests.Session() as session:
                while not stop.is_set():
                    request_id = _ask(session, url, stream)
                    if request_id is not None:
                        with lock:
                            answered.append(request_id)

        threads = [threading.Thread(target=client, daemon=True) for _ in range(CLIENTS)]
        try:
            for t in threads:
                t.start()
            assert wait_until(lambda: len(answered) >= KILL_AFTER, timeout_s=120)
            os.kill(proxy.pid, signal.SIGKILL)  # mid-load: requests are in flight
            proxy.wait(timeout=30)
        finally:
            stop.set()
            if proxy.poll() is None:
                proxy.kill()
            proxy.communicate(timeout=30)
        for t in threads:
            t.join(timeout=30)
        with lock:
            seen = list(answered)
        journals = list(tmp_path.glob("ledger.db.spool.jsonl.journal-*"))
        assert journals, "the dead proxy's journal should be left for the next one"

        # A restart adopts and replays what the dead process left.
        restarted = _start_proxy(tmp_path, upstream.url, port)
        restarted.send_signal(signal.SIGTERM)
        out, _ = restarted.communicate(timeout=60)
        assert restarted.returncode in (0, -signal.SIGTERM), out

    stored = _stored(tmp_path / "ledger.db")
    assert len(seen) >= KILL_AFTER
    missing = set(seen) - set(stored)
    assert not missing, f"{len(missing)} of {len(seen)} answered requests have no receipt"
    assert len(stored) == len(set(stored)), "a receipt was stored twice"
    left = [p.name for p in tmp_path.glob("ledger.db.spool.jsonl*") if p.suffix != ".lock"]
    assert not left, f"receipts left pending in {left}"
    print(f"{'streamed' if stream else 'json'}: {len(seen)} answered, {len(stored)} receipts")
