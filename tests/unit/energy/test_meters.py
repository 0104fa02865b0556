"""Energy meters: NVML (pynvml patched with autospec), RAPL (a fake sysfs), the sharing rule
for overlapping windows, the calibrated estimate meter and the automatic choice."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from unittest import mock

import pynvml
import pytest

from sprout.energy.base import Usage
from sprout.energy.calibrate import (
    calibrate,
    calibrate_from_ledger,
    calibrated_meter,
    fit_linear,
)
from sprout.energy.estimate import EstimateMeter, TokenEnergyModel
from sprout.energy.nvml import NVMLMeter, gpu_count, visible_gpu_indices
from sprout.energy.rapl import RAPLMeter, rapl_readable
from sprout.energy.select import FallbackMeter, choose_meter
from sprout.energy.sharing import MJ_PER_KWH, CounterMeter, PowerIntegrator
from sprout.errors import ConfigError, MeterError
from sprout.receipt import Receipt
from tests.support.clock import FakeClock

J = 1000.0  # mJ per joule


def _clock() -> FakeClock:
    """A clock whose monotonic time starts at 100 s (the meters read only that)."""
    return FakeClock(monotonic_start=100.0)


class ScriptedMeter(CounterMeter):
    """A counter that grows at ``power_w`` with the fake clock: energy = power x time."""

    source = "measured-nvml"
    device = "scripted"

    def __init__(self, clock: FakeClock, power_w: float = 1.0) -> None:
        super().__init__(clock=clock.monotonic)
        self.clock = clock
        self.power_w = power_w
        self.energy_mj = 0.0
        self._t = clock.monotonic()

    def read_mj(self) -> float:
        self.energy_mj += (self.clock.monotonic() - self._t) * self.power_w * J
        self._t = self.clock.monotonic()
        return self.energy_mj


def _joules(sample) -> float:
    return sample.energy_kwh * MJ_PER_KWH / J


def _usage(tokens: int, first_token_s: float | None = None) -> Usage:
    return Usage(tokens // 2, tokens - tokens // 2, 0.0, None, first_token_s)


# --- the sharing rule -------------------------------------------------------------------


def test_separate_windows_get_their_own_energy_and_idle_is_nobodys():
    clock = _clock()
    meter = ScriptedMeter(clock)
    meter.begin("a")
    clock.advance(4)
    a = meter.end("a", _usage(10))
    clock.advance(100)  # idle
    meter.begin("b")
    clock.advance(2)
    b = meter.end("b", _usage(10))
    assert _joules(a) == pytest.approx(4) and _joules(b) == pytest.approx(2)
    assert a.duration_s == pytest.approx(4) and a.source == "measured-nvml"


def test_overlapping_windows_without_history_split_shared_time_evenly():
    clock = _clock()
    meter = ScriptedMeter(clock)
    meter.begin("a")  # a: [0, 10], b: [5, 15], 1 W throughout
    clock.advance(5)
    meter.begin("b")
    clock.advance(5)
    a = meter.end("a", _usage(100))
    clock.advance(5)
    b = meter.end("b", _usage(300))
    # With no closed window yet, b's unknown tokens weigh like a's: [5, 10] is halved.
    assert _joules(a) == pytest.approx(5 + 2.5)
    assert _joules(b) == pytest.approx(2.5 + 5)
    assert _joules(a) + _joules(b) == pytest.approx(15)  # everything measured, once


def test_concurrent_windows_share_in_proportion_to_tokens():
    clock = _clock()
    meter = ScriptedMeter(clock, power_w=2.0)
    meter.begin("warm-up")  # one request alone: 300 tokens in 10 s sets the rate to 30/s
    clock.advance(10)
    meter.end("warm-up", _usage(300))
    meter.begin("a")
    meter.begin("b")
    clock.advance(10)
    a = meter.end("a", _usage(100))  # 10 tokens/s against b's expected 30 tokens/s
    b = meter.end("b", _usage(300))
    assert _joules(a) == pytest.approx(20 * 100 / 400)
    assert _joules(b) == pytest.approx(20 * 300 / 400)


def test_three_overlapping_windows_conserve_energy():
    clock = _clock()
    meter = ScriptedMeter(clock)
    rng = random.Random(7)
    meter.begin("a")
    clock.advance(1)
    meter.begin("b")
    clock.advance(1)
    meter.begin("c")
    clock.advance(1)
    samples = [meter.end("b", _usage(rng.randint(1, 500)))]
    clock.advance(1)
    samples.append(meter.end("a", _usage(rng.randint(1, 500))))
    clock.advance(1)
    samples.append(meter.end("c", _usage(rng.randint(1, 500))))
    assert sum(_joules(s) for s in samples) == pytest.approx(5)
    assert meter.open_windows == 0 and not meter._segments


def test_a_failed_generation_takes_nothing_from_shared_time():
    clock = _clock()
    meter = ScriptedMeter(clock)
    meter.begin("ok")
    meter.begin("failed")
    clock.advance(3)
    failed = meter.end("failed", Usage(0, 0, 0.0))
    clock.advance(1)
    ok = meter.end("ok", _usage(50))
    assert _joules(failed) == 0 and _joules(ok) == pytest.approx(4)


def test_first_token_time_splits_prefill_and_decode():
    clock = _clock()
    meter = ScriptedMeter(clock)
    meter.begin("a")
    clock.advance(10)
    sample = meter.end("a", _usage(40, first_token_s=2.0))
    assert sample.prefill_kwh == pytest.approx(sample.energy_kwh * 0.2)
    assert sample.prefill_kwh + sample.decode_kwh == pytest.approx(sample.energy_kwh)
    meter.begin("b")
    clock.advance(1)
    assert meter.end("b", _usage(4)).prefill_kwh is None  # no first-token time: no split


def test_a_failed_read_releases_the_windows_share():
    clock = _clock()
    meter = ScriptedMeter(clock)
    meter.begin("a")
    meter.begin("b")
    clock.advance(2)
    real = meter.read_mj
    meter.read_mj = mock.Mock(side_effect=MeterError("counter gone"))
    with pytest.raises(MeterError):
        meter.end("a", _usage(10))
    meter.read_mj = real
    clock.advance(1)
    assert _joules(meter.end("b", _usage(10))) == pytest.approx(3)  # a left it all to b
    assert meter.open_windows == 0 and not meter._segments


def test_window_misuse_is_a_meter_error():
    meter = ScriptedMeter(_clock())
    meter.begin("a")
    with pytest.raises(MeterError, match="already open"):
        meter.begin("a")
    with pytest.raises(MeterError, match="never opened"):
        meter.end("zzz", _usage(1))


# --- NVML -------------------------------------------------------------------------------


@pytest.fixture
def nvml():
    """pynvml patched with autospec: 2 GPUs whose energy counters the test drives."""
    counters = {0: 5_000_000.0, 1: 9_000_000.0}
    with (
        mock.patch("pynvml.nvmlInit", autospec=True) as init,
        mock.patch("pynvml.nvmlShutdown", autospec=True) as shutdown,
        mock.patch("pynvml.nvmlDeviceGetCount", autospec=True, return_value=2),
        mock.patch(
            "pynvml.nvmlDeviceGetHandleByIndex", autospec=True, side_effect=lambda i: f"h{i}"
        ),
        mock.patch("pynvml.nvmlDeviceGetName", autospec=True, return_value="NVIDIA H100"),
        mock.patch(
            "pynvml.nvmlDeviceGetTotalEnergyConsumption",
            autospec=True,
            side_effect=lambda h: counters[int(h[1:])],
        ) as energy,
        mock.patch("pynvml.nvmlDeviceGetPowerUsage", autospec=True, return_value=250_000) as power,
    ):
        yield mock.Mock(counters=counters, init=init, shutdown=shutdown, energy=energy, power=power)


def test_nvml_energy_counter_is_metered_per_window(nvml, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    clock = _clock()
    meter = NVMLMeter(clock=clock.monotonic)
    assert meter.device == "gpu:0,1 (NVIDIA H100)" and not meter.sampled
    meter.begin("r1")
    nvml.counters[0] += 300 * J  # 300 J on GPU 0, 60 J on GPU 1
    nvml.counters[1] += 60 * J
    clock.advance(2)
    sample = meter.end("r1", Usage(10, 20, 2.0))
    assert sample.source == "measured-nvml" and sample.device == meter.device
    assert sample.energy_kwh == pytest.approx(360 * J / MJ_PER_KWH)
    meter.close()
    nvml.init.assert_called_once_with()
    nvml.shutdown.assert_called_once_with()


def test_nvml_meters_the_visible_gpus(nvml, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    meter = NVMLMeter(clock=_clock().monotonic)
    assert meter.device == "gpu:1 (NVIDIA H100)"
    assert visible_gpu_indices({"CUDA_VISIBLE_DEVICES": "GPU-6f3c..."}) is None
    assert visible_gpu_indices({"CUDA_VISIBLE_DEVICES": "0,2"}) == [0, 2]
    meter.close()


def test_nvml_without_an_energy_counter_integrates_power(nvml):
    nvml.energy.side_effect = pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
    clock = _clock()
    meter = NVMLMeter([0], clock=clock.monotonic, power_sample_interval_s=0.01)
    assert meter.sampled
    meter.begin("r1")
    clock.advance(2)  # 250 W for 2 s
    sample = meter.end("r1", Usage(10, 20, 2.0))
    assert sample.energy_kwh == pytest.approx(500 * J / MJ_PER_KWH)
    meter.close()
    assert meter.gpus[0].sampler._thread is None  # the sampler thread was stopped


def test_power_sampler_thread_integrates_real_time():
    sampler = PowerIntegrator(lambda: 100_000.0, interval_s=0.01)  # 100 W
    t0 = time.monotonic()
    sampler.sample()
    sampler.start()
    time.sleep(0.2)
    energy_mj = sampler.energy_mj()
    elapsed = time.monotonic() - t0
    sampler.stop()
    assert energy_mj == pytest.approx(100 * elapsed * J, rel=0.1)


def test_nvml_failures_are_meter_errors(nvml):
    nvml.init.side_effect = pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
    with pytest.raises(MeterError, match=r"NVML: cannot initialise.*Driver Not Loaded"):
        NVMLMeter()
    assert gpu_count() == 0
    nvml.init.side_effect = None
    meter = NVMLMeter([0], clock=_clock().monotonic)
    meter.begin("r1")
    nvml.energy.side_effect = pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
    with pytest.raises(MeterError, match="reading the energy of GPU 0 failed"):
        meter.end("r1", Usage(1, 1, 0.1))
    assert meter.open_windows == 0


def test_a_failing_meter_falls_back_to_a_labelled_estimate(nvml):
    estimate = EstimateMeter(TokenEnergyModel(1e-5, 1e-8, 1e-7, label="fit"))
    meter = FallbackMeter(NVMLMeter([0], clock=_clock().monotonic), estimate)
    meter.begin("r1")
    nvml.energy.side_effect = pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
    sample = meter.end("r1", Usage(100, 200, 1.0))
    assert sample.source == "estimated" and sample.device == "fit" and sample.energy_kwh > 0
    meter.begin("r2")  # the primary cannot even open the window
    assert meter.end("r2", Usage(1, 1, 0.1)).source == "estimated"
    meter.close()


def test_a_working_meter_never_computes_the_fallback_estimate(nvml):
    estimate = EstimateMeter()  # the bundled fit is loaded only if an estimate is needed
    meter = FallbackMeter(NVMLMeter([0], clock=_clock().monotonic), estimate)
    for window in ("r1", "r2"):
        meter.begin(window)
        assert meter.end(window, Usage(1, 1, 0.1)).source == "measured-nvml"
    assert estimate._model is None and not estimate._open
    meter.close()


def test_heavy_dependencies_are_imported_lazily():
    code = (
        "import sys\n"
        "import sprout.energy.nvml, sprout.energy.rapl, sprout.energy.select, "
        "sprout.energy.calibrate, sprout.engines.hf, sprout.engines.openai_compat, "
        "sprout.engines.guards\n"
        "heavy = {'torch', 'transformers', 'torchao', 'pynvml'} & set(sys.modules)\n"
        "print(sorted(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# --- RAPL -------------------------------------------------------------------------------

MAX_UJ = 262_143_328_850


def _zone(root: Path, name: str, label: str, energy_uj: int, max_uj: int = MAX_UJ) -> Path:
    zone = root / name
    zone.mkdir(parents=True)
    (zone / "name").write_text(label + "\n")
    (zone / "energy_uj").write_text(f"{energy_uj}\n")
    (zone / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return zone


@pytest.fixture
def sysfs(tmp_path):
    root = tmp_path / "powercap"
    zones = {
        "pkg0": _zone(root, "intel-rapl:0", "package-0", 1_000_000),
        "core0": _zone(root, "intel-rapl:0:0", "core", 500_000),
        "dram0": _zone(root, "intel-rapl:0:2", "dram", 2_000_000),
        "pkg1": _zone(root, "intel-rapl:1", "package-1", MAX_UJ - 1_000_000),
        "psys": _zone(root, "intel-rapl:2", "psys", 7_000_000),
        "mmio": _zone(root, "intel-rapl-mmio:0", "package-0", 3_000_000),
    }
    return root, zones


def _add_uj(zone: Path, delta_uj: int, max_uj: int = MAX_UJ) -> None:
    value = int((zone / "energy_uj").read_text())
    (zone / "energy_uj").write_text(f"{(value + delta_uj) % max_uj}\n")


def test_rapl_counts_packages_and_dram_and_handles_wrap_around(sysfs):
    root, zones = sysfs
    clock = _clock()
    meter = RAPLMeter(root, clock=clock.monotonic)
    assert meter.device == "rapl:package-0,intel-rapl:0:2/dram,package-1"
    meter.begin("r1")
    _add_uj(zones["pkg0"], 40_000_000)  # 40 J
    _add_uj(zones["dram0"], 5_000_000)  # 5 J
    _add_uj(zones["pkg1"], 3_000_000)  # 3 J, wrapping past max_energy_range_uj
    for skipped in ("core0", "psys", "mmio"):  # inside a package, or not a package
        _add_uj(zones[skipped], 99_000_000)
    clock.advance(1)
    sample = meter.end("r1", Usage(5, 5, 1.0))
    assert int((zones["pkg1"] / "energy_uj").read_text()) < MAX_UJ - 1_000_000  # it wrapped
    assert sample.source == "measured-rapl"
    assert _joules(sample) == pytest.approx(48)


def test_rapl_permission_error_says_what_to_do(sysfs, monkeypatch):
    root, _ = sysfs
    import sprout.energy.rapl as rapl

    real = rapl._read_text

    def denied(path):
        if path.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(rapl, "_read_text", denied)
    with pytest.raises(MeterError, match=r"permission denied reading .*energy_uj.*root only"):
        RAPLMeter(root)
    assert not rapl_readable(root)


def test_rapl_without_zones_is_a_clear_error(tmp_path):
    with pytest.raises(MeterError, match="does not exist"):
        RAPLMeter(tmp_path / "absent")
    _zone(tmp_path / "pc", "intel-rapl:0", "psys", 1)
    with pytest.raises(MeterError, match="no package zone"):
        RAPLMeter(tmp_path / "pc")
    (tmp_path / "bad" / "intel-rapl:0").mkdir(parents=True)
    (tmp_path / "bad" / "intel-rapl:0" / "name").write_text("package-0")
    (tmp_path / "bad" / "intel-rapl:0" / "max_energy_range_uj").write_text("100")
    (tmp_path / "bad" / "intel-rapl:0" / "energy_uj").write_text("n/a")
    with pytest.raises(MeterError, match="does not hold an integer"):
        RAPLMeter(tmp_path / "bad")


# --- automatic choice -------------------------------------------------------------------


def test_auto_prefers_nvml_then_rapl_then_estimate(nvml, sysfs, tmp_path):
    root, _ = sysfs
    choice = choose_meter("auto", rapl_root=root)
    assert choice.kind == "nvml" and choice.meter.source == "measured-nvml"
    assert "energy counter" in choice.reasons[-1]
    choice.meter.close()

    nvml.init.side_effect = pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    choice = choose_meter("auto", rapl_root=root)
    assert choice.kind == "rapl" and choice.meter.source == "measured-rapl"
    assert choice.reasons[0] == "NVML: no GPU visible"

    choice = choose_meter("auto", rapl_root=tmp_path / "none")
    assert choice.kind == "estimate" and choice.meter.source == "estimated"
    assert "does not exist" in choice.reasons[1]


def test_auto_estimates_engines_on_other_machines(nvml):
    choice = choose_meter("auto", engine_local=False)
    assert choice.kind == "estimate" and "another machine" in choice.reasons[0]


def test_forced_meters_fail_loudly_and_unknown_kinds_are_rejected(nvml, tmp_path):
    nvml.init.side_effect = pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
    with pytest.raises(MeterError):
        choose_meter("nvml")
    with pytest.raises(MeterError):
        choose_meter("rapl", rapl_root=tmp_path)
    assert choose_meter("estimate").kind == "estimate"
    with pytest.raises(ConfigError, match="unknown kind 'gpu'"):
        choose_meter("gpu")


# --- the estimate meter and its calibration ---------------------------------------------

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def _receipt(i, engine, variant, in_tok, out_tok, kwh, source="measured-nvml") -> Receipt:
    return Receipt(
        request_id=f"r{i}",
        created_at=T0 + timedelta(seconds=i),
        directive="L0",
        decision="test",
        engine=engine,
        model="m",
        input_tokens=in_tok,
        output_tokens=out_tok,
        latency_s=1.0,
        energy_kwh=kwh,
        energy_source=source,
        ci_g_per_kwh=100.0,
        ci_zone="GB",
        ci_provider="static",
        ci_signal_type="average",
        ci_emission_factor="direct",
        ci_time=T0,
        ci_age_s=0.0,
        ci_fallback="provider",
        operational_g=0.0,
        embodied_g=0.0,
        variant=variant,
    )


TRUE = {None: (2e-5, 5e-8, 1.2e-6), "int8": (1e-5, 3e-8, 0.7e-6)}


def _measured_receipts(n: int = 40, seed: int = 3) -> list[Receipt]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        variant = None if i % 2 else "int8"
        a, b, c = TRUE[variant]
        tin, tout = rng.randint(20, 800), rng.randint(5, 600)
        kwh = (a + b * tin + c * tout) * rng.uniform(0.98, 1.02)
        out.append(_receipt(i, "hf", variant, tin, tout, kwh))
    return out


def test_calibration_fits_each_engine_and_variant_from_measured_receipts():
    receipts = _measured_receipts()
    # Recorded and estimated receipts are not measurements; a thin group is skipped.
    receipts += [_receipt(100 + i, "hf", None, 10, 10, 1.0, "estimated") for i in range(20)]
    receipts += [_receipt(200 + i, "replay", None, 10, 10, 1.0, "recorded") for i in range(20)]
    receipts += [_receipt(300 + i, "openai", None, 10, 10, 1e-5) for i in range(3)]
    calibration = calibrate(receipts, min_samples=8)
    assert set(calibration.models) == {("hf", None), ("hf", "int8")}
    assert calibration.skipped == {("openai", None): 3}
    for variant, (a, b, c) in TRUE.items():
        model = calibration.models[("hf", variant)]
        assert model.n_samples == 20
        assert model.per_output_token_kwh == pytest.approx(c, rel=0.05)
        assert model.energy_kwh(300, 200) == pytest.approx(a + b * 300 + c * 200, rel=0.03)

    meter = calibrated_meter(calibration, "hf")
    for variant in (None, "int8"):
        meter.begin("w")
        sample = meter.end("w", Usage(300, 200, 1.0, variant))
        a, b, c = TRUE[variant]
        assert sample.source == "estimated"
        assert sample.energy_kwh == pytest.approx(a + b * 300 + c * 200, rel=0.03)
        assert f"calibrated hf/{variant or 'default'} on 20 measured-nvml receipts" in (
            sample.device
        )
        assert sample.prefill_kwh + sample.decode_kwh == pytest.approx(sample.energy_kwh)
    # A variant without a fit uses the engine's default-variant fit.
    meter.begin("w")
    assert "hf/default" in meter.end("w", Usage(1, 1, 1.0, "small")).device


def test_calibration_reads_the_ledger(sqlite_url):
    from sprout.ledger.store import Ledger

    with Ledger(sqlite_url) as ledger:
        for r in _measured_receipts(20):
            ledger.append(r)
        ledger.flush()
        calibration = calibrate_from_ledger(ledger, min_samples=5)
    assert set(calibration.models) == {("hf", None), ("hf", "int8")}


def test_fit_keeps_coefficients_non_negative():
    # Energy that *falls* with input tokens (noise, say) must not give a negative rate.
    rows = [(i * 10, 50, 1e-4 - i * 1e-7) for i in range(10)]
    model = fit_linear(rows, "t")
    assert min(model.intercept_kwh, model.per_input_token_kwh, model.per_output_token_kwh) >= 0
    with pytest.raises(MeterError, match="need at least 3 rows"):
        fit_linear(rows[:2], "t")


def test_estimate_meter_splits_by_its_token_terms():
    model = TokenEnergyModel(1e-5, 1e-7, 1e-6, label="m")
    meter = EstimateMeter(model)
    meter.begin("w")
    sample = meter.end("w", Usage(100, 20, 1.0))
    assert sample.prefill_kwh == pytest.approx(1e-5 + 1e-5)
    assert sample.decode_kwh == pytest.approx(2e-5)
    assert sample.energy_kwh == pytest.approx(4e-5) and sample.device == "m"
