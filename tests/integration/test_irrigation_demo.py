"""The demo district in the database: the published counts, addressing, idempotence."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from grassroots.irrigation.accounting import models as accounting_models  # noqa: F401
from grassroots.irrigation.demo import seed_irrigation_demo
from grassroots.irrigation.network import queries
from grassroots.irrigation.network.models import (
    IrrigatedField,
    Structure,
    StructureKind,
    WaterUse,
    WuaTurnout,
)
from grassroots.kernel.audit.chain import verify_chain
from grassroots.kernel.audit.models import AuditRow
from grassroots.runtime import Runtime


def test_the_demo_district_has_the_published_structures_and_area(session: Session,
                                                                 runtime: Runtime) -> None:
    result = seed_irrigation_demo(runtime)
    counts = queries.counts(session=session)
    assert (counts["pump_station"], counts["integrated_gate"], counts["smart_hoist"],
            counts["parshall_flume"], counts["soil_moisture"], counts["weather"]) == (
        1, 39, 13, 27, 2, 2)
    assert counts["area_mu"] == 85_000
    assert counts["canal_main"] == 1 and counts["canal_branch"] >= 3
    assert counts["wuas"] >= 3 and counts["pump_units"] >= 2
    assert result["pump_station"] == 1 and result["area_mu"] == 85_000


def test_the_demo_serves_agriculture_industry_and_ecology(session: Session,
                                                         runtime: Runtime) -> None:
    seed_irrigation_demo(runtime)
    uses = {use for (use,) in session.execute(
        select(Structure.water_use).where(Structure.is_turnout.is_(True)))}
    assert uses == set(WaterUse)


def test_every_demo_field_takes_water_at_a_turnout_of_its_own_association(
        session: Session, runtime: Runtime) -> None:
    seed_irrigation_demo(runtime)
    served = {(w, s) for w, s in session.execute(select(WuaTurnout.wua_id,
                                                        WuaTurnout.structure_id))}
    for field in session.scalars(select(IrrigatedField)):
        assert (field.wua_id, field.turnout_id) in served, field.code
        assert field.polygon is not None


def test_the_demo_sits_on_the_yellow_river_in_alxa_left_banner(session: Session,
                                                              runtime: Runtime) -> None:
    seed_irrigation_demo(runtime)
    lon_min, lon_max, lat_min, lat_max = session.execute(select(
        func.min(Structure.lon), func.max(Structure.lon), func.min(Structure.lat),
        func.max(Structure.lat))).one()
    assert 105.5 < lon_min < lon_max < 107.0
    assert 38.5 < lat_min < lat_max < 40.0
    pump = queries.structures(session=session, kind=StructureKind.PUMP_STATION)[0]
    assert pump.modbus_host == "127.0.0.1" and pump.modbus_port


def test_seeding_twice_adds_nothing(session: Session, runtime: Runtime) -> None:
    first = seed_irrigation_demo(runtime)
    audit_rows = session.scalar(select(func.count(AuditRow.id)))
    second = seed_irrigation_demo(runtime)
    assert second == first
    assert session.scalar(select(func.count(AuditRow.id))) == audit_rows
    assert verify_chain(session=session, runtime=runtime).ok
