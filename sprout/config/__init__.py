"""Sprout's settings (:mod:`~sprout.config.settings`) and how they are resolved from
arguments, ``SPROUT_*`` environment variables and a TOML file (:mod:`~sprout.config.loading`).
"""

from sprout.config.loading import load_settings
from sprout.config.settings import (
    DEFAULT_DB_FILE,
    SETTINGS_GROUPS,
    Settings,
    SettingsGroup,
    default_db_url,
    settings_by_group,
)

__all__ = [
    "DEFAULT_DB_FILE",
    "SETTINGS_GROUPS",
    "Settings",
    "SettingsGroup",
    "default_db_url",
    "load_settings",
    "settings_by_group",
]
