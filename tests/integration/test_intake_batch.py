"""Group commit: many reports in one transaction, exactly as one by one; the writer thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from tests.integration.command_support import (
    A_LAT,
    A_LON,
    ADMIN,
    B_LAT,
    B_LON,
    CALENDAR,
    Area,
    load_categories,
    make_area,
    make_user,
    offset,
    put_on_duty,
    start_over,
)

from grassroots.command import actions
from grassroots.command.intake_writer import IntakeWriter
from grassroots.command.models import (
    Assignment,
    Deadline,
    Incident,
    IncidentNumberCounter,
    IncidentTransition,
)
from grassroots.command.states import DeadlineKind, IncidentState
from grassroots.db import column_values
from grassroots.kernel.audit.chain import verify_chain
from grassroots.kernel.audit.models import AuditRow
from grassroots.kernel.auth.roles import Role
from grassroots.kernel.clock import FixedClock, to_display
from grassroots.kernel.errors import ValidationFailed
from grassroots.runtime import Runtime

GARBAGE = "city_env.exposed_garbage"


@pytest.fixture
def area(session: Session, runtime: Runtime) -> Area:
    load_categories(session, runtime)
    return make_area(session)


def _calls(area: Area) -> list[actions.IntakeCall]:
    """A batch with everything intake decides: nearest people, a duplicate of a report made in
    the same batch, an emergency wanting two, no dispatch asked, no region, an address only, a
    bad category and a key repeated within the batch."""
    near_a = offset(A_LON, A_LAT, 30)

    def call(**values: Any) -> actions.IntakeCall:
        base: dict[str, Any] = {"actor": ADMIN, "channel": "grid_worker",
                                "category_code": GARBAGE, "lon": A_LON, "lat": A_LAT}
        return actions.IntakeCall(**(base | values))

    return [
        call(idempotency_key="first", reporter_phone="13800138000"),
        call(lon=near_a[0], lat=near_a[1], description="同一堆垃圾"),
        call(category_code="city_env.overflowing_bin", urgency=4),
        call(lon=B_LON, lat=B_LAT, auto_dispatch=False),
        call(lon=106.1, lat=29.1),
        call(lon=None, lat=None, address_text="双福街道某小区门口"),
        call(category_code="no.such_category"),
        call(idempotency_key="first", reporter_phone="13800138000"),
    ]


def _signature(session: Session, incident_ids: list[int],
               audits_after: int = 0) -> list[tuple[Any, ...]]:
    """What the intake wrote for each incident, without ids and row order across incidents
    (audit rows from audits_after on: a second run may reuse the ids of the first)."""
    out = []
    for incident_id in incident_ids:
        incident = session.get(Incident, incident_id, populate_existing=True)
        assert incident is not None
        flips = [(t.action, t.from_state, t.to_state, t.actor, t.detail) for t in session.scalars(
            sa.select(IncidentTransition).where(IncidentTransition.incident_id == incident_id)
            .order_by(IncidentTransition.id))]
        clocks = sorted((d.kind, d.state, d.due_at - incident.received_at) for d in session.scalars(
            sa.select(Deadline).where(Deadline.incident_id == incident_id)))
        sent = sorted((a.user_id, a.role, round(a.distance_m or 0)) for a in session.scalars(
            sa.select(Assignment).where(Assignment.incident_id == incident_id)))
        audits = [(a.action, a.actor, a.detail) for a in session.scalars(
            sa.select(AuditRow).where(AuditRow.object_type == "incident",
                                      AuditRow.object_id == str(incident_id),
                                      AuditRow.seq > audits_after)
            .order_by(AuditRow.seq))]
        out.append((incident.number, incident.state, incident.tier, incident.zone_id,
                    incident.urgency, incident.needs_duplicate_review, incident.title,
                    incident.registered_at, incident.dispatched_at, flips, clocks, sent, audits))
    return out


def test_a_batch_writes_what_the_same_reports_write_one_by_one(
        session: Session, runtime: Runtime, clock: FixedClock, area: Area) -> None:
    now = clock.now()
    for east in (10, 60, 400):
        put_on_duty(session, make_user(session, Role.ZONE_RESPONDER), area.zone_a, now,
                    position=offset(A_LON, A_LAT, east))
    put_on_duty(session, make_user(session, Role.ZONE_RESPONDER), area.zone_b, now)

    batch = actions.intake_many(session=session, runtime=runtime, calendar=CALENDAR,
                                locator=area.locate, calls=_calls(area))
    assert [type(o).__name__ for o in batch] == ["IntakeResult"] * 6 + [
        "ValidationFailed", "IntakeAlone"]
    made = [o for o in batch if isinstance(o, actions.IntakeResult)]
    in_batch = _signature(session, [r.incident.id for r in made])
    start_over(session)
    audited = session.scalar(sa.select(sa.func.max(AuditRow.seq))) or 0

    alone: list[actions.IntakeResult] = []
    for call in _calls(area)[:6]:
        alone.append(actions.intake_one(session=session, runtime=runtime, calendar=CALENDAR,
                                        locator=area.locate, call=call))
    assert in_batch == _signature(session, [r.incident.id for r in alone], audited)
    # And what the signature holds is what intake should decide.
    states = [r.incident.state for r in made]
    assert states == [IncidentState.DISPATCHED, IncidentState.DISPATCHED,
                      IncidentState.DISPATCHED, IncidentState.REGISTERED,
                      IncidentState.REGISTERED, IncidentState.REGISTERED]
    assert [d.number for d in made[1].duplicate_candidates] == [made[0].incident.number]
    assert made[1].incident.needs_duplicate_review
    assert len(made[2].assigned_user_ids) == 1  # an emergency wants two; one was left
    assert len({u for r in made for u in r.assigned_user_ids}) == 3
    assert made[0].reporter_phone == "13800138000"
    assert verify_chain(session=session, runtime=runtime).ok


def test_a_batch_spanning_two_days_numbers_each_day_from_its_own_counter(
        session: Session, runtime: Runtime, clock: FixedClock, area: Area) -> None:
    """Numbers run per day (Beijing time): a batch holding reports received before and after
    midnight bumps both days' counters, each by its own count, in the order received."""
    clock.set(clock.now().replace(hour=16, minute=10))  # 00:10 the next day in Beijing
    today = clock.now()
    yesterday = today - timedelta(minutes=20)  # 23:50 in Beijing
    earlier = actions.intake_one(session=session, runtime=runtime, calendar=CALENDAR,
                                 locator=area.locate, call=actions.IntakeCall(
                                     actor=ADMIN, channel="grid_worker", category_code=GARBAGE,
                                     lon=A_LON, lat=A_LAT, received_at=yesterday))

    def call(received: Any) -> actions.IntakeCall:
        return actions.IntakeCall(actor=ADMIN, channel="grid_worker", category_code=GARBAGE,
                                  lon=B_LON, lat=B_LAT, received_at=received)

    batch = actions.intake_many(session=session, runtime=runtime, calendar=CALENDAR,
                                locator=area.locate,
                                calls=[call(today), call(yesterday), call(today)])

    numbers = [o.incident.number for o in batch if isinstance(o, actions.IntakeResult)]
    day_before = to_display(yesterday).strftime("%Y%m%d")
    day = to_display(today).strftime("%Y%m%d")
    assert earlier.incident.number.endswith(f"{day_before}-000001")
    assert [n[-15:] for n in numbers] == [f"{day}-000001", f"{day_before}-000002",
                                          f"{day}-000002"]
    counters = dict(session.execute(sa.select(IncidentNumberCounter.day,
                                              IncidentNumberCounter.last)).all())
    assert counters == {day_before: 2, day: 2}


def test_a_key_repeated_in_the_batch_is_taken_after_it(
        session: Session, runtime: Runtime, area: Area) -> None:
    writer = IntakeWriter(runtime)
    calls = _calls(area)
    first = writer.submit(calls[0])
    again = writer.submit(calls[7])
    assert first.created and not again.created
    assert again.incident.id == first.incident.id
    writer.close()


@contextmanager
def _writes_held(runtime: Runtime) -> Iterator[None]:
    """Hold the database's write lock (PostgreSQL: the number counter) until the block ends."""
    with runtime.engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(sa.text("LOCK TABLE incident_number_counter IN EXCLUSIVE MODE"))
        else:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            connection.rollback()


def _submit_in_threads(writer: IntakeWriter, calls: list[actions.IntakeCall],
                       outcomes: dict[int, Any], first: int = 0) -> list[threading.Thread]:
    def run(n: int, call: actions.IntakeCall) -> None:
        try:
            outcomes[n] = writer.submit(call)
        except Exception as exc:  # the caller's error, as the writer hands it back
            outcomes[n] = exc

    threads = [threading.Thread(target=run, args=(n, call))
               for n, call in enumerate(calls, start=first)]
    for thread in threads:
        thread.start()
    return threads


def _wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_reports_waiting_while_the_writer_is_busy_go_in_as_one_batch(
        session: Session, runtime: Runtime, clock: FixedClock, area: Area) -> None:
    put_on_duty(session, make_user(session, Role.ZONE_RESPONDER), area.zone_a, clock.now())
    writer = IntakeWriter(runtime)
    calls = [actions.IntakeCall(actor=ADMIN, channel="grid_worker", category_code=GARBAGE,
                                lon=lon, lat=A_LAT, idempotency_key=f"k{n}")
             for n, lon in enumerate([A_LON, *(offset(A_LON, A_LAT, 500 * k)[0]
                                               for k in range(1, 6))])]
    outcomes: dict[int, Any] = {}
    with _writes_held(runtime):
        threads = _submit_in_threads(writer, calls[:1], outcomes)
        _wait_for(lambda: writer.batches == 1)  # the first is stuck on the lock
        threads += _submit_in_threads(writer, calls[1:], {})
        _wait_for(lambda: writer.waiting == 5)
        assert not outcomes  # nothing is answered before its commit
    for thread in threads:
        thread.join(10)
    writer.close()
    assert (writer.batches, writer.largest_batch) == (2, 5)
    numbers = session.scalars(sa.select(Incident.number).order_by(Incident.number)).all()
    assert len(numbers) == 6 and len(set(numbers)) == 6
    assert outcomes[0].incident.state == IncidentState.DISPATCHED
    assert verify_chain(session=session, runtime=runtime).ok


@contextmanager
def _refusing_description(session: Session, text: str) -> Iterator[None]:
    """A database trigger that refuses an incident with this description: a real write error."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        session.execute(sa.text(
            "CREATE FUNCTION refuse_boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF NEW.description = '{text}' THEN RAISE EXCEPTION 'refused'; END IF; "
            "RETURN NEW; END $$"))
        session.execute(sa.text("CREATE TRIGGER refuse_boom BEFORE INSERT ON incident "
                                "FOR EACH ROW EXECUTE FUNCTION refuse_boom()"))
    else:
        session.execute(sa.text(
            "CREATE TRIGGER refuse_boom BEFORE INSERT ON incident "
            f"WHEN NEW.description = '{text}' BEGIN SELECT RAISE(ABORT, 'refused'); END"))
    session.commit()
    try:
        yield
    finally:
        session.execute(sa.text("DROP TRIGGER refuse_boom" + (
            " ON incident" if dialect == "postgresql" else "")))
        if dialect == "postgresql":
            session.execute(sa.text("DROP FUNCTION refuse_boom()"))
        session.commit()


def test_a_batch_the_database_refuses_is_taken_one_by_one(
        session: Session, runtime: Runtime, clock: FixedClock, area: Area) -> None:
    writer = IntakeWriter(runtime)
    calls = [actions.IntakeCall(actor=ADMIN, channel="grid_worker", category_code=GARBAGE,
                                lon=offset(A_LON, A_LAT, 500 * n)[0], lat=A_LAT,
                                description=text)
             for n, text in enumerate(["一", "boom", "三"])]
    outcomes: dict[int, Any] = {}
    with _refusing_description(session, "boom"):
        with _writes_held(runtime):
            threads = _submit_in_threads(writer, [calls[0]], outcomes)
            _wait_for(lambda: writer.batches == 1)
            threads += _submit_in_threads(writer, calls[1:], outcomes, first=1)
            _wait_for(lambda: writer.waiting == 2)
        for thread in threads:
            thread.join(10)
    writer.close()
    assert isinstance(outcomes[0], actions.IntakeResult)
    assert isinstance(outcomes[1], sa.exc.DBAPIError)
    assert isinstance(outcomes[2], actions.IntakeResult) and outcomes[2].created
    descriptions = session.scalars(sa.select(Incident.description)).all()
    assert sorted(descriptions) == sorted(["一", "三"])
    assert verify_chain(session=session, runtime=runtime).ok


def test_a_refused_report_gets_its_own_error_in_its_language(
        session: Session, runtime: Runtime, area: Area) -> None:
    writer = IntakeWriter(runtime)
    with pytest.raises(ValidationFailed) as refused:
        writer.submit(actions.IntakeCall(actor=ADMIN, channel="grid_worker",
                                         category_code="no.such_category", lon=A_LON,
                                         lat=A_LAT))
    assert refused.value.message_id == "command.error.unknown_category"
    assert session.scalar(sa.select(sa.func.count()).select_from(Incident)) == 0
    writer.close()


def test_a_closed_writer_takes_no_more_reports(runtime: Runtime, area: Area) -> None:
    writer = IntakeWriter(runtime)
    writer.close()
    with pytest.raises(RuntimeError):
        writer.submit(actions.IntakeCall(actor=ADMIN, channel="grid_worker",
                                         category_code=GARBAGE, lon=A_LON, lat=A_LAT))


def test_a_report_keeps_the_moment_it_was_received_however_long_it_waited(
        session: Session, runtime: Runtime, clock: FixedClock, area: Area) -> None:
    # The API stamps a report when it arrives (entry_call); the batch that writes it comes later.
    put_on_duty(session, make_user(session, Role.ZONE_RESPONDER), area.zone_a, clock.now())
    arrived = clock.now()
    call = actions.IntakeCall(actor=ADMIN, channel="grid_worker", category_code=GARBAGE,
                              lon=A_LON, lat=A_LAT, received_at=arrived)
    clock.advance(timedelta(seconds=2))
    [made] = actions.intake_many(session=session, runtime=runtime, calendar=CALENDAR,
                                 locator=area.locate, calls=[call])
    assert isinstance(made, actions.IntakeResult)
    incident = session.get(Incident, made.incident.id, populate_existing=True)
    assert incident is not None
    assert incident.received_at == arrived
    assert incident.dispatched_at == arrived + timedelta(seconds=2)
    dispatch_clock = session.scalars(sa.select(Deadline).where(
        Deadline.incident_id == incident.id, Deadline.kind == DeadlineKind.DISPATCH)).one()
    assert dispatch_clock.due_at == arrived + timedelta(seconds=60)


def test_the_new_rows_are_in_the_session_as_written(
        session: Session, runtime: Runtime, clock: FixedClock, area: Area) -> None:
    """On PostgreSQL the batch's rows go in as one statement (db.insert_in_one_statement), not
    through the flush: the objects it returns must hold exactly what was written, and a change
    to one must reach the row (as an UPDATE, not a second INSERT)."""
    put_on_duty(session, make_user(session, Role.ZONE_RESPONDER), area.zone_a, clock.now())
    inserts: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "INSERT INTO incident " in statement or "INSERT INTO incident (" in statement:
            inserts.append(statement)

    sa.event.listen(runtime.engine, "before_cursor_execute", count)
    try:
        made = actions.intake_many(session=session, runtime=runtime, calendar=CALENDAR,
                                   locator=area.locate, calls=_calls(area)[:6])
    finally:
        sa.event.remove(runtime.engine, "before_cursor_execute", count)
    results = [o for o in made if isinstance(o, actions.IntakeResult)]
    if session.get_bind().dialect.name == "postgresql":
        assert len(inserts) == 1 and "json_populate_recordset" in inserts[0]
    objects = [obj for r in results for obj in (r.incident, *r.assignments, *r.deadlines)]
    assert all(obj in session and obj not in session.new for obj in objects)
    written = {(type(obj), obj.id): column_values(obj) for obj in objects}
    session.expunge_all()
    for (model, row_id), values in written.items():
        assert column_values(session.get(model, row_id)) == values

    incident = session.get(Incident, results[0].incident.id)
    assert incident is not None
    incident.title = "改过的标题"
    session.commit()
    session.expunge_all()
    assert session.get(Incident, incident.id).title == "改过的标题"  # type: ignore[union-attr]
    assert session.scalar(sa.select(sa.func.count()).select_from(Incident)) == 6
