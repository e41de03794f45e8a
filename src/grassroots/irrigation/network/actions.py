"""Every write to the network: one transaction, one audit row per object.

`actor` is the signed-in User or a string naming a system actor ("seed", "cli"); a User needs
irrigation.dispatch. An action called inside a caller's explicit `session.begin()` joins that
transaction, so the demo seed builds the whole network in one.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

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
from grassroots.irrigation.network.schemas import (
    CanalIn,
    FieldIn,
    LonLat,
    NetworkIn,
    PumpUnitIn,
    StructureIn,
    WuaIn,
)
from grassroots.irrigation.water.hydraulics import GateRating, ParshallFlume
from grassroots.kernel.audit import record
from grassroots.kernel.auth.models import User
from grassroots.kernel.auth.roles import Permission, has_permission
from grassroots.kernel.errors import Conflict, NotFound, PermissionDenied, ValidationFailed
from grassroots.kernel.units import unit_of_work as _unit_of_work

if TYPE_CHECKING:
    from grassroots.runtime import Runtime

Actor = User | str

# A canal's parent sits one level up, except that a lateral may leave the main canal directly.
ALLOWED_PARENTS: dict[CanalLevel, frozenset[CanalLevel | None]] = {
    CanalLevel.MAIN: frozenset({None}),
    CanalLevel.BRANCH: frozenset({CanalLevel.MAIN}),
    CanalLevel.LATERAL: frozenset({CanalLevel.BRANCH, CanalLevel.MAIN}),
}
GATE_KINDS = frozenset({StructureKind.INTEGRATED_GATE, StructureKind.SMART_HOIST})




def actor_name(actor: Actor) -> str:
    return actor if isinstance(actor, str) else actor.username


def _require_dispatch(actor: Actor) -> None:
    if isinstance(actor, str):
        return
    if not actor.is_active or not has_permission(actor.role, Permission.IRRIGATION_DISPATCH):
        raise PermissionDenied()


def _canal_by_code(session: Session, code: str | None) -> Canal | None:
    if code is None:
        return None
    canal = session.scalar(select(Canal).where(Canal.code == code))
    if canal is None:
        raise NotFound("irrigation.network.canal_not_found", code=code)
    return canal


def _structure_by_code(session: Session, code: str) -> Structure:
    structure = session.scalar(select(Structure).where(Structure.code == code))
    if structure is None:
        raise NotFound("irrigation.network.structure_not_found", code=code)
    return structure


def _wua_by_code(session: Session, code: str) -> WaterUserAssociation:
    wua = session.scalar(select(WaterUserAssociation).where(WaterUserAssociation.code == code))
    if wua is None:
        raise NotFound("irrigation.network.wua_not_found", code=code)
    return wua


def _taken(session: Session, column: Any, value: object) -> bool:
    return value is not None and session.scalar(select(column).where(column == value)) is not None


def _check_lonlat(points: list[LonLat]) -> None:
    for lon, lat in points:
        if not (math.isfinite(lon) and math.isfinite(lat) and -180 <= lon <= 180
                and -90 <= lat <= 90):
            raise ValidationFailed("irrigation.network.bad_coordinates")


def line_geojson(path: list[LonLat]) -> str:
    """A GeoJSON LineString with coordinates to 6 decimals (about 0.1 m)."""
    _check_lonlat(path)
    coordinates = [[round(lon, 6), round(lat, 6)] for lon, lat in path]
    return json.dumps({"type": "LineString", "coordinates": coordinates}, separators=(",", ":"))


def polygon_geojson(ring: list[LonLat]) -> str:
    """A GeoJSON Polygon from one outer ring, closed if the caller left it open."""
    _check_lonlat(ring)
    points = [[round(lon, 6), round(lat, 6)] for lon, lat in ring]
    if points[0] != points[-1]:
        points.append(points[0])
    if len(points) < 4:
        raise ValidationFailed("irrigation.network.bad_polygon")
    return json.dumps({"type": "Polygon", "coordinates": [points]}, separators=(",", ":"))


def validate_config(kind: StructureKind, config: dict[str, Any]) -> dict[str, Any]:
    """Check the settings a device's flow computation relies on; refuse what cannot be rated."""
    try:
        if kind == StructureKind.PARSHALL_FLUME:
            ParshallFlume(float(config["throat_width_m"]))
        elif kind in GATE_KINDS:
            GateRating(float(config["gate_width_m"]), float(config["discharge_coefficient"]))
    except KeyError as exc:
        raise ValidationFailed("irrigation.network.config_missing", key=exc.args[0]) from None
    except (TypeError, ValueError) as exc:
        raise ValidationFailed("irrigation.network.config_invalid", detail=str(exc)) from None
    return config


# --- builders shared by the single-object actions and the bulk import -------------------------


def _new_canal(data: CanalIn, parent: Canal | None) -> Canal:
    if (parent.level if parent else None) not in ALLOWED_PARENTS[data.level]:
        raise ValidationFailed("irrigation.network.bad_parent", code=data.code)
    return Canal(code=data.code, name=data.name, level=data.level,
                 parent_id=parent.id if parent else None, length_km=data.length_km,
                 design_capacity_m3s=data.design_capacity_m3s, lining=data.lining,
                 geometry=line_geojson(data.path))


def _checked_config(data: StructureIn) -> dict[str, Any]:
    if data.is_turnout != (data.water_use is not None):
        # A metering point is only useful to the account if we know whose water it measures.
        raise ValidationFailed("irrigation.network.turnout_needs_use", code=data.code)
    return validate_config(data.kind, data.config)


def _new_structure(data: StructureIn, canal: Canal | None, outlet: Canal | None) -> Structure:
    config = _checked_config(data)
    return Structure(
        code=data.code, name=data.name, kind=data.kind, canal_id=canal.id if canal else None,
        outlet_canal_id=outlet.id if outlet else None, chainage_km=data.chainage_km,
        lon=data.lon, lat=data.lat, is_turnout=data.is_turnout, water_use=data.water_use,
        sl651_address=data.sl651_address, modbus_host=data.modbus_host,
        modbus_port=data.modbus_port, modbus_unit=data.modbus_unit,
        mqtt_device_id=data.mqtt_device_id,
        config=json.dumps(config, ensure_ascii=False, sort_keys=True))


def _new_pump_unit(station: Structure, data: PumpUnitIn) -> PumpUnit:
    if station.kind != StructureKind.PUMP_STATION:
        raise ValidationFailed("irrigation.network.not_a_pump_station", code=station.code)
    return PumpUnit(station_id=station.id, number=data.number,
                    rated_flow_m3s=data.rated_flow_m3s, rated_head_m=data.rated_head_m,
                    rated_power_kw=data.rated_power_kw)


def _checked_turnout(structure: Structure) -> Structure:
    if not structure.is_turnout:
        raise ValidationFailed("irrigation.network.not_a_turnout", code=structure.code)
    return structure


def _new_field(data: FieldIn, wua: WaterUserAssociation, turnout: Structure | None
               ) -> IrrigatedField:
    if turnout is not None:
        _checked_turnout(turnout)
    return IrrigatedField(code=data.code, name=data.name, wua_id=wua.id,
                          turnout_id=turnout.id if turnout else None, area_mu=data.area_mu,
                          crop=data.crop, lon=data.lon, lat=data.lat,
                          polygon=polygon_geojson(data.ring) if data.ring else None)


# --- one object at a time ----------------------------------------------------------------------


def create_canal(*, session: Session, runtime: Runtime, actor: Actor, data: CanalIn,
                 source_ip: str | None = None) -> Canal:
    """Add a canal (main, branch or lateral) under its parent."""
    _require_dispatch(actor)
    with _unit_of_work(session):
        if _taken(session, Canal.code, data.code):
            raise Conflict("irrigation.network.code_taken", code=data.code)
        canal = _new_canal(data, _canal_by_code(session, data.parent_code))
        session.add(canal)
        session.flush()
        record(session, runtime=runtime, actor=actor_name(actor), action="irrigation:canal:create",
               object_type="irr_canal", object_id=canal.id, source_ip=source_ip,
               detail={"code": canal.code, "level": canal.level.value,
                       "parent": data.parent_code})
    return canal


def create_structure(*, session: Session, runtime: Runtime, actor: Actor, data: StructureIn,
                     source_ip: str | None = None) -> Structure:
    """Place a structure and its device on the network."""
    _require_dispatch(actor)
    _checked_config(data)
    with _unit_of_work(session):
        for column, value in ((Structure.code, data.code),
                              (Structure.sl651_address, data.sl651_address),
                              (Structure.mqtt_device_id, data.mqtt_device_id)):
            if _taken(session, column, value):
                raise Conflict("irrigation.network.code_taken", code=value)
        structure = _new_structure(data, _canal_by_code(session, data.canal_code),
                                   _canal_by_code(session, data.outlet_canal_code))
        session.add(structure)
        session.flush()
        record(session, runtime=runtime, actor=actor_name(actor),
               action="irrigation:structure:create", object_type="irr_structure",
               object_id=structure.id, source_ip=source_ip,
               detail={"code": structure.code, "kind": structure.kind.value,
                       "canal": data.canal_code})
    return structure


def update_structure_config(*, session: Session, runtime: Runtime, actor: Actor, code: str,
                            config: dict[str, Any], source_ip: str | None = None) -> Structure:
    """Replace a structure's device settings (throat width, calibrated Cd, thresholds)."""
    _require_dispatch(actor)
    with _unit_of_work(session):
        structure = _structure_by_code(session, code)
        validate_config(structure.kind, config)
        before = json.loads(structure.config or "{}")
        structure.config = json.dumps(config, ensure_ascii=False, sort_keys=True)
        record(session, runtime=runtime, actor=actor_name(actor),
               action="irrigation:structure:config", object_type="irr_structure",
               object_id=structure.id, source_ip=source_ip,
               detail={"code": code, "before": before, "after": config})
    return structure


def add_pump_unit(*, session: Session, runtime: Runtime, actor: Actor, station_code: str,
                  data: PumpUnitIn, source_ip: str | None = None) -> PumpUnit:
    """Add a pump set to a pump station."""
    _require_dispatch(actor)
    with _unit_of_work(session):
        station = _structure_by_code(session, station_code)
        unit = _new_pump_unit(station, data)
        taken = session.scalar(select(PumpUnit.id).where(PumpUnit.station_id == station.id,
                                                         PumpUnit.number == data.number))
        if taken is not None:
            raise Conflict("irrigation.network.code_taken", code=f"{station_code}#{data.number}")
        session.add(unit)
        session.flush()
        record(session, runtime=runtime, actor=actor_name(actor),
               action="irrigation:pump_unit:create", object_type="irr_pump_unit",
               object_id=unit.id, source_ip=source_ip,
               detail={"station": station_code, "number": data.number,
                       "rated_flow_m3s": data.rated_flow_m3s})
    return unit


def create_wua(*, session: Session, runtime: Runtime, actor: Actor, data: WuaIn,
               source_ip: str | None = None) -> WaterUserAssociation:
    """Register a water-user association and the turnouts it takes water at."""
    _require_dispatch(actor)
    with _unit_of_work(session):
        if _taken(session, WaterUserAssociation.code, data.code):
            raise Conflict("irrigation.network.code_taken", code=data.code)
        canal = _canal_by_code(session, data.canal_code)
        turnouts = [_checked_turnout(_structure_by_code(session, code))
                    for code in data.turnout_codes]
        wua = WaterUserAssociation(code=data.code, name=data.name,
                                   canal_id=canal.id if canal else None, contact=data.contact)
        session.add(wua)
        session.flush()
        session.add_all(WuaTurnout(wua_id=wua.id, structure_id=t.id) for t in turnouts)
        record(session, runtime=runtime, actor=actor_name(actor), action="irrigation:wua:create",
               object_type="irr_wua", object_id=wua.id, source_ip=source_ip,
               detail={"code": wua.code, "turnouts": data.turnout_codes})
    return wua


def create_field(*, session: Session, runtime: Runtime, actor: Actor, data: FieldIn,
                 source_ip: str | None = None) -> IrrigatedField:
    """Register an irrigated field under its association and turnout."""
    _require_dispatch(actor)
    with _unit_of_work(session):
        if _taken(session, IrrigatedField.code, data.code):
            raise Conflict("irrigation.network.code_taken", code=data.code)
        turnout = _structure_by_code(session, data.turnout_code) if data.turnout_code else None
        field = _new_field(data, _wua_by_code(session, data.wua_code), turnout)
        session.add(field)
        session.flush()
        record(session, runtime=runtime, actor=actor_name(actor),
               action="irrigation:field:create", object_type="irr_field", object_id=field.id,
               source_ip=source_ip,
               detail={"code": field.code, "wua": data.wua_code, "area_mu": data.area_mu,
                       "crop": data.crop.value})
    return field


# --- a whole network at once -------------------------------------------------------------------


def _lookup(found: dict[str, Any], code: str | None, message_id: str) -> Any:
    if code is None:
        return None
    if code not in found:
        raise NotFound(message_id, code=code)
    return found[code]


def import_network(*, session: Session, runtime: Runtime, actor: Actor, data: NetworkIn,
                   source_ip: str | None = None) -> dict[str, int]:
    """Create whatever of a network is not there yet, matched by code; one audit row.

    The same rules hold as for the single-object actions. An import that finds everything
    already present writes nothing (no audit row either), so running it again is harmless.
    Returns how many of each kind of object it created.
    """
    _require_dispatch(actor)
    created: dict[str, int] = {"canals": 0, "structures": 0, "pump_units": 0, "wuas": 0,
                               "fields": 0}
    with _unit_of_work(session):
        canals = {c.code: c for c in session.scalars(select(Canal))}
        for level in (CanalLevel.MAIN, CanalLevel.BRANCH, CanalLevel.LATERAL):
            batch = [_new_canal(c, _lookup(canals, c.parent_code,
                                           "irrigation.network.canal_not_found"))
                     for c in data.canals if c.level == level and c.code not in canals]
            session.add_all(batch)
            session.flush()
            canals.update({c.code: c for c in batch})
            created["canals"] += len(batch)

        structures = {s.code: s for s in session.scalars(select(Structure))}
        addresses = {s.sl651_address for s in structures.values()} | {
            s.mqtt_device_id for s in structures.values()}
        batch_s: list[Structure] = []
        for item in data.structures:
            if item.code in structures:
                continue
            for address in (item.sl651_address, item.mqtt_device_id):
                if address is not None and address in addresses:
                    raise Conflict("irrigation.network.code_taken", code=address)
                addresses.add(address)
            structure = _new_structure(
                item, _lookup(canals, item.canal_code, "irrigation.network.canal_not_found"),
                _lookup(canals, item.outlet_canal_code, "irrigation.network.canal_not_found"))
            structures[item.code] = structure
            batch_s.append(structure)
        session.add_all(batch_s)
        session.flush()
        created["structures"] = len(batch_s)

        have_units = {(sid, n) for sid, n in session.execute(
            select(PumpUnit.station_id, PumpUnit.number))}
        for station_code, units in data.pump_units.items():
            station = _lookup(structures, station_code, "irrigation.network.structure_not_found")
            new_units = [_new_pump_unit(station, u) for u in units
                         if (station.id, u.number) not in have_units]
            have_units |= {(station.id, u.number) for u in new_units}
            session.add_all(new_units)
            created["pump_units"] += len(new_units)

        wuas = {w.code: w for w in session.scalars(select(WaterUserAssociation))}
        batch_w: list[tuple[WaterUserAssociation, list[Structure]]] = []
        for w in data.wuas:
            if w.code in wuas:
                continue
            turnouts = [_checked_turnout(_lookup(structures, code,
                                                 "irrigation.network.structure_not_found"))
                        for code in w.turnout_codes]
            canal = _lookup(canals, w.canal_code, "irrigation.network.canal_not_found")
            wua = WaterUserAssociation(code=w.code, name=w.name,
                                       canal_id=canal.id if canal else None, contact=w.contact)
            wuas[w.code] = wua
            batch_w.append((wua, turnouts))
        session.add_all(wua for wua, _ in batch_w)
        session.flush()
        session.add_all(WuaTurnout(wua_id=wua.id, structure_id=t.id)
                        for wua, turnouts in batch_w for t in turnouts)
        created["wuas"] = len(batch_w)

        have_fields = set(session.scalars(select(IrrigatedField.code)))
        batch_f = [_new_field(f, _lookup(wuas, f.wua_code, "irrigation.network.wua_not_found"),
                              _lookup(structures, f.turnout_code,
                                      "irrigation.network.structure_not_found"))
                   for f in data.fields if f.code not in have_fields]
        session.add_all(batch_f)
        session.flush()
        created["fields"] = len(batch_f)
        if any(created.values()):
            record(session, runtime=runtime, actor=actor_name(actor),
                   action="irrigation:network:import", object_type="irr_network",
                   object_id="-", source_ip=source_ip, detail=created)
    return created
