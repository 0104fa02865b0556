"""What the dashboard shows: one JSON document built from the ledger's report APIs.

Nothing here computes a carbon figure of its own: every number comes from
:func:`~sprout.ledger.audit.ledger_report` (per bucket, per directive, per tenant, per
outcome), :func:`~sprout.judge.report.verdict_report` (normalized preference, the quality
estimate and its floor) and :func:`~sprout.ledger.verify.verify` with
:func:`~sprout.ledger.pending.scan_pending` (integrity). The dashboard only rearranges them:
empty buckets filled with zeros so that time runs evenly, running totals, and the count of
verdicts that preferred the baseline per bucket (for the running normalized preference).

The database is opened read-only (:func:`~sprout.dashboard.readonly.open_readonly`) and its
schema is never created or migrated (:meth:`Dashboard.check_schema` refuses one that is not at
this sprout's head).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from sprout.dashboard.readonly import open_readonly
from sprout.errors import ConfigError
from sprout.judge.report import verdict_report
from sprout.ledger.audit import ledger_report, parse_time
from sprout.ledger.audit_report import ReportRow
from sprout.ledger.migrate import (
    current_revision,
    head_revisions,
    is_sqlite_memory,
    ledger_errors,
    mask_url,
)

#: Bucket widths the page offers; ``auto`` is hourly for a few days of receipts, else daily.
BUCKETS: tuple[str, ...] = ("auto", "hour", "day")
#: ``auto`` picks hourly buckets when the receipts span at most this many days.
AUTO_HOURLY_DAYS = 4
#: Most buckets one page draws (a year of days; 83 days of hours).
MAX_BUCKETS = 2000
#: How long an integrity check is reused (it reads every receipt).
VERIFY_TTL_S = 60.0
#: Integrity problems listed on the page (all are counted).
MAX_PROBLEMS_SHOWN = 20

_STEP = {"hour": timedelta(hours=1), "day": timedelta(days=1)}


def parse_query(params: Mapping[str, str]) -> tuple[datetime | None, datetime | None, str]:
    """``since``, ``until`` and ``bucket`` from the data endpoint's query (empty: unset).

    Raises:
        ConfigError: a time that is no ISO 8601 date/time, or an unknown bucket.
    """
    since = (params.get("since") or "").strip()
    until = (params.get("until") or "").strip()
    bucket = (params.get("bucket") or "auto").strip() or "auto"
    if bucket not in BUCKETS:
        raise ConfigError(f"bucket {bucket!r}: use one of {', '.join(BUCKETS)}")
    return (
        parse_time(since, option="since") if since else None,
        parse_time(until, option="until") if until else None,
        bucket,
    )


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat()


def _label(bucket: str, start: datetime) -> str:
    """The report's group label of a bucket (see :mod:`sprout.ledger.audit`)."""
    return f"{start:%Y-%m-%d}" if bucket == "day" else f"{start:%Y-%m-%dT%H:00Z}"


def _start_of(bucket: str, value: str) -> datetime:
    """A bucket's start from the group value the audit's verdict query yields."""
    pattern = "%Y-%m-%d" if bucket == "day" else "%Y-%m-%d %H"
    return datetime.strptime(value, pattern).replace(tzinfo=UTC)


def _bucket(bucket: str, start: datetime, row: ReportRow | None) -> dict[str, Any]:
    """One bucket's figures, straight from its report row (zeros for an empty bucket)."""
    r = row if row is not None else ReportRow(group=_label(bucket, start), start=start)
    with_cf = r.baseline_n > 0
    return {
        "start": start.isoformat(),
        "label": r.group,
        "requests": r.requests,
        "serve_requests": r.serve_requests,
        "eval_requests": r.eval_requests,
        "energy_kwh": r.energy_kwh,
        "serve_kwh": r.energy_kwh - r.eval_kwh,
        "eval_kwh": r.eval_kwh,
        "total_g": r.total_g,
        "serve_g": r.total_g - r.eval_g,
        "eval_g": r.eval_g,
        # Served carbon split by whether the request has an always-L0 counterfactual, so
        # the bars compare like with like against the counterfactual line.
        "serve_with_counterfactual_g": r.baseline_actual_g if with_cf else 0.0,
        "serve_without_counterfactual_g": (
            max(0.0, r.total_g - r.eval_g - r.baseline_actual_g) if r.no_baseline else 0.0
        ),
        "counterfactual_g": r.baseline_g if with_cf else None,
        "with_counterfactual": r.baseline_n,
        "without_counterfactual": r.no_baseline,
        "saved_g": r.saved_g,
        "net_saved_g": r.net_saved_g,
        "ci_g_per_kwh": r.ci_g_per_kwh,
        "judged": r.judged,
        "judge_preferred": r.judge_preferred,
        "judge_share": r.judge_share,
        "baseline_preferred": 0,
        "directives": {},
    }


def _totals(r: ReportRow) -> dict[str, Any]:
    return {
        "requests": r.requests,
        "serve_requests": r.serve_requests,
        "eval_requests": r.eval_requests,
        "energy_kwh": r.energy_kwh,
        "serve_kwh": r.energy_kwh - r.eval_kwh,
        "eval_kwh": r.eval_kwh,
        "operational_g": r.operational_g,
        "embodied_g": r.embodied_g,
        "total_g": r.total_g,
        "serve_g": r.total_g - r.eval_g,
        "eval_g": r.eval_g,
        "counterfactual_g": r.baseline_g if r.baseline_n else None,
        "counterfactual_actual_g": r.baseline_actual_g if r.baseline_n else None,
        "with_counterfactual": r.baseline_n,
        "without_counterfactual": r.no_baseline,
        "counterfactual_by_source": dict(sorted(r.baseline_by_source.items())),
        "saved_g": r.saved_g,
        "saved_pct": r.saved_pct,
        "net_saved_g": r.net_saved_g,
        "ci_g_per_kwh": r.ci_g_per_kwh,
        "energy_kwh_by_source": dict(sorted(r.kwh_by_source.items())),
        "judged": r.judged,
        "judge_preferred": r.judge_preferred,
        "judge_share": r.judge_share,
    }


def _group(r: ReportRow, key: str) -> dict[str, Any]:
    """A tenant's or outcome's row."""
    return {
        key: r.group,
        "requests": r.requests,
        "serve_requests": r.serve_requests,
        "eval_requests": r.eval_requests,
        "energy_kwh": r.energy_kwh,
        "total_g": r.total_g,
        "serve_g": r.total_g - r.eval_g,
        "eval_g": r.eval_g,
        "counterfactual_g": r.baseline_g if r.baseline_n else None,
        "with_counterfactual": r.baseline_n,
        "saved_g": r.saved_g,
        "saved_pct": r.saved_pct,
        "net_saved_g": r.net_saved_g,
        "ci_g_per_kwh": r.ci_g_per_kwh,
        "judged": r.judged,
        "judge_share": r.judge_share,
    }


class Dashboard:
    """The dashboard's data source: a read-only engine on one ledger.

    Args:
        db_url: SQLAlchemy URL of the ledger.
        engine: an engine to read through (default: :func:`open_readonly`, closed by
            :meth:`close`); the proxy passes its own for an in-memory ledger.
        spool: the ledger's spool path, for receipts pending outside the database (None:
            not looked for).
        floor: the normalized-preference floor shown until the quality loop stores an
            estimate with its own.
        verify_ttl_s: how long an integrity check is reused.
        clock: monotonic seconds (tests).
    """

    def __init__(
        self,
        db_url: str,
        *,
        engine: Engine | None = None,
        spool: Path | None = None,
        floor: float = 0.9,
        verify_ttl_s: float = VERIFY_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db_url = db_url
        self.url = mask_url(db_url)
        self._own = engine is None
        self.engine = engine if engine is not None else open_readonly(db_url)
        self.spool = spool
        self.floor = floor
        self.verify_ttl_s = verify_ttl_s
        self._clock = clock
        self._verify_lock = threading.Lock()
        self._verified: tuple[float, dict[str, Any]] | None = None

    @classmethod
    def from_settings(cls, settings: Any, *, engine: Engine | None = None) -> Dashboard:
        """A dashboard of ``settings.db_url``, with its spool and quality floor."""
        from sprout.ledger.pending import spool_path_for

        return cls(
            settings.db_url,
            engine=engine,
            spool=spool_path_for(settings),
            floor=settings.judge_quality_floor or 1.0 - settings.xi,
        )

    @classmethod
    def for_controller(cls, settings: Any, controller: Any) -> Dashboard:
        """The proxy's dashboard of its controller's ledger: through a read-only engine of
        its own, except where a second connection would not see that ledger (an in-memory
        SQLite ledger, or a controller whose ledger is not ``settings.db_url``): then
        through the ledger's engine, with SELECTs only."""
        ledger = controller.ledger
        if ledger is None:
            return cls.from_settings(settings)
        same = ledger.url == mask_url(settings.db_url)
        if same and not is_sqlite_memory(settings.db_url):
            return cls.from_settings(settings)
        floor = settings.judge_quality_floor or 1.0 - settings.xi
        return cls(ledger.url, engine=ledger.engine, spool=ledger.spool_path, floor=floor)

    def close(self) -> None:
        """Dispose of the engine this dashboard opened."""
        if self._own:
            self.engine.dispose()

    def check_schema(self) -> None:
        """Refuse a ledger whose schema is missing or not at this sprout's head revision
        (the dashboard never migrates: `sprout db upgrade` does).

        Raises:
            ConfigError: no schema, or another revision.
            LedgerError: the database cannot be read.
        """
        current = current_revision(self.db_url, engine=self.engine)
        heads = ",".join(sorted(head_revisions()))
        if current is None:
            raise ConfigError(
                f"ledger {self.url} has no schema; the dashboard only reads ledgers "
                "(write one with `sprout demo`, `sprout serve`, or `sprout db upgrade`)"
            )
        if current != heads:
            raise ConfigError(
                f"ledger {self.url} is at schema revision {current}, this sprout reads "
                f"{heads}; run `sprout db upgrade --db URL` (the dashboard never migrates)"
            )

    # ------------------------------------------------------------------ the document

    def data(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        bucket: str = "auto",
    ) -> dict[str, Any]:
        """The dashboard's JSON document for receipts with ``since <= created_at < until``.

        Raises:
            ConfigError: an unknown bucket, an empty window, or too many buckets.
            LedgerError: the database cannot be read.
        """

        if bucket not in BUCKETS:
            raise ConfigError(f"bucket {bucket!r}: use one of {', '.join(BUCKETS)}")
        window = {"engine": self.engine, "since": since, "until": until}
        requested = bucket
        report = None
        if bucket != "hour":
            report = ledger_report(self.db_url, group_by="day", **window)
            if bucket == "auto":
                days = [r.start for r in report.rows if r.start is not None]
                short = not days or (max(days) - min(days)).days < AUTO_HOURLY_DAYS
                bucket = "hour" if short else "day"
        if report is None or bucket == "hour":
            report = ledger_report(self.db_url, group_by="hour", **window)

        buckets = self._buckets(bucket, report.rows)
        # Served requests per directive and bucket: one report per directive.
        verdicts = verdict_report(self.db_url, since=since, until=until, engine=self.engine)
        by_directive = ledger_report(
            self.db_url, group_by="directive", filters={"purpose": "serve"}, **window
        )
        order = [r.directive for r in verdicts.rows]
        names = sorted(
            (r.group for r in by_directive.rows if r.serve_requests),
            key=lambda n: (order.index(n) if n in order else len(order), n),
        )
        for name in names:
            per = ledger_report(
                self.db_url,
                group_by=bucket,
                filters={"directive": name, "purpose": "serve"},
                **window,
            )
            for row in per.rows:
                if row.group in buckets and row.serve_requests:
                    buckets[row.group]["directives"][name] = row.serve_requests
        quality = self._quality(verdicts, report.totals, bucket, buckets, since, until)
        rows = list(buckets.values())
        self._running_totals(rows)
        tenants = ledger_report(self.db_url, group_by="tenant", **window)
        outcomes = ledger_report(self.db_url, group_by="outcome", **window)
        return {
            "ledger": self.url,
            "generated_at": datetime.now(UTC).isoformat(),
            "window": {
                "since": _iso(since),
                "until": _iso(until),
                "bucket": bucket,
                "requested_bucket": requested,
                "first": rows[0]["start"] if rows else None,
                "last": rows[-1]["start"] if rows else None,
                "buckets": len(rows),
            },
            "totals": _totals(report.totals),
            "buckets": rows,
            "directives": {
                "names": names,
                "served": {r.group: r.serve_requests for r in by_directive.rows},
            },
            "quality": quality,
            "tenants": [_group(r, "tenant") for r in tenants.rows],
            "outcomes": [_group(r, "outcome") for r in outcomes.rows],
            "integrity": self.integrity(),
            "notes": [
                *report.notes,
                "the always-L0 counterfactual is recorded in gCO2e per receipt (baseline_g); "
                "energy is shown as measured or recorded, served and evaluation apart",
            ],
        }

    def _buckets(self, bucket: str, rows: list[ReportRow]) -> dict[str, dict[str, Any]]:
        """Every bucket from the first to the last with receipts, empty ones as zeros."""
        by_start = {r.start: r for r in rows if r.start is not None}
        if not by_start:
            return {}
        step = _STEP[bucket]
        first, last = min(by_start), max(by_start)
        count = int((last - first) / step) + 1
        if count > MAX_BUCKETS:
            raise ConfigError(
                f"{count} {bucket}ly buckets are more than the page draws ({MAX_BUCKETS}); "
                "use bucket=day or a shorter window (since, until)"
            )
        out: dict[str, dict[str, Any]] = {}
        for i in range(count):
            start = first + i * step
            doc = _bucket(bucket, start, by_start.get(start))
            out[doc["label"]] = doc
        return out

    @staticmethod
    def _running_totals(rows: list[dict[str, Any]]) -> None:
        """Cumulative savings (gross, and net of the quality loop's overhead) and the
        running normalized preference, bucket by bucket."""
        saved = net = evaluation = 0.0
        preferred = baseline = 0
        for b in rows:
            saved += b["saved_g"] or 0.0
            evaluation += b["eval_g"]
            net += (b["saved_g"] or 0.0) - b["eval_g"]
            preferred += b["judge_preferred"]
            baseline += b["baseline_preferred"]
            b["cumulative_saved_g"] = saved
            b["cumulative_eval_g"] = evaluation
            b["cumulative_net_saved_g"] = net
            b["cumulative_normalized_preference"] = preferred / baseline if baseline else None

    def _quality(
        self,
        verdicts: Any,
        totals: ReportRow,
        bucket: str,
        buckets: dict[str, dict[str, Any]],
        since: datetime | None,
        until: datetime | None,
    ) -> dict[str, Any]:
        """Judged quality: the verdict report's figures, with the verdicts that preferred
        the baseline counted per bucket (the report's own verdict query)."""
        from sprout.ledger.audit import verdict_rows  # the report's query, reused

        baseline = verdicts.rows[0].directive if verdicts.rows else "L0"
        baseline_preferred = 0
        if totals.judged:
            with ledger_errors(self.db_url, "reading verdicts"), self.engine.connect() as conn:
                for value, _served, preferred in verdict_rows(conn, bucket, since, until, {}):
                    if preferred != baseline:
                        continue
                    baseline_preferred += 1
                    label = _label(bucket, _start_of(bucket, value))
                    if label in buckets:
                        buckets[label]["baseline_preferred"] += 1
        estimate = verdicts.estimate
        floor = self.floor
        if estimate and estimate.get("floor") is not None:
            floor = float(estimate["floor"])
        doc = verdicts.as_dict()
        return {
            "baseline": baseline,
            "verdicts": verdicts.total,
            "judges": verdicts.judges,
            "outcomes": dict(verdicts.outcomes),
            "judged": totals.judged,
            "served_preferred": totals.judge_preferred,
            "baseline_preferred": baseline_preferred,
            "preferred_share": totals.judge_share,
            "baseline_share": baseline_preferred / totals.judged if totals.judged else None,
            "normalized_preference": verdicts.normalized_preference,
            "floor": floor,
            "floor_source": "estimate" if estimate and estimate.get("floor") else "settings",
            "estimate": None
            if not estimate
            else {
                k: estimate.get(k)
                for k in ("at", "levels", "quality", "preference", "floor", "l0_share")
            },
            "queued": verdicts.queued,
            "oldest_queued": _iso(verdicts.oldest_queued),
            "directives": doc["directives"],
        }

    # ------------------------------------------------------------------ integrity

    def integrity(self) -> dict[str, Any]:
        """:func:`~sprout.ledger.verify.verify` over the whole ledger, with the receipts
        pending outside it; reused for :attr:`verify_ttl_s` (it reads every receipt)."""
        with self._verify_lock:
            now = self._clock()
            if self._verified is not None and now - self._verified[0] < self.verify_ttl_s:
                return self._verified[1]
            doc = self._check()
            self._verified = (now, doc)
            return doc

    def _check(self) -> dict[str, Any]:
        from sprout.ledger.pending import scan_pending
        from sprout.ledger.verify import verify

        started = time.perf_counter()
        result = verify(self.db_url, engine=self.engine, max_problems=MAX_PROBLEMS_SHOWN)
        pending = None
        if self.spool is not None:
            pending = scan_pending(self.db_url, self.spool, engine=self.engine)
        pending_n = pending.pending if pending is not None else 0
        status = "problems" if not result.ok else "pending" if pending_n else "ok"
        return {
            "status": status,
            "ok": result.ok,
            "chains": result.chains,
            "receipts": result.receipts,
            "rollups_checked": result.rollups_checked,
            "problem_count": result.problem_count,
            "problems": [
                {"kind": p.kind, "message": p.message, "chain_id": p.chain_id, "seq": p.seq}
                for p in result.problems
            ],
            "heads_digest": result.heads_digest,
            "pending_receipts": pending_n,
            "in_flight": pending.in_flight if pending is not None else 0,
            "rejected": pending.rejected if pending is not None else 0,
            "pending_note": pending.note() if pending is not None else "",
            "checked_at": datetime.now(UTC).isoformat(),
            "took_s": round(time.perf_counter() - started, 3),
        }


__all__ = [
    "BUCKETS",
    "MAX_BUCKETS",
    "VERIFY_TTL_S",
    "Dashboard",
    "parse_query",
]
