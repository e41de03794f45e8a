"""The incident page and the entry form: addresses that place a call, escalation, notices."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session
from tests.integration.command_support import A_LAT, A_LON, report
from tests.web.dispatcher_support import (
    Street,
    csrf_from,
    make_street,
    sign_in,
    with_command_routes,
)

from grassroots.command.jobs import sweep
from grassroots.command.models import Incident
from grassroots.command.states import IncidentState, Tier
from grassroots.kernel.addresses.actions import issue_plate, register_address
from grassroots.kernel.clock import FixedClock
from grassroots.runtime import Runtime


@pytest.fixture
def app(runtime: Runtime) -> FastAPI:
    from grassroots.app import create_app

    return with_command_routes(create_app(runtime=runtime))


@pytest.fixture
def street(session: Session, runtime: Runtime, clock: FixedClock) -> Street:
    return make_street(session, runtime, clock)


def _entry(client: TestClient, **fields: str) -> dict[str, str]:
    page = client.get("/command/new")
    token = re.search(r'name="form_token" value="([^"]+)"', page.text)
    assert token and 'name="address_id"' in page.text
    return {"csrf_token": csrf_from(page.text), "form_token": token.group(1),
            "channel": "phone", "reporter_phone": "13812345678", "reporter_name": "李四",
            "category_code": "city_env.exposed_garbage", "lon": "", "lat": "",
            "crs": "wgs84", "address_text": "", "address_id": "",
            "description": "楼下垃圾堆积", "urgency": ""} | fields


def _only_incident(session: Session) -> Incident:
    session.expire_all()
    [incident] = session.scalars(sa.select(Incident)).all()
    return incident


def test_a_phone_call_giving_only_a_door_plate_is_placed_and_dispatched(
        client: TestClient, session: Session, runtime: Runtime, street: Street) -> None:
    address = register_address(session=session, runtime=runtime, actor="test",
                               code="500116-FC-0001", text="重庆市江津区双福街道福城路1号",
                               lon=A_LON, lat=A_LAT)
    plate = issue_plate(session=session, runtime=runtime, actor="test",
                        address_code=address.code)
    sign_in(client, street.dispatcher.username)
    response = client.post("/command/new", data=_entry(client, address_id=plate.token),
                           follow_redirects=False)
    assert response.status_code == 303, response.text
    incident = _only_incident(session)
    assert incident.zone_id == street.area.zone_a.id and incident.std_address_id == address.id
    assert incident.state == IncidentState.DISPATCHED
    page = client.get(f"/command/incidents/{incident.id}").text
    assert 'id="std-address">500116-FC-0001<' in page
    assert "派给：Responder_A" in page  # the timeline names whom the dispatch went to


def test_a_phone_call_with_a_typed_address_finds_the_building(
        client: TestClient, session: Session, runtime: Runtime, street: Street) -> None:
    register_address(session=session, runtime=runtime, actor="test", code="500116-FC-0001",
                     text="重庆市江津区双福街道福城路1号", lon=A_LON, lat=A_LAT)
    sign_in(client, street.dispatcher.username)
    response = client.post("/command/new", data=_entry(
        client, address_text="双福街道福城路1号3单元502"), follow_redirects=False)
    assert response.status_code == 303, response.text
    incident = _only_incident(session)
    assert (incident.lon, incident.lat) == (A_LON, A_LAT)
    assert incident.address_text == "双福街道福城路1号3单元502"  # as the caller said it


def test_an_unknown_door_plate_is_refused_in_chinese_and_nothing_is_stored(
        client: TestClient, session: Session, street: Street) -> None:
    sign_in(client, street.dispatcher.username)
    response = client.post("/command/new", data=_entry(client, address_id="nope-123"))
    assert response.status_code == 422
    assert "门牌码或标准地址编码“nope-123”不存在或已注销" in response.text
    assert session.scalars(sa.select(Incident)).all() == []


def test_the_dispatcher_escalates_from_the_page_and_the_notices_show(
        client: TestClient, session: Session, runtime: Runtime, street: Street) -> None:
    incident = report(session, runtime, street.area).incident
    sign_in(client, street.dispatcher.username)
    url = f"/command/incidents/{incident.id}"
    page = client.get(url).text
    assert f'action="{url}/actions/escalate"' in page
    response = client.post(f"{url}/actions/escalate", data={
        "csrf_token": csrf_from(page), "expected_version": str(incident.version),
        "reason": "需要街道协调城管和物业"}, follow_redirects=False)
    assert response.status_code == 303, response.text
    session.expire_all()
    assert session.get(Incident, incident.id).tier == Tier.STREET  # type: ignore[union-attr]
    page = client.get(url).text
    assert "片区 → 街道" in page
    assert 'id="notices"' in page
    assert "已升级至街道指挥中心处置：需要街道协调城管和物业" in page
    response = client.post(f"{url}/actions/escalate", data={
        "csrf_token": csrf_from(page), "reason": "须区城管局处理"}, follow_redirects=False)
    assert response.status_code == 303, response.text
    # The district is the top: no escalate form any more (the timeline still shows the steps).
    assert f'action="{url}/actions/escalate"' not in client.get(url).text


def test_a_step_in_the_wrong_state_is_explained_without_english_words(
        client: TestClient, session: Session, runtime: Runtime, clock: FixedClock,
        street: Street) -> None:
    incident = report(session, runtime, street.area).incident
    sign_in(client, street.dispatcher.username)
    url = f"/command/incidents/{incident.id}"
    page = client.get(url).text
    response = client.post(f"{url}/actions/close", data={
        "csrf_token": csrf_from(page), "expected_version": str(incident.version)})
    assert response.status_code == 409
    assert "处于“已派遣”状态的事件不能执行“结案”" in response.text
    clock.advance(timedelta(minutes=6))
    sweep(session_factory=runtime.session_factory, runtime=runtime)
    page = client.get(url).text
    assert "催办" in page and "首批到场超时" in page
