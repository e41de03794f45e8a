"""Irrigation alarms: each kind opens once, clears with hysteresis, and the field kinds raise
exactly one work order in the command loop, on the irrigation channel, even under a race."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from tests.integration.command_support import ADMIN
from tests.telemetry_factories import make_structure

from grassroots.command import actions as command_actions
from grassroots.command.models import Incident, IncidentCategory
from grassroots.command.states import Channel, IncidentState
from grassroots.irrigation import alarm_models
from grassroots.irrigation import alarms as alarms_module
from grassroots.irrigation.accounting.models import DailyVolume, VolumeSource
from grassroots.irrigation.alarm_models import Alarm, AlarmKind, AlarmState
from grassroots.irrigation.alarm_views import router as alarm_router
from grassroots.irrigation.alarms import (
    WORK_ORDER_RETRY_AFTER,
    AlarmSweepResult,
    evaluate_alarms,
)
from grassroots.irrigation.network.models import Structure, StructureKind
from grassroots.irrigation.telemetry.state import Announced
from grassroots.irrigation.telemetry.store import Contact, ReadingIn, store_readings
from grassroots.kernel.audit.models import AuditRow
from grassroots.kernel.auth import actions as auth_actions
from grassroots.kernel.auth.roles import Role
from grassroots.kernel.clock import FixedClock
from grassroots.runtime import Runtime
from grassroots.web.auth import install_auth

assert alarm_models  # imported so that create_all makes irr_alarm

GATE_CONFIG = {"gate_width_m": 0.7, "discharge_coefficient": 0.6, "max_opening_m": 0.6,
               "design_flow_m3s": 0.5, "upstream_min_m": 0.42, "upstream_max_m": 1.2}
PASSWORD = "Spring-Field-42"


# --------------------------------------------------------------------------- helpers


def load_categories(session: Session, runtime: Runtime) -> None:
    command_actions.load_default_categories(session=session, runtime=runtime, actor=ADMIN)


@pytest.fixture
def categories(session: Session, runtime: Runtime) -> None:
    load_categories(session, runtime)


def gate(session: Session, *, kind: StructureKind = StructureKind.INTEGRATED_GATE,
         **config: Any) -> Structure:
    return make_structure(session, kind=kind, config=json.dumps({**GATE_CONFIG, **config}))


def report(runtime: Runtime, structure: Structure, quantity: str, *values: float,
           source: str = "sl651", minutes_apart: float = 1.0, quality: int = 0) -> None:
    """Readings oldest first, the last one observed now; received now (the device is online)."""
    now = runtime.clock.now()
    step = timedelta(minutes=minutes_apart)
    rows = [ReadingIn(structure.id, quantity, now - (len(values) - 1 - i) * step, value,
                      quality, source) for i, value in enumerate(values)]
    store_readings(engine_or_session_factory=runtime.session_factory, readings=rows,
                   received_at=now)


def advance(clock: FixedClock, minutes: float) -> None:
    clock.advance(timedelta(minutes=minutes))


def sweep(runtime: Runtime) -> AlarmSweepResult:
    return evaluate_alarms(session_factory=runtime.session_factory, runtime=runtime)


def alarms(session: Session, kind: AlarmKind | None = None) -> list[Alarm]:
    with Session(session.get_bind()) as fresh:
        query = sa.select(Alarm).order_by(Alarm.id)
        if kind is not None:
            query = query.where(Alarm.kind == kind)
        return list(fresh.scalars(query))


def incidents(session: Session) -> list[Incident]:
    with Session(session.get_bind()) as fresh:
        return list(fresh.scalars(sa.select(Incident).order_by(Incident.id)))


def category_of(session: Session, incident: Incident) -> str:
    with Session(session.get_bind()) as fresh:
        return fresh.scalars(sa.select(IncidentCategory.code)
                             .where(IncidentCategory.id == incident.category_id)).one()


# --------------------------------------------------------------------------- high level


def test_a_high_level_opens_one_alarm_and_one_canal_breach_work_order_on_the_irrigation_channel(
        session: Session, runtime: Runtime, categories: None) -> None:
    structure = gate(session)
    report(runtime, structure, "water_level_upstream_m", 1.21, 1.25)

    first = sweep(runtime)
    second = sweep(runtime)

    assert (first.opened, first.work_orders, second.opened, second.work_orders) == (1, 1, 0, 0)
    [alarm] = alarms(session)
    assert (alarm.kind, alarm.state, alarm.value, alarm.threshold) == (
        AlarmKind.HIGH_LEVEL, AlarmState.OPEN, 1.25, 1.2)
    [incident] = incidents(session)
    assert alarm.incident_id == incident.id
    assert incident.channel == Channel.IRRIGATION
    assert incident.idempotency_key == f"irr-alarm-{alarm.id}"
    assert incident.client_ref == "system:irrigation"
    assert category_of(session, incident) == "irrigation.canal_breach"
    assert (incident.lon, incident.lat) == (structure.lon, structure.lat)
    assert json.loads(incident.attributes) == {"canal_level": "main",
                                               "structure_code": structure.code}
    assert structure.code in (incident.address_text or "")


def test_a_point_outside_every_region_is_registered_and_waits_for_a_person_to_dispatch(
        session: Session, runtime: Runtime, categories: None) -> None:
    report(runtime, gate(session), "water_level_upstream_m", 1.3, 1.3)
    sweep(runtime)
    [incident] = incidents(session)
    assert incident.zone_id is None and incident.region_path == ""
    assert incident.state == IncidentState.REGISTERED


def test_one_spike_does_not_raise_a_level_alarm(session: Session, runtime: Runtime,
                                                categories: None) -> None:
    report(runtime, gate(session), "water_level_upstream_m", 0.9, 1.6)
    assert sweep(runtime).opened == 0
    assert alarms(session) == []


def test_readings_flagged_as_spikes_by_the_quality_checks_raise_nothing(
        session: Session, runtime: Runtime, categories: None) -> None:
    report(runtime, gate(session), "water_level_upstream_m", 1.6, 1.6, quality=2)
    assert sweep(runtime).opened == 0


def test_a_high_level_clears_only_once_back_past_the_hysteresis(
        session: Session, runtime: Runtime, clock: FixedClock, categories: None) -> None:
    structure = gate(session)
    report(runtime, structure, "water_level_upstream_m", 1.25, 1.25)
    sweep(runtime)
    advance(clock, 1)
    report(runtime, structure, "water_level_upstream_m", 1.17)  # under 1.2, inside 0.05
    assert sweep(runtime).cleared == 0
    advance(clock, 1)
    report(runtime, structure, "water_level_upstream_m", 1.14)
    result = sweep(runtime)

    assert result.cleared == 1
    [alarm] = alarms(session)
    assert alarm.state == AlarmState.CLEARED
    assert alarm.cleared_at == clock.now() and alarm.clear_value == 1.14
    assert alarm.version == 3  # raised, work order linked, cleared


def test_a_condition_that_returns_after_clearing_opens_a_new_alarm(
        session: Session, runtime: Runtime, clock: FixedClock, categories: None) -> None:
    structure = gate(session)
    report(runtime, structure, "water_level_upstream_m", 1.3, 1.3)
    sweep(runtime)
    advance(clock, 1)
    report(runtime, structure, "water_level_upstream_m", 1.0)
    sweep(runtime)
    advance(clock, 2)
    report(runtime, structure, "water_level_upstream_m", 1.3, 1.3)
    sweep(runtime)

    states = [a.state for a in alarms(session)]
    assert states == [AlarmState.CLEARED, AlarmState.OPEN]
    assert len(incidents(session)) == 2


# --------------------------------------------------------------------------- low level


def test_a_low_level_at_a_gate_alarms_only_while_water_is_planned_and_raises_no_work_order(
        session: Session, runtime: Runtime, categories: None) -> None:
    dry = gate(session, planned_flow_m3s=0.0)
    wet = gate(session, planned_flow_m3s=0.4)
    for structure in (dry, wet):
        report(runtime, structure, "water_level_upstream_m", 0.3, 0.3)

    result = sweep(runtime)

    [alarm] = alarms(session)
    assert (alarm.structure_id, alarm.kind, alarm.threshold) == (wet.id, AlarmKind.LOW_LEVEL,
                                                                 0.42)
    assert result.work_orders == 0 and alarm.incident_id is None and incidents(session) == []


def test_a_low_level_gauge_alarm_clears_above_its_threshold_plus_hysteresis(
        session: Session, runtime: Runtime, clock: FixedClock) -> None:
    river = make_structure(session, kind=StructureKind.LEVEL_GAUGE,
                           config=json.dumps({"alarm_low_m": 1089.2}))
    report(runtime, river, "water_level_m", 1089.1, 1089.0)
    assert sweep(runtime).opened == 1
    advance(clock, 5)
    report(runtime, river, "water_level_m", 1089.22)
    assert sweep(runtime).cleared == 0
    advance(clock, 5)
    report(runtime, river, "water_level_m", 1089.3)
    assert sweep(runtime).cleared == 1


# --------------------------------------------------------------------------- flow vs plan


def plan(session: Session, structure: Structure, day: date, volume_m3: int) -> None:
    with session.begin():
        session.add(DailyVolume(day=day, structure_id=structure.id, volume_m3=volume_m3,
                                source=VolumeSource.SIMULATED, quality=0))


def test_a_flow_far_from_the_days_plan_raises_a_gate_fault_and_clears_near_the_plan(
        session: Session, runtime: Runtime, clock: FixedClock, categories: None) -> None:
    structure = gate(session)
    plan(session, structure, date(2026, 3, 10), 43_200)  # 0.5 m³/s on the test's day
    report(runtime, structure, "flow_m3s", 0.9, 0.85)

    assert sweep(runtime).work_orders == 1
    [alarm] = alarms(session)
    assert (alarm.kind, alarm.value, alarm.threshold) == (AlarmKind.FLOW_FAR_FROM_PLAN, 0.85,
                                                          0.5)
    [incident] = incidents(session)
    assert category_of(session, incident) == "irrigation.gate_fault"
    assert json.loads(incident.attributes) == {"gate_code": structure.code}

    advance(clock, 1)
    report(runtime, structure, "flow_m3s", 0.62)  # 0.12 off: inside 30 %, not inside 20 %
    assert sweep(runtime).cleared == 0
    advance(clock, 1)
    report(runtime, structure, "flow_m3s", 0.57)
    assert sweep(runtime).cleared == 1


def test_a_day_without_planned_rows_reads_the_same_day_of_the_planned_year(
        session: Session, runtime: Runtime, categories: None) -> None:
    flume = make_structure(session, kind=StructureKind.PARSHALL_FLUME,
                           config=json.dumps({"rated_max_head_m": 0.76}))
    plan(session, flume, date(2025, 3, 10), 8_640)  # 0.1 m³/s in the demo year
    report(runtime, flume, "flow_m3s", 0.4, 0.4)

    sweep(runtime)

    [alarm] = alarms(session)
    assert alarm.threshold == pytest.approx(0.1)
    assert category_of(session, incidents(session)[0]) == "irrigation.meter_fault"


def test_readings_from_before_midnight_are_judged_against_their_own_days_plan(
        session: Session, runtime: Runtime, clock: FixedClock, categories: None) -> None:
    structure = gate(session)
    plan(session, structure, date(2026, 3, 9), 17_280)  # 0.2 m³/s
    plan(session, structure, date(2026, 3, 10), 51_840)  # 0.6 m³/s from midnight, Beijing
    clock.set(datetime(2026, 3, 9, 16, 0, 30, tzinfo=UTC))  # 00:00:30 on the 10th in Beijing
    report(runtime, structure, "flow_m3s", 0.2, 0.21)  # 23:59:30 and 00:00:30

    assert sweep(runtime).opened == 0


def test_a_structure_without_a_plan_raises_no_flow_alarm(session: Session, runtime: Runtime,
                                                        categories: None) -> None:
    report(runtime, gate(session), "flow_m3s", 3.0, 3.0)
    assert sweep(runtime).opened == 0


# --------------------------------------------------------------------------- device offline


def test_a_silent_device_alarms_once_offline_past_the_threshold_and_clears_when_heard_again(
        session: Session, runtime: Runtime, clock: FixedClock, categories: None) -> None:
    structure = gate(session)
    report(runtime, structure, "gate_opening_m", 0.2)
    advance(clock, 6 + 4)  # offline after six 1-minute intervals, four minutes ago
    assert sweep(runtime).opened == 0
    advance(clock, 1.5)
    result = sweep(runtime)

    assert (result.opened, result.work_orders) == (1, 1)
    [alarm] = alarms(session)
    assert alarm.kind == AlarmKind.DEVICE_OFFLINE
    assert alarm.value == pytest.approx(330) and alarm.threshold == 300
    assert category_of(session, incidents(session)[0]) == "irrigation.gate_fault"

    advance(clock, 1)
    report(runtime, structure, "gate_opening_m", 0.2)
    assert sweep(runtime).cleared == 1


def test_a_last_will_counts_as_offline_from_the_moment_it_was_published(
        session: Session, runtime: Runtime, clock: FixedClock, categories: None) -> None:
    flume = make_structure(session, kind=StructureKind.PARSHALL_FLUME, mqtt_device_id="fl-1")
    report(runtime, flume, "flow_m3s", 0.1, source="mqtt")
    store_readings(engine_or_session_factory=runtime.session_factory, readings=[],
                   contacts=[Contact(flume.id, clock.now(), announced=Announced.OFFLINE,
                                     source="mqtt")], received_at=clock.now())
    advance(clock, 5)

    sweep(runtime)

    [alarm] = alarms(session)
    assert alarm.kind == AlarmKind.DEVICE_OFFLINE and alarm.value == 300
    assert category_of(session, incidents(session)[0]) == "irrigation.meter_fault"


def test_most_devices_offline_at_once_is_an_outage_whose_work_orders_wait_until_it_ends(
        session: Session, runtime: Runtime, clock: FixedClock, categories: None) -> None:
    gates = [gate(session) for _ in range(6)]
    for structure in gates:
        report(runtime, structure, "gate_opening_m", 0.2)
    advance(clock, 12)

    during = sweep(runtime)

    assert (during.outage, during.opened, during.work_orders, during.held) == (True, 6, 0, 6)
    advance(clock, WORK_ORDER_RETRY_AFTER.total_seconds() / 60)
    for structure in gates[1:]:  # the link is back; one device really is down
        report(runtime, structure, "gate_opening_m", 0.2)
    after = sweep(runtime)
    assert (after.outage, after.cleared, after.work_orders) == (False, 5, 1)
    [incident] = incidents(session)
    live = [a for a in alarms(session) if a.state == AlarmState.OPEN]
    assert [(a.structure_id, a.incident_id) for a in live] == [(gates[0].id, incident.id)]
    assert "设备离线" in incident.title and "s" in incident.description


def test_a_device_that_never_reported_raises_nothing(session: Session, runtime: Runtime,
                                                    categories: None) -> None:
    gate(session)
    assert sweep(runtime).opened == 0


# --------------------------------------------------------------------------- battery


def test_a_low_battery_alarm_needs_no_work_order_and_clears_above_the_hysteresis(
        session: Session, runtime: Runtime, clock: FixedClock, categories: None) -> None:
    structure = gate(session)
    report(runtime, structure, "voltage_v", 11.3)
    assert sweep(runtime).opened == 1
    advance(clock, 1)
    report(runtime, structure, "voltage_v", 11.7)
    assert sweep(runtime).cleared == 0
    advance(clock, 1)
    report(runtime, structure, "voltage_v", 12.1)
    assert sweep(runtime).cleared == 1
    [alarm] = alarms(session)
    assert alarm.kind == AlarmKind.LOW_BATTERY and alarm.incident_id is None
    assert incidents(session) == []


# --------------------------------------------------------------------------- races, retries


def test_two_evaluators_racing_raise_exactly_one_alarm_and_one_work_order(
        session: Session, runtime: Runtime, categories: None) -> None:
    structure = gate(session)
    report(runtime, structure, "water_level_upstream_m", 1.3, 1.3)
    barrier = threading.Barrier(2)
    results: list[AlarmSweepResult] = []
    errors: list[BaseException] = []

    def evaluator() -> None:
        barrier.wait()
        try:
            results.append(sweep(runtime))
        except BaseException as error:  # reported below, from the main thread
            errors.append(error)

    threads = [threading.Thread(target=evaluator) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert errors == []
    assert len(results) == 2
    assert sum(r.opened for r in results) == 1
    assert sum(r.work_orders for r in results) == 1
    [alarm] = alarms(session)
    [incident] = incidents(session)
    assert alarm.incident_id == incident.id


def test_an_evaluator_that_read_before_another_opened_the_alarm_loses_and_raises_nothing(
        session: Session, runtime: Runtime, categories: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    report(runtime, gate(session), "water_level_upstream_m", 1.3, 1.3)
    assert sweep(runtime).opened == 1
    # The second evaluator's read saw no live alarm: it judged before the first committed.
    monkeypatch.setattr(alarms_module, "_live_alarms", lambda session: {})

    late = sweep(runtime)

    assert (late.opened, late.lost, late.work_orders) == (0, 1, 0)
    assert len(alarms(session)) == 1 and len(incidents(session)) == 1


def test_the_database_refuses_a_second_live_alarm_of_a_kind_on_a_structure(
        session: Session, runtime: Runtime) -> None:
    structure = gate(session)
    now = runtime.clock.now()

    def add(state: AlarmState) -> None:
        with session.begin():
            session.add(Alarm(structure_id=structure.id, kind=AlarmKind.HIGH_LEVEL, state=state,
                              raised_at=now, version=1))

    add(AlarmState.CLEARED)
    add(AlarmState.OPEN)
    with pytest.raises(IntegrityError):
        add(AlarmState.ACKNOWLEDGED)


def test_a_work_order_that_failed_is_raised_by_a_later_sweep_without_a_second_alarm(
        session: Session, runtime: Runtime, clock: FixedClock) -> None:
    structure = gate(session)
    report(runtime, structure, "water_level_upstream_m", 1.3, 1.3)
    first = sweep(runtime)  # no categories loaded yet: intake refuses
    assert (first.opened, first.failed, first.work_orders) == (1, 1, 0)
    load_categories(session, runtime)
    report(runtime, structure, "water_level_upstream_m", 1.3)
    assert sweep(runtime).work_orders == 0  # too soon: its own evaluator may still be at it
    advance(clock, WORK_ORDER_RETRY_AFTER.total_seconds() / 60)
    report(runtime, structure, "water_level_upstream_m", 1.3, 1.3)

    again = sweep(runtime)

    assert (again.opened, again.work_orders) == (0, 1)
    [alarm] = alarms(session)
    [incident] = incidents(session)
    assert alarm.incident_id == incident.id


def test_raising_and_clearing_are_audited_as_the_irrigation_system(
        session: Session, runtime: Runtime, clock: FixedClock) -> None:
    structure = gate(session)
    report(runtime, structure, "voltage_v", 11.0)
    sweep(runtime)
    advance(clock, 1)
    report(runtime, structure, "voltage_v", 12.5)
    sweep(runtime)
    with Session(session.get_bind()) as fresh:
        rows = fresh.execute(sa.select(AuditRow.action, AuditRow.actor)
                             .where(AuditRow.object_type == "irr_alarm")
                             .order_by(AuditRow.seq)).tuples().all()
    assert rows == [("irrigation:alarm:raise", "system:irrigation"),
                    ("irrigation:alarm:clear", "system:irrigation")]


# --------------------------------------------------------------------------- pages


@pytest.fixture
def web(runtime: Runtime) -> Iterator[FastAPI]:
    from grassroots.app import create_app

    app = create_app(runtime=runtime)
    install_auth(app)
    if not any(getattr(route, "path", None) == "/irrigation/alarms" for route in app.routes):
        app.include_router(alarm_router)
    yield app


def signed_in(app: FastAPI, session: Session, runtime: Runtime, role: Role) -> TestClient:
    name = f"{role.value}-alarms"
    auth_actions.create_user(session=session, actor="cli", username=name, display_name=name,
                             role=role, scope_code=None, password=PASSWORD, runtime=runtime)
    client = TestClient(app)
    page = client.get("/login").text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert token
    response = client.post("/login", data={"username": name, "password": PASSWORD,
                                           "csrf_token": token.group(1)},
                           follow_redirects=False)
    assert response.status_code == 303, response.text
    return client


def csrf(client: TestClient) -> str:
    """The session's CSRF token, from the page's meta tag."""
    found = re.search(r'<meta name="csrf-token" content="([^"]+)"',
                      client.get("/irrigation/alarms").text)
    assert found, "no CSRF token on the page"
    return found.group(1)


@pytest.fixture
def raised(session: Session, runtime: Runtime, categories: None) -> Alarm:
    structure = gate(session)
    report(runtime, structure, "water_level_upstream_m", 1.3, 1.3)
    sweep(runtime)
    return alarms(session)[0]


def test_the_alarm_list_json_shows_live_alarms_with_their_work_order_number(
        web: FastAPI, session: Session, runtime: Runtime, raised: Alarm) -> None:
    client = signed_in(web, session, runtime, Role.VIEWER)
    body = client.get("/api/v1/irrigation/alarms").json()
    [item] = body["alarms"]
    assert item["id"] == raised.id and item["kind"] == "high_level" and item["state"] == "open"
    assert item["incident_number"] == incidents(session)[0].number
    assert client.get("/api/v1/irrigation/alarms?state=cleared").json()["count"] == 0


def test_a_dispatcher_acknowledges_an_alarm_from_the_page_and_it_stays_live(
        web: FastAPI, session: Session, runtime: Runtime, raised: Alarm) -> None:
    client = signed_in(web, session, runtime, Role.IRRIGATION_DISPATCHER)
    page = client.get("/irrigation/alarms")
    assert page.status_code == 200 and "水位超高" in page.text and "确认" in page.text

    response = client.post(f"/irrigation/alarms/{raised.id}/acknowledge",
                           data={"csrf_token": csrf(client)}, follow_redirects=False)

    assert response.status_code == 303
    [alarm] = alarms(session)
    assert alarm.state == AlarmState.ACKNOWLEDGED
    assert alarm.acknowledged_by == "irrigation_dispatcher-alarms"
    live = client.get("/api/v1/irrigation/alarms").json()["alarms"]
    assert [a["state"] for a in live] == ["acknowledged"]
    again = client.post(f"/api/v1/irrigation/alarms/{raised.id}/acknowledge",
                        headers={"X-CSRF-Token": csrf(client)})
    assert again.status_code == 409


def test_a_post_without_the_csrf_token_is_refused(web: FastAPI, session: Session,
                                                  runtime: Runtime, raised: Alarm) -> None:
    client = signed_in(web, session, runtime, Role.IRRIGATION_DISPATCHER)
    response = client.post(f"/irrigation/alarms/{raised.id}/acknowledge",
                           follow_redirects=False)
    assert response.status_code == 403
    assert alarms(session)[0].state == AlarmState.OPEN


def test_a_viewer_sees_the_alarms_but_may_not_acknowledge(
        web: FastAPI, session: Session, runtime: Runtime, raised: Alarm) -> None:
    client = signed_in(web, session, runtime, Role.VIEWER)
    page = client.get("/irrigation/alarms")
    assert page.status_code == 200 and f'data-alarm-id="{raised.id}"' in page.text
    assert "/acknowledge" not in page.text
    # A real session with its CSRF token: the refusal is the permission's.
    response = client.post(f"/api/v1/irrigation/alarms/{raised.id}/acknowledge",
                           headers={"X-CSRF-Token": csrf(client)})
    assert response.status_code == 403


def test_a_grid_worker_may_not_read_the_alarms(web: FastAPI, session: Session,
                                               runtime: Runtime, raised: Alarm) -> None:
    client = signed_in(web, session, runtime, Role.GRID_WORKER)
    assert client.get("/api/v1/irrigation/alarms").status_code == 403
    assert client.get("/irrigation/alarms").status_code == 403
