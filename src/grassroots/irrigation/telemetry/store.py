"""Storing readings: one transaction per batch, each reading once, device state in step.

Readings are telemetry, not user writes, so no audit row is written per reading: the
audit trail covers human and API writes (the HTTP upload audits its request), while the
ingestors keep their own counters. Late and out-of-order readings are stored like any
other; a reading already stored under the same (structure, quantity, observed_at) is
left as it is (the copy stored first wins; between two copies in one batch, either may),
so redelivered messages and resent frames are harmless. A value is never overwritten:
a correction is a matter for a separate, audited action.

Batches are written in key order (sorted here, or by ORDER BY on the COPY path), so
concurrent ingest workers take index and device-state row locks in the same order and
do not deadlock each other.
On PostgreSQL a batch of ``COPY_MIN_ROWS`` or more goes through COPY into a temporary
table and one ``INSERT … SELECT … ON CONFLICT DO NOTHING``; smaller batches (and SQLite)
use an executemany ``INSERT … ON CONFLICT DO NOTHING``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Engine, and_, case, or_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.elements import ColumnElement

from grassroots.db import make_session_factory
from grassroots.irrigation.telemetry.models import DeviceState, Reading
from grassroots.irrigation.telemetry.state import (
    LIVE_SOURCES,
    Announced,
    DeviceHealth,
    Quality,
)
from grassroots.kernel.clock import utcnow

COPY_MIN_ROWS = 500
BULK_CHUNK_ROWS = 200_000
VOLTAGE_QUANTITY = "voltage_v"
_LOAD_TABLE = "irr_reading_load"
_COLUMNS = ("structure_id", "quantity", "observed_at", "value", "quality", "source",
            "received_at")


class ReadingIn(NamedTuple):
    """A reading on its way in; ``value`` None means unavailable (flag it UNAVAILABLE).

    A named tuple rather than a dataclass: ingestion builds hundreds of thousands a second.
    ``observed_at`` must be timezone-aware; the store refuses the batch otherwise.
    """

    structure_id: int
    quantity: str
    observed_at: datetime
    value: float | None
    quality: int = 0
    source: str = "sim"


@dataclass(frozen=True, slots=True)
class Contact:
    """A sign of life, a failed poll or a status word, carrying no reading of its own."""

    structure_id: int
    at: datetime
    ok: bool = True
    error: str | None = None
    announced: Announced | None = None
    source: str | None = None


@dataclass(frozen=True, slots=True)
class StoreResult:
    inserted: int
    duplicates: int

    def __add__(self, other: StoreResult) -> StoreResult:
        return StoreResult(self.inserted + other.inserted, self.duplicates + other.duplicates)


SessionSource = Engine | sessionmaker[Session]


def _factory(source: SessionSource) -> sessionmaker[Session]:
    return make_session_factory(source) if isinstance(source, Engine) else source


def store_readings(
    *,
    engine_or_session_factory: SessionSource,
    readings: Sequence[ReadingIn],
    received_at: datetime | None = None,
    contacts: Sequence[Contact] = (),
) -> StoreResult:
    """Store one batch in one transaction; returns how many were new and how many known."""
    factory = _factory(engine_or_session_factory)
    with factory() as session, session.begin():
        return insert_readings(session, readings, received_at=received_at or utcnow(),
                               contacts=contacts)


def bulk_load(
    *,
    engine_or_session_factory: SessionSource,
    readings: Iterable[ReadingIn],
    received_at: datetime | None = None,
    chunk_rows: int = BULK_CHUNK_ROWS,
) -> StoreResult:
    """Load a large, possibly lazy stream of readings, one transaction per chunk."""
    factory = _factory(engine_or_session_factory)
    at = received_at or utcnow()
    total = StoreResult(0, 0)
    iterator = iter(readings)
    while chunk := list(itertools.islice(iterator, chunk_rows)):
        with factory() as session, session.begin():
            total += insert_readings(session, chunk, received_at=at)
    return total


def insert_readings(
    session: Session,
    readings: Sequence[ReadingIn],
    *,
    received_at: datetime,
    contacts: Sequence[Contact] = (),
) -> StoreResult:
    """Write readings and device state inside the caller's transaction (the caller commits)."""
    touches = _collect(readings, contacts, received_at)
    inserted = 0
    if readings:
        if session.get_bind().dialect.name == "postgresql" and len(readings) >= COPY_MIN_ROWS:
            inserted = _copy_insert(session, readings, received_at)
        else:
            inserted = _executemany_insert(session, readings, received_at)
    _update_devices(session, touches, received_at)
    return StoreResult(inserted=inserted, duplicates=len(readings) - inserted)


def _dialect_insert(session: Session) -> Any:
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert
    if name == "sqlite":
        return sqlite.insert
    raise NotImplementedError(f"telemetry storage does not support {name}")


def _executemany_insert(session: Session, rows: Sequence[ReadingIn],
                        received_at: datetime) -> int:
    # RETURNING counts what went in: executemany's rowcount is not reliable on psycopg.
    statement = _dialect_insert(session)(Reading).on_conflict_do_nothing(
        index_elements=["structure_id", "quantity", "observed_at"]).returning(
        Reading.structure_id)
    # Key order, so that concurrent writers lock index entries in the same order.
    params = [
        {"structure_id": r[0], "quantity": r[1], "observed_at": r[2], "value": r[3],
         "quality": r[4], "source": r[5], "received_at": received_at}
        for r in sorted(rows, key=_key)
    ]
    return len(session.connection().execute(statement, params).all())


def _key(reading: ReadingIn) -> tuple[int, str, datetime]:
    return (reading[0], reading[1], reading[2])


def _copy_insert(session: Session, rows: Sequence[ReadingIn], received_at: datetime) -> int:
    connection = session.connection()
    pooled = connection.connection
    if not pooled.info.get(_LOAD_TABLE):
        # One temporary table per database connection, emptied by every commit.
        connection.exec_driver_sql(
            f"CREATE TEMP TABLE IF NOT EXISTS {_LOAD_TABLE} (structure_id integer, "
            "quantity varchar(40) COLLATE \"C\", observed_at timestamptz, value double precision, "
            "quality smallint, source varchar(8)) ON COMMIT DELETE ROWS")
        pooled.info[_LOAD_TABLE] = True
    columns = ", ".join(_COLUMNS[:-1])
    raw = pooled.driver_connection
    assert raw is not None
    with raw.cursor() as cursor:
        # Empty already if this is the transaction's first batch; not if bulk work reuses it.
        cursor.execute(f"DELETE FROM {_LOAD_TABLE}")
        with cursor.copy(f"COPY {_LOAD_TABLE} ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["int4", "varchar", "timestamptz", "float8", "int2", "varchar"])
            write = copy.write_row
            for row in rows:
                write(row)
        # ORDER BY: concurrent writers take index entries in the same order.
        cursor.execute(
            f"INSERT INTO {Reading.__tablename__} ({columns}, received_at) "
            f"SELECT {columns}, %s FROM {_LOAD_TABLE} "
            "ORDER BY structure_id, quantity, observed_at "
            "ON CONFLICT (structure_id, quantity, observed_at) DO NOTHING", (received_at,))
        return max(cursor.rowcount, 0)


# --------------------------------------------------------------------------- device state


@dataclass(slots=True)
class _Touch:
    seen_at: datetime | None = None
    failed_at: datetime | None = None
    error: str | None = None
    reading_at: datetime | None = None
    voltage_v: float | None = None
    voltage_at: datetime | None = None
    announced: Announced | None = None
    announced_at: datetime | None = None
    source: str | None = None
    # What the newest event says the state is; None: a failure alone decides nothing yet.
    state: DeviceHealth | None = None


def _later(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


_NO_RESPONSE = int(Quality.NO_RESPONSE)
_LIVE = frozenset(str(source) for source in LIVE_SOURCES)


def _collect(rows: Sequence[ReadingIn], contacts: Sequence[Contact],
             received_at: datetime) -> dict[int, _Touch]:
    """Fold a batch into one device-state change per structure (a hot loop: kept plain)."""
    touches: dict[int, _Touch] = {}
    for sid, quantity, observed_at, value, quality, source in rows:
        if observed_at.tzinfo is None:
            raise ValueError(f"naive observed_at {observed_at} for structure {sid}")
        touch = touches.get(sid)
        if touch is None:
            touch = touches[sid] = _Touch()
        if quality & _NO_RESPONSE:
            touch.failed_at = received_at
        elif source in _LIVE:
            touch.seen_at = received_at
            touch.state = DeviceHealth.ONLINE
        touch.source = source
        if value is not None:
            if touch.reading_at is None or observed_at > touch.reading_at:
                touch.reading_at = observed_at
            if quantity == VOLTAGE_QUANTITY and (
                    touch.voltage_at is None or observed_at >= touch.voltage_at):
                touch.voltage_v, touch.voltage_at = value, observed_at
    for contact in contacts:
        touch = touches.setdefault(contact.structure_id, _Touch())
        touch.source = contact.source or touch.source
        if contact.announced is not None:
            touch.announced, touch.announced_at = contact.announced, contact.at
        if contact.announced == Announced.OFFLINE:
            touch.state = DeviceHealth.OFFLINE
        elif contact.ok:
            touch.seen_at = _later(touch.seen_at, contact.at)
            touch.state = DeviceHealth.ONLINE
        else:
            touch.failed_at = _later(touch.failed_at, contact.at)
            touch.error = (contact.error or "")[:200] or None
    return touches


def _newer(new: ColumnElement[Any], old: ColumnElement[Any]) -> ColumnElement[bool]:
    return and_(new.is_not(None), or_(old.is_(None), new >= old))


def _update_devices(session: Session, touches: dict[int, _Touch], received_at: datetime) -> None:
    if not touches:
        return
    groups: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
    for sid, touch in sorted(touches.items()):
        groups[touch.state is not None].append({
            "structure_id": sid, "state": (touch.state or DeviceHealth.OFFLINE).value,
            "state_changed_at": received_at, "last_seen_at": touch.seen_at,
            "last_reading_at": touch.reading_at, "last_failure_at": touch.failed_at,
            "last_error": touch.error,
            "announced": touch.announced.value if touch.announced else None,
            "announced_at": touch.announced_at, "voltage_v": touch.voltage_v,
            "voltage_at": touch.voltage_at, "last_source": touch.source,
        })
    # A batch that says nothing about the state (a failed poll alone) leaves it for
    # refresh_states to judge with the device's own thresholds.
    for decides, group in groups.items():
        if group:
            session.connection().execute(_upsert(session, decides=decides), group)


def _upsert(session: Session, *, decides: bool) -> Any:
    statement = _dialect_insert(session)(DeviceState)
    new = statement.excluded
    old = DeviceState.__table__.c

    def later(name: str) -> ColumnElement[Any]:
        return case((_newer(new[name], old[name]), new[name]), else_=old[name])

    state: ColumnElement[Any] = new.state if decides else old.state
    return statement.on_conflict_do_update(
        index_elements=["structure_id"],
        set_={
            "state": state,
            "state_changed_at": case((state != old.state, new.state_changed_at),
                                     else_=old.state_changed_at),
            "last_seen_at": later("last_seen_at"),
            "last_reading_at": later("last_reading_at"),
            "last_failure_at": later("last_failure_at"),
            "last_error": case((_newer(new.last_failure_at, old.last_failure_at),
                                new.last_error), else_=old.last_error),
            "announced": case((_newer(new.announced_at, old.announced_at), new.announced),
                              else_=old.announced),
            "announced_at": later("announced_at"),
            "voltage_v": case((_newer(new.voltage_at, old.voltage_at), new.voltage_v),
                              else_=old.voltage_v),
            "voltage_at": later("voltage_at"),
            "last_source": case((new.last_source.is_not(None), new.last_source),
                                else_=old.last_source),
        },
    )
