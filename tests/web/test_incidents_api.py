"""The incidents JSON API: intake with idempotency, every action's allowed and refused paths, the
data scope on every endpoint, 110 transfers, masked phones and responders' positions."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session
from tests.integration.command_support import (
    A_LAT,
    A_LON,
    B_LAT,
    B_LON,
    offset,
    report,
    start_over,
)
from tests.web.dispatcher_support import Street, bearer, garbage, make_street, with_command_routes

from grassroots.app import create_app
from grassroots.command.models import Incident, IncidentTransition
from grassroots.command.police import FakePoliceDesk
from grassroots.db import make_engine
from grassroots.kernel.audit.models import AuditRow
from grassroots.kernel.auth import actions as auth_actions
from grassroots.kernel.auth.models import User
from grassroots.kernel.clock import FixedClock
from grassroots.kernel.regions.geo import wgs84_to_gcj02
from grassroots.runtime import Runtime
from grassroots.settings import Settings

Headers = Callable[[User], dict[str, str]]


@pytest.fixture
def app(runtime: Runtime) -> FastAPI:
    from grassroots.app import create_app

    return with_command_routes(create_app(runtime=runtime))


@pytest.fixture
def street(session: Session, runtime: Runtime, clock: FixedClock) -> Street:
    return make_street(session, runtime, clock)


@pytest.fixture
def auth(session: Session, runtime: Runtime) -> Headers:
    tokens: dict[int, dict[str, str]] = {}

    def headers(user: User) -> dict[str, str]:
        if user.id not in tokens:
            tokens[user.id] = bearer(session, runtime, user)
        return tokens[user.id]

    return headers


def _count(session: Session, model: type) -> int:
    value = session.scalar(sa.select(sa.func.count()).select_from(model)) or 0
    session.rollback()
    return value


def _post(client: TestClient, headers: dict[str, str], body: dict[str, Any],
          key: str | None = None) -> Any:
    extra = {"Idempotency-Key": key} if key else {}
    return client.post("/api/v1/incidents", json=body, headers=headers | extra)


def _act(client: TestClient, headers: dict[str, str], incident_id: int, action: str,
         **body: Any) -> Any:
    return client.post(f"/api/v1/incidents/{incident_id}/actions/{action}", json=body,
                       headers=headers)


# --- intake -------------------------------------------------------------------------------------


def test_posting_an_incident_dispatches_it_to_its_zones_on_duty_responder_in_the_same_request(
        client: TestClient, street: Street, auth: Headers) -> None:
    in_a = _post(client, auth(street.dispatcher), garbage(), key="a-1")
    in_b = _post(client, auth(street.dispatcher), garbage(B_LON, B_LAT), key="b-1")

    assert in_a.status_code == 201, in_a.text
    body = in_a.json()
    assert body["created"] is True
    assert body["state"] == "dispatched"
    assert body["zone"]["id"] == street.area.zone_a.id
    assert body["grid"]["id"] == street.grid_a.id
    assert [r["user_id"] for r in body["responders"]] == [street.responder_a.id]
    assert body["responders"][0]["responder_state"] == "busy"
    clocks = {d["kind"]: d for d in body["deadlines"]}
    assert clocks["dispatch"]["state"] == "met"
    assert clocks["first_on_scene"]["state"] == "open"
    assert clocks["first_on_scene"]["seconds_left"] == 300
    assert clocks["handling"]["level"] == "ok"
    assert body["channel"] == "api"
    assert in_b.json()["zone"]["id"] == street.area.zone_b.id
    assert [r["user_id"] for r in in_b.json()["responders"]] == [street.responder_b.id]


def _without_the_report_route(app: FastAPI) -> FastAPI:
    app.router.routes[:] = [route for route in app.router.routes
                            if not (getattr(route, "path", None) == "/api/v1/incidents"
                                    and "POST" in getattr(route, "methods", ()))]
    return app


def test_the_usual_report_is_taken_before_the_router_and_anything_else_goes_on_to_it(
        app: FastAPI, session: Session, street: Street, auth: Headers) -> None:
    """command.api_fast takes a token user's valid report itself; what it hands on (here an
    unknown category) reaches the router, which no longer has the route: 405, nothing kept."""
    client = TestClient(_without_the_report_route(app))

    taken = _post(client, auth(street.dispatcher), garbage(), key="fast-1")
    handed_on = _post(client, auth(street.dispatcher),
                      garbage(category_code="no.such_category"), key="fast-2")

    assert taken.status_code == 201, taken.text
    assert taken.json()["state"] == "dispatched"
    assert [r["user_id"] for r in taken.json()["responders"]] == [street.responder_a.id]
    assert handed_on.status_code == 405
    assert _count(session, Incident) == 1


def test_an_error_after_the_commit_is_not_retried_so_the_report_is_written_once(
        app: FastAPI, session: Session, street: Street, auth: Headers,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the intake's own refusals are handed on to the route (they write nothing); an
    error that may come after the COMMIT is answered 500, not taken again."""
    writer = app.state.intake_writer
    submit = writer.submit_async

    async def commits_then_fails(call: Any) -> Any:
        await submit(call)
        raise RuntimeError("connection lost after COMMIT")

    monkeypatch.setattr(writer, "submit_async", commits_then_fails)
    client = TestClient(app, raise_server_exceptions=False)

    answer = _post(client, auth(street.dispatcher), garbage())  # no Idempotency-Key

    assert answer.status_code == 500
    assert _count(session, Incident) == 1


def test_a_body_nested_too_deep_to_read_is_refused_like_any_bad_body(
        client: TestClient, session: Session, street: Street, auth: Headers) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    refused = client.post("/api/v1/incidents", content=deep,
                          headers=auth(street.dispatcher) | {"Content-Type": "application/json"})
    assert refused.status_code in (400, 422), refused.text
    assert _count(session, Incident) == 0


def test_the_fast_path_answers_a_report_exactly_as_the_route_does(
        client: TestClient, session: Session, street: Street, auth: Headers) -> None:
    """The same report, taken before the router and then (after starting over) by the route
    itself (a query string sends it there): the same answer, but for the rows' ids."""
    fast = _post(client, auth(street.dispatcher), garbage(), key="same-1")
    start_over(session)
    routed = client.post("/api/v1/incidents?via=route", json=garbage(),
                         headers=auth(street.dispatcher) | {"Idempotency-Key": "same-1"})

    assert fast.status_code == routed.status_code == 201, routed.text
    assert fast.headers["content-type"] == routed.headers["content-type"]
    assert _without_row_ids(fast.json()) == _without_row_ids(routed.json())


def _without_row_ids(value: Any) -> Any:
    """The answer without "id" keys (the incident's, its clocks', its assignments')."""
    if isinstance(value, dict):
        return {k: _without_row_ids(v) for k, v in value.items() if k != "id"}
    if isinstance(value, list):
        return [_without_row_ids(v) for v in value]
    return value


def test_the_reporter_phone_and_name_are_masked_in_every_answer(
        client: TestClient, street: Street, auth: Headers) -> None:
    created = _post(client, auth(street.dispatcher), garbage()).json()
    again = client.get(f"/api/v1/incidents/{created['id']}", headers=auth(street.dispatcher))
    listed = client.get("/api/v1/incidents", headers=auth(street.dispatcher)).json()["items"][0]
    for answer in (created, again.json(), listed):
        assert answer["reporter_phone"] == "138****5678"
        assert answer["reporter_name"] == "张**"
    assert "13812345678" not in again.text


def test_a_retry_with_the_same_idempotency_key_returns_the_first_incident_with_200(
        client: TestClient, session: Session, street: Street, auth: Headers) -> None:
    first = _post(client, auth(street.dispatcher), garbage(), key="retry-1")
    retry = _post(client, auth(street.dispatcher), garbage(), key="retry-1")

    assert first.status_code == 201
    assert retry.status_code == 200
    assert retry.json()["id"] == first.json()["id"]
    assert retry.json()["created"] is False
    assert _count(session, Incident) == 1


def test_the_same_key_from_another_user_is_another_incident(
        client: TestClient, session: Session, street: Street, auth: Headers) -> None:
    mine = _post(client, auth(street.dispatcher), garbage(), key="shared")
    theirs = _post(client, auth(street.grid_worker_a), garbage(), key="shared")
    assert mine.status_code == theirs.status_code == 201
    assert mine.json()["id"] != theirs.json()["id"]


def test_reusing_a_key_with_a_different_body_is_refused_with_422_and_creates_nothing(
        client: TestClient, session: Session, street: Street, auth: Headers) -> None:
    first = _post(client, auth(street.dispatcher), garbage(), key="reuse-1")
    reused = _post(client, auth(street.dispatcher), garbage(description="另一件事"),
                   key="reuse-1")
    english = client.post("/api/v1/incidents", json=garbage(description="again"),
                          headers=auth(street.dispatcher) | {"Idempotency-Key": "reuse-1",
                                                             "Accept-Language": "en"})

    assert reused.status_code == 422
    error = reused.json()["error"]
    assert error["code"] == "validation_failed"
    assert "幂等键" in error["message"] and first.json()["number"] in error["message"]
    assert "idempotency key was already used" in english.json()["error"]["message"]
    assert _count(session, Incident) == 1


def test_coordinates_from_a_chinese_map_are_converted_to_wgs84(
        client: TestClient, street: Street, auth: Headers) -> None:
    lon, lat = wgs84_to_gcj02(A_LON, A_LAT)
    body = _post(client, auth(street.dispatcher),
                 garbage(lon=lon, lat=lat, crs="gcj02")).json()
    assert body["lon"] == pytest.approx(A_LON, abs=1e-5)
    assert body["lat"] == pytest.approx(A_LAT, abs=1e-5)
    assert body["zone"]["id"] == street.area.zone_a.id


def test_an_address_only_incident_waits_for_the_centre_which_alone_sees_it(
        client: TestClient, street: Street, auth: Headers) -> None:
    body = {"category_code": "city_env.exposed_garbage", "address_text": "双福大道 88 号门口"}
    created = _post(client, auth(street.dispatcher), body)
    assert created.status_code == 201
    incident = created.json()
    assert incident["zone"] is None and incident["state"] == "registered"
    url = f"/api/v1/incidents/{incident['id']}"
    assert client.get(url, headers=auth(street.leader)).status_code == 200  # the street's
    assert client.get(url, headers=auth(street.grid_worker_a)).status_code == 404
    refused = _post(client, auth(street.grid_worker_a), {"category_code": "nope.x"})
    assert refused.status_code == 422  # no location and no such category


def test_only_dispatchers_may_enter_phone_calls_and_110_hand_overs(
        client: TestClient, session: Session, street: Street, auth: Headers) -> None:
    for channel in ("phone", "police_110"):
        refused = _post(client, auth(street.grid_worker_a),
                        garbage(channel=channel, police_ref="110-X-1"))
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "permission_denied"
    assert _post(client, auth(street.viewer_a), garbage()).status_code == 403  # no report
    assert _count(session, Incident) == 0
    phone = _post(client, auth(street.dispatcher), garbage(channel="phone"))
    assert phone.status_code == 201 and phone.json()["channel"] == "phone"


def test_a_grid_worker_cannot_report_a_point_in_another_grid(
        client: TestClient, street: Street, auth: Headers) -> None:
    refused = _post(client, auth(street.grid_worker_a), garbage(B_LON, B_LAT))
    assert refused.status_code == 422
    assert "管辖范围" in refused.json()["error"]["message"]
    assert _post(client, auth(street.grid_worker_a), garbage()).status_code == 201


def test_bad_bodies_are_422_with_the_field_named(
        client: TestClient, street: Street, auth: Headers) -> None:
    response = _post(client, auth(street.dispatcher), garbage(lon=500))
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"] == "lon"
    assert _post(client, auth(street.dispatcher), garbage(channel="open311")).status_code == 422
    assert client.post("/api/v1/incidents", json=garbage()).status_code == 401


# --- reading ------------------------------------------------------------------------------------


def test_the_list_filters_by_state_category_zone_and_urgency_and_pages(
        client: TestClient, street: Street, auth: Headers) -> None:
    h = auth(street.dispatcher)
    a = _post(client, h, garbage()).json()
    b = _post(client, h, garbage(B_LON, B_LAT, urgency=1)).json()
    c = _post(client, h, {"category_code": "city_env.graffiti", "lon": A_LON,
                          "lat": A_LAT}).json()

    def ids(**params: Any) -> list[int]:
        page = client.get("/api/v1/incidents", params=params, headers=h).json()
        return [item["id"] for item in page["items"]]

    assert ids() == [c["id"], b["id"], a["id"]]
    assert ids(zone=street.area.zone_b.id) == [b["id"]]
    assert ids(urgency=1) == [b["id"]]
    assert ids(category="city_env.graffiti") == [c["id"]]
    assert set(ids(state=["dispatched"])) == {a["id"], b["id"]}  # graffiti waits: no one free
    assert ids(state=["closed"]) == []
    page = client.get("/api/v1/incidents", params={"limit": 2, "offset": 2}, headers=h).json()
    assert page["total"] == 3 and [i["id"] for i in page["items"]] == [a["id"]]


def test_the_timeline_lists_each_transition_with_its_actor_and_time(
        client: TestClient, street: Street, auth: Headers) -> None:
    created = _post(client, auth(street.dispatcher), garbage()).json()
    _act(client, auth(street.responder_a), created["id"], "accept")
    timeline = client.get(f"/api/v1/incidents/{created['id']}/timeline",
                          headers=auth(street.dispatcher)).json()
    assert [(t["action"], t["to_state"], t["actor"]) for t in timeline] == [
        ("receive", "received", "dispatcher"),
        ("register", "registered", "system:auto-dispatch"),
        ("dispatch", "dispatched", "system:auto-dispatch"),
        ("accept", "accepted", "responder_a")]
    assert timeline[3]["actor_name"] == "Responder_A"
    assert timeline[0]["at"].startswith("2026-03-10T01:30:00")


# --- actions ------------------------------------------------------------------------------------


def test_the_whole_loop_runs_through_the_action_endpoints(
        client: TestClient, clock: FixedClock, street: Street, auth: Headers) -> None:
    incident = _post(client, auth(street.dispatcher), garbage()).json()
    iid, responder = incident["id"], auth(street.responder_a)

    accepted = _act(client, responder, iid, "accept", expected_version=incident["version"])
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["state"] == "accepted"
    arrived = _act(client, responder, iid, "arrive", lon=A_LON, lat=A_LAT).json()
    assert arrived["state"] == "on_scene" and arrived["first_on_scene_at"]
    asked = _act(client, responder, iid, "request_reinforcement", unit_type="law_enforcement",
                 reason="需要执法队").json()
    request = asked["reinforcements"][0]
    assert [r["user_id"] for r in asked["responders"]] == [street.responder_a.id,
                                                           street.enforcer_a.id]
    came = _act(client, responder, iid, "reinforcement_arrived", request_id=request["id"])
    assert came.json()["reinforcements"][0]["arrived_at"]
    handled = _act(client, responder, iid, "handle", notes="已清运").json()
    assert handled["state"] == "handled"
    assert _act(client, responder, iid, "check").status_code == 403  # not the handler's check
    assert _act(client, auth(street.dispatcher), iid, "check").json()["state"] == "checked"
    closed = _act(client, auth(street.dispatcher), iid, "close").json()
    assert closed["state"] == "closed"
    assert any(d["kind"] == "callback" and d["state"] == "open" for d in closed["deadlines"])
    called = _act(client, auth(street.dispatcher), iid, "callback", satisfied=False,
                  notes="居民不满意").json()
    assert called["deadlines"][-1]["state"] == "met"
    reopened = _act(client, auth(street.dispatcher), iid, "reopen", reason="回访不满意")
    assert reopened.json()["state"] == "registered"
    again = _act(client, auth(street.dispatcher), iid, "dispatch",
                 user_ids=[street.responder_b.id], reason="换人处理").json()
    assert again["state"] == "dispatched"
    assert [r["user_id"] for r in again["responders"]] == [street.responder_b.id]


def test_a_zone_leader_supervises_checks_and_closes_their_own_zones_incidents_only(
        client: TestClient, session: Session, street: Street, auth: Headers) -> None:
    """片区长: supervision (督办) goes to the people on the incident, the check and the close are
    theirs at the zone's tier, dispatching is the centre's, and another zone is out of sight."""
    mine = _post(client, auth(street.dispatcher), garbage()).json()
    theirs = _post(client, auth(street.dispatcher), garbage(B_LON, B_LAT)).json()
    leader, responder = auth(street.zone_leader_a), auth(street.responder_a)

    supervised = _act(client, leader, mine["id"], "supervise", reason="居民反映强烈，请加快")
    assert supervised.status_code == 200, supervised.text
    assert _act(client, leader, theirs["id"], "supervise", reason="越区").status_code == 404
    assert _act(client, leader, mine["id"], "dispatch",
                user_ids=[street.responder_a.id]).status_code == 403
    for action, body in (("accept", {}), ("arrive", {"lon": A_LON, "lat": A_LAT}),
                         ("handle", {"notes": "已清运"})):
        assert _act(client, responder, mine["id"], action, **body).status_code == 200
    assert _act(client, leader, mine["id"], "check").json()["state"] == "checked"
    assert _act(client, leader, mine["id"], "close").json()["state"] == "closed"
    audit = session.scalars(sa.select(AuditRow.actor).where(
        AuditRow.object_type == "incident", AuditRow.object_id == str(mine["id"]),
        AuditRow.action.in_([f"incident:transition:{a}"
                             for a in ("supervise", "check", "close")]))).all()
    session.rollback()
    assert audit and set(audit) == {"zone_leader_a"}


def test_the_exception_paths_run_through_the_action_endpoints(
        client: TestClient, session: Session, runtime: Runtime, street: Street,
        auth: Headers) -> None:
    h = auth(street.dispatcher)
    one = _post(client, h, garbage()).json()
    extended = _act(client, h, one["id"], "extend", working_days=2, reason="需协调多个部门")
    assert extended.status_code == 200
    handling = next(d for d in extended.json()["deadlines"] if d["kind"] == "handling")
    before = next(d for d in one["deadlines"] if d["kind"] == "handling")
    assert handling["due_at"] > before["due_at"]
    assert _act(client, h, one["id"], "supervise", reason="请加快").status_code == 200
    suspended = _act(client, h, one["id"], "suspend", reason="等待业主回复").json()
    assert suspended["state"] == "suspended"
    resumed = _act(client, h, one["id"], "resume", reason="业主已回复").json()
    assert resumed["state"] == "dispatched"
    sent_back = _act(client, auth(street.responder_a), one["id"], "send_back",
                     reason="不属于本片区").json()
    assert sent_back["state"] == "sent_back"
    assert _act(client, h, one["id"], "void", reason="重复报告").json()["state"] == "voided"

    original = _post(client, h, garbage(B_LON, B_LAT)).json()
    duplicate = _post(client, h, garbage(*offset(B_LON, B_LAT, 10))).json()
    assert duplicate["needs_duplicate_review"] is True
    merged = _act(client, h, duplicate["id"], "merge_duplicate",
                  original_id=original["id"]).json()
    assert merged["state"] == "voided" and merged["duplicate_of"] == original["number"]

    flagged = _post(client, h, garbage(*offset(B_LON, B_LAT, 20))).json()
    kept = _act(client, h, flagged["id"], "keep_separate", reason="不同的垃圾点").json()
    assert kept["needs_duplicate_review"] is False

    waiting = report(session, runtime, street.area, auto_register=False).incident
    registered = _act(client, h, waiting.id, "register").json()
    assert registered["state"] == "registered"


@pytest.mark.parametrize(("who", "action", "body", "status", "code"), [
    ("responder_a", "dispatch", {}, 403, "permission_denied"),
    ("dispatcher", "accept", {}, 403, "permission_denied"),
    ("enforcer_a", "accept", {}, 403, "permission_denied"),  # in the zone, not sent to it
    ("dispatcher", "close", {}, 409, "conflict"),  # dispatched, not checked
    ("dispatcher", "void", {}, 422, "validation_failed"),  # a reason is required
    ("dispatcher", "void", {"reason": "x", "expected_version": 1}, 409, "conflict"),
    ("dispatcher", "callback", {"satisfied": True}, 409, "conflict"),  # not closed
    ("dispatcher", "extend", {"reason": "x"}, 422, "validation_failed"),  # how long?
    ("dispatcher", "merge_duplicate", {}, 422, "validation_failed"),  # which original?
    ("dispatcher", "fly", {}, 404, "not_found"),
    ("viewer_a", "supervise", {"reason": "x"}, 403, "permission_denied"),
    ("responder_a", "transfer_to_police", {}, 403, "permission_denied"),
])
def test_refused_actions_answer_with_the_right_status_and_change_nothing(
        client: TestClient, session: Session, street: Street, auth: Headers, who: str,
        action: str, body: dict[str, Any], status: int, code: str) -> None:
    incident = _post(client, auth(street.dispatcher), garbage()).json()
    transitions = _count(session, IncidentTransition)
    user = getattr(street, who)
    refused = _act(client, auth(user), incident["id"], action, **body)
    assert refused.status_code == status, refused.text
    assert refused.json()["error"]["code"] == code
    assert refused.json()["error"]["message"]
    assert _count(session, IncidentTransition) == transitions
    after = client.get(f"/api/v1/incidents/{incident['id']}", headers=auth(street.dispatcher))
    assert after.json()["version"] == incident["version"]


def test_a_stale_expected_version_is_409_and_the_current_one_goes_through(
        client: TestClient, street: Street, auth: Headers) -> None:
    incident = _post(client, auth(street.dispatcher), garbage()).json()
    _act(client, auth(street.dispatcher), incident["id"], "supervise", reason="催一下")
    stale = _act(client, auth(street.responder_a), incident["id"], "accept",
                 expected_version=incident["version"])
    assert stale.status_code == 409
    assert stale.json()["error"]["message"] == "该事件已被他人修改，请刷新后重试"
    fresh = client.get(f"/api/v1/incidents/{incident['id']}",
                       headers=auth(street.responder_a)).json()
    accepted = _act(client, auth(street.responder_a), incident["id"], "accept",
                    expected_version=fresh["version"])
    assert accepted.status_code == 200


def test_errors_come_back_in_the_requests_language(
        client: TestClient, street: Street, auth: Headers) -> None:
    incident = _post(client, auth(street.dispatcher), garbage()).json()
    english = client.post(f"/api/v1/incidents/{incident['id']}/actions/void", json={},
                          headers=auth(street.dispatcher) | {"Accept-Language": "en"})
    chinese = _act(client, auth(street.dispatcher), incident["id"], "void")
    assert english.status_code == chinese.status_code == 422
    assert chinese.json()["error"]["message"].startswith("执行")
    assert not any("\u4e00" <= ch <= "\u9fff" for ch in english.json()["error"]["message"])


# --- the data scope on every endpoint ------------------------------------------------------------

ACTIONS = ("register", "dispatch", "accept", "arrive", "request_reinforcement",
           "reinforcement_arrived", "handle", "check", "close", "callback", "extend",
           "send_back", "void", "suspend", "resume", "supervise", "reopen", "merge_duplicate",
           "keep_separate", "transfer_to_police")


def test_a_grid_worker_of_grid_a_can_neither_read_nor_act_on_an_incident_in_grid_b(
        client: TestClient, session: Session, street: Street, auth: Headers) -> None:
    in_b = _post(client, auth(street.dispatcher), garbage(B_LON, B_LAT)).json()
    in_a = _post(client, auth(street.dispatcher), garbage()).json()
    worker = auth(street.grid_worker_a)
    base = f"/api/v1/incidents/{in_b['id']}"

    assert client.get(base, headers=worker).status_code == 404
    assert client.get(base + "/timeline", headers=worker).status_code == 404
    for action in ACTIONS:
        response = _act(client, worker, in_b["id"], action, reason="x")
        assert response.status_code == 404, action
        assert response.json()["error"]["code"] == "not_found"
    listed = client.get("/api/v1/incidents", headers=worker).json()
    assert [i["id"] for i in listed["items"]] == [in_a["id"]] and listed["total"] == 1
    assert client.get(f"/api/v1/incidents/{in_a['id']}", headers=worker).status_code == 200
    # the other grid's worker sees theirs and not A's
    other = auth(street.grid_worker_b)
    assert client.get(f"/api/v1/incidents/{in_a['id']}", headers=other).status_code == 404
    assert client.get(base, headers=other).status_code == 200
    # nothing leaked through a refused action
    assert _count(session, AuditRow) == _count(session, AuditRow)
    timeline = client.get(base + "/timeline", headers=auth(street.dispatcher)).json()
    assert [t["action"] for t in timeline] == ["receive", "register", "dispatch"]


def test_a_responder_sent_across_the_zone_line_may_read_and_act_on_that_incident_only(
        client: TestClient, street: Street, auth: Headers) -> None:
    in_b = _post(client, auth(street.dispatcher), garbage(B_LON, B_LAT)).json()
    other_in_b = _post(client, auth(street.dispatcher), garbage(*offset(B_LON, B_LAT, 400)))
    url = f"/api/v1/incidents/{in_b['id']}"
    assert client.get(url, headers=auth(street.responder_a)).status_code == 404
    sent = _act(client, auth(street.dispatcher), in_b["id"], "dispatch",
                user_ids=[street.responder_a.id], reason="B 片区人手不足")
    assert sent.status_code == 200
    assert client.get(url, headers=auth(street.responder_a)).status_code == 200
    accepted = _act(client, auth(street.responder_a), in_b["id"], "accept")
    assert accepted.status_code == 200 and accepted.json()["state"] == "accepted"
    other = f"/api/v1/incidents/{other_in_b.json()['id']}"
    assert client.get(other, headers=auth(street.responder_a)).status_code == 404
    assert client.get(url, headers=auth(street.grid_worker_a)).status_code == 404


def test_merging_into_an_original_outside_the_scope_is_404(
        client: TestClient, street: Street, auth: Headers) -> None:
    in_a = _post(client, auth(street.dispatcher), garbage()).json()
    in_b = _post(client, auth(street.dispatcher), garbage(B_LON, B_LAT)).json()
    leader_a = auth(street.leader_a)
    response = _act(client, leader_a, in_a["id"], "merge_duplicate", original_id=in_b["id"])
    assert response.status_code == 404


def test_revealing_a_phone_outside_the_scope_is_404_even_with_the_permission(
        client: TestClient, street: Street, auth: Headers) -> None:
    in_b = _post(client, auth(street.dispatcher), garbage(B_LON, B_LAT)).json()
    response = client.post(f"/api/v1/incidents/{in_b['id']}/reveal-phone",
                           json={"reason": "回访核实情况"}, headers=auth(street.leader_a))
    assert response.status_code == 404


def test_responders_are_listed_only_within_the_users_zones(
        client: TestClient, street: Street, auth: Headers) -> None:
    everyone = client.get("/api/v1/responders", headers=auth(street.dispatcher)).json()
    assert {r["user_id"] for r in everyone} == {street.responder_a.id, street.responder_b.id,
                                                street.enforcer_a.id}
    zone_a = client.get("/api/v1/responders", headers=auth(street.responder_a)).json()
    assert {r["user_id"] for r in zone_a} == {street.responder_a.id, street.enforcer_a.id}
    first = next(r for r in zone_a if r["user_id"] == street.responder_a.id)
    assert first["state"] == "available" and first["unit_type"] == "zone_team"
    assert first["lon"] == pytest.approx(offset(A_LON, A_LAT, 120)[0])
    assert client.get("/api/v1/responders", headers=auth(street.grid_worker_a)).json() == []


# --- personal data ------------------------------------------------------------------------------


def test_revealing_the_phone_needs_the_permission_and_a_reason_and_is_logged(
        client: TestClient, session: Session, street: Street, auth: Headers) -> None:
    incident = _post(client, auth(street.dispatcher), garbage()).json()
    url = f"/api/v1/incidents/{incident['id']}/reveal-phone"

    refused = client.post(url, json={"reason": "看看"}, headers=auth(street.responder_a))
    assert refused.status_code == 403
    too_short = client.post(url, json={"reason": "看"}, headers=auth(street.dispatcher))
    assert too_short.status_code == 422
    revealed = client.post(url, json={"reason": "回访核实情况"}, headers=auth(street.dispatcher))
    assert revealed.status_code == 200
    assert revealed.json() == {"reporter_phone": "13812345678"}
    rows = session.scalars(sa.select(AuditRow).where(
        AuditRow.action == "personal_data:unmask")).all()
    assert len(rows) == 1
    assert rows[0].actor == "dispatcher" and rows[0].object_id == str(incident["id"])
    assert "回访核实情况" in rows[0].detail


# --- 110 ----------------------------------------------------------------------------------------


def test_an_incident_handed_over_by_110_is_keyed_by_its_reference(
        client: TestClient, session: Session, street: Street, auth: Headers) -> None:
    body = garbage(channel="police_110", police_ref="110-20260310-0042")
    first = _post(client, auth(street.dispatcher), body)
    again = _post(client, auth(street.dispatcher), body)
    by_the_leader_too = _post(client, auth(street.leader), body)
    missing = _post(client, auth(street.dispatcher), garbage(channel="police_110"))
    changed = _post(client, auth(street.dispatcher), body | {"description": "不一样"})

    assert first.status_code == 201
    assert first.json()["channel"] == "police_110"
    assert first.json()["external_ref"] == "110-20260310-0042"
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert by_the_leader_too.status_code == 403  # leaders do not dispatch
    assert missing.status_code == 422
    assert changed.status_code == 422 and "110-20260310-0042" in changed.json()["error"]["message"]
    assert _count(session, Incident) == 1


def test_police_work_is_transferred_to_110_with_the_desks_reference_recorded(
        app: FastAPI, client: TestClient, session: Session, street: Street,
        auth: Headers) -> None:
    desk: FakePoliceDesk = app.state.police_desk
    fight = _post(client, auth(street.dispatcher),
                  {"category_code": "security.fight", "lon": A_LON, "lat": A_LAT,
                   "reporter_phone": "13900001111", "description": "两人在打架",
                   "attributes": {"injured": "no"}}).json()
    assert fight["state"] == "registered"  # no police on the zone's roster

    moved = _act(client, auth(street.dispatcher), fight["id"], "transfer_to_police",
                 reason="治安案件，移交公安", expected_version=fight["version"])

    assert moved.status_code == 200, moved.text
    body = moved.json()
    reference, sent = desk.sent[0]
    assert body["police_ref"] == reference and reference.startswith("110-20260310-")
    assert body["state"] == "dispatched"
    assert {d["kind"]: d["state"] for d in body["deadlines"]}["dispatch"] == "met"
    assert sent.incident_number == fight["number"]
    assert sent.reporter_phone == "13900001111" and sent.description == "两人在打架"
    timeline = client.get(f"/api/v1/incidents/{fight['id']}/timeline",
                          headers=auth(street.dispatcher)).json()
    last = timeline[-1]
    assert last["action"] == "transfer_to_police" and last["actor"] == "dispatcher"
    assert last["detail"]["police_ref"] == reference
    assert last["reason"] == "治安案件，移交公安"
    twice = _act(client, auth(street.dispatcher), fight["id"], "transfer_to_police")
    assert twice.status_code == 409 and len(desk.sent) == 1
    garbage_incident = _post(client, auth(street.dispatcher), garbage()).json()
    not_police = _act(client, auth(street.dispatcher), garbage_incident["id"],
                      "transfer_to_police")
    assert not_police.status_code == 422 and len(desk.sent) == 1


def test_a_failing_110_desk_records_nothing(
        app: FastAPI, client: TestClient, session: Session, street: Street,
        auth: Headers) -> None:
    class Broken:
        def transfer(self, transfer: object, /) -> str:
            raise ConnectionError("110 is down")

    app.state.police_desk = Broken()
    fight = _post(client, auth(street.dispatcher),
                  {"category_code": "security.fight", "lon": A_LON, "lat": A_LAT,
                   "attributes": {"injured": "yes"}}).json()
    response = _act(client, auth(street.dispatcher), fight["id"], "transfer_to_police")
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "police_desk_unavailable"
    after = client.get(f"/api/v1/incidents/{fight['id']}", headers=auth(street.dispatcher))
    assert after.json()["state"] == "registered" and after.json()["police_ref"] is None
    assert after.json()["version"] == fight["version"]


# --- responders' phones ---------------------------------------------------------------------------


def test_a_responders_phone_reports_position_and_availability(
        client: TestClient, street: Street, auth: Headers) -> None:
    lon, lat = offset(A_LON, A_LAT, 40)
    reported = client.post("/api/v1/responders/me/position",
                           json={"lon": lon, "lat": lat, "state": "off"},
                           headers=auth(street.responder_a))
    assert reported.status_code == 204
    listed = client.get("/api/v1/responders", headers=auth(street.dispatcher)).json()
    me = next(r for r in listed if r["user_id"] == street.responder_a.id)
    assert me["state"] == "off" and me["lon"] == pytest.approx(lon)
    gcj = wgs84_to_gcj02(A_LON, A_LAT)
    client.post("/api/v1/responders/me/position",
                json={"lon": gcj[0], "lat": gcj[1], "crs": "gcj02", "state": "available"},
                headers=auth(street.responder_a))
    listed = client.get("/api/v1/responders", headers=auth(street.dispatcher)).json()
    me = next(r for r in listed if r["user_id"] == street.responder_a.id)
    assert me["lon"] == pytest.approx(A_LON, abs=1e-5) and me["state"] == "available"
    assert client.post("/api/v1/responders/me/position", json={"lon": 1, "lat": 2},
                       headers=auth(street.dispatcher)).status_code == 403
    bad = client.post("/api/v1/responders/me/position", json={"lon": 1},
                      headers=auth(street.responder_a))
    assert bad.status_code == 422


def test_reports_waiting_for_their_batch_hold_no_database_connection(
        street: Street, session: Session, runtime: Runtime, settings: Settings,
        clock: FixedClock) -> None:
    # A pool of two: the sign-in checks of three tokens take a connection each (the third
    # waits for one); a report that kept its check's connection while waiting for its batch
    # would leave the writer none to write the batch with.
    headers = [bearer(session, runtime, street.dispatcher) for _ in range(3)]
    for token in headers:  # used once already (so a check writes nothing), then not kept
        assert auth_actions.user_for_api_token(
            session=session, runtime=runtime, token=token["Authorization"].split()[1])
    session.commit()
    auth_actions.forget_cached_tokens()
    small = Runtime(settings, clock=clock)
    small.__dict__["engine"] = make_engine(settings.database_url, pool_size=2,
                                           max_overflow=0, pool_timeout=5)
    try:
        with TestClient(create_app(runtime=small)) as client, \
                ThreadPoolExecutor(max_workers=3) as pool:
            answers = list(pool.map(
                lambda n: _post(client, headers[n], garbage(description=f"第{n}起"),
                                key=f"k{n}"), range(3), timeout=30))
    finally:
        small.engine.dispose()
    assert [a.status_code for a in answers] == [201] * 3, [a.text for a in answers]
    assert _count(session, Incident) == 3
