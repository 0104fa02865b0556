"""``sprout keys add``: a client key of the proxy bound to a tenant (see
:mod:`sprout.server.keys`).

Building the ``sprout`` parser imports nothing of the ``server`` extra.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sprout.server.keys import KeyEntry


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Add ``sprout keys``."""
    keys = subparsers.add_parser(
        "keys",
        help="client keys of the proxy, each bound to a tenant",
        description="Client keys of `sprout serve`. The keys file (server_keys_file) stores "
        "only each key's SHA-256.",
    )
    sub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    add = sub.add_parser(
        "add",
        help="make a new key for a tenant: print it once, and its keys-file entry",
        description="Make a random key for TENANT and print it (only this once) with the "
        "entry for the keys file, which holds the key's SHA-256, never the key. With --file, "
        "the entry is added to that keys file (created if missing); a running proxy picks it "
        "up within seconds. To revoke a key later, set `revoked = true` in its entry.",
    )
    add.add_argument("--tenant", required=True, help="the tenant the key's receipts go under")
    add.add_argument(
        "--trusted-gateway",
        action="store_true",
        help="let the key name any tenant in the tenant header (for a gateway that serves "
        "many tenants and authenticates them itself)",
    )
    add.add_argument("--id", help="the entry's name (default: TENANT-<random>)")
    add.add_argument(
        "--file", metavar="FILE", help="add the entry to this keys file (.toml or .json)"
    )
    add.add_argument(
        "--format", choices=("toml", "json"), help="how to print the entry (default: as --file)"
    )
    add.set_defaults(func=_cmd_keys_add)
    return keys


def _add_to_file(path: Path, entry: KeyEntry) -> None:
    """Add ``entry`` to the keys file at ``path`` (checked before and after; atomic)."""
    from sprout.errors import ConfigError
    from sprout.server.keys import load_keys, parse_keys

    exists = path.exists()
    if exists:
        current = load_keys(path)
        if any(e.id == entry.id for e in current):
            raise ConfigError(f"keys file {path}: id {entry.id!r} is taken; pass another --id")
        text = path.read_text(encoding="utf-8")
    else:
        text = ""
    fmt = "json" if path.suffix.lower() == ".json" else "toml"
    if fmt == "json":
        doc = json.loads(text) if exists else {"keys": []}
        items = doc["keys"] if isinstance(doc, dict) else doc
        items.append(json.loads(entry.to_json()))
        text = json.dumps(doc, indent=2) + "\n"
    else:
        text = (text.rstrip("\n") + "\n\n" if text.strip() else "") + entry.to_toml()
    parse_keys(text, f"keys file {path}", fmt)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        if exists:
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)  # a running proxy never reads a half-written file
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _cmd_keys_add(args: argparse.Namespace) -> int:
    import secrets

    from sprout.errors import ConfigError
    from sprout.server.keys import TENANT_MAX_LENGTH, KeyEntry, key_digest, new_key, valid_tenant

    if not valid_tenant(args.tenant):
        raise ConfigError(f"--tenant: expected 1 to {TENANT_MAX_LENGTH} printable ASCII characters")
    tenant = args.tenant.strip()
    key_id = args.id or f"{tenant.replace(' ', '-')}-{secrets.token_hex(3)}"
    if not key_id.strip():
        raise ConfigError("--id must not be empty")
    key = new_key()
    entry = KeyEntry(key_id, tenant, key_digest(key), trusted_gateway=args.trusted_gateway)
    path = Path(args.file) if args.file else None
    if path is not None:
        _add_to_file(path, entry)
    fmt = args.format or ("json" if path is not None and path.suffix.lower() == ".json" else "toml")
    kind = "trusted gateway, may name any tenant" if entry.trusted_gateway else "bound to it"
    print(f"New key for tenant {tenant!r} (id {key_id!r}; {kind}). It is shown only this once;")
    print("give it to the client, which sends it as 'Authorization: Bearer <key>':")
    print()
    print(f"  {key}")
    print()
    if path is not None:
        print(f"Added to {path}: only the key's SHA-256 is stored.")
    else:
        print("Add this entry to the keys file (server_keys_file), which holds only hashes:")
        print()
        print(entry.to_toml() if fmt == "toml" else entry.to_json())
    return 0


__all__ = ["register"]
