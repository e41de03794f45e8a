"""The service-request-updates extension: every saved transition is an update of its request."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from tests.integration.command_support import B_LAT, B_LON, make_user, put_on_duty, report
from tests.web.open311_support import (
    Open311,
    assert_spec_error,
    children,
    json_of,
    o311_fixture,  # noqa: F401
    xml_of,
)

from grassroots.command import actions
from grassroots.command.models import IncidentTransition
from grassroots.kernel.auth.roles import Role
from grassroots.kernel.clock import FixedClock

UPDATE_FIELDS = ["update_id", "service_request_id", "status", "updated_datetime",
                 "description", "media_url"]


def _post(o311: Open311, key: str, **fields: str) -> str:
    values = {"api_key": key, "service_code": "city_env.exposed_garbage", "lat": str(B_LAT),
              "long": str(B_LON)} | fields
    response = o311.post(**values)
    assert response.status_code == 200, response.text
    return str(response.json()[0]["service_request_id"])


def test_each_transition_is_an_update_with_the_spec_fields(o311: Open311,
                                                           clock: FixedClock) -> None:
    responder = make_user(o311.session, Role.ZONE_RESPONDER)
    put_on_duty(o311.session, responder, o311.area.zone_b, clock.now())
    number = _post(o311, o311.key())
    updates = json_of(o311.get("/request_updates.json"))
    assert all(list(update) == UPDATE_FIELDS for update in updates)
    assert [(u["service_request_id"], u["status"], u["description"]) for u in updates] == [
        (number, "open", "受理，当前状态：已受理"),
        (number, "open", "立案，当前状态：已立案"),
        (number, "open", "派遣，当前状态：已派遣")]
    ids = [int(u["update_id"]) for u in updates]
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert updates[0]["updated_datetime"] == "2026-03-10T09:30:00+08:00"
    assert updates[0]["media_url"] is None


def test_a_voided_request_ends_with_a_closed_update(o311: Open311, clock: FixedClock) -> None:
    key = o311.key()
    number = _post(o311, key)
    incident_id = o311.session.scalars(sa.select(IncidentTransition.incident_id)).first()
    assert incident_id is not None
    dispatcher = make_user(o311.session, Role.DISPATCHER)
    o311.session.commit()
    clock.advance(timedelta(minutes=5))
    actions.void(session=o311.session, runtime=o311.runtime, actor=dispatcher,
                 incident_id=incident_id, reason="张三家门口，已电话联系")
    public = json_of(o311.get("/request_updates.json", headers={"Accept-Language": "en"}))
    last = public[-1]
    assert last["service_request_id"] == number and last["status"] == "closed"
    assert last["description"] == "Voided; now Voided"
    assert last["updated_datetime"] == "2026-03-10T09:35:00+08:00"
    own = json_of(o311.get("/request_updates.json", params={"api_key": key}))
    assert own[-1]["description"] == "作废，当前状态：已作废。说明：张三家门口，已电话联系"


def test_updates_in_xml_use_the_extension_element_names(o311: Open311) -> None:
    _post(o311, o311.key())
    root = xml_of(o311.get("/request_updates.xml"))
    assert root.tag == "service_request_updates"
    assert set(children(root)) == {"request_update"}
    assert children(root[0]) == UPDATE_FIELDS


def test_the_mysociety_path_answers_the_same(o311: Open311) -> None:
    _post(o311, o311.key())
    assert o311.get("/servicerequestupdates.json").json() == o311.get(
        "/request_updates.json").json()


def test_updates_keep_to_the_window(o311: Open311, clock: FixedClock) -> None:
    report(o311.session, o311.runtime, o311.area)
    clock.advance(timedelta(days=100))
    recent = report(o311.session, o311.runtime, o311.area).incident
    updates = json_of(o311.get("/request_updates.json"))
    assert {u["service_request_id"] for u in updates} == {recent.number}
    start = (clock.now() - timedelta(days=101)).isoformat()
    end = (clock.now() - timedelta(days=99)).isoformat()
    old = json_of(o311.get("/request_updates.json", params={"start_date": start,
                                                            "end_date": end}))
    assert old and recent.number not in {u["service_request_id"] for u in old}


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_an_update_window_over_90_days_is_refused(o311: Open311, fmt: str) -> None:
    params = {"start_date": "2025-01-01T00:00:00Z", "end_date": "2026-01-01T00:00:00Z"}
    assert_spec_error(o311.get(f"/request_updates.{fmt}", params=params), 400, fmt)


def test_updates_of_private_requests_stay_private(o311: Open311) -> None:
    key = o311.key()
    _post(o311, key, service_code="dispute.family", **{"attribute[violence]": "no"})
    assert json_of(o311.get("/request_updates.json")) == []
    assert json_of(o311.get("/request_updates.json", params={"api_key": key}))
