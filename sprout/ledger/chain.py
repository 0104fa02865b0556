"""Hash chains over receipts (pure: values in, hex digests out).

Every :class:`~sprout.ledger.store.Ledger` writes its receipts into its own chain, so that
replicas never contend on one row: row ``seq`` of chain ``chain_id`` stores
``hash = sha256(canonical encoding of (version, chain_id, seq, prev_hash, content))`` where
``prev_hash`` is the hash of row ``seq - 1`` (:data:`GENESIS_HASH` for the first row) and the
content is the receipt's fields in :data:`HASHED_FIELDS` order. A chain head (count and last
hash) is stored beside the rows, so that dropping a chain's tail is caught too.

The encoding is frozen: stored hashes must verify forever. A new receipt field therefore
needs a new encoding version (and a test fails until that is done).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import struct
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

#: Encoding version, hashed into every row.
CHAIN_VERSION = "sprout-receipt-v1"
#: ``prev_hash`` of a chain's first row.
GENESIS_HASH = "0" * 64

#: The receipt fields covered by the hash, in encoding order, with their kind.
#: ``str``/``int``/``float``/``datetime``; ``?`` marks a field that may be None.
FIELD_KINDS: tuple[tuple[str, str], ...] = (
    ("request_id", "str"),
    ("created_at", "datetime"),
    ("directive", "str"),
    ("decision", "str"),
    ("engine", "str"),
    ("model", "str"),
    ("input_tokens", "int"),
    ("output_tokens", "int"),
    ("latency_s", "float"),
    ("energy_kwh", "float"),
    ("energy_source", "str"),
    ("ci_g_per_kwh", "float"),
    ("ci_zone", "str"),
    ("ci_provider", "str"),
    ("ci_signal_type", "str"),
    ("ci_emission_factor", "str"),
    ("ci_time", "datetime"),
    ("ci_age_s", "float"),
    ("ci_fallback", "str"),
    ("operational_g", "float"),
    ("embodied_g", "float"),
    ("tenant", "str?"),
    ("variant", "str?"),
    ("policy_version", "int?"),
    ("energy_device", "str"),
    ("baseline_energy_kwh", "float?"),
    ("baseline_g", "float?"),
    ("baseline_source", "str?"),
    ("prompt_id", "str?"),
    ("purpose", "str"),
)
HASHED_FIELDS: tuple[str, ...] = tuple(name for name, _ in FIELD_KINDS)

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
try:  # the C encoder made once: json's own encode() builds it anew on every call
    from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]

    _c_encoder = c_make_encoder(None, None, encode_basestring, None, ":", ",", False, False, False)
except (ImportError, TypeError):  # pragma: no cover - no C accelerator
    _c_encoder = None


def encode_json_array(values: Sequence[Any]) -> str:
    """Compact JSON of a list or tuple of strings, integers and None (as :func:`row_hash`
    encodes it), faster."""
    if _c_encoder is None:  # pragma: no cover
        return _encode(list(values))
    return "".join(_c_encoder(values, 0))


def new_chain_id() -> str:
    """A fresh chain id naming the writer: ``host:pid:random`` (at most 64 characters)."""
    host = (socket.gethostname() or "host")[:32]
    return f"{host}:{os.getpid()}:{secrets.token_hex(6)}"


#: The float fields (hashed together as packed binary64) and the others (hashed as JSON).
FLOAT_FIELDS: tuple[str, ...] = tuple(n for n, k in FIELD_KINDS if k.startswith("float"))
OTHER_FIELDS: tuple[str, ...] = tuple(n for n, k in FIELD_KINDS if not k.startswith("float"))
_pack_floats = struct.Struct(f"<{len(FLOAT_FIELDS)}d").pack
#: The bytes a null float hashes as: a quiet NaN, which no stored float can be (the writer
#: refuses non-finite values).
NULL_FLOAT = float("nan")


def canonical_datetime(value: datetime) -> str:
    """The encoding of a datetime: ``YYYY-MM-DD HH:MM:SS.ffffff`` in UTC.

    The text SQLite stores, so the SQLite writer hashes what it inserts. Naive values are
    taken to be UTC (as the ledger stores them).
    """
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    elif value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return f"{value:%Y-%m-%d %H:%M:%S.%f}"


def canonical_floats(values: Sequence[float | None]) -> str:
    """The encoding of the float fields: hex of their little-endian IEEE 754 binary64 bytes.

    Exact, and cheaper than decimal reprs. ``-0.0`` counts as ``0.0`` (SQLite gives a stored
    negative zero back as zero); None counts as :data:`NULL_FLOAT`.
    """
    return _pack_floats(*(NULL_FLOAT if v is None else float(v) + 0.0 for v in values)).hex()


def canonical_content(values: Sequence[Any]) -> tuple[list[Any], str]:
    """``values`` (in :data:`HASHED_FIELDS` order) as what gets hashed.

    Returns:
        The :data:`OTHER_FIELDS` values as JSON values (strings, integers, null; datetimes
        as :func:`canonical_datetime`) and the :func:`canonical_floats` of the
        :data:`FLOAT_FIELDS`.

    Raises:
        TypeError, ValueError: a value that does not fit its field's kind.
    """
    others: list[Any] = []
    floats: list[float | None] = []
    for (_, kind), value in zip(FIELD_KINDS, values, strict=True):
        code = kind[0]
        if code == "f":
            floats.append(None if value is None else float(value))
        elif value is None:
            others.append(None)
        elif code == "i":
            others.append(int(value))
        elif code == "d":
            others.append(canonical_datetime(value))
        else:
            others.append(str(value))
    return others, canonical_floats(floats)


def row_hash(chain_id: str, seq: int, prev_hash: str, content: tuple[Sequence[Any], str]) -> str:
    """Hex SHA-256 of one chain row; ``content`` comes from :func:`canonical_content`.

    The hashed bytes are the UTF-8 of the compact JSON array
    ``[CHAIN_VERSION, chain_id, seq, prev_hash, others, floats_hex]`` (no spaces, non-ASCII
    characters as they are).
    """
    others, floats_hex = content
    payload = _encode([CHAIN_VERSION, chain_id, seq, prev_hash, list(others), floats_hex])
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def receipt_row_hash(chain_id: str, seq: int, prev_hash: str, values: Sequence[Any]) -> str:
    """:func:`row_hash` of raw field values (in :data:`HASHED_FIELDS` order)."""
    return row_hash(chain_id, seq, prev_hash, canonical_content(values))


class ChainHasher:
    """:func:`row_hash` for one chain, faster: the constant prefix is encoded once.

    Args:
        chain_id: the chain.
    """

    def __init__(self, chain_id: str) -> None:
        self.chain_id = chain_id
        self._prefix = _encode([CHAIN_VERSION, chain_id])[:-1] + ","

    def hash(self, seq: int, prev_hash: str, others: Sequence[Any], floats_hex: str) -> str:
        """The hash of row ``seq``; ``others`` is a list or tuple of JSON values."""
        # json encodes a tuple as an array, exactly as row_hash encodes the list.
        payload = f'{self._prefix}{seq},"{prev_hash}",{encode_json_array(others)},"{floats_hex}"]'
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()


__all__ = [
    "CHAIN_VERSION",
    "FIELD_KINDS",
    "FLOAT_FIELDS",
    "GENESIS_HASH",
    "HASHED_FIELDS",
    "NULL_FLOAT",
    "OTHER_FIELDS",
    "ChainHasher",
    "canonical_content",
    "canonical_datetime",
    "canonical_floats",
    "encode_json_array",
    "new_chain_id",
    "receipt_row_hash",
    "row_hash",
]
