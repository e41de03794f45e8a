"""The raster locator answers exactly what a naive shapely check answers, only faster."""

from __future__ import annotations

import itertools
import pickle
import time
from typing import Any

import numpy as np
import pytest
import shapely
from shapely.geometry import MultiPolygon, Polygon, box

from grassroots.demo.regions import build_demo_regions
from grassroots.kernel.regions.locate import (
    OUTSIDE,
    LocateIndex,
    RegionRef,
    leaf_ids_of,
    naive_locate,
)


def _demo_tree() -> tuple[dict[int, RegionRef], dict[int, shapely.Geometry]]:
    data = build_demo_regions()
    ids = {f["properties"]["code"]: n for n, f in enumerate(data["features"], start=1)}
    refs: dict[int, RegionRef] = {}
    geoms: dict[int, shapely.Geometry] = {}
    for feature in data["features"]:
        p = feature["properties"]
        rid = ids[p["code"]]
        refs[rid] = RegionRef(rid, p["code"], p["name"], p["level"], ids.get(p["parent_code"]),
                              "")
        geoms[rid] = shapely.geometry.shape(feature["geometry"])
    return refs, geoms


@pytest.fixture(scope="module")
def demo() -> dict[str, Any]:
    refs, geoms = _demo_tree()
    leaves = leaf_ids_of(refs.values())
    started = time.perf_counter()
    index = LocateIndex(refs, [(i, geoms[i]) for i in leaves])
    build_seconds = time.perf_counter() - started
    street = next(geoms[i] for i, r in refs.items() if r.level == "street")
    return {"refs": refs, "geoms": geoms, "leaves": leaves, "index": index,
            "build_seconds": build_seconds, "street": street}


def _reference(demo: dict[str, Any], lons: np.ndarray, lats: np.ndarray) -> np.ndarray:
    """Best leaf per point by shapely's own STRtree and intersects (closed polygons)."""
    refs, geoms, leaves = demo["refs"], demo["geoms"], demo["leaves"]
    depth = {"building": 5, "micro_grid": 4, "grid": 3, "zone": 2, "street": 1, "district": 0}
    ranked = sorted(leaves, key=lambda i: (-depth[refs[i].level], i))
    ordered = np.array([geoms[i] for i in ranked], dtype=object)
    tree = shapely.STRtree(ordered)
    point_idx, geom_idx = tree.query(shapely.points(lons, lats), predicate="intersects")
    best = np.full(len(lons), len(ranked), dtype=np.int64)
    np.minimum.at(best, point_idx, geom_idx)
    ranked_ids = np.array([*ranked, OUTSIDE], dtype=np.int64)
    return ranked_ids[best]


def _edge_points(geoms: list[shapely.Geometry], rng: np.random.Generator,
                 per_ring: int) -> tuple[np.ndarray, np.ndarray]:
    """Points exactly on vertices, on edges, and a hair (1e-12 … 1e-7 degrees) either side."""
    coords = shapely.get_coordinates(shapely.get_rings(shapely.get_parts(geoms)))
    on_edges = []
    for ring in shapely.get_rings(shapely.get_parts(geoms)):
        on_edges.append(shapely.get_coordinates(
            shapely.line_interpolate_point(ring, rng.random(per_ring), normalized=True)))
    base = np.vstack([coords, *on_edges])
    shifts = [0.0, 1e-12, -1e-12, 1e-9, -1e-9, 1e-7, -1e-7]
    xs, ys = [], []
    for dx in shifts:
        for dy in shifts[:3]:
            xs.append(base[:, 0] + dx)
            ys.append(base[:, 1] + dy)
    return np.concatenate(xs), np.concatenate(ys)


def test_it_matches_shapely_on_a_million_random_points_in_the_demo_street(demo: dict) -> None:
    rng = np.random.default_rng(7)
    x0, y0, x1, y1 = demo["street"].bounds
    lons = rng.uniform(x0 - 0.002, x1 + 0.002, 1_000_000)
    lats = rng.uniform(y0 - 0.002, y1 + 0.002, 1_000_000)
    got = demo["index"].locate_many(lons, lats)
    expected = _reference(demo, lons, lats)
    assert np.array_equal(got, expected)
    assert (got == OUTSIDE).any() and (got != OUTSIDE).mean() > 0.6


def test_it_matches_shapely_on_vertices_and_edges_and_a_hair_either_side(demo: dict) -> None:
    rng = np.random.default_rng(11)
    leaf_geoms = [demo["geoms"][i] for i in demo["leaves"]]
    lons, lats = _edge_points(leaf_geoms, rng, per_ring=6)
    assert len(lons) > 300_000
    got = demo["index"].locate_many(lons, lats)
    assert np.array_equal(got, _reference(demo, lons, lats))


def test_the_reference_check_agrees_with_the_plain_per_polygon_loop(demo: dict) -> None:
    rng = np.random.default_rng(3)
    x0, y0, x1, y1 = demo["street"].bounds
    lons, lats = rng.uniform(x0, x1, 3000), rng.uniform(y0, y1, 3000)
    leaves = [(i, demo["geoms"][i], demo["refs"][i].level) for i in demo["leaves"]]
    assert np.array_equal(naive_locate(leaves, lons, lats), _reference(demo, lons, lats))


def test_single_lookups_agree_with_the_batch_and_return_the_path_up_to_the_district(
        demo: dict) -> None:
    index: LocateIndex = demo["index"]
    rng = np.random.default_rng(5)
    x0, y0, x1, y1 = demo["street"].bounds
    lons, lats = rng.uniform(x0, x1, 2000), rng.uniform(y0, y1, 2000)
    batch = index.locate_many(lons, lats)
    for lon, lat, expected in zip(lons, lats, batch, strict=True):
        path = index.locate(lon, lat)
        if expected == OUTSIDE:
            assert path is None
            continue
        assert path is not None and path[0].id == expected
        levels = [ref.level for ref in path]
        assert levels[-3:] == ["zone", "street", "district"]
        assert levels[0] in ("building", "micro_grid")
        for child, parent in itertools.pairwise(path):
            assert child.parent_id == parent.id


def test_a_point_in_a_building_resolves_to_the_building_and_beside_it_to_the_micro_grid(
        demo: dict) -> None:
    refs, geoms, index = demo["refs"], demo["geoms"], demo["index"]
    building_id = next(i for i in sorted(refs) if refs[i].level == "building")
    building = geoms[building_id]
    inside = building.representative_point()
    path = index.locate(inside.x, inside.y)
    assert path is not None
    assert [r.id for r in path[:2]] == [building_id, refs[building_id].parent_id]
    micro = geoms[refs[building_id].parent_id]
    others = [geoms[i] for i in refs if refs[i].parent_id == refs[building_id].parent_id]
    spare = micro.buffer(-1e-5).difference(shapely.union_all(others).buffer(1e-5))
    beside = spare.representative_point()
    assert index.locate_id(beside.x, beside.y) == refs[building_id].parent_id


def test_points_outside_every_region_and_nonsense_coordinates_give_minus_one(
        demo: dict) -> None:
    index: LocateIndex = demo["index"]
    lons = np.array([0.0, 106.0, 180.0, np.nan, np.inf, 106.27, -np.inf])
    lats = np.array([0.0, 29.0, 90.0, 29.39, 29.39, np.nan, 29.39])
    assert index.locate_many(lons, lats).tolist() == [OUTSIDE] * 7
    assert index.locate(0.0, 0.0) is None
    assert index.locate(float("nan"), 29.39) is None


def test_the_demo_index_builds_quickly_and_reports_a_small_boundary_fraction(demo: dict) -> None:
    index: LocateIndex = demo["index"]
    assert demo["build_seconds"] < 3.0
    assert index.leaf_count == len(demo["leaves"])
    assert index.boundary_cell_count < 0.15 * index.width * index.height


def test_a_pickled_index_answers_the_same(demo: dict) -> None:
    index: LocateIndex = demo["index"]
    rng = np.random.default_rng(9)
    x0, y0, x1, y1 = demo["street"].bounds
    lons, lats = rng.uniform(x0, x1, 50_000), rng.uniform(y0, y1, 50_000)
    copy = pickle.loads(pickle.dumps(index))
    assert np.array_equal(copy.locate_many(lons, lats), index.locate_many(lons, lats))


def _refs(*specs: tuple[int, str, int | None]) -> dict[int, RegionRef]:
    return {rid: RegionRef(rid, f"R{rid}", f"region {rid}", level, parent, "")
            for rid, level, parent in specs}


@pytest.mark.parametrize("max_side", [3, 17, 256, 2048])
def test_holes_multipolygons_and_nested_buildings_are_exact_at_any_resolution(
        max_side: int) -> None:
    with_hole = Polygon([(0, 0), (4, 0), (4, 4), (0, 4)],
                        [[(1, 1), (2, 1), (2, 2), (1, 2)], [(2.5, 2.5), (3.5, 2.6), (3, 3.5)]])
    islands = MultiPolygon([box(1.2, 1.2, 1.8, 1.8), box(6, 0, 7, 1), box(6, 3, 7.5, 4.5)])
    slanted = Polygon([(4, 0), (6, 0.3), (5.5, 4.2), (4, 4)])
    building = Polygon([(0.2, 0.2), (0.9, 0.3), (0.5, 0.95)])
    building_in_hole_of_nothing = box(4.5, 1, 5, 1.5)  # inside `slanted`
    refs = _refs((1, "grid", None), (2, "micro_grid", 1), (3, "micro_grid", 1),
                 (4, "micro_grid", 1), (5, "building", 2), (6, "building", 4))
    leaves = [(2, with_hole), (3, islands), (4, slanted), (5, building),
              (6, building_in_hole_of_nothing)]
    index = LocateIndex(refs, leaves, max_side=max_side)
    rng = np.random.default_rng(max_side)
    lons = np.concatenate([rng.uniform(-1, 8.5, 100_000), [1.5, 1.0, 4.0, 3.0, 0.2]])
    lats = np.concatenate([rng.uniform(-1, 5.5, 100_000), [1.5, 1.5, 2.0, 3.0, 0.2]])
    edge_lons, edge_lats = _edge_points([g for _, g in leaves], rng, per_ring=50)
    lons, lats = np.concatenate([lons, edge_lons]), np.concatenate([lats, edge_lats])
    expected = naive_locate([(rid, g, refs[rid].level) for rid, g in leaves], lons, lats)
    assert np.array_equal(index.locate_many(lons, lats), expected)
    assert index.locate_id(1.5, 1.5) == 3  # an island inside the other polygon's hole
    assert index.locate_id(1.7, 1.05) == OUTSIDE  # in the hole, off the island
    assert index.locate_id(0.5, 0.5) == 5  # the building, not its micro-grid
    assert index.locate_id(4.0, 2.0) == 2  # shared edge: the smaller id wins, as naive does


def test_an_index_over_nothing_finds_nothing() -> None:
    index = LocateIndex({}, [])
    assert index.locate(106.27, 29.39) is None
    assert index.locate_many(np.array([1.0]), np.array([2.0])).tolist() == [OUTSIDE]


def test_regions_with_area_children_are_not_indexed_but_micro_grids_with_buildings_are() -> None:
    refs = _refs((1, "street", None), (2, "zone", 1), (3, "grid", 2), (4, "micro_grid", 3),
                 (5, "building", 4), (6, "grid", 2))
    assert sorted(leaf_ids_of(refs.values())) == [4, 5, 6]


def test_worker_threads_sharing_one_index_get_the_same_answers(demo: dict) -> None:
    from concurrent.futures import ThreadPoolExecutor

    refs, geoms, leaves = demo["refs"], demo["geoms"], demo["leaves"]
    index = LocateIndex(refs, [(i, geoms[i]) for i in leaves])  # fresh: nothing queried yet
    rng = np.random.default_rng(13)
    x0, y0, x1, y1 = demo["street"].bounds
    chunks = [(rng.uniform(x0, x1, 40_000), rng.uniform(y0, y1, 40_000)) for _ in range(16)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda c: index.locate_many(*c), chunks))
    for (lons, lats), got in zip(chunks, answers, strict=True):
        assert np.array_equal(got, demo["index"].locate_many(lons, lats))
