"""Proxy load: ``sprout serve`` in front of a fake upstream on loopback.

Three processes: a fake OpenAI-compatible upstream (a minimal asyncio HTTP server that
answers every chat completion at once, so that the figures are the proxy's), the real
``sprout serve`` command in front of it (SQLite ledger, static carbon, estimate meter),
and this script as the client (raw HTTP/1.1 on keep-alive connections, cheap enough not to
be the bottleneck).

1. Overhead: requests one at a time, alternating between the upstream directly and the
   same request through the proxy. The proxy's overhead at a percentile is the proxied
   latency minus the direct latency at that percentile (targets: p50 < 2 ms, p99 < 10 ms).
   This is the latency the proxy adds to a request, measured without queueing.
2. Load: ``--concurrency`` clients (200) each keep one request in flight through the
   proxy for ``--seconds`` (30). Every answer must be a 200 carrying its receipt; latency
   under load is reported too (on a small machine it is queueing: concurrency divided by
   throughput).
3. Receipts: the proxy is stopped (SIGINT: it flushes its ledger) and the receipts in its
   SQLite file are counted; they must equal the requests it answered.

Three proxies run in one invocation, against the same upstream: ``sprout serve`` with the
default ledger durability (``durable``: each receipt synced to the journal, by group
commit, before the answer is released), ``sprout serve`` with ``buffered``, and LiteLLM's
proxy (``python -m litellm.proxy.proxy_cli``, uvicorn with uvloop as LiteLLM starts it,
offline: ``LITELLM_LOCAL_MODEL_COST_MAP=True``, no database, warnings-only logging, no
callbacks: the peer a user would pick instead, routing ``openai/<model>`` to the same
upstream by ``api_base``). Neither checks client keys. The overhead phase interleaves the
upstream and the three proxies request by request (in rotating order, so that a slower
spell of the machine hits all alike); the load phase runs against each in turn. The ratios
of the p50 overheads are printed: durable / buffered (target: at most 1.5) and Sprout
(durable) / LiteLLM (target: at most 1).

4. Workers: ``sprout serve --workers 1`` and ``--workers 2`` (durable ledger, one SQLite
   file each) under the same load for ``--workers-seconds`` (10) each, then stopped and
   their receipts counted (``--workers-seconds 0`` skips this; so does a ``sprout serve``
   without ``--workers``).

    python benchmarks/proxy_load.py [--seconds 30] [--concurrency 200] [--pairs 2000]
        [--workers-seconds 10] [--no-litellm]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench import emit, percentile

MODEL = "bench-model"
BODY = json.dumps(
    {"model": MODEL, "messages": [{"role": "user", "content": "What is the capital of France?"}]}
).encode()
TARGET_P50_MS, TARGET_P99_MS = 2.0, 10.0
#: The ledger durability modes measured side by side: the default first.
MODES = ("durable", "buffered")
#: The peer proxy measured beside them.
LITELLM = "litellm"
#: What every process the benchmark starts gets: LiteLLM reads its model price map from
#: its package instead of the network, and logs warnings only (no access log, as Sprout).
OFFLINE_ENV = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "WARNING"}


# -- the fake upstream (run with --upstream-only) ----------------------------------------------


def _upstream_reply() -> bytes:
    payload = json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Paris."},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 14, "completion_tokens": 2, "total_tokens": 16},
        }
    ).encode()
    head = (
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode()
    return head + payload


async def _serve_upstream() -> None:
    reply = _upstream_reply()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if length:
                    await reader.readexactly(length)
                writer.write(reply)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


# -- the client ---------------------------------------------------------------------------------


class Connection:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.request = (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY
        )

    async def post(self) -> tuple[int, bool]:
        """Send the request; (status, whether the answer carries a receipt header)."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        try:
            self.writer.write(self.request)
            head = await self.reader.readuntil(b"\r\n\r\n")
            length = 0
            receipt = False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"x-sprout-request-id":
                    receipt = True
            await self.reader.readexactly(length)
            return int(head[9:12]), receipt
        except (asyncio.IncompleteReadError, ConnectionError):
            self.close()
            raise

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def _paired(
    upstream: int, proxies: dict[str, int], pairs: int
) -> tuple[list[float], dict[str, list[float]], dict[str, int]]:
    """One request at a time, to the upstream directly and through each proxy in turn.

    Each round sends one request down every path, in an order that rotates from round to
    round, so that no path always follows another and the paths share the machine's state
    (a slower spell hits them all alike).
    """
    direct = Connection(upstream)
    conns = {name: Connection(port) for name, port in proxies.items()}
    paths: list[tuple[str | None, Connection]] = [(None, direct), *conns.items()]
    direct_s: list[float] = []
    proxied_s: dict[str, list[float]] = {name: [] for name in proxies}
    answered = dict.fromkeys(proxies, 0)
    clock = time.perf_counter
    for _ in range(300):  # warm every path
        for name, conn in paths:
            status, _ = await conn.post()
            if name is not None:
                answered[name] += status == 200
    for i in range(pairs):
        shift = i % len(paths)
        for name, conn in paths[shift:] + paths[:shift]:
            t0 = clock()
            status, _ = await conn.post()
            elapsed = clock() - t0
            if name is None:
                direct_s.append(elapsed)
                continue
            proxied_s[name].append(elapsed)
            answered[name] += status == 200
            if status != 200:
                raise RuntimeError(f"proxy ({name}) answered {status} in the overhead phase")
    for _, conn in paths:
        conn.close()
    return direct_s, proxied_s, answered


async def _load(
    proxy: int, concurrency: int, seconds: float, *, receipts: bool = True
) -> dict[str, object]:
    """``concurrency`` clients for ``seconds``; ``receipts``: every 200 must carry one."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    answered = 0
    deadline = time.monotonic() + seconds
    clock = time.perf_counter

    async def client() -> None:
        nonlocal answered
        conn = Connection(proxy)
        while time.monotonic() < deadline:
            t0 = clock()
            try:
                status, receipt = await asyncio.wait_for(conn.post(), timeout=60)
            except (OSError, asyncio.IncompleteReadError, TimeoutError) as e:
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                conn.close()
                continue
            latencies.append(clock() - t0)
            if status == 200:
                answered += 1
                if receipts and not receipt:
                    errors["no-receipt-header"] = errors.get("no-receipt-header", 0) + 1
            else:
                errors[f"HTTP {status}"] = errors.get(f"HTTP {status}", 0) + 1
        conn.close()

    started = time.monotonic()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return {
        "latencies": latencies,
        "errors": errors,
        "answered": answered,
        "elapsed_s": time.monotonic() - started,
    }


# -- orchestration ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen[str], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on port {port} after {timeout_s} s")


def _start_proxy(
    args: argparse.Namespace,
    upstream_port: int,
    durability: str,
    tmp: str,
    workers: int | None = None,
) -> tuple[subprocess.Popen[str], int, Path]:
    """``sprout serve`` with ``durability`` (and ``--workers``) in front of the upstream:
    (process, port, db). Call :func:`_wait_for_port` before using it."""
    name = durability if workers is None else f"{durability}-workers{workers}"
    db = Path(tmp) / f"proxy-ledger-{name}.db"
    proxy_port = _free_port()
    env = {
        **os.environ,
        **OFFLINE_ENV,
        "SPROUT_CARBON_PROVIDER": "static",
        "SPROUT_METER": "estimate",
        "SPROUT_METER_CALIBRATE": "false",
        "SPROUT_SERVER_THREADS": str(max(256, args.concurrency)),
        "SPROUT_LEDGER_DURABILITY": durability,
    }
    sprout = Path(sys.executable).with_name("sprout")
    command = [
        str(sprout),
        "serve",
        "--upstream",
        f"http://127.0.0.1:{upstream_port}/v1",
        "--model",
        MODEL,
        "--port",
        str(proxy_port),
        "--db",
        f"sqlite:///{db}",
    ]
    if workers is not None:
        command += ["--workers", str(workers)]
    proxy = subprocess.Popen(
        command,
        env=env,
        cwd=tmp,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return proxy, proxy_port, db


def litellm_config(upstream_port: int) -> str:
    """LiteLLM proxy ``config.yaml``: the benchmark's model routed to the upstream, plain
    (no callbacks), no database, no client keys (as the ``sprout serve`` it is set beside)."""
    return (
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: http://127.0.0.1:{upstream_port}/v1\n"
        "      api_key: none\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
        "general_settings:\n"
        "  dangerously_permit_weak_or_unset_master_key: true\n"
    )


def _start_litellm(upstream_port: int, tmp: str) -> tuple[subprocess.Popen[str], int, Path]:
    """LiteLLM's proxy in front of the upstream: (process, port, its log file)."""
    config = Path(tmp) / "litellm-config.yaml"
    config.write_text(litellm_config(upstream_port), encoding="utf-8")
    port = _free_port()
    log_path = Path(tmp) / "litellm.log"
    listen = ["--host", "127.0.0.1", "--port", str(port)]
    with log_path.open("w", encoding="utf-8") as log:  # a file: a full pipe would block it
        proxy = subprocess.Popen(
            [sys.executable, "-m", "litellm.proxy.proxy_cli", "--config", str(config), *listen],
            env={**os.environ, **OFFLINE_ENV},
            cwd=tmp,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
    return proxy, port, log_path


def _stop(proxy: subprocess.Popen[str]) -> None:
    """Stop a proxy gracefully (SIGINT: it flushes its ledger)."""
    proxy.send_signal(signal.SIGINT)
    out, _ = proxy.communicate(timeout=120)
    if proxy.returncode not in (0, -signal.SIGINT):
        print(out, file=sys.stderr)


def _count_receipts(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("select count(*) from receipts").fetchone()[0]


def _run_figures(
    name: str,
    direct_s: list[float],
    proxied: list[float],
    paired_answered: int,
    load: dict[str, object],
    receipts: int | None,
) -> dict[str, object]:
    direct_p50, direct_p99 = percentile(direct_s, 50) * 1e3, percentile(direct_s, 99) * 1e3
    latencies: list[float] = load["latencies"]  # type: ignore[assignment]
    errors: dict[str, int] = load["errors"]  # type: ignore[assignment]
    requests = len(latencies) + sum(v for k, v in errors.items() if not k.startswith("HTTP"))
    proxied_p50, proxied_p99 = percentile(proxied, 50) * 1e3, percentile(proxied, 99) * 1e3
    return {
        "name": name,
        "direct_p50_ms": direct_p50,
        "direct_p99_ms": direct_p99,
        "proxied_p50_ms": proxied_p50,
        "proxied_p99_ms": proxied_p99,
        "overhead_p50_ms": proxied_p50 - direct_p50,
        "overhead_p99_ms": proxied_p99 - direct_p99,
        "pairwise": [p - d for p, d in zip(proxied, direct_s, strict=True)],
        "latencies": latencies,
        "errors": errors,
        "requests": requests + paired_answered,
        "answered": paired_answered + int(load["answered"]),  # type: ignore[call-overload]
        "receipts": receipts,
        "elapsed_s": float(load["elapsed_s"]),  # type: ignore[arg-type]
    }


def _measure_all(args: argparse.Namespace, upstream_port: int, tmp: str) -> dict[str, dict]:
    """Both durability modes and LiteLLM: overhead interleaved, then load one after another."""
    started: dict[str, tuple[subprocess.Popen[str], int, Path]] = {}
    names = [*MODES, *([LITELLM] if args.litellm else [])]
    try:
        # All start at once (LiteLLM takes the longest), then each is waited for.
        for name in names:
            if name == LITELLM:
                started[name] = _start_litellm(upstream_port, tmp)
            else:
                started[name] = _start_proxy(args, upstream_port, name, tmp)
        for name, (proc, port, path) in started.items():
            try:
                _wait_for_port(port, proc, timeout_s=180)
            except RuntimeError:
                if name == LITELLM:
                    print(path.read_text(encoding="utf-8")[-5000:], file=sys.stderr)
                raise
        ports = {name: port for name, (_, port, _) in started.items()}
        direct_s, proxied_s, paired_answered = asyncio.run(
            _paired(upstream_port, ports, args.pairs)
        )
        loads = {}
        for name in names:
            loads[name] = asyncio.run(
                _load(ports[name], args.concurrency, args.seconds, receipts=name != LITELLM)
            )
        for name in names:
            _stop(started[name][0])
    finally:
        for proc, _, _ in started.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    return {
        name: _run_figures(
            name,
            direct_s,
            proxied_s[name],
            paired_answered[name],
            loads[name],
            None if name == LITELLM else _count_receipts(started[name][2]),
        )
        for name in names
    }


def serve_has_workers() -> bool:
    """Whether this ``sprout serve`` takes ``--workers``."""
    sprout = Path(sys.executable).with_name("sprout")
    out = subprocess.run(
        [str(sprout), "serve", "--help"], capture_output=True, text=True, timeout=120
    )
    return "--workers" in out.stdout


def measure_workers(
    args: argparse.Namespace, upstream_port: int, tmp: str, counts: Sequence[int] = (1, 2)
) -> dict[int, dict[str, object]]:
    """Throughput of ``sprout serve --workers N`` (durable ledger) for each N in ``counts``,
    under the load phase's clients for ``args.workers_seconds``, one after the other; then
    each is stopped (SIGINT) and its receipts are counted against the answered requests."""
    results: dict[int, dict[str, object]] = {}
    for workers in counts:
        proc, port, db = _start_proxy(args, upstream_port, "durable", tmp, workers=workers)
        try:
            _wait_for_port(port, proc, timeout_s=120)
            # Warm every worker up (each connection lands on whichever accepts it).
            warm = asyncio.run(_load(port, args.concurrency, 2.0))
            load = asyncio.run(_load(port, args.concurrency, args.workers_seconds))
            _stop(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        latencies: list[float] = load["latencies"]  # type: ignore[assignment]
        errors: dict[str, int] = dict(load["errors"])  # type: ignore[call-overload]
        for key, value in warm["errors"].items():  # type: ignore[attr-defined]
            errors[key] = errors.get(key, 0) + value
        elapsed = float(load["elapsed_s"])  # type: ignore[arg-type]
        results[workers] = {
            "rps": len(latencies) / elapsed,
            "latencies": latencies,
            "elapsed_s": elapsed,
            "errors": errors,
            "answered": int(warm["answered"]) + int(load["answered"]),  # type: ignore[call-overload]
            "receipts": _count_receipts(db),
        }
    return results


def _report(args: argparse.Namespace, m: dict[str, object]) -> None:
    """Print one proxy's figures."""
    latencies: list[float] = m["latencies"]  # type: ignore[assignment]
    pairwise: list[float] = m["pairwise"]  # type: ignore[assignment]
    elapsed = float(m["elapsed_s"])  # type: ignore[arg-type]
    if m["name"] == LITELLM:
        print("litellm proxy (plain, no Sprout callback)")
    else:
        print(f"ledger_durability={m['name']}")
    print(f"  overhead phase: {args.pairs} request pairs, one at a time (after 300 warm-up pairs)")
    print(
        f"    upstream directly    p50 {m['direct_p50_ms']:7.3f} ms   "
        f"p99 {m['direct_p99_ms']:7.3f} ms"
    )
    print(
        f"    through the proxy    p50 {m['proxied_p50_ms']:7.3f} ms   "
        f"p99 {m['proxied_p99_ms']:7.3f} ms"
    )
    print(
        f"    proxy overhead       p50 {m['overhead_p50_ms']:7.3f} ms   "
        f"p99 {m['overhead_p99_ms']:7.3f} ms   "
        f"(targets < {TARGET_P50_MS:g} ms, < {TARGET_P99_MS:g} ms)"
    )
    print(
        f"    pairwise difference  p50 {percentile(pairwise, 50) * 1e3:7.3f} ms   "
        f"p99 {percentile(pairwise, 99) * 1e3:7.3f} ms"
    )
    print(
        f"  load phase: {args.concurrency} concurrent clients for {elapsed:.1f} s: "
        f"{len(latencies)} requests, {len(latencies) / elapsed:.0f} req/s, "
        f"errors {m['errors'] or 0}"
    )
    if latencies:
        print(
            f"    latency under load   p50 {percentile(latencies, 50) * 1e3:7.1f} ms   "
            f"p99 {percentile(latencies, 99) * 1e3:7.1f} ms"
        )
    if m["receipts"] is not None:
        ok = m["receipts"] == m["answered"]
        print(
            f"  receipts: {m['receipts']} in the ledger for {m['answered']} answered requests "
            f"({'none lost' if ok else 'MISMATCH'})"
        )


def _report_workers(args: argparse.Namespace, results: dict[int, dict[str, object]]) -> None:
    for workers, w in results.items():
        latencies: list[float] = w["latencies"]  # type: ignore[assignment]
        ok = w["receipts"] == w["answered"]
        print(
            f"sprout serve --workers {workers} (durable): {args.concurrency} clients for "
            f"{float(w['elapsed_s']):.1f} s: {float(w['rps']):.0f} req/s "  # type: ignore[arg-type]
            f"(p50 {percentile(latencies, 50) * 1e3:.1f} ms), errors {w['errors'] or 0}; "
            f"receipts {w['receipts']} for {w['answered']} answered "
            f"({'none lost' if ok else 'MISMATCH'})"
        )
    if 1 in results and 2 in results:
        ratio = float(results[2]["rps"]) / max(1e-9, float(results[1]["rps"]))  # type: ignore[arg-type]
        print(f"  2 workers / 1 worker throughput: {ratio:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=30.0, help="load phase length")
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--pairs", type=int, default=2000, help="overhead-phase request pairs")
    parser.add_argument(
        "--workers-seconds",
        type=float,
        default=10.0,
        help="load phase length of `sprout serve --workers 1` and `--workers 2` (0: skip)",
    )
    parser.add_argument(
        "--no-litellm", dest="litellm", action="store_false", help="leave LiteLLM's proxy out"
    )
    parser.add_argument("--upstream-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.upstream_only:
        asyncio.run(_serve_upstream())
        return

    workers: dict[int, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        upstream = subprocess.Popen(
            [sys.executable, __file__, "--upstream-only"], stdout=subprocess.PIPE, text=True
        )
        try:
            assert upstream.stdout is not None
            upstream_port = int(upstream.stdout.readline().split()[1])
            runs = _measure_all(args, upstream_port, tmp)
            if args.workers_seconds > 0:
                if serve_has_workers():
                    workers = measure_workers(args, upstream_port, tmp)
                else:
                    print("sprout serve has no --workers: workers phase skipped")
        finally:
            if upstream.poll() is None:
                upstream.kill()
                upstream.wait(timeout=10)

    for m in runs.values():
        _report(args, m)
    durable, buffered = runs["durable"], runs["buffered"]
    ratio_p50 = float(durable["overhead_p50_ms"]) / max(1e-9, float(buffered["overhead_p50_ms"]))  # type: ignore[arg-type]
    print(
        f"default (durable) vs buffered: p50 overhead {durable['overhead_p50_ms']:.3f} ms vs "
        f"{buffered['overhead_p50_ms']:.3f} ms, ratio {ratio_p50:.2f} (target <= 1.5)"
    )
    figures: dict[str, float | int | str] = {"concurrency": args.concurrency}
    for name, m in runs.items():
        latencies: list[float] = m["latencies"]  # type: ignore[assignment]
        elapsed = float(m["elapsed_s"])  # type: ignore[arg-type]
        prefix = {"durable": "", "buffered": "buffered_", LITELLM: "litellm_"}[name]
        figures.update(
            {
                f"{prefix}requests": int(m["requests"]),  # type: ignore[call-overload]
                f"{prefix}errors": sum(m["errors"].values()),  # type: ignore[attr-defined]
                f"{prefix}answered": int(m["answered"]),  # type: ignore[call-overload]
                f"{prefix}load_rps": round(len(latencies) / elapsed, 1),
                f"{prefix}load_p50_ms": round(percentile(latencies, 50) * 1e3, 1),
                f"{prefix}load_p99_ms": round(percentile(latencies, 99) * 1e3, 1),
                f"{prefix}direct_p50_ms": round(float(m["direct_p50_ms"]), 3),  # type: ignore[arg-type]
                f"{prefix}overhead_p50_ms": round(float(m["overhead_p50_ms"]), 3),  # type: ignore[arg-type]
                f"{prefix}overhead_p99_ms": round(float(m["overhead_p99_ms"]), 3),  # type: ignore[arg-type]
            }
        )
        if m["receipts"] is not None:
            figures[f"{prefix}receipts"] = int(m["receipts"])  # type: ignore[call-overload]
    figures["durable_vs_buffered_p50_ratio"] = round(ratio_p50, 2)
    if LITELLM in runs:
        peer = runs[LITELLM]
        ratio = float(durable["overhead_p50_ms"]) / max(1e-9, float(peer["overhead_p50_ms"]))  # type: ignore[arg-type]
        lost = sum(int(runs[mode]["answered"]) - int(runs[mode]["receipts"]) for mode in MODES)  # type: ignore[call-overload]
        print(
            f"sprout (durable) vs litellm: p50 overhead {durable['overhead_p50_ms']:.3f} ms vs "
            f"{peer['overhead_p50_ms']:.3f} ms, ratio {ratio:.2f} (target <= 1); p99 "
            f"{durable['overhead_p99_ms']:.3f} vs {peer['overhead_p99_ms']:.3f} ms; "
            f"{len(durable['latencies']) / float(durable['elapsed_s']):.0f} vs "  # type: ignore[arg-type]
            f"{len(peer['latencies']) / float(peer['elapsed_s']):.0f} req/s at "  # type: ignore[arg-type]
            f"{args.concurrency} clients; receipts lost: {lost}"
        )
        figures["sprout_vs_litellm_p50_ratio"] = round(ratio, 2)
    if workers:
        _report_workers(args, workers)
        for n, w in workers.items():
            figures[f"workers{n}_rps"] = round(float(w["rps"]), 1)  # type: ignore[arg-type]
            figures[f"workers{n}_answered"] = int(w["answered"])  # type: ignore[call-overload]
            figures[f"workers{n}_receipts"] = int(w["receipts"])  # type: ignore[call-overload]
            figures[f"workers{n}_errors"] = sum(w["errors"].values())  # type: ignore[attr-defined]
    emit(figures)


if __name__ == "__main__":
    main()
