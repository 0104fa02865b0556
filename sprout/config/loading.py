"""Resolving settings with the precedence: arguments > ``SPROUT_*`` environment > TOML file
> defaults.

The TOML file is named by the ``config`` argument or ``SPROUT_CONFIG``; its keys are the
field names of :class:`~sprout.config.settings.Settings` (top level or under a ``[sprout]``
table). Each environment variable is ``SPROUT_`` plus the upper-cased field name, e.g.
``SPROUT_DB_URL``.

Every setting belongs to one group of :data:`~sprout.config.settings.SETTINGS_GROUPS`, and
the file may also give a group as a table of its own, ``[sprout.carbon]``, whose keys are the
flat names (``carbon_provider``) or, where unambiguous, short ones (``provider``): a key ``k``
of the ``<group>`` table means ``<group>_k`` if that is a setting of the group, else ``k``
itself.
"""

from __future__ import annotations

import os
import tomllib
import types
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any, get_args, get_type_hints

from sprout.config.settings import SETTINGS_GROUPS, Settings, settings_by_group
from sprout.errors import ConfigError

#: Field names per group, in declaration order.
_GROUP_FIELDS = settings_by_group()


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


def _from_toml(path: Path) -> tuple[dict[str, Any], bool]:
    """The file's settings table, and whether it is a ``[sprout]`` table (else the top level)."""
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"config file {path}: cannot read ({e.strerror or e})") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path}: not valid TOML ({e})") from e
    table = doc.get("sprout", doc)
    if not isinstance(table, dict):
        raise ConfigError(f"config file {path}: [sprout] must be a table")
    return table, "sprout" in doc


def _in_group(group: str, key: str) -> str | None:
    """The setting ``key`` names in ``group``'s table: ``<group>_<key>`` if that is a setting
    of the group, else ``key`` if it is one, else None."""
    for name in (f"{group}_{key}", key):
        if name in _GROUP_FIELDS[group]:
            return name
    return None


def _short_key(group: str, name: str) -> str:
    """The shortest key of ``group``'s table that means the setting ``name``."""
    short = name.removeprefix(f"{group}_")
    return short if _in_group(group, short) == name else name


def _table_name(group: str, nested: bool) -> str:
    return f"[sprout.{group}]" if nested else f"[{group}]"


def _file_settings(path: str | Path, kinds: Mapping[str, Any]) -> dict[str, Any]:
    """The settings the TOML file at ``path`` gives, coerced, by flat name: the keys of its
    settings table (``[sprout]`` or the top level) and of its group tables (``[sprout.carbon]``).

    Raises:
        ConfigError: naming the file (and the table) and the key that is wrong.
    """
    table, nested = _from_toml(Path(path))
    origin = f"config file {path}"
    where = "[sprout]" if nested else "the top-level table"
    values: dict[str, Any] = {}
    given: dict[str, str] = {}  # flat name -> how it was given, to name both of a pair

    def put(name: str, key: str, value: Any, place: str) -> None:
        how = f"{key} in {place}"
        if name in given:
            raise ConfigError(
                f"{origin}: setting {name} is given twice: as {given[name]} and as {how}"
            )
        given[name] = how
        source = origin if place == where else f"{origin}, table {place}"
        values[name] = _coerce(name, kinds[name], value, source)

    for key, value in table.items():
        if isinstance(value, dict) and key in _GROUP_FIELDS:
            for item, item_value in value.items():
                name = _group_key(origin, key, item, nested)
                put(name, item, item_value, _table_name(key, nested))
        elif key in kinds:
            put(key, key, value, where)
        elif isinstance(value, dict):
            groups = ", ".join(_table_name(g, nested) for g in SETTINGS_GROUPS)
            raise ConfigError(
                f"{origin}: unknown table {_table_name(key, nested)}; the group tables: {groups}"
            )
        else:
            known = ", ".join(sorted(kinds))
            raise ConfigError(f"{origin}: unknown setting {key!r}; known: {known}")
    return values


def _group_key(origin: str, group: str, key: str, nested: bool) -> str:
    """The setting that ``key`` of ``group``'s table means.

    Raises:
        ConfigError: ``key`` is a setting of another group, or of none; naming the file, the
            table, the key and the keys of the table.
    """
    name = _in_group(group, key)
    if name is not None:
        return name
    table = _table_name(group, nested)
    shorts = {_short_key(group, n): n for n in _GROUP_FIELDS[group]}
    known = ", ".join(sorted(shorts))
    if any(short != n for short, n in shorts.items()):
        known += " (or their flat names)"
    elsewhere = [
        f"{found} in {_table_name(other, nested)}"
        for other in SETTINGS_GROUPS
        if other != group and (found := _in_group(other, key)) is not None
    ]
    if elsewhere:
        problem = f"key {key!r} in table {table} belongs to another group: {', '.join(elsewhere)}"
    else:
        problem = f"unknown key {key!r} in table {table}"
    raise ConfigError(f"{origin}: {problem}; the keys of {table}: {known}")


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
        values.update(_file_settings(path, kinds))
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
