"""Intake, the one entry for every channel: locate, dispatch, idempotency, duplicates."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from tests.integration.command_support import (
    A_LAT,
    A_LON,
    B_LAT,
    B_LON,
    CALENDAR,
    Area,
    load_categories,
    make_area,
    make_user,
    offset,
    put_on_duty,
    report,
)

import grassroots.command.models  # noqa: F401  (registers the tables before create_all)
from grassroots.command import actions, queries
from grassroots.command.models import (
    Assignment,
    Deadline,
    Incident,
    IncidentTransition,
    ResponderStatus,
)
from grassroots.command.states import (
    DeadlineKind,
    DeadlineState,
    IncidentState,
    ResponderState,
    ResponseRole,
    SystemActor,
    UnitType,
)
from grassroots.kernel.audit.models import AuditRow
from grassroots.kernel.auth.roles import Role
from grassroots.kernel.clock import FixedClock
from grassroots.kernel.errors import PermissionDenied, ValidationFailed
from grassroots.runtime import Runtime


@pytest.fixture
def area(session: Session, runtime: Runtime) -> Area:
    load_categories(session, runtime)
    return make_area(session)


def _count(session: Session, model: type) -> int:
    return session.scalar(sa.select(sa.func.count()).select_from(model)) or 0


def test_it_dispatches_to_the_nearest_available_responder_of_the_zone_and_unit(
        session: Session, runtime: Runtime, clock: FixedClock, area: Area) -> None:
    now = clock.now()
    far = make_user(session, Role.ZONE_RESPONDER)
    near = make_user(session, Role.ZONE_RESPONDER)
    busy_nearer = make_user(session, Role.ZONE_RESPONDER)
    other_zone_nearest = make_user(session, Role.ZONE_RESPONDER)
    wrong_unit_nearest = make_user(session, Role.ZONE_RESPONDER)
    off_shift_nearest = make_user(session, Role.ZONE_RESPONDER)
    put_on_duty(session, far, area.zone_a, now, position=offset(A_LON, A_LAT, 800))
    put_on_duty(session, near, area.zone_a, now, position=offset(A_LON, A_LAT, 150))
    put_on_duty(session, busy_nearer, area.zone_a, now, position=offset(A_LON, A_LAT, 20),
                state=ResponderState.BUSY)
    put_on_duty(session, other_zone_nearest, area.zone_b, now, position=offset(A_LON, A_LAT, 5))
    put_on_duty(session, wrong_unit_nearest, area.zone_a, now, unit_type=UnitType.POLICE,
                position=offset(A_LON, A_LAT, 5))
    put_on_duty(session, off_shift_nearest, area.zone_a, now - timedelta(hours=10),
                position=offset(A_LON, A_LAT, 5))  # the shift ended two hours ago

    result = report(session, runtime, area)

    incident = result.incident
    assert result.created
    assert incident.state == IncidentState.DISPATCHED
    assert result.assigned_user_ids == [near.id]
    assert incident.zone_id == area.zone_a.id and incident.micro_grid_id == area.micro_a.id
    assert incident.region_path == area.micro_a.path
    assignment = session.scalars(sa.select(Assignment)).one()
    assert (assignment.user_id, assignment.role) == (near.id, ResponseRole.FIRST_RESPONDER)
    assert assignment.distance_m == pytest.approx(150, rel=0.01)
    status = queries.on_duty(session=session, zone_id=area.zone_a.id,
                             unit_type=UnitType.ZONE_TEAM, at=now)
    assert {c.user_id: c.state for c in status}[near.id] == ResponderState.BUSY


def test_it_records_receive_register_and_dispatch_as_transitions_and_audit_rows(
        session: Session, runtime: Runtime, clock: FixedClock, area: Area) -> None:
    put_on_duty(session, make_user(session, Role.ZONE_RESPONDER), area.zone_a, clock.now())
    incident = report(session, runtime, area).incident
    flips = [(t.action, t.from_state, t.to_state) for t in
             queries.transitions_of(session=session, incident_id=incident.id)]
    assert flips == [("receive", None, IncidentState.RECEIVED),
                     ("register", IncidentState.RECEIVED, IncidentState.REGISTERED),
                     ("dispatch", IncidentState.REGISTERED, IncidentState.DISPATCHED)]
    tags = list(session.scalars(sa.select(AuditRow.action).where(
        AuditRow.object_type == "incident").order_by(AuditRow.seq)))
    assert tags == ["incident:create", "incident:transition:register",
                    "incident:transition:dispatch"]
    assert incident.number == "SF20260310-000001"
    assert incident.registered_at == incident.dispatched_at == clock.now()
    assert incident.version == 3


def test_it_sets_the_dispatch_first_on_scene_and_handling_clocks(
        session: Session, runtime: Runtime, clock: FixedClock, area: Area) -> None:
    put_on_duty(session, make_user(session, Role.ZONE_RESPONDER), area.zone_a, clock.now())
    incident = report(session, runtime, area).incident
    clocks = {d.kind: d for d in queries.deadlines_of(session=session, incident_id=incident.id)}
    assert clocks[DeadlineKind.DISPATCH].state == DeadlineState.MET
    assert (clocks[DeadlineKind.FIRST_ON_SCENE].due_at - clock.now()).total_seconds() == 300
    assert (clocks[DeadlineKind.FIRST_ON_SCENE].warn_at - clock.now()).total_seconds() == 240
    # exposed garbage: 8 working hours from Tuesday 09:30 Beijing → Wednesday 09:30.
    assert clocks[DeadlineKind.HANDLING].due_at.isoformat() == "2026-03-11T01:30:00+00:00"


def test_an_emergency_gets_two_first_responders(
        session: Session, runtime: Runtime, clock: FixedClock, area: Area) -> None:
    people = [make_user(session, Role.ZONE_RESPONDER) for _ in range(3)]
    for i, person in enumerate(people):
        put_on_duty(session, person, area.zone_a, clock.now(),
                    position=offset(A_LON, A_LAT, 100 * (3 - i)))
    result = report(session, runtime, area, category="emergency.gas_leak")
    assert result.assigned_user_ids == [people[2].id, people[1].id]


def test_a_retried_idempotency_key_returns_the_same_incident_and_writes_nothing(
        session: Session, runtime: Runtime, clock: FixedClock, area: Area) -> None:
    first = report(session, runtime, area, idempotency_key="abc-1")
    tables = (Incident, IncidentTransition, Deadline, AuditRow)
    counts = [_count(session, m) for m in tables]

    again = report(session, runtime, area, idempotency_key="abc-1", description="retry")

    assert not again.created
    assert again.incident.id == first.incident.id
    assert [_count(session, m) for m in tables] == counts


def test_the_same_key_from_another_client_or_channel_is_a_new_incident(
        session: Session, runtime: Runtime, clock: FixedClock, area: Area) -> None:
    first = report(session, runtime, area, idempotency_key="k")
    other_client = report(session, runtime, area, idempotency_key="k", client_ref="open311:app2")
    other_channel = report(session, runtime, area, idempotency_key="k", channel="phone")
    assert len({first.incident.id, other_client.incident.id, other_channel.incident.id}) == 3


def test_a_lost_idempotency_race_returns_the_winners_incident(
        session: Session, runtime: Runtime, clock: FixedClock, area: Area,
        monkeypatch: pytest.MonkeyPatch) -> None:
    winner = report(session, runtime, area, idempotency_key="race")
    # Pretend the look-up ran before the winner committed: the insert then hits the constraint.
    monkeypatch.setattr(queries, "find_by_idempotency_key",
                        _none_once(queries.find_by_idempotency_key))
    loser = report(session, runtime, area, idempotency_key="race")
    assert not loser.created and loser.incident.id == winner.incident.id
    assert _count(session, Incident) == 1


def _none_once(real: Callable[..., Incident | None]) -> Callable[..., Incident | None]:
    calls = {"n": 0}

    def fake(**kwargs: Any) -> Incident | None:
        calls["n"] += 1
        return None if calls["n"] == 1 else real(**kwargs)

    return fake


def test_responders_another_intake_is_claiming_are_passed_over_for_the_next_nearest(
        session: Session, runtime: Runtime, clock: FixedClock, area: Area) -> None:
    """PostgreSQL: while another transaction holds the six nearest (claiming them, not yet
    committed), an intake skips them (SKIP LOCKED) round after round and sends the seventh,
    instead of waiting for that transaction or leaving the report undispatched."""
    if session.get_bind().dialect.name != "postgresql":
        pytest.skip("SQLite has one writer at a time: no claim is ever held by another")
    now = clock.now()
    people = [make_user(session, Role.ZONE_RESPONDER) for _ in range(7)]
    for n, person in enumerate(people):
        put_on_duty(session, person, area.zone_a, now, position=offset(A_LON, A_LAT, 10 + 10 * n))
    other = runtime.session_factory()
    try:
        held = other.scalars(sa.select(ResponderStatus.user_id).where(
            ResponderStatus.user_id.in_([p.id for p in people[:6]])).with_for_update()).all()
        assert len(held) == 6

        result = report(session, runtime, area)
    finally:
        other.rollback()
        other.close()

    assert result.incident.state == IncidentState.DISPATCHED
    assert result.assigned_user_ids == [people[6].id]


def test_nearby_reports_of_the_same_category_are_flagged_as_duplicates(
        session: Session, runtime: Runtime, clock: FixedClock, area: Area) -> None:
    first = report(session, runtime, area).incident
    lon, lat = offset(A_LON, A_LAT, 30)  # exposed garbage: 50 m, 4 hours
    second = report(session, runtime, area, lon=lon, lat=lat)
    far_lon, far_lat = offset(A_LON, A_LAT, 90)  # 60 m from the second, 90 from the first
    far = report(session, runtime, area, lon=far_lon, lat=far_lat)
    other_category = report(session, runtime, area, category="city_env.graffiti")

    assert [c.id for c in second.duplicate_candidates] == [first.id]
    assert second.incident.needs_duplicate_review
    assert far.duplicate_candidates == [] and not far.incident.needs_duplicate_review
    assert other_category.duplicate_candidates == []


def test_many_probes_in_one_query_find_what_each_finds_alone(
        session: Session, runtime: Runtime, clock: FixedClock, area: Area) -> None:
    """duplicate_candidates_many (one SQL text for any number of boxes on PostgreSQL, an OR of
    boxes elsewhere) against each probe's own brute-force answer over every open incident."""
    categories = ["city_env.exposed_garbage", "city_env.graffiti"]
    dispatcher = make_user(session, Role.DISPATCHER)
    made = []
    for n in range(12):
        lon, lat = offset(A_LON, A_LAT, 15 * n)
        made.append(report(session, runtime, area, category=categories[n % 2], lon=lon,
                           lat=lat).incident)
        clock.advance(timedelta(minutes=25))
    actions.void(session=session, runtime=runtime, actor=dispatcher, incident_id=made[4].id,
                 reason="测试作废")
    session.commit()
    garbage, graffiti = (queries.get_category(session=session, code=code) for code in categories)
    assert garbage is not None and graffiti is not None
    probes = [queries.DuplicateProbe(category, *offset(A_LON, A_LAT, east), clock.now())
              for category in (garbage, graffiti) for east in (0, 40, 95, 170, 400)]
    probes.append(queries.DuplicateProbe(garbage, None, None, clock.now()))
    everything = list(session.scalars(sa.select(Incident)))

    together = queries.duplicate_candidates_many(session=session, probes=probes)

    for probe, found in zip(probes, together, strict=True):
        alone = queries.duplicate_candidates_many(session=session, probes=[probe])[0]
        expected = sorted((d, i.id) for i in everything if i.state != IncidentState.VOIDED
                           and (d := probe.matches(i)) is not None)
        assert [i.id for i in found] == [i.id for i in alone] == [i for _, i in expected]
    assert any(together) and not all(together)
    assert made[4].id not in {i.id for found in together for i in found}


def test_many_idempotency_keys_are_found_in_one_query_per_client(
        session: Session, runtime: Runtime, area: Area) -> None:
    first = report(session, runtime, area, idempotency_key="k-1", client_ref="app-a").incident
    second = report(session, runtime, area, idempotency_key="k-2", client_ref="app-a").incident
    other = report(session, runtime, area, idempotency_key="k-1", client_ref="app-b").incident
    channel = first.channel

    found = queries.find_by_idempotency_keys(session=session, keys=[
        (channel, "app-a", "k-1"), (channel, "app-a", "k-2"), (channel, "app-a", "k-3"),
        (channel, "app-b", "k-1"), (channel, "app-b", "k-2")])

    assert {key: incident.id for key, incident in found.items()} == {
        (channel, "app-a", "k-1"): first.id, (channel, "app-a", "k-2"): second.id,
        (channel, "app-b", "k-1"): other.id}


def test_reports_outside_the_window_are_not_duplicates(
        session: Session, runtime: Runtime, clock: FixedClock, area: Area) -> None:
    report(session, runtime, area)
    clock.advance(timedelta(minutes=241))
    assert report(session, runtime, area).duplicate_candidates == []


def test_a_dispatcher_merges_a_duplicate_or_keeps_it_separate(
        session: Session, runtime: Runtime, clock: FixedClock, area: Area) -> None:
    dispatcher = make_user(session, Role.DISPATCHER)
    session.commit()
    original = report(session, runtime, area).incident
    duplicate = report(session, runtime, area).incident
    kept = report(session, runtime, area).incident

    merged = actions.merge_duplicate(session=session, runtime=runtime, actor=dispatcher,
                                     incident_id=duplicate.id, original_id=original.id)
    separate = actions.keep_separate(session=session, runtime=runtime, actor=dispatcher,
                                     incident_id=kept.id)

    assert merged.state == IncidentState.VOIDED and merged.duplicate_of_id == original.id
    assert not merged.needs_duplicate_review
    assert all(d.state != DeadlineState.OPEN
               for d in queries.deadlines_of(session=session, incident_id=merged.id))
    assert separate.state == IncidentState.REGISTERED and not separate.needs_duplicate_review


def test_a_report_outside_every_region_is_registered_but_not_dispatched(
        session: Session, runtime: Runtime, clock: FixedClock, area: Area) -> None:
    result = report(session, runtime, area, lon=100.0, lat=20.0)
    assert result.incident.state == IncidentState.REGISTERED
    assert result.incident.zone_id is None and result.incident.region_path == ""
    dispatch = [d for d in queries.deadlines_of(session=session, incident_id=result.incident.id)
                if d.kind == DeadlineKind.DISPATCH]
    assert dispatch[0].state == DeadlineState.OPEN


def test_nobody_on_duty_leaves_it_registered_with_the_dispatch_clock_running(
        session: Session, runtime: Runtime, clock: FixedClock, area: Area) -> None:
    put_on_duty(session, make_user(session, Role.ZONE_RESPONDER), area.zone_b, clock.now())
    result = report(session, runtime, area)
    assert result.incident.state == IncidentState.REGISTERED
    assert result.assigned_user_ids == []


def test_an_address_without_coordinates_is_accepted(
        session: Session, runtime: Runtime, clock: FixedClock, area: Area) -> None:
    result = actions.intake(session=session, runtime=runtime, actor=SystemActor("system:t"),
                            channel="phone", category_code="hotline.enquiry",
                            calendar=CALENDAR, address_text="双福街道 1 号",
                            description="问一下")
    assert result.incident.lon is None and result.incident.address_text == "双福街道 1 号"
    assert result.incident.state == IncidentState.REGISTERED


def test_the_reporter_phone_is_encrypted_and_found_by_its_blind_index(
        session: Session, runtime: Runtime, clock: FixedClock, area: Area) -> None:
    incident = report(session, runtime, area, reporter_phone="138 0013 8000").incident
    assert "13800138000" not in (incident.reporter_phone_enc or "")
    assert runtime.crypto.decrypt(incident.reporter_phone_enc or "",
                                  context="incident.reporter_phone") == "13800138000"
    found = queries.find_by_reporter_phone(session=session, crypto=runtime.crypto,
                                           phone="+86 13800138000")
    assert [i.id for i in found] == [incident.id]


@pytest.mark.parametrize("kwargs", [
    {"description": "x" * 4001},
    {"lon": None, "lat": None},
    {"lon": 200.0},
    {"category": "no.such"},
    {"category": "security.fight"},  # the required "injured" question is unanswered
    {"channel": "pigeon"},
    {"urgency": 9},
])
def test_bad_reports_are_refused(session: Session, runtime: Runtime, clock: FixedClock,
                                 area: Area, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValidationFailed):
        report(session, runtime, area, **kwargs)
    assert _count(session, Incident) == 0


def test_a_role_without_the_report_permission_may_not_report(
        session: Session, runtime: Runtime, clock: FixedClock, area: Area) -> None:
    operator = make_user(session, Role.GATE_OPERATOR)
    session.commit()
    with pytest.raises(PermissionDenied):
        report(session, runtime, area, actor=operator)


def test_an_irrigation_alarm_comes_in_through_the_same_intake(
        session: Session, runtime: Runtime, clock: FixedClock, area: Area) -> None:
    keeper = make_user(session, Role.GRID_WORKER)
    put_on_duty(session, keeper, area.zone_b, clock.now(), unit_type=UnitType.IRRIGATION_OFFICE)
    result = report(session, runtime, area, category="irrigation.gate_fault",
                    channel="irrigation", lon=B_LON, lat=B_LAT,
                    actor=SystemActor("system:irrigation"), external_ref="gate-17/alarm-3",
                    attributes={"gate_code": "G17"}, idempotency_key="alarm-3")
    assert result.incident.channel == "irrigation"
    assert result.assigned_user_ids == [keeper.id]
    assert result.incident.created_by == "system:irrigation"


def test_numbers_count_up_per_beijing_day(session: Session, runtime: Runtime,
                                          clock: FixedClock, area: Area) -> None:
    first = report(session, runtime, area, category="city_env.graffiti").incident
    second = report(session, runtime, area, category="ad.illegal_flyer").incident
    clock.advance(timedelta(hours=23))  # 08:30 the next day in Beijing
    third = report(session, runtime, area, category="ad.damaged_banner").incident
    assert [first.number, second.number, third.number] == [
        "SF20260310-000001", "SF20260310-000002", "SF20260311-000001"]
