"""Request path on the embedded defaults: the controller against the bare engine.

Replays bundled prompts through ``Controller.chat`` (trace carbon signal, Sprout LP policy,
replay engine, receipts queued to a SQLite ledger) and through the bare replay engine, in
one run, and prints per-request latencies and the controller's added overhead.

    python benchmarks/request_path.py [--requests 5000]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench import emit, percentile, summary_us

from sprout.chat import ChatRequest, Message
from sprout.config import load_settings
from sprout.demo import pick_prompts
from sprout.engines.replay import ReplayEngine
from sprout.factory import build_controller


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=5000)
    args = parser.parse_args()

    records = pick_prompts(args.requests, seed=1)
    engine = ReplayEngine()
    for r in records[:50]:  # warm the recorded-answer caches outside the timed loops
        engine.generate(ChatRequest((Message("user", r.instruction),), directive="L1"))

    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(env={}, db_url=f"sqlite:///{Path(tmp) / 'bench.db'}")
        controller = build_controller(settings, engine=engine, rng=random.Random(0))
        bare_s, wrapped_s = [], []
        for r in records:
            request = ChatRequest((Message("user", r.instruction),), directive="L1")
            t0 = time.perf_counter()
            engine.generate(request)
            t1 = time.perf_counter()
            controller.chat([{"role": "user", "content": r.instruction}], prompt_id=r.id)
            t2 = time.perf_counter()
            bare_s.append(t1 - t0)
            wrapped_s.append(t2 - t1)
        t_flush = time.perf_counter()
        controller.ledger.flush()
        flush_s = time.perf_counter() - t_flush
        receipts = controller.ledger.count_receipts()
        controller.close()

    bare, wrapped = summary_us(bare_s), summary_us(wrapped_s)
    overhead = [w - b for w, b in zip(wrapped_s, bare_s, strict=True)]
    print(f"requests              {len(records)}")
    print(f"bare engine           p50 {bare['p50_us']:8.1f} us   p99 {bare['p99_us']:8.1f} us")
    print(
        f"through controller    p50 {wrapped['p50_us']:8.1f} us   p99 {wrapped['p99_us']:8.1f} us"
    )
    print(
        f"controller overhead   p50 {percentile(overhead, 50) * 1e6:8.1f} us   "
        f"p99 {percentile(overhead, 99) * 1e6:8.1f} us"
    )
    print(f"receipts in ledger    {receipts} (final flush {flush_s * 1e3:.1f} ms)")
    emit(
        {
            "requests": len(records),
            "receipts": receipts,
            "bare_p50_us": round(bare["p50_us"], 1),
            "controller_p50_us": round(wrapped["p50_us"], 1),
            "overhead_p50_us": round(percentile(overhead, 50) * 1e6, 1),
            "overhead_p99_us": round(percentile(overhead, 99) * 1e6, 1),
        }
    )


if __name__ == "__main__":
    main()
