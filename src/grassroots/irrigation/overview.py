"""What the map, schematic and station pages show next to each structure, from every source."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.orm import Session

from grassroots.irrigation.accounting.queries import last_volumes
from grassroots.irrigation.network.models import Structure
from grassroots.irrigation.network.queries import (
    StructureStatus,
    device_states,
    latest_readings,
)


def structure_status(*, session: Session, structure_list: Sequence[Structure],
                     now: datetime) -> dict[int, StructureStatus]:
    """Latest readings and device state (telemetry) and the last daily volume (account)."""
    ids = [s.id for s in structure_list]
    readings = latest_readings(session=session, structure_ids=ids, now=now)
    devices = device_states(session=session, structure_ids=ids)
    volumes = last_volumes(session=session, structure_ids=ids)
    status: dict[int, StructureStatus] = {}
    for structure_id in ids:
        day, volume = volumes.get(structure_id, (None, None))
        status[structure_id] = StructureStatus(readings.get(structure_id, []),
                                               devices.get(structure_id, {}), day, volume)
    return status
