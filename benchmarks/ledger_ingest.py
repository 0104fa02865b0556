"""Ledger ingest with hash chaining into SQLite, and a report over a million receipts.

Ingest: appends receipts through :class:`~sprout.ledger.store.Ledger` (validation, chain
hashing, batch insert, rollups, chain head) into a fresh SQLite file and times until
``flush()`` returns, that is until every receipt is committed; best of ``--runs``. The
receipts are built before the clock starts (and frozen out of the GC's walks). Measured
three ways in one run:

- ``buffered`` ledger, one appending thread: the writer's own throughput;
- ``durable`` ledger (the default: every receipt on disk in the journal before ``append``
  returns), ``--threads`` appending threads as a busy server has (their syncs are
  group-committed); ``--durable-receipts`` of them;
- the baseline a user would write instead: the same rows inserted with plain ``sqlite3``
  ``executemany`` in batches of ``--batch-size``, one commit per batch, no validation,
  chain or rollups. The ratio of the ledger's rate to it is what chaining and rollups cost.
Report: fills a ledger with ``--report-receipts`` receipts spread over 30 days (the same
writer, not timed), then times ``ledger_report`` for every group-by, with a window whose
edges fall inside hours (so raw receipts are read there too); the figure is the slowest.
Receipts look like the controller's: random request ids, one carbon reading per hour,
three directives, four tenants, two energy sources, counterfactuals from two sources or none,
3% evaluation overhead, a prefill/decode split on every other receipt (the engines that
report the first token's time).

    python benchmarks/ledger_ingest.py [--receipts 200000] [--report-receipts 1000000]
"""

from __future__ import annotations

import argparse
import gc
import operator
import random
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench import emit

from sprout.ledger.audit import ledger_report
from sprout.ledger.audit_report import GROUP_BYS
from sprout.ledger.migrate import ensure_schema
from sprout.ledger.store import RECEIPT_FIELDS, Ledger
from sprout.receipt import Receipt

T0 = datetime(2024, 6, 1, tzinfo=UTC)
DIRECTIVES = (("L0", None, 1.0), ("L1", "llama-2-13b", 0.6), ("L2", "llama-2-7b-q4", 0.35))


def receipts(n: int, span_s: float, seed: int) -> Iterator[Receipt]:
    """``n`` controller-like receipts spread evenly over ``span_s`` seconds from ``T0``."""
    rng = random.Random(seed)
    step = span_s / n
    readings: dict[int, datetime] = {}
    for i in range(n):
        created = T0 + timedelta(seconds=i * step)
        hour = int(i * step // 3600)
        ci_time = readings.get(hour)
        if ci_time is None:  # one reading per hour, shared by its receipts (as the signal does)
            readings.clear()
            ci_time = readings[hour] = T0 + timedelta(hours=hour)
        directive, variant, scale = DIRECTIVES[rng.randrange(3)]
        energy_kwh = 2e-5 * scale * (0.5 + rng.random())
        ci = 150.0 + 100.0 * ((hour % 24) / 24)
        operational = energy_kwh * ci
        embodied = 1.2e-4 * scale
        has_cf = rng.random() < 0.9
        request_id = uuid.UUID(int=rng.getrandbits(128), version=4).hex
        input_tokens = rng.randrange(20, 400)
        output_tokens = int(300 * scale) + rng.randrange(50)
        # Derived, not drawn, and the draws keep their order: the other values are as before.
        prefill_kwh = energy_kwh * input_tokens / (input_tokens + 4 * output_tokens)
        split = i % 2 == 0
        yield Receipt(
            request_id=request_id,
            created_at=created,
            directive=directive,
            decision="lp-mix",
            engine="replay",
            model=variant or "llama-2-13b",
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            latency_s=2.0 * scale,
            energy_kwh=energy_kwh,
            energy_source="recorded" if rng.random() < 0.8 else "estimated",
            ci_g_per_kwh=ci,
            ci_zone="GB",
            ci_provider="trace",
            ci_signal_type="average",
            ci_emission_factor="direct",
            ci_time=ci_time,
            ci_age_s=float(i * step % 3600),
            ci_fallback="provider",
            operational_g=operational,
            embodied_g=embodied,
            tenant=f"tenant-{rng.randrange(4)}",
            variant=variant,
            policy_version=1,
            energy_device="gpu0",
            baseline_energy_kwh=2e-5 if has_cf else None,
            baseline_g=(2e-5 * ci + 1.2e-4) if has_cf else None,
            baseline_source=("recorded" if rng.random() < 0.7 else "estimated") if has_cf else None,
            prompt_id=f"alpaca-{rng.randrange(5000)}",
            purpose="evaluation" if rng.random() < 0.03 else "serve",
            prefill_kwh=prefill_kwh if split else None,
            decode_kwh=energy_kwh - prefill_kwh if split else None,
        )


def ingest(url: str, batch: list[Receipt], batch_size: int) -> float:
    """Seconds from the first append until all of ``batch`` is committed (buffered)."""
    with Ledger(url, batch_size=batch_size, flush_interval_s=0.5, durability="buffered") as ledger:
        start = time.perf_counter()
        for receipt in batch:
            ledger.append(receipt)
        if not ledger.flush(timeout_s=3600):
            raise RuntimeError("flush timed out")
        elapsed = time.perf_counter() - start
        if ledger.count_receipts() != len(batch):
            raise RuntimeError("receipts missing after ingest")
    return elapsed


def ingest_threads(url: str, batch: list[Receipt], batch_size: int, threads: int) -> float:
    """Seconds for ``threads`` threads to append ``batch`` to a durable ledger, until all of
    it is committed."""
    with Ledger(url, batch_size=batch_size, flush_interval_s=0.5, durability="durable") as led:
        slices = [batch[i::threads] for i in range(threads)]
        workers = [
            threading.Thread(target=lambda part=part: [led.append(r) for r in part])
            for part in slices
        ]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        if not led.flush(timeout_s=3600):
            raise RuntimeError("flush timed out")
        elapsed = time.perf_counter() - start
        if led.count_receipts() != len(batch):
            raise RuntimeError("receipts missing after ingest")
    return elapsed


def raw_insert(path: Path, batch: list[Receipt], batch_size: int) -> float:
    """Seconds to insert ``batch``'s rows with plain sqlite3 (the baseline): same table, same
    WAL and synchronous mode as the buffered ledger, no validation, chain or rollups."""
    ensure_schema(f"sqlite:///{path}")
    columns = (*RECEIPT_FIELDS, "chain_id", "seq", "prev_hash", "hash")
    sql = f"INSERT INTO receipts ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})"
    values = operator.attrgetter(*RECEIPT_FIELDS)
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        start = time.perf_counter()
        for lo in range(0, len(batch), batch_size):
            rows = []
            for seq, r in enumerate(batch[lo : lo + batch_size], start=lo + 1):
                row = list(values(r))
                row[1] = str(row[1])  # created_at, as text
                row[16] = str(row[16])  # ci_time
                rows.append((*row, "raw", seq, "", ""))
            conn.executemany(sql, rows)
            conn.commit()
        elapsed = time.perf_counter() - start
        (stored,) = conn.execute("SELECT count(*) FROM receipts").fetchone()
    finally:
        conn.close()
    if stored != len(batch):
        raise RuntimeError("rows missing after the raw insert")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--receipts", type=int, default=200_000, help="per ingest run")
    parser.add_argument("--runs", type=int, default=3, help="ingest runs (best is kept)")
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--report-receipts", type=int, default=1_000_000)
    parser.add_argument("--threads", type=int, default=16, help="durable appending threads")
    parser.add_argument("--durable-receipts", type=int, default=50_000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        batch = list(receipts(args.receipts, span_s=86_400.0, seed=1))
        # The input receipts are the benchmark's own objects (an application does not hold
        # 200,000 of them): keep the cyclic GC from walking them during the timed runs.
        gc.collect()
        gc.freeze()
        times, raw_times, durable_times = [], [], []
        durable_batch = batch[: args.durable_receipts]
        for run in range(args.runs):
            url = f"sqlite:///{Path(tmp) / f'ingest{run}.db'}"
            times.append(ingest(url, batch, args.batch_size))
            raw_times.append(raw_insert(Path(tmp) / f"raw{run}.db", batch, args.batch_size))
            url = f"sqlite:///{Path(tmp) / f'durable{run}.db'}"
            durable_times.append(ingest_threads(url, durable_batch, args.batch_size, args.threads))
            print(
                f"run {run + 1}: ledger (buffered) {args.receipts / times[-1]:,.0f} receipts/s, "
                f"raw sqlite3 insert {args.receipts / raw_times[-1]:,.0f} rows/s, ledger "
                f"(durable, {args.threads} threads) {len(durable_batch) / durable_times[-1]:,.0f}"
                " receipts/s",
                flush=True,
            )
        gc.unfreeze()
        del batch
        ingest_rate = args.receipts / min(times)
        raw_rate = args.receipts / min(raw_times)
        durable_rate = len(durable_batch) / min(durable_times)

        url = f"sqlite:///{Path(tmp) / 'report.db'}"
        span_s = 30 * 86_400.0
        start = time.perf_counter()
        with Ledger(url, batch_size=args.batch_size, durability="buffered") as ledger:
            chunk: list[Receipt] = []
            for r in receipts(args.report_receipts, span_s=span_s, seed=2):
                chunk.append(r)
                if len(chunk) >= 50_000:  # bounded memory: flush chunk by chunk
                    for x in chunk:
                        ledger.append(x)
                    ledger.flush(timeout_s=3600)
                    chunk.clear()
            for x in chunk:
                ledger.append(x)
            ledger.flush(timeout_s=3600)
            stored = ledger.count_receipts()
        fill_s = time.perf_counter() - start
        print(f"filled the report ledger with {stored:,} receipts in {fill_s:.1f} s")

        since = T0 + timedelta(days=2, minutes=17, seconds=5)
        until = T0 + timedelta(days=29, hours=5, minutes=41)
        report_s: dict[str, float] = {}
        for group_by in GROUP_BYS:
            for window in ((None, None), (since, until)):
                t0 = time.perf_counter()
                report = ledger_report(url, since=window[0], until=window[1], group_by=group_by)
                elapsed = time.perf_counter() - t0
                key = f"{group_by}{'' if window[0] is None else ' (window)'}"
                report_s[key] = elapsed
                print(
                    f"report by {key:18s} {elapsed * 1000:7.1f} ms  "
                    f"{len(report.rows):4d} rows, {report.totals.requests:,} requests"
                )
        if report.totals.requests <= 0:
            raise RuntimeError("empty report")

    print(
        f"\ningest: {ingest_rate:,.0f} receipts/s into SQLite with hash chaining (target >= 50,000)"
    )
    print(
        f"baseline: raw sqlite3 insert of the same rows {raw_rate:,.0f} rows/s; the ledger runs "
        f"at {ingest_rate / raw_rate:.2f}x of it (validation, chain, rollups and head included)"
    )
    print(
        f"durable (the default), {args.threads} appending threads: {durable_rate:,.0f} "
        f"receipts/s ({durable_rate / ingest_rate:.2f}x of buffered)"
    )
    print(
        f"report over {stored:,} receipts: {max(report_s.values()):.3f} s at worst (target < 1 s)"
    )
    emit(
        {
            "ingest_rows_per_s": round(ingest_rate),
            "raw_insert_rows_per_s": round(raw_rate),
            "ingest_vs_raw_ratio": round(ingest_rate / raw_rate, 3),
            "durable_ingest_rows_per_s": round(durable_rate),
            "durable_threads": args.threads,
            "report_1m_s": round(max(report_s.values()), 4),
            "report_receipts": stored,
            "ingest_receipts": args.receipts,
            "batch_size": args.batch_size,
        }
    )


if __name__ == "__main__":
    main()
