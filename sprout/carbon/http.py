"""HTTP plumbing shared by the live carbon providers: one ``requests`` session per provider,
timeouts on every call, bounded retries with exponential back-off, ``Retry-After`` honoured,
a cap on response size, and transport failures converted into :class:`ProviderError`.

Vendor modules call :meth:`JsonClient.get_json` and convert the vendor-specific statuses
(:class:`HTTPStatusError`: 401, 404...) into their own messages at their edge. Secrets given
to the client are redacted from every message it builds.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import requests

from sprout.errors import ConfigError, ProviderError

if TYPE_CHECKING:
    from sprout.config import Settings

log = logging.getLogger("sprout.carbon")

#: Statuses worth another attempt: the server is overloaded, restarting or rate limiting.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
#: Largest response body read, bytes (a carbon API answer is a few kB; a forecast < 1 MB).
MAX_BODY_BYTES = 8 * 1024 * 1024
_SNIPPET_CHARS = 200


class HTTPStatusError(ProviderError):
    """A provider answered with a non-success HTTP status (after any retries).

    Attributes:
        status: the HTTP status code.
        body: the parsed JSON body, or None if it was not JSON.
        text: the start of the body as text (redacted, truncated).
    """

    def __init__(self, provider: str, message: str, status: int, body: Any, text: str) -> None:
        super().__init__(provider, message)
        self.status = status
        self.body = body
        self.text = text


class RateLimitedError(ProviderError):
    """The provider rate-limited us (HTTP 429) longer than we were willing to wait.

    Attributes:
        retry_after_s: how long the provider asked us to wait before asking again.
    """

    def __init__(self, provider: str, message: str, retry_after_s: float) -> None:
        super().__init__(provider, message)
        self.retry_after_s = retry_after_s


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date).

    Returns None when the header is absent or unreadable.
    """
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
    return max(0.0, seconds) if math.isfinite(seconds) else None


class JsonClient:
    """GETs JSON from one provider's API.

    Args:
        provider: provider name, first word of every error message.
        base_url: the API root, e.g. ``https://api.electricitymaps.com/v3``.
        timeout_s: read timeout of one attempt, seconds (connecting gets at most this too).
        retries: further attempts after a timeout, a refused connection, a truncated body,
            HTTP 5xx or 429.
        backoff_s: first back-off, doubled per retry.
        backoff_max_s: longest back-off.
        max_wait_s: longest ``Retry-After`` honoured by sleeping; a longer one raises
            :class:`RateLimitedError` at once so the caller can ask again later.
        secrets: strings (API keys, passwords) never to appear in a message.
        session: a ``requests.Session`` to use (default: a new one, closed by :meth:`close`).
        sleep: how to wait between attempts (injectable so tests do not sleep).

    Raises:
        ConfigError: for a base URL that is not http(s) or a non-positive timeout.
    """

    def __init__(
        self,
        provider: str,
        base_url: str,
        *,
        timeout_s: float = 5.0,
        retries: int = 2,
        backoff_s: float = 0.5,
        backoff_max_s: float = 8.0,
        max_wait_s: float = 10.0,
        secrets: Iterable[str] = (),
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        parts = urlsplit(base_url or "")
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(
                f"{provider}: base URL must be an http(s) URL such as "
                f"https://host/path, got {base_url!r}"
            )
        if not (isinstance(timeout_s, int | float) and timeout_s > 0 and math.isfinite(timeout_s)):
            raise ConfigError(f"{provider}: timeout must be a number of seconds > 0")
        if retries < 0:
            raise ConfigError(f"{provider}: retries must be >= 0, got {retries!r}")
        self.provider = provider
        self.base_url = base_url.rstrip("/")
        self.host = parts.netloc
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        self.backoff_s = float(backoff_s)
        self.backoff_max_s = float(backoff_max_s)
        self.max_wait_s = float(max_wait_s)
        # Longest first, so a secret containing another is redacted whole.
        self._secrets = sorted((s for s in secrets if s and len(s) >= 3), key=len, reverse=True)
        self._tokens: list[str] = []
        self._own_session = session is None
        self.session = session or requests.Session()
        self.sleep = sleep

    def add_secret(self, secret: str) -> None:
        """Redact ``secret`` (e.g. a freshly issued token) from messages too."""
        if secret and len(secret) >= 3 and secret not in self._secrets:
            # Tokens rotate: keep the configured secrets and the last few tokens only.
            self._tokens = [*self._tokens[-3:], secret]

    def redact(self, text: str) -> str:
        """``text`` with every secret replaced by ``***``."""
        for secret in (*self._tokens, *self._secrets):
            text = text.replace(secret, "***")
        return text

    def error(self, message: str) -> ProviderError:
        """A :class:`ProviderError` for this provider, redacted."""
        return ProviderError(self.provider, self.redact(message))

    def get_json(
        self,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        auth: tuple[str, str] | None = None,
    ) -> Any:
        """GET ``base_url/path`` and return the parsed JSON body.

        Raises:
            HTTPStatusError: a non-success status other than a retried one, or a retried
                status that outlasted the retries.
            RateLimitedError: HTTP 429 with a ``Retry-After`` longer than ``max_wait_s``.
            ProviderError: timeout, refused connection, truncated or malformed body.
        """
        url = f"{self.base_url}/{path.lstrip('/')}"
        attempts = self.retries + 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                status, raw, retry_after = self._attempt(url, params, headers, auth)
            except _Retryable as e:
                if last:
                    raise self.error(f"{e} (gave up after {attempts} attempt(s))") from e.cause
                self._backoff(attempt, None, str(e))
                continue
            if 200 <= status < 300:
                return self._parse(raw, path)
            body, text = _decode(raw)
            text = self.redact(text)
            if status == 429 and retry_after is not None and retry_after > self.max_wait_s:
                raise RateLimitedError(
                    self.provider,
                    f"rate limited (HTTP 429) on {path}; the provider asks to wait "
                    f"{retry_after:g} s",
                    retry_after,
                )
            if status in RETRY_STATUSES and not last:
                self._backoff(attempt, retry_after, f"HTTP {status} on {path}")
                continue
            message = f"HTTP {status} on {path}" + (f": {text}" if text else "")
            if status == 404:
                message += f" (is the base URL {self.base_url} right?)"
            if status in RETRY_STATUSES and attempts > 1:
                message += f" (gave up after {attempts} attempts)"
            if status == 429:
                raise RateLimitedError(self.provider, message, retry_after or 0.0)
            raise HTTPStatusError(self.provider, message, status, body, text)
        raise AssertionError("unreachable")  # pragma: no cover

    def _attempt(
        self,
        url: str,
        params: Mapping[str, Any] | None,
        headers: Mapping[str, str] | None,
        auth: tuple[str, str] | None,
    ) -> tuple[int, bytes, float | None]:
        """One request: (status, body bytes, Retry-After seconds)."""
        where = urlsplit(url).path
        try:
            response = self.session.get(
                url,
                params=params,
                headers=headers,
                auth=auth,
                timeout=(self.timeout_s, self.timeout_s),
                stream=True,  # read the body ourselves, bounded
            )
        except requests.Timeout as e:
            raise _Retryable(f"no answer from {self.host} within {self.timeout_s:g} s", e) from e
        except requests.ConnectionError as e:
            raise _Retryable(f"cannot connect to {self.host} ({_reason(e)})", e) from e
        except requests.RequestException as e:
            raise self.error(f"request to {where} failed ({_reason(e)})") from e
        try:
            raw = _read_bounded(response)
        except requests.Timeout as e:
            raise _Retryable(f"{self.host} stalled sending {where}", e) from e
        except (requests.RequestException, OSError) as e:
            raise _Retryable(f"response from {where} was cut off ({_reason(e)})", e) from e
        finally:
            response.close()
        if raw is None:
            raise self.error(f"response from {where} is larger than {MAX_BODY_BYTES} bytes")
        return response.status_code, raw, parse_retry_after(response.headers.get("Retry-After"))

    def _parse(self, raw: bytes, path: str) -> Any:
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            snippet = self.redact(raw[:60].decode("utf-8", "replace"))
            problem = "empty body" if not raw.strip() else f"{e.__class__.__name__}: {e}"
            raise self.error(f"malformed JSON from {path} ({problem}; starts {snippet!r})") from e

    def _backoff(self, attempt: int, retry_after: float | None, why: str) -> None:
        delay = min(self.backoff_max_s, self.backoff_s * (2**attempt))
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_wait_s))
        log.info("%s: %s; retrying in %.3g s", self.provider, self.redact(why), delay)
        self.sleep(delay)

    def close(self) -> None:
        """Close the session if this client created it."""
        if self._own_session:
            self.session.close()


class _Retryable(Exception):
    """An attempt failed in a way another attempt may not."""

    def __init__(self, message: str, cause: BaseException) -> None:
        super().__init__(message)
        self.cause = cause


def _read_bounded(response: requests.Response) -> bytes | None:
    """The body, or None if it exceeds :data:`MAX_BODY_BYTES`.

    A body shorter than its Content-Length raises (urllib3 enforces the length).
    """
    chunks = []
    size = 0
    for chunk in response.iter_content(chunk_size=64 * 1024):
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _decode(raw: bytes) -> tuple[Any, str]:
    text = raw.decode("utf-8", "replace").strip()
    try:
        body = json.loads(text) if text else None
    except ValueError:
        body = None
    snippet = " ".join(text.split())[:_SNIPPET_CHARS]
    return body, snippet


def _reason(error: BaseException) -> str:
    """The innermost cause's message, shortened: 'Connection refused' rather than a repr chain."""
    inner: BaseException = error
    seen = set()
    while True:
        nxt = inner.__cause__ or inner.__context__
        if nxt is None and inner.args and isinstance(inner.args[0], BaseException):
            nxt = inner.args[0]
        if nxt is None or id(nxt) in seen:
            break
        seen.add(id(nxt))
        inner = nxt
    text = str(inner) or type(inner).__name__
    for marker in ("Connection refused", "timed out", "Name or service not known"):
        if marker in text:
            return marker.lower()
    text = " ".join(text.split())
    return text[:_SNIPPET_CHARS]


def parse_time(value: Any, provider: str, field: str) -> datetime:
    """An ISO 8601 timestamp from a response as an aware UTC datetime.

    Raises:
        ProviderError: naming the field, if the value is missing or not a timestamp.
    """
    if not isinstance(value, str) or not value.strip():
        raise ProviderError(provider, f"response field {field!r} is missing or not a timestamp")
    try:
        stamp = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError as e:
        raise ProviderError(
            provider, f"response field {field!r} is not a timestamp: {value[:40]!r}"
        ) from e
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.astimezone(UTC)


def parse_intensity(value: Any, provider: str, field: str) -> float:
    """A carbon-intensity number from a response: finite and >= 0.

    Raises:
        ProviderError: naming the field, if the value is missing, null or not such a number.
    """
    if value is None:
        raise ProviderError(provider, f"response field {field!r} is missing or null (no data)")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProviderError(provider, f"response field {field!r} is not a number: {value!r:.40}")
    if not math.isfinite(value) or value < 0:
        raise ProviderError(
            provider, f"response field {field!r} must be a finite number >= 0, got {value!r}"
        )
    return float(value)


def require(doc: Any, key: str, provider: str, kind: type | tuple[type, ...] = dict) -> Any:
    """``doc[key]``, checked to be of ``kind``.

    Raises:
        ProviderError: naming the key, if ``doc`` is not an object, lacks it, or it has
            another type.
    """
    if not isinstance(doc, dict):
        raise ProviderError(provider, f"expected a JSON object holding {key!r}, got {_kind(doc)}")
    if key not in doc:
        raise ProviderError(provider, f"response lacks the field {key!r}")
    value = doc[key]
    if not isinstance(value, kind):
        raise ProviderError(provider, f"response field {key!r} is {_kind(value)}, not expected")
    return value


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def http_options(settings: Settings) -> dict[str, Any]:
    """A live provider's HTTP keyword arguments from ``settings``: timeout, retries, waits."""
    return {
        "timeout_s": settings.carbon_timeout_s,
        "retries": settings.carbon_retries,
        "max_wait_s": settings.carbon_max_retry_wait_s,
    }
