"""GET requests and GET requests/{id}: filters, the 90-day window, status, and privacy."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from tests.integration.command_support import (
    A_LAT,
    A_LON,
    B_LAT,
    B_LON,
    make_user,
    put_on_duty,
    report,
)
from tests.web.open311_support import (
    Open311,
    assert_spec_error,
    children,
    json_of,
    o311_fixture,  # noqa: F401
    xml_of,
)

from grassroots.command import actions
from grassroots.command.models import Deadline, Incident
from grassroots.command.states import DeadlineKind
from grassroots.kernel.auth.roles import Role
from grassroots.kernel.clock import FixedClock, to_display

REQUEST_FIELDS = ["service_request_id", "status", "status_notes", "service_name",
                  "service_code", "description", "agency_responsible", "service_notice",
                  "requested_datetime", "updated_datetime", "expected_datetime", "address",
                  "address_id", "zipcode", "lat", "long", "media_url"]
GARBAGE = "city_env.exposed_garbage"


def _post(o311: Open311, key: str, **fields: Any) -> str:
    values = {"api_key": key, "service_code": GARBAGE, "lat": B_LAT, "long": B_LON} | fields
    response = o311.post(**values)
    assert response.status_code == 200, response.text
    return str(response.json()[0]["service_request_id"])


def _ids(response: Any) -> list[str]:
    return [r["service_request_id"] for r in json_of(response)]


def _old(o311: Open311, clock: FixedClock, days: float, **kwargs: Any) -> Incident:
    """An incident received `days` ago (through a grid worker's app)."""
    result = report(o311.session, o311.runtime, o311.area,
                    received_at=clock.now() - timedelta(days=days), **kwargs)
    return result.incident


def test_a_request_shows_every_spec_field(o311: Open311, clock: FixedClock) -> None:
    responder = make_user(o311.session, Role.ZONE_RESPONDER)
    put_on_duty(o311.session, responder, o311.area.zone_b, clock.now())
    o311.area.zone_b.name = "双福二片区"
    o311.session.commit()
    number = _post(o311, o311.key(), description="井边垃圾", address_string="双福大道 188 号",
                   media_url="https://img.example/1.jpg")
    [request] = json_of(o311.get("/requests.json"))
    assert list(request) == REQUEST_FIELDS
    due = o311.session.query(Deadline).filter_by(kind=DeadlineKind.HANDLING).one().due_at
    assert request == request | {
        "service_request_id": number, "status": "open", "status_notes": "已派遣",
        "service_name": "暴露垃圾", "service_code": GARBAGE, "description": "井边垃圾",
        "agency_responsible": "双福二片区", "service_notice": "本事件将在 8 个工作小时内处置",
        "requested_datetime": "2026-03-10T09:30:00+08:00",
        "expected_datetime": to_display(due).isoformat(timespec="seconds"),
        "address": "双福大道****", "address_id": None, "zipcode": None,
        "lat": B_LAT, "long": B_LON, "media_url": "https://img.example/1.jpg"}
    assert request["updated_datetime"] == "2026-03-10T09:30:00+08:00"


def test_requests_in_xml_are_request_elements_with_the_spec_children(o311: Open311) -> None:
    _post(o311, o311.key())
    root = xml_of(o311.get("/requests.xml"))
    assert root.tag == "service_requests"
    [request] = root
    assert request.tag == "request"
    assert children(request) == REQUEST_FIELDS
    assert request.findtext("status") == "open"
    assert request.findtext("lat") == str(B_LAT)


def test_the_default_window_is_the_last_90_days(o311: Open311, clock: FixedClock) -> None:
    inside = _old(o311, clock, 89.9)
    _old(o311, clock, 90.1)
    assert _ids(o311.get("/requests.json")) == [inside.number]


def test_newest_requests_come_first(o311: Open311, clock: FixedClock) -> None:
    older, newer = _old(o311, clock, 3), _old(o311, clock, 1)
    assert _ids(o311.get("/requests.json")) == [newer.number, older.number]


def test_a_start_date_alone_covers_the_90_days_after_it(o311: Open311,
                                                          clock: FixedClock) -> None:
    early = _old(o311, clock, 150)
    _old(o311, clock, 10)
    start = (clock.now() - timedelta(days=160)).isoformat()
    assert _ids(o311.get("/requests.json", params={"start_date": start})) == [early.number]


def test_an_end_date_alone_covers_the_90_days_before_it(o311: Open311,
                                                          clock: FixedClock) -> None:
    early = _old(o311, clock, 150)
    _old(o311, clock, 10)
    end = (clock.now() - timedelta(days=140)).isoformat()
    assert _ids(o311.get("/requests.json", params={"end_date": end})) == [early.number]


def test_a_window_of_exactly_90_days_is_allowed(o311: Open311, clock: FixedClock) -> None:
    incident = _old(o311, clock, 100)
    params = {"start_date": "2025-11-30T00:00:00+08:00", "end_date": "2026-02-28T00:00:00+08:00"}
    assert _ids(o311.get("/requests.json", params=params)) == [incident.number]


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_a_window_over_90_days_is_refused(o311: Open311, fmt: str) -> None:
    params = {"start_date": "2025-11-30T00:00:00Z", "end_date": "2026-02-28T00:00:01Z"}
    [description] = assert_spec_error(o311.get(f"/requests.{fmt}", params=params), 400, fmt)
    assert "90 days" in description


def test_an_end_before_the_start_is_refused(o311: Open311) -> None:
    params = {"start_date": "2026-03-01T00:00:00Z", "end_date": "2026-02-01T00:00:00Z"}
    assert_spec_error(o311.get("/requests.json", params=params), 400)


def test_a_date_that_is_not_w3c_is_refused(o311: Open311) -> None:
    [description] = assert_spec_error(o311.get("/requests.json",
                                               params={"start_date": "03/01/2026"}), 400)
    assert "start_date" in description


def test_voided_requests_are_closed_with_the_detail_in_status_notes(
        o311: Open311, clock: FixedClock) -> None:
    kept, voided = _old(o311, clock, 2), _old(o311, clock, 1)
    dispatcher = make_user(o311.session, Role.DISPATCHER)
    o311.session.commit()
    actions.void(session=o311.session, runtime=o311.runtime, actor=dispatcher,
                 incident_id=voided.id, reason="重复上报")
    closed = json_of(o311.get("/requests.json", params={"status": "closed"}))
    assert [(r["service_request_id"], r["status"], r["status_notes"]) for r in closed] == [
        (voided.number, "closed", "已作废")]
    assert _ids(o311.get("/requests.json", params={"status": "open"})) == [kept.number]
    assert _ids(o311.get("/requests.json", params={"status": "open,closed"})) == [
        voided.number, kept.number]
    english = json_of(o311.get("/requests.json", params={"status": "closed"},
                               headers={"Accept-Language": "en"}))
    assert english[0]["status_notes"] == "Voided"


def test_a_merged_duplicate_names_its_original(o311: Open311, clock: FixedClock) -> None:
    original, duplicate = _old(o311, clock, 2), _old(o311, clock, 1)
    dispatcher = make_user(o311.session, Role.DISPATCHER)
    o311.session.commit()
    actions.merge_duplicate(session=o311.session, runtime=o311.runtime, actor=dispatcher,
                            incident_id=duplicate.id, original_id=original.id)
    [row] = json_of(o311.get(f"/requests/{duplicate.number}.json"))
    assert row["status"] == "closed"
    assert row["status_notes"] == f"已作废（与 {original.number} 重复）"


def test_an_unknown_status_is_refused(o311: Open311) -> None:
    assert_spec_error(o311.get("/requests.json", params={"status": "pending"}), 400)


def test_service_request_ids_override_every_other_filter(o311: Open311,
                                                          clock: FixedClock) -> None:
    old, recent = _old(o311, clock, 200), _old(o311, clock, 1)
    _old(o311, clock, 2)
    params = {"service_request_id": f"{old.number}, {recent.number}", "status": "closed",
              "service_code": "emergency.fire", "start_date": "2020-01-01T00:00:00Z",
              "end_date": "2020-01-02T00:00:00Z"}
    assert _ids(o311.get("/requests.json", params=params)) == [recent.number, old.number]


def test_service_codes_filter_as_a_comma_separated_list(o311: Open311,
                                                         clock: FixedClock) -> None:
    garbage = _old(o311, clock, 3)
    graffiti = _old(o311, clock, 2, category="city_env.graffiti")
    _old(o311, clock, 1, category="city_env.overflowing_bin")
    params = {"service_code": "city_env.exposed_garbage,city_env.graffiti"}
    assert _ids(o311.get("/requests.json", params=params)) == [graffiti.number, garbage.number]


def test_pages_split_the_results(o311: Open311, clock: FixedClock) -> None:
    newest_first = [_old(o311, clock, days).number for days in (1, 2, 3)]
    assert _ids(o311.get("/requests.json", params={"page_size": 2})) == newest_first[:2]
    assert _ids(o311.get("/requests.json", params={"page_size": 2, "page": 2})) == [
        newest_first[2]]
    assert_spec_error(o311.get("/requests.json", params={"page_size": 5000}), 400)


def test_the_public_listing_leaks_no_personal_data(o311: Open311) -> None:
    number = _post(o311, o311.key(), phone="13812345678", first_name="三", last_name="张",
                   email="zhang.san@example.cn", account_id="acct-9", device_id="dev-77",
                   address_string="双福街道福星路 12 号 3 栋 501",
                   address_id="500116-0012-0034",
                   description="请联系 138 1234 5678，身份证 11010519491231002X")
    for fmt in ("json", "xml"):
        for path in ("/requests", f"/requests/{number}"):
            body = o311.get(f"{path}.{fmt}").text
            for secret in ("13812345678", "1234 5678", "张三", "zhang.san", "acct-9",
                           "dev-77", "12 号", "500116-0012-0034", "19491231"):
                assert secret not in body, (path, fmt, secret)
    [row] = json_of(o311.get("/requests.json"))
    assert row["address"] == "双福街道福星路****"
    assert row["description"] == "请联系 138****5678，身份证 1***************2X"


def test_the_submitting_client_gets_back_what_it_sent(o311: Open311) -> None:
    key = o311.key()
    number = _post(o311, key, address_string="福星路 12 号 3 栋", address_id="500116-0012",
                   description="联系 13812345678")
    [row] = json_of(o311.get(f"/requests/{number}.json", params={"api_key": key}))
    assert row["address"] == "福星路 12 号 3 栋"
    assert row["address_id"] == "500116-0012"
    assert row["description"] == "联系 13812345678"
    [public] = json_of(o311.get(f"/requests/{number}.json"))
    assert public["address_id"] is None


def test_disputes_and_police_work_are_hidden_from_the_public_feed(o311: Open311,
                                                                   clock: FixedClock) -> None:
    key, other_key = o311.key("app-one"), o311.key("app-two")
    family = _post(o311, key, service_code="dispute.family",
                   **{"attribute[violence]": "no"})
    fight = _old(o311, clock, 1, category="security.fight", attributes={"injured": "no"})
    garbage = _post(o311, other_key)
    assert _ids(o311.get("/requests.json")) == [garbage]
    assert set(_ids(o311.get("/requests.json", params={"api_key": key}))) == {family, garbage}
    assert _ids(o311.get("/requests.json", params={"api_key": other_key})) == [garbage]
    assert_spec_error(o311.get(f"/requests/{family}.json"), 404)
    assert_spec_error(o311.get(f"/requests/{fight.number}.json"), 404)
    assert json_of(o311.get(f"/requests/{family}.json", params={"api_key": key}))


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_one_request_by_its_id(o311: Open311, fmt: str) -> None:
    number = _post(o311, o311.key())
    response = o311.get(f"/requests/{number}.{fmt}")
    assert response.status_code == 200
    if fmt == "json":
        [row] = json_of(response)
        assert row["service_request_id"] == number
    else:
        root = xml_of(response)
        assert root.tag == "service_requests"
        assert root.findtext("request/service_request_id") == number


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_an_unknown_request_id_is_a_404(o311: Open311, fmt: str) -> None:
    [description] = assert_spec_error(o311.get(f"/requests/SF20260310-999999.{fmt}"), 404, fmt)
    assert "SF20260310-999999" in description


def test_a_wrong_api_key_on_a_read_is_a_403(o311: Open311) -> None:
    assert_spec_error(o311.get("/requests.json", params={"api_key": "nope"}), 403)


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_a_token_is_answered_with_its_request_id(o311: Open311, fmt: str) -> None:
    number = _post(o311, o311.key())
    response = o311.get(f"/tokens/{number}.{fmt}")
    if fmt == "json":
        assert json_of(response) == [{"service_request_id": number, "token": number}]
    else:
        root = xml_of(response)
        assert root.tag == "service_requests"
        assert children(root[0]) == ["service_request_id", "token"]
    assert_spec_error(o311.get(f"/tokens/unknown-token.{fmt}"), 404, fmt)


def test_a_request_outside_every_zone_has_no_agency(o311: Open311) -> None:
    _post(o311, o311.key(), lat=A_LAT + 1, long=A_LON + 1)
    [row] = json_of(o311.get("/requests.json"))
    assert row["agency_responsible"] is None
    assert row["status_notes"] == "已立案"
