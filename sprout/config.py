"""Settings, resolved with the precedence: arguments > ``SPROUT_*`` environment > TOML file
> defaults.

The TOML file is named by the ``config`` argument or ``SPROUT_CONFIG``; its keys are the
field names of :class:`Settings` (top level or under a ``[sprout]`` table). Each environment
variable is ``SPROUT_`` plus the upper-cased field name, e.g. ``SPROUT_DB_URL``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
import types
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_type_hints

from sprout.accounting import SPROUT_EMBODIED_G, SPROUT_LIFETIME_YEARS
from sprout.errors import ConfigError
from sprout.policy.base import DEFAULT_MAX_LOSS

DEFAULT_DB_FILE = "sprout-ledger.db"
#: Carbon providers by name: local ones, then the live APIs (polled in the background).
LOCAL_CARBON_PROVIDERS = ("trace", "static")
LIVE_CARBON_PROVIDERS = ("electricitymaps", "watttime", "uk")
CARBON_PROVIDERS = LOCAL_CARBON_PROVIDERS + LIVE_CARBON_PROVIDERS
#: An HTTP header name (RFC 9110 token characters).
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def default_db_url() -> str:
    """A SQLite file in the working directory."""
    return f"sqlite:///{Path.cwd() / DEFAULT_DB_FILE}"


@dataclass(frozen=True)
class Settings:
    """Sprout's settings. Units are in the names.

    Attributes:
        db_url: SQLAlchemy URL of the ledger.
        zone: grid zone whose carbon intensity drives decisions.
        carbon_provider: ``trace``, ``static``, ``electricitymaps``, ``watttime`` or ``uk``.
        carbon_fallback_provider: a second provider asked when the first fails ("" for none).
        carbon_fallback_zone: the zone to ask the fallback provider for ("" for ``zone``).
        carbon_timeout_s: timeout of one HTTP attempt to a live provider.
        carbon_retries: further attempts after a timeout, refused connection, 5xx or 429.
        carbon_max_retry_wait_s: longest ``Retry-After`` waited out before giving up until
            the next poll.
        carbon_poll: poll live providers in a background thread so that requests never wait
            on the network (local providers are always read inline).
        carbon_forecast_interval_s: how often the poller stores the provider's forecast
            (0: never).
        electricitymaps_base_url, watttime_base_url, uk_base_url: the APIs' roots (mirrors,
            tests).
        electricitymaps_api_key: Electricity Maps key (secret: kept out of ``repr``).
        electricitymaps_emission_factor: ``direct`` or ``lifecycle``.
        watttime_username, watttime_password: WattTime login (secret: kept out of ``repr``).
        carbon_trace: path of an hourly CSV for the trace provider ("" for the zone's bundled one).
        carbon_column: ``ci_direct`` or ``ci_lca`` for the trace provider.
        static_ci_g_per_kwh: the static provider's value.
        default_ci_g_per_kwh: used when no reading can be had at all.
        signal_refresh_s: how long a reading is served before the provider is asked again
            (the poll interval of live providers).
        signal_max_age_s: oldest cached reading served when the provider fails.
        policy_file: directive policy file ("" for the bundled default).
        xi: largest relative quality concession of the optimizer, in [0, 1].
        ci_window_hours: history the optimizer takes its CI min/max from.
        policy_kind: ``auto`` (the newest stored contextual policy version when there is
            one, else Sprout's LP mix), ``lp`` (always the LP mix) or ``contextual`` (as
            ``auto``, warning when no version is stored).
        policy_refresh_s: how often a running controller looks for a newer policy version
            (0: never; the check runs on a background thread, not on requests).
        policy_margin_z: standard errors of cushion on the contextual policy's safety
            margin (0: its point estimate; 1: about 84% confidence that no quality is lost).
        policy_max_loss: most the contextual policy may lower one request's predicted
            chance of preference below the baseline's (None: no bound; the floor is then met
            on the mean, trading across prompts). See
            :func:`sprout.policy.assign.bounded_cost`.
        retrain_cron: when ``sprout retrain --schedule`` retrains the contextual policy
            (crontab, UTC: minute hour day month day_of_week).
        embodied_g: embodied carbon of the server, gCO2e.
        lifetime_years: the server lifetime that carbon is amortised over.
        pue: the data centre's power usage effectiveness (total energy over IT energy,
            >= 1.0); ``sprout ledger report --sci`` scales the metered energy by it.
        market_ci_g_per_kwh: a contractual emission factor in gCO2e/kWh (a PPA, a supplier
            or residual mix) for market-based SCI beside the location-based one (None:
            none; market-based figures are not reported).
        market_ci_source: what that factor is (free text, e.g. "PPA 2026 residual mix"),
            stated beside every market-based figure; required with the factor.
        ledger_flush_interval_s: how often buffered receipts are committed.
        ledger_spool: file receipts go to while the database is unreachable ("" for
            ``<db>.spool.jsonl`` beside a SQLite file, else ``sprout-ledger.spool.jsonl``).
        ledger_durability: ``durable`` (default: each receipt is on disk, in a local journal
            synced by group commit, before ``append`` returns, so a SIGKILL loses nothing
            that was answered) or ``buffered`` (a SIGKILL loses at most the receipts of the
            last flush interval).
        ledger_checkpoint_key: the Ed25519 key that signs ledger checkpoints: the path of a
            PEM file (``sprout ledger keygen``), or the PEM text itself (secret: kept out of
            ``repr``, never logged, never stored in the database).
        ledger_checkpoint_public_key: the public key file ``sprout ledger verify
            --checkpoint`` checks signatures with ("" for the signing key's own).
        ledger_checkpoint_dir: where ``sprout ledger checkpoint`` writes signed checkpoints
            ("" for none: give ``--output``); keep a copy outside the database owner's reach.
        ledger_checkpoint_cron: when ``sprout ledger checkpoint --schedule`` signs one
            (crontab, UTC).
        prompt_retention_days: days a sampled prompt is kept before ``sprout ledger prune``
            deletes it (0: kept forever); receipts and their hash chains are never pruned.
        engine: ``replay`` (bundled recordings), ``openai`` (an OpenAI-compatible server) or
            ``hf`` (a local transformers model).
        engine_base_url: the OpenAI-compatible API root, e.g. ``http://127.0.0.1:8000/v1``.
        engine_model: the default model: a served model name (``openai``) or a model
            directory (``hf``).
        engine_variants: ``variant=model`` pairs, comma-separated: served model names
            (``openai``), or model directories (``hf``, whose ``int8`` variant is built
            from ``engine_model`` unless named here).
        engine_api_key: the server's API key (secret: kept out of ``repr``, never logged).
        engine_stream: stream responses (lets the babbling guard stop the server early).
        engine_timeout_s: read timeout of one request to the server.
        engine_retries: further attempts after a 5xx, 429 or connection failure.
        engine_max_new_tokens: token cap for requests whose app and directive set none.
        engine_device: ``cpu``, ``cuda`` or ``cuda:N`` for ``hf``.
        babble_guard: end generations once the answer is complete (a closed code block
            followed by chatter, a repetition loop).
        meter: ``auto`` (NVML if a GPU is visible, else RAPL if readable, else estimate;
            engines on other machines are estimated), ``nvml``, ``rapl`` or ``estimate``.
        meter_gpus: GPU indices for NVML, comma-separated ("" for ``CUDA_VISIBLE_DEVICES``,
            else all).
        rapl_root: the powercap directory RAPL is read from.
        meter_calibrate: fit the estimate meter per engine and variant on the ledger's
            measured receipts when there are enough.
        server_host, server_port: where ``sprout serve`` listens.
        server_api_key: one bearer key clients of ``sprout serve`` may send, bound to no
            tenant (the tenant header is taken as sent); "" for none. Secret: kept out of
            ``repr``, never logged. ``server_keys_file`` binds keys to tenants instead.
        server_keys_file: a TOML or JSON file of client keys, each bound to a tenant and
            stored as its SHA-256 (see :mod:`sprout.server_keys`); "" for none. When either
            this or ``server_api_key`` is set, clients must send a key.
        server_max_body_bytes: largest request body the proxy reads (larger: HTTP 413).
        server_tenant_header: request header naming the tenant recorded in the receipt.
        server_opt_out_header: request header that, when true, forces the baseline
            directive (recorded as ``opt-out``).
        server_threads: worker threads the proxy runs engine calls on (its concurrency).
        server_workers: proxy processes serving one port (``sprout serve --workers``), each
            with its own controller, hash chain and metrics, all writing the one ledger.
        server_dashboard: also serve the read-only ledger dashboard at ``/dashboard``
            (:mod:`sprout.dashboard`; like ``/metrics``, not behind the client keys).
        judge_sample_share: share of served requests the quality loop samples and judges
            (0: off; prompts are stored only for sampled requests).
        judge_opt_out_tenants: tenants never sampled, comma-separated.
        judge_engine: ``replay`` (GPT-4's recorded verdicts on the bundled prompts),
            ``openai`` (an OpenAI-compatible endpoint) or ``hf`` (a local transformers model).
        judge_base_url, judge_model: the judge's API root and model (a model directory for
            ``hf``).
        judge_api_key: the judge endpoint's API key (secret: kept out of ``repr``).
        judge_protocol: ``listwise`` (pick the best of all answers, order shuffled) or
            ``pairwise`` (A/B with the order swapped, every pair of directives).
        judge_max_new_tokens: cap on a judge reply (the verdict is a short label).
        judge_max_staleness_h: longest a sampled request waits for its verdict.
        judge_cron: when the judge job wakes up to apply the timing rule (crontab, UTC).
        judge_batch_size: most sampled requests one judge run processes.
        judge_use_forecast: plan judge runs on the carbon provider's forecast when it gives one.
        judge_half_life_h: age at which a verdict weighs half in the quality estimates.
        judge_prior_weight: verdicts the bundled quality estimates are worth as a prior.
        judge_quality_floor: normalized preference below which the optimizer is moved back
            toward the baseline (0: ``1 - xi``, the optimizer's own promise).
        judge_min_verdicts: effective verdicts needed before the floor is enforced.
        otel_enabled: record every receipt as an OpenTelemetry span and metrics on the
            global tracer and meter providers (needs the ``otel`` extra; see
            :mod:`sprout.otel`).
        otel_metrics_tenant: add the tenant to the OpenTelemetry metrics' attributes (one
            series per tenant; spans always carry it).
    """

    db_url: str = ""
    zone: str = "GB"
    carbon_provider: str = "trace"
    carbon_trace: str = ""
    carbon_column: str = "ci_direct"
    static_ci_g_per_kwh: float = 400.0
    default_ci_g_per_kwh: float = 400.0
    signal_refresh_s: float = 300.0
    signal_max_age_s: float = 3 * 3600.0
    carbon_fallback_provider: str = ""
    carbon_fallback_zone: str = ""
    carbon_timeout_s: float = 5.0
    carbon_retries: int = 2
    carbon_max_retry_wait_s: float = 10.0
    carbon_poll: bool = True
    carbon_forecast_interval_s: float = 3600.0
    electricitymaps_base_url: str = "https://api.electricitymaps.com/v3"
    electricitymaps_api_key: str = field(default="", repr=False)
    electricitymaps_emission_factor: str = "direct"
    watttime_base_url: str = "https://api.watttime.org"
    watttime_username: str = field(default="", repr=False)
    watttime_password: str = field(default="", repr=False)
    uk_base_url: str = "https://api.carbonintensity.org.uk"
    policy_file: str = ""
    xi: float = 0.1
    ci_window_hours: int = 720
    policy_kind: str = "auto"
    policy_refresh_s: float = 300.0
    policy_margin_z: float = 0.0
    policy_max_loss: float | None = DEFAULT_MAX_LOSS
    retrain_cron: str = "0 3 * * *"
    embodied_g: float = SPROUT_EMBODIED_G
    lifetime_years: float = SPROUT_LIFETIME_YEARS
    pue: float = 1.0
    market_ci_g_per_kwh: float | None = None
    market_ci_source: str = ""
    ledger_flush_interval_s: float = 0.5
    ledger_spool: str = ""
    ledger_durability: str = "durable"
    ledger_checkpoint_key: str = field(default="", repr=False)
    ledger_checkpoint_public_key: str = ""
    ledger_checkpoint_dir: str = ""
    ledger_checkpoint_cron: str = "0 * * * *"
    prompt_retention_days: float = 30.0
    engine: str = "replay"
    engine_base_url: str = ""
    engine_model: str = ""
    engine_variants: str = ""
    engine_api_key: str = field(default="", repr=False)
    engine_stream: bool = False
    engine_timeout_s: float = 120.0
    engine_retries: int = 2
    engine_max_new_tokens: int = 512
    engine_device: str = "cpu"
    babble_guard: bool = False
    meter: str = "auto"
    meter_gpus: str = ""
    rapl_root: str = "/sys/class/powercap"
    meter_calibrate: bool = True
    server_host: str = "127.0.0.1"
    server_port: int = 8080
    server_api_key: str = field(default="", repr=False)
    server_keys_file: str = ""
    server_max_body_bytes: int = 4 * 1024 * 1024
    server_tenant_header: str = "x-sprout-tenant"
    server_opt_out_header: str = "x-sprout-opt-out"
    server_threads: int = 256
    server_workers: int = 1
    server_dashboard: bool = False
    judge_sample_share: float = 0.0
    judge_opt_out_tenants: str = ""
    judge_engine: str = "replay"
    judge_base_url: str = ""
    judge_model: str = ""
    judge_api_key: str = field(default="", repr=False)
    judge_protocol: str = "listwise"
    judge_max_new_tokens: int = 32
    judge_max_staleness_h: float = 24.0
    judge_cron: str = "5 * * * *"
    judge_batch_size: int = 200
    judge_use_forecast: bool = True
    judge_half_life_h: float = 168.0
    judge_prior_weight: float = 100.0
    judge_quality_floor: float = 0.0
    judge_min_verdicts: float = 50.0
    otel_enabled: bool = False
    otel_metrics_tenant: bool = False

    def __post_init__(self) -> None:
        if not self.db_url:
            object.__setattr__(self, "db_url", default_db_url())
        checks = (
            ("xi", 0.0 <= self.xi <= 1.0, "must lie in [0, 1]"),
            ("ci_window_hours", self.ci_window_hours >= 1, "must be >= 1"),
            (
                "policy_kind",
                self.policy_kind in ("auto", "lp", "contextual"),
                "must be 'auto', 'lp' or 'contextual'",
            ),
            ("policy_refresh_s", self.policy_refresh_s >= 0, "must be >= 0"),
            ("policy_margin_z", 0.0 <= self.policy_margin_z <= 5.0, "must lie in [0, 5]"),
            (
                "policy_max_loss",
                self.policy_max_loss is None or 0.0 <= self.policy_max_loss <= 1.0,
                "must lie in [0, 1] (or be unset: no bound)",
            ),
            (
                "retrain_cron",
                len(self.retrain_cron.split()) == 5,
                "must be a crontab line of 5 fields (minute hour day month day_of_week)",
            ),
            ("static_ci_g_per_kwh", self.static_ci_g_per_kwh >= 0, "must be >= 0"),
            ("default_ci_g_per_kwh", self.default_ci_g_per_kwh >= 0, "must be >= 0"),
            ("signal_refresh_s", self.signal_refresh_s >= 0, "must be >= 0"),
            ("signal_max_age_s", self.signal_max_age_s >= 0, "must be >= 0"),
            ("embodied_g", self.embodied_g >= 0, "must be >= 0"),
            ("lifetime_years", self.lifetime_years > 0, "must be > 0"),
            (
                "pue",
                math.isfinite(self.pue) and self.pue >= 1.0,
                "must be a finite number >= 1.0 (power usage effectiveness: the data centre's "
                "total energy over its IT energy; 1.0 adds no overhead)",
            ),
            (
                "market_ci_g_per_kwh",
                self.market_ci_g_per_kwh is None
                or (math.isfinite(self.market_ci_g_per_kwh) and self.market_ci_g_per_kwh >= 0),
                "must be a finite number >= 0 gCO2e/kWh (a contractual emission factor)",
            ),
            (
                "market_ci_source",
                self.market_ci_g_per_kwh is None or self.market_ci_source.strip() != "",
                "must say what market_ci_g_per_kwh is (e.g. 'PPA 2026 residual mix'): "
                "market-based figures are stated with their source",
            ),
            ("ledger_flush_interval_s", self.ledger_flush_interval_s > 0, "must be > 0"),
            (
                "ledger_durability",
                self.ledger_durability in ("buffered", "durable"),
                "must be 'buffered' or 'durable'",
            ),
            (
                "ledger_checkpoint_cron",
                len(self.ledger_checkpoint_cron.split()) == 5,
                "must be a crontab line of 5 fields (minute hour day month day_of_week)",
            ),
            ("prompt_retention_days", self.prompt_retention_days >= 0, "must be >= 0"),
            (
                "engine",
                self.engine in ("replay", "openai", "hf"),
                "must be 'replay', 'openai' or 'hf'",
            ),
            ("engine_timeout_s", self.engine_timeout_s > 0, "must be > 0"),
            ("engine_retries", 0 <= self.engine_retries <= 10, "must lie in [0, 10]"),
            ("engine_max_new_tokens", self.engine_max_new_tokens >= 1, "must be >= 1"),
            (
                "meter",
                self.meter in ("auto", "nvml", "rapl", "estimate"),
                "must be 'auto', 'nvml', 'rapl' or 'estimate'",
            ),
            (
                "carbon_column",
                self.carbon_column in ("ci_direct", "ci_lca"),
                "must be 'ci_direct' or 'ci_lca'",
            ),
            (
                "carbon_provider",
                self.carbon_provider in CARBON_PROVIDERS,
                f"must be one of {', '.join(CARBON_PROVIDERS)}",
            ),
            (
                "carbon_fallback_provider",
                self.carbon_fallback_provider in ("", *CARBON_PROVIDERS),
                f"must be empty or one of {', '.join(CARBON_PROVIDERS)}",
            ),
            ("carbon_timeout_s", self.carbon_timeout_s > 0, "must be > 0"),
            ("carbon_retries", 0 <= self.carbon_retries <= 10, "must lie in [0, 10]"),
            ("carbon_max_retry_wait_s", self.carbon_max_retry_wait_s >= 0, "must be >= 0"),
            ("carbon_forecast_interval_s", self.carbon_forecast_interval_s >= 0, "must be >= 0"),
            ("server_port", 0 <= self.server_port <= 65535, "must lie in [0, 65535]"),
            ("server_max_body_bytes", self.server_max_body_bytes >= 1024, "must be >= 1024"),
            ("server_threads", 1 <= self.server_threads <= 4096, "must lie in [1, 4096]"),
            ("server_workers", 1 <= self.server_workers <= 256, "must lie in [1, 256]"),
            ("judge_sample_share", 0.0 <= self.judge_sample_share <= 1.0, "must lie in [0, 1]"),
            (
                "judge_engine",
                self.judge_engine in ("replay", "openai", "hf"),
                "must be 'replay', 'openai' or 'hf'",
            ),
            (
                "judge_protocol",
                self.judge_protocol in ("listwise", "pairwise"),
                "must be 'listwise' or 'pairwise'",
            ),
            ("judge_max_new_tokens", self.judge_max_new_tokens >= 1, "must be >= 1"),
            ("judge_max_staleness_h", self.judge_max_staleness_h > 0, "must be > 0"),
            (
                "judge_cron",
                len(self.judge_cron.split()) == 5,
                "must be a crontab line of 5 fields (minute hour day month day_of_week)",
            ),
            ("judge_batch_size", self.judge_batch_size >= 1, "must be >= 1"),
            ("judge_half_life_h", self.judge_half_life_h > 0, "must be > 0"),
            ("judge_prior_weight", self.judge_prior_weight >= 0, "must be >= 0"),
            ("judge_quality_floor", 0.0 <= self.judge_quality_floor <= 1.0, "must lie in [0, 1]"),
            ("judge_min_verdicts", self.judge_min_verdicts >= 0, "must be >= 0"),
            (
                "server_tenant_header",
                _HEADER_NAME.fullmatch(self.server_tenant_header) is not None,
                "must be an HTTP header name",
            ),
            (
                "server_opt_out_header",
                _HEADER_NAME.fullmatch(self.server_opt_out_header) is not None,
                "must be an HTTP header name",
            ),
            (
                "electricitymaps_emission_factor",
                self.electricitymaps_emission_factor in ("direct", "lifecycle"),
                "must be 'direct' or 'lifecycle'",
            ),
        )
        for name, ok, problem in checks:
            if not ok:
                raise ConfigError(f"setting {name}={getattr(self, name)!r}: {problem}")

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied (validated)."""
        return dataclasses.replace(self, **changes)


def _coerce(name: str, kind: Any, value: Any, origin: str) -> Any:
    if isinstance(kind, types.UnionType):  # an optional setting (float | None): its type
        kind = next(k for k in get_args(kind) if k is not type(None))
        if kind is not str and isinstance(value, str) and value.strip().lower() == "none":
            return None  # a number unset where the default is one (TOML has no null)
    try:
        if kind is bool:
            if isinstance(value, str):
                lowered = value.strip().lower()
                if lowered not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(value)
                return lowered in ("1", "true", "yes")
            return bool(value)
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        if isinstance(value, bool) and kind in (int, float):
            raise ValueError(value)
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{origin}: setting {name} must be {kind.__name__}, got {value!r}"
        ) from None


def _from_toml(path: Path) -> dict[str, Any]:
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"config file {path}: cannot read ({e.strerror or e})") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path}: not valid TOML ({e})") from e
    table = doc.get("sprout", doc)
    if not isinstance(table, dict):
        raise ConfigError(f"config file {path}: [sprout] must be a table")
    return table


def load_settings(
    config: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Resolve settings: ``overrides`` > ``SPROUT_*`` env > TOML file > defaults.

    ``None`` overrides are ignored, so CLI options that were not given fall through.

    Raises:
        ConfigError: naming the setting, its origin and the problem.
    """
    env = os.environ if env is None else env
    hints = get_type_hints(Settings)
    kinds = {f.name: hints[f.name] for f in fields(Settings)}
    values: dict[str, Any] = {}
    path = config or env.get("SPROUT_CONFIG")
    if path:
        for key, value in _from_toml(Path(path)).items():
            if key not in kinds:
                known = ", ".join(sorted(kinds))
                raise ConfigError(f"config file {path}: unknown setting {key!r}; known: {known}")
            values[key] = _coerce(key, kinds[key], value, f"config file {path}")
    for name, kind in kinds.items():
        var = f"SPROUT_{name.upper()}"
        if var in env and env[var] != "":
            values[name] = _coerce(name, kind, env[var], f"environment variable {var}")
    for name, value in overrides.items():
        if name not in kinds:
            raise ConfigError(f"unknown setting {name!r}")
        if value is not None:
            values[name] = _coerce(name, kinds[name], value, "argument")
    return Settings(**values)
