"""Reading the carbon signal on the request path: ``CarbonSignal.read()``.

Measures, in one run, a read while a background poller keeps the signal fresh (how a live
provider runs: the read never touches the network), the same while the poller refreshes
every 50 ms (reads contend with refreshes), and the lazy inline-refresh read of the embedded
default (trace provider). Reads are timed in batches of 100 so the timer's own cost is
spread; the median and p99 are over batches, per read.

    python benchmarks/signal_read.py [--reads 200000]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench import emit, summary_us

from sprout.carbon.signal import CarbonSignal
from sprout.carbon.static import StaticProvider
from sprout.carbon.trace import TraceProvider

BATCH = 100


def time_reads(signal: CarbonSignal, reads: int) -> list[float]:
    """Seconds per read, one sample per batch of :data:`BATCH` reads."""
    read = signal.read
    for _ in range(1000):  # warm up
        read()
    samples = []
    for _ in range(max(1, reads // BATCH)):
        t0 = time.perf_counter()
        for _ in range(BATCH):
            read()
        samples.append((time.perf_counter() - t0) / BATCH)
    return samples


def polled(reads: int, refresh_s: float) -> tuple[list[float], int]:
    signal = CarbonSignal(StaticProvider(250.0), "GB", refresh_s=refresh_s)
    poller = signal.start_polling(tick_s=min(1.0, refresh_s), forecast_interval_s=0)
    try:
        deadline = time.monotonic() + 5.0
        while signal.last_good is None and time.monotonic() < deadline:
            time.sleep(0.001)
        assert signal.read().fallback == "provider", "the poller delivered no reading"
        samples = time_reads(signal, reads)
    finally:
        signal.stop_polling()
    return samples, poller.refreshes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reads", type=int, default=200_000)
    args = parser.parse_args()
    # The busy case's tight loop starves the 50 ms job at times; APScheduler then warns that
    # it skipped a run, which is expected here.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)

    quiet, _ = polled(args.reads, refresh_s=300.0)
    busy, refreshes = polled(args.reads, refresh_s=0.05)
    lazy = time_reads(CarbonSignal(TraceProvider.from_source("GB"), "GB"), args.reads)

    rows = [
        ("polled (live path)", summary_us(quiet)),
        (f"polled, {refreshes} refreshes", summary_us(busy)),
        ("lazy (trace, inline)", summary_us(lazy)),
    ]
    print(f"reads per case        {args.reads} (batches of {BATCH})")
    for label, s in rows:
        print(f"{label:<28} p50 {s['p50_us']:6.2f} us   p99 {s['p99_us']:6.2f} us")
    emit(
        {
            "reads": args.reads,
            "signal_read_p99_us": round(rows[0][1]["p99_us"], 3),
            "signal_read_busy_median_us": round(rows[1][1]["p50_us"], 3),
            "signal_read_lazy_median_us": round(rows[2][1]["p50_us"], 3),
            "signal_read_median_us": round(rows[0][1]["p50_us"], 3),
        }
    )


if __name__ == "__main__":
    main()
