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

Two proxies run in one invocation, against the same upstream: one with the default ledger
durability (``durable``: each receipt synced to the journal, by group commit, before the
answer is released) and one with ``buffered``. The overhead phase interleaves the upstream
and both proxies request by request (in rotating order, so that a slower spell of the
machine hits all three alike); the load phase runs against each in turn. The ratio of their
p50 overheads is printed (target: at most 1.5).

    python benchmarks/proxy_load.py [--seconds 30] [--concurrency 200] [--pairs 2000]
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


async def _load(proxy: int, concurrency: int, seconds: float) -> dict[str, object]:
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
                if not receipt:
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
    args: argparse.Namespace, upstream_port: int, durability: str, tmp: str
) -> tuple[subprocess.Popen[str], int, Path]:
    """``sprout serve`` with ``durability`` in front of the upstream: (process, port, db)."""
    db = Path(tmp) / f"proxy-ledger-{durability}.db"
    proxy_port = _free_port()
    env = {
        **os.environ,
        "SPROUT_CARBON_PROVIDER": "static",
        "SPROUT_METER": "estimate",
        "SPROUT_METER_CALIBRATE": "false",
        "SPROUT_SERVER_THREADS": str(max(256, args.concurrency)),
        "SPROUT_LEDGER_DURABILITY": durability,
    }
    sprout = Path(sys.executable).with_name("sprout")
    proxy = subprocess.Popen(
        [
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
        ],
        env=env,
        cwd=tmp,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    _wait_for_port(proxy_port, proxy)
    return proxy, proxy_port, db


def _stop(proxy: subprocess.Popen[str]) -> None:
    """Stop a proxy gracefully (SIGINT: it flushes its ledger)."""
    proxy.send_signal(signal.SIGINT)
    out, _ = proxy.communicate(timeout=120)
    if proxy.returncode not in (0, -signal.SIGINT):
        print(out, file=sys.stderr)


def _measure_all(args: argparse.Namespace, upstream_port: int, tmp: str) -> dict[str, dict]:
    """Both durability modes: overhead interleaved, then load one after the other."""
    started: dict[str, tuple[subprocess.Popen[str], int, Path]] = {}
    try:
        for mode in MODES:
            started[mode] = _start_proxy(args, upstream_port, mode, tmp)
        ports = {mode: port for mode, (_, port, _) in started.items()}
        direct_s, proxied_s, paired_answered = asyncio.run(
            _paired(upstream_port, ports, args.pairs)
        )
        loads = {}
        for mode in MODES:
            loads[mode] = asyncio.run(_load(ports[mode], args.concurrency, args.seconds))
        for mode in MODES:
            _stop(started[mode][0])
    finally:
        for proc, _, _ in started.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    direct_p50, direct_p99 = percentile(direct_s, 50) * 1e3, percentile(direct_s, 99) * 1e3
    runs: dict[str, dict] = {}
    for mode in MODES:
        with sqlite3.connect(started[mode][2]) as conn:
            receipts = conn.execute("select count(*) from receipts").fetchone()[0]
        load = loads[mode]
        latencies: list[float] = load["latencies"]  # type: ignore[assignment]
        errors: dict[str, int] = load["errors"]  # type: ignore[assignment]
        requests = len(latencies) + sum(v for k, v in errors.items() if not k.startswith("HTTP"))
        proxied = proxied_s[mode]
        proxied_p50, proxied_p99 = percentile(proxied, 50) * 1e3, percentile(proxied, 99) * 1e3
        runs[mode] = {
            "durability": mode,
            "direct_p50_ms": direct_p50,
            "direct_p99_ms": direct_p99,
            "proxied_p50_ms": proxied_p50,
            "proxied_p99_ms": proxied_p99,
            "overhead_p50_ms": proxied_p50 - direct_p50,
            "overhead_p99_ms": proxied_p99 - direct_p99,
            "pairwise": [p - d for p, d in zip(proxied, direct_s, strict=True)],
            "latencies": latencies,
            "errors": errors,
            "requests": requests + paired_answered[mode],
            "answered": paired_answered[mode] + int(load["answered"]),  # type: ignore[call-overload]
            "receipts": receipts,
            "elapsed_s": float(load["elapsed_s"]),  # type: ignore[arg-type]
        }
    return runs


def _report(args: argparse.Namespace, m: dict[str, object]) -> None:
    """Print one durability mode's figures."""
    latencies: list[float] = m["latencies"]  # type: ignore[assignment]
    pairwise: list[float] = m["pairwise"]  # type: ignore[assignment]
    elapsed = float(m["elapsed_s"])  # type: ignore[arg-type]
    print(f"ledger_durability={m['durability']}")
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
    ok = m["receipts"] == m["answered"]
    print(
        f"  receipts: {m['receipts']} in the ledger for {m['answered']} answered requests "
        f"({'none lost' if ok else 'MISMATCH'})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=30.0, help="load phase length")
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--pairs", type=int, default=2000, help="overhead-phase request pairs")
    parser.add_argument("--upstream-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.upstream_only:
        asyncio.run(_serve_upstream())
        return

    with tempfile.TemporaryDirectory() as tmp:
        upstream = subprocess.Popen(
            [sys.executable, __file__, "--upstream-only"], stdout=subprocess.PIPE, text=True
        )
        try:
            assert upstream.stdout is not None
            upstream_port = int(upstream.stdout.readline().split()[1])
            runs = _measure_all(args, upstream_port, tmp)
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
    for mode, m in runs.items():
        latencies: list[float] = m["latencies"]  # type: ignore[assignment]
        elapsed = float(m["elapsed_s"])  # type: ignore[arg-type]
        prefix = "" if mode == "durable" else "buffered_"
        figures.update(
            {
                f"{prefix}requests": int(m["requests"]),  # type: ignore[call-overload]
                f"{prefix}errors": sum(m["errors"].values()),  # type: ignore[attr-defined]
                f"{prefix}receipts": int(m["receipts"]),  # type: ignore[call-overload]
                f"{prefix}answered": int(m["answered"]),  # type: ignore[call-overload]
                f"{prefix}load_rps": round(len(latencies) / elapsed, 1),
                f"{prefix}load_p50_ms": round(percentile(latencies, 50) * 1e3, 1),
                f"{prefix}load_p99_ms": round(percentile(latencies, 99) * 1e3, 1),
                f"{prefix}direct_p50_ms": round(float(m["direct_p50_ms"]), 3),  # type: ignore[arg-type]
                f"{prefix}overhead_p50_ms": round(float(m["overhead_p50_ms"]), 3),  # type: ignore[arg-type]
                f"{prefix}overhead_p99_ms": round(float(m["overhead_p99_ms"]), 3),  # type: ignore[arg-type]
            }
        )
    figures["durable_vs_buffered_p50_ratio"] = round(ratio_p50, 2)
    emit(figures)


if __name__ == "__main__":
    main()
