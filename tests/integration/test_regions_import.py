"""Importing and exporting the region tree on SQLite and PostgreSQL: all or nothing, audited."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from grassroots.demo.regions import build_demo_regions
from grassroots.kernel.audit.chain import verify_chain
from grassroots.kernel.audit.models import AuditRow
from grassroots.kernel.regions import queries
from grassroots.kernel.regions.geo import wgs84_to_gcj02
from grassroots.kernel.regions.geojson import export_geojson, import_geojson
from grassroots.kernel.regions.models import Region, RegionLevel
from grassroots.runtime import Runtime


def _square(x0: float, y0: float, x1: float, y1: float) -> dict[str, Any]:
    return {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}


def _feature(code: str, level: str, parent: str | None, geometry: dict[str, Any],
             **extra: Any) -> dict[str, Any]:
    return {"type": "Feature", "geometry": geometry,
            "properties": {"code": code, "name": f"名称{code}", "level": level,
                           "parent_code": parent, **extra}}


def small_tree() -> dict[str, Any]:
    """District ⊃ street = zone ⊃ two grids ⊃ two micro-grids each; one building."""
    x, y = 106.20, 29.30
    return {"type": "FeatureCollection", "features": [
        _feature("D", "district", None, _square(x - 0.01, y - 0.01, x + 0.05, y + 0.03)),
        _feature("S", "street", "D", _square(x, y, x + 0.04, y + 0.02)),
        _feature("S-Z1", "zone", "S", _square(x, y, x + 0.04, y + 0.02)),
        _feature("S-Z1-G1", "grid", "S-Z1", _square(x, y, x + 0.02, y + 0.02)),
        _feature("S-Z1-G2", "grid", "S-Z1", _square(x + 0.02, y, x + 0.04, y + 0.02)),
        _feature("S-Z1-G1-M1", "micro_grid", "S-Z1-G1", _square(x, y, x + 0.02, y + 0.01)),
        _feature("S-Z1-G1-M2", "micro_grid", "S-Z1-G1", _square(x, y + 0.01, x + 0.02, y + 0.02)),
        _feature("S-Z1-G2-M3", "micro_grid", "S-Z1-G2", _square(x + 0.02, y, x + 0.04, y + 0.01)),
        _feature("S-Z1-G2-M4", "micro_grid", "S-Z1-G2",
                 _square(x + 0.02, y + 0.01, x + 0.04, y + 0.02)),
        _feature("S-Z1-G1-M1-B1", "building", "S-Z1-G1-M1",
                 _square(x + 0.005, y + 0.002, x + 0.006, y + 0.003)),
    ]}


def _count(session: Session, model: type) -> int:
    return int(session.scalar(select(func.count()).select_from(model)) or 0)


def _by_code(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["properties"]["code"]: f for f in data["features"]}


def test_the_demo_street_imports_and_exports_unchanged(session: Session,
                                                      runtime: Runtime) -> None:
    demo = build_demo_regions()
    result = import_geojson(session=session, actor="cli", data=demo, runtime=runtime)
    assert result.ok, result.describe()
    assert result.created == len(demo["features"])
    assert result.levels["micro_grid"] == 997
    exported = export_geojson(session=session)
    assert _by_code(exported) == _by_code(json.loads(json.dumps(demo)))
    micro = export_geojson(session=session, level="micro_grid")
    assert len(micro["features"]) == 997


def test_paths_and_bounding_boxes_are_computed(session: Session, runtime: Runtime) -> None:
    assert import_geojson(session=session, actor="cli", data=small_tree(), runtime=runtime).ok
    regions = {r.code: r for r in session.scalars(select(Region))}
    building = regions["S-Z1-G1-M1-B1"]
    chain = ["D", "S", "S-Z1", "S-Z1-G1", "S-Z1-G1-M1", "S-Z1-G1-M1-B1"]
    assert building.path == "/" + "/".join(str(regions[c].id) for c in chain) + "/"
    assert building.parent_id == regions["S-Z1-G1-M1"].id
    assert building.level == RegionLevel.BUILDING
    assert (building.min_lon, building.min_lat) == pytest.approx((106.205, 29.302))
    assert (building.max_lon, building.max_lat) == pytest.approx((106.206, 29.303))
    assert [r.code for r in queries.path_up(session=session, region=building)] == chain[::-1]


def test_a_successful_import_writes_one_audit_row_with_the_counts(session: Session,
                                                                  runtime: Runtime) -> None:
    assert import_geojson(session=session, actor="cli", data=small_tree(), runtime=runtime).ok
    rows = session.scalars(select(AuditRow)).all()
    assert len(rows) == 1
    assert rows[0].action == "regions:import" and rows[0].actor == "cli"
    detail = json.loads(rows[0].detail)
    assert detail["created"] == 10 and detail["levels"]["micro_grid"] == 4
    assert verify_chain(session=session, runtime=runtime).ok


def _broken_tree() -> dict[str, Any]:
    data = small_tree()
    f = _by_code(data)
    x, y = 106.20, 29.30
    # M2 overlaps M1; B1 sticks out of M1; M4 shrinks, leaving a gap in G2; G2 hangs off the
    # street directly (level order) — and the geometry is otherwise fine.
    f["S-Z1-G1-M2"]["geometry"] = _square(x, y + 0.005, x + 0.02, y + 0.02)
    f["S-Z1-G1-M1-B1"]["geometry"] = _square(x + 0.019, y + 0.002, x + 0.025, y + 0.003)
    f["S-Z1-G2-M4"]["geometry"] = _square(x + 0.02, y + 0.01, x + 0.03, y + 0.02)
    return data


def test_a_bad_file_stores_nothing_and_names_every_offending_code(session: Session,
                                                                  runtime: Runtime) -> None:
    result = import_geojson(session=session, actor="cli", data=_broken_tree(), runtime=runtime)
    assert not result.ok
    kinds = {(p.kind, p.code) for p in result.problems}
    assert ("overlap", "S-Z1-G1-M1") in kinds
    assert ("outside_parent", "S-Z1-G1-M1-B1") in kinds
    assert ("gap", "S-Z1-G2") in kinds
    text = result.describe()
    assert "nothing stored" in text and "S-Z1-G1-M2" in text
    assert _count(session, Region) == 0
    assert _count(session, AuditRow) == 0


def test_a_grid_under_a_street_is_rejected_as_a_level_order_error(session: Session,
                                                                  runtime: Runtime) -> None:
    data = small_tree()
    _by_code(data)["S-Z1-G2"]["properties"]["parent_code"] = "S"
    result = import_geojson(session=session, actor="cli", data=data, runtime=runtime)
    assert not result.ok
    assert [p.code for p in result.problems if p.kind == "level_order"] == ["S-Z1-G2"]
    assert _count(session, Region) == 0


def test_malformed_features_are_reported_before_anything_is_checked(session: Session,
                                                                    runtime: Runtime) -> None:
    data = small_tree()
    f = _by_code(data)
    f["S-Z1-G1-M2"]["properties"]["level"] = "neighbourhood"
    f["S-Z1-G2-M3"]["geometry"] = {"type": "Polygon", "coordinates": [[[29.3, 106.2], [29.31,
                                   106.2], [29.31, 106.21], [29.3, 106.2]]]}
    del f["S-Z1-G2-M4"]["properties"]["code"]
    result = import_geojson(session=session, actor="cli", data=data, runtime=runtime)
    assert not result.ok
    text = result.describe()
    assert "S-Z1-G1-M2" in text and "neighbourhood" in text
    assert "S-Z1-G2-M3" in text and "swapped" in text
    assert "#9" in text
    assert _count(session, Region) == 0
    bad = import_geojson(session=session, actor="cli", data={"type": "Feature"},
                         runtime=runtime)
    assert not bad.ok and "FeatureCollection" in bad.describe()


def test_existing_codes_need_replace_which_updates_names_parents_and_paths(
        session: Session, runtime: Runtime) -> None:
    assert import_geojson(session=session, actor="cli", data=small_tree(), runtime=runtime).ok
    again = import_geojson(session=session, actor="cli", data=small_tree(), runtime=runtime)
    assert not again.ok and {p.kind for p in again.problems} == {"exists"}

    changed = small_tree()
    f = _by_code(changed)
    f["S-Z1-G1"]["properties"]["name"] = "新名字"
    # Swap the micro-grids' homes: M3 and M4 move to grid 1, M1 and M2 to grid 2.
    for code, grid in (("S-Z1-G1-M1", "G2"), ("S-Z1-G1-M2", "G2"), ("S-Z1-G2-M3", "G1"),
                       ("S-Z1-G2-M4", "G1")):
        f[code]["properties"]["parent_code"] = f"S-Z1-{grid}"
    f["S-Z1-G1"]["geometry"], f["S-Z1-G2"]["geometry"] = (f["S-Z1-G2"]["geometry"],
                                                         f["S-Z1-G1"]["geometry"])
    result = import_geojson(session=session, actor="cli", data=changed, runtime=runtime,
                            replace=True)
    assert result.ok, result.describe()
    assert (result.created, result.updated, result.unchanged) == (0, 6, 4)
    session.expire_all()
    regions = {r.code: r for r in session.scalars(select(Region))}
    assert regions["S-Z1-G1"].name == "新名字"
    building = regions["S-Z1-G1-M1-B1"]
    assert f"/{regions['S-Z1-G2'].id}/{regions['S-Z1-G1-M1'].id}/" in building.path
    assert _count(session, AuditRow) == 1 + 1


def test_gcj02_input_is_stored_as_wgs84(session: Session, runtime: Runtime) -> None:
    data = small_tree()
    wgs = copy.deepcopy(data)
    for feature in data["features"]:
        feature["properties"]["crs_input"] = "gcj02"
        for ring in feature["geometry"]["coordinates"]:
            for point in ring:
                point[0], point[1] = wgs84_to_gcj02(point[0], point[1])
    assert import_geojson(session=session, actor="cli", data=data, runtime=runtime).ok
    stored = _by_code(export_geojson(session=session))
    for code, feature in _by_code(wgs).items():
        for got, want in zip(stored[code]["geometry"]["coordinates"][0],
                             feature["geometry"]["coordinates"][0], strict=True):
            assert got == pytest.approx(want, abs=1e-7)


def test_the_cached_locate_index_is_rebuilt_after_the_tree_changes(session: Session,
                                                                   runtime: Runtime) -> None:
    assert import_geojson(session=session, actor="cli", data=small_tree(), runtime=runtime).ok
    first = queries.get_locate_index(session)
    assert queries.get_locate_index(session) is first
    path = first.locate(106.205, 29.305)
    assert path is not None and path[0].code == "S-Z1-G1-M1"

    renamed = small_tree()
    _by_code(renamed)["S-Z1-G1-M1"]["properties"]["name"] = "改名"
    assert import_geojson(session=session, actor="cli", data=renamed, runtime=runtime,
                          replace=True).ok
    second = queries.get_locate_index(session)
    assert second is not first
    path = second.locate(106.205, 29.305)
    assert path is not None and path[0].name == "改名"


def test_scoped_listing_returns_only_the_subtree(session: Session, runtime: Runtime) -> None:
    assert import_geojson(session=session, actor="cli", data=small_tree(), runtime=runtime).ok
    grid = queries.region_by_code(session=session, code="S-Z1-G1")
    assert grid is not None
    codes = [r.code for r in queries.list_regions(session=session, scope=grid.path)]
    assert codes == ["S-Z1-G1", "S-Z1-G1-M1", "S-Z1-G1-M2", "S-Z1-G1-M1-B1"]
    assert queries.region_by_code(session=session, code="S-Z1-G2", scope=grid.path) is None
    kids = queries.children(session=session, region_id=grid.id, scope=None)
    assert [k.code for k in kids] == ["S-Z1-G1-M1", "S-Z1-G1-M2"]
    assert len(queries.subtree(session=session, root=grid, scope=None)) == 4
