"""Client keys of the proxy, each bound to a tenant: the keys file and key checks.

The keys file (setting ``server_keys_file``) lists one entry per key, in TOML or JSON; it
holds only each key's SHA-256, so a leaked file leaks no key::

    [[keys]]
    id = "acme-prod"            # a name for the key, for logs and revocation (not secret)
    tenant = "acme"             # the tenant its receipts are written under
    key_sha256 = "9f86d08..."   # hex SHA-256 of the key (sprout keys add prints it)
    trusted_gateway = false     # true: the key may name the tenant in a request header
    revoked = false             # true: the key is refused (401, saying so)

JSON is the same entries as ``{"keys": [{...}, ...]}`` (or a bare list). A presented key is
hashed and compared with every entry's digest by :func:`hmac.compare_digest`, so neither the
match nor its position shows in the response time. The file is re-read when it changes (at
most every few seconds), so a revocation needs no restart; a change that does not parse is
logged and the keys read before it stay in force.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sprout.errors import ConfigError

log = logging.getLogger("sprout.server")

#: A tenant name: 1 to 256 printable ASCII characters, not all spaces. ASCII only, because
#: HTTP headers arrive as latin-1 and a UTF-8 name would be recorded garbled.
TENANT_PATTERN = r"^ *[\x21-\x7e][\x20-\x7e]*$"
TENANT_MAX_LENGTH = 256
_TENANT = re.compile(TENANT_PATTERN)
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_FIELDS = ("id", "tenant", "key_sha256", "trusted_gateway", "revoked")
#: Seconds between checks of the keys file for changes.
RELOAD_INTERVAL_S = 2.0


def valid_tenant(name: str) -> bool:
    """Whether ``name`` is a tenant name (see :data:`TENANT_PATTERN`)."""
    return len(name) <= TENANT_MAX_LENGTH and _TENANT.match(name) is not None


def key_digest(key: str | bytes) -> bytes:
    """The SHA-256 of a key as sent (a ``str`` is taken as the header's latin-1 text)."""
    raw = key.encode("latin-1", "replace") if isinstance(key, str) else key
    return hashlib.sha256(raw).digest()


def new_key() -> str:
    """A fresh random key: 256 bits, URL-safe, recognisable by its prefix."""
    return "sk-sprout-" + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class KeyEntry:
    """One key of the keys file (never the key itself).

    Attributes:
        id: the key's name, for logs and revocation.
        tenant: the tenant its requests are recorded under.
        digest: the key's SHA-256 (32 bytes).
        trusted_gateway: the key may name another tenant in the tenant header.
        revoked: the key is refused.
    """

    id: str
    tenant: str
    digest: bytes
    trusted_gateway: bool = False
    revoked: bool = False

    def to_toml(self) -> str:
        """The entry as a ``[[keys]]`` table of a TOML keys file."""
        return (
            f"[[keys]]\nid = {json.dumps(self.id)}\ntenant = {json.dumps(self.tenant)}\n"
            f'key_sha256 = "{self.digest.hex()}"\n'
            f"trusted_gateway = {str(self.trusted_gateway).lower()}\n"
            f"revoked = {str(self.revoked).lower()}\n"
        )

    def to_json(self) -> str:
        """The entry as one object of a JSON keys file's ``keys`` list."""
        return json.dumps(
            {
                "id": self.id,
                "tenant": self.tenant,
                "key_sha256": self.digest.hex(),
                "trusted_gateway": self.trusted_gateway,
                "revoked": self.revoked,
            }
        )


def _entry(item: object, i: int, where: str) -> KeyEntry:
    at = f"{where}: entry {i}"
    if not isinstance(item, dict):
        raise ConfigError(f"{at}: expected a table/object, got {type(item).__name__}")
    if isinstance(item.get("id"), str) and item["id"]:
        at = f"{at} (id {item['id']!r})"
    unknown = sorted(str(k) for k in item if k not in _FIELDS)
    if unknown:
        raise ConfigError(
            f"{at}: unknown field(s) {', '.join(unknown)}; known: {', '.join(_FIELDS)}"
        )
    for name in ("id", "tenant", "key_sha256"):
        if name not in item:
            raise ConfigError(f"{at}: missing {name!r}")
        if not isinstance(item[name], str):
            raise ConfigError(f"{at}: {name} must be a string, got {type(item[name]).__name__}")
    if not item["id"].strip():
        raise ConfigError(f"{at}: id must not be empty")
    if not valid_tenant(item["tenant"]):
        raise ConfigError(
            f"{at}: tenant must be 1 to {TENANT_MAX_LENGTH} printable ASCII characters"
        )
    digest = item["key_sha256"].strip()
    if not _HEX64.fullmatch(digest):
        # The value is not echoed: it may be a key pasted in by mistake.
        raise ConfigError(
            f"{at}: key_sha256 must be the key's SHA-256 as 64 hex digits, got "
            f"{len(digest)} characters (store only the hash; `sprout keys add` prints it)"
        )
    flags = {}
    for name in ("trusted_gateway", "revoked"):
        value = item.get(name, False)
        if not isinstance(value, bool):
            raise ConfigError(f"{at}: {name} must be true or false, got {value!r}")
        flags[name] = value
    return KeyEntry(item["id"], item["tenant"].strip(), bytes.fromhex(digest), **flags)


def parse_keys(text: str, where: str, fmt: str) -> tuple[KeyEntry, ...]:
    """Entries of a keys file's text.

    Args:
        text: the file's content.
        where: how errors name the file.
        fmt: ``json`` or ``toml``.

    Raises:
        ConfigError: naming the file, the entry and the problem.
    """
    doc: Any
    if fmt == "json":
        try:
            doc = json.loads(text)
        except ValueError as e:
            raise ConfigError(f"{where}: not valid JSON ({e})") from None
    else:
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{where}: not valid TOML ({e})") from None
    items = doc.get("keys") if isinstance(doc, dict) else doc
    if isinstance(doc, dict) and set(doc) - {"keys"}:
        extra = ", ".join(sorted(set(doc) - {"keys"}))
        raise ConfigError(f"{where}: unknown top-level key(s) {extra}; expected only 'keys'")
    if not isinstance(items, list):
        raise ConfigError(
            f"{where}: expected a 'keys' list of entries ([[keys]] tables in TOML, "
            '{"keys": [...]} in JSON)'
        )
    entries = tuple(_entry(item, i, where) for i, item in enumerate(items))
    seen_ids: dict[str, int] = {}
    seen_digests: dict[bytes, str] = {}
    for i, entry in enumerate(entries):
        if entry.id in seen_ids:
            raise ConfigError(
                f"{where}: entries {seen_ids[entry.id]} and {i} share id {entry.id!r}"
            )
        seen_ids[entry.id] = i
        if entry.digest in seen_digests:
            raise ConfigError(
                f"{where}: keys {seen_digests[entry.digest]!r} and {entry.id!r} have the same "
                "key_sha256 (one key, two entries)"
            )
        seen_digests[entry.digest] = entry.id
    return entries


def _format(path: Path, text: str) -> str:
    suffix = path.suffix.lower()
    if suffix in (".json", ".toml"):
        return suffix[1:]
    return "json" if text.lstrip().startswith(("{", "[")) else "toml"


def load_keys(path: str | Path) -> tuple[KeyEntry, ...]:
    """Entries of the keys file at ``path`` (``.json``, ``.toml``, else by its content).

    Raises:
        ConfigError: the file cannot be read or an entry is malformed.
    """
    path = Path(path)
    where = f"keys file {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or e
        raise ConfigError(f"{where}: cannot read ({reason})") from None
    return parse_keys(text, where, _format(path, text))


class KeyRing:
    """The keys of a keys file, re-read when the file changes.

    Args:
        path: the keys file.
        reload_interval_s: least time between two checks of the file (0: every request).
    """

    def __init__(self, path: str | Path, reload_interval_s: float = RELOAD_INTERVAL_S) -> None:
        self.path = Path(path)
        self.reload_interval_s = reload_interval_s
        self._stamp = self._stat()
        self.entries = load_keys(self.path)
        self._checked = time.monotonic()
        self._lock = threading.Lock()

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < self.reload_interval_s or not self._lock.acquire(blocking=False):
            return
        try:
            self._checked = now
            stamp = self._stat()
            if stamp == self._stamp:
                return
            self._stamp = stamp
            try:
                self.entries = load_keys(self.path)
            except ConfigError as e:
                log.error("%s; the keys read before stay in force", e)
                return
            log.info("keys file %s re-read: %d key(s)", self.path, len(self.entries))
        finally:
            self._lock.release()

    def match(self, digest: bytes) -> KeyEntry | None:
        """The entry whose key has SHA-256 ``digest``, or None.

        Every entry is compared, in constant time, so the response time shows neither
        whether nor where a key matched.
        """
        self._refresh()
        found = None
        for entry in self.entries:
            if hmac.compare_digest(entry.digest, digest):
                found = entry
        return found
