"""Every error Sprout raises derives from :class:`SproutError`.

The tree::

    SproutError
    ├── ConfigError              bad setting, argument or environment variable
    │   └── PolicyFileError      invalid directive policy file (names file, key, problem)
    ├── DataError                bundled or user data missing or malformed
    │   └── TraceError           a carbon-intensity CSV that cannot be used
    ├── CarbonError              carbon intensity could not be read
    │   ├── ProviderError        a provider failed (names the provider)
    │   └── UnknownZoneError     a zone the provider does not know
    ├── OptimizerError           invalid optimizer inputs
    │   └── InfeasibleError      no directive mix meets the quality floor
    ├── RequestError             a malformed chat request
    ├── EngineError              generation failed
    │   └── UnknownPromptError   the replay engine has no recording of a prompt
    ├── MeterError               an energy meter could not measure
    └── LedgerError              the ledger database could not be used
"""

from __future__ import annotations


class SproutError(Exception):
    """Root of all Sprout errors."""


class ConfigError(SproutError):
    """A setting, argument or environment variable is invalid."""


class PolicyFileError(ConfigError):
    """A directive policy file is invalid.

    Attributes:
        path: the file.
        key: the dotted key that is wrong (empty when the file as a whole is).
        problem: what is wrong with it.
    """

    def __init__(self, path: str, key: str, problem: str) -> None:
        self.path = path
        self.key = key
        self.problem = problem
        where = f"{path}: {key}" if key else path
        super().__init__(f"{where}: {problem}")


class DataError(SproutError):
    """Bundled or user-supplied data is missing or malformed."""


class TraceError(DataError):
    """A carbon-intensity trace cannot be used (missing columns, gaps, bad values)."""


class CarbonError(SproutError):
    """Carbon intensity could not be read."""


class ProviderError(CarbonError):
    """A carbon provider failed; the message names the provider."""

    def __init__(self, provider: str, message: str) -> None:
        self.provider = provider
        super().__init__(f"{provider}: {message}")


class UnknownZoneError(CarbonError):
    """The provider does not know the requested zone."""


class OptimizerError(SproutError):
    """The optimizer was given invalid inputs."""


class InfeasibleError(OptimizerError):
    """No directive mix can meet the quality floor."""


class RequestError(SproutError):
    """A chat request is malformed."""


class EngineError(SproutError):
    """A generation engine failed.

    Attributes:
        reached_model: the model may have worked on the request before it failed (it
            accepted it: a timeout while generating, a stream cut mid-answer, an answer that
            was junk), so the failure spent energy and the controller writes its receipt
            (outcome ``upstream_failed``). False when the request never reached a model
            (connection refused, an HTTP error status, an unknown model).
    """

    def __init__(self, *args: object, reached_model: bool = False) -> None:
        super().__init__(*args)
        self.reached_model = reached_model


class UnknownPromptError(EngineError):
    """The replay engine has no recorded answer for a prompt."""


class MeterError(SproutError):
    """An energy meter could not take a measurement."""


class LedgerError(SproutError):
    """The ledger database could not be used."""
