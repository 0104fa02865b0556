"""Ed25519 keys of ledger checkpoints: generate, load, and never show them.

The signing key comes from the setting ``ledger_checkpoint_key`` (``SPROUT_LEDGER_CHECKPOINT_KEY``):
the path of a PEM file (``sprout ledger keygen`` writes one with mode 0600), or the PEM text
itself (for secret stores that fill environment variables). It is never stored in the
ledger's database, and neither its value nor its bytes ever reach a message or a log: a
value that names no file is reported without being echoed, since it may be key material.

The public key (``ledger_checkpoint_public_key``, ``--public-key FILE``) is all that
verifying needs: a PEM ``PUBLIC KEY`` or an OpenSSH ``ssh-ed25519`` line.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from sprout.errors import ConfigError
from sprout.ledger.checkpoint import key_id

log = logging.getLogger("sprout.ledger")

_PEM_MARK = "-----BEGIN"


def generate_key_files(
    private_path: str | Path, public_path: str | Path | None = None, *, force: bool = False
) -> tuple[Path, Path, str]:
    """Write a new Ed25519 key pair: the private key (PKCS#8 PEM, mode 0600) and the public
    key (``<private>.pub`` unless named).

    Returns:
        The two paths and the key id.

    Raises:
        ConfigError: a file exists already (and not ``force``), or cannot be written.
    """
    private = Path(private_path)
    public = Path(public_path) if public_path is not None else Path(f"{private}.pub")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    pub = public_pem(key.public_key())
    if not force:
        for path in (private, public):
            if path.exists():
                raise ConfigError(f"{path} exists already (give --force to replace it)")
    try:
        private.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (0 if force else os.O_EXCL)
        fd = os.open(private, flags, 0o600)
        try:
            os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_TRUNC
            os.write(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)
        public.parent.mkdir(parents=True, exist_ok=True)
        public.write_text(pub, encoding="ascii")
    except OSError as e:
        raise ConfigError(f"cannot write the key pair ({e.strerror or e}: {e.filename})") from e
    return private, public, key_id(key.public_key())


def public_pem(public_key: Ed25519PublicKey) -> str:
    """The PEM text of a public key."""
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def load_private_key(value: str, *, origin: str = "setting ledger_checkpoint_key") -> Any:
    """The Ed25519 signing key that ``value`` names (a PEM file) or holds (PEM text).

    Args:
        value: a path, or PEM text.
        origin: where the value came from, for messages (the value itself is never shown
            unless it is an existing file's path).

    Returns:
        An ``Ed25519PrivateKey``.

    Raises:
        ConfigError: no value, no such file, an unreadable file, or not an unencrypted
            Ed25519 private key.
    """
    if not value:
        raise ConfigError(
            "no checkpoint signing key: set ledger_checkpoint_key (or "
            "SPROUT_LEDGER_CHECKPOINT_KEY) to a PEM file; `sprout ledger keygen` writes one"
        )
    if _PEM_MARK in value or "\n" in value:
        what, data = f"{origin} (PEM text)", value.encode("utf-8")
    else:
        path = Path(value).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"{origin} names no existing key file (the value is not shown: it may be key "
                "material); give the path of a PEM private key"
            )
        what = f"checkpoint key file {path} ({origin})"
        try:
            data = path.read_bytes()
            mode = stat.S_IMODE(path.stat().st_mode)
        except OSError as e:
            raise ConfigError(f"{what}: cannot read ({e.strerror or e})") from e
        if mode & 0o077:
            log.warning(
                "checkpoint key file %s is readable by other users (mode %04o): chmod 600 it",
                path,
                mode,
            )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigError(
            f"{what} is encrypted: give an unencrypted key file with mode 0600"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        if _looks_public(data):
            raise ConfigError(
                f"{what} holds a public key; signing needs the private key "
                "(the public key is for `sprout ledger verify --public-key`)"
            ) from None
        raise ConfigError(
            f"{what} is not a PEM private key (`sprout ledger keygen` writes one)"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(
            f"{what} is a {type(key).__name__.removeprefix('_')} key; checkpoints are signed "
            "with Ed25519 (`sprout ledger keygen`)"
        )
    return key


def load_public_key(value: str | Path, *, origin: str = "--public-key") -> Any:
    """The Ed25519 public key in file ``value`` (PEM, or an OpenSSH ``ssh-ed25519`` line).

    Returns:
        An ``Ed25519PublicKey``.

    Raises:
        ConfigError: no such file, or not an Ed25519 public key (a private key is refused:
            an auditor needs only the public one).
    """
    path = Path(value).expanduser()
    what = f"public key file {path} ({origin})"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{what} does not exist") from None
    except OSError as e:
        raise ConfigError(f"{what}: cannot read ({e.strerror or e})") from e
    if b"PRIVATE KEY" in data:
        raise ConfigError(
            f"{what} holds a private key: give the public key (the .pub file keygen wrote)"
        )
    key: object
    try:
        if data.lstrip().startswith(b"ssh-"):
            key = serialization.load_ssh_public_key(data.strip())
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(f"{what} is not a PEM or OpenSSH public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(
            f"{what} is a {type(key).__name__.removeprefix('_')} key; checkpoints are "
            "signed with Ed25519"
        )
    return key


def _looks_public(data: bytes) -> bool:
    try:
        serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        return False
    return True


def signing_key(settings: Any, override: str | None = None) -> Any:
    """The signing key of ``settings`` (or of the path ``override``, a CLI option)."""
    if override:
        return load_private_key(override, origin="--key")
    return load_private_key(settings.ledger_checkpoint_key)


def verifying_key(settings: Any, override: str | None = None) -> Any:
    """The public key to verify checkpoints with: ``override`` (``--public-key``), else the
    setting ``ledger_checkpoint_public_key``, else the one of the configured signing key.

    Raises:
        ConfigError: none of them is set, or the one given cannot be used.
    """
    if override:
        return load_public_key(override)
    if settings.ledger_checkpoint_public_key:
        return load_public_key(
            settings.ledger_checkpoint_public_key, origin="setting ledger_checkpoint_public_key"
        )
    if settings.ledger_checkpoint_key:
        return load_private_key(settings.ledger_checkpoint_key).public_key()
    raise ConfigError(
        "verifying a checkpoint needs the public key: give --public-key FILE or set "
        "ledger_checkpoint_public_key"
    )


__all__ = [
    "generate_key_files",
    "load_private_key",
    "load_public_key",
    "public_pem",
    "signing_key",
    "verifying_key",
]
