"""Irrigation pages and JSON: who may see them, what they show, and that the xlsx matches."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from io import BytesIO
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from openpyxl import load_workbook
from sqlalchemy.orm import Session
from tests.integration.irrigation_support import make_user, sign_in, with_irrigation_routes

from grassroots.irrigation.accounting import models as accounting_models  # noqa: F401
from grassroots.irrigation.demo import seed_irrigation_demo
from grassroots.irrigation.network import queries
from grassroots.irrigation.telemetry.models import DeviceState, Reading
from grassroots.kernel.auth.roles import Role
from grassroots.runtime import Runtime

PAGES = ["/irrigation", "/irrigation/schematic", "/irrigation/account",
         "/irrigation/account?group=turnout&period=season&measure=delivered",
         "/irrigation/stations/PS-01", "/irrigation/stations/F-IND",
         "/irrigation/account.xlsx", "/api/v1/irrigation/network",
         "/api/v1/irrigation/account?group=wua&period=day&start=2025-07-01&end=2025-07-31"]


@pytest.fixture
def app(app: FastAPI) -> Iterator[FastAPI]:
    yield with_irrigation_routes(app)
    app.dependency_overrides.clear()


@pytest.fixture
def seeded(runtime: Runtime) -> Runtime:
    seed_irrigation_demo(runtime)
    return runtime


@pytest.fixture
def dispatcher(app: FastAPI, session: Session, seeded: Runtime) -> None:
    sign_in(app, make_user(session, seeded, Role.IRRIGATION_DISPATCHER))


def test_an_irrigation_dispatcher_sees_every_page(client: TestClient, dispatcher: None) -> None:
    for url in PAGES:
        response = client.get(url)
        assert response.status_code == 200, url


def test_a_grid_worker_is_refused_every_page(app: FastAPI, client: TestClient,
                                             session: Session, seeded: Runtime) -> None:
    sign_in(app, make_user(session, seeded, Role.GRID_WORKER))
    for url in PAGES:
        assert client.get(url).status_code == 403, url


def test_an_anonymous_caller_must_sign_in(client: TestClient, seeded: Runtime) -> None:
    assert client.get("/api/v1/irrigation/network").status_code == 401


def test_the_map_loads_leaflet_from_the_platform_not_a_cdn(client: TestClient,
                                                          dispatcher: None) -> None:
    html = client.get("/irrigation").text
    assert '<script src="/static/vendor/leaflet/leaflet.js">' in html
    assert 'href="/static/vendor/leaflet/leaflet.css"' in html
    assert not re.search(r"""(src|href)=["']https?://""", html)
    assert "85,000" in html and "测控一体化闸门" in html
    assert client.get("/static/js/irrigation-map.js").status_code == 200


def _check_position(position: Any) -> None:
    lon, lat = position
    assert 105.5 < lon < 107.0 and 38.5 < lat < 40.0


def test_the_network_is_valid_geojson(client: TestClient, dispatcher: None) -> None:
    response = client.get("/api/v1/irrigation/network")
    assert response.headers["content-type"].startswith("application/geo+json")
    body = response.json()
    assert body["type"] == "FeatureCollection"
    layers: dict[str, int] = {}
    ids = set()
    for feature in body["features"]:
        assert feature["type"] == "Feature" and feature["id"] not in ids
        ids.add(feature["id"])
        geometry, properties = feature["geometry"], feature["properties"]
        layers[properties["layer"]] = layers.get(properties["layer"], 0) + 1
        if geometry["type"] == "Point":
            _check_position(geometry["coordinates"])
        elif geometry["type"] == "LineString":
            assert len(geometry["coordinates"]) >= 2
            for position in geometry["coordinates"]:
                _check_position(position)
        else:
            assert geometry["type"] == "Polygon"
            ring = geometry["coordinates"][0]
            assert len(ring) >= 4 and ring[0] == ring[-1]
            for position in ring:
                _check_position(position)
    assert layers == {"canal": 47, "structure": 87, "field": 192}
    without_fields = client.get("/api/v1/irrigation/network?fields=false").json()
    assert all(f["properties"]["layer"] != "field" for f in without_fields["features"])


def _page_numbers(html: str, table_id: str) -> list[list[int]]:
    table = html.split(f'id="{table_id}"', 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", table, flags=re.S)
    return [[int(v) for v in re.findall(r'data-m3="(-?\d+)"', row)] for row in rows
            if "data-m3" in row]


def _sheet_numbers(sheet: Any, first_column: int) -> list[list[int]]:
    rows = []
    for row in sheet.iter_rows(min_row=5, min_col=first_column, values_only=True):
        numbers = [int(v) for v in row if isinstance(v, int)]
        if numbers:
            rows.append(numbers)
    return rows


@pytest.mark.parametrize("query", [
    "group=use&period=month&measure=source",
    "group=canal&period=season&measure=delivered",
    "group=wua&period=day&start=2025-10-16&end=2025-11-30&measure=delivered",
])
def test_the_xlsx_holds_the_same_figures_as_the_page(client: TestClient, dispatcher: None,
                                                     query: str) -> None:
    html = client.get(f"/irrigation/account?{query}").text
    response = client.get(f"/irrigation/account.xlsx?{query}")
    assert response.headers["content-type"].startswith(
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet")
    assert "attachment" in response.headers["content-disposition"]
    book = load_workbook(BytesIO(response.content))
    account, uses, canals = book.worksheets
    assert account.title == "水量核算"
    assert account["A4"].value == "时段"
    assert _sheet_numbers(account, 2) == _page_numbers(html, "account-table")
    assert _sheet_numbers(uses, 2) == _page_numbers(html, "use-summary")
    assert _sheet_numbers(canals, 3) == _page_numbers(html, "canal-balances")
    page_coefficients = re.findall(r'data-coefficient="([0-9.]+)"', html)
    sheet_coefficients = [f"{row[5]:.3f}" for row in canals.iter_rows(min_row=5,
                                                                        values_only=True)]
    assert sheet_coefficients == page_coefficients
    assert account.cell(row=5, column=2).number_format == "#,##0"


def test_the_account_page_shows_the_seed_figures_formatted(client: TestClient,
                                                           dispatcher: None) -> None:
    html = client.get("/irrigation/account?group=use&period=season").text
    for figure in ("51,858,000", "39,135,000", "8,778,000", "3,945,000"):
        assert figure in html
    assert "2025年秋浇（冬灌）" in html
    english = client.get("/irrigation/account?lang=en").text
    assert "Water account" in english and "Agriculture" in english


def test_the_account_api_adds_up(client: TestClient, dispatcher: None) -> None:
    body = client.get("/api/v1/irrigation/account?group=use&period=season").json()
    assert body["unit"] == "m3" and body["total"] == 51_858_000
    assert body["totals"] == {"agriculture": 39_135_000, "industry": 8_778_000,
                              "ecology": 3_945_000}
    assert sum(row["total"] for row in body["rows"]) == body["total"]
    assert 0.68 <= body["district_coefficient"] <= 0.88
    assert client.get("/api/v1/irrigation/account?group=nonsense").status_code == 422
    assert client.get("/api/v1/irrigation/account?start=2025-05-01&end=2025-04-01"
                      ).status_code == 422


def test_a_station_page_charts_its_telemetry_and_device_state(
        client: TestClient, dispatcher: None, session: Session, seeded: Runtime) -> None:
    gate = queries.structure_by_code(session=session, code="G-B1")
    now = seeded.clock.now()
    session.add_all(Reading(structure_id=gate.id, quantity="flow_m3s",
                            observed_at=now - timedelta(minutes=5 * i), value=0.8 + 0.01 * i,
                            quality=0, source="sl651", received_at=now) for i in range(12))
    session.add(DeviceState(structure_id=gate.id, state="online", last_seen_at=now))
    session.commit()
    html = client.get("/irrigation/stations/G-B1").text
    assert "flow_m3s" in html and "<svg" in html and "polyline" in html
    assert "online" in html and "0015010" in html
    network = client.get("/api/v1/irrigation/network?fields=false").json()
    feature = next(f for f in network["features"] if f["id"] == "structure:G-B1")
    assert feature["properties"]["readings"][0] == {
        "quantity": "flow_m3s", "value": 0.8, "observed_at": now.isoformat(), "quality": 0}
    assert feature["properties"]["device"]["state"] == "online"
    schematic = client.get("/irrigation/schematic").text
    assert "0.8 (flow_m3s)" in schematic


def test_the_schematic_links_every_structure_to_its_page(client: TestClient,
                                                         dispatcher: None) -> None:
    html = client.get("/irrigation/schematic").text
    assert html.count('<a href="/irrigation/stations/') == 87
    assert "总干渠" in html and "六支渠" in html


def test_an_unknown_station_is_not_found(client: TestClient, dispatcher: None) -> None:
    assert client.get("/irrigation/stations/NOPE").status_code == 404
