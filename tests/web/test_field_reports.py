"""The grid worker's phone pages: a photo report, its checks, and the assigned worker's steps."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
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
    Area,
    load_categories,
    make_area,
    put_on_duty,
)
from tests.web.field_support import (
    csrf_from,
    hidden,
    include_routers,
    jpeg_bytes,
    make_user,
    png_bytes,
    sign_in,
    stored_files,
    webp_bytes,
)

from grassroots.command import media
from grassroots.command.models import (
    Assignment,
    Incident,
    IncidentPhoto,
    PhotoStage,
    ResponderStatus,
)
from grassroots.command.states import Channel, IncidentState, ResponseRole
from grassroots.kernel.audit.models import AuditRow
from grassroots.kernel.auth.models import User
from grassroots.kernel.auth.roles import Role
from grassroots.runtime import Runtime

Files = list[tuple[str, tuple[str, bytes, str]]]


@pytest.fixture
def app(runtime: Runtime) -> FastAPI:
    from grassroots.app import create_app

    return include_routers(create_app(runtime=runtime))


@dataclass
class World:
    area: Area
    worker: User  # grid worker of zone A
    worker_b: User  # grid worker of zone B
    responder: User  # on duty in zone A
    responder_b: User  # on duty in zone B


@pytest.fixture
def world(session: Session, runtime: Runtime) -> World:
    load_categories(session, runtime)
    area = make_area(session)
    worker = make_user(session, runtime, "gridworker", Role.GRID_WORKER, area.zone_a.code)
    worker_b = make_user(session, runtime, "gridworkerb", Role.GRID_WORKER, area.zone_b.code)
    responder = make_user(session, runtime, "responder", Role.ZONE_RESPONDER, area.zone_a.code)
    responder_b = make_user(session, runtime, "responderb", Role.ZONE_RESPONDER,
                            area.zone_b.code)
    now = runtime.clock.now()
    put_on_duty(session, responder, area.zone_a, now)
    put_on_duty(session, responder_b, area.zone_b, now)
    return World(area, worker, worker_b, responder, responder_b)


def count(session: Session, model: type) -> int:
    value = session.scalar(sa.select(sa.func.count()).select_from(model)) or 0
    session.rollback()
    return value


def open_form(client: TestClient) -> dict[str, str]:
    page = client.get("/field")
    assert page.status_code == 200, page.text
    return {"csrf_token": csrf_from(page.text),
            "idempotency_key": hidden(page.text, "idempotency_key")}


def report(client: TestClient, form: dict[str, str], files: Files | None = None,
           **fields: Any) -> Any:
    data = {**form, "category": "city_env.exposed_garbage", "lon": str(A_LON),
            "lat": str(A_LAT), "crs": "wgs84", "address": "双福大道 88 号门口",
            "description": "垃圾堆在路边", **{k: str(v) for k, v in fields.items()}}
    return client.post("/field/reports", data=data, files=files or [], follow_redirects=False)


def photo_files(*photos: tuple[str, bytes]) -> Files:
    return [("photos", (name, content, "image/jpeg")) for name, content in photos]


def test_a_photo_report_lands_dispatched_in_the_right_zone_with_its_photos_stored(
    client: TestClient, session: Session, runtime: Runtime, world: World
) -> None:
    jpeg, png, webp = jpeg_bytes(640, 480), png_bytes(3, 2), webp_bytes(5, 7)
    sign_in(client, "gridworker")
    response = report(client, open_form(client),
                      photo_files(("现场1.jpg", jpeg), ("b.png", png), ("c.webp", webp)))

    assert response.status_code == 303, response.text
    incident = session.scalars(sa.select(Incident)).one()
    assert response.headers["location"] == f"/field/reports/{incident.id}"
    assert incident.channel == Channel.GRID_WORKER
    assert incident.created_by == "gridworker"
    assert incident.zone_id == world.area.zone_a.id
    assert incident.micro_grid_id == world.area.micro_a.id
    assert incident.state == IncidentState.DISPATCHED
    assert incident.address_text == "双福大道 88 号门口"
    sent = session.scalars(sa.select(Assignment.user_id).where(
        Assignment.incident_id == incident.id,
        Assignment.role == ResponseRole.FIRST_RESPONDER)).all()
    assert sent == [world.responder.id]

    photos = session.scalars(sa.select(IncidentPhoto).order_by(IncidentPhoto.id)).all()
    assert [(p.content_type, p.width, p.height) for p in photos] == [
        ("image/jpeg", 640, 480), ("image/png", 3, 2), ("image/webp", 5, 7)]
    root = Path(runtime.settings.upload_dir)
    for photo, content in zip(photos, (jpeg, png, webp), strict=True):
        assert photo.incident_id == incident.id and photo.stage == PhotoStage.REPORT
        assert photo.size_bytes == len(content)
        assert photo.sha256 == hashlib.sha256(content).hexdigest()
        assert photo.uploaded_by == "gridworker" and photo.uploaded_by_id == world.worker.id
        assert (root / photo.stored_path).read_bytes() == content
    assert len(stored_files(root)) == 3  # nothing left in staging
    assert session.scalars(sa.select(AuditRow.actor).where(
        AuditRow.action == "incident:photo:add")).all() == ["gridworker"]

    done = client.get(response.headers["location"])
    assert done.status_code == 200
    assert incident.number in done.text and "已派遣" in done.text
    assert "Responder" in done.text  # who was sent
    served = client.get(f"/command/photos/{photos[1].id}")
    assert served.status_code == 200
    assert served.content == png
    assert served.headers["content-type"] == "image/png"
    assert served.headers["x-content-type-options"] == "nosniff"


def test_the_form_is_a_plain_phone_form_with_camera_upload_and_grouped_categories(
    client: TestClient, world: World
) -> None:
    sign_in(client, "gridworker")
    page = client.get("/field").text
    assert 'name="viewport"' in page
    assert 'enctype="multipart/form-data"' in page
    assert re.search(r'<input type="file"[^>]*accept="image/\*"[^>]*capture="environment"'
                     r'[^>]*multiple', page)
    assert '<optgroup label="市容环境">' in page
    assert "现场上报" in page and "获取当前位置" in page


def test_a_png_named_text_file_is_refused_by_its_magic_bytes_and_nothing_is_stored(
    client: TestClient, session: Session, runtime: Runtime, world: World
) -> None:
    sign_in(client, "gridworker")
    files = [("photos", ("photo.png", b"just some text, honestly\n", "image/png"))]
    response = report(client, open_form(client), files)

    assert response.status_code == 422
    assert "“photo.png”不是 JPEG、PNG 或 WebP 格式的图片" in response.text
    assert "垃圾堆在路边" in response.text  # the form keeps what was typed
    assert count(session, Incident) == 0
    assert count(session, IncidentPhoto) == 0
    assert stored_files(Path(runtime.settings.upload_dir)) == []


def test_an_oversized_photo_is_refused_and_nothing_is_stored(
    client: TestClient, session: Session, runtime: Runtime, world: World
) -> None:
    sign_in(client, "gridworker")
    small = jpeg_bytes()
    big = jpeg_bytes(padding=media.MAX_PHOTO_BYTES)
    response = report(client, open_form(client), photo_files(("ok.jpg", small), ("big.jpg", big)))

    assert response.status_code == 422
    assert "照片“big.jpg”超过 10 MB" in response.text
    assert count(session, Incident) == 0
    assert count(session, IncidentPhoto) == 0
    assert stored_files(Path(runtime.settings.upload_dir)) == []


@pytest.mark.parametrize(("fields", "photos", "message"), [
    ({"category": ""}, 0, "请选择事件类型"),
    ({"category": "no_such.thing"}, 0, "所选事件类型不存在或已停用"),
    ({"lon": "", "lat": ""}, 0, "请先获取当前位置，或手工填写经纬度"),
    ({"lon": "east"}, 0, "经纬度须为有效数字"),
    ({"lon": "116.40", "lat": "39.90"}, 0, "不在任何辖区内"),
    ({}, media.MAX_PHOTOS + 1, "最多上传 6 张照片"),
    ({"category": "dispute.neighbour_noise"}, 0, "请回答：噪声来源"),
])
def test_bad_input_shows_a_chinese_error_and_stores_nothing(
    client: TestClient, session: Session, runtime: Runtime, world: World,
    fields: dict[str, str], photos: int, message: str
) -> None:
    sign_in(client, "gridworker")
    files = photo_files(*[(f"p{i}.jpg", jpeg_bytes()) for i in range(photos)])
    response = report(client, open_form(client), files, **fields)

    assert response.status_code == 422
    assert message in response.text
    assert count(session, Incident) == 0
    assert count(session, IncidentPhoto) == 0
    assert stored_files(Path(runtime.settings.upload_dir)) == []


def test_an_extra_question_is_answered_under_its_category(
    client: TestClient, session: Session, world: World
) -> None:
    sign_in(client, "gridworker")
    response = report(client, open_form(client), category="dispute.neighbour_noise",
                      **{"attr.dispute.neighbour_noise.noise_source": "air_conditioner"})
    assert response.status_code == 303, response.text
    incident = session.scalars(sa.select(Incident)).one()
    assert incident.attributes == '{"noise_source": "air_conditioner"}'


def test_gcj02_coordinates_typed_by_hand_are_stored_as_wgs84(
    client: TestClient, session: Session, world: World
) -> None:
    from grassroots.kernel.regions.geo import wgs84_to_gcj02

    gcj_lon, gcj_lat = wgs84_to_gcj02(A_LON, A_LAT)
    sign_in(client, "gridworker")
    response = report(client, open_form(client), lon=f"{gcj_lon:.7f}", lat=f"{gcj_lat:.7f}",
                      crs="gcj02")
    assert response.status_code == 303, response.text
    incident = session.scalars(sa.select(Incident)).one()
    assert incident.lon == pytest.approx(A_LON, abs=1e-5)
    assert incident.lat == pytest.approx(A_LAT, abs=1e-5)


def test_a_double_submit_creates_one_incident_and_stores_its_photos_once(
    client: TestClient, session: Session, runtime: Runtime, world: World
) -> None:
    sign_in(client, "gridworker")
    form = open_form(client)
    files = photo_files(("a.jpg", jpeg_bytes()), ("b.png", png_bytes()))
    first = report(client, form, files)
    second = report(client, form, files)

    assert first.status_code == second.status_code == 303
    assert first.headers["location"] == second.headers["location"]
    assert count(session, Incident) == 1
    assert count(session, IncidentPhoto) == 2
    assert len(stored_files(Path(runtime.settings.upload_dir))) == 2
    another = report(client, open_form(client), files)  # a new form is a new report
    assert another.headers["location"] != first.headers["location"]
    assert count(session, Incident) == 2


def test_a_grid_worker_cannot_fetch_a_photo_of_an_incident_outside_their_scope(
    client: TestClient, session: Session, world: World
) -> None:
    sign_in(client, "gridworkerb")
    response = report(client, open_form(client), photo_files(("b.jpg", jpeg_bytes())),
                      lon=str(B_LON), lat=str(B_LAT))
    assert response.status_code == 303
    photo = session.scalars(sa.select(IncidentPhoto)).one()
    assert client.get(f"/command/photos/{photo.id}").status_code == 200

    sign_in(client, "gridworker")  # zone A's worker
    refused = client.get(f"/command/photos/{photo.id}")
    assert refused.status_code == 404
    assert refused.content != jpeg_bytes()
    assert client.get(response.headers["location"]).status_code == 404

    sign_in(client, "responderb")  # sent to it, in its zone
    assert client.get(f"/command/photos/{photo.id}").status_code == 200
    client.cookies.clear()
    anonymous = client.get(f"/command/photos/{photo.id}", follow_redirects=False)
    assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/login")


def test_the_responder_accepts_arrives_with_a_position_and_handles_with_a_result_photo(
    client: TestClient, session: Session, runtime: Runtime, world: World
) -> None:
    sign_in(client, "gridworker")
    assert report(client, open_form(client)).status_code == 303
    incident = session.scalars(sa.select(Incident)).one()
    assert incident.state == IncidentState.DISPATCHED
    session.rollback()

    sign_in(client, "responder")
    mine = client.get("/field/mine")
    assert mine.status_code == 200
    assert incident.number in mine.text and "接单" in mine.text
    csrf = csrf_from(mine.text)

    accepted = client.post(f"/field/incidents/{incident.id}/accept",
                           data={"csrf_token": csrf, "version": str(incident.version)},
                           follow_redirects=False)
    assert accepted.status_code == 303
    assert "已接单" in client.get(accepted.headers["location"]).text

    arrived = client.post(f"/field/incidents/{incident.id}/arrive",
                          data={"csrf_token": csrf, "lon": "106.2551", "lat": "29.2851"},
                          follow_redirects=False)
    assert arrived.status_code == 303
    status = session.get(ResponderStatus, world.responder.id)
    assert status is not None and (status.lon, status.lat) == (106.2551, 29.2851)
    session.rollback()

    no_photo = client.post(f"/field/incidents/{incident.id}/handle",
                           data={"csrf_token": csrf, "note": "已清理"})
    assert no_photo.status_code == 422
    assert "请拍摄至少一张处置结果照片" in no_photo.text
    current = session.get(Incident, incident.id, populate_existing=True)
    assert current is not None and current.state == IncidentState.ON_SCENE

    result = png_bytes(4, 4)
    handled = client.post(f"/field/incidents/{incident.id}/handle",
                          data={"csrf_token": csrf, "note": "已清理完毕"},
                          files=[("photos", ("after.png", result, "image/png"))],
                          follow_redirects=False)
    assert handled.status_code == 303, handled.text
    session.rollback()
    stored = session.get(Incident, incident.id, populate_existing=True)
    assert stored is not None and stored.state == IncidentState.HANDLED
    photo = session.scalars(sa.select(IncidentPhoto)).one()
    assert (photo.stage, photo.uploaded_by, photo.width) == (PhotoStage.RESULT, "responder", 4)


def test_a_stale_button_is_refused_with_the_reason(
    client: TestClient, session: Session, world: World
) -> None:
    sign_in(client, "gridworker")
    report(client, open_form(client))
    incident = session.scalars(sa.select(Incident)).one()
    session.rollback()
    sign_in(client, "responder")
    csrf = csrf_from(client.get("/field/mine").text)
    stale = client.post(f"/field/incidents/{incident.id}/accept",
                        data={"csrf_token": csrf, "version": str(incident.version - 1)})
    assert stale.status_code == 409
    assert "该事件已被他人修改" in stale.text

    sign_in(client, "gridworkerb")  # not sent to it and outside their zone
    csrf = csrf_from(client.get("/field/mine").text)
    assert client.post(f"/field/incidents/{incident.id}/accept",
                       data={"csrf_token": csrf}).status_code == 404


def test_a_post_without_the_csrf_token_is_refused(
    client: TestClient, session: Session, world: World
) -> None:
    sign_in(client, "gridworker")
    form = open_form(client)
    form["csrf_token"] = "forged"
    assert report(client, form).status_code == 403
    assert count(session, Incident) == 0


def test_a_viewer_may_not_report(client: TestClient, session: Session, runtime: Runtime,
                                 world: World) -> None:
    make_user(session, runtime, "onlooker", Role.VIEWER)
    sign_in(client, "onlooker")
    assert client.get("/field").status_code == 403


def test_when_recording_the_photos_fails_no_file_is_left_and_the_report_still_stands(
    client: TestClient, session: Session, runtime: Runtime, world: World,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_audit(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the audit chain is unavailable")

    monkeypatch.setattr(media, "record", broken_audit)
    sign_in(client, "gridworker")
    response = report(client, open_form(client), photo_files(("a.jpg", jpeg_bytes())))

    assert response.status_code == 303
    assert response.headers["location"].endswith("?photos=failed")
    assert count(session, Incident) == 1  # dispatched all the same
    assert count(session, IncidentPhoto) == 0
    assert stored_files(Path(runtime.settings.upload_dir)) == []
    assert "照片未能保存" in client.get(response.headers["location"]).text
