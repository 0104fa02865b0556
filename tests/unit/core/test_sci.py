"""Software Carbon Intensity (ISO/IEC 21031): SCI = ((E * I) + M) per R, checked by hand.

Five receipts, their figures chosen so the arithmetic can be done on paper:

    id  day / time (UTC)   directive purpose     kWh     source         CI   E*CI   M      out tok
    a   03-01 10:15        L0        serve       0.002   measured-nvml  200  0.40   0.010  500
    b   03-01 11:40        L1        serve       0.001   measured-nvml  300  0.30   0.005  200
    c   03-01 13:05        L1        evaluation  0.0005  estimated      100  0.05   0.002  100
    d   03-02 09:30        L0        serve       0.003   estimated      100  0.30   0.020  800
    e   03-02 17:45        L1        serve       0.0015  measured-nvml  400  0.60   0.008  300

(``d`` ended ``client_closed``: R counts every served request, whatever its outcome.)
R counts served requests only (a, b, d, e: 4); the evaluation generation ``c`` is overhead,
in E and M but not in R, nor in the served output tokens (500 + 200 + 800 + 300 = 1800).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sprout.cli import main
from sprout.config import Settings, load_settings
from sprout.errors import ConfigError
from sprout.ledger.audit import ledger_report
from sprout.ledger.sci_format import format_sci, format_sci_csv, format_sci_json
from sprout.ledger.sci_report import SciReport, sci_report
from sprout.ledger.store import Ledger
from sprout.receipt import Receipt
from sprout.sci import SciFigures, check_pue, combine, sci
from tests.support.receipts import make_receipt

ROWS = (
    # id, (day of March, hour, minute), directive, purpose, kWh, source, CI, E*CI, M, out tokens
    ("a", (1, 10, 15), "L0", "serve", 0.002, "measured-nvml", 200, 0.4, 0.01, 500),
    ("b", (1, 11, 40), "L1", "serve", 0.001, "measured-nvml", 300, 0.3, 0.005, 200),
    ("c", (1, 13, 5), "L1", "evaluation", 0.0005, "estimated", 100, 0.05, 0.002, 100),
    ("d", (2, 9, 30), "L0", "serve", 0.003, "estimated", 100, 0.3, 0.02, 800),
    ("e", (2, 17, 45), "L1", "serve", 0.0015, "measured-nvml", 400, 0.6, 0.008, 300),
)  # fmt: skip
MARKET = {"SPROUT_MARKET_CI_G_PER_KWH": "50", "SPROUT_MARKET_CI_SOURCE": "PPA 2026 residual mix"}


def receipt(row: tuple[Any, ...], **overrides: Any) -> Receipt:
    rid, at, directive, purpose, kwh, source, ci, op, emb, tokens = row
    fields: dict[str, Any] = {
        "request_id": rid,
        "created_at": datetime(2024, 3, *at, tzinfo=UTC),
        "directive": directive,
        "purpose": purpose,
        "energy_kwh": kwh,
        "energy_source": source,
        "ci_g_per_kwh": float(ci),
        "ci_provider": "electricitymaps",
        "ci_zone": "GB",
        "ci_signal_type": "average",
        "ci_emission_factor": "direct",
        "operational_g": op,
        "embodied_g": emb,
        "output_tokens": tokens,
        "prefill_kwh": None,
        "decode_kwh": None,
        "outcome": "client_closed" if rid == "d" else "completed",
    }
    fields.update(overrides)
    return make_receipt(0, **fields)


def write(url: str, receipts: list[Receipt]) -> None:
    with Ledger(url, flush_interval_s=0.05) as led:
        for r in receipts:
            led.append(r)
        assert led.flush()


@pytest.fixture
def url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    write(url, [receipt(row) for row in ROWS])
    return url


def close(a: float | None, b: float) -> bool:
    return a is not None and math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15)


def report(url: str, group_by: str = "day", **kwargs: Any) -> SciReport:
    window = {k: kwargs.pop(k) for k in ("since", "until", "filters") if k in kwargs}
    return sci_report(ledger_report(url, group_by=group_by, **window), url, **kwargs)


# ------------------------------------------------------------------- pure arithmetic


def test_pure_arithmetic_by_hand() -> None:
    # E = 0.008 kWh x 1.2 = 0.0096; E*I = 1.65 g x 1.2 = 1.98; M = 0.045; R = 4.
    f = sci(
        it_energy_kwh=0.008,
        ci_kwh=1.65,
        embodied_g=0.045,
        requests=4,
        output_tokens=1800,
        pue=1.2,
        market_ci_g_per_kwh=50.0,
    )
    assert close(f.energy_kwh, 0.0096)
    assert close(f.operational_g, 1.98)
    assert close(f.intensity_g_per_kwh, 206.25)  # 1.98 / 0.0096 = 1.65 / 0.008: PUE cancels
    assert close(f.carbon_g, 2.025)  # 1.98 + 0.045
    assert close(f.per_request, 0.50625)  # 2.025 / 4
    assert close(f.per_1k_output_tokens, 1.125)  # 2.025 / 1.8
    assert close(f.market_operational_g, 0.48)  # 0.0096 x 50
    assert close(f.market_per_request, 0.13125)  # (0.48 + 0.045) / 4
    assert close(f.market_per_1k_output_tokens, 0.525 / 1.8)
    # Nothing served: no ratio, but the sums stay.
    empty = sci(it_energy_kwh=0.001, ci_kwh=0.1, embodied_g=0.0, requests=0, output_tokens=0)
    assert empty.per_request is None and empty.per_1k_output_tokens is None
    assert empty.market_per_request is None and empty.carbon_g == 0.1
    # Groups add up term by term; the total's ratio is taken from the sums.
    parts = [
        sci(it_energy_kwh=0.005, ci_kwh=0.7, embodied_g=0.03, requests=2, output_tokens=1300),
        sci(it_energy_kwh=0.003, ci_kwh=0.95, embodied_g=0.015, requests=2, output_tokens=500),
    ]
    total = combine(parts)
    assert close(total.carbon_g, 1.695) and close(total.per_request, 1.695 / 4)
    with pytest.raises(ValueError, match="another PUE"):
        combine(parts, pue=1.2)


@pytest.mark.parametrize("bad", [0.99, 0.0, -1.0, math.nan, math.inf])
def test_pure_checks(bad: float) -> None:
    with pytest.raises(ValueError, match=r"PUE must be a finite number >= 1\.0"):
        check_pue(bad)
    with pytest.raises(ValueError, match="PUE"):
        sci(it_energy_kwh=1, ci_kwh=1, embodied_g=0, requests=1, output_tokens=1, pue=bad)
    if bad < 0 or not math.isfinite(bad):
        with pytest.raises(ValueError, match="emission factor must be a finite number >= 0"):
            sci(
                it_energy_kwh=1,
                ci_kwh=1,
                embodied_g=0,
                requests=1,
                output_tokens=1,
                market_ci_g_per_kwh=bad,
            )
    with pytest.raises(ValueError, match="energy must be"):
        sci(it_energy_kwh=-1, ci_kwh=1, embodied_g=0, requests=1, output_tokens=1)


# ------------------------------------------------------------------- ledger reports


def test_totals_with_pue_1(url: str) -> None:
    t = report(url).totals.figures
    assert t.requests == 4  # a, b, d, e; not the evaluation c
    assert close(t.it_energy_kwh, 0.008)  # 0.002 + 0.001 + 0.0005 + 0.003 + 0.0015
    assert close(t.energy_kwh, 0.008)  # x PUE 1.0
    assert close(t.operational_g, 1.65)  # 0.4 + 0.3 + 0.05 + 0.3 + 0.6
    assert close(t.intensity_g_per_kwh, 206.25)  # 1.65 / 0.008
    assert close(t.embodied_g, 0.045)  # 0.01 + 0.005 + 0.002 + 0.02 + 0.008
    assert close(t.per_request, 0.42375)  # (1.65 + 0.045) / 4
    assert t.output_tokens == 1800  # 500 + 200 + 800 + 300
    assert close(t.per_1k_output_tokens, 1.695 / 1.8)
    assert t.market_per_request is None


def test_totals_with_pue_1_2_and_a_market_factor(url: str) -> None:
    rep = report(url, pue=1.2, market_ci_g_per_kwh=50.0, market_ci_source="PPA 2026 residual mix")
    t = rep.totals.figures
    assert close(t.energy_kwh, 0.0096)  # 0.008 x 1.2
    assert close(t.operational_g, 1.98)  # 1.65 x 1.2
    assert close(t.intensity_g_per_kwh, 206.25)  # unchanged by PUE
    assert close(t.embodied_g, 0.045)  # M is hardware: not scaled by PUE
    assert close(t.per_request, 0.50625)  # (1.98 + 0.045) / 4
    assert close(t.per_1k_output_tokens, 1.125)  # 2.025 / 1.8
    assert close(t.market_operational_g, 0.48)  # 0.0096 x 50
    assert close(t.market_per_request, 0.13125)  # (0.48 + 0.045) / 4
    # Market at PUE 1.0: (0.008 x 50 + 0.045) / 4 = 0.445 / 4.
    flat = report(url, market_ci_g_per_kwh=50.0, market_ci_source="PPA")
    assert close(flat.totals.figures.market_per_request, 0.11125)


def test_groups_sum_to_the_total(url: str) -> None:
    # By directive at PUE 1.2: L0 = a + d, L1 = b + c + e.
    rep = report(url, group_by="directive", pue=1.2)
    l0, l1 = (r.figures for r in rep.rows)
    assert [r.group for r in rep.rows] == ["L0", "L1"]
    assert close(l0.energy_kwh, 0.006)  # (0.002 + 0.003) x 1.2
    assert close(l0.operational_g, 0.84)  # (0.4 + 0.3) x 1.2
    assert close(l0.intensity_g_per_kwh, 140.0)  # 0.7 / 0.005
    assert close(l0.per_request, 0.435)  # (0.84 + 0.03) / 2
    assert close(l0.per_1k_output_tokens, 0.87 / 1.3)
    assert close(l1.energy_kwh, 0.0036)  # (0.001 + 0.0005 + 0.0015) x 1.2
    assert close(l1.operational_g, 1.14)  # (0.3 + 0.05 + 0.6) x 1.2
    assert close(l1.per_request, 0.5775)  # (1.14 + 0.015) / 2, c's carbon spread over b and e
    assert l1.output_tokens == 500 and rep.rows[1].eval_requests == 1
    # By day: 03-01 = a + b + c, 03-02 = d + e.
    days = report(url, group_by="day", pue=1.2)
    d1, d2 = (r.figures for r in days.rows)
    assert [r.group for r in days.rows] == ["2024-03-01", "2024-03-02"]
    assert close(d1.carbon_g, 0.917)  # (0.4 + 0.3 + 0.05) x 1.2 + 0.017
    assert close(d1.per_request, 0.4585)  # 0.917 / 2
    assert close(d2.carbon_g, 1.108)  # (0.3 + 0.6) x 1.2 + 0.028
    assert close(d2.per_request, 0.554)  # 1.108 / 2
    for each in (rep, days):
        t = each.totals.figures
        for name in ("it_energy_kwh", "energy_kwh", "operational_g", "embodied_g", "carbon_g"):
            assert close(sum(getattr(r.figures, name) for r in each.rows), getattr(t, name))
        assert sum(r.figures.requests for r in each.rows) == t.requests == 4
        assert sum(r.figures.output_tokens for r in each.rows) == t.output_tokens == 1800
        assert close(t.per_request, 0.50625)


def test_window_edges_and_filters(url: str) -> None:
    # 03-01 11:30 .. 03-02 12:00 (partial hours, read from raw receipts): b, c, d.
    rep = report(
        url, since=datetime(2024, 3, 1, 11, 30, tzinfo=UTC), until=datetime(2024, 3, 2, 12)
    )
    t = rep.totals.figures
    assert t.requests == 2 and close(t.it_energy_kwh, 0.0045)  # 0.001 + 0.0005 + 0.003
    assert close(t.per_request, (0.65 + 0.027) / 2)  # E*I 0.3 + 0.05 + 0.3; M 0.027
    assert sum(k.requests for k in rep.intensity) == 3
    # Served only: the evaluation overhead leaves the numerator, and the boundary says so.
    served = report(url, filters={"purpose": "serve"})
    assert close(served.totals.figures.carbon_g, 1.6 + 0.043)
    assert "excluded by the --purpose serve filter" in served.boundary()["evaluation"]
    only_eval = report(url, filters={"purpose": "evaluation"})
    assert only_eval.totals.figures.per_request is None
    assert "no served request in this window" in " ".join(only_eval.notes)
    none_tenant = report(url, filters={"tenant": ""})  # '' matches receipts without a tenant
    assert none_tenant.totals.figures.requests == 4 and none_tenant.intensity[0].requests == 5
    empty = report(url, since=datetime(2025, 1, 1, tzinfo=UTC))
    assert empty.rows == [] and empty.intensity == [] and empty.signal_type == "n/a"
    assert empty.totals.figures.per_request is None and "n/a" in format_sci(empty, "table")


def test_intensity_kind_is_stated(tmp_path: Path, url: str) -> None:
    rep = report(url)
    assert rep.signal_type == "average" and rep.emission_factor == "direct"
    assert "location-based, average signal, direct emission factor" in rep.intensity_statement
    mixed = f"sqlite:///{tmp_path / 'mixed.db'}"
    write(
        mixed,
        [
            receipt(ROWS[0]),
            # 0.001 of 0.004 kWh at WattTime's marginal signal; 0.001 at the default intensity.
            receipt(ROWS[1], ci_signal_type="marginal", ci_provider="watttime"),
            receipt(ROWS[4], energy_kwh=0.001, ci_provider="default", operational_g=0.4),
        ],
    )
    rep = report(mixed)
    assert rep.signal_type == "mixed"
    assert "average 75.0% / marginal 25.0% signal" in rep.intensity_statement
    notes = " ".join(rep.notes)
    assert "mixes average and marginal" in notes
    assert "25.0% of the energy ran at the configured default intensity" in notes


# ------------------------------------------------------------------- formats and CLI


def csv_rows(text: str) -> tuple[list[str], list[dict[str, str]]]:
    comments = [line for line in text.splitlines() if line.startswith("#")]
    body = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    return comments, list(csv.DictReader(io.StringIO(body)))


def test_three_formats(url: str) -> None:
    rep = report(
        url, group_by="directive", pue=1.2, market_ci_g_per_kwh=50.0, market_ci_source="PPA"
    )
    table = format_sci(rep, "table")
    assert "SCI = ((E * I) + M) per R" in table
    assert "PUE 1.2 (setting pue)" in table
    assert "market-based: F = 50 gCO2e/kWh (PPA)" in table
    assert "mkt g/req" in table and "SCI g/1k tok" in table
    lines = table.splitlines()
    header = next(line for line in lines if line.startswith("directive"))
    total = next(line for line in lines if line.startswith("total"))
    cells = dict(zip(re.split(r"\s{2,}", header), re.split(r"\s{2,}", total), strict=True))
    assert cells["R req"] == "4" and cells["eval req"] == "1"
    assert math.isclose(float(cells["SCI g/req"]), 0.50625, rel_tol=1e-3)  # 4 digits shown
    assert math.isclose(float(cells["mkt g/req"]), 0.13125, rel_tol=1e-3)
    assert "boundary excluded: client devices" in table
    assert "boundary included: the model server's energy per request, by source: " in table
    # measured 0.002 + 0.001 + 0.0015 = 0.0045 of 0.008 kWh: 56.25%; estimated the rest.
    assert "measured-nvml, 56.2% of kWh: the model server's GPU energy, measured by NVML" in table
    assert "estimated, 43.8% of kWh: estimated from tokens" in table

    comments, rows = csv_rows(format_sci_csv(rep))
    assert any("boundary excluded: model training" in c for c in comments)
    assert [r["group"] for r in rows] == ["L0", "L1", "total"]
    assert close(float(rows[-1]["sci_g_per_request"]), 0.50625)
    assert close(float(rows[-1]["sci_market_g_per_request"]), 0.13125)
    assert close(
        sum(float(r["operational_g"]) for r in rows[:-1]), float(rows[-1]["operational_g"])
    )

    doc = json.loads(format_sci_json(rep))
    assert doc["pue"] == {"value": 1.2, "configured": True, "statement": "PUE 1.2 (setting pue)"}
    assert doc["intensity"]["method"] == "location-based"
    assert doc["intensity"]["signal_type"] == "average"
    assert doc["market"]["source"] == "PPA" and doc["market"]["ci_g_per_kwh"] == 50.0
    b = doc["boundary"]
    assert set(b["energy_sources"]) == {"measured-nvml", "estimated"}
    assert close(b["energy_sources"]["estimated"]["share"], 0.4375)  # 0.0035 / 0.008
    assert "not counted in R" in b["evaluation"]
    assert "client devices" in b["excluded"] and "model training and fine-tuning" in b["excluded"]
    assert close(doc["totals"]["sci_g_per_1k_output_tokens"], 1.125)
    assert doc["totals"]["requests"] == 4 and doc["totals"]["evaluation_requests"] == 1
    with pytest.raises(ConfigError, match="format"):
        format_sci(rep, "xml")


def test_cli(url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    base = ["ledger", "report", "--db", url, "--sci"]
    assert main([*base, "--group-by", "directive"]) == 0
    table = capsys.readouterr().out
    assert "E = model-server energy x PUE 1.0 (not configured)" in table
    assert "market-based: not reported" in table and "mkt g/req" not in table
    assert "boundary included: the quality loop's own generations" in table

    monkeypatch.setenv("SPROUT_PUE", "1.2")
    for name, value in MARKET.items():
        monkeypatch.setenv(name, value)
    assert main([*base, "--format", "csv", "--group-by", "day"]) == 0
    comments, rows = csv_rows(capsys.readouterr().out)
    assert "# market-based: F = 50 gCO2e/kWh (PPA 2026 residual mix)" in comments[5]
    assert [r["group"] for r in rows] == ["2024-03-01", "2024-03-02", "total"]
    assert all(r["pue"] == "1.2" for r in rows)
    assert close(float(rows[0]["sci_g_per_request"]), 0.4585)
    assert close(float(rows[-1]["sci_g_per_request"]), 0.50625)
    assert close(float(rows[-1]["sci_market_g_per_request"]), 0.13125)

    assert main([*base, "--format", "json", "--directive", "L1"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["filters"] == {"directive": "L1"}
    assert close(doc["totals"]["sci_g_per_request"], 0.5775)  # as the L1 group above
    assert close(doc["totals"]["sci_market_g_per_request"], (0.0036 * 50 + 0.015) / 2)

    # Without --sci the report is the usual one.
    assert main(["ledger", "report", "--db", url]) == 0
    assert "SCI" not in capsys.readouterr().out


# ------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SPROUT_PUE": "0.9"}, "setting pue=0.9: must be a finite number >= 1.0"),
        ({"SPROUT_PUE": "nan"}, "setting pue=nan: must be a finite number >= 1.0"),
        ({"SPROUT_PUE": "high"}, "SPROUT_PUE: setting pue must be float, got 'high'"),
        (
            {"SPROUT_MARKET_CI_G_PER_KWH": "-5", "SPROUT_MARKET_CI_SOURCE": "PPA"},
            "setting market_ci_g_per_kwh=-5.0: must be a finite number >= 0 gCO2e/kWh",
        ),
        (
            {"SPROUT_MARKET_CI_G_PER_KWH": "50"},
            "setting market_ci_source='': must say what market_ci_g_per_kwh is",
        ),
    ],
)
def test_bad_settings(
    env: dict[str, str], message: str, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_settings(env=env)
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        assert main(["ledger", "report", "--db", url, "--sci"]) == 2
    assert message in capsys.readouterr().err


def test_settings_and_direct_calls(tmp_path: Path, url: str) -> None:
    assert Settings().pue == 1.0 and Settings().market_ci_g_per_kwh is None
    config = tmp_path / "sprout.toml"
    config.write_text('pue = 1.2\nmarket_ci_g_per_kwh = 50\nmarket_ci_source = "PPA"\n')
    s = load_settings(config=config, env={})
    assert (s.pue, s.market_ci_g_per_kwh, s.market_ci_source) == (1.2, 50.0, "PPA")
    with pytest.raises(ConfigError, match=r"setting pue=0\.5: PUE must be a finite number"):
        report(url, pue=0.5)
    with pytest.raises(ConfigError, match="market_ci_g_per_kwh=-1"):
        report(url, market_ci_g_per_kwh=-1.0, market_ci_source="PPA")
    with pytest.raises(ConfigError, match="market_ci_source"):
        report(url, market_ci_g_per_kwh=10.0)


def test_figures_are_frozen() -> None:
    f = SciFigures(0.0, 1.0, 0.0, 0.0, 0.0, 0, 0)
    with pytest.raises(AttributeError):
        f.pue = 2.0  # type: ignore[misc]
