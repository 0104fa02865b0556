"""Row encoding: receipts made ready to insert and hash, and back into JSON records.

:func:`make_preparer` validates a receipt once, in the appender's thread, and converts it
into the insert parameters and the hashed content of its row; :func:`prepared_record` and
:func:`json_dict` turn a receipt (prepared or not) into the JSON record that the spool and
the journals hold. :func:`canonical_json` is the encoding of the JSON columns (policy
params, verdict details, prompts), so that what is read back hashes alike.
"""

from __future__ import annotations

import hashlib
import json
import operator
import struct
from collections.abc import Callable, Sequence
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any

from sprout.ledger.chain import FIELD_KINDS, FLOAT_FIELDS, HASHED_FIELDS, NULL_FLOAT, OTHER_FIELDS
from sprout.ledger.schema import receipts_table
from sprout.receipt import Receipt

RECEIPT_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Receipt))
#: How SQLAlchemy stores a datetime in SQLite (a test checks that it still does).
_DT_FORMAT = "%04d-%02d-%02d %02d:%02d:%02d.%06d"
#: PostgreSQL's INTEGER range; SQLite would take more, and both must store the same.
_INT32 = 2**31

#: A receipt ready to insert: (idempotency key, column values, hashed content: the JSON
#: values and the packed floats of :func:`sprout.ledger.chain.canonical_content`).
Prepared = tuple[tuple[datetime, str], tuple[Any, ...], tuple[Any, ...], str]


class InvalidReceipt(Exception):
    """A receipt whose values its columns cannot hold (it is set aside, never chained)."""


def canonical_json(obj: Any) -> str:
    """Canonical JSON of ``obj``: sorted keys, no spaces, no NaN/Infinity.

    Raises:
        ValueError, TypeError: ``obj`` is not plain JSON data.
    """
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def params_sha256(params: Any) -> str:
    """Hex SHA-256 of the canonical JSON of ``params``."""
    return hashlib.sha256(canonical_json(params).encode("utf-8")).hexdigest()


#: A receipt's field values, in :data:`RECEIPT_FIELDS` order.
_receipt_values = operator.attrgetter(*RECEIPT_FIELDS)


def json_dict(receipt: Receipt) -> dict[str, Any]:
    """:meth:`Receipt.to_json_dict`, shallow (its fields are scalars; ``asdict``'s deep copy
    costs more than the journal's disk write)."""
    try:
        out = dict(zip(RECEIPT_FIELDS, _receipt_values(receipt), strict=True))
        for key in ("created_at", "ci_time"):
            out[key] = out[key].isoformat()
        return out
    except Exception:  # a field of the wrong type: keep what there is rather than nothing
        return {name: getattr(receipt, name, None) for name in RECEIPT_FIELDS}


def prepared_record(row: Prepared) -> dict[str, Any]:
    """A prepared receipt back as the JSON record of :meth:`Receipt.to_json_dict`."""
    record = dict(zip(HASHED_FIELDS, row[1], strict=True))
    for name in ("created_at", "ci_time"):
        value = record[name]
        # SQLite's stored text is UTC: say so, so that the record reads back as the instant.
        record[name] = (
            value.isoformat() if isinstance(value, datetime) else f"{value[:10]}T{value[11:]}+00:00"
        )
    return record


def json_line(record: dict[str, Any]) -> str:
    """One spool or journal line."""
    return json.dumps(record, default=str) + "\n"


_Getter = Callable[[Sequence[Any]], tuple[Any, ...]]
_NULL_FLOATS = (NULL_FLOAT,)


def _tuple_getter(indexes: Sequence[int]) -> _Getter:
    """``operator.itemgetter(*indexes)``, but a tuple for any number of indexes."""
    if len(indexes) >= 2:
        return operator.itemgetter(*indexes)
    return lambda seq: tuple(seq[i] for i in indexes)


def make_preparer(dialect: Any) -> Callable[[Receipt], Prepared]:
    """A function that validates a receipt and converts it for ``dialect`` and for hashing.

    Validation is what both backends would enforce (column lengths, 32-bit integers, no NUL
    in text, finite floats, datetimes), so a receipt that passes is stored alike on SQLite
    and PostgreSQL and hashes alike when read back, and one that fails never takes a chain
    position. This runs for every receipt, so it works on groups of fields at C speed; on
    SQLite the insert parameters double as the hashed content. The result equals
    :func:`sprout.ledger.chain.canonical_content` (a test checks).

    The function raises :class:`InvalidReceipt` for a receipt its columns cannot hold.
    """
    # SQLite stores datetimes as text (SQLAlchemy's format, which to_text reproduces).
    sqlite_text = dialect.name == "sqlite"
    getter = operator.attrgetter(*HASHED_FIELDS)
    index = {name: i for i, name in enumerate(HASHED_FIELDS)}
    req_str = [index[n] for n, k in FIELD_KINDS if k == "str"]
    req_limits = tuple(receipts_table.c[HASHED_FIELDS[i]].type.length for i in req_str)
    opt_str = [
        (index[n], n, receipts_table.c[n].type.length) for n, k in FIELD_KINDS if k == "str?"
    ]
    ints = [(index[n], n) for n, k in FIELD_KINDS if k.startswith("int")]
    float_indexes = [index[n] for n in FLOAT_FIELDS]
    float_get = operator.itemgetter(*float_indexes)
    others_get = operator.itemgetter(*(index[n] for n in OTHER_FIELDS))
    pack = struct.Struct(f"<{len(FLOAT_FIELDS)}d").pack
    created_index, ci_index = index["created_at"], index["ci_time"]
    others_created = OTHER_FIELDS.index("created_at")
    others_ci = OTHER_FIELDS.index("ci_time")
    min_limit = min(req_limits + tuple(limit for _, _, limit in opt_str))
    int_get = operator.itemgetter(*(i for i, _ in ints))
    n_floats = len(float_indexes)
    # Per signature (the types of a receipt's values, so also which ones are None): getters
    # of its present strings, and of its present floats and its floats with NaN for None
    # (None when all are present), so that optional fields cost no per-value Python.
    plans: dict[tuple[type, ...], tuple[_Getter, _Getter | None, _Getter | None]] = {}

    def make_plan(signature: tuple[type, ...]) -> tuple[_Getter, _Getter | None, _Getter | None]:
        str_indexes = [*req_str, *(i for i, _, _ in opt_str)]
        strs = _tuple_getter([i for i in str_indexes if signature[i] is not type(None)])
        nulls = {j for j, i in enumerate(float_indexes) if signature[i] is type(None)}
        if not nulls:
            return strs, None, None
        present = _tuple_getter([j for j in range(n_floats) if j not in nulls])
        # Index n_floats is the NaN appended to the floats.
        packed = _tuple_getter([n_floats if j in nulls else j for j in range(n_floats)])
        return strs, present, packed

    # ci_time repeats across the receipts of one carbon reading: convert it once.
    last_ci: list[tuple[Any, Any, str]] = [(None, None, "")]

    def check_types(values: Sequence[Any]) -> None:
        for (name, kind), v in zip(FIELD_KINDS, values, strict=True):
            if v is None:
                if kind.endswith("?"):
                    continue
                raise InvalidReceipt(f"{name} is missing")
            code = kind[0]
            if (
                (code == "s" and type(v) is not str)
                or (code == "f" and type(v) not in (float, int))
                or (code == "i" and type(v) is not int)
                or (code == "d" and not isinstance(v, datetime))
            ):
                raise InvalidReceipt(f"{name} must be a {kind.rstrip('?')}, got {type(v).__name__}")

    def check_strings(values: Sequence[Any]) -> None:
        for i, limit in zip(req_str, req_limits, strict=True):
            v = values[i]
            if len(v) > limit or "\x00" in v:
                raise InvalidReceipt(f"{HASHED_FIELDS[i]}: longer than {limit} or contains NUL")
        for i, name, limit in opt_str:
            v = values[i]
            if v is not None and (len(v) > limit or "\x00" in v):
                raise InvalidReceipt(f"{name}: longer than {limit} or contains NUL")

    def check_numbers(values: Sequence[Any]) -> None:
        for i, name in ints:
            v = values[i]
            if v is not None and not -_INT32 <= v < _INT32:
                raise InvalidReceipt(f"{name} must fit 32 bits, got {v}")
        for i in float_indexes:
            v = values[i]
            if v is not None and v - v != 0.0:
                raise InvalidReceipt(f"{HASHED_FIELDS[i]} must be finite, got {v!r}")

    def to_text(v: datetime) -> tuple[datetime, str]:
        utc = v if v.tzinfo is UTC else v.astimezone(UTC) if v.tzinfo else v.replace(tzinfo=UTC)
        # The text SQLite stores (as SQLAlchemy writes it), which is also the hashed form.
        return utc, _DT_FORMAT % (
            utc.year,
            utc.month,
            utc.day,
            utc.hour,
            utc.minute,
            utc.second,
            utc.microsecond,
        )

    def prepare(receipt: Receipt) -> Prepared:
        values = getter(receipt)
        signature = tuple(map(type, values))
        plan = plans.get(signature)
        if plan is None:
            check_types(values)
            plan = make_plan(signature)
            if len(plans) < 4096:
                plans[signature] = plan
        strs_get, present_get, packed_get = plan
        # Cheap checks over whole groups; the slow ones run only to find what failed.
        strs = strs_get(values)
        if max(map(len, strs)) > min_limit or "\x00" in "".join(strs):
            check_strings(values)
        for v in int_get(values):
            if v is not None and not -_INT32 <= v < _INT32:
                check_numbers(values)
        floats = float_get(values)
        if present_get is None or packed_get is None:
            present = packed = floats
        else:
            present = present_get(floats)
            packed = packed_get(floats + _NULL_FLOATS)
        total = sum(present)
        if total - total != 0.0:  # some value is NaN or infinite (or the sum overflowed)
            check_numbers(values)
        params = list(values)
        if 0.0 in present:  # -0.0 == 0.0: store and hash every zero as +0.0
            packed = tuple(0.0 if v == 0.0 else v for v in packed)
            for i, v in zip(float_indexes, floats, strict=True):
                if v == 0.0:
                    params[i] = 0.0
        floats_hex = pack(*packed).hex()
        utc_created, created_text = to_text(values[created_index])
        params[created_index] = created_text if sqlite_text else utc_created
        ci_time = values[ci_index]
        cached = last_ci[0]
        if cached[0] is not ci_time:
            cached = last_ci[0] = (ci_time, *to_text(ci_time))
        params[ci_index] = cached[2] if sqlite_text else cached[1]
        if sqlite_text:
            others: Sequence[Any] = others_get(params)
        else:
            others = list(others_get(params))
            others[others_created] = created_text
            others[others_ci] = cached[2]
        # Tuples only: holding nothing but atoms, they drop out of the cyclic GC's sight, which
        # otherwise walks every queued receipt again and again (a quarter of the ingest time).
        return (utc_created, values[0]), tuple(params), tuple(others), floats_hex

    return prepare


__all__ = [
    "RECEIPT_FIELDS",
    "InvalidReceipt",
    "Prepared",
    "canonical_json",
    "json_dict",
    "json_line",
    "make_preparer",
    "params_sha256",
    "prepared_record",
]
