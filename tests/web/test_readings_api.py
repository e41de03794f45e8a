"""The telemetry JSON routes, on an app holding just them (plus the real auth middleware
where a test says so), so these tests do not depend on how the main app is wired."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session
from tests.telemetry_factories import make_structure

from grassroots.irrigation.network.models import Structure, StructureKind
from grassroots.irrigation.telemetry.api import router
from grassroots.irrigation.telemetry.models import Reading
from grassroots.irrigation.telemetry.schemas import MAX_UPLOAD
from grassroots.irrigation.telemetry.state import DeviceHealth
from grassroots.irrigation.telemetry.store import ReadingIn, store_readings
from grassroots.kernel.audit.models import AuditRow
from grassroots.kernel.auth import actions
from grassroots.kernel.auth.models import User
from grassroots.kernel.auth.roles import Role
from grassroots.kernel.clock import FixedClock
from grassroots.runtime import Runtime
from grassroots.web.deps import get_current_user
from grassroots.web.errors import install_error_handlers

URL = "/api/v1/irrigation/readings"
AT = "2026-03-10T08:00:00+08:00"  # 00:00 UTC, before the test clock's 01:30 UTC
T0 = datetime(2026, 3, 10, 0, 0, tzinfo=UTC)


def make_user(session: Session, runtime: Runtime, role: Role) -> User:
    now = runtime.clock.now()
    with session.begin():
        user = User(username=f"{role.value}-user", display_name=role.value, role=role,
                    password_hash="!", created_at=now, password_changed_at=now)
        session.add(user)
    return user


@pytest.fixture
def api(runtime: Runtime) -> FastAPI:
    app = FastAPI()
    app.state.runtime = runtime
    install_error_handlers(app)
    app.include_router(router)
    return app


SignIn = Callable[..., TestClient]


@pytest.fixture
def sign_in(api: FastAPI, session: Session, runtime: Runtime) -> Iterator[SignIn]:
    """A client acting as a new user of ``role``, signed in by session or by API token."""
    clients: list[TestClient] = []

    def build(role: Role | None, *, method: str = "session") -> TestClient:
        user = make_user(session, runtime, role) if role is not None else None

        async def current(request: Request) -> User:
            if user is None:
                return await get_current_user(request)
            request.state.auth_method = method
            return user

        api.dependency_overrides[get_current_user] = current
        client = TestClient(api)
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.close()


@pytest.fixture
def gates(session: Session) -> list[Structure]:
    return [make_structure(session, code=f"G{n}", kind=StructureKind.INTEGRATED_GATE,
                           mqtt_device_id=f"gate-{n}") for n in (1, 2)]


def item(structure: str = "G1", quantity: str = "water_level_m", observed_at: object = AT,
         value: object = 1.25, **extra: object) -> dict[str, object]:
    return {"structure": structure, "quantity": quantity, "observed_at": observed_at,
            "value": value, **extra}


def audit_rows(session: Session) -> list[AuditRow]:
    with Session(session.get_bind()) as fresh:
        return list(fresh.scalars(sa.select(AuditRow)
                                  .where(AuditRow.action == "irrigation:readings:upload")))


def stored(session: Session) -> list[tuple[str, str, datetime, float | None, str]]:
    with Session(session.get_bind()) as fresh:
        return list(fresh.execute(
            sa.select(Structure.code, Reading.quantity, Reading.observed_at, Reading.value,
                      Reading.source).join(Structure, Structure.id == Reading.structure_id)
            .order_by(Structure.code, Reading.quantity, Reading.observed_at)).tuples())


def test_a_dispatcher_uploads_a_batch_that_is_stored_and_audited_once(
    sign_in: SignIn, gates: list[Structure], session: Session,
) -> None:
    client = sign_in(Role.IRRIGATION_DISPATCHER)
    batch = [item(), item("G1", "flow_m3s", value=0.5), item("G2", observed_at=1773100800000,
                                                             value=None)]

    response = client.post(URL, json=batch)

    assert response.status_code == 200
    body = response.json()
    assert (body["received"], body["inserted"], body["duplicates"]) == (3, 3, 0)
    assert stored(session) == [("G1", "flow_m3s", T0, 0.5, "http"),
                               ("G1", "water_level_m", T0, 1.25, "http"),
                               ("G2", "water_level_m", T0, None, "http")]
    [row] = audit_rows(session)
    assert (row.actor, row.outcome, row.object_id) == ("irrigation_dispatcher-user", "success",
                                                       body["batch"])
    assert json.loads(row.detail)["inserted"] == 3


def test_uploading_the_same_batch_twice_stores_it_once(
    sign_in: SignIn, gates: list[Structure], session: Session,
) -> None:
    client = sign_in(Role.IRRIGATION_DISPATCHER)
    batch = {"readings": [item(), item(value=9.9)]}

    first = client.post(URL, json=batch).json()
    second = client.post(URL, json=batch).json()

    assert (first["inserted"], first["duplicates"]) == (1, 1)
    assert (second["inserted"], second["duplicates"]) == (0, 2)
    assert stored(session) == [("G1", "water_level_m", T0, 1.25, "http")]
    assert len(audit_rows(session)) == 2


BAD_BATCH = [
    item(),
    item("NOPE"),
    item(observed_at="2026-03-10T08:00:00"),
    item(quantity="depth_ft", value="high"),
    item(observed_at="2026-03-12T08:00:00+08:00"),
    "not an object",
    {"structure": "G1", "quantity": "flow_m3s", "valeu": 1.0, "observed_at": AT},
]


def test_one_bad_item_rejects_the_whole_batch_with_every_problem_listed_in_chinese(
    sign_in: SignIn, gates: list[Structure], session: Session,
) -> None:
    client = sign_in(Role.IRRIGATION_DISPATCHER)

    response = client.post(URL, json=BAD_BATCH)

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "readings_rejected"
    assert error["message"] == "整批读数未接收：发现 8 处错误，请改正后重新上传"
    problems = [(d["index"], d["field"], d["code"]) for d in error["details"]]
    assert problems == [
        (1, "structure", "unknown_structure"), (2, "observed_at", "naive_time"),
        (3, "quantity", "unknown_quantity"), (3, "value", "bad_value"),
        (4, "observed_at", "future_time"), (5, None, "not_an_object"),
        (6, "valeu", "unknown_field"), (6, "value", "missing")]
    assert error["details"][0]["message"] == "未知的建筑物编码 NOPE"
    assert stored(session) == []
    [row] = audit_rows(session)
    assert row.outcome == "failure"


def test_the_problem_list_is_in_english_when_asked(
    sign_in: SignIn, gates: list[Structure],
) -> None:
    client = sign_in(Role.IRRIGATION_DISPATCHER)

    response = client.post(URL, json=BAD_BATCH, headers={"Accept-Language": "en"})

    error = response.json()["error"]
    assert error["message"].startswith("The batch was not accepted: 8 problems")
    assert error["details"][1]["message"] == "The time has no UTC offset (add one, e.g. +08:00)"


def test_a_batch_over_the_limit_is_refused_before_any_item_is_read(
    sign_in: SignIn, gates: list[Structure],
) -> None:
    client = sign_in(Role.IRRIGATION_DISPATCHER)

    response = client.post(URL, json=[item()] * (MAX_UPLOAD + 1),
                           headers={"Accept-Language": "en"})

    assert response.status_code == 422
    assert response.json()["error"]["details"] == [{
        "index": None, "field": None, "code": "too_many",
        "message": f"At most {MAX_UPLOAD} readings per batch; this one has {MAX_UPLOAD + 1}"}]


def test_a_full_size_batch_is_accepted(
    sign_in: SignIn, gates: list[Structure], session: Session,
) -> None:
    client = sign_in(Role.IRRIGATION_DISPATCHER)
    batch = [item(observed_at=(T0 - timedelta(minutes=n)).isoformat(), value=n / 1000)
             for n in range(MAX_UPLOAD)]

    response = client.post(URL, json=batch)

    assert response.json()["inserted"] == MAX_UPLOAD
    with Session(session.get_bind()) as fresh:
        assert fresh.scalar(sa.select(sa.func.count()).select_from(Reading)) == MAX_UPLOAD


def test_a_viewer_may_not_upload_from_a_browser_session(
    sign_in: SignIn, gates: list[Structure],
) -> None:
    client = sign_in(Role.VIEWER)

    assert client.post(URL, json=[item()]).status_code == 403


def test_a_data_logger_token_with_read_access_may_upload(
    sign_in: SignIn, gates: list[Structure], session: Session,
) -> None:
    client = sign_in(Role.VIEWER, method="token")

    assert client.post(URL, json=[item()]).status_code == 200
    assert len(stored(session)) == 1


def test_a_real_api_token_is_accepted_through_the_auth_middleware(
    api: FastAPI, runtime: Runtime, session: Session, gates: list[Structure],
) -> None:
    from grassroots.web.auth import AuthMiddleware

    api.add_middleware(AuthMiddleware)
    logger = make_user(session, runtime, Role.VIEWER)
    _token, plaintext = actions.create_api_token(session=session, runtime=runtime,
                                                 actor=logger, name="logger")
    with TestClient(api) as client:
        anonymous = client.post(URL, json=[item()])
        response = client.post(URL, json=[item()],
                               headers={"Authorization": f"Bearer {plaintext}"})

    assert anonymous.status_code in (401, 403)
    assert response.status_code == 200, response.text
    assert audit_rows(session)[-1].actor == "viewer-user"


def test_no_one_signed_in_gets_401(sign_in: SignIn, gates: list[Structure]) -> None:
    client = sign_in(None)

    assert client.post(URL, json=[item()]).status_code == 401
    assert client.get(URL, params={"structure": "G1"}).status_code == 401


def put(runtime: Runtime, structure: Structure, quantity: str, minutes: list[int],
        source: str = "mqtt") -> None:
    store_readings(engine_or_session_factory=runtime.session_factory, readings=[
        ReadingIn(structure.id, quantity, T0 + timedelta(minutes=m), float(m), 0, source)
        for m in minutes], received_at=runtime.clock.now())


def test_readings_are_listed_oldest_first_within_the_range(
    sign_in: SignIn, gates: list[Structure], runtime: Runtime,
) -> None:
    put(runtime, gates[0], "water_level_m", [30, 0, 10, 20, 40])
    put(runtime, gates[0], "flow_m3s", [10])
    put(runtime, gates[1], "water_level_m", [10])
    client = sign_in(Role.VIEWER)

    response = client.get(URL, params={
        "structure": "G1", "quantity": "water_level_m", "start": "2026-03-10T08:10:00+08:00",
        "end": "2026-03-10T00:40:00Z", "limit": 2})

    assert response.status_code == 200
    body = response.json()
    assert (body["structure"], body["count"]) == ("G1", 2)
    assert [(r["observed_at"], r["value"]) for r in body["readings"]] == [
        ("2026-03-10T00:10:00Z", 10.0), ("2026-03-10T00:20:00Z", 20.0)]
    everything = client.get(URL, params={"structure": "G1"}).json()
    assert everything["count"] == 6


@pytest.mark.parametrize(("params", "status", "code"), [
    ({"structure": "NOPE"}, 404, "not_found"),
    ({"structure": "G1", "start": "2026-03-10T08:00:00"}, 422, "validation_failed"),
    ({"structure": "G1", "start": AT, "end": AT}, 422, "validation_failed"),
    ({"structure": "G1", "quantity": "depth_ft"}, 422, "validation_failed"),
])
def test_a_bad_reading_query_gets_a_clear_error(
    sign_in: SignIn, gates: list[Structure], params: dict[str, str], status: int, code: str,
) -> None:
    client = sign_in(Role.VIEWER)

    response = client.get(URL, params=params, headers={"Accept-Language": "en"})

    assert response.status_code == status
    assert response.json()["error"]["code"] == code


def test_a_role_without_irrigation_access_may_not_read(
    sign_in: SignIn, gates: list[Structure],
) -> None:
    client = sign_in(Role.MEDIATOR)

    assert client.get(URL, params={"structure": "G1"}).status_code == 403
    assert client.get("/api/v1/irrigation/devices").status_code == 403


def test_devices_are_listed_with_their_liveness_judged_now(
    sign_in: SignIn, gates: list[Structure], runtime: Runtime, session: Session,
    clock: FixedClock,
) -> None:
    make_structure(session, code="F1", kind=StructureKind.PARSHALL_FLUME)  # no device
    put(runtime, gates[0], "voltage_v", [0])
    client = sign_in(Role.VIEWER)

    now = client.get("/api/v1/irrigation/devices").json()
    clock.advance(timedelta(minutes=3))  # a gate reports every minute
    later = client.get("/api/v1/irrigation/devices").json()

    assert [(d["structure"], d["state"]) for d in now["devices"]] == [
        ("G1", DeviceHealth.ONLINE), ("G2", DeviceHealth.OFFLINE)]
    assert now["devices"][0]["voltage_v"] == 0.0
    assert [d["state"] for d in later["devices"]] == [DeviceHealth.STALE,
                                                     DeviceHealth.OFFLINE]
