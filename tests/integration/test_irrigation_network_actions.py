"""Network writes: each creates one audited object, and refuses what the account cannot use."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from tests.integration.irrigation_support import make_user

from grassroots.irrigation.accounting import models as accounting_models  # noqa: F401
from grassroots.irrigation.network import actions, queries
from grassroots.irrigation.network.models import (
    CanalLevel,
    Crop,
    IrrigatedField,
    Structure,
    StructureKind,
    WaterUse,
)
from grassroots.irrigation.network.schemas import (
    CanalIn,
    FieldIn,
    NetworkIn,
    PumpUnitIn,
    StructureIn,
    WuaIn,
)
from grassroots.kernel.audit.chain import verify_chain
from grassroots.kernel.audit.models import AuditRow
from grassroots.kernel.auth.roles import Role
from grassroots.kernel.errors import Conflict, NotFound, PermissionDenied, ValidationFailed
from grassroots.runtime import Runtime

MAIN = CanalIn(code="MC", name="总干渠", level=CanalLevel.MAIN, length_km=10,
               design_capacity_m3s=5, lining="混凝土板衬砌",
               path=[(106.70, 39.40), (106.60, 39.41)])
BRANCH = CanalIn(code="B1", name="一支渠", level=CanalLevel.BRANCH, parent_code="MC",
                 length_km=5, design_capacity_m3s=1.2, lining="土渠",
                 path=[(106.65, 39.405), (106.65, 39.36)])


def _turnout(**changes: object) -> StructureIn:
    values: dict[str, object] = {
        "code": "G-B1-L01", "name": "一支一斗斗口闸", "kind": StructureKind.INTEGRATED_GATE,
        "canal_code": "B1", "chainage_km": 0.8, "lon": 106.65, "lat": 39.398,
        "is_turnout": True, "water_use": WaterUse.AGRICULTURE, "sl651_address": "0015010001",
        "config": {"gate_width_m": 0.7, "discharge_coefficient": 0.61}}
    values.update(changes)
    return StructureIn.model_validate(values)


def _audit(session: Session, action: str) -> list[AuditRow]:
    return list(session.scalars(select(AuditRow).where(AuditRow.action == action)))


def _network(session: Session, runtime: Runtime) -> None:
    actions.create_canal(session=session, runtime=runtime, actor="test", data=MAIN)
    actions.create_canal(session=session, runtime=runtime, actor="test", data=BRANCH)


def test_creating_a_canal_stores_its_geometry_and_writes_one_audit_row(
        session: Session, runtime: Runtime) -> None:
    canal = actions.create_canal(session=session, runtime=runtime, actor="test", data=MAIN)
    geometry = json.loads(canal.geometry)
    assert geometry == {"type": "LineString", "coordinates": [[106.7, 39.4], [106.6, 39.41]]}
    rows = _audit(session, "irrigation:canal:create")
    assert len(rows) == 1 and rows[0].object_id == str(canal.id) and rows[0].actor == "test"
    assert verify_chain(session=session, runtime=runtime).ok


def test_a_branch_must_hang_from_the_main_canal(session: Session, runtime: Runtime) -> None:
    with pytest.raises(NotFound):
        actions.create_canal(session=session, runtime=runtime, actor="test", data=BRANCH)
    actions.create_canal(session=session, runtime=runtime, actor="test", data=MAIN)
    orphan = BRANCH.model_copy(update={"parent_code": None})
    with pytest.raises(ValidationFailed):
        actions.create_canal(session=session, runtime=runtime, actor="test", data=orphan)


def test_a_canal_code_is_used_once(session: Session, runtime: Runtime) -> None:
    actions.create_canal(session=session, runtime=runtime, actor="test", data=MAIN)
    with pytest.raises(Conflict):
        actions.create_canal(session=session, runtime=runtime, actor="test", data=MAIN)
    assert len(_audit(session, "irrigation:canal:create")) == 1


def test_a_turnout_is_placed_with_its_device_and_config(session: Session,
                                                        runtime: Runtime) -> None:
    _network(session, runtime)
    structure = actions.create_structure(session=session, runtime=runtime, actor="test",
                                         data=_turnout(outlet_canal_code="B1"))
    assert structure.canal_id is not None and structure.outlet_canal_id == structure.canal_id
    assert queries.config_of(structure)["discharge_coefficient"] == 0.61
    assert len(_audit(session, "irrigation:structure:create")) == 1


def test_a_turnout_without_a_water_use_is_refused(session: Session, runtime: Runtime) -> None:
    _network(session, runtime)
    with pytest.raises(ValidationFailed):
        actions.create_structure(session=session, runtime=runtime, actor="test",
                                 data=_turnout(water_use=None))
    assert session.scalar(select(func.count(Structure.id))) == 0


@pytest.mark.parametrize("config", [{}, {"throat_width_m": 0}, {"throat_width_m": 9.9}])
def test_a_flume_needs_a_throat_width_it_can_be_rated_with(
        session: Session, runtime: Runtime, config: dict[str, float]) -> None:
    _network(session, runtime)
    flume = _turnout(code="F-1", kind=StructureKind.PARSHALL_FLUME, config=config)
    with pytest.raises(ValidationFailed):
        actions.create_structure(session=session, runtime=runtime, actor="test", data=flume)


def test_changing_a_structure_config_audits_before_and_after(session: Session,
                                                             runtime: Runtime) -> None:
    _network(session, runtime)
    actions.create_structure(session=session, runtime=runtime, actor="test", data=_turnout())
    new = {"gate_width_m": 0.7, "discharge_coefficient": 0.6, "max_step_m": 0.05}
    actions.update_structure_config(session=session, runtime=runtime, actor="test",
                                    code="G-B1-L01", config=new)
    row = _audit(session, "irrigation:structure:config")[0]
    detail = json.loads(row.detail)
    assert detail["before"]["discharge_coefficient"] == 0.61
    assert detail["after"] == new
    with pytest.raises(ValidationFailed):
        actions.update_structure_config(session=session, runtime=runtime, actor="test",
                                        code="G-B1-L01", config={"gate_width_m": 0.7})


def test_pump_units_belong_to_a_pump_station(session: Session, runtime: Runtime) -> None:
    _network(session, runtime)
    actions.create_structure(session=session, runtime=runtime, actor="test", data=StructureIn(
        code="PS", name="泵站", kind=StructureKind.PUMP_STATION, outlet_canal_code="MC",
        lon=106.71, lat=39.4, mqtt_device_id="ps"))
    unit = PumpUnitIn(number=1, rated_flow_m3s=1.6, rated_head_m=72, rated_power_kw=1600)
    actions.add_pump_unit(session=session, runtime=runtime, actor="test", station_code="PS",
                          data=unit)
    with pytest.raises(Conflict):
        actions.add_pump_unit(session=session, runtime=runtime, actor="test",
                              station_code="PS", data=unit)
    actions.create_structure(session=session, runtime=runtime, actor="test", data=_turnout())
    with pytest.raises(ValidationFailed):
        actions.add_pump_unit(session=session, runtime=runtime, actor="test",
                              station_code="G-B1-L01", data=unit)
    station = queries.structure_by_code(session=session, code="PS")
    assert [u.rated_flow_m3s for u in queries.pump_units(session=session,
                                                         station_id=station.id)] == [1.6]


def test_an_association_and_its_field_are_tied_to_a_turnout(session: Session,
                                                            runtime: Runtime) -> None:
    _network(session, runtime)
    actions.create_structure(session=session, runtime=runtime, actor="test", data=_turnout())
    wua = actions.create_wua(session=session, runtime=runtime, actor="test", data=WuaIn(
        code="WUA-01", name="测试用水户协会", canal_code="B1", turnout_codes=["G-B1-L01"]))
    field = actions.create_field(session=session, runtime=runtime, actor="test", data=FieldIn(
        code="F1", name="1号地", wua_code="WUA-01", turnout_code="G-B1-L01", area_mu=420,
        crop=Crop.MAIZE, lon=106.655, lat=39.397,
        ring=[(106.65, 39.396), (106.66, 39.396), (106.66, 39.398), (106.65, 39.398)]))
    polygon = json.loads(field.polygon or "{}")
    assert polygon["type"] == "Polygon"
    assert polygon["coordinates"][0][0] == polygon["coordinates"][0][-1]
    assert queries.wua_turnouts(session=session)[wua.id] == [field.turnout_id]
    assert session.scalar(select(func.sum(IrrigatedField.area_mu))) == 420


def test_only_an_irrigation_dispatcher_edits_the_network(session: Session,
                                                         runtime: Runtime) -> None:
    grid_worker = make_user(session, runtime, Role.GRID_WORKER)
    with pytest.raises(PermissionDenied):
        actions.create_canal(session=session, runtime=runtime, actor=grid_worker, data=MAIN)
    dispatcher = make_user(session, runtime, Role.IRRIGATION_DISPATCHER)
    actions.create_canal(session=session, runtime=runtime, actor=dispatcher, data=MAIN)
    assert _audit(session, "irrigation:canal:create")[0].actor == dispatcher.username


def test_importing_a_network_creates_what_is_missing_with_one_audit_row(
        session: Session, runtime: Runtime) -> None:
    network = NetworkIn(canals=[MAIN, BRANCH], structures=[_turnout()],
                        wuas=[WuaIn(code="WUA-01", name="测试用水户协会",
                                    turnout_codes=["G-B1-L01"])])
    assert actions.import_network(session=session, runtime=runtime, actor="test",
                                  data=network) == {"canals": 2, "structures": 1,
                                                    "pump_units": 0, "wuas": 1, "fields": 0}
    assert len(_audit(session, "irrigation:network:import")) == 1
    again = actions.import_network(session=session, runtime=runtime, actor="test", data=network)
    assert not any(again.values())
    assert len(_audit(session, "irrigation:network:import")) == 1


def test_an_import_with_one_bad_item_creates_nothing(session: Session,
                                                     runtime: Runtime) -> None:
    network = NetworkIn(canals=[MAIN, BRANCH],
                        structures=[_turnout(), _turnout(code="G-2", water_use=None,
                                                         sl651_address="0015010002")])
    with pytest.raises(ValidationFailed):
        actions.import_network(session=session, runtime=runtime, actor="test", data=network)
    assert queries.canals(session=session) == []
    assert _audit(session, "irrigation:network:import") == []
