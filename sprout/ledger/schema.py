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
    Boolean,
    DateTime,
    Dialect,
    Double,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

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
    """One carbon receipt; one column per :class:`sprout.receipt.Receipt` field."""

    __tablename__ = "receipts"
    __table_args__ = (
        Index(None, "ci_zone"),
        Index(None, "directive"),
        Index(None, "tenant"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
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

__all__ = [
    "NAMING_CONVENTION",
    "Base",
    "CarbonReadingRow",
    "PolicyVersionRow",
    "ReceiptRow",
    "UTCDateTime",
    "carbon_readings_table",
    "metadata",
    "policy_versions_table",
    "receipts_table",
]
