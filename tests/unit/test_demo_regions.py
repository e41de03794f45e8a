"""The demo street: the published counts, an exact tiling, and a valid tree."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import shapely
from shapely.geometry import shape

from grassroots.demo.regions import build_demo_regions
from grassroots.kernel.regions.geo import metres_per_degree
from grassroots.kernel.regions.models import RegionLevel
from grassroots.kernel.regions.validate import RegionSpec, validate_regions


@pytest.fixture(scope="module")
def demo() -> dict[str, Any]:
    return build_demo_regions()


def _by_level(demo: dict[str, Any], level: str) -> list[dict[str, Any]]:
    return [f for f in demo["features"] if f["properties"]["level"] == level]


def _geom(feature: dict[str, Any]) -> shapely.Geometry:
    return shape(feature["geometry"])


def test_it_has_one_district_one_street_7_zones_129_grids_and_997_micro_grids(
        demo: dict) -> None:
    counts = Counter(f["properties"]["level"] for f in demo["features"])
    assert (counts["district"], counts["street"], counts["zone"], counts["grid"],
            counts["micro_grid"]) == (1, 1, 7, 129, 997)
    assert 997 <= counts["building"] <= 3 * 997


def test_grids_hold_7_or_8_micro_grids_and_zones_18_or_19_grids(demo: dict) -> None:
    per_grid = Counter(f["properties"]["parent_code"] for f in _by_level(demo, "micro_grid"))
    per_zone = Counter(f["properties"]["parent_code"] for f in _by_level(demo, "grid"))
    assert sorted(Counter(per_grid.values()).items()) == [(7, 35), (8, 94)]
    assert sorted(Counter(per_zone.values()).items()) == [(18, 4), (19, 3)]


def test_micro_grids_tile_the_street_with_no_overlap_and_no_gap(demo: dict) -> None:
    street = _geom(_by_level(demo, "street")[0])
    micro = [_geom(f) for f in _by_level(demo, "micro_grid")]
    union = shapely.union_all(micro)
    assert union.area == pytest.approx(street.area, rel=1e-9)
    assert sum(m.area for m in micro) == pytest.approx(street.area, rel=1e-9)
    assert street.symmetric_difference(union).area < 1e-9 * street.area


def test_the_street_is_about_28_square_kilometres_near_shuangfu(demo: dict) -> None:
    street = _geom(_by_level(demo, "street")[0])
    per_lon, per_lat = metres_per_degree(29.39)
    assert street.area * per_lon * per_lat / 1e6 == pytest.approx(28, abs=1.0)
    centre = street.centroid
    assert centre.x == pytest.approx(106.27, abs=0.01)
    assert centre.y == pytest.approx(29.39, abs=0.01)


def test_every_child_lies_in_its_parent(demo: dict) -> None:
    geoms = {f["properties"]["code"]: _geom(f) for f in demo["features"]}
    for feature in demo["features"]:
        parent = feature["properties"]["parent_code"]
        if parent is not None:
            child = geoms[feature["properties"]["code"]]
            assert geoms[parent].buffer(1e-9).contains(child), feature["properties"]["code"]


def test_codes_are_unique_hierarchical_and_names_are_chinese(demo: dict) -> None:
    codes = [f["properties"]["code"] for f in demo["features"]]
    assert len(set(codes)) == len(codes)
    for feature in demo["features"]:
        p = feature["properties"]
        if p["parent_code"]:
            assert p["code"].startswith(p["parent_code"] + "-") or p["level"] == "street"
    micro = _by_level(demo, "micro_grid")[0]["properties"]
    assert micro["name"].startswith("微网格")
    assert _by_level(demo, "grid")[0]["properties"]["name"] == "第1网格"
    assert _by_level(demo, "street")[0]["properties"]["name"] == "双福街道"
    assert all(f["properties"]["name"].endswith("栋") for f in _by_level(demo, "building"))


def test_the_same_seed_gives_the_same_street_and_another_seed_another(demo: dict) -> None:
    assert build_demo_regions() == demo
    assert build_demo_regions(seed=1) != demo


def test_the_demo_passes_region_validation(demo: dict) -> None:
    specs = [RegionSpec(f["properties"]["code"], f["properties"]["name"],
                        RegionLevel(f["properties"]["level"]), f["properties"]["parent_code"],
                        _geom(f)) for f in demo["features"]]
    report = validate_regions(specs)
    assert report.ok, report.describe()
