"""The region API and map page: locate, batch locate, listings, and the user's data scope."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session
from tests.integration.test_regions_import import small_tree

from grassroots.kernel.auth.actions import create_api_token
from grassroots.kernel.auth.models import User
from grassroots.kernel.auth.roles import Role
from grassroots.kernel.regions import queries
from grassroots.kernel.regions.geo import wgs84_to_gcj02
from grassroots.kernel.regions.geojson import import_geojson
from grassroots.runtime import Runtime
from grassroots.web import regions
from grassroots.web.deps import get_current_user

IN_G1_M1 = (106.205, 29.305)
IN_BUILDING = (106.2055, 29.3025)
IN_G2_M4 = (106.235, 29.315)
OUTSIDE = (106.50, 29.50)


class Api:
    """A client with a switchable signed-in user (the auth middleware is not under test)."""

    def __init__(self, app: FastAPI, client: TestClient, session: Session,
                 runtime: Runtime) -> None:
        self.app, self.client, self.session, self.runtime = app, client, session, runtime

    def sign_in(self, role: Role, scope_code: str | None = None) -> User:
        scope = (queries.region_by_code(session=self.session, code=scope_code)
                 if scope_code else None)
        now = self.runtime.clock.now()
        user = User(username=f"{role.value}-{scope_code}", display_name="测试用户", role=role,
                    scope_region_id=scope.id if scope else None, password_hash="-",
                    created_at=now, password_changed_at=now)
        self.session.add(user)
        self.session.commit()
        # A bearer token makes POSTs exempt from CSRF, as for any integration client.
        _token, plaintext = create_api_token(session=self.session, runtime=self.runtime,
                                             actor="cli", name="test", user_id=user.id)
        self.client.headers["Authorization"] = f"Bearer {plaintext}"
        self.app.dependency_overrides[get_current_user] = lambda: user
        return user

    def get(self, url: str, **kwargs: Any) -> Any:
        return self.client.get(url, **kwargs)


@pytest.fixture
def api(app: FastAPI, client: TestClient, session: Session, runtime: Runtime) -> Iterator[Api]:
    if not any(getattr(route, "path", None) == "/api/v1/regions/locate" for route in app.routes):
        app.include_router(regions.router)
    result = import_geojson(session=session, actor="cli", data=small_tree(), runtime=runtime)
    assert result.ok, result.describe()
    yield Api(app, client, session, runtime)
    app.dependency_overrides.clear()


def test_locate_returns_the_path_from_the_building_up_to_the_district(api: Api) -> None:
    api.sign_in(Role.DISPATCHER)
    response = api.get("/api/v1/regions/locate", params={"lon": IN_BUILDING[0],
                                                         "lat": IN_BUILDING[1]})
    assert response.status_code == 200
    path = response.json()["path"]
    assert [p["code"] for p in path] == ["S-Z1-G1-M1-B1", "S-Z1-G1-M1", "S-Z1-G1", "S-Z1", "S",
                                         "D"]
    assert set(path[0]) == {"id", "code", "name", "level"}
    assert path[0]["level"] == "building"


def test_locate_accepts_gcj02_coordinates(api: Api) -> None:
    api.sign_in(Role.DISPATCHER)
    lon, lat = wgs84_to_gcj02(*IN_G2_M4)
    body = api.get("/api/v1/regions/locate", params={"lon": lon, "lat": lat, "crs": "gcj02"}).json()
    assert body["path"][0]["code"] == "S-Z1-G2-M4"
    assert body["wgs84"] == pytest.approx(list(IN_G2_M4), abs=1e-7)


def test_a_point_outside_every_region_gets_a_json_404_saying_so(api: Api) -> None:
    api.sign_in(Role.DISPATCHER)
    response = api.get("/api/v1/regions/locate", params={"lon": OUTSIDE[0], "lat": OUTSIDE[1]},
                       headers={"Accept-Language": "en"})
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "not_found"
    assert "outside every region" in error["message"] and "106.500000" in error["message"]
    chinese = api.get("/api/v1/regions/locate", params={"lon": OUTSIDE[0], "lat": OUTSIDE[1]})
    assert "不在您可查看的任何区域内" in chinese.json()["error"]["message"]


def test_bad_coordinates_are_a_validation_error(api: Api) -> None:
    api.sign_in(Role.DISPATCHER)
    response = api.get("/api/v1/regions/locate", params={"lon": 200, "lat": 29.3})
    assert response.status_code == 422


def test_batch_locate_answers_each_point_and_describes_the_regions(api: Api) -> None:
    api.sign_in(Role.DISPATCHER)
    points = [list(IN_G1_M1), list(IN_BUILDING), list(OUTSIDE), list(IN_G2_M4)]
    body = api.client.post("/api/v1/regions/locate", json={"points": points}).json()
    assert body["count"] == 4 and body["located"] == 3
    codes = [body["regions"][str(i)]["code"] if i is not None else None for i in body["ids"]]
    assert codes == ["S-Z1-G1-M1", "S-Z1-G1-M1-B1", None, "S-Z1-G2-M4"]
    assert len(body["regions"][str(body["ids"][1])]["path"]) == 6


def test_batch_locate_refuses_more_than_100k_points(api: Api) -> None:
    api.sign_in(Role.DISPATCHER)
    response = api.client.post("/api/v1/regions/locate",
                               json={"points": [[106.2, 29.3]] * 100_001})
    assert response.status_code == 422


def test_a_grid_worker_sees_only_their_own_grid_through_every_endpoint(api: Api) -> None:
    api.sign_in(Role.GRID_WORKER, scope_code="S-Z1-G1")
    other = queries.region_by_code(session=api.session, code="S-Z1-G2-M4")
    assert other is not None

    listed = [r["code"] for r in api.get("/api/v1/regions").json()["regions"]]
    assert listed == ["S-Z1-G1", "S-Z1-G1-M1", "S-Z1-G1-M2", "S-Z1-G1-M1-B1"]
    assert api.get(f"/api/v1/regions/{other.id}").status_code == 404
    layer = api.get("/api/v1/regions.geojson", params={"level": "micro_grid"}).json()
    assert [f["properties"]["code"] for f in layer["features"]] == ["S-Z1-G1-M1", "S-Z1-G1-M2"]
    assert api.get("/api/v1/regions.geojson", params={"level": "zone"}).json()["features"] == []
    assert api.get("/api/v1/regions", params={"parent_code": "S-Z1-G2"}).json()["regions"] == []

    elsewhere = api.get("/api/v1/regions/locate", params={"lon": IN_G2_M4[0], "lat": IN_G2_M4[1]})
    assert elsewhere.status_code == 404
    assert "S-Z1-G2" not in elsewhere.text
    mine = api.get("/api/v1/regions/locate", params={"lon": IN_G1_M1[0], "lat": IN_G1_M1[1]})
    assert mine.json()["path"][0]["code"] == "S-Z1-G1-M1"
    batch = api.client.post("/api/v1/regions/locate",
                            json={"points": [list(IN_G1_M1), list(IN_G2_M4)]}).json()
    assert batch["ids"][1] is None and batch["located"] == 1
    assert all(r["code"].startswith("S-Z1-G1") for r in batch["regions"].values())


def test_a_region_in_scope_comes_with_its_outline_and_ancestors(api: Api) -> None:
    api.sign_in(Role.STREET_LEADER, scope_code="S")
    grid = queries.region_by_code(session=api.session, code="S-Z1-G2")
    assert grid is not None
    body = api.get(f"/api/v1/regions/{grid.id}").json()
    assert body["code"] == "S-Z1-G2" and body["geometry"]["type"] == "Polygon"
    assert [a["code"] for a in body["ancestors"]] == ["S-Z1", "S", "D"]
    children = api.get("/api/v1/regions", params={"parent": grid.id, "level": "micro_grid"})
    assert [r["code"] for r in children.json()["regions"]] == ["S-Z1-G2-M3", "S-Z1-G2-M4"]


def test_every_region_route_needs_a_signed_in_user(api: Api) -> None:
    for url in ("/api/v1/regions/locate?lon=106.2&lat=29.3", "/api/v1/regions",
                "/api/v1/regions.geojson?level=zone", "/api/v1/regions/1"):
        response = api.get(url)
        assert response.status_code == 401, url
        assert response.json()["error"]["code"] == "not_authenticated"
    assert api.client.post("/api/v1/regions/locate", json={"points": []}).status_code in (401, 403)
    page = api.client.get("/regions", headers={"Accept": "text/html"}, follow_redirects=False)
    # 401 on its own; once the auth middleware is installed, a redirect to the login form.
    assert page.status_code == 401 or (page.status_code in (302, 303, 307)
                                       and page.headers["location"].startswith("/login"))


def test_the_map_page_renders_with_local_leaflet_and_translated_text(api: Api) -> None:
    api.sign_in(Role.DISPATCHER)
    page = api.get("/regions", headers={"Accept": "text/html"})
    assert page.status_code == 200
    assert "/static/vendor/leaflet/leaflet.js" in page.text
    assert "/static/js/regions-map.js" in page.text
    assert "区域地图" in page.text and "微网格" in page.text
    assert "unpkg" not in page.text and "cdn" not in page.text.lower()
    english = api.get("/regions?lang=en", headers={"Accept": "text/html"})
    assert "Regions map" in english.text and "Micro-grid" in english.text
    assert api.get("/static/js/regions-map.js").status_code == 200
