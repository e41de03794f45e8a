"""The category catalogue: the admin page and edit form, and the JSON API."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session
from tests.integration.command_support import load_categories
from tests.web.field_support import bearer, csrf_from, include_routers, make_user, sign_in

from grassroots.command.models import IncidentCategory
from grassroots.kernel.audit.models import AuditRow
from grassroots.kernel.auth.models import User
from grassroots.kernel.auth.roles import Role
from grassroots.runtime import Runtime

CODE = "city_env.exposed_garbage"


@pytest.fixture
def app(runtime: Runtime) -> FastAPI:
    from grassroots.app import create_app

    return include_routers(create_app(runtime=runtime))


@pytest.fixture
def catalogue(session: Session, runtime: Runtime) -> None:
    load_categories(session, runtime)
    make_user(session, runtime, "sysadmin", Role.SYSTEM_ADMIN)
    make_user(session, runtime, "gridworker", Role.GRID_WORKER)
    make_user(session, runtime, "dispatcher", Role.DISPATCHER)


def stored(session: Session, code: str = CODE) -> IncidentCategory:
    category = session.scalars(sa.select(IncidentCategory).where(IncidentCategory.code == code)
                               .execution_options(populate_existing=True)).one()
    session.rollback()
    return category


def user(session: Session, username: str) -> User:
    return session.scalars(sa.select(User).where(User.username == username)).one()


def form_of(html: str) -> dict[str, Any]:
    """The edit form's current values, as a browser would send them back."""
    data: dict[str, Any] = {}
    for name, value in re.findall(r'<input type="(?:text|number|hidden)"[^>]*?name="([^"]+)"'
                                  r'[^>]*?value="([^"]*)"', html):
        data[name] = value
    for name, value in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', html):
        data[name] = value
    for name in re.findall(r'<input type="checkbox" name="([^"]+)" value="1" checked', html):
        data[name] = "1"
    for name, options in re.findall(r'<select id="[^"]+" name="([^"]+)"[^>]*>(.*?)</select>',
                                    html, re.S):
        chosen = re.search(r'<option value="([^"]*)" selected', options)
        if chosen:
            data[name] = chosen.group(1)
    attributes = re.search(r'<textarea id="attributes"[^>]*>(.*?)</textarea>', html, re.S)
    assert attributes is not None
    data["attributes"] = attributes.group(1).replace("&#34;", '"').replace("&quot;", '"')
    return data


def test_the_page_lists_major_and_minor_classes_with_their_rules(
    client: TestClient, catalogue: None
) -> None:
    sign_in(client, "sysadmin")
    page = client.get("/admin/categories")
    assert page.status_code == 200
    text = page.text
    assert "市容环境" in text and "暴露垃圾" in text and "施工管理" in text
    row = re.search(r'<tr id="category-city_env.exposed_garbage".*?</tr>', text, re.S)
    assert row is not None
    cells = row.group(0)
    assert "8 工作小时" in cells and "片区处置队" in cells and "网格" in cells
    assert "50 米 / 240 分钟内" in cells
    noise = re.search(r'<tr id="category-construction.night_noise".*?</tr>', text, re.S)
    assert noise is not None and "现在是否仍在施工 *" in noise.group(0)
    assert 'href="/admin/categories/city_env.exposed_garbage"' in text


def test_a_dispatcher_sees_the_catalogue_without_edit_links(
    client: TestClient, catalogue: None
) -> None:
    sign_in(client, "dispatcher")
    page = client.get("/admin/categories")
    assert page.status_code == 200 and "暴露垃圾" in page.text
    assert 'href="/admin/categories/' not in page.text
    assert client.get(f"/admin/categories/{CODE}").status_code == 403


def test_an_edit_saves_through_the_core_with_an_audit_row(
    client: TestClient, session: Session, catalogue: None
) -> None:
    sign_in(client, "sysadmin")
    page = client.get(f"/admin/categories/{CODE}")
    assert page.status_code == 200
    data = form_of(page.text)
    assert data["limit_value"] == "8" and data["version"] == "1"
    data.update(limit_value="6", limit_unit="working_hours", duplicate_radius_m="80")
    response = client.post(f"/admin/categories/{CODE}", data=data, follow_redirects=False)

    assert response.status_code == 303, response.text
    assert response.headers["location"] == f"/admin/categories?updated={CODE}"
    category = stored(session)
    assert (category.limit_value, category.duplicate_radius_m, category.version) == (6, 80, 2)
    assert category.name_zh == "暴露垃圾" and category.attributes == "[]"
    audit = session.scalars(sa.select(AuditRow).where(AuditRow.action == "category:update")).one()
    assert audit.actor == "sysadmin"
    changed = json.loads(audit.detail)["changed"]
    assert changed == {"limit": {"from": {"value": 8, "unit": "working_hours"},
                                 "to": {"value": 6, "unit": "working_hours"}},
                       "duplicate": {"from": {"radius_m": 50, "window_min": 240},
                                     "to": {"radius_m": 80, "window_min": 240}}}
    assert "已保存分类 city_env.exposed_garbage" in client.get(response.headers["location"]).text


def test_bad_values_are_shown_next_to_their_fields_in_chinese_and_nothing_changes(
    client: TestClient, session: Session, catalogue: None
) -> None:
    sign_in(client, "sysadmin")
    data = form_of(client.get(f"/admin/categories/{CODE}").text)
    data.update(name_zh="", limit_value="0", duplicate_window_min="99999",
                attributes='[{"code": "Bad Code", "datatype": "string", "description": "x"}]')
    response = client.post(f"/admin/categories/{CODE}", data=data)

    assert response.status_code == 422
    text = response.text
    assert "请修改下面标出的内容后再保存" in text
    assert re.search(r'id="error-name_zh">不能为空<', text)
    assert re.search(r'id="error-limit_value">不能小于 1<', text)
    assert re.search(r'id="error-duplicate_window_min">不能大于 10080<', text)
    assert re.search(r'id="error-attributes">第 1 个问题：编码只能使用小写字母', text)
    assert 'value="99999"' in text  # what was typed stays in the form
    category = stored(session)
    assert (category.limit_value, category.version) == (8, 1)
    assert session.scalar(sa.select(sa.func.count()).select_from(AuditRow)
                          .where(AuditRow.action == "category:update")) == 0


def test_police_work_must_go_to_the_police_and_not_a_number_is_refused(
    client: TestClient, session: Session, catalogue: None
) -> None:
    sign_in(client, "sysadmin")
    data = form_of(client.get(f"/admin/categories/{CODE}").text)
    data.update(is_police="1", urgency="x", attributes="[not json")
    response = client.post(f"/admin/categories/{CODE}", data=data)
    assert response.status_code == 422
    assert re.search(r'id="error-unit_type">公安事务的责任单位须为“公安”<', response.text)
    assert re.search(r'id="error-urgency">须为整数<', response.text)
    assert re.search(r'id="error-attributes">不是有效的 JSON', response.text)
    assert stored(session).version == 1


def test_a_grid_worker_is_refused_with_403_everywhere_and_nothing_changes(
    client: TestClient, session: Session, runtime: Runtime, catalogue: None
) -> None:
    sign_in(client, "gridworker")
    assert client.get("/admin/categories").status_code == 403
    assert client.get(f"/admin/categories/{CODE}").status_code == 403
    csrf = csrf_from(client.get("/field").text)  # a page of theirs, with the session's token
    refused = client.post(f"/admin/categories/{CODE}",
                          data={"csrf_token": csrf, "limit_value": "1", "version": "1"})
    assert refused.status_code == 403

    headers = bearer(session, runtime, user(session, "gridworker"))
    assert client.get("/api/v1/categories", headers=headers).status_code == 200
    patched = client.patch(f"/api/v1/categories/{CODE}", headers=headers,
                           json={"urgency": 1, "expected_version": 1})
    assert patched.status_code == 403
    assert patched.json()["error"]["code"] == "permission_denied"
    assert stored(session).version == 1


def test_a_stale_form_gets_409_and_the_stored_values(
    client: TestClient, session: Session, runtime: Runtime, catalogue: None
) -> None:
    sign_in(client, "sysadmin")
    data = form_of(client.get(f"/admin/categories/{CODE}").text)
    # Someone else saves first, through the API.
    headers = bearer(session, runtime, user(session, "sysadmin"))
    first = client.patch(f"/api/v1/categories/{CODE}", headers=headers,
                         json={"limit": {"value": 5}, "expected_version": 1})
    assert first.status_code == 200
    assert first.json()["limit"] == {"value": 5, "unit": "working_hours"}
    assert first.json()["version"] == 2

    data.update(limit_value="7")
    response = client.post(f"/admin/categories/{CODE}", data=data)
    assert response.status_code == 409
    assert "该分类已被他人修改" in response.text
    assert 'name="limit_value" value="5"' in response.text and 'name="version" value="2"' in (
        response.text)
    assert (stored(session).limit_value, stored(session).version) == (5, 2)

    stale = client.patch(f"/api/v1/categories/{CODE}", headers=headers,
                         json={"urgency": 1, "expected_version": 1})
    assert stale.status_code == 409
    assert stale.json()["error"]["code"] == "conflict"
    assert stored(session).urgency == 3


def test_the_api_lists_reads_and_validates_categories(
    client: TestClient, session: Session, runtime: Runtime, catalogue: None
) -> None:
    headers = bearer(session, runtime, user(session, "sysadmin"))
    listed = client.get("/api/v1/categories", headers=headers)
    assert listed.status_code == 200
    codes = [c["code"] for c in listed.json()]
    assert CODE in codes and len(codes) == len(set(codes)) > 40
    one = client.get(f"/api/v1/categories/{CODE}", headers=headers).json()
    assert one["major_code"] == "city_env" and one["major_name_zh"] == "市容环境"
    assert one["limit"] == {"value": 8, "unit": "working_hours"}
    assert one["duplicate"] == {"radius_m": 50, "window_min": 240}
    assert one["unit_type"] == "zone_team" and one["version"] == 1
    assert client.get("/api/v1/categories/nope.nope", headers=headers).status_code == 404

    bad = client.patch(f"/api/v1/categories/{CODE}", headers=headers, json={"urgency": 9})
    assert bad.status_code == 422
    assert bad.json()["error"]["code"] == "validation_failed"
    assert client.patch(f"/api/v1/categories/{CODE}", headers=headers,
                        json={"code": "x.y"}).status_code == 422
    assert stored(session).version == 1

    client.patch(f"/api/v1/categories/{CODE}", headers=headers, json={"active": False})
    active = [c["code"] for c in client.get("/api/v1/categories", headers=headers).json()]
    every = [c["code"] for c in client.get("/api/v1/categories?include_inactive=true",
                                           headers=headers).json()]
    assert CODE not in active and CODE in every


NEW = {"major_code": "city_env", "code": "city_env.dead_animal", "name_zh": "动物尸体",
       "name_en": "Dead animal", "urgency": 3, "limit": {"value": 4, "unit": "working_hours"},
       "unit_type": "zone_team", "may_close_at": "grid",
       "duplicate": {"radius_m": 30, "window_min": 240},
       "attributes": [{"code": "size", "datatype": "singlevaluelist", "required": True,
                       "description": "大小", "values": [{"key": "small", "name": "小"},
                                                          {"key": "large", "name": "大"}]}]}


def test_the_api_adds_a_minor_class_under_its_major_class_with_an_audit_row(
    client: TestClient, session: Session, runtime: Runtime, catalogue: None
) -> None:
    headers = bearer(session, runtime, user(session, "sysadmin"))
    made = client.post("/api/v1/categories", headers=headers, json=NEW)
    assert made.status_code == 201, made.text
    assert made.headers["location"] == "/api/v1/categories/city_env.dead_animal"
    body = made.json()
    assert body["major_name_zh"] == "市容环境" and body["version"] == 1
    assert body["attributes"][0]["code"] == "size"
    category = stored(session, "city_env.dead_animal")
    siblings = session.scalars(sa.select(IncidentCategory.sort_order).where(
        IncidentCategory.major_code == "city_env")).all()
    assert category.sort_order == max(siblings)
    audit = session.scalars(sa.select(AuditRow).where(AuditRow.action == "category:create")).one()
    assert audit.actor == "sysadmin" and json.loads(audit.detail)["code"] == NEW["code"]

    again = client.post("/api/v1/categories", headers=headers, json=NEW)
    assert again.status_code == 409
    wrong_major = client.post("/api/v1/categories", headers=headers,
                              json={**NEW, "major_code": "ad", "code": "city_env.other"})
    assert wrong_major.status_code == 422
    new_major = {**NEW, "major_code": "pets", "code": "pets.stray_dog"}
    assert client.post("/api/v1/categories", headers=headers,
                       json=new_major).status_code == 422  # a new major class needs names
    made_major = client.post("/api/v1/categories", headers=headers,
                             json={**new_major, "major_name_zh": "宠物", "major_name_en": "Pets"})
    assert made_major.status_code == 201
    assert made_major.json()["sort_order"] > body["sort_order"]

    refused = client.post("/api/v1/categories",
                          headers=bearer(session, runtime, user(session, "gridworker")),
                          json={**NEW, "code": "city_env.other"})
    assert refused.status_code == 403
