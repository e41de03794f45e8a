"""Work orders raised by the platform's own processes go through the same intake loop."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from tests.integration.command_support import (
    A_LAT,
    A_LON,
    B_LAT,
    B_LON,
    CALENDAR,
    load_categories,
    make_area,
    make_user,
    put_on_duty,
)

from grassroots.command.models import Assignment, Incident, IncidentTransition
from grassroots.command.producers import raise_work_order
from grassroots.command.states import Channel, IncidentState, UnitType
from grassroots.kernel.audit.models import AuditRow
from grassroots.kernel.auth.roles import Role
from grassroots.kernel.errors import ValidationFailed
from grassroots.runtime import Runtime

BREACH = {"canal_level": "branch"}


def count(session: Session, model: type) -> int:
    value = session.scalar(sa.select(sa.func.count()).select_from(model)) or 0
    session.rollback()
    return value


def test_an_irrigation_alarm_becomes_a_work_order_dispatched_to_the_zones_irrigation_office(
    session: Session, runtime: Runtime
) -> None:
    load_categories(session, runtime)
    area = make_area(session)
    office_a = make_user(session, Role.ZONE_RESPONDER)
    office_b = make_user(session, Role.ZONE_RESPONDER)
    zone_team = make_user(session, Role.ZONE_RESPONDER)
    now = runtime.clock.now()
    put_on_duty(session, office_a, area.zone_a, now, unit_type=UnitType.IRRIGATION_OFFICE)
    put_on_duty(session, office_b, area.zone_b, now, unit_type=UnitType.IRRIGATION_OFFICE)
    put_on_duty(session, zone_team, area.zone_a, now)

    result = raise_work_order(
        session=session, runtime=runtime, source="irrigation",
        category_code="irrigation.canal_breach", lon=A_LON, lat=A_LAT,
        description="支渠 3 号闸下游渠堤渗漏扩大", external_ref="alarm:4711",
        attributes=BREACH, calendar=CALENDAR, locator=area.locate)

    incident = result.incident
    assert result.created and result.assigned_user_ids == [office_a.id]
    assert incident.channel == Channel.IRRIGATION
    assert incident.created_by == incident.client_ref == "system:irrigation"
    assert incident.external_ref == "alarm:4711"
    assert incident.zone_id == area.zone_a.id
    assert incident.state == IncidentState.DISPATCHED
    assert incident.urgency == 1
    sent = session.scalars(sa.select(Assignment.user_id)
                           .where(Assignment.incident_id == incident.id)).all()
    assert sent == [office_a.id]
    created = session.scalars(sa.select(AuditRow).where(AuditRow.action == "incident:create")).one()
    assert created.actor == "system:irrigation"
    assert json.loads(created.detail)["channel"] == "irrigation"


def test_raising_the_same_record_again_returns_the_first_order_and_writes_nothing(
    session: Session, runtime: Runtime
) -> None:
    load_categories(session, runtime)
    area = make_area(session)
    first = raise_work_order(
        session=session, runtime=runtime, source="irrigation",
        category_code="irrigation.seepage", lon=A_LON, lat=A_LAT, description="渗漏",
        external_ref="alarm:1", calendar=CALENDAR, locator=area.locate)
    audit_rows = count(session, AuditRow)
    transitions = count(session, IncidentTransition)

    again = raise_work_order(
        session=session, runtime=runtime, source="irrigation",
        category_code="irrigation.seepage", lon=A_LON, lat=A_LAT, description="渗漏（重发）",
        external_ref="alarm:1", calendar=CALENDAR, locator=area.locate)

    assert not again.created
    assert again.incident.id == first.incident.id
    assert count(session, Incident) == 1
    assert count(session, AuditRow) == audit_rows
    assert count(session, IncidentTransition) == transitions

    other = raise_work_order(
        session=session, runtime=runtime, source="irrigation",
        category_code="irrigation.seepage", lon=A_LON, lat=A_LAT, description="另一处渗漏",
        external_ref="alarm:2", calendar=CALENDAR, locator=area.locate)
    assert other.created and count(session, Incident) == 2


def test_each_source_has_its_own_channel_and_its_own_idempotency(
    session: Session, runtime: Runtime
) -> None:
    load_categories(session, runtime)
    area = make_area(session)
    plate = raise_work_order(
        session=session, runtime=runtime, source="door_plate",
        category_code="facility.street_light", lon=B_LON, lat=B_LAT,
        description="扫码报修：门口路灯不亮", external_ref="plate:SF-0001",
        idempotency_key="scan-20260310-1", calendar=CALENDAR, locator=area.locate)
    case = raise_work_order(
        session=session, runtime=runtime, source="mediation",
        category_code="dispute.neighbour", lon=B_LON, lat=B_LAT,
        description="调解中需现场核实", external_ref="plate:SF-0001",
        idempotency_key="scan-20260310-1", calendar=CALENDAR, locator=area.locate)

    assert plate.created and case.created
    assert plate.incident.channel == Channel.DOOR_PLATE
    assert plate.incident.created_by == "system:door_plate"
    assert case.incident.channel == Channel.MEDIATION
    assert case.incident.created_by == "system:mediation"
    assert plate.incident.zone_id == case.incident.zone_id == area.zone_b.id
    rescan = raise_work_order(
        session=session, runtime=runtime, source="door_plate",
        category_code="facility.street_light", lon=B_LON, lat=B_LAT, description="再扫一次",
        external_ref="plate:SF-0001", idempotency_key="scan-20260310-1",
        calendar=CALENDAR, locator=area.locate)
    assert not rescan.created and rescan.incident.id == plate.incident.id


def test_the_database_calendar_and_regions_are_used_when_none_are_given(
    session: Session, runtime: Runtime
) -> None:
    load_categories(session, runtime)
    area = make_area(session)
    responder = make_user(session, Role.ZONE_RESPONDER)
    put_on_duty(session, responder, area.zone_b, runtime.clock.now())

    result = raise_work_order(
        session=session, runtime=runtime, source="door_plate",
        category_code="city_env.exposed_garbage", lon=B_LON, lat=B_LAT,
        description="门牌扫码上报", external_ref="plate:SF-0002")

    assert result.created
    assert result.incident.zone_id == area.zone_b.id
    assert result.incident.micro_grid_id == area.micro_b.id
    assert result.assigned_user_ids == [responder.id]


@pytest.mark.parametrize(("source", "external_ref", "message_id"), [
    ("resident", "x:1", "command.error.unknown_channel"),
    ("grid_worker", "x:1", "command.error.unknown_channel"),
    ("irrigation", "  ", "command.error.external_ref_required"),
    ("irrigation", "x" * 121, "command.error.external_ref_too_long"),
])
def test_an_unknown_source_or_a_missing_reference_is_refused(
    session: Session, runtime: Runtime, source: str, external_ref: str, message_id: str
) -> None:
    load_categories(session, runtime)
    area = make_area(session)
    with pytest.raises(ValidationFailed) as refused:
        raise_work_order(session=session, runtime=runtime, source=source,
                         category_code="irrigation.seepage", lon=A_LON, lat=A_LAT,
                         description="", external_ref=external_ref, calendar=CALENDAR,
                         locator=area.locate)
    assert refused.value.message_id == message_id
    assert count(session, Incident) == 0


def test_the_category_rules_apply_to_producers_too(session: Session, runtime: Runtime) -> None:
    load_categories(session, runtime)
    area = make_area(session)
    with pytest.raises(ValidationFailed) as refused:
        raise_work_order(session=session, runtime=runtime, source="irrigation",
                         category_code="irrigation.canal_breach", lon=A_LON, lat=A_LAT,
                         description="渠堤决口", external_ref="alarm:9", calendar=CALENDAR,
                         locator=area.locate)  # the required canal level is missing
    assert refused.value.message_id == "command.error.attribute_required"
    assert count(session, Incident) == 0
