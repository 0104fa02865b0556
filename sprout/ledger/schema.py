"""The ledger's tables as SQLAlchemy 2 declarative models.

The schema itself is created and changed only by the Alembic migrations in ``migrations/``
(see :mod:`sprout.ledger.migrate`); these models describe it for queries and for
``alembic revision --autogenerate``. A test checks that migrations and models agree.

Datetimes are stored as UTC and always come back timezone-aware (SQLite keeps no offset).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Double,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sprout.ledger.rollup import ROLLUP_KEYS

#: Constraint and index names are derived, so migrations can name them and stay portable.
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend.

    Values are converted to UTC before they are stored (naive values are taken to be UTC),
    so that SQLite's offset-less text sorts and compares correctly; values read back get
    ``tzinfo=UTC`` restored.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base bound to the ledger's :data:`metadata`."""

    metadata = metadata


class ReceiptRow(Base):
    """One carbon receipt; one column per :class:`sprout.receipt.Receipt` field, plus its
    place in its writer's hash chain (see :mod:`sprout.ledger.chain`).

    Only two indexes are kept, both cheap to extend because writes arrive in their order:
    ``(created_at, request_id)`` (the idempotency key of a replayed receipt, and time ranges)
    and ``(chain_id, seq)``. Reports read :class:`ReceiptRollupRow` instead of scanning.
    """

    __tablename__ = "receipts"
    __table_args__ = (
        Index(None, "created_at", "request_id", unique=True),
        Index(None, "chain_id", "seq", unique=True),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    directive: Mapped[str] = mapped_column(String(64))
    decision: Mapped[str] = mapped_column(String(255))
    engine: Mapped[str] = mapped_column(String(255))
    model: Mapped[str] = mapped_column(String(255))
    input_tokens: Mapped[int] = mapped_column(Integer)
    output_tokens: Mapped[int] = mapped_column(Integer)
    latency_s: Mapped[float] = mapped_column(Double)
    energy_kwh: Mapped[float] = mapped_column(Double)
    energy_source: Mapped[str] = mapped_column(String(64))
    ci_g_per_kwh: Mapped[float] = mapped_column(Double)
    ci_zone: Mapped[str] = mapped_column(String(64))
    ci_provider: Mapped[str] = mapped_column(String(64))
    ci_signal_type: Mapped[str] = mapped_column(String(32))
    ci_emission_factor: Mapped[str] = mapped_column(String(32))
    ci_time: Mapped[datetime] = mapped_column(UTCDateTime())
    ci_age_s: Mapped[float] = mapped_column(Double)
    ci_fallback: Mapped[str] = mapped_column(String(32))
    operational_g: Mapped[float] = mapped_column(Double)
    embodied_g: Mapped[float] = mapped_column(Double)
    tenant: Mapped[str | None] = mapped_column(String(255))
    variant: Mapped[str | None] = mapped_column(String(255))
    policy_version: Mapped[int | None] = mapped_column(Integer)
    energy_device: Mapped[str] = mapped_column(String(255))
    baseline_energy_kwh: Mapped[float | None] = mapped_column(Double)
    baseline_g: Mapped[float | None] = mapped_column(Double)
    baseline_source: Mapped[str | None] = mapped_column(String(64))
    prompt_id: Mapped[str | None] = mapped_column(String(255))
    purpose: Mapped[str] = mapped_column(String(32), server_default="serve")
    prefill_kwh: Mapped[float | None] = mapped_column(Double)
    decode_kwh: Mapped[float | None] = mapped_column(Double)
    #: How the generation ended (:data:`sprout.receipt.OUTCOMES`).
    outcome: Mapped[str] = mapped_column(String(32), server_default="completed")
    chain_id: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(Integer)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    #: The chain encoding ``hash`` was computed with (:data:`sprout.ledger.chain.ENCODINGS`).
    #: Rows stored before it existed, or inserted by a writer that predates it, were v1.
    hash_version: Mapped[int] = mapped_column(SmallInteger, server_default="1")


class LedgerChainRow(Base):
    """The recorded head of one writer's chain: how many rows it has and the last hash.

    Updated in the same transaction as the rows, so that a missing tail is caught.
    """

    __tablename__ = "ledger_chains"

    chain_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    receipt_count: Mapped[int] = mapped_column(Integer)
    last_hash: Mapped[str] = mapped_column(String(64))


class ReceiptRollupRow(Base):
    """Hourly sums of receipts, maintained in the transaction that inserts them.

    Derived data: ``sprout ledger verify`` checks them against the receipts.
    """

    __tablename__ = "receipt_rollups"
    __table_args__ = (Index("uq_receipt_rollups_key", *ROLLUP_KEYS, unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    bucket_start: Mapped[datetime] = mapped_column(UTCDateTime())
    ci_zone: Mapped[str] = mapped_column(String(64))
    directive: Mapped[str] = mapped_column(String(64))
    variant: Mapped[str] = mapped_column(String(255))
    tenant: Mapped[str] = mapped_column(String(255))
    energy_source: Mapped[str] = mapped_column(String(64))
    baseline_source: Mapped[str] = mapped_column(String(64))
    purpose: Mapped[str] = mapped_column(String(32))
    outcome: Mapped[str] = mapped_column(String(32), server_default="completed")
    requests: Mapped[int] = mapped_column(BigInteger)
    input_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    latency_s: Mapped[float] = mapped_column(Double)
    energy_kwh: Mapped[float] = mapped_column(Double)
    operational_g: Mapped[float] = mapped_column(Double)
    embodied_g: Mapped[float] = mapped_column(Double)
    ci_kwh: Mapped[float] = mapped_column(Double)
    baseline_n: Mapped[int] = mapped_column(BigInteger)
    baseline_g: Mapped[float] = mapped_column(Double)
    baseline_actual_g: Mapped[float] = mapped_column(Double)
    #: Receipts with a prefill/decode split, and its sums (rows from before it: zero).
    split_n: Mapped[int] = mapped_column(BigInteger, server_default="0")
    prefill_kwh: Mapped[float] = mapped_column(Double, server_default="0")
    decode_kwh: Mapped[float] = mapped_column(Double, server_default="0")


class VerdictRow(Base):
    """A judge's verdict on a sampled request: which directive's answer it preferred.

    ``receipt_created_at`` with ``request_id`` finds the receipt through its unique index.
    ``preferred_directive`` is None when the judge gave no usable verdict (or a tie).
    """

    __tablename__ = "verdicts"
    __table_args__ = (Index(None, "receipt_created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    request_id: Mapped[str] = mapped_column(String(64))
    receipt_created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    served_directive: Mapped[str] = mapped_column(String(64))
    preferred_directive: Mapped[str | None] = mapped_column(String(64))
    judge: Mapped[str] = mapped_column(String(255))
    protocol: Mapped[str] = mapped_column(String(32))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)


class SampledPromptRow(Base):
    """A prompt kept for the quality loop; deleted after the retention period.

    Prompt text is deliberately not part of the hashed receipt, so pruning it leaves every
    chain verifiable.
    """

    __tablename__ = "sampled_prompts"
    __table_args__ = (Index(None, "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    tenant: Mapped[str | None] = mapped_column(String(255))
    purpose: Mapped[str] = mapped_column(String(32))
    prompt: Mapped[Any] = mapped_column(JSON)


class CarbonReadingRow(Base):
    """One stored :class:`sprout.carbon.base.CarbonReading`, with when it was fetched."""

    __tablename__ = "carbon_readings"
    __table_args__ = (UniqueConstraint("zone", "time", "provider", "is_forecast"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    zone: Mapped[str] = mapped_column(String(64))
    time: Mapped[datetime] = mapped_column(UTCDateTime())
    ci_g_per_kwh: Mapped[float] = mapped_column(Double)
    provider: Mapped[str] = mapped_column(String(64))
    signal_type: Mapped[str] = mapped_column(String(32))
    emission_factor: Mapped[str] = mapped_column(String(32))
    is_forecast: Mapped[bool] = mapped_column(Boolean)
    is_estimated: Mapped[bool] = mapped_column(Boolean)
    fetched_at: Mapped[datetime] = mapped_column(UTCDateTime())


class PolicyVersionRow(Base):
    """One trained policy: its parameters, metrics and the SHA-256 of its canonical params."""

    __tablename__ = "policy_versions"
    __table_args__ = (Index(None, "kind", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    kind: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    sha256: Mapped[str] = mapped_column(String(64))
    note: Mapped[str] = mapped_column(Text, default="")


#: Table objects, for Core statements.
receipts_table: Table = metadata.tables["receipts"]
carbon_readings_table: Table = metadata.tables["carbon_readings"]
policy_versions_table: Table = metadata.tables["policy_versions"]
ledger_chains_table: Table = metadata.tables["ledger_chains"]
receipt_rollups_table: Table = metadata.tables["receipt_rollups"]
verdicts_table: Table = metadata.tables["verdicts"]
sampled_prompts_table: Table = metadata.tables["sampled_prompts"]

__all__ = [
    "NAMING_CONVENTION",
    "Base",
    "CarbonReadingRow",
    "LedgerChainRow",
    "PolicyVersionRow",
    "ReceiptRollupRow",
    "ReceiptRow",
    "SampledPromptRow",
    "UTCDateTime",
    "VerdictRow",
    "carbon_readings_table",
    "ledger_chains_table",
    "metadata",
    "policy_versions_table",
    "receipt_rollups_table",
    "receipts_table",
    "sampled_prompts_table",
    "verdicts_table",
]
