"""GPU energy through NVML (``pip install 'sprout[gpu]'``, ``import pynvml``).

Per GPU, the total-energy counter (``nvmlDeviceGetTotalEnergyConsumption``, mJ since the
driver loaded; Volta and newer) is read at every window boundary. GPUs without it get a
power sampler instead: ``nvmlDeviceGetPowerUsage`` (mW) read by a thread every
``power_sample_interval_s`` and integrated over time. Concurrent requests on one GPU share
its energy in proportion to their tokens: the rule is in :mod:`sprout.energy.sharing`.
pynvml is imported when a meter is made, never at import time; NVML errors become
:class:`~sprout.errors.MeterError`.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sprout.energy.sharing import CounterMeter, PowerIntegrator
from sprout.errors import MeterError


def _pynvml() -> Any:
    try:
        import pynvml
    except ImportError as e:
        raise MeterError("NVML: nvidia-ml-py is not installed (pip install 'sprout[gpu]')") from e
    return pynvml


def visible_gpu_indices(env: dict[str, str] | None = None) -> list[int] | None:
    """GPU indices named by ``CUDA_VISIBLE_DEVICES`` (None: not set, or not plain indices)."""
    value = (os.environ if env is None else env).get("CUDA_VISIBLE_DEVICES")
    if value is None or not value.strip():
        return None
    try:
        return [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        return None  # UUIDs or MIG names: NVML numbers devices its own way; meter them all


def gpu_count() -> int:
    """Number of GPUs NVML sees (0 when pynvml or the driver is missing)."""
    try:
        pynvml = _pynvml()
        pynvml.nvmlInit()
    except Exception:  # no library, no driver: no GPU to meter
        return 0
    try:
        return int(pynvml.nvmlDeviceGetCount())
    except Exception:
        return 0
    finally:
        with contextlib.suppress(Exception):  # shutting down is best-effort
            pynvml.nvmlShutdown()


@dataclass
class _Gpu:
    index: int
    handle: Any
    name: str
    sampler: PowerIntegrator | None  # None: the energy counter is used


class NVMLMeter(CounterMeter):
    """Measures GPU energy with NVML.

    Args:
        gpu_indices: GPUs to meter (default: those in ``CUDA_VISIBLE_DEVICES``, else all).
        power_sample_interval_s: sampling period for GPUs without an energy counter.
        clock: monotonic clock, seconds.

    Raises:
        MeterError: NVML is missing or fails, or there is no GPU.
    """

    source = "measured-nvml"

    def __init__(
        self,
        gpu_indices: Sequence[int] | None = None,
        *,
        power_sample_interval_s: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(clock=clock)
        self._nvml = pynvml = _pynvml()
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as e:
            raise MeterError(f"NVML: cannot initialise ({e}); is the NVIDIA driver loaded?") from e
        self._closed = False
        self._close_lock = threading.Lock()
        try:
            if gpu_indices is None:
                gpu_indices = visible_gpu_indices() or range(pynvml.nvmlDeviceGetCount())
            self.gpus = [self._open_gpu(i, power_sample_interval_s, clock) for i in gpu_indices]
        except BaseException:
            self.close()
            raise
        if not self.gpus:
            self.close()
            raise MeterError("NVML: no GPU to meter")
        names = sorted({g.name for g in self.gpus})
        self.device = f"gpu:{','.join(str(g.index) for g in self.gpus)} ({', '.join(names)})"

    def _open_gpu(self, index: int, interval_s: float, clock: Callable[[], float]) -> _Gpu:
        pynvml = self._nvml
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
        except pynvml.NVMLError as e:
            raise MeterError(f"NVML: cannot open GPU {index} ({e})") from e
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        try:
            pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
            return _Gpu(index, handle, str(name), None)
        except pynvml.NVMLError_NotSupported:
            pass  # pre-Volta: integrate power instead
        except pynvml.NVMLError as e:
            raise MeterError(f"NVML: cannot read the energy of GPU {index} ({e})") from e
        try:
            pynvml.nvmlDeviceGetPowerUsage(handle)
        except pynvml.NVMLError as e:
            raise MeterError(
                f"NVML: GPU {index} reports neither total energy nor power ({e})"
            ) from e
        sampler = PowerIntegrator(
            lambda: pynvml.nvmlDeviceGetPowerUsage(handle), interval_s=interval_s, clock=clock
        )
        sampler.sample()
        sampler.start()
        return _Gpu(index, handle, str(name), sampler)

    @property
    def sampled(self) -> bool:
        """Whether any GPU is metered by power sampling rather than its energy counter."""
        return any(g.sampler is not None for g in self.gpus)

    def read_mj(self) -> float:
        pynvml = self._nvml
        total = 0.0
        for gpu in self.gpus:
            try:
                if gpu.sampler is None:
                    total += float(pynvml.nvmlDeviceGetTotalEnergyConsumption(gpu.handle))
                elif gpu.sampler.error is not None:
                    error = gpu.sampler.error
                    raise MeterError(
                        f"NVML: power sampling of GPU {gpu.index} failed ({error})"
                    ) from error
                else:
                    total += gpu.sampler.energy_mj()
            except pynvml.NVMLError as e:
                raise MeterError(f"NVML: reading the energy of GPU {gpu.index} failed ({e})") from e
        return total

    def close(self) -> None:
        """Stop the samplers and release NVML."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        for gpu in getattr(self, "gpus", ()):
            if gpu.sampler is not None:
                gpu.sampler.stop()
        # Already shut down, or the driver went away: nothing left to release.
        with contextlib.suppress(self._nvml.NVMLError):
            self._nvml.nvmlShutdown()
