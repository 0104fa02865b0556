"""Reading what every engine builder needs from the settings (one reading for all vendors)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sprout.engines.guards import BabbleGuard
from sprout.errors import ConfigError

if TYPE_CHECKING:
    from sprout.config import Settings


def variant_models(settings: Settings) -> dict[str, str]:
    """``settings.engine_variants`` (``variant=model,...``) as a dict.

    Raises:
        ConfigError: a malformed pair, naming the setting.
    """
    pairs: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in settings.engine_variants.split(","))):
        key, sep, target = (x.strip() for x in item.partition("="))
        if not sep or not key or not target:
            raise ConfigError(
                f"setting engine_variants: expected variant=model pairs, got {item!r}"
            )
        pairs[key] = target
    return pairs


def babble_guard(settings: Settings) -> BabbleGuard | None:
    """The babble guard when ``settings.babble_guard`` is on."""
    return BabbleGuard() if settings.babble_guard else None


def required(settings: Settings, name: str, owner: str) -> str:
    """The value of setting ``name``, which ``owner`` (e.g. ``engine='openai'``) requires.

    Raises:
        ConfigError: the setting is empty, naming it and who needs it.
    """
    value = str(getattr(settings, name))
    if not value:
        raise ConfigError(f"setting {name}: required for {owner}")
    return value
