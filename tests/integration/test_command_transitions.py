"""Every transition action: the Flip row, the audit row, compare-and-set, and the side rules."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

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
from grassroots.command.models import (
    Deadline,
    Incident,
    IncidentTransition,
    Notice,
    ResponderStatus,
)
from grassroots.command.states import (
    DeadlineKind,
    DeadlineState,
    IncidentState,
    NoticeLevel,
    ResponderState,
    ResponseRole,
    UnitType,
)
from grassroots.kernel.audit.chain import verify_chain
from grassroots.kernel.audit.models import AuditRow
from grassroots.kernel.auth.models import User
from grassroots.kernel.auth.roles import Role
from grassroots.kernel.clock import FixedClock
from grassroots.kernel.errors import Conflict, PermissionDenied, ValidationFailed
from grassroots.runtime import Runtime


@dataclass
class Crew:
    area: Area
    responder: User
    second: User
    grid_worker: User
    dispatcher: User
    leader: User
    enforcer: User


@pytest.fixture
def crew(session: Session, runtime: Runtime, clock: FixedClock) -> Crew:
    load_categories(session, runtime)
    area = make_area(session)
    now = clock.now()
    crew = Crew(area, make_user(session, Role.ZONE_RESPONDER),
                make_user(session, Role.ZONE_RESPONDER), make_user(session, Role.GRID_WORKER),
                make_user(session, Role.DISPATCHER), make_user(session, Role.STREET_LEADER),
                make_user(session, Role.ZONE_RESPONDER))
    put_on_duty(session, crew.responder, area.zone_a, now, position=offset(A_LON, A_LAT, 100))
    put_on_duty(session, crew.second, area.zone_a, now, position=offset(A_LON, A_LAT, 900))
    put_on_duty(session, crew.enforcer, area.zone_a, now, unit_type=UnitType.LAW_ENFORCEMENT,
                position=offset(A_LON, A_LAT, 2000))
    return crew


def _dispatched(session: Session, runtime: Runtime, crew: Crew, **kwargs: Any) -> Incident:
    result = report(session, runtime, crew.area, reporter_phone="13800138000", **kwargs)
    assert result.assigned_user_ids == [crew.responder.id]
    return result.incident


T = TypeVar("T")


def _get(session: Session, model: type[T], key: int) -> T:
    session.expire_all()
    row = session.get(model, key)
    assert row is not None
    return row


def _flips(session: Session, incident: Incident) -> list[tuple[str, str | None, str]]:
    return [(t.action, t.from_state, t.to_state)
            for t in queries.transitions_of(session=session, incident_id=incident.id)]


def _tags(session: Session) -> list[str]:
    return list(session.scalars(sa.select(AuditRow.action).order_by(AuditRow.seq)))


def _open_kinds(session: Session, incident: Incident) -> set[DeadlineKind]:
    return {d.kind for d in queries.deadlines_of(session=session, incident_id=incident.id,
                                                 open_only=True)}


def _run_to_handled(session: Session, runtime: Runtime, crew: Crew,
                    incident: Incident) -> Incident:
    actions.accept(session=session, runtime=runtime, actor=crew.responder,
                   incident_id=incident.id)
    actions.arrive(session=session, runtime=runtime, actor=crew.responder,
                   incident_id=incident.id, lon=A_LON, lat=A_LAT)
    return actions.handle(session=session, runtime=runtime, actor=crew.responder,
                          incident_id=incident.id, note="cleared")


def test_the_whole_loop_runs_from_report_to_close_with_a_flip_and_audit_row_each_step(
        session: Session, runtime: Runtime, clock: FixedClock, crew: Crew) -> None:
    incident = _dispatched(session, runtime, crew)
    clock.advance(timedelta(seconds=30))
    actions.accept(session=session, runtime=runtime, actor=crew.responder,
                   incident_id=incident.id)
    clock.advance(timedelta(minutes=3))
    actions.arrive(session=session, runtime=runtime, actor=crew.responder,
                   incident_id=incident.id, lon=A_LON, lat=A_LAT)
    clock.advance(timedelta(minutes=40))
    actions.handle(session=session, runtime=runtime, actor=crew.responder,
                   incident_id=incident.id, note="cleared")
    actions.check(session=session, runtime=runtime, actor=crew.grid_worker,
                  incident_id=incident.id)
    closed = actions.close(session=session, runtime=runtime, actor=crew.dispatcher,
                           incident_id=incident.id, calendar=CALENDAR)

    assert closed.state == IncidentState.CLOSED
    assert [f[0] for f in _flips(session, closed)] == [
        "receive", "register", "dispatch", "accept", "arrive", "handle", "check", "close"]
    assert _tags(session)[-5:] == [f"incident:transition:{a}" for a in
                                   ("accept", "arrive", "handle", "check", "close")]
    assert (closed.first_on_scene_at - closed.dispatched_at) == timedelta(minutes=3, seconds=30)
    assert closed.handled_at is not None and closed.closed_at is not None
    states = {d.kind: d.state for d in queries.deadlines_of(session=session,
                                                             incident_id=closed.id)}
    assert states[DeadlineKind.FIRST_ON_SCENE] == DeadlineState.MET
    assert states[DeadlineKind.HANDLING] == DeadlineState.MET
    assert states[DeadlineKind.CALLBACK] == DeadlineState.OPEN  # the reporter left a phone
    assert _get(session, ResponderStatus, crew.responder.id).state == ResponderState.AVAILABLE
    assert verify_chain(session=session, runtime=runtime).ok


def test_the_callback_records_satisfaction_and_an_unhappy_reporter_gets_a_reopen(
        session: Session, runtime: Runtime, clock: FixedClock, crew: Crew) -> None:
    incident = _run_to_handled(session, runtime, crew, _dispatched(session, runtime, crew))
    actions.check(session=session, runtime=runtime, actor=crew.grid_worker,
                  incident_id=incident.id)
    actions.close(session=session, runtime=runtime, actor=crew.dispatcher,
                  incident_id=incident.id, calendar=CALENDAR)
    called = actions.callback(session=session, runtime=runtime, actor=crew.dispatcher,
                              incident_id=incident.id, satisfied=False, note="还有垃圾")
    assert called.satisfied is False
    assert DeadlineKind.CALLBACK not in _open_kinds(session, called)

    with pytest.raises(ValidationFailed):
        actions.reopen(session=session, runtime=runtime, actor=crew.dispatcher,
                       incident_id=incident.id, reason=" ", calendar=CALENDAR)
    reopened = actions.reopen(session=session, runtime=runtime, actor=crew.dispatcher,
                              incident_id=incident.id, reason="居民不满意", calendar=CALENDAR)
    assert reopened.state == IncidentState.REGISTERED
    assert DeadlineKind.DISPATCH in _open_kinds(session, reopened)
    again = actions.dispatch(session=session, runtime=runtime, actor=crew.dispatcher,
                             incident_id=incident.id, calendar=CALENDAR)
    assert again.state == IncidentState.DISPATCHED
    assert {DeadlineKind.FIRST_ON_SCENE, DeadlineKind.HANDLING} <= _open_kinds(session, again)


def test_only_an_assigned_responder_may_accept_arrive_or_handle(
        session: Session, runtime: Runtime, clock: FixedClock, crew: Crew) -> None:
    incident = _dispatched(session, runtime, crew)
    for step in (actions.accept, actions.arrive):
        with pytest.raises(PermissionDenied):
            step(session=session, runtime=runtime, actor=crew.second, incident_id=incident.id)
    with pytest.raises(PermissionDenied):
        actions.accept(session=session, runtime=runtime, actor=crew.dispatcher,
                       incident_id=incident.id)


def test_the_handler_may_not_check_their_own_work_but_a_colleague_may(
        session: Session, runtime: Runtime, clock: FixedClock, crew: Crew) -> None:
    incident = _run_to_handled(session, runtime, crew, _dispatched(session, runtime, crew))
    flips_before = len(_flips(session, incident))
    with pytest.raises(PermissionDenied):
        actions.check(session=session, runtime=runtime, actor=crew.responder,
                      incident_id=incident.id)
    assert len(_flips(session, incident)) == flips_before
    checked = actions.check(session=session, runtime=runtime, actor=crew.second,
                            incident_id=incident.id)
    assert checked.state == IncidentState.CHECKED
    roles = {(a.user_id, a.role) for a in queries.assignments_of(session=session,
                                                                 incident_id=incident.id)}
    assert (crew.responder.id, ResponseRole.HANDLER) in roles
    assert (crew.second.id, ResponseRole.CHECKER) in roles


def test_a_category_closed_at_street_level_refuses_a_grid_worker(
        session: Session, runtime: Runtime, clock: FixedClock, crew: Crew) -> None:
    # Dumped construction waste goes to law enforcement and may be closed at zone level.
    result = report(session, runtime, crew.area, category="city_env.construction_waste")
    incident = result.incident
    assert result.assigned_user_ids == [crew.enforcer.id]
    actions.arrive(session=session, runtime=runtime, actor=crew.enforcer,
                   incident_id=incident.id)
    actions.handle(session=session, runtime=runtime, actor=crew.enforcer,
                   incident_id=incident.id)
    actions.check(session=session, runtime=runtime, actor=crew.dispatcher,
                  incident_id=incident.id)
    with pytest.raises(PermissionDenied):
        actions.close(session=session, runtime=runtime, actor=crew.grid_worker,
                      incident_id=incident.id, calendar=CALENDAR)
    closed = actions.close(session=session, runtime=runtime, actor=crew.second,
                           incident_id=incident.id, calendar=CALENDAR)
    assert closed.state == IncidentState.CLOSED
    assert DeadlineKind.CALLBACK not in _open_kinds(session, closed)  # no reporter phone


def test_a_stale_version_is_a_conflict_and_writes_nothing(
        session: Session, runtime: Runtime, clock: FixedClock, crew: Crew) -> None:
    incident = _dispatched(session, runtime, crew)
    seen = incident.version
    actions.accept(session=session, runtime=runtime, actor=crew.responder,
                   incident_id=incident.id, expected_version=seen)
    flips, audits = len(_flips(session, incident)), len(_tags(session))
    with pytest.raises(Conflict):
        actions.arrive(session=session, runtime=runtime, actor=crew.responder,
                       incident_id=incident.id, expected_version=seen)
    assert (len(_flips(session, incident)), len(_tags(session))) == (flips, audits)
    assert _get(session, Incident, incident.id).state == IncidentState.ACCEPTED


def test_two_sessions_racing_on_one_transition_give_one_winner_and_one_conflict(
        session: Session, runtime: Runtime, clock: FixedClock, crew: Crew) -> None:
    incident = _dispatched(session, runtime, crew)
    with runtime.session_factory() as a, runtime.session_factory() as b:
        version_a = a.get(Incident, incident.id).version
        version_b = b.get(Incident, incident.id).version
        a.commit()
        b.commit()  # both saw version 3; now both act on it
        actions.supervise(session=a, runtime=runtime, actor=crew.dispatcher,
                          incident_id=incident.id, reason="快", expected_version=version_a)
        with pytest.raises(Conflict):
            actions.supervise(session=b, runtime=runtime, actor=crew.leader,
                              incident_id=incident.id, reason="再快", expected_version=version_b)
    assert [f[0] for f in _flips(session, incident)].count("supervise") == 1


def test_two_threads_accepting_at_once_give_exactly_one_acceptance(
        session: Session, runtime: Runtime, clock: FixedClock, crew: Crew) -> None:
    incident = _dispatched(session, runtime, crew)
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def worker() -> None:
        with runtime.session_factory() as own:
            version = own.get(Incident, incident.id).version
            own.commit()
            barrier.wait()
            try:
                actions.accept(session=own, runtime=runtime, actor=crew.responder,
                               incident_id=incident.id, expected_version=version)
                outcomes.append("won")
            except Conflict:
                outcomes.append("conflict")

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["conflict", "won"]
    accepts = session.scalar(sa.select(sa.func.count()).select_from(IncidentTransition).where(
        IncidentTransition.action == "accept"))
    assert accepts == 1


def test_extend_moves_the_handling_limit_by_working_days_up_to_ten_in_all(
        session: Session, runtime: Runtime, clock: FixedClock, crew: Crew) -> None:
    incident = _dispatched(session, runtime, crew, category="hotline.help")
    handling = next(d for d in queries.deadlines_of(session=session, incident_id=incident.id)
                    if d.kind == DeadlineKind.HANDLING)
    original_due = handling.due_at
    with pytest.raises(ValidationFailed):
        actions.extend(session=session, runtime=runtime, actor=crew.dispatcher,
                       incident_id=incident.id, calendar=CALENDAR, working_days=3, reason="")
    with pytest.raises(PermissionDenied):
        actions.extend(session=session, runtime=runtime, actor=crew.responder,
                       incident_id=incident.id, calendar=CALENDAR, working_days=3,
                       reason="需协调")
    extended = actions.extend(session=session, runtime=runtime, actor=crew.leader,
                              incident_id=incident.id, calendar=CALENDAR, working_days=7,
                              reason="需协调多部门")
    session.expire_all()
    moved = _get(session, Deadline, handling.id)
    assert moved.due_at == CALENDAR.add_working_days(original_due, 7)
    assert extended.extension_days == 7
    with pytest.raises(ValidationFailed):
        actions.extend(session=session, runtime=runtime, actor=crew.leader,
                       incident_id=incident.id, calendar=CALENDAR, working_days=4,
                       reason="还要")


def test_send_back_returns_it_to_the_centre_and_frees_the_responder(
        session: Session, runtime: Runtime, clock: FixedClock, crew: Crew) -> None:
    incident = _dispatched(session, runtime, crew)
    back = actions.send_back(session=session, runtime=runtime, actor=crew.responder,
                             incident_id=incident.id, reason="不属于本片区", calendar=CALENDAR)
    assert back.state == IncidentState.SENT_BACK
    assert queries.assignments_of(session=session, incident_id=incident.id,
                                  active_only=True) == []
    assert _get(session, ResponderStatus, crew.responder.id).state == ResponderState.AVAILABLE
    # The level's own limit runs on while the centre finds the right unit.
    assert _open_kinds(session, back) == {DeadlineKind.DISPATCH, DeadlineKind.TIER}
    redispatched = actions.dispatch(session=session, runtime=runtime, actor=crew.dispatcher,
                                    incident_id=incident.id, calendar=CALENDAR,
                                    user_ids=[crew.second.id], reason="改派")
    assert redispatched.state == IncidentState.DISPATCHED
    assert [a.user_id for a in queries.assignments_of(
        session=session, incident_id=incident.id, active_only=True)] == [crew.second.id]


def test_send_back_after_two_working_days_is_refused(
        session: Session, runtime: Runtime, clock: FixedClock, crew: Crew) -> None:
    incident = _dispatched(session, runtime, crew, category="hotline.help")
    clock.advance(timedelta(days=3))  # Tuesday → Friday
    with pytest.raises(ValidationFailed):
        actions.send_back(session=session, runtime=runtime, actor=crew.responder,
                          incident_id=incident.id, reason="不归我们", calendar=CALENDAR)


def test_void_needs_a_reason_and_cancels_every_clock(
        session: Session, runtime: Runtime, clock: FixedClock, crew: Crew) -> None:
    incident = _dispatched(session, runtime, crew)
    with pytest.raises(ValidationFailed):
        actions.void(session=session, runtime=runtime, actor=crew.dispatcher,
                     incident_id=incident.id, reason="")
    voided = actions.void(session=session, runtime=runtime, actor=crew.dispatcher,
                          incident_id=incident.id, reason="重复报送的测试数据")
    assert voided.state == IncidentState.VOIDED
    assert _open_kinds(session, voided) == set()
    assert _get(session, ResponderStatus, crew.responder.id).state == ResponderState.AVAILABLE


def test_suspend_pauses_the_clocks_and_resume_restores_state_and_time_left(
        session: Session, runtime: Runtime, clock: FixedClock, crew: Crew) -> None:
    incident = _dispatched(session, runtime, crew)
    actions.accept(session=session, runtime=runtime, actor=crew.responder,
                   incident_id=incident.id)
    clock.advance(timedelta(minutes=1))  # four minutes left to arrive
    suspended = actions.suspend(session=session, runtime=runtime, actor=crew.leader,
                                incident_id=incident.id, reason="等待产权单位确认")
    assert suspended.state == IncidentState.SUSPENDED
    assert _open_kinds(session, suspended) == set()
    clock.advance(timedelta(days=2))
    resumed = actions.resume(session=session, runtime=runtime, actor=crew.leader,
                             incident_id=incident.id, reason="产权已确认")
    assert resumed.state == IncidentState.ACCEPTED
    first = next(d for d in queries.deadlines_of(session=session, incident_id=incident.id)
                 if d.kind == DeadlineKind.FIRST_ON_SCENE)
    assert first.state == DeadlineState.OPEN
    assert first.due_at - clock.now() == timedelta(minutes=4)
    assert first.warn_at >= clock.now()


def test_supervise_sends_a_notice_to_the_people_on_the_incident(
        session: Session, runtime: Runtime, clock: FixedClock, crew: Crew) -> None:
    incident = _dispatched(session, runtime, crew)
    notices = actions.supervise(session=session, runtime=runtime, actor=crew.leader,
                                incident_id=incident.id, reason="群众反映强烈，请加快")
    assert [(n.to_user_id, n.level) for n in notices] == [
        (crew.responder.id, NoticeLevel.SUPERVISION)]
    assert _get(session, Incident, incident.id).state == IncidentState.DISPATCHED
    assert queries.notices_for(session=session, user=crew.responder)[0].id == notices[0].id


def test_a_reinforcement_is_sent_and_its_arrival_stops_its_clock(
        session: Session, runtime: Runtime, clock: FixedClock, crew: Crew) -> None:
    incident = _dispatched(session, runtime, crew)
    actions.arrive(session=session, runtime=runtime, actor=crew.responder,
                   incident_id=incident.id)
    request = actions.request_reinforcement(
        session=session, runtime=runtime, actor=crew.responder, incident_id=incident.id,
        unit_type=UnitType.LAW_ENFORCEMENT, reason="当事人拒不配合")
    sent = queries.assignments_of(session=session, incident_id=incident.id,
                                  roles=[ResponseRole.REINFORCEMENT])
    assert [a.user_id for a in sent] == [crew.enforcer.id]
    assert DeadlineKind.REINFORCEMENT in _open_kinds(session, incident)
    clock.advance(timedelta(minutes=12))
    arrived = actions.reinforcement_arrived(session=session, runtime=runtime,
                                            actor=crew.responder, incident_id=incident.id,
                                            request_id=request.id)
    assert arrived.arrived_at - arrived.requested_at == timedelta(minutes=12)
    assert DeadlineKind.REINFORCEMENT not in _open_kinds(session, incident)
    with pytest.raises(Conflict):
        actions.reinforcement_arrived(session=session, runtime=runtime, actor=crew.responder,
                                      incident_id=incident.id, request_id=request.id)


def test_an_enquiry_may_be_handled_without_a_site_visit_but_garbage_may_not(
        session: Session, runtime: Runtime, clock: FixedClock, crew: Crew) -> None:
    garbage = _dispatched(session, runtime, crew)
    actions.accept(session=session, runtime=runtime, actor=crew.responder,
                   incident_id=garbage.id)
    with pytest.raises(Conflict):
        actions.handle(session=session, runtime=runtime, actor=crew.responder,
                       incident_id=garbage.id)
    enquiry = report(session, runtime, crew.area, category="hotline.enquiry",
                     auto_dispatch=False).incident
    actions.dispatch(session=session, runtime=runtime, actor=crew.dispatcher,
                     incident_id=enquiry.id, calendar=CALENDAR, user_ids=[crew.second.id])
    assert DeadlineKind.FIRST_ON_SCENE not in _open_kinds(session, enquiry)
    actions.accept(session=session, runtime=runtime, actor=crew.second, incident_id=enquiry.id)
    handled = actions.handle(session=session, runtime=runtime, actor=crew.second,
                             incident_id=enquiry.id, note="电话答复")
    assert handled.state == IncidentState.HANDLED


def test_an_unverified_report_waits_for_the_centre_to_register_it(
        session: Session, runtime: Runtime, clock: FixedClock, crew: Crew) -> None:
    incident = report(session, runtime, crew.area, channel="open311",
                      auto_register=False).incident
    assert incident.state == IncidentState.RECEIVED
    with pytest.raises(PermissionDenied):
        actions.register(session=session, runtime=runtime, actor=crew.responder,
                         incident_id=incident.id, calendar=CALENDAR)
    registered = actions.register(session=session, runtime=runtime, actor=crew.dispatcher,
                                  incident_id=incident.id, calendar=CALENDAR)
    assert registered.state == IncidentState.REGISTERED and registered.registered_at


def test_a_manual_dispatch_with_nobody_available_is_refused(
        session: Session, runtime: Runtime, clock: FixedClock, crew: Crew) -> None:
    incident = report(session, runtime, crew.area, auto_dispatch=False).incident
    session.execute(sa.update(ResponderStatus).values(state=ResponderState.OFF))
    session.commit()
    with pytest.raises(ValidationFailed):
        actions.dispatch(session=session, runtime=runtime, actor=crew.dispatcher,
                         incident_id=incident.id, calendar=CALENDAR)
    assert _get(session, Incident, incident.id).state == IncidentState.REGISTERED


def test_a_responder_reports_availability_and_position(
        session: Session, runtime: Runtime, clock: FixedClock, crew: Crew) -> None:
    before = len(_tags(session))
    actions.update_responder_status(session=session, runtime=runtime, actor=crew.second,
                                    lon=A_LON, lat=A_LAT)
    assert len(_tags(session)) == before  # a position ping is telemetry, not audited
    status = actions.update_responder_status(session=session, runtime=runtime,
                                             actor=crew.second, state="off")
    assert status.state == ResponderState.OFF and status.lon == A_LON
    assert _tags(session)[-1] == "responder:status"
    with pytest.raises(PermissionDenied):
        actions.update_responder_status(session=session, runtime=runtime, actor=crew.second,
                                        user_id=crew.responder.id, state="off")


def test_a_dispatcher_puts_someone_on_the_roster_of_a_zone_only(
        session: Session, runtime: Runtime, clock: FixedClock, crew: Crew) -> None:
    now = clock.now()
    shift = actions.create_duty_shift(session=session, runtime=runtime, actor=crew.dispatcher,
                                      user_id=crew.grid_worker.id, zone_id=crew.area.zone_b.id,
                                      unit_type="zone_team", starts_at=now,
                                      ends_at=now + timedelta(hours=8))
    assert shift.id and _tags(session)[-1] == "duty_shift:create"
    with pytest.raises(ValidationFailed):
        actions.create_duty_shift(session=session, runtime=runtime, actor=crew.dispatcher,
                                  user_id=crew.grid_worker.id, zone_id=crew.area.street.id,
                                  unit_type="zone_team", starts_at=now,
                                  ends_at=now + timedelta(hours=8))
    with pytest.raises(PermissionDenied):
        actions.create_duty_shift(session=session, runtime=runtime, actor=crew.responder,
                                  user_id=crew.grid_worker.id, zone_id=crew.area.zone_b.id,
                                  unit_type="zone_team", starts_at=now,
                                  ends_at=now + timedelta(hours=8))


def test_scoped_users_see_only_notices_and_incidents_of_their_region(
        session: Session, runtime: Runtime, clock: FixedClock, crew: Crew) -> None:
    incident = report(session, runtime, crew.area, auto_dispatch=False).incident
    inside = make_user(session, Role.DISPATCHER, scope_region_id=crew.area.zone_a.id)
    outside = make_user(session, Role.DISPATCHER, scope_region_id=crew.area.zone_b.id)
    session.commit()
    assert [i.id for i in queries.list_incidents(session=session, user=inside)] == [incident.id]
    assert queries.list_incidents(session=session, user=outside) == []
    session.add(Notice(incident_id=incident.id, level=NoticeLevel.REMINDER,
                       audience="command_centre", to_role=Role.DISPATCHER, message_id="m",
                       at=clock.now()))
    session.commit()
    assert len(queries.notices_for(session=session, user=inside)) == 1
    assert queries.notices_for(session=session, user=outside) == []
