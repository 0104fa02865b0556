"""Hash chains over receipts (pure: values in, hex digests out).

Every :class:`~sprout.ledger.store.Ledger` writes its receipts into its own chain, so that
replicas never contend on one row: row ``seq`` of chain ``chain_id`` stores
``hash = sha256(canonical encoding of (version, chain_id, seq, prev_hash, content))`` where
``prev_hash`` is the hash of row ``seq - 1`` (:data:`GENESIS_HASH` for the first row) and the
content is the receipt's fields in the encoding's field order. A chain head (count and last
hash) is stored beside the rows, so that dropping a chain's tail is caught too.

Encodings are frozen: stored hashes must verify forever. A new receipt field therefore needs
a new encoding (a test fails until that is done): add it to :data:`ENCODINGS` and make it
:data:`CURRENT`. Each row stores the number of the encoding it was hashed with
(``receipts.hash_version``); the writer always uses :data:`CURRENT`, ``verify`` each row's
own. Versions so far:

- 1 (``sprout-receipt-v1``): :data:`FIELD_KINDS_V1`.
- 2 (``sprout-receipt-v2``): v1's fields, then ``prefill_kwh`` and ``decode_kwh``.
- 3 (``sprout-receipt-v3``): v2's fields, then ``outcome``.
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

#: ``prev_hash`` of a chain's first row.
GENESIS_HASH = "0" * 64

#: Encoding v1's receipt fields, in encoding order, with their kind.
#: ``str``/``int``/``float``/``datetime``; ``?`` marks a field that may be None. Frozen:
#: rows hashed with v1 (and migration 0002, which chains pre-chain receipts) depend on it.
FIELD_KINDS_V1: tuple[tuple[str, str], ...] = (
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
#: Encoding v2's fields: v1's, then the prefill/decode energy split. Frozen.
FIELD_KINDS_V2: tuple[tuple[str, str], ...] = (
    *FIELD_KINDS_V1,
    ("prefill_kwh", "float?"),
    ("decode_kwh", "float?"),
)

#: Encoding v3's fields: v2's, then how the generation ended. Frozen.
FIELD_KINDS_V3: tuple[tuple[str, str], ...] = (*FIELD_KINDS_V2, ("outcome", "str"))

#: The bytes a null float hashes as: a quiet NaN, which no stored float can be (the writer
#: refuses non-finite values).
NULL_FLOAT = float("nan")

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
    packed = (NULL_FLOAT if v is None else float(v) + 0.0 for v in values)
    return struct.pack(f"<{len(values)}d", *packed).hex()


class ChainEncoding:
    """One frozen encoding of a chain row: its version tag and its fields.

    Args:
        number: stored in ``receipts.hash_version`` beside each row hashed with it.
        tag: the version string hashed into every row.
        field_kinds: the receipt fields covered, in encoding order, with their kind.
    """

    def __init__(self, number: int, tag: str, field_kinds: tuple[tuple[str, str], ...]) -> None:
        self.number = number
        self.tag = tag
        self.field_kinds = field_kinds
        self.fields: tuple[str, ...] = tuple(name for name, _ in field_kinds)
        #: The float fields (hashed together as packed binary64) and the others (as JSON).
        self.float_fields = tuple(n for n, k in field_kinds if k.startswith("float"))
        self.other_fields = tuple(n for n, k in field_kinds if not k.startswith("float"))

    def __repr__(self) -> str:
        return f"ChainEncoding({self.number}, {self.tag!r})"

    def canonical_content(self, values: Sequence[Any]) -> tuple[list[Any], str]:
        """``values`` (in :attr:`fields` order) as what gets hashed.

        Returns:
            The :attr:`other_fields` values as JSON values (strings, integers, null;
            datetimes as :func:`canonical_datetime`) and the :func:`canonical_floats` of the
            :attr:`float_fields`.

        Raises:
            TypeError, ValueError: a value that does not fit its field's kind.
        """
        others: list[Any] = []
        floats: list[float | None] = []
        for (_, kind), value in zip(self.field_kinds, values, strict=True):
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

    def row_hash(
        self, chain_id: str, seq: int, prev_hash: str, content: tuple[Sequence[Any], str]
    ) -> str:
        """Hex SHA-256 of one chain row; ``content`` comes from :meth:`canonical_content`.

        The hashed bytes are the UTF-8 of the compact JSON array
        ``[tag, chain_id, seq, prev_hash, others, floats_hex]`` (no spaces, non-ASCII
        characters as they are).
        """
        others, floats_hex = content
        payload = _encode([self.tag, chain_id, seq, prev_hash, list(others), floats_hex])
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()


ENCODING_V1 = ChainEncoding(1, "sprout-receipt-v1", FIELD_KINDS_V1)
ENCODING_V2 = ChainEncoding(2, "sprout-receipt-v2", FIELD_KINDS_V2)
ENCODING_V3 = ChainEncoding(3, "sprout-receipt-v3", FIELD_KINDS_V3)
#: Every encoding a stored row may use, by its number (``receipts.hash_version``).
ENCODINGS: dict[int, ChainEncoding] = {e.number: e for e in (ENCODING_V1, ENCODING_V2, ENCODING_V3)}
#: The encoding new rows are hashed with.
CURRENT = ENCODING_V3

#: The current encoding's number, version tag and fields (what the writer uses).
HASH_VERSION: int = CURRENT.number
CHAIN_VERSION: str = CURRENT.tag
FIELD_KINDS: tuple[tuple[str, str], ...] = CURRENT.field_kinds
HASHED_FIELDS: tuple[str, ...] = CURRENT.fields
FLOAT_FIELDS: tuple[str, ...] = CURRENT.float_fields
OTHER_FIELDS: tuple[str, ...] = CURRENT.other_fields


def encoding(version: int) -> ChainEncoding:
    """The encoding numbered ``version``.

    Raises:
        ValueError: no such encoding.
    """
    try:
        return ENCODINGS[version]
    except KeyError:
        raise ValueError(f"unknown chain encoding version {version!r}") from None


def canonical_content(values: Sequence[Any], version: int = HASH_VERSION) -> tuple[list[Any], str]:
    """:meth:`ChainEncoding.canonical_content` of encoding ``version`` (default: current)."""
    return encoding(version).canonical_content(values)


def row_hash(
    chain_id: str,
    seq: int,
    prev_hash: str,
    content: tuple[Sequence[Any], str],
    version: int = HASH_VERSION,
) -> str:
    """:meth:`ChainEncoding.row_hash` of encoding ``version`` (default: current)."""
    return encoding(version).row_hash(chain_id, seq, prev_hash, content)


def receipt_row_hash(
    chain_id: str, seq: int, prev_hash: str, values: Sequence[Any], version: int = HASH_VERSION
) -> str:
    """:func:`row_hash` of raw field values (in the fields order of encoding ``version``)."""
    enc = encoding(version)
    return enc.row_hash(chain_id, seq, prev_hash, enc.canonical_content(values))


class ChainHasher:
    """:func:`row_hash` for one chain, faster: the constant prefix is encoded once.

    Args:
        chain_id: the chain.
        version: the encoding (default: current).
    """

    def __init__(self, chain_id: str, version: int = HASH_VERSION) -> None:
        self.chain_id = chain_id
        self.version = version
        self._prefix = _encode([encoding(version).tag, chain_id])[:-1] + ","

    def hash(self, seq: int, prev_hash: str, others: Sequence[Any], floats_hex: str) -> str:
        """The hash of row ``seq``; ``others`` is a list or tuple of JSON values."""
        # json encodes a tuple as an array, exactly as row_hash encodes the list.
        payload = f'{self._prefix}{seq},"{prev_hash}",{encode_json_array(others)},"{floats_hex}"]'
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()


__all__ = [
    "CHAIN_VERSION",
    "CURRENT",
    "ENCODINGS",
    "ENCODING_V1",
    "ENCODING_V2",
    "ENCODING_V3",
    "FIELD_KINDS",
    "FIELD_KINDS_V1",
    "FIELD_KINDS_V2",
    "FIELD_KINDS_V3",
    "FLOAT_FIELDS",
    "GENESIS_HASH",
    "HASHED_FIELDS",
    "HASH_VERSION",
    "NULL_FLOAT",
    "OTHER_FIELDS",
    "ChainEncoding",
    "ChainHasher",
    "canonical_content",
    "canonical_datetime",
    "canonical_floats",
    "encode_json_array",
    "encoding",
    "new_chain_id",
    "receipt_row_hash",
    "row_hash",
]
