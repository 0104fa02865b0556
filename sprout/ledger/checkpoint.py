"""Signed checkpoints of the ledger's hash chains (pure: values in, bytes and verdicts out).

A hash chain kept in the database can be rewritten by whoever owns the database: recompute
every hash and the head, and ``sprout ledger verify`` finds nothing. A **checkpoint** pins
the chains from outside: a JSON document listing every chain's ``(chain_id, seq, head_hash)``
(the hash of row ``seq``, which every later row of the chain builds on), the request id and
time of that row, the chain's sums of energy and carbon over rows ``1..seq``, the totals of
the hourly rollups, when it was taken and by which key, signed with Ed25519. An auditor
keeps the checkpoint files and the public key out of the database owner's reach; verifying
recomputes each chain from its first row and must reach the checkpointed hash at ``seq``
(see :mod:`sprout.ledger.attest`).

The signature covers the canonical encoding of the document without its ``signature``
member: JSON with sorted keys, no spaces, ASCII only. Every value in it is a string, an
integer, a list or an object (floats are written as their shortest round-trip decimal
strings), so that any language can rebuild the signed bytes. Any change to the file,
including a member this version does not know, breaks the signature.

No HMAC alternative is offered on purpose: an HMAC verifier must hold the signing secret,
and then anyone who can verify can forge.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from sprout.ledger.chain import GENESIS_HASH

#: The ``format`` member of every checkpoint of this version (also separates its signatures
#: from any other use of the key).
FORMAT = "sprout-ledger-checkpoint-v1"
ALGORITHM = "ed25519"
#: The per-chain sums a checkpoint records, over rows ``1..seq``.
SUM_FIELDS: tuple[str, ...] = ("energy_kwh", "operational_g", "embodied_g")
#: The rollup totals a checkpoint records (they can only grow afterwards).
ROLLUP_FIELDS: tuple[str, ...] = ("requests", "energy_kwh", "operational_g", "embodied_g")
#: Relative tolerance when comparing float sums (summed in another order or engine).
SUM_RTOL = 1e-9


class CheckpointFormatError(ValueError):
    """A checkpoint document that is not one (bad JSON, a missing or ill-typed member)."""


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short, stable name of a public key: the first 16 hex digits of SHA-256 of its raw
    32 bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def canonical_bytes(document: Mapping[str, Any]) -> bytes:
    """The signed bytes of ``document``: its canonical JSON without ``signature``.

    Raises:
        CheckpointFormatError: a value JSON cannot hold (NaN, infinity, a non-string key).
    """
    unsigned = {k: v for k, v in document.items() if k != "signature"}
    try:
        text = json.dumps(
            unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
        )
    except (TypeError, ValueError) as e:
        raise CheckpointFormatError(f"not canonical JSON data: {e}") from e
    return text.encode("ascii")


def float_text(value: float) -> str:
    """A float as the checkpoint writes it: its shortest round-trip decimal string."""
    return repr(float(value) + 0.0)


def sums_close(a: float, b: float) -> bool:
    """Whether two float sums agree within :data:`SUM_RTOL`."""
    return math.isclose(a, b, rel_tol=SUM_RTOL, abs_tol=1e-12)


@dataclass(frozen=True)
class ChainMark:
    """One chain as a checkpoint pins it.

    Attributes:
        chain_id: the chain.
        seq: rows ``1..seq`` are covered (0: none yet).
        head_hash: the hash of row ``seq`` (:data:`GENESIS_HASH` for 0).
        request_id, created_at: row ``seq``'s idempotency key ("" for 0; the time as
            :func:`sprout.ledger.chain.canonical_datetime` text), which tells a shifted chain
            from an altered one.
        sums: :data:`SUM_FIELDS` summed over rows ``1..seq`` in seq order.
    """

    chain_id: str
    seq: int
    head_hash: str
    request_id: str = ""
    created_at: str = ""
    sums: tuple[float, ...] = (0.0, 0.0, 0.0)

    def to_json(self) -> dict[str, Any]:
        """The document member (floats as strings)."""
        return {
            "chain_id": self.chain_id,
            "seq": self.seq,
            "head_hash": self.head_hash,
            "request_id": self.request_id,
            "created_at": self.created_at,
            **{name: float_text(v) for name, v in zip(SUM_FIELDS, self.sums, strict=True)},
        }

    @classmethod
    def from_json(cls, raw: Any, where: str) -> ChainMark:
        """Parse a ``chains`` member.

        Raises:
            CheckpointFormatError: naming ``where`` and the member.
        """
        if not isinstance(raw, dict):
            raise CheckpointFormatError(f"{where}: must be an object")
        chain_id = _member(raw, "chain_id", str, where)
        seq = _member(raw, "seq", int, where)
        head_hash = _member(raw, "head_hash", str, where)
        if seq < 0:
            raise CheckpointFormatError(f"{where}: seq must be >= 0, got {seq}")
        if len(head_hash) != 64 or any(c not in "0123456789abcdef" for c in head_hash):
            raise CheckpointFormatError(f"{where}: head_hash must be 64 lowercase hex digits")
        if seq == 0 and head_hash != GENESIS_HASH:
            raise CheckpointFormatError(f"{where}: a chain at seq 0 must have the genesis hash")
        return cls(
            chain_id=chain_id,
            seq=seq,
            head_hash=head_hash,
            request_id=_member(raw, "request_id", str, where),
            created_at=_member(raw, "created_at", str, where),
            sums=tuple(_float_member(raw, name, where) for name in SUM_FIELDS),
        )


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint of every chain of one ledger (see the module docstring).

    Attributes:
        taken_at: when it was taken (UTC).
        database: the ledger's URL, password masked (for people; not checked).
        key_id: :func:`key_id` of the signing key.
        chains: one mark per chain, sorted by chain id.
        rollups: :data:`ROLLUP_FIELDS` summed over ``receipt_rollups`` when it was taken.
        signature: base64 Ed25519 signature of :func:`canonical_bytes` ("" until signed).
    """

    taken_at: datetime
    database: str
    key_id: str
    chains: tuple[ChainMark, ...]
    rollups: tuple[float, ...] = (0, 0.0, 0.0, 0.0)
    signature: str = ""
    #: The document as read, when parsed (its canonical bytes are what was signed).
    document: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def receipts(self) -> int:
        """Receipts covered, over all chains."""
        return sum(mark.seq for mark in self.chains)

    @property
    def totals(self) -> tuple[float, ...]:
        """:data:`SUM_FIELDS` over all chains."""
        return tuple(math.fsum(m.sums[i] for m in self.chains) for i in range(len(SUM_FIELDS)))

    def mark(self, chain_id: str) -> ChainMark | None:
        """The mark of ``chain_id``, if the checkpoint covers it."""
        for mark in self.chains:
            if mark.chain_id == chain_id:
                return mark
        return None

    def heads_digest(self) -> str:
        """SHA-256 over the marks, as :attr:`sprout.ledger.verify.VerifyResult.heads_digest`
        computes it over the recorded heads (equal while nothing was written since)."""
        digest = hashlib.sha256()
        for mark in self.chains:
            digest.update(f"{mark.chain_id}\t{mark.seq}\t{mark.head_hash}\n".encode())
        return digest.hexdigest()

    def to_document(self) -> dict[str, Any]:
        """The JSON document (with the signature, if signed)."""
        totals = self.totals
        doc: dict[str, Any] = {
            "format": FORMAT,
            "algorithm": ALGORITHM,
            "key_id": self.key_id,
            "taken_at": self.taken_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "database": self.database,
            "chains": [mark.to_json() for mark in self.chains],
            "totals": {
                "chains": len(self.chains),
                "receipts": self.receipts,
                **{name: float_text(v) for name, v in zip(SUM_FIELDS, totals, strict=True)},
            },
            "heads_digest": self.heads_digest(),
            "rollups": {
                "requests": int(self.rollups[0]),
                **{
                    name: float_text(v)
                    for name, v in zip(ROLLUP_FIELDS[1:], self.rollups[1:], strict=True)
                },
            },
        }
        if self.signature:
            doc["signature"] = self.signature
        return doc

    def to_json(self) -> str:
        """The file's text: the document, indented, with a final newline."""
        return json.dumps(self.to_document(), indent=2, sort_keys=True) + "\n"

    def signed(self, private_key: Ed25519PrivateKey) -> Checkpoint:
        """A copy with :attr:`key_id` set to the key's and signed by it."""
        unsigned = Checkpoint(
            taken_at=self.taken_at,
            database=self.database,
            key_id=key_id(private_key.public_key()),
            chains=self.chains,
            rollups=self.rollups,
        )
        doc = unsigned.to_document()
        signature = base64.b64encode(private_key.sign(canonical_bytes(doc))).decode("ascii")
        return Checkpoint(
            taken_at=unsigned.taken_at,
            database=unsigned.database,
            key_id=unsigned.key_id,
            chains=unsigned.chains,
            rollups=unsigned.rollups,
            signature=signature,
            document={**doc, "signature": signature},
        )

    def signature_problem(self, public_key: Ed25519PublicKey) -> str | None:
        """Why the signature does not hold under ``public_key`` (None when it does).

        What is checked is the document as read (or as built), byte for byte canonical.
        """
        doc = self.document or self.to_document()
        expected_id = key_id(public_key)
        if self.key_id != expected_id:
            return (
                f"signed with key {self.key_id}, not with the public key given ({expected_id}): "
                "another key signed it, or its key_id was changed"
            )
        try:
            raw = base64.b64decode(self.signature.encode("ascii"), validate=True)
            public_key.verify(raw, canonical_bytes(doc))
        except (InvalidSignature, binascii.Error, ValueError, CheckpointFormatError):
            return (
                f"its signature does not match its content under key {expected_id}: the file "
                "was modified after it was signed, or forged"
            )
        return None


def new_checkpoint(
    *,
    taken_at: datetime,
    database: str,
    chains: Iterable[ChainMark],
    rollups: tuple[float, ...],
) -> Checkpoint:
    """An unsigned checkpoint (sign it with :meth:`Checkpoint.signed`)."""
    return Checkpoint(
        taken_at=taken_at.astimezone(UTC),
        database=database,
        key_id="",
        chains=tuple(sorted(chains, key=lambda m: m.chain_id)),
        rollups=rollups,
    )


def parse_checkpoint(text: str | bytes, source: str = "checkpoint") -> Checkpoint:
    """Read a checkpoint document (its signature is checked separately).

    Raises:
        CheckpointFormatError: not JSON, not a checkpoint of this format, or a member
            missing or of the wrong type (the message names ``source`` and the member).
    """
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointFormatError(f"{source}: not JSON ({e})") from e
    if not isinstance(doc, dict):
        raise CheckpointFormatError(f"{source}: not a checkpoint (a JSON object is expected)")
    if doc.get("format") != FORMAT:
        raise CheckpointFormatError(
            f"{source}: not a Sprout ledger checkpoint (format {doc.get('format')!r}, "
            f"expected {FORMAT!r})"
        )
    algorithm = _member(doc, "algorithm", str, source)
    if algorithm != ALGORITHM:
        raise CheckpointFormatError(f"{source}: unsupported algorithm {algorithm!r}")
    taken_text = _member(doc, "taken_at", str, source)
    try:
        taken_at = datetime.fromisoformat(taken_text.replace("Z", "+00:00"))
    except ValueError as e:
        raise CheckpointFormatError(f"{source}: taken_at {taken_text!r} is not a time") from e
    if taken_at.tzinfo is None:
        taken_at = taken_at.replace(tzinfo=UTC)
    raw_chains = doc.get("chains")
    if not isinstance(raw_chains, list):
        raise CheckpointFormatError(f"{source}: chains must be a list")
    chains = tuple(
        ChainMark.from_json(raw, f"{source}: chains[{i}]") for i, raw in enumerate(raw_chains)
    )
    if len({m.chain_id for m in chains}) != len(chains):
        raise CheckpointFormatError(f"{source}: a chain is listed twice")
    rollups_raw = doc.get("rollups")
    if not isinstance(rollups_raw, dict):
        raise CheckpointFormatError(f"{source}: rollups must be an object")
    where = f"{source}: rollups"
    rollups = (
        _member(rollups_raw, "requests", int, where),
        *(_float_member(rollups_raw, name, where) for name in ROLLUP_FIELDS[1:]),
    )
    signature = doc.get("signature")
    if not isinstance(signature, str) or not signature:
        raise CheckpointFormatError(f"{source}: unsigned (no signature member)")
    return Checkpoint(
        taken_at=taken_at.astimezone(UTC),
        database=_member(doc, "database", str, source),
        key_id=_member(doc, "key_id", str, source),
        chains=chains,
        rollups=rollups,
        signature=signature,
        document=doc,
    )


def _member(raw: Mapping[str, Any], name: str, kind: type, where: str) -> Any:
    value = raw.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise CheckpointFormatError(
            f"{where}: {name} must be {'an integer' if kind is int else 'a string'}, got {value!r}"
        )
    return value


def _float_member(raw: Mapping[str, Any], name: str, where: str) -> float:
    text = _member(raw, name, str, where)
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise CheckpointFormatError(f"{where}: {name} must be a finite number, got {text!r}")
    return value


__all__ = [
    "ALGORITHM",
    "FORMAT",
    "ROLLUP_FIELDS",
    "SUM_FIELDS",
    "SUM_RTOL",
    "ChainMark",
    "Checkpoint",
    "CheckpointFormatError",
    "canonical_bytes",
    "float_text",
    "key_id",
    "new_checkpoint",
    "parse_checkpoint",
    "sums_close",
]
