"""Access to the bundled data: carbon traces, workload profiles, recorded answers.

The files live in the repository's top-level ``data/`` (inside the wheel as
``sprout/_bundled/data``); ``SPROUT_DATA_DIR`` points elsewhere. See ``data/README.md``
for fields and provenance.
"""

from __future__ import annotations

import csv
import functools
import gzip
import io
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sprout.errors import DataError

#: The six workloads of the Sprout paper, in the paper's order.
DATASETS: tuple[str, ...] = ("alpaca", "math", "mmlu", "naturalqa", "scienceqa", "triviaqa")
#: Recorded generation levels: the 13B model at L0/L1/L2 and the 7B model at L0.
LEVELS: tuple[str, ...] = ("L0", "L1", "L2")
RECORDED_KEYS: tuple[str, ...] = ("L0", "L1", "L2", "7b_L0")

_PACKAGE_DIR = Path(__file__).resolve().parent


def _bundled(name: str) -> Path:
    installed = _PACKAGE_DIR / "_bundled" / name
    if installed.is_dir():
        return installed
    return _PACKAGE_DIR.parent / name


def data_dir() -> Path:
    """Directory of the bundled data (``SPROUT_DATA_DIR`` overrides)."""
    override = os.environ.get("SPROUT_DATA_DIR")
    return Path(override) if override else _bundled("data")


def policies_dir() -> Path:
    """Directory of the bundled directive policy files."""
    return _bundled("policies")


def migrations_dir() -> Path:
    """Directory of the Alembic migrations."""
    return _bundled("migrations")


def default_policy_path() -> Path:
    """The bundled ``default.toml`` policy file."""
    return policies_dir() / "default.toml"


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")  # type: ignore[return-value]
    return open(path, encoding="utf-8")


def _find(stem: Path) -> Path:
    """``stem`` itself or its ``.gz`` sibling."""
    for candidate in (stem, stem.with_name(stem.name + ".gz")):
        if candidate.is_file():
            return candidate
    raise DataError(f"bundled data file not found: {stem} (or {stem.name}.gz); is data/ intact?")


def bundled_zones() -> tuple[str, ...]:
    """Zones with a bundled 2023 hourly trace."""
    folder = data_dir() / "carbon"
    suffix = "_2023_hourly.csv"
    names = (p.name.removesuffix(".gz") for p in folder.glob("*_2023_hourly.csv*"))
    return tuple(sorted(n.removesuffix(suffix) for n in names if n.endswith(suffix)))


def carbon_trace_path(zone: str) -> Path:
    """Path of a bundled zone's hourly trace.

    Raises:
        DataError: naming the bundled zones, if ``zone`` has none.
    """
    stem = data_dir() / "carbon" / f"{zone}_2023_hourly.csv"
    try:
        return _find(stem)
    except DataError:
        raise DataError(
            f"no bundled carbon trace for zone {zone!r}; bundled zones: "
            f"{', '.join(bundled_zones()) or 'none'} (or pass the path of a CSV)"
        ) from None


def open_text(path: str | Path) -> io.TextIOBase:
    """Open a text file, transparently gunzipping ``*.gz``."""
    return _open_text(Path(path))


@dataclass(frozen=True)
class WorkloadRecord:
    """One bundled prompt with its measured cost per level and its GPT-4 verdict.

    ``judge_best`` is the index of the level (0, 1, 2) whose answer GPT-4 preferred, or None.
    """

    id: str
    dataset: str
    index: int
    instruction: str
    energy_kwh: Mapping[str, float]
    time_s: Mapping[str, float]
    output_tokens: Mapping[str, int]
    judge_sampled: bool
    judge_best: int | None


def _record(raw: Mapping[str, Any], where: str) -> WorkloadRecord:
    try:
        best = raw["judge_best"]
        return WorkloadRecord(
            id=str(raw["id"]),
            dataset=str(raw["dataset"]),
            index=int(raw["index"]),
            instruction=str(raw["instruction"]),
            energy_kwh={k: float(v) for k, v in raw["energy_kwh"].items()},
            time_s={k: float(v) for k, v in raw["time_s"].items()},
            output_tokens={k: int(v) for k, v in (raw.get("output_tokens") or {}).items()},
            judge_sampled=bool(raw["judge_sampled"]),
            judge_best=None if best is None else int(best),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise DataError(f"{where}: malformed workload record ({e!r})") from e


@functools.lru_cache(maxsize=8)
def _load_dataset(dataset: str) -> tuple[WorkloadRecord, ...]:
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; bundled: {', '.join(DATASETS)}")
    path = _find(data_dir() / "workload" / f"{dataset}.jsonl")
    out = []
    with _open_text(path) as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    raw = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{n}: not JSON ({e})") from e
                out.append(_record(raw, f"{path}:{n}"))
    return tuple(out)


def load_workload(datasets: Iterable[str] = DATASETS) -> list[WorkloadRecord]:
    """Bundled workload records of ``datasets`` (cached after the first read)."""
    return [r for d in datasets for r in _load_dataset(d)]


@functools.lru_cache(maxsize=8)
def load_responses(dataset: str) -> Mapping[str, Mapping[str, Any]]:
    """Recorded answers of one dataset, by prompt id: ``{"responses": {...}, "reference"}``."""
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; bundled: {', '.join(DATASETS)}")
    path = _find(data_dir() / "responses" / f"{dataset}.jsonl")
    out: dict[str, Mapping[str, Any]] = {}
    with _open_text(path) as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
                out[str(raw["id"])] = raw
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise DataError(f"{path}:{n}: malformed response record ({e!r})") from e
    return out


@functools.lru_cache(maxsize=1)
def load_pai_jobs() -> tuple[int, ...]:
    """Hourly job counts of the Alibaba PAI trace, in hour order."""
    path = _find(data_dir() / "workload" / "pai_hourly_jobs.csv")
    with _open_text(path) as fh:
        rows = list(csv.DictReader(fh))
    try:
        rows.sort(key=lambda r: float(r["hour"]))
        return tuple(int(float(r["job_name"])) for r in rows)
    except (KeyError, ValueError) as e:
        raise DataError(f"{path}: malformed PAI trace ({e!r})") from e
