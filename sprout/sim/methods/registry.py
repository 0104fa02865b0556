"""The simulator's methods by name: the built-ins, then any a user registers.

The built-ins are listed here explicitly rather than registering themselves on import, so the
method modules depend on ``base`` only and nothing is registered as an import side effect.
"""

from __future__ import annotations

from sprout.errors import ConfigError
from sprout.sim.methods.base import Method
from sprout.sim.methods.contextual import Contextual, ContextualLP
from sprout.sim.methods.lp import ModelOpt, Oracle, Sprout, Static
from sprout.sim.methods.oracle_request import OracleRequest
from sprout.sim.methods.simple import Base, Co2Opt

# Registration order is the report's row order.
BUILTIN_METHODS: tuple[type[Method], ...] = (
    Base,
    Co2Opt,
    ModelOpt,
    Static,
    Sprout,
    Oracle,
    OracleRequest,
    Contextual,
    ContextualLP,
)

_REGISTRY: dict[str, type[Method]] = {m.name: m for m in BUILTIN_METHODS}


def register_method(factory: type[Method]) -> type[Method]:
    """Class decorator: make a user's method available by its ``name``."""
    if not factory.name:
        raise ValueError(f"{factory.__name__} has no name")
    _REGISTRY[factory.name] = factory
    return factory


def method_names() -> tuple[str, ...]:
    """Names of the registered methods, in registration order."""
    return tuple(_REGISTRY)


def method_class(name: str) -> type[Method]:
    """The method class registered as ``name``.

    Raises:
        ConfigError: naming the known methods, for an unknown name.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown method {name!r}; known methods: {', '.join(_REGISTRY)}"
        ) from None


def create_method(name: str) -> Method:
    """A fresh instance of the method registered as ``name``."""
    return method_class(name)()
