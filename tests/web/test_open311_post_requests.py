"""POST requests: a client with a key reports, the incident is located and dispatched."""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa
from tests.integration.command_support import (
    A_LAT,
    A_LON,
    B_LAT,
    B_LON,
    make_user,
    put_on_duty,
)
from tests.web.open311_support import (
    Open311,
    assert_spec_error,
    children,
    json_of,
    o311_fixture,  # noqa: F401
    xml_of,
)

from grassroots.command.models import Assignment, Incident, IncidentTransition
from grassroots.command.open311 import PREFIX
from grassroots.command.open311.intake import EMAIL_CONTEXT
from grassroots.command.open311.keys import revoke_open311_key
from grassroots.command.open311.models import Open311Client, Open311Request
from grassroots.command.states import Channel, IncidentState, ResponseRole, SystemActor
from grassroots.kernel.addresses.actions import issue_plate, register_address
from grassroots.kernel.addresses.models import StandardAddress
from grassroots.kernel.audit.models import AuditRow
from grassroots.kernel.auth.roles import Role
from grassroots.kernel.clock import FixedClock

GARBAGE = "city_env.exposed_garbage"


def _incidents(o311: Open311) -> list[Incident]:
    o311.session.expire_all()
    return list(o311.session.scalars(sa.select(Incident).order_by(Incident.id)))


def _report(o311: Open311, key: str, **fields: Any) -> Any:
    values = {"api_key": key, "service_code": GARBAGE, "lat": B_LAT, "long": B_LON,
              "description": "路边有一堆垃圾"} | fields
    response = o311.post(**values)
    assert response.status_code == 200, response.text
    return json_of(response)


def test_a_report_from_a_client_is_dispatched_to_the_on_duty_responder_of_its_zone(
        o311: Open311, clock: FixedClock) -> None:
    responder_a = make_user(o311.session, Role.ZONE_RESPONDER)
    responder_b = make_user(o311.session, Role.ZONE_RESPONDER)
    put_on_duty(o311.session, responder_a, o311.area.zone_a, clock.now())
    put_on_duty(o311.session, responder_b, o311.area.zone_b, clock.now())
    key = o311.key()

    [answer] = _report(o311, key, account_id="u-42")

    [incident] = _incidents(o311)
    assert answer == {"service_request_id": incident.number,
                      "service_notice": "本事件将在 8 个工作小时内处置", "account_id": "u-42"}
    assert "token" not in answer
    assert incident.channel == Channel.OPEN311
    assert incident.client_ref == "open311:fixmystreet"
    assert incident.created_by == "open311:fixmystreet"
    assert incident.zone_id == o311.area.zone_b.id
    assert incident.state == IncidentState.DISPATCHED
    assert incident.description == "路边有一堆垃圾"
    assigned = o311.session.scalars(sa.select(Assignment.user_id).where(
        Assignment.incident_id == incident.id,
        Assignment.role == ResponseRole.FIRST_RESPONDER)).all()
    assert assigned == [responder_b.id]
    audit = o311.session.scalars(sa.select(AuditRow).where(
        AuditRow.action == "incident:create")).one()
    assert audit.actor == "open311:fixmystreet"


def test_the_answer_in_xml_is_a_service_requests_document(o311: Open311) -> None:
    key = o311.key()
    response = o311.post("xml", api_key=key, service_code=GARBAGE, lat=A_LAT, long=A_LON)
    root = xml_of(response)
    assert root.tag == "service_requests"
    [request] = root
    assert request.tag == "request"
    assert children(request) == ["service_request_id", "service_notice", "account_id"]
    assert request.findtext("service_request_id") == _incidents(o311)[0].number
    assert request.findtext("account_id") == ""  # <account_id/>, as the spec shows it


def test_unescaped_utf8_in_a_form_body_keeps_its_chinese(o311: Open311) -> None:
    """curl -d and many simple clients send raw UTF-8 bytes instead of %-escapes."""
    key = o311.key()
    body = (f"api_key={key}&service_code={GARBAGE}&lat={A_LAT}&long={A_LON}"
            "&description=垃圾桶满溢，气味很大").encode()
    response = o311.client.post(f"{PREFIX}/requests.json", content=body, headers={
        "Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 200, response.text
    [incident] = _incidents(o311)
    assert incident.description == "垃圾桶满溢，气味很大"


def test_a_form_body_that_is_not_utf8_is_refused_in_the_spec_format(o311: Open311) -> None:
    body = "description=垃圾".encode("gbk")
    response = o311.client.post(f"{PREFIX}/requests.json", content=body, headers={
        "Content-Type": "application/x-www-form-urlencoded"})
    assert assert_spec_error(response, 400)
    assert _incidents(o311) == []


def test_a_json_body_is_accepted_too(o311: Open311) -> None:
    key = o311.key()
    body = {"api_key": key, "service_code": "security.fight", "lat": A_LAT, "long": A_LON,
            "attribute": {"injured": "no", "people": 3}}
    response = o311.client.post(f"{PREFIX}/requests.json", json=body)
    assert response.status_code == 200, response.text
    [incident] = _incidents(o311)
    assert json.loads(incident.attributes) == {"injured": "no", "people": 3}


def test_a_retry_with_the_same_idempotency_key_makes_one_incident(o311: Open311) -> None:
    key = o311.key()
    headers = {"Idempotency-Key": "report-7f3a"}
    first = o311.post(headers=headers, api_key=key, service_code=GARBAGE, lat=A_LAT,
                      long=A_LON, media_url="https://img.example/1.jpg")
    again = o311.post(headers=headers, api_key=key, service_code=GARBAGE, lat=A_LAT,
                      long=A_LON, media_url="https://img.example/1.jpg")
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    assert len(_incidents(o311)) == 1
    assert o311.session.scalar(sa.select(sa.func.count()).select_from(Open311Request)) == 1
    other = o311.post(headers={"Idempotency-Key": "report-other"}, api_key=key,
                      service_code=GARBAGE, lat=A_LAT, long=A_LON)
    assert other.json()[0]["service_request_id"] != first.json()[0]["service_request_id"]


def test_the_same_idempotency_key_from_two_clients_makes_two_incidents(o311: Open311) -> None:
    headers = {"Idempotency-Key": "k-1"}
    for name in ("app-one", "app-two"):
        response = o311.post(headers=headers, api_key=o311.key(name), service_code=GARBAGE,
                             lat=A_LAT, long=A_LON)
        assert response.status_code == 200
    assert len(_incidents(o311)) == 2


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_a_wrong_key_is_refused_with_403(o311: Open311, fmt: str) -> None:
    o311.key()
    response = o311.post(fmt, api_key="o311_not-a-key", service_code=GARBAGE, lat=A_LAT,
                         long=A_LON)
    [description] = assert_spec_error(response, 403, fmt)
    assert "api_key" in description
    assert _incidents(o311) == []


def test_a_missing_key_is_refused_with_403(o311: Open311) -> None:
    response = o311.post(service_code=GARBAGE, lat=A_LAT, long=A_LON)
    assert assert_spec_error(response, 403) == ["api_key was not provided"]


def test_a_revoked_key_is_refused_with_403(o311: Open311) -> None:
    key = o311.key()
    client = o311.session.scalars(sa.select(Open311Client)).one()
    revoke_open311_key(session=o311.session, runtime=o311.runtime,
                       actor=SystemActor("system:test"), client_id=client.id)
    assert_spec_error(o311.post(api_key=key, service_code=GARBAGE, lat=A_LAT, long=A_LON), 403)
    assert _incidents(o311) == []


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_a_request_without_a_location_is_a_400(o311: Open311, fmt: str) -> None:
    response = o311.post(fmt, api_key=o311.key(), service_code=GARBAGE, description="垃圾")
    [description] = assert_spec_error(response, 400, fmt)
    assert "location" in description
    assert _incidents(o311) == []


def test_every_problem_with_the_fields_is_listed_at_once(o311: Open311) -> None:
    response = o311.post(api_key=o311.key(), lat="29.3", description="x" * 4001,
                         media_url="ftp://example/a.jpg")
    descriptions = assert_spec_error(response, 400)
    assert len(descriptions) == 4
    assert any("service_code" in d for d in descriptions)
    assert any("lat and long" in d for d in descriptions)
    assert any("4000" in d for d in descriptions)
    assert any("media_url" in d for d in descriptions)


def test_a_description_of_4000_characters_is_accepted(o311: Open311) -> None:
    _report(o311, o311.key(), description="长" * 4000)
    assert len(_incidents(o311)[0].description) == 4000


def test_an_unknown_service_code_is_a_400(o311: Open311) -> None:
    response = o311.post(api_key=o311.key(), service_code="city_env.nothing", lat=A_LAT,
                         long=A_LON)
    [description] = assert_spec_error(response, 400)
    assert "city_env.nothing" in description


def test_a_missing_required_attribute_is_a_400(o311: Open311) -> None:
    response = o311.post(api_key=o311.key(), service_code="emergency.fire", lat=A_LAT,
                         long=A_LON)
    [description] = assert_spec_error(response, 400)
    assert "people_trapped" in description


def test_an_answer_outside_the_list_is_a_400(o311: Open311) -> None:
    response = o311.post(api_key=o311.key(), service_code="emergency.fire", lat=A_LAT,
                         long=A_LON, **{"attribute[people_trapped]": "maybe"})
    [description] = assert_spec_error(response, 400)
    assert "people_trapped" in description


def test_an_unknown_attribute_is_a_400_in_english_when_asked(o311: Open311) -> None:
    response = o311.post(headers={"Accept-Language": "en"}, api_key=o311.key(),
                         service_code=GARBAGE, lat=A_LAT, long=A_LON,
                         **{"attribute[colour]": "red"})
    [description] = assert_spec_error(response, 400)
    assert "colour" in description and description.isascii()


def test_valid_attributes_are_stored_in_their_typed_form(o311: Open311) -> None:
    _report(o311, o311.key(), service_code="dispute.labour_wages",
            **{"attribute[workers]": "12", "attribute[amount_yuan]": "35000.5"})
    assert json.loads(_incidents(o311)[0].attributes) == {"workers": 12, "amount_yuan": 35000.5}


def test_a_multivaluelist_takes_repeated_values(o311: Open311) -> None:
    category = "city_env.graffiti"
    from grassroots.command.actions import update_category

    update_category(session=o311.session, runtime=o311.runtime, actor=SystemActor("system:t"),
                    code=category, changes={"attributes": [{
                        "code": "surface", "datatype": "multivaluelist", "description": "位置",
                        "values": [{"key": "wall", "name": "墙面"},
                                   {"key": "pole", "name": "电杆"}]}]})
    response = o311.client.post(f"{PREFIX}/requests.json", content=(
        f"api_key={o311.key()}&service_code={category}&lat={A_LAT}&long={A_LON}"
        "&attribute[surface][]=wall&attribute[surface][]=pole"),
        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 200, response.text
    assert json.loads(_incidents(o311)[0].attributes) == {"surface": ["wall", "pole"]}


def test_an_address_string_alone_is_enough(o311: Open311) -> None:
    _report(o311, o311.key(), lat="", long="", address_string="双福大道 188 号门口")
    [incident] = _incidents(o311)
    assert incident.lat is None and incident.address_text == "双福大道 188 号门口"
    assert incident.state == IncidentState.REGISTERED  # no zone: a dispatcher sends someone


def _standard_address(o311: Open311, code: str = "500116-0012-0034") -> StandardAddress:
    return register_address(session=o311.session, runtime=o311.runtime, actor="test",
                            code=code, text="重庆市江津区双福街道福城路1号", lon=A_LON, lat=A_LAT)


def test_an_address_id_alone_resolves_to_the_standard_address_and_is_dispatched(
        o311: Open311, clock: FixedClock) -> None:
    address = _standard_address(o311)
    responder = make_user(o311.session, Role.ZONE_RESPONDER)
    put_on_duty(o311.session, responder, o311.area.zone_a, clock.now())
    _report(o311, o311.key(), lat="", long="", address_id="500116-0012-0034")
    [incident] = _incidents(o311)
    assert (incident.lon, incident.lat) == (A_LON, A_LAT)
    assert incident.zone_id == o311.area.zone_a.id
    assert incident.std_address_id == address.id
    assert incident.address_text == "重庆市江津区双福街道福城路1号"
    assert incident.state == IncidentState.DISPATCHED
    assert [a.user_id for a in o311.session.scalars(sa.select(Assignment))] == [responder.id]
    extra = o311.session.get(Open311Request, incident.id)
    assert extra is not None and extra.address_id == "500116-0012-0034"


def test_a_door_plate_id_resolves_like_its_address(o311: Open311) -> None:
    address = _standard_address(o311)
    plate = issue_plate(session=o311.session, runtime=o311.runtime, actor="test",
                        address_code=address.code)
    _report(o311, o311.key(), lat="", long="", address_id=plate.token)
    [incident] = _incidents(o311)
    assert incident.std_address_id == address.id and incident.zone_id == o311.area.zone_a.id


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_an_unknown_address_id_is_a_spec_error_and_stores_nothing(o311: Open311,
                                                                   fmt: str) -> None:
    _standard_address(o311)
    response = o311.post(fmt=fmt, api_key=o311.key(), service_code=GARBAGE,
                         address_id="no-such-plate", description="x")
    [message] = assert_spec_error(response, 400, fmt)
    assert "no-such-plate" in message
    assert _incidents(o311) == []


def test_contact_details_are_kept_encrypted(o311: Open311) -> None:
    _report(o311, o311.key(), phone="+86 138 1234 5678", first_name="三", last_name="张",
            email="zhang.san@example.cn", device_id="dev-1", media_url="https://img.example/a")
    [incident] = _incidents(o311)
    crypto = o311.runtime.crypto
    assert incident.reporter_phone_enc and "13812345678" not in incident.reporter_phone_enc
    assert crypto.decrypt(incident.reporter_phone_enc,
                          context="incident.reporter_phone") == "13812345678"
    assert incident.reporter_name_enc is not None
    assert crypto.decrypt(incident.reporter_name_enc, context="incident.reporter_name") == "张三"
    extra = o311.session.get(Open311Request, incident.id)
    assert extra is not None and extra.email_enc and "zhang" not in extra.email_enc
    assert crypto.decrypt(extra.email_enc, context=EMAIL_CONTEXT) == "zhang.san@example.cn"
    assert extra.media_url == "https://img.example/a"


def test_a_bad_phone_number_is_a_400(o311: Open311) -> None:
    response = o311.post(api_key=o311.key(), service_code=GARBAGE, lat=A_LAT, long=A_LON,
                         phone="12")
    assert_spec_error(response, 400)


def test_a_foreign_jurisdiction_in_the_form_is_a_404(o311: Open311) -> None:
    response = o311.post(api_key=o311.key(), service_code=GARBAGE, lat=A_LAT, long=A_LON,
                         jurisdiction_id="chicago.il")
    assert_spec_error(response, 404)


def test_the_intake_is_recorded_as_a_receive_transition(o311: Open311) -> None:
    _report(o311, o311.key())
    actions = o311.session.scalars(sa.select(IncidentTransition.action)
                                   .order_by(IncidentTransition.id)).all()
    assert actions[:2] == ["receive", "register"]


def test_the_longest_names_fit_and_longer_ones_are_refused(o311: Open311) -> None:
    key = o311.key()
    _report(o311, key, first_name="名" * 30, last_name="姓" * 30)
    [incident] = _incidents(o311)
    assert incident.reporter_name_enc is not None
    name = o311.runtime.crypto.decrypt(incident.reporter_name_enc,
                                       context="incident.reporter_name")
    assert name == "姓" * 30 + "名" * 30
    response = o311.post(api_key=key, service_code=GARBAGE, lat=A_LAT, long=A_LON,
                         first_name="名" * 31)
    assert "first_name" in assert_spec_error(response, 400)[0]
