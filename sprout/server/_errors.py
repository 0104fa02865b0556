"""The proxy's error answers: OpenAI's ``{"error": {...}}`` shape, and which one an
exception raised while serving gets (a bad request a 4xx, a failed upstream a 502)."""

from __future__ import annotations

import logging
from typing import Any

from sprout.errors import EngineError, RequestError, UnknownPromptError

# One logger for the whole proxy, as before the split: operators filter on "sprout.server".
log = logging.getLogger("sprout.server")


class ApiError(Exception):
    """A request the proxy answers with an OpenAI-style error.

    Attributes:
        status: the HTTP status.
        message: what is wrong, for the client.
        type: OpenAI's error type (``invalid_request_error``, ``api_error``...).
        param: the offending parameter, or None.
        code: a machine-readable code (``model_not_found``, ``upstream_error``...).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        """The JSON error body."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def bad(message: str, param: str | None, code: str = "invalid_value") -> ApiError:
    """A 400 naming the offending parameter."""
    return ApiError(400, message, param=param, code=code)


def map_error(error: BaseException) -> ApiError:
    """The client's answer to an exception raised while serving."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, RequestError):
        return bad(str(error), "messages")
    if isinstance(error, UnknownPromptError):  # the replay engine: a prompt it never recorded
        return bad(str(error), "messages", "unknown_prompt")
    if isinstance(error, EngineError):
        return ApiError(
            502,
            f"the upstream model server failed: {error}",
            type="api_error",
            code="upstream_error",
        )
    log.error("request failed unexpectedly", exc_info=error)
    return ApiError(
        500, f"internal error ({type(error).__name__})", type="api_error", code="internal_error"
    )
