"""The settings: one frozen dataclass whose fields are every setting, each in a group.

This module is over 500 lines on purpose: the class's docstring is the reference of all
~90 settings, one section per group, and keeping it beside the fields it documents is what
keeps the two in step. Loading (environment, TOML) is :mod:`sprout.config.loading`.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NoReturn

from sprout.accounting import SPROUT_EMBODIED_G, SPROUT_LIFETIME_YEARS
from sprout.errors import ConfigError
from sprout.plugins import (
    CARBON_PROVIDERS,
    ENGINES,
    JUDGES,
    METERS,
    POLICY_KINDS,
    choices_phrase,
)
from sprout.policy.base import DEFAULT_MAX_LOSS

DEFAULT_DB_FILE = "sprout-ledger.db"
#: An HTTP header name (RFC 9110 token characters).
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def default_db_url() -> str:
    """A SQLite file in the working directory."""
    return f"sqlite:///{Path.cwd() / DEFAULT_DB_FILE}"


#: The groups of :class:`Settings`, in declaration order. Each field declares its group in its
#: metadata (``field.metadata["group"]``); a TOML file may give each group as a table
#: (``[sprout.carbon]``). Setting names stay flat everywhere: ``settings.carbon_provider``,
#: ``SPROUT_CARBON_PROVIDER``, ``load_settings(carbon_provider=...)``.
SETTINGS_GROUPS: tuple[str, ...] = (
    "ledger",
    "carbon",
    "policy",
    "accounting",
    "engine",
    "meter",
    "server",
    "judge",
    "telemetry",
)


def _setting(group: str, default: Any, *, secret: bool = False) -> Any:
    """A :class:`Settings` field of ``group``; a secret one is kept out of ``repr``."""
    if group not in SETTINGS_GROUPS:
        raise ConfigError(f"unknown settings group {group!r}")
    return field(default=default, repr=not secret, metadata={"group": group})


class SettingsGroup(Mapping[str, Any]):
    """One group's settings by their flat names, in declaration order: a read-only mapping
    (see :meth:`Settings.group`) whose ``repr`` keeps secrets out, as ``repr(settings)`` does.

    Attributes:
        name: the group, one of :data:`SETTINGS_GROUPS`.
    """

    __slots__ = ("_secrets", "_values", "name")
    name: str
    _values: types.MappingProxyType[str, Any]
    _secrets: frozenset[str]

    def __init__(
        self, name: str, values: Mapping[str, Any], secrets: frozenset[str] = frozenset()
    ) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "_values", types.MappingProxyType(dict(values)))
        object.__setattr__(self, "_secrets", frozenset(secrets))

    def __setattr__(self, name: str, value: Any) -> NoReturn:
        raise AttributeError(f"{type(self).__name__} is read-only")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"{type(self).__name__} is read-only")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.name, dict(self._values), self._secrets))

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        items = ", ".join(
            f"{key!r}: {'<secret>' if key in self._secrets else repr(value)}"
            for key, value in self._values.items()
        )
        return f"{type(self).__name__}({self.name!r}, {{{items}}})"


@dataclass(frozen=True)
class Settings:
    """Sprout's settings. Units are in the names.

    Each setting belongs to one group of :data:`SETTINGS_GROUPS` (its field's
    ``metadata["group"]``; :meth:`group` gives a group's settings, :func:`settings_by_group`
    their names). The names themselves are flat: ``settings.carbon_provider``.

    Ledger attributes (group ``ledger``):
        db_url: SQLAlchemy URL of the ledger.
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

    Carbon intensity attributes (group ``carbon``):
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

    Policy attributes (group ``policy``):
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

    Carbon accounting attributes (group ``accounting``):
        embodied_g: embodied carbon of the server, gCO2e.
        lifetime_years: the server lifetime that carbon is amortised over.
        pue: the data centre's power usage effectiveness (total energy over IT energy,
            >= 1.0); ``sprout ledger report --sci`` scales the metered energy by it.
        market_ci_g_per_kwh: a contractual emission factor in gCO2e/kWh (a PPA, a supplier
            or residual mix) for market-based SCI beside the location-based one (None:
            none; market-based figures are not reported).
        market_ci_source: what that factor is (free text, e.g. "PPA 2026 residual mix"),
            stated beside every market-based figure; required with the factor.

    Engine attributes (group ``engine``):
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

    Energy meter attributes (group ``meter``):
        meter: ``auto`` (NVML if a GPU is visible, else RAPL if readable, else estimate;
            engines on other machines are estimated), ``nvml``, ``rapl`` or ``estimate``.
        meter_gpus: GPU indices for NVML, comma-separated ("" for ``CUDA_VISIBLE_DEVICES``,
            else all).
        rapl_root: the powercap directory RAPL is read from.
        meter_calibrate: fit the estimate meter per engine and variant on the ledger's
            measured receipts when there are enough.

    Proxy attributes (group ``server``):
        server_host, server_port: where ``sprout serve`` listens.
        server_api_key: one bearer key clients of ``sprout serve`` may send, bound to no
            tenant (the tenant header is taken as sent); "" for none. Secret: kept out of
            ``repr``, never logged. ``server_keys_file`` binds keys to tenants instead.
        server_keys_file: a TOML or JSON file of client keys, each bound to a tenant and
            stored as its SHA-256 (see :mod:`sprout.server.keys`); "" for none. When either
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

    Quality loop attributes (group ``judge``):
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

    Telemetry attributes (group ``telemetry``):
        otel_enabled: record every receipt as an OpenTelemetry span and metrics on the
            global tracer and meter providers (needs the ``otel`` extra; see
            :mod:`sprout.otel`).
        otel_metrics_tenant: add the tenant to the OpenTelemetry metrics' attributes (one
            series per tenant; spans always carry it).
    """

    # --- ledger ---
    db_url: str = _setting("ledger", "")
    ledger_flush_interval_s: float = _setting("ledger", 0.5)
    ledger_spool: str = _setting("ledger", "")
    ledger_durability: str = _setting("ledger", "durable")
    ledger_checkpoint_key: str = _setting("ledger", "", secret=True)
    ledger_checkpoint_public_key: str = _setting("ledger", "")
    ledger_checkpoint_dir: str = _setting("ledger", "")
    ledger_checkpoint_cron: str = _setting("ledger", "0 * * * *")
    prompt_retention_days: float = _setting("ledger", 30.0)
    # --- carbon ---
    zone: str = _setting("carbon", "GB")
    carbon_provider: str = _setting("carbon", "trace")
    carbon_trace: str = _setting("carbon", "")
    carbon_column: str = _setting("carbon", "ci_direct")
    static_ci_g_per_kwh: float = _setting("carbon", 400.0)
    default_ci_g_per_kwh: float = _setting("carbon", 400.0)
    signal_refresh_s: float = _setting("carbon", 300.0)
    signal_max_age_s: float = _setting("carbon", 3 * 3600.0)
    carbon_fallback_provider: str = _setting("carbon", "")
    carbon_fallback_zone: str = _setting("carbon", "")
    carbon_timeout_s: float = _setting("carbon", 5.0)
    carbon_retries: int = _setting("carbon", 2)
    carbon_max_retry_wait_s: float = _setting("carbon", 10.0)
    carbon_poll: bool = _setting("carbon", True)
    carbon_forecast_interval_s: float = _setting("carbon", 3600.0)
    electricitymaps_base_url: str = _setting("carbon", "https://api.electricitymaps.com/v3")
    electricitymaps_api_key: str = _setting("carbon", "", secret=True)
    electricitymaps_emission_factor: str = _setting("carbon", "direct")
    watttime_base_url: str = _setting("carbon", "https://api.watttime.org")
    watttime_username: str = _setting("carbon", "", secret=True)
    watttime_password: str = _setting("carbon", "", secret=True)
    uk_base_url: str = _setting("carbon", "https://api.carbonintensity.org.uk")
    # --- policy ---
    policy_file: str = _setting("policy", "")
    xi: float = _setting("policy", 0.1)
    ci_window_hours: int = _setting("policy", 720)
    policy_kind: str = _setting("policy", "auto")
    policy_refresh_s: float = _setting("policy", 300.0)
    policy_margin_z: float = _setting("policy", 0.0)
    policy_max_loss: float | None = _setting("policy", DEFAULT_MAX_LOSS)
    retrain_cron: str = _setting("policy", "0 3 * * *")
    # --- accounting ---
    embodied_g: float = _setting("accounting", SPROUT_EMBODIED_G)
    lifetime_years: float = _setting("accounting", SPROUT_LIFETIME_YEARS)
    pue: float = _setting("accounting", 1.0)
    market_ci_g_per_kwh: float | None = _setting("accounting", None)
    market_ci_source: str = _setting("accounting", "")
    # --- engine ---
    engine: str = _setting("engine", "replay")
    engine_base_url: str = _setting("engine", "")
    engine_model: str = _setting("engine", "")
    engine_variants: str = _setting("engine", "")
    engine_api_key: str = _setting("engine", "", secret=True)
    engine_stream: bool = _setting("engine", False)
    engine_timeout_s: float = _setting("engine", 120.0)
    engine_retries: int = _setting("engine", 2)
    engine_max_new_tokens: int = _setting("engine", 512)
    engine_device: str = _setting("engine", "cpu")
    babble_guard: bool = _setting("engine", False)
    # --- meter ---
    meter: str = _setting("meter", "auto")
    meter_gpus: str = _setting("meter", "")
    rapl_root: str = _setting("meter", "/sys/class/powercap")
    meter_calibrate: bool = _setting("meter", True)
    # --- server ---
    server_host: str = _setting("server", "127.0.0.1")
    server_port: int = _setting("server", 8080)
    server_api_key: str = _setting("server", "", secret=True)
    server_keys_file: str = _setting("server", "")
    server_max_body_bytes: int = _setting("server", 4 * 1024 * 1024)
    server_tenant_header: str = _setting("server", "x-sprout-tenant")
    server_opt_out_header: str = _setting("server", "x-sprout-opt-out")
    server_threads: int = _setting("server", 256)
    server_workers: int = _setting("server", 1)
    server_dashboard: bool = _setting("server", False)
    # --- judge ---
    judge_sample_share: float = _setting("judge", 0.0)
    judge_opt_out_tenants: str = _setting("judge", "")
    judge_engine: str = _setting("judge", "replay")
    judge_base_url: str = _setting("judge", "")
    judge_model: str = _setting("judge", "")
    judge_api_key: str = _setting("judge", "", secret=True)
    judge_protocol: str = _setting("judge", "listwise")
    judge_max_new_tokens: int = _setting("judge", 32)
    judge_max_staleness_h: float = _setting("judge", 24.0)
    judge_cron: str = _setting("judge", "5 * * * *")
    judge_batch_size: int = _setting("judge", 200)
    judge_use_forecast: bool = _setting("judge", True)
    judge_half_life_h: float = _setting("judge", 168.0)
    judge_prior_weight: float = _setting("judge", 100.0)
    judge_quality_floor: float = _setting("judge", 0.0)
    judge_min_verdicts: float = _setting("judge", 50.0)
    # --- telemetry ---
    otel_enabled: bool = _setting("telemetry", False)
    otel_metrics_tenant: bool = _setting("telemetry", False)

    def __post_init__(self) -> None:
        if not self.db_url:
            object.__setattr__(self, "db_url", default_db_url())
        checks = (
            ("xi", 0.0 <= self.xi <= 1.0, "must lie in [0, 1]"),
            ("ci_window_hours", self.ci_window_hours >= 1, "must be >= 1"),
            (
                "policy_kind",
                self.policy_kind in POLICY_KINDS,
                f"must be {choices_phrase(POLICY_KINDS.names)}",
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
                self.engine in ENGINES,
                f"must be {choices_phrase(ENGINES.names)}",
            ),
            ("engine_timeout_s", self.engine_timeout_s > 0, "must be > 0"),
            ("engine_retries", 0 <= self.engine_retries <= 10, "must lie in [0, 10]"),
            ("engine_max_new_tokens", self.engine_max_new_tokens >= 1, "must be >= 1"),
            (
                "meter",
                self.meter in METERS,
                f"must be {choices_phrase(METERS.names)}",
            ),
            (
                "carbon_column",
                self.carbon_column in ("ci_direct", "ci_lca"),
                "must be 'ci_direct' or 'ci_lca'",
            ),
            (
                "carbon_provider",
                self.carbon_provider in CARBON_PROVIDERS,
                f"must be one of {', '.join(CARBON_PROVIDERS.names)}",
            ),
            (
                "carbon_fallback_provider",
                self.carbon_fallback_provider in ("", *CARBON_PROVIDERS.names),
                f"must be empty or one of {', '.join(CARBON_PROVIDERS.names)}",
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
                self.judge_engine in JUDGES,
                f"must be {choices_phrase(JUDGES.names)}",
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

    def group(self, name: str) -> SettingsGroup:
        """The settings of group ``name`` (one of :data:`SETTINGS_GROUPS`) by their flat
        names, in declaration order, e.g. ``settings.group("carbon")["carbon_provider"]``.

        Raises:
            ConfigError: ``name`` is not a group.
        """
        try:
            names = _GROUP_FIELDS[name]
        except KeyError:
            groups = ", ".join(SETTINGS_GROUPS)
            raise ConfigError(f"unknown settings group {name!r}; the groups: {groups}") from None
        values = {n: getattr(self, n) for n in names}
        return SettingsGroup(name, values, _SECRETS.intersection(names))


#: Field names per group, both in declaration order.
_GROUP_FIELDS: dict[str, tuple[str, ...]] = {
    group: tuple(f.name for f in fields(Settings) if f.metadata["group"] == group)
    for group in SETTINGS_GROUPS
}
#: The secret settings (kept out of ``repr``).
_SECRETS = frozenset(f.name for f in fields(Settings) if not f.repr)


def settings_by_group() -> dict[str, tuple[str, ...]]:
    """The names of the settings of each group: groups and names in declaration order."""
    return dict(_GROUP_FIELDS)
