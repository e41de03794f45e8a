"""Each SLA clock, driven by moving the clock and running the sweeper."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from tests.integration.command_support import (
    A_LAT,
    A_LON,
    BEIJING,
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
from grassroots.command.jobs import SweepResult, sweep
from grassroots.command.models import Deadline, Incident, Notice
from grassroots.command.states import (
    Audience,
    DeadlineKind,
    DeadlineLevel,
    DeadlineState,
    IncidentState,
    NoticeLevel,
    UnitType,
)
from grassroots.kernel.audit.models import AuditRow
from grassroots.kernel.auth.models import User
from grassroots.kernel.auth.roles import Role
from grassroots.kernel.clock import FixedClock
from grassroots.runtime import Runtime


@pytest.fixture
def area(session: Session, runtime: Runtime) -> Area:
    load_categories(session, runtime)
    return make_area(session)


@pytest.fixture
def responder(session: Session, clock: FixedClock, area: Area) -> User:
    user = make_user(session, Role.ZONE_RESPONDER)
    put_on_duty(session, user, area.zone_a, clock.now(), position=offset(A_LON, A_LAT, 200))
    return user


def _sweep(runtime: Runtime) -> SweepResult:
    return sweep(session_factory=runtime.session_factory, runtime=runtime)


def _notices(session: Session, incident: Incident) -> list[Notice]:
    session.expire_all()
    return queries.notices_of(session=session, incident_id=incident.id)


def _clocks(session: Session, incident: Incident, kind: DeadlineKind) -> list[Deadline]:
    session.expire_all()
    return [d for d in queries.deadlines_of(session=session, incident_id=incident.id)
            if d.kind == kind]


def test_the_dispatch_clock_warns_the_centre_then_escalates_to_the_street_leader(
        session: Session, runtime: Runtime, clock: FixedClock, area: Area) -> None:
    incident = report(session, runtime, area).incident  # nobody on duty: stays registered
    clock.advance(timedelta(seconds=47))
    assert _sweep(runtime).examined == 0
    clock.advance(timedelta(seconds=1))  # 80% of 60 s
    assert _sweep(runtime).warned == 1
    clock.advance(timedelta(seconds=12))  # 60 s after receipt
    result = _sweep(runtime)
    assert (result.breached, result.notices) == (1, 1)
    notices = _notices(session, incident)
    assert [(n.level, n.audience, n.to_role) for n in notices] == [
        (NoticeLevel.WARNING, Audience.COMMAND_CENTRE, Role.DISPATCHER),
        (NoticeLevel.REMINDER, Audience.STREET_LEADER, Role.STREET_LEADER)]
    [dispatch] = _clocks(session, incident, DeadlineKind.DISPATCH)
    assert (dispatch.level, dispatch.state) == (DeadlineLevel.BREACHED,
                                               DeadlineState.BREACHED_HANDLED)
    clock.advance(timedelta(hours=1))
    assert _sweep(runtime).examined == 0  # the top of the chain has no further limit


def test_a_responder_late_by_five_minutes_triggers_exactly_one_escalation(
        session: Session, runtime: Runtime, clock: FixedClock, area: Area,
        responder: User) -> None:
    incident = report(session, runtime, area).incident
    clock.advance(timedelta(minutes=4))
    assert _sweep(runtime).warned == 1
    assert [(n.level, n.to_user_id) for n in _notices(session, incident)] == [
        (NoticeLevel.WARNING, responder.id)]
    clock.advance(timedelta(minutes=1, seconds=1))
    first = _sweep(runtime)
    again = _sweep(runtime)
    assert (first.breached, first.notices) == (1, 1)
    assert again.examined == 0
    escalations = [n for n in _notices(session, incident) if n.level != NoticeLevel.WARNING]
    assert [(n.level, n.audience, n.zone_id) for n in escalations] == [
        (NoticeLevel.REMINDER, Audience.ZONE_LEADER, area.zone_a.id)]
    step_one = [d for d in _clocks(session, incident, DeadlineKind.FIRST_ON_SCENE)
                if d.state == DeadlineState.OPEN]
    assert [(d.escalation_step, d.due_at - clock.now()) for d in step_one] == [
        (1, timedelta(minutes=5))]
    audit = session.scalars(sa.select(AuditRow.action).where(
        AuditRow.object_type == "deadline")).all()
    assert sorted(audit) == ["deadline:breached", "deadline:warned"]


def test_the_chain_climbs_one_level_per_missed_limit_and_stops_at_the_street_leader(
        session: Session, runtime: Runtime, clock: FixedClock, area: Area,
        responder: User) -> None:
    incident = report(session, runtime, area).incident
    for _ in range(6):
        clock.advance(timedelta(minutes=5, seconds=1))
        _sweep(runtime)
    breaches = [(n.level, n.audience) for n in _notices(session, incident)
                if n.level != NoticeLevel.WARNING]
    assert breaches == [(NoticeLevel.REMINDER, Audience.ZONE_LEADER),
                        (NoticeLevel.SUPERVISION, Audience.COMMAND_CENTRE),
                        (NoticeLevel.ESCALATION, Audience.STREET_LEADER)]
    assert [d.escalation_step for d in _clocks(session, incident, DeadlineKind.FIRST_ON_SCENE)
            ] == [0, 1, 2]


def test_arriving_in_time_stops_the_first_on_scene_clock(
        session: Session, runtime: Runtime, clock: FixedClock, area: Area,
        responder: User) -> None:
    incident = report(session, runtime, area).incident
    clock.advance(timedelta(minutes=4, seconds=30))
    actions.arrive(session=session, runtime=runtime, actor=responder, incident_id=incident.id)
    clock.advance(timedelta(minutes=10))
    result = _sweep(runtime)
    assert result.breached == 0
    [first] = _clocks(session, incident, DeadlineKind.FIRST_ON_SCENE)
    assert (first.state, first.level) == (DeadlineState.MET, DeadlineLevel.NONE)


def test_arriving_after_an_escalation_settles_the_next_levels_clock(
        session: Session, runtime: Runtime, clock: FixedClock, area: Area,
        responder: User) -> None:
    incident = report(session, runtime, area).incident
    clock.advance(timedelta(minutes=6))
    _sweep(runtime)
    actions.arrive(session=session, runtime=runtime, actor=responder, incident_id=incident.id)
    states = [d.state for d in _clocks(session, incident, DeadlineKind.FIRST_ON_SCENE)]
    assert states == [DeadlineState.BREACHED_HANDLED, DeadlineState.MET]
    clock.advance(timedelta(hours=1))
    assert _sweep(runtime).breached == 0


def test_the_reinforcement_clock_runs_fifteen_minutes_from_the_request(
        session: Session, runtime: Runtime, clock: FixedClock, area: Area,
        responder: User) -> None:
    enforcer = make_user(session, Role.ZONE_RESPONDER)
    put_on_duty(session, enforcer, area.zone_a, clock.now(), unit_type=UnitType.LAW_ENFORCEMENT)
    incident = report(session, runtime, area).incident
    actions.arrive(session=session, runtime=runtime, actor=responder, incident_id=incident.id)
    actions.request_reinforcement(session=session, runtime=runtime, actor=responder,
                                  incident_id=incident.id, unit_type="law_enforcement")
    clock.advance(timedelta(minutes=12))
    _sweep(runtime)
    warnings = [n for n in _notices(session, incident) if n.level == NoticeLevel.WARNING]
    assert [n.to_user_id for n in warnings] == [enforcer.id]  # the reinforcement, by name
    clock.advance(timedelta(minutes=3))
    assert _sweep(runtime).breached == 1
    assert _notices(session, incident)[-1].message_id == "command.notice.reinforcement.breached"


def test_the_handling_limit_counts_working_hours_across_the_night(
        session: Session, runtime: Runtime, clock: FixedClock, area: Area,
        responder: User) -> None:
    clock.set(datetime(2026, 3, 10, 8, 0, tzinfo=UTC))  # 16:00 Tuesday in Beijing
    put_on_duty(session, make_user(session, Role.ZONE_RESPONDER), area.zone_a, clock.now())
    incident = report(session, runtime, area, category="city_env.overflowing_bin").incident
    [handling] = _clocks(session, incident, DeadlineKind.HANDLING)
    # 4 working hours: one hour on Tuesday, three on Wednesday morning → 12:00 Beijing.
    assert handling.due_at == datetime(2026, 3, 11, 4, 0, tzinfo=UTC)
    clock.set(handling.due_at - timedelta(minutes=1))
    _sweep(runtime)
    [handling] = _clocks(session, incident, DeadlineKind.HANDLING)
    assert (handling.level, handling.state) == (DeadlineLevel.WARNED, DeadlineState.OPEN)
    clock.set(handling.due_at)
    _sweep(runtime)
    first = _clocks(session, incident, DeadlineKind.HANDLING)[0]
    assert (first.level, first.state) == (DeadlineLevel.BREACHED, DeadlineState.BREACHED_HANDLED)


def test_the_handling_limit_counts_working_days_over_the_weekend(
        session: Session, runtime: Runtime, clock: FixedClock, area: Area,
        responder: User) -> None:
    clock.set(datetime(2026, 3, 13, 2, 0, tzinfo=UTC))  # Friday 10:00 Beijing
    put_on_duty(session, make_user(session, Role.ZONE_RESPONDER), area.zone_a, clock.now())
    incident = report(session, runtime, area, category="hotline.help").incident
    [handling] = _clocks(session, incident, DeadlineKind.HANDLING)
    assert handling.due_at == CALENDAR.add_working_days(clock.now(), 1)  # end of Monday
    assert handling.due_at.astimezone(BEIJING).weekday() == 0


def test_an_emergency_in_plain_hours_runs_through_the_night(
        session: Session, runtime: Runtime, clock: FixedClock, area: Area,
        responder: User) -> None:
    clock.set(datetime(2026, 3, 10, 14, 0, tzinfo=UTC))  # 22:00 Beijing
    put_on_duty(session, make_user(session, Role.ZONE_RESPONDER), area.zone_a, clock.now())
    incident = report(session, runtime, area, category="emergency.gas_leak").incident
    [handling] = _clocks(session, incident, DeadlineKind.HANDLING)
    assert handling.due_at == clock.now() + timedelta(hours=2)


def test_the_callback_is_due_the_next_working_day_after_closing(
        session: Session, runtime: Runtime, clock: FixedClock, area: Area,
        responder: User) -> None:
    checker = make_user(session, Role.GRID_WORKER)
    dispatcher = make_user(session, Role.DISPATCHER)
    session.commit()
    incident = report(session, runtime, area, reporter_phone="13900001111").incident
    for step in (actions.arrive, actions.handle):
        step(session=session, runtime=runtime, actor=responder, incident_id=incident.id)
    actions.check(session=session, runtime=runtime, actor=checker, incident_id=incident.id)
    actions.close(session=session, runtime=runtime, actor=dispatcher, incident_id=incident.id,
                  calendar=CALENDAR)
    [callback] = _clocks(session, incident, DeadlineKind.CALLBACK)
    assert callback.due_at == CALENDAR.add_working_days(clock.now(), 1)
    clock.set(callback.due_at + timedelta(seconds=1))
    result = _sweep(runtime)
    assert result.breached == 1
    assert _notices(session, incident)[-1].audience == Audience.STREET_LEADER


def test_a_clock_whose_incident_moved_on_is_cancelled_not_escalated(
        session: Session, runtime: Runtime, clock: FixedClock, area: Area,
        responder: User) -> None:
    incident = report(session, runtime, area).incident
    # A stray open row (e.g. written by an older release) for a state that no longer applies.
    session.execute(sa.update(Incident).where(Incident.id == incident.id)
                    .values(state=IncidentState.HANDLED))
    session.commit()
    clock.advance(timedelta(minutes=10))
    result = _sweep(runtime)
    assert result.cancelled >= 1 and result.breached == 0
    assert _notices(session, incident) == []


def test_suspended_clocks_do_not_escalate(
        session: Session, runtime: Runtime, clock: FixedClock, area: Area,
        responder: User) -> None:
    leader = make_user(session, Role.STREET_LEADER)
    session.commit()
    incident = report(session, runtime, area).incident
    actions.suspend(session=session, runtime=runtime, actor=leader, incident_id=incident.id,
                    reason="暴雨暂停")
    clock.advance(timedelta(days=3))
    assert _sweep(runtime).examined == 0


def test_the_kernel_working_calendar_plugs_in_where_the_fake_does(
        session: Session, runtime: Runtime, clock: FixedClock, area: Area,
        responder: User) -> None:
    from grassroots.kernel.calendar import shipped_calendar

    calendar = shipped_calendar()
    result = actions.intake(session=session, runtime=runtime, actor=responder,
                            channel="grid_worker", category_code="city_env.exposed_garbage",
                            calendar=calendar, locator=area.locate, lon=A_LON, lat=A_LAT)
    [handling] = _clocks(session, result.incident, DeadlineKind.HANDLING)
    assert handling.due_at == calendar.add_working_hours(clock.now(), 8)
