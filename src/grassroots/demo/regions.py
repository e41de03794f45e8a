"""The demo region tree: a street modelled on Shuangfu street (双福街道), Jiangjin, Chongqing.

Only the counts follow the published figures (7 zones, 129 grids, 997 micro-grids, ~28 km²);
the outlines and names are made up. Construction: a jittered, gently warped vertex lattice of
40 × 25 quads. Neighbouring quads share their vertex coordinates exactly, so the micro-grids tile
the street with no overlap and no gap. Three quads at one corner are dropped (997 remain); the
rest are walked in a snake order in which consecutive quads share an edge, then cut into runs:
129 grids of 7 or 8 quads, then 7 zones of 18 or 19 consecutive grids. Grid, zone and street
outlines are unions of their quads. Each micro-grid gets 1–3 small rectangular buildings.
"""

from __future__ import annotations

import math
import random
from typing import Any

import shapely
from shapely.geometry import Polygon, mapping

from grassroots.kernel.regions.geo import metres_per_degree

CENTRE_LON, CENTRE_LAT = 106.27, 29.39
COLUMNS, ROWS = 40, 25
BAND_ROWS = 5  # the snake walks bands of 5 rows column by column: grids come out compact
DROPPED = 3  # 1000 - 3 = 997 micro-grids
GRIDS = 129
ZONES = 7
TARGET_AREA_M2 = 28.0e6
JITTER = 0.18  # of the cell side: quads stay convex
DECIMALS = 7  # about 1 cm; rounded once, so shared vertices stay identical

DISTRICT_CODE = "500116"  # 江津区's administrative division code
STREET_CODE = "500116-SF"

ZONE_NAMES = (
    "双福新区片区",
    "渝西片区",
    "福城片区",
    "九龙湖片区",
    "双溪片区",
    "鑫源片区",
    "滨江片区",
)


def _snake_order() -> list[tuple[int, int]]:
    """Cells (column, row) in an order where consecutive cells share an edge.

    Each band of BAND_ROWS rows is walked column by column, alternating up and down; the last
    two columns of a band are walked row by row (two wide) so that the band ends on its top row
    at the far side, right below where the next band, walked the other way, begins.
    """
    order: list[tuple[int, int]] = []
    for band in range(ROWS // BAND_ROWS):
        rows = list(range(band * BAND_ROWS, (band + 1) * BAND_ROWS))
        columns = list(range(COLUMNS)) if band % 2 == 0 else list(range(COLUMNS - 1, -1, -1))
        for k, column in enumerate(columns[:-2]):
            order.extend((column, row) for row in (rows if k % 2 == 0 else rows[::-1]))
        near, far = columns[-2], columns[-1]
        for k, row in enumerate(rows):
            pair = (near, far) if k % 2 == 0 else (far, near)
            order.extend((column, row) for column in pair)
    return order


def _lattice(rng: random.Random) -> list[list[tuple[float, float]]]:
    """Vertex (column, row) → (lon, lat), jittered and warped in metres, then rounded."""
    side = math.sqrt(TARGET_AREA_M2 / (COLUMNS * ROWS - DROPPED))
    per_lon, per_lat = metres_per_degree(CENTRE_LAT)
    width, height = COLUMNS * side, ROWS * side
    vertices: list[list[tuple[float, float]]] = []
    for i in range(COLUMNS + 1):
        column = []
        for j in range(ROWS + 1):
            x = i * side + rng.uniform(-JITTER, JITTER) * side
            y = j * side + rng.uniform(-JITTER, JITTER) * side
            # A gentle bend so the street is not a rectangle (valleys, a river, a ring road).
            x += 0.9 * side * math.sin(2 * math.pi * y / height)
            y += 1.2 * side * math.sin(1.5 * math.pi * x / width)
            lon = CENTRE_LON + (x - width / 2) / per_lon
            lat = CENTRE_LAT + (y - height / 2) / per_lat
            column.append((round(lon, DECIMALS), round(lat, DECIMALS)))
        vertices.append(column)
    return vertices


def _quad(vertices: list[list[tuple[float, float]]], column: int, row: int) -> Polygon:
    return Polygon([vertices[column][row], vertices[column + 1][row],
                    vertices[column + 1][row + 1], vertices[column][row + 1]])


def _split(total: int, parts: int, rng: random.Random) -> list[int]:
    """`parts` sizes differing by at most one that add up to `total`, larger ones shuffled in."""
    small, extra = divmod(total, parts)
    sizes = [small + 1] * extra + [small] * (parts - extra)
    rng.shuffle(sizes)
    return sizes


def _buildings(micro: Polygon, rng: random.Random, count: int) -> list[Polygon]:
    """Up to `count` small rotated rectangles well inside the micro-grid, not touching."""
    per_lon, per_lat = metres_per_degree(CENTRE_LAT)
    cx, cy = micro.centroid.x, micro.centroid.y

    def to_metres(p: Polygon) -> Polygon:
        return shapely.transform(p, lambda c: (c - (cx, cy)) * (per_lon, per_lat))

    def to_degrees(p: Polygon) -> Polygon:
        return shapely.transform(p, lambda c: c / (per_lon, per_lat) + (cx, cy))

    inner = to_metres(micro).buffer(-8.0)
    placed: list[Polygon] = []
    minx, miny, maxx, maxy = inner.bounds
    for _attempt in range(60):
        if len(placed) == count or inner.is_empty:
            break
        length, breadth = rng.uniform(18, 42), rng.uniform(10, 16)
        angle = rng.uniform(0, math.pi)
        x, y = rng.uniform(minx, maxx), rng.uniform(miny, maxy)
        ca, sa = math.cos(angle), math.sin(angle)
        corners = [(x + ca * dx - sa * dy, y + sa * dx + ca * dy)
                   for dx, dy in ((-length / 2, -breadth / 2), (length / 2, -breadth / 2),
                                  (length / 2, breadth / 2), (-length / 2, breadth / 2))]
        building = Polygon(corners)
        if inner.contains(building) and all(building.distance(p) > 6.0 for p in placed):
            placed.append(building)
    out = []
    for building in placed:
        rounded = shapely.set_precision(to_degrees(building), 10.0 ** -DECIMALS)
        out.append(Polygon(list(rounded.exterior.coords)))
    return out


def _feature(code: str, name: str, level: str, parent: str | None,
             geometry: shapely.Geometry) -> dict[str, Any]:
    return {
        "type": "Feature",
        "properties": {"code": code, "name": name, "level": level, "parent_code": parent},
        "geometry": {"type": geometry.geom_type, "coordinates": _lists(
            mapping(geometry)["coordinates"])},
    }


def _lists(value: Any) -> Any:
    """Tuples (shapely's mapping) → lists, so the collection equals its JSON round trip."""
    return [_lists(v) for v in value] if isinstance(value, list | tuple) else value


def build_demo_regions(seed: int = 20230415) -> dict[str, Any]:
    """The demo street as a GeoJSON FeatureCollection (WGS-84), parents before children."""
    rng = random.Random(seed)
    vertices = _lattice(rng)
    order = _snake_order()[: COLUMNS * ROWS - DROPPED]
    quads = [_quad(vertices, column, row) for column, row in order]

    grid_sizes = _split(len(quads), GRIDS, rng)  # 94 × 8 + 35 × 7
    zone_sizes = _split(GRIDS, ZONES, rng)  # 3 × 19 + 4 × 18

    grids: list[list[int]] = []
    start = 0
    for size in grid_sizes:
        grids.append(list(range(start, start + size)))
        start += size
    zones: list[list[int]] = []
    start = 0
    for size in zone_sizes:
        zones.append(list(range(start, start + size)))
        start += size

    street = shapely.union_all(quads)
    district = street.buffer(0.02, quad_segs=4).simplify(0.002)
    features = [
        _feature(DISTRICT_CODE, "江津区", "district", None, district),
        _feature(STREET_CODE, "双福街道", "street", DISTRICT_CODE, street),
    ]
    zone_features, grid_features, micro_features, building_features = [], [], [], []
    for z, grid_numbers in enumerate(zones, start=1):
        zone_code = f"{STREET_CODE}-Z{z}"
        zone_cells = [cell for g in grid_numbers for cell in grids[g]]
        zone_features.append(_feature(zone_code, ZONE_NAMES[z - 1], "zone", STREET_CODE,
                                      shapely.union_all([quads[c] for c in zone_cells])))
        for g in grid_numbers:
            grid_code = f"{zone_code}-G{g + 1:03d}"
            grid_features.append(_feature(grid_code, f"第{g + 1}网格", "grid", zone_code,
                                          shapely.union_all([quads[c] for c in grids[g]])))
            for m, cell in enumerate(grids[g], start=1):
                micro_code = f"{grid_code}-M{cell + 1:04d}"
                micro_features.append(_feature(micro_code, f"微网格{g + 1}-{m}", "micro_grid",
                                               grid_code, quads[cell]))
                count = rng.choice((1, 2, 2, 3))
                for b, building in enumerate(_buildings(quads[cell], rng, count), start=1):
                    building_features.append(_feature(f"{micro_code}-B{b}", f"{b}栋",
                                                      "building", micro_code, building))
    features += zone_features + grid_features + micro_features + building_features
    return {"type": "FeatureCollection", "features": features}
