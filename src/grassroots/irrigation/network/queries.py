"""Reads of the network for pages and the API: lists, GeoJSON, latest telemetry per structure.

Telemetry tables belong to grassroots.irrigation.telemetry; they are looked up by name and read
defensively, so the network pages work in a build (or a database) without them.
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import Select, Table, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from grassroots.db import Base
from grassroots.irrigation.network.models import (
    Canal,
    CanalLevel,
    IrrigatedField,
    PumpUnit,
    Structure,
    StructureKind,
    WaterUserAssociation,
    WuaTurnout,
)
from grassroots.kernel.errors import NotFound

log = logging.getLogger(__name__)

READING_TABLE = "irr_reading"
TELEMETRY_MODELS = "grassroots.irrigation.telemetry.models"
# A reading older than this is history, not the station's "latest" state.
LATEST_WINDOW = timedelta(days=30)
LEVEL_ORDER = {CanalLevel.MAIN: 0, CanalLevel.BRANCH: 1, CanalLevel.LATERAL: 2}


@dataclass(frozen=True)
class LatestReading:
    quantity: str
    value: float
    observed_at: datetime
    quality: int


@dataclass
class StructureStatus:
    """What the map and schematic show next to a structure."""

    readings: list[LatestReading] = field(default_factory=list)
    device: dict[str, Any] = field(default_factory=dict)
    last_volume_day: date | None = None
    last_volume_m3: int | None = None


def config_of(structure: Structure) -> dict[str, Any]:
    value = json.loads(structure.config or "{}")
    return value if isinstance(value, dict) else {}


def canals(*, session: Session) -> list[Canal]:
    rows = session.scalars(select(Canal)).all()
    return sorted(rows, key=lambda c: (LEVEL_ORDER[c.level], c.code))


def structures(*, session: Session, kind: StructureKind | None = None) -> list[Structure]:
    stmt = select(Structure).order_by(Structure.code)
    if kind is not None:
        stmt = stmt.where(Structure.kind == kind)
    return list(session.scalars(stmt))


def structure_by_code(*, session: Session, code: str) -> Structure:
    structure = session.scalar(select(Structure).where(Structure.code == code))
    if structure is None:
        raise NotFound("irrigation.network.structure_not_found", code=code)
    return structure


def pump_units(*, session: Session, station_id: int) -> list[PumpUnit]:
    return list(session.scalars(select(PumpUnit).where(PumpUnit.station_id == station_id)
                                .order_by(PumpUnit.number)))


def wuas(*, session: Session) -> list[WaterUserAssociation]:
    return list(session.scalars(select(WaterUserAssociation).order_by(WaterUserAssociation.code)))


def wua_turnouts(*, session: Session) -> dict[int, list[int]]:
    """Association id → the ids of the turnouts it takes water at."""
    served: dict[int, list[int]] = {}
    for wua_id, structure_id in session.execute(select(WuaTurnout.wua_id,
                                                       WuaTurnout.structure_id)):
        served.setdefault(wua_id, []).append(structure_id)
    return served


def fields(*, session: Session) -> list[IrrigatedField]:
    return list(session.scalars(select(IrrigatedField).order_by(IrrigatedField.code)))


def counts(*, session: Session) -> dict[str, Any]:
    """How many of each thing the network holds, and the irrigated area in mu."""
    by_kind = {kind: n for kind, n in session.execute(
        select(Structure.kind, func.count(Structure.id)).group_by(Structure.kind))}
    result: dict[str, Any] = {kind.value: int(by_kind.get(kind, 0)) for kind in StructureKind}
    by_level = {level: n for level, n in session.execute(
        select(Canal.level, func.count(Canal.id)).group_by(Canal.level))}
    result.update({f"canal_{level.value}": int(by_level.get(level, 0)) for level in CanalLevel})
    result["turnouts"] = session.scalar(select(func.count(Structure.id))
                                        .where(Structure.is_turnout.is_(True))) or 0
    result["pump_units"] = session.scalar(select(func.count(PumpUnit.id))) or 0
    result["wuas"] = session.scalar(select(func.count(WaterUserAssociation.id))) or 0
    result["fields"] = session.scalar(select(func.count(IrrigatedField.id))) or 0
    result["area_mu"] = float(session.scalar(select(func.sum(IrrigatedField.area_mu))) or 0.0)
    return result


# --- telemetry, read defensively -----------------------------------------------------------


def _telemetry_tables() -> tuple[Table | None, Table | None]:
    """The reading and device-state tables if the telemetry package declares them."""
    try:
        module = importlib.import_module(TELEMETRY_MODELS)
    except ImportError:
        return None, None
    device_model = getattr(module, "DeviceState", None)
    device_table = getattr(device_model, "__table__", None)
    reading = Base.metadata.tables.get(READING_TABLE)
    if reading is not None and not {"structure_id", "quantity", "observed_at",
                                    "value"} <= set(reading.c.keys()):
        reading = None
    if device_table is not None and "structure_id" not in device_table.c:
        device_table = None
    return reading, device_table if isinstance(device_table, Table) else None


def _rows(session: Session, stmt: Select[Any]) -> Sequence[Any]:
    """Run a read that may hit a table this database lacks; an error means "no data"."""
    try:
        with session.begin_nested():
            return session.execute(stmt).all()
    except SQLAlchemyError as exc:
        log.warning("telemetry read failed: %s", type(exc).__name__)
        return []


def latest_readings(*, session: Session, structure_ids: Sequence[int],
                    now: datetime) -> dict[int, list[LatestReading]]:
    """The newest reading of each quantity per structure, within LATEST_WINDOW of now."""
    reading, _ = _telemetry_tables()
    if reading is None or not structure_ids:
        return {}
    since = now - LATEST_WINDOW
    newest = (select(reading.c.structure_id, reading.c.quantity,
                     func.max(reading.c.observed_at).label("at"))
              .where(reading.c.structure_id.in_(structure_ids), reading.c.observed_at >= since)
              .group_by(reading.c.structure_id, reading.c.quantity).subquery())
    quality = reading.c.quality if "quality" in reading.c else None
    columns = [reading.c.structure_id, reading.c.quantity, reading.c.observed_at,
               reading.c.value]
    stmt = select(*columns, *([quality] if quality is not None else [])).join(
        newest, (reading.c.structure_id == newest.c.structure_id)
        & (reading.c.quantity == newest.c.quantity) & (reading.c.observed_at == newest.c.at))
    result: dict[int, list[LatestReading]] = {}
    for row in _rows(session, stmt):
        if row[3] is None:
            continue
        quality_value = row[4] if len(row) > 4 else 0
        result.setdefault(row[0], []).append(LatestReading(
            str(getattr(row[1], "value", row[1])), float(row[3]), row[2],
            int(quality_value) if isinstance(quality_value, int) else 0))
    for values in result.values():
        values.sort(key=lambda r: r.quantity)
    return result


def device_states(*, session: Session, structure_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """Each structure's device-state row as a plain dict (whatever columns it has)."""
    _, table = _telemetry_tables()
    if table is None or not structure_ids:
        return {}
    stmt = select(table).where(table.c.structure_id.in_(structure_ids))
    states: dict[int, dict[str, Any]] = {}
    for row in _rows(session, stmt):
        values = {key: _plain(value) for key, value in row._mapping.items()
                  if key not in ("id", "structure_id")}
        states[row._mapping["structure_id"]] = values
    return states


def _plain(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if hasattr(value, "value"):  # enums
        return value.value
    return value


def reading_series(*, session: Session, structure_id: int, since: datetime,
                   limit: int = 20_000) -> dict[str, list[tuple[datetime, float]]]:
    """A structure's readings since a time, by quantity, oldest first."""
    reading, _ = _telemetry_tables()
    if reading is None:
        return {}
    stmt = (select(reading.c.quantity, reading.c.observed_at, reading.c.value)
            .where(reading.c.structure_id == structure_id, reading.c.observed_at >= since)
            .order_by(reading.c.observed_at).limit(limit))
    series: dict[str, list[tuple[datetime, float]]] = {}
    for quantity, observed_at, value in _rows(session, stmt):
        if value is not None:
            series.setdefault(str(getattr(quantity, "value", quantity)), []).append(
                (observed_at, float(value)))
    return series


# --- GeoJSON ---------------------------------------------------------------------------------


def _feature(feature_id: str, geometry: dict[str, Any], properties: dict[str, Any]
             ) -> dict[str, Any]:
    return {"type": "Feature", "id": feature_id, "geometry": geometry, "properties": properties}


def network_geojson(*, session: Session, status: Mapping[int, StructureStatus] | None = None,
                    include_fields: bool = True) -> dict[str, Any]:
    """Canals, structures (with their latest state, if given) and fields as GeoJSON."""
    canal_list = canals(session=session)
    canal_code = {c.id: c.code for c in canal_list}
    features: list[dict[str, Any]] = []
    for canal in canal_list:
        features.append(_feature(f"canal:{canal.code}", json.loads(canal.geometry), {
            "layer": "canal", "code": canal.code, "name": canal.name, "level": canal.level.value,
            "parent": canal_code.get(canal.parent_id) if canal.parent_id else None,
            "length_km": canal.length_km, "design_capacity_m3s": canal.design_capacity_m3s,
            "lining": canal.lining}))
    status = status or {}
    for s in structures(session=session):
        state = status.get(s.id, StructureStatus())
        features.append(_feature(f"structure:{s.code}",
                                 {"type": "Point", "coordinates": [s.lon, s.lat]}, {
            "layer": "structure", "code": s.code, "name": s.name, "kind": s.kind.value,
            "canal": canal_code.get(s.canal_id) if s.canal_id else None,
            "chainage_km": s.chainage_km, "is_turnout": s.is_turnout,
            "water_use": s.water_use.value if s.water_use else None,
            "readings": [{"quantity": r.quantity, "value": r.value,
                          "observed_at": r.observed_at.isoformat(), "quality": r.quality}
                         for r in state.readings],
            "device": state.device,
            "last_volume_day": state.last_volume_day.isoformat() if state.last_volume_day
            else None,
            "last_volume_m3": state.last_volume_m3}))
    if include_fields:
        wua_code = {w.id: w.code for w in wuas(session=session)}
        for f in fields(session=session):
            geometry = (json.loads(f.polygon) if f.polygon
                        else {"type": "Point", "coordinates": [f.lon, f.lat]})
            features.append(_feature(f"field:{f.code}", geometry, {
                "layer": "field", "code": f.code, "name": f.name, "area_mu": f.area_mu,
                "crop": f.crop.value, "wua": wua_code.get(f.wua_id),
                "centroid": [f.lon, f.lat]}))
    return {"type": "FeatureCollection", "features": features}
