"""Tiered handling (分级诊疗): each level's own limit, reminder → supervision → the next level."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from tests.integration.command_support import (
    A_LAT,
    A_LON,
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
from grassroots.command.context import current_calendar
from grassroots.command.jobs import SweepResult, sweep
from grassroots.command.models import Deadline, Incident, IncidentTransition, Notice
from grassroots.command.states import (
    TIER_GRACE,
    Action,
    Audience,
    DeadlineKind,
    DeadlineState,
    IncidentState,
    LimitUnit,
    NoticeLevel,
    Tier,
    handling_due,
    tier_due,
)
from grassroots.kernel.auth.models import User
from grassroots.kernel.auth.roles import Role
from grassroots.kernel.clock import FixedClock
from grassroots.kernel.errors import Conflict, PermissionDenied, ValidationFailed
from grassroots.runtime import Runtime

# Goes to the property company, so it starts at the grid; 5 working days in all.
PROPERTY = "dispute.property_service"
# Goes to the zone team and may be closed by a grid worker; 8 working hours in all.
GARBAGE = "city_env.exposed_garbage"


@pytest.fixture
def area(session: Session, runtime: Runtime) -> Area:
    load_categories(session, runtime)
    return make_area(session)


@pytest.fixture
def dispatcher(session: Session) -> User:
    return make_user(session, Role.DISPATCHER)


def _sweep(runtime: Runtime) -> SweepResult:
    return sweep(session_factory=runtime.session_factory, runtime=runtime)


def _reload(session: Session, incident: Incident) -> Incident:
    session.expire_all()
    found = session.get(Incident, incident.id)
    assert found is not None
    return found


def _open_tier_clock(session: Session, incident: Incident) -> Deadline | None:
    session.expire_all()
    open_ones = [d for d in queries.deadlines_of(session=session, incident_id=incident.id)
                 if d.kind == DeadlineKind.TIER and d.state == DeadlineState.OPEN]
    assert len(open_ones) <= 1
    return open_ones[0] if open_ones else None


def _tier_notices(session: Session, incident: Incident) -> list[tuple[str, str, str]]:
    session.expire_all()
    return [(n.level.value, n.audience.value, n.message_id)
            for n in queries.notices_of(session=session, incident_id=incident.id)
            if n.message_id.startswith("command.notice.tier.")
            and n.level != NoticeLevel.WARNING]


def _escalations(session: Session, incident: Incident) -> list[IncidentTransition]:
    return list(session.scalars(sa.select(IncidentTransition).where(
        IncidentTransition.incident_id == incident.id,
        IncidentTransition.action == Action.ESCALATE).order_by(IncidentTransition.id)))


def _past(clock: FixedClock, when: datetime) -> None:
    clock.advance(when - clock.now() + timedelta(seconds=1))


def test_an_incident_starts_at_its_units_level_with_that_levels_own_limit(
        session: Session, runtime: Runtime, area: Area) -> None:
    incident = report(session, runtime, area, category=PROPERTY).incident
    assert incident.tier == Tier.GRID
    tier_clock = _open_tier_clock(session, incident)
    assert tier_clock is not None and incident.registered_at is not None
    # The grid's own day, well inside the category's five working days.
    assert tier_clock.due_at == CALENDAR.add_working_days(incident.registered_at, 1)
    assert tier_clock.due_at < handling_due(5, LimitUnit.WORKING_DAYS, incident.registered_at,
                                            CALENDAR)


def test_a_level_never_gets_longer_than_the_categorys_whole_limit(
        session: Session, runtime: Runtime, area: Area) -> None:
    incident = report(session, runtime, area, category=GARBAGE).incident
    assert incident.tier == Tier.ZONE
    tier_clock = _open_tier_clock(session, incident)
    assert tier_clock is not None and incident.registered_at is not None
    assert tier_clock.due_at == handling_due(8, LimitUnit.WORKING_HOURS,
                                             incident.registered_at, CALENDAR)


def test_a_missed_level_limit_reminds_then_supervises_then_passes_it_up_once(
        session: Session, runtime: Runtime, clock: FixedClock, area: Area) -> None:
    incident = report(session, runtime, area, category=PROPERTY).incident
    grid_clock = _open_tier_clock(session, incident)
    assert grid_clock is not None

    _past(clock, grid_clock.due_at)
    _sweep(runtime)
    assert _reload(session, incident).tier == Tier.GRID
    assert _tier_notices(session, incident) == [
        ("reminder", "grid", "command.notice.tier.remind")]

    clock.advance(TIER_GRACE + timedelta(seconds=1))
    _sweep(runtime)
    assert _reload(session, incident).tier == Tier.GRID
    assert _tier_notices(session, incident)[1:] == [
        ("supervision", "zone_leader", "command.notice.tier.supervise")]

    clock.advance(TIER_GRACE + timedelta(seconds=1))
    _sweep(runtime)
    assert _sweep(runtime).examined == 0  # a second sweeper finds nothing left to do
    moved = _reload(session, incident)
    assert moved.tier == Tier.ZONE and moved.state == IncidentState.REGISTERED
    [escalation] = _escalations(session, incident)
    assert escalation.actor == "system:sweeper" and escalation.reason
    assert json.loads(escalation.detail)["from_tier"] == "grid"
    assert json.loads(escalation.detail)["to_tier"] == "zone"
    assert _tier_notices(session, incident)[2:] == [
        ("escalation", "zone_leader", "command.notice.tier.escalated.zone")]
    zone_clock = _open_tier_clock(session, incident)
    assert zone_clock is not None and zone_clock.escalation_step == 0
    assert zone_clock.due_at == tier_due(
        Tier.ZONE, clock.now(), current_calendar(session), handling_value=5,
        handling_unit=LimitUnit.WORKING_DAYS)


def test_the_levels_climb_to_the_district_and_stop_there(
        session: Session, runtime: Runtime, clock: FixedClock, area: Area) -> None:
    leader = make_user(session, Role.ZONE_LEADER)
    leader.scope_region_id = area.zone_a.id
    session.commit()
    incident = report(session, runtime, area, category=PROPERTY).incident
    seen = []
    for _ in range(12):
        tier_clock = _open_tier_clock(session, incident)
        if tier_clock is None:
            break
        _past(clock, tier_clock.due_at)
        _sweep(runtime)
        seen.append(_reload(session, incident).tier)
    assert list(dict.fromkeys(seen)) == [Tier.GRID, Tier.ZONE, Tier.STREET, Tier.DISTRICT]
    assert _open_tier_clock(session, incident) is None  # nobody above the district
    assert [json.loads(t.detail)["to_tier"] for t in _escalations(session, incident)] == [
        "zone", "street", "district"]
    escalated = [n for n in session.scalars(sa.select(Notice).where(
        Notice.incident_id == incident.id, Notice.level == NoticeLevel.ESCALATION))]
    assert [(n.audience, n.to_role) for n in escalated] == [
        (Audience.ZONE_LEADER, Role.ZONE_LEADER),
        (Audience.COMMAND_CENTRE, Role.DISPATCHER),
        (Audience.DISTRICT, Role.DISTRICT_DEPARTMENT)]


def test_handling_in_time_stops_the_level_clock(
        session: Session, runtime: Runtime, clock: FixedClock, area: Area) -> None:
    responder = make_user(session, Role.ZONE_RESPONDER)
    put_on_duty(session, responder, area.zone_a, clock.now(),
                position=offset(A_LON, A_LAT, 100))
    incident = report(session, runtime, area, category=GARBAGE).incident
    actions.arrive(session=session, runtime=runtime, actor=responder, incident_id=incident.id)
    actions.handle(session=session, runtime=runtime, actor=responder, incident_id=incident.id)
    assert _open_tier_clock(session, incident) is None
    [tier_clock] = [d for d in queries.deadlines_of(session=session, incident_id=incident.id)
                    if d.kind == DeadlineKind.TIER]
    assert tier_clock.state == DeadlineState.MET
    clock.advance(timedelta(days=10))
    _sweep(runtime)
    assert _reload(session, incident).tier == Tier.ZONE


def test_the_centre_may_pass_an_incident_up_by_hand_with_a_reason(
        session: Session, runtime: Runtime, area: Area, dispatcher: User) -> None:
    incident = report(session, runtime, area, category=GARBAGE).incident
    responder = make_user(session, Role.ZONE_RESPONDER)
    with pytest.raises(PermissionDenied):
        actions.escalate(session=session, runtime=runtime, actor=responder,
                         incident_id=incident.id, calendar=CALENDAR, reason="太难")
    with pytest.raises(ValidationFailed):
        actions.escalate(session=session, runtime=runtime, actor=dispatcher,
                         incident_id=incident.id, calendar=CALENDAR, reason=" ")
    before = _open_tier_clock(session, incident)
    moved = actions.escalate(session=session, runtime=runtime, actor=dispatcher,
                             incident_id=incident.id, calendar=CALENDAR,
                             reason="涉及多个部门，需街道协调")
    assert moved.tier == Tier.STREET
    assert before is not None
    session.expire_all()
    assert session.get(Deadline, before.id).state == DeadlineState.CANCELLED  # type: ignore[union-attr]
    assert _open_tier_clock(session, incident) is not None
    actions.escalate(session=session, runtime=runtime, actor=dispatcher,
                     incident_id=incident.id, calendar=CALENDAR, reason="须区城管局处理")
    assert _reload(session, incident).tier == Tier.DISTRICT
    assert _open_tier_clock(session, incident) is None
    with pytest.raises(Conflict) as top:
        actions.escalate(session=session, runtime=runtime, actor=dispatcher,
                         incident_id=incident.id, calendar=CALENDAR, reason="再升")
    assert top.value.message("zh_CN") == "该事件已在区级部门处置，不能再升级"
    assert [t.actor for t in _escalations(session, incident)] == [dispatcher.username] * 2


def test_after_passing_it_up_only_the_level_that_took_it_over_may_close(
        session: Session, runtime: Runtime, clock: FixedClock, area: Area,
        dispatcher: User) -> None:
    responder = make_user(session, Role.ZONE_RESPONDER)
    grid_worker = make_user(session, Role.GRID_WORKER)
    officer = make_user(session, Role.DISTRICT_DEPARTMENT)
    put_on_duty(session, responder, area.zone_a, clock.now(),
                position=offset(A_LON, A_LAT, 100))
    incident = report(session, runtime, area, category=GARBAGE).incident  # a grid may close it
    for reason in ("需街道协调", "须区城管局处理"):
        actions.escalate(session=session, runtime=runtime, actor=dispatcher,
                         incident_id=incident.id, calendar=CALENDAR, reason=reason)
    actions.arrive(session=session, runtime=runtime, actor=responder, incident_id=incident.id)
    actions.handle(session=session, runtime=runtime, actor=responder, incident_id=incident.id)
    actions.check(session=session, runtime=runtime, actor=grid_worker, incident_id=incident.id)
    for below in (grid_worker, dispatcher):
        with pytest.raises(PermissionDenied) as refused:
            actions.close(session=session, runtime=runtime, actor=below,
                          incident_id=incident.id, calendar=CALENDAR)
        assert refused.value.message("zh_CN") == "该类事件须由区级或以上结案"
    closed = actions.close(session=session, runtime=runtime, actor=officer,
                           incident_id=incident.id, calendar=CALENDAR)
    assert closed.state == IncidentState.CLOSED


def test_a_district_officer_takes_an_order_dispatched_to_them(
        session: Session, runtime: Runtime, area: Area, dispatcher: User) -> None:
    officer = make_user(session, Role.DISTRICT_DEPARTMENT)
    incident = report(session, runtime, area, category="hotline.complaint").incident
    assert incident.tier == Tier.DISTRICT and incident.state == IncidentState.REGISTERED
    actions.dispatch(session=session, runtime=runtime, actor=dispatcher,
                     incident_id=incident.id, calendar=CALENDAR, user_ids=[officer.id])
    accepted = actions.accept(session=session, runtime=runtime, actor=officer,
                              incident_id=incident.id)
    assert accepted.state == IncidentState.ACCEPTED
    other = make_user(session, Role.DISTRICT_DEPARTMENT)
    with pytest.raises(PermissionDenied):  # not sent to them
        actions.arrive(session=session, runtime=runtime, actor=other, incident_id=incident.id)


def test_a_zone_with_no_leader_named_has_its_leaders_notices_go_to_its_responders(
        session: Session, runtime: Runtime, clock: FixedClock, area: Area) -> None:
    """A deployment from before the zone-leader role: the zone's step still reaches someone.
    A leader of another zone does not count."""
    other = make_user(session, Role.ZONE_LEADER)
    other.scope_region_id = area.zone_b.id
    session.commit()
    incident = report(session, runtime, area, category=PROPERTY).incident
    while _reload(session, incident).tier == Tier.GRID:  # the grid's limit, missed until it goes up
        tier_clock = _open_tier_clock(session, incident)
        assert tier_clock is not None
        _past(clock, tier_clock.due_at)
        _sweep(runtime)

    escalated = session.scalars(sa.select(Notice).where(
        Notice.incident_id == incident.id, Notice.level == NoticeLevel.ESCALATION)).all()
    assert [(n.audience, n.to_role) for n in escalated] == [
        (Audience.ZONE_LEADER, Role.ZONE_RESPONDER)]
