"""The dispatcher's pages, signed in through the real login form: the live queue, an incident
with its timeline and allowed actions, the phone/110 entry form, 110 transfers, the event stream
and the roster."""

from __future__ import annotations

import re
import threading
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session
from tests.integration.command_support import A_LAT, A_LON, B_LAT, B_LON, offset, report
from tests.web.dispatcher_support import (
    Street,
    csrf_from,
    make_street,
    sign_in,
    with_command_routes,
)

from grassroots.command.models import Incident
from grassroots.command.police import FakePoliceDesk
from grassroots.kernel.audit.models import AuditRow
from grassroots.kernel.auth.models import User
from grassroots.kernel.clock import FixedClock
from grassroots.runtime import Runtime

FORM_ACTION = re.compile(r'action="/command/incidents/\d+/actions/([a-z_]+)"')


@pytest.fixture
def app(runtime: Runtime) -> FastAPI:
    from grassroots.app import create_app

    return with_command_routes(create_app(runtime=runtime))


@pytest.fixture
def street(session: Session, runtime: Runtime, clock: FixedClock) -> Street:
    return make_street(session, runtime, clock)


def _count(session: Session, model: type) -> int:
    value = session.scalar(sa.select(sa.func.count()).select_from(model)) or 0
    session.rollback()
    return value


def _as(client: TestClient, user: User) -> TestClient:
    sign_in(client, user.username)
    return client


def _entry(client: TestClient, **fields: str) -> tuple[dict[str, str], str]:
    """The entry form's hidden fields and what a dispatcher fills in, ready to post."""
    page = client.get("/command/new")
    assert page.status_code == 200
    token = re.search(r'name="form_token" value="([^"]+)"', page.text)
    assert token
    data = {"csrf_token": csrf_from(page.text), "form_token": token.group(1),
            "channel": "phone", "reporter_phone": "13812345678", "reporter_name": "李四",
            "category_code": "city_env.exposed_garbage", "lon": str(A_LON), "lat": str(A_LAT),
            "crs": "wgs84", "address_text": "", "description": "小区门口垃圾堆积",
            "urgency": ""} | fields
    return data, page.text


# --- the workspace ------------------------------------------------------------------------------


def test_the_queue_is_sorted_by_urgency_then_the_nearest_deadline_with_colours(
        client: TestClient, session: Session, runtime: Runtime, clock: FixedClock,
        street: Street) -> None:
    area = street.area
    x = report(session, runtime, area).incident  # urgency 3, first on scene in 5 min
    y = report(session, runtime, area,  # urgency 3, nobody free: dispatch due in 60 s
               lon=offset(A_LON, A_LAT, 300)[0]).incident
    z = report(session, runtime, area, category="city_env.sewage_overflow", lon=B_LON,
               lat=B_LAT).incident  # urgency 2
    w = report(session, runtime, area, lon=offset(B_LON, B_LAT, 300)[0], lat=B_LAT,
               urgency=1).incident  # urgency 1, nobody free
    clock.advance(timedelta(seconds=90))
    _as(client, street.dispatcher)

    page = client.get("/command")

    assert page.status_code == 200
    assert "指挥调度工作台" in page.text
    order = re.findall(r'<tr class="queue-row[^"]*" data-id="\d+" data-number="([^"]+)"',
                       page.text)
    assert order == [w.number, z.number, y.number, x.number]
    levels = {number: level for level, number in re.findall(
        r'<tr class="queue-row level-(\w+)" data-id="\d+" data-number="([^"]+)"', page.text)}
    assert levels[y.number] == levels[w.number] == "breached"
    assert levels[x.number] == levels[z.number] == "ok"
    assert '<span class="n" data-state="dispatched">2</span>' in page.text
    assert '<span class="n" data-state="registered">2</span>' in page.text
    assert "超时 0:30" in page.text  # y's dispatch clock: 90 s gone of 60
    fragment = client.get("/command/queue")
    assert fragment.status_code == 200 and "<html" not in fragment.text
    assert re.findall(r'data-number="([^"]+)"', fragment.text) == order


def test_the_workspace_shows_only_what_the_users_scope_holds(
        client: TestClient, session: Session, runtime: Runtime, street: Street) -> None:
    mine = report(session, runtime, street.area).incident
    theirs = report(session, runtime, street.area, lon=B_LON, lat=B_LAT).incident
    _as(client, street.grid_worker_a)
    page = client.get("/command").text
    assert mine.number in page and theirs.number not in page
    assert client.get(f"/command/incidents/{theirs.id}").status_code == 404
    assert client.get(f"/command/incidents/{theirs.id}/status").status_code == 404
    assert client.get(f"/command/incidents/{mine.id}").status_code == 200


def test_pages_send_a_signed_out_visitor_to_the_login_form(client: TestClient) -> None:
    response = client.get("/command", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=/command"


def test_the_workspace_speaks_english_when_asked(client: TestClient, street: Street) -> None:
    _as(client, street.dispatcher)
    assert "Dispatcher workspace" in client.get("/command?lang=en").text


def test_the_nav_shows_the_command_link_to_those_who_read_incidents(
        client: TestClient, session: Session, runtime: Runtime, street: Street) -> None:
    from tests.web.dispatcher_support import person

    from grassroots.kernel.auth.roles import Role

    _as(client, street.viewer_a)
    assert 'href="/command"' in client.get("/regions").text
    other = TestClient(client.app)
    person(session, runtime, "gateop", Role.GATE_OPERATOR, None)
    sign_in(other, "gateop")
    assert 'href="/command"' not in other.get("/regions").text
    assert other.get("/command").status_code == 403


# --- one incident -------------------------------------------------------------------------------


def test_the_incident_page_shows_the_timeline_and_only_the_actions_this_user_may_take(
        client: TestClient, session: Session, runtime: Runtime, street: Street) -> None:
    incident = report(session, runtime, street.area, actor=street.dispatcher,
                      channel="phone", reporter_phone="13812345678").incident
    url = f"/command/incidents/{incident.id}"

    dispatcher = _as(client, street.dispatcher).get(url).text
    assert set(FORM_ACTION.findall(dispatcher)) == {
        "dispatch", "extend", "send_back", "void", "suspend", "supervise", "merge_duplicate",
        "escalate"}
    timeline = dispatcher[dispatcher.index('id="timeline"'):]
    assert [a for a in re.findall(r'data-action="(\w+)"', timeline)] == [
        "receive", "register", "dispatch"]
    assert "系统自动派遣" in timeline and "Dispatcher" in timeline
    assert "138****5678" in dispatcher and "13812345678" not in dispatcher
    assert "Responder_A" in dispatcher  # the responder on it, with their state
    assert "首批到场" in dispatcher and "剩余 5:00" in dispatcher

    responder = TestClient(client.app)
    page = _as(responder, street.responder_a).get(url).text
    assert set(FORM_ACTION.findall(page)) == {"accept", "arrive", "send_back"}
    assert "查看完整号码" not in page  # no permission to unmask

    bystander = TestClient(client.app)
    page = _as(bystander, street.enforcer_a).get(url).text
    assert FORM_ACTION.findall(page) == []
    assert "您当前不能对该事件执行操作" in page


def test_the_incident_page_shows_its_photos(
        client: TestClient, session: Session, runtime: Runtime, clock: FixedClock,
        street: Street) -> None:
    from grassroots.command.models import IncidentPhoto, PhotoStage

    incident = report(session, runtime, street.area).incident
    photo = IncidentPhoto(incident_id=incident.id, stage=PhotoStage.REPORT,
                          stored_path="2026/03/10/a.jpg", content_type="image/jpeg",
                          size_bytes=10, sha256="0" * 64, uploaded_by="gridworker_a",
                          uploaded_at=clock.now())
    session.add(photo)
    session.commit()
    page = _as(client, street.dispatcher).get(f"/command/incidents/{incident.id}").text
    assert f'<img src="/command/photos/{photo.id}"' in page and "上报照片" in page


def test_an_action_posted_from_the_page_needs_csrf_and_lands_back_on_the_page(
        client: TestClient, session: Session, runtime: Runtime, street: Street) -> None:
    incident = report(session, runtime, street.area).incident
    url = f"/command/incidents/{incident.id}"
    csrf = csrf_from(_as(client, street.dispatcher).get(url).text)
    form = {"csrf_token": csrf, "expected_version": str(incident.version),
            "reason": "请尽快到场"}

    forged = client.post(url + "/actions/supervise", data=form | {"csrf_token": "forged"})
    assert forged.status_code == 403
    done = client.post(url + "/actions/supervise", data=form, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == url
    page = client.get(url).text
    assert "督办" in page and "请尽快到场" in page


def test_action_errors_are_shown_inline_in_chinese(
        client: TestClient, session: Session, runtime: Runtime, street: Street) -> None:
    incident = report(session, runtime, street.area).incident
    url = f"/command/incidents/{incident.id}"
    csrf = csrf_from(_as(client, street.dispatcher).get(url).text)

    no_reason = client.post(url + "/actions/void", data={"csrf_token": csrf, "reason": " "})
    assert no_reason.status_code == 422
    assert 'id="action-error"' in no_reason.text and "须填写理由" in no_reason.text
    assert 'class="action-form action-void failed"' in no_reason.text
    stale = client.post(url + "/actions/void", data={"csrf_token": csrf, "reason": "重复",
                                                     "expected_version": "1"})
    assert stale.status_code == 409 and "该事件已被他人修改，请刷新后重试" in stale.text
    wrong = client.post(url + "/actions/close", data={"csrf_token": csrf})
    assert wrong.status_code == 409
    assert session.get(Incident, incident.id, populate_existing=True).state == "dispatched"


def test_revealing_the_phone_on_the_page_needs_a_reason_and_is_logged(
        client: TestClient, session: Session, runtime: Runtime, street: Street) -> None:
    incident = report(session, runtime, street.area, reporter_phone="13812345678").incident
    url = f"/command/incidents/{incident.id}"
    csrf = csrf_from(_as(client, street.dispatcher).get(url).text)

    short = client.post(url + "/reveal-phone", data={"csrf_token": csrf, "reason": "看"})
    assert short.status_code == 422 and "13812345678" not in short.text
    shown = client.post(url + "/reveal-phone", data={"csrf_token": csrf, "reason": "回访核实"})
    assert shown.status_code == 200
    assert '<strong id="revealed-phone">13812345678</strong>' in shown.text
    assert _count(session, AuditRow) > 0
    logged = session.scalars(sa.select(AuditRow).where(
        AuditRow.action == "personal_data:unmask")).all()
    assert [row.actor for row in logged] == ["dispatcher"]
    assert "13812345678" not in client.get(url).text  # shown once, not kept


# --- the entry form -----------------------------------------------------------------------------


def test_the_phone_form_creates_one_incident_even_when_posted_twice_with_the_same_token(
        client: TestClient, session: Session, street: Street) -> None:
    _as(client, street.dispatcher)
    data, page = _entry(client)
    assert "事件分类" in page and "<optgroup" in page

    first = client.post("/command/new", data=data, follow_redirects=False)
    second = client.post("/command/new", data=data, follow_redirects=False)

    assert first.status_code == second.status_code == 303
    assert first.headers["location"] == second.headers["location"]
    assert _count(session, Incident) == 1
    incident = session.scalars(sa.select(Incident)).one()
    assert incident.channel == "phone" and incident.zone_id == street.area.zone_a.id
    assert incident.state == "dispatched"
    landed = client.get(first.headers["location"]).text
    assert incident.number in landed and "138****5678" in landed and "来电" in landed
    fresh, _page = _entry(client)
    assert fresh["form_token"] != data["form_token"]  # a new call gets a new token


def test_the_phone_form_shows_errors_inline_and_keeps_what_was_typed(
        client: TestClient, session: Session, street: Street) -> None:
    _as(client, street.dispatcher)
    data, _page = _entry(client, category_code="", description="楼下有人吵架")
    missing = client.post("/command/new", data=data)
    assert missing.status_code == 422
    assert "请选择事件分类" in missing.text and "楼下有人吵架" in missing.text
    assert f'value="{data["form_token"]}"' in missing.text  # the same token, still unused

    question = client.post("/command/new", data=data | {"category_code": "security.fight"})
    assert question.status_code == 422 and "请回答：是否有人受伤" in question.text
    answered = client.post("/command/new", follow_redirects=False,
                           data=data | {"category_code": "security.fight",
                                        "attr.security.fight.injured": "no",
                                        "attr.emergency.fire.people_trapped": "yes"})
    assert answered.status_code == 303
    incident = session.scalars(sa.select(Incident)).one()
    assert incident.attributes == '{"injured": "no"}'  # only the chosen category's answers


def test_an_address_typed_with_gcj02_coordinates_is_stored_as_wgs84(
        client: TestClient, session: Session, street: Street) -> None:
    from grassroots.kernel.regions.geo import wgs84_to_gcj02

    _as(client, street.dispatcher)
    lon, lat = wgs84_to_gcj02(B_LON, B_LAT)
    data, _page = _entry(client, lon=f"{lon:.7f}", lat=f"{lat:.7f}", crs="gcj02")
    assert client.post("/command/new", data=data, follow_redirects=False).status_code == 303
    incident = session.scalars(sa.select(Incident)).one()
    assert incident.lon == pytest.approx(B_LON, abs=1e-5)
    assert incident.zone_id == street.area.zone_b.id


def test_only_dispatchers_may_open_the_entry_form(
        client: TestClient, street: Street) -> None:
    _as(client, street.grid_worker_a)
    assert client.get("/command/new").status_code == 403
    assert 'href="/command/new"' not in client.get("/command").text


# --- 110 ----------------------------------------------------------------------------------------


def test_110_transfers_are_recorded_in_both_directions(
        app: FastAPI, client: TestClient, session: Session, street: Street) -> None:
    _as(client, street.dispatcher)
    inbound, _page = _entry(client, channel="police_110", police_ref="110-20260310-0007",
                            description="110 转来：小区垃圾无人清运")
    landed = client.post("/command/new", data=inbound, follow_redirects=False)
    assert landed.status_code == 303
    page = client.get(landed.headers["location"]).text
    assert "110 转来，编号 110-20260310-0007" in page
    received = session.scalars(sa.select(Incident).where(
        Incident.channel == "police_110")).one()
    assert received.external_ref == "110-20260310-0007"

    fight, _page = _entry(client, category_code="security.fight",
                          **{"attr.security.fight.injured": "yes"})
    fight_page = client.post("/command/new", data=fight, follow_redirects=False)
    url = fight_page.headers["location"]
    page = client.get(url).text
    assert "transfer_to_police" in FORM_ACTION.findall(page)
    moved = client.post(url + "/actions/transfer_to_police", follow_redirects=False,
                        data={"csrf_token": csrf_from(page), "reason": "打架斗殴，移交公安"})
    assert moved.status_code == 303

    desk: FakePoliceDesk = app.state.police_desk
    reference, sent = desk.sent[0]
    page = client.get(url).text
    assert f"已移交110，编号 {reference}" in page
    assert "transfer_to_police" not in FORM_ACTION.findall(page)  # once only
    timeline = page[page.index('id="timeline"'):]
    assert 'data-action="transfer_to_police"' in timeline and "打架斗殴，移交公安" in timeline
    assert sent.reporter_phone == "13812345678" and sent.category_code == "security.fight"


# --- live updates -------------------------------------------------------------------------------


def _stamp(html: str) -> str:
    match = re.search(r'data-stamp="([^"]+)"', html)
    assert match
    return match.group(1)


def test_the_event_stream_sends_a_change_after_something_changes(
        client: TestClient, session: Session, runtime: Runtime, street: Street) -> None:
    _as(client, street.dispatcher)
    stamp = _stamp(client.get("/command").text)
    errors: list[BaseException] = []

    def change_later() -> None:
        try:
            time.sleep(1.2)
            with runtime.session_factory() as other:
                report(other, runtime, street.area)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    worker = threading.Thread(target=change_later)
    worker.start()
    started = time.monotonic()
    response = client.get(f"/command/events?since={stamp}&max_s=4")
    worker.join()

    assert not errors
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.text.startswith("retry: ")
    events = re.findall(r"id: (\S+)\nevent: (\w+)\ndata: (\S+)\n\n", response.text)
    assert [kind for _id, kind, _data in events] == ["change"]
    assert events[0][0] != stamp
    assert time.monotonic() - started < 10
    queue = client.get("/command/queue").text
    assert session.scalars(sa.select(Incident.number)).one() in queue


def test_a_quiet_stream_sends_no_change_and_a_fresh_one_says_hello(
        client: TestClient, street: Street) -> None:
    _as(client, street.dispatcher)
    stamp = _stamp(client.get("/command").text)
    quiet = client.get(f"/command/events?since={stamp}&max_s=1")
    assert "event:" not in quiet.text
    fresh = client.get("/command/events?max_s=1")
    assert "event: hello" in fresh.text and f"data: {stamp}" in fresh.text
    reconnect = client.get("/command/events?since=0-0-0&max_s=1",
                           headers={"Last-Event-ID": stamp})
    assert "event:" not in reconnect.text  # the browser's last id wins over a stale URL


def test_the_event_stream_needs_a_signed_in_reader(client: TestClient) -> None:
    response = client.get("/command/events?max_s=1", follow_redirects=False)
    assert response.status_code == 303


# --- the roster ---------------------------------------------------------------------------------


def test_the_duty_page_lists_todays_roster_per_zone_with_states(
        client: TestClient, session: Session, runtime: Runtime, street: Street) -> None:
    report(session, runtime, street.area)  # responder A is now busy on it
    page = _as(client, street.dispatcher).get("/command/duty").text
    sections = re.split(r'<section class="card duty-zone"', page)[1:]
    assert len(sections) == 2
    zone_a = next(s for s in sections if f'data-zone-id="{street.area.zone_a.id}"' in s)
    zone_b = next(s for s in sections if f'data-zone-id="{street.area.zone_b.id}"' in s)
    assert "Responder_A" in zone_a and "Enforcer_A" in zone_a and "Responder_B" in zone_b
    assert "出勤中" in zone_a and "综合执法" in zone_a and "空闲" in zone_b
    assert "SF20260310-000001" in zone_a
    assert "值班表 2026-03-10" in page
    worker_page = TestClient(client.app)
    assert "Responder_B" not in _as(worker_page, street.responder_a).get("/command/duty").text
