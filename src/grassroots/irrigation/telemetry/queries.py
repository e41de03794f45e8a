"""Reads of telemetry for pages and the API: readings over a time range, device liveness."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from grassroots.irrigation.network.models import Structure
from grassroots.irrigation.telemetry.models import DeviceState, Reading
from grassroots.irrigation.telemetry.state import DeviceHealth, health_of, report_interval

DEFAULT_LIMIT = 1000
MAX_LIMIT = 50_000


def structure_ids_by_code(*, session: Session, codes: Iterable[str]) -> dict[str, int]:
    """Structure ids for the given codes (unknown codes are left out)."""
    wanted = sorted(set(codes))
    found: dict[str, int] = {}
    for start in range(0, len(wanted), 500):
        chunk = wanted[start:start + 500]
        found.update(session.execute(select(Structure.code, Structure.id)
                                     .where(Structure.code.in_(chunk))).tuples().all())
    return found


def structure_by_code(*, session: Session, code: str) -> Structure | None:
    return session.scalar(select(Structure).where(Structure.code == code))


def readings(
    *,
    session: Session,
    structure_id: int,
    quantity: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    limit: int = DEFAULT_LIMIT,
) -> Sequence[Reading]:
    """Readings of one structure, oldest first; ``start`` inclusive, ``end`` exclusive."""
    query = select(Reading).where(Reading.structure_id == structure_id)
    if quantity is not None:
        query = query.where(Reading.quantity == quantity)
    if start is not None:
        query = query.where(Reading.observed_at >= start)
    if end is not None:
        query = query.where(Reading.observed_at < end)
    query = query.order_by(Reading.observed_at, Reading.quantity).limit(min(limit, MAX_LIMIT))
    return session.scalars(query).all()


@dataclass(frozen=True, slots=True)
class DeviceRow:
    """A structure's device as the devices list shows it; ``state`` is judged at ``now``."""

    structure_id: int
    code: str
    name: str
    kind: str
    state: DeviceHealth
    last_seen_at: datetime | None
    last_reading_at: datetime | None
    last_failure_at: datetime | None
    last_error: str | None
    announced: str | None
    voltage_v: float | None
    last_source: str | None


def device_overview(*, session: Session, now: datetime) -> list[DeviceRow]:
    """Every structure with a device address or a device record, by code.

    The state is computed here from the stored times rather than read from the stored
    column, so the list is right even between two runs of the state sweeper.
    """
    query = (select(Structure, DeviceState)
             .outerjoin(DeviceState, DeviceState.structure_id == Structure.id)
             .where(or_(DeviceState.structure_id.is_not(None),
                        Structure.sl651_address.is_not(None),
                        Structure.modbus_host.is_not(None),
                        Structure.mqtt_device_id.is_not(None)))
             .order_by(Structure.code))
    rows: list[DeviceRow] = []
    for structure, state in session.execute(query).tuples():
        kind = str(getattr(structure.kind, "value", structure.kind))
        if state is None:
            rows.append(DeviceRow(structure.id, structure.code, structure.name, kind,
                                  DeviceHealth.OFFLINE, None, None, None, None, None, None,
                                  None))
            continue
        health = health_of(state, now=now,
                           interval=report_interval(structure.kind, structure.config))
        rows.append(DeviceRow(structure.id, structure.code, structure.name, kind, health,
                              state.last_seen_at, state.last_reading_at, state.last_failure_at,
                              state.last_error, state.announced, state.voltage_v,
                              state.last_source))
    return rows
