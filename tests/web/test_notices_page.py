"""The notices inbox (催办督办通知): what each person sees, marking read (one or all) through
the page's own forms, the data scope, CSRF and the audit row."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session
from tests.integration.command_support import B_LAT, B_LON, report
from tests.web.dispatcher_support import (
    Street,
    csrf_from,
    make_street,
    sign_in,
)

from grassroots.command import actions
from grassroots.command.models import Incident, Notice
from grassroots.command.states import Audience, NoticeLevel
from grassroots.kernel.audit.models import AuditRow
from grassroots.kernel.clock import FixedClock
from grassroots.runtime import Runtime

NOTICE_IDS = re.compile(r'data-notice-id="(\d+)"')


@pytest.fixture
def street(session: Session, runtime: Runtime, clock: FixedClock) -> Street:
    return make_street(session, runtime, clock)


def _notify(session: Session, clock: FixedClock, incident: Incident, audience: Audience,
            level: NoticeLevel = NoticeLevel.REMINDER) -> Notice:
    [notice] = actions.notify(session=session, incident=incident, deadline_id=None, level=level,
                              audience=audience, message_id="command.notice.tier.remind",
                              params={"number": incident.number, "due_at": clock.now().isoformat()},
                              at=clock.now())
    session.commit()
    return notice


@pytest.fixture
def notices(session: Session, runtime: Runtime, clock: FixedClock,
            street: Street) -> dict[str, Notice]:
    in_a = report(session, runtime, street.area).incident
    in_b = report(session, runtime, street.area, lon=B_LON, lat=B_LAT).incident
    return {"zone_a": _notify(session, clock, in_a, Audience.ZONE_LEADER),
            "zone_b": _notify(session, clock, in_b, Audience.ZONE_LEADER),
            "centre": _notify(session, clock, in_a, Audience.COMMAND_CENTRE,
                              NoticeLevel.SUPERVISION)}


def _shown(client: TestClient, show: str = "unread") -> list[int]:
    page = client.get(f"/command/notices?show={show}")
    assert page.status_code == 200, page.text
    return [int(n) for n in NOTICE_IDS.findall(page.text)]


def test_each_person_sees_the_notices_for_their_role_within_their_scope(
        client: TestClient, street: Street, notices: dict[str, Notice]) -> None:
    sign_in(client, street.zone_leader_a.username)
    page = client.get("/command/notices")
    assert _shown(client) == [notices["zone_a"].id]
    assert "催办督办通知" in page.text and "催办" in page.text
    assert f'href="/command/incidents/{notices["zone_a"].incident_id}"' in page.text

    client.cookies.clear()
    sign_in(client, street.dispatcher.username)
    assert _shown(client) == [notices["centre"].id]

    client.cookies.clear()  # the zone team's responders: not the zone leader's notices
    sign_in(client, street.responder_a.username)
    assert _shown(client) == []


def test_marking_one_read_keeps_who_and_when_and_touches_nothing_else(
        client: TestClient, session: Session, clock: FixedClock, street: Street,
        notices: dict[str, Notice]) -> None:
    sign_in(client, street.zone_leader_a.username)
    page = client.get("/command/notices")
    done = client.post("/command/notices/read", follow_redirects=False, data={
        "csrf_token": csrf_from(page.text), "notice_id": str(notices["zone_a"].id)})

    assert done.status_code == 303 and done.headers["location"].endswith("marked=1")
    assert _shown(client) == []
    everything = client.get("/command/notices?show=all").text
    assert "zone_leader_a 于" in everything and "已阅" in everything
    read = session.get(Notice, notices["zone_a"].id, populate_existing=True)
    assert read is not None and read.read_by == "zone_leader_a" and read.read_at == clock.now()
    others = session.scalars(sa.select(Notice).where(Notice.id != notices["zone_a"].id)).all()
    assert all(n.read_at is None for n in others)
    audit = session.scalars(sa.select(AuditRow).where(AuditRow.action == "notice:read")).all()
    assert [(a.actor, a.object_id) for a in audit] == [("zone_leader_a", str(notices["zone_a"].id))]


def test_a_notice_outside_ones_scope_cannot_be_marked_read(
        client: TestClient, session: Session, street: Street,
        notices: dict[str, Notice]) -> None:
    sign_in(client, street.zone_leader_a.username)
    page = client.get("/command/notices")
    done = client.post("/command/notices/read", follow_redirects=False, data={
        "csrf_token": csrf_from(page.text), "notice_id": str(notices["zone_b"].id)})

    assert done.status_code == 303 and done.headers["location"].endswith("marked=0")
    other = session.get(Notice, notices["zone_b"].id, populate_existing=True)
    assert other is not None and other.read_at is None
    assert session.scalar(sa.select(sa.func.count()).select_from(AuditRow)
                          .where(AuditRow.action == "notice:read")) == 0


def test_mark_all_read_takes_what_the_page_showed_and_a_forged_form_changes_nothing(
        client: TestClient, session: Session, clock: FixedClock, street: Street,
        notices: dict[str, Notice]) -> None:
    sign_in(client, street.dispatcher.username)
    page = client.get("/command/notices")
    forged = client.post("/command/notices/read", data={"csrf_token": "forged"})
    assert forged.status_code == 403
    assert _shown(client) == [notices["centre"].id]
    incident = session.get(Incident, notices["centre"].incident_id)
    assert incident is not None
    clock.advance(timedelta(minutes=1))
    late = _notify(session, clock, incident, Audience.COMMAND_CENTRE)  # came after the page

    done = client.post("/command/notices/read", follow_redirects=False, data={
        "csrf_token": csrf_from(page.text), "notice_id": NOTICE_IDS.findall(page.text)})

    assert done.headers["location"].endswith("marked=1")
    assert _shown(client) == [late.id]  # not acknowledged unseen
    unread = session.scalars(sa.select(Notice.id).where(Notice.read_at.is_(None))).all()
    assert sorted(unread) == sorted([notices["zone_a"].id, notices["zone_b"].id, late.id])
    again = client.get("/command/notices")
    client.post("/command/notices/read", data={
        "csrf_token": csrf_from(again.text), "notice_id": NOTICE_IDS.findall(again.text)})
    assert "没有未读通知" in client.get("/command/notices").text


def test_a_bad_notice_id_is_refused_in_the_users_language(
        client: TestClient, street: Street, notices: dict[str, Notice]) -> None:
    sign_in(client, street.zone_leader_a.username)
    page = client.get("/command/notices")
    refused = client.post("/command/notices/read", data={
        "csrf_token": csrf_from(page.text), "notice_id": "abc"})
    assert refused.status_code == 422
    assert "notice_id" in refused.text
    assert _shown(client) == [notices["zone_a"].id]


def test_the_inbox_speaks_english_when_asked(
        client: TestClient, street: Street, notices: dict[str, Notice]) -> None:
    sign_in(client, street.zone_leader_a.username)
    page = client.get("/command/notices?show=unread&lang=en")
    assert "Reminders and supervision notices" in page.text
    assert "Mark read" in page.text
