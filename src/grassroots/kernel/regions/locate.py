"""Point → region lookup: a raster over the leaf polygons answers most points with one gather.

Design. A uniform grid of cells covers the bounding box of the indexed ("leaf") polygons:
buildings, micro-grids, and any region with no children other than buildings. Each cell is

* interior: no polygon edge touches the closed cell, so every point in it lies in the same
  polygons; the cell stores the highest-priority one (or "outside");
* boundary: some polygon edge touches the cell. The cell lists the polygons whose edges touch
  it (in priority order) and a fallback, the best polygon containing the whole cell. A point
  there is tested exactly with shapely against the listed candidates, best first.

Edges are rasterised conservatively: every cell within `_EPS` cell widths of an edge is marked,
so floating-point rounding in the query's cell arithmetic can never put a point in a cell marked
interior while the point lies on the other side of an edge. Results are therefore exactly those
of the naive check "the highest-priority leaf whose closed polygon contains the point"
(shapely.intersects_xy), which `naive_locate` implements for tests and the benchmark.

Priority: deeper level first (a building beats its micro-grid), then the smaller region id.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import shapely
from shapely.geometry.base import BaseGeometry

from grassroots.kernel.regions.models import LEVEL_ORDER, RegionLevel

OUTSIDE = -1
DEFAULT_MAX_SIDE = 2048  # cells along the longer side of the bounding box
_EPS = 1e-6  # in cell widths: far above rounding error (~1e-12), far below a cell

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class RegionRef:
    """A region as the locator reports it; `path` is the materialised '/1/4/19/' path."""

    id: int
    code: str
    name: str
    level: str
    parent_id: int | None
    path: str

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "code": self.code, "name": self.name, "level": self.level}


def _level_depth(level: str) -> int:
    try:
        return LEVEL_ORDER.index(RegionLevel(level))
    except ValueError:
        return -1


def leaf_ids_of(refs: Iterable[RegionRef]) -> list[int]:
    """The regions the locator indexes: those with no children other than buildings."""
    refs = list(refs)
    has_area_children: set[int] = set()
    for ref in refs:
        if ref.parent_id is not None and ref.level != RegionLevel.BUILDING:
            has_area_children.add(ref.parent_id)
    return [ref.id for ref in refs if ref.id not in has_area_children]


def _polygonal(geometry: BaseGeometry) -> BaseGeometry:
    """Drop points and lines (a GeometryCollection from a sloppy import) and keep the area."""
    if geometry.geom_type in ("Polygon", "MultiPolygon"):
        return geometry
    parts = [g for g in shapely.get_parts(geometry) if g.geom_type in ("Polygon", "MultiPolygon")]
    return shapely.union_all(parts) if parts else shapely.Polygon()


class LocateIndex:
    """Exact point-in-region lookups at raster speed; build once, share read-only."""

    # raster[row * width + col]: leaf index (>= 0), OUTSIDE, or -2 - b for boundary cell b
    raster: npt.NDArray[np.int32]
    cand_offsets: npt.NDArray[np.int64]  # boundary cell b's candidates: [offsets[b], [b + 1])
    cand_leaves: npt.NDArray[np.int32]
    fallback: npt.NDArray[np.int32]  # per boundary cell: the leaf holding all of it, or OUTSIDE
    x0: float
    y0: float
    sx: float  # cells per degree of longitude
    sy: float
    width: int
    height: int

    def __init__(
        self,
        refs: Mapping[int, RegionRef],
        leaves: Sequence[tuple[int, BaseGeometry]],
        *,
        max_side: int = DEFAULT_MAX_SIDE,
        version: object = None,
    ) -> None:
        self.version = version
        self.refs = dict(refs)
        self.max_side = max_side
        ordered = sorted(
            ((rid, _polygonal(geom)) for rid, geom in leaves),
            key=lambda item: (-_level_depth(self.refs[item[0]].level), item[0]),
        )
        ordered = [(rid, geom) for rid, geom in ordered if not geom.is_empty]
        self.leaf_ids: IntArray = np.array([rid for rid, _ in ordered], dtype=np.int64)
        self.geometries: npt.NDArray[np.object_] = np.empty(len(ordered), dtype=object)
        self.geometries[:] = [geom for _, geom in ordered]
        _prepare(self.geometries)
        self._paths = self._build_paths()
        self._build_raster()

    # --- construction -------------------------------------------------------------------

    @classmethod
    def from_regions(cls, regions: Iterable[Any], *, max_side: int = DEFAULT_MAX_SIDE,
                     version: object = None) -> LocateIndex:
        """Build from Region rows (or anything with id, code, name, level, parent_id, path,
        geometry as GeoJSON text/dict or a shapely geometry)."""
        import json

        rows = list(regions)
        refs = {
            r.id: RegionRef(r.id, r.code, r.name, str(getattr(r.level, "value", r.level)),
                            r.parent_id, r.path)
            for r in rows
        }
        wanted = set(leaf_ids_of(refs.values()))
        leaves: list[tuple[int, BaseGeometry]] = []
        texts: list[tuple[int, str]] = []
        for r in rows:
            if r.id not in wanted:
                continue
            if isinstance(r.geometry, BaseGeometry):
                leaves.append((r.id, r.geometry))
            else:
                text = r.geometry if isinstance(r.geometry, str) else json.dumps(r.geometry)
                texts.append((r.id, text))
        if texts:  # one vectorised parse instead of thousands of json.loads + shape
            parsed = shapely.from_geojson([text for _, text in texts])
            leaves += [(rid, geom) for (rid, _), geom in zip(texts, parsed, strict=True)]
        return cls(refs, leaves, max_side=max_side, version=version)

    def _build_paths(self) -> list[tuple[RegionRef, ...]]:
        """For each leaf, its refs from itself up to the root (parent links, cycle-safe)."""
        paths = []
        for rid in self.leaf_ids.tolist():
            chain: list[RegionRef] = []
            seen: set[int] = set()
            current: int | None = rid
            while current is not None and current in self.refs and current not in seen:
                seen.add(current)
                ref = self.refs[current]
                chain.append(ref)
                current = ref.parent_id
            paths.append(tuple(chain))
        return paths

    def _build_raster(self) -> None:
        n_leaves = len(self.geometries)
        if n_leaves == 0:
            self.x0 = self.y0 = 0.0
            self.sx = self.sy = 1.0
            self.width = self.height = 1
            self.raster = np.full(1, OUTSIDE, dtype=np.int32)
            self.cand_offsets = np.zeros(1, dtype=np.int64)
            self.cand_leaves = np.zeros(0, dtype=np.int32)
            self.fallback = np.zeros(0, dtype=np.int32)
            return
        minx, miny, maxx, maxy = shapely.total_bounds(self.geometries)
        span = max(maxx - minx, maxy - miny, 1e-9)
        pad = span * 1e-6
        minx, miny, maxx, maxy = minx - pad, miny - pad, maxx + pad, maxy + pad
        cell = max(maxx - minx, maxy - miny) / self.max_side
        width = max(1, math.ceil((maxx - minx) / cell))
        height = max(1, math.ceil((maxy - miny) / cell))
        self.x0, self.y0 = float(minx), float(miny)
        self.sx, self.sy = width / (maxx - minx), height / (maxy - miny)
        self.width, self.height = width, height

        u0, v0, u1, v1, owner = self._segments()
        edge_cells, edge_owner = _touched_cells(u0, v0, u1, v1, owner, width, height)
        fill_cells, fill_owner = _filled_cells(u0, v0, u1, v1, owner, width, height)

        n_cells = width * height
        # Interior value: the best (smallest index) leaf whose fill covers the cell.
        best = np.full(n_cells, n_leaves, dtype=np.int32)
        np.minimum.at(best, fill_cells, fill_owner)
        raster = np.where(best == n_leaves, OUTSIDE, best).astype(np.int32)

        # Boundary cells and their (cell, leaf) pairs, deduplicated and sorted by cell, leaf.
        edge_keys = np.unique(edge_cells.astype(np.int64) * n_leaves + edge_owner)
        boundary_cells = np.unique(edge_keys // n_leaves)
        n_boundary = len(boundary_cells)
        position = np.full(n_cells, -1, dtype=np.int64)
        position[boundary_cells] = np.arange(n_boundary)

        # Fallback: the best leaf containing the whole cell = filled there, no edge there.
        on_boundary = position[fill_cells] >= 0
        fkeys = fill_cells[on_boundary].astype(np.int64) * n_leaves + fill_owner[on_boundary]
        fkeys = fkeys[~np.isin(fkeys, edge_keys, assume_unique=False)]
        fallback = np.full(n_boundary, n_leaves, dtype=np.int64)
        np.minimum.at(fallback, position[fkeys // n_leaves], fkeys % n_leaves)

        # Candidates: edge-touching leaves better than the fallback (the rest can never win).
        pair_cell = edge_keys // n_leaves
        pair_leaf = edge_keys % n_leaves
        pair_b = position[pair_cell]
        keep = pair_leaf < fallback[pair_b]
        pair_b, pair_leaf = pair_b[keep], pair_leaf[keep]
        counts = np.bincount(pair_b, minlength=n_boundary)

        fallback_value = np.where(fallback == n_leaves, OUTSIDE, fallback).astype(np.int32)
        # A boundary cell left without candidates answers like an interior cell.
        trivial = counts == 0
        raster[boundary_cells[trivial]] = fallback_value[trivial]
        real = ~trivial
        real_cells = boundary_cells[real]
        raster[real_cells] = (-2 - np.arange(len(real_cells))).astype(np.int32)
        keep_pairs = real[pair_b]
        self.cand_leaves = pair_leaf[keep_pairs].astype(np.int32)
        compact_counts = counts[real]
        self.cand_offsets = np.concatenate(([0], np.cumsum(compact_counts))).astype(np.int64)
        self.fallback = fallback_value[real]
        self.raster = raster

    def _segments(self) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, IntArray]:
        """Every ring edge of every leaf in raster units, with the leaf index owning it."""
        parts, part_owner = shapely.get_parts(self.geometries, return_index=True)
        rings, ring_part = shapely.get_rings(parts, return_index=True)  # polygons only
        ring_owner = part_owner[ring_part]
        coords, coord_ring = shapely.get_coordinates(rings, return_index=True)
        same_ring = coord_ring[1:] == coord_ring[:-1]
        u = (coords[:, 0] - self.x0) * self.sx
        v = (coords[:, 1] - self.y0) * self.sy
        return (u[:-1][same_ring], v[:-1][same_ring], u[1:][same_ring], v[1:][same_ring],
                ring_owner[coord_ring[:-1][same_ring]].astype(np.int64))

    # --- queries ------------------------------------------------------------------------

    @property
    def leaf_count(self) -> int:
        return len(self.leaf_ids)

    @property
    def boundary_cell_count(self) -> int:
        return len(self.fallback)

    def _leaf_at(self, lon: float, lat: float) -> int:
        u = (lon - self.x0) * self.sx
        v = (lat - self.y0) * self.sy
        if not (0.0 <= u < self.width and 0.0 <= v < self.height):  # NaN fails too
            return OUTSIDE
        value = int(self.raster[int(v) * self.width + int(u)])
        if value >= OUTSIDE:
            return value
        b = -2 - value
        for k in range(int(self.cand_offsets[b]), int(self.cand_offsets[b + 1])):
            leaf = int(self.cand_leaves[k])
            if shapely.intersects_xy(self.geometries[leaf], lon, lat):
                return leaf
        return int(self.fallback[b])

    def locate(self, lon: float, lat: float) -> list[RegionRef] | None:
        """The deepest region containing (lon, lat) and its ancestors, deepest first."""
        leaf = self._leaf_at(float(lon), float(lat))
        if leaf == OUTSIDE:
            return None
        return list(self._paths[leaf])

    def locate_id(self, lon: float, lat: float) -> int:
        """The deepest region id at (lon, lat), or -1."""
        leaf = self._leaf_at(float(lon), float(lat))
        return OUTSIDE if leaf == OUTSIDE else int(self.leaf_ids[leaf])

    def locate_leaves(self, lons: npt.ArrayLike, lats: npt.ArrayLike) -> IntArray:
        """Leaf indices (into leaf_ids) for many points; -1 outside."""
        x = np.ascontiguousarray(lons, dtype=np.float64).ravel()
        y = np.ascontiguousarray(lats, dtype=np.float64).ravel()
        if x.shape != y.shape:
            raise ValueError("lons and lats must have the same length")
        u = (x - self.x0) * self.sx
        v = (y - self.y0) * self.sy
        inside = (u >= 0.0) & (u < self.width) & (v >= 0.0) & (v < self.height)
        if not inside.all():
            u = np.where(inside, u, 0.0)
            v = np.where(inside, v, 0.0)
        cells = v.astype(np.int64)
        cells *= self.width
        cells += u.astype(np.int64)
        result = self.raster[cells].astype(np.int64)
        if not inside.all():
            result[~inside] = OUTSIDE
        pending = np.flatnonzero(result <= -2)
        if len(pending):
            result[pending] = self._resolve(pending, -2 - result[pending], x, y)
        return result

    def _resolve(self, points: IntArray, boundary: IntArray, x: FloatArray,
                 y: FloatArray) -> IntArray:
        """Exact answers for points in boundary cells: first candidate that holds, else fallback."""
        starts = self.cand_offsets[boundary]
        counts = self.cand_offsets[boundary + 1] - starts
        owner = np.repeat(np.arange(len(points)), counts)
        leaf = self.cand_leaves[np.repeat(starts, counts) + _ranks(counts)]
        pts = points[owner]
        hit = shapely.intersects_xy(self.geometries[leaf], x[pts], y[pts])
        answer = self.fallback[boundary].astype(np.int64)
        hit_owner = owner[hit]
        if len(hit_owner):
            # Pairs are ordered by point, then by priority: keep each point's first hit.
            first = np.ones(len(hit_owner), dtype=bool)
            first[1:] = hit_owner[1:] != hit_owner[:-1]
            answer[hit_owner[first]] = leaf[hit][first]
        return answer

    def locate_many(self, lons: npt.ArrayLike, lats: npt.ArrayLike) -> IntArray:
        """The deepest region id for each point (numpy arrays); -1 where outside every region."""
        leaves = self.locate_leaves(lons, lats)
        lookup = np.concatenate(([OUTSIDE], self.leaf_ids))
        return lookup[leaves + 1]

    def path_of(self, region_id: int) -> list[RegionRef]:
        """A region and its ancestors, deepest first (any indexed or ancestor region)."""
        chain: list[RegionRef] = []
        current: int | None = region_id
        while current is not None and current in self.refs and len(chain) <= len(self.refs):
            ref = self.refs[current]
            chain.append(ref)
            current = ref.parent_id
        return chain

    # --- pickling: shapely's prepared state does not survive, so prepare again ------------

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["geometries"] = shapely.to_wkb(self.geometries)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        geometries = np.empty(len(state["geometries"]), dtype=object)
        geometries[:] = list(shapely.from_wkb(state["geometries"]))
        state["geometries"] = geometries
        self.__dict__.update(state)
        _prepare(self.geometries)


def _prepare(geometries: npt.NDArray[np.object_]) -> None:
    """Prepare, then query each geometry once: GEOS builds a prepared polygon's point index
    lazily and that first build is not thread-safe, while later read-only queries from the web
    server's worker threads are (libgeos/geos#825)."""
    shapely.prepare(geometries)
    if len(geometries):
        # A point inside each envelope: one outside would be answered without the index.
        bounds = shapely.bounds(geometries)
        shapely.intersects_xy(geometries, (bounds[:, 0] + bounds[:, 2]) / 2,
                              (bounds[:, 1] + bounds[:, 3]) / 2)


def _ranks(counts: IntArray) -> IntArray:
    """0, 1, …, n-1 for each count n, concatenated: [2, 3] → [0, 1, 0, 1, 2]."""
    total = int(counts.sum())
    return np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)


def _touched_cells(u0: FloatArray, v0: FloatArray, u1: FloatArray, v1: FloatArray,
                   owner: IntArray, width: int, height: int) -> tuple[IntArray, IntArray]:
    """(cell, owner) for every cell within _EPS of a segment: column by column, then rows."""
    umin, umax = np.minimum(u0, u1), np.maximum(u0, u1)
    vmin, vmax = np.minimum(v0, v1), np.maximum(v0, v1)
    c_lo = np.clip(np.floor(umin - _EPS), 0, width - 1).astype(np.int64)
    c_hi = np.clip(np.floor(umax + _EPS), 0, width - 1).astype(np.int64)
    ncols = c_hi - c_lo + 1
    seg = np.repeat(np.arange(len(u0)), ncols)
    col = np.repeat(c_lo, ncols) + _ranks(ncols)
    # The part of the segment whose x lies in [col - eps, col + 1 + eps].
    xa = np.maximum(col - _EPS, umin[seg])
    xb = np.minimum(col + 1 + _EPS, umax[seg])
    du = (u1 - u0)[seg]
    dv = (v1 - v0)[seg]
    steep = np.abs(du) <= 1e-12
    slope = np.divide(dv, du, out=np.zeros_like(du), where=~steep)
    ya = v0[seg] + (xa - u0[seg]) * slope
    yb = v0[seg] + (xb - u0[seg]) * slope
    ylo = np.where(steep, vmin[seg], np.minimum(ya, yb))
    yhi = np.where(steep, vmax[seg], np.maximum(ya, yb))
    ylo = np.maximum(ylo, vmin[seg]) - _EPS
    yhi = np.minimum(yhi, vmax[seg]) + _EPS
    r_lo = np.clip(np.floor(ylo), 0, height - 1).astype(np.int64)
    r_hi = np.clip(np.floor(yhi), 0, height - 1).astype(np.int64)
    nrows = np.maximum(r_hi - r_lo + 1, 0)
    pair = np.repeat(np.arange(len(seg)), nrows)
    row = np.repeat(r_lo, nrows) + _ranks(nrows)
    cells = row * width + col[pair]
    return cells, owner[seg[pair]]


def _filled_cells(u0: FloatArray, v0: FloatArray, u1: FloatArray, v1: FloatArray,
                  owner: IntArray, width: int, height: int) -> tuple[IntArray, IntArray]:
    """(cell, owner) for every cell whose centre lies inside the owner (even-odd scanlines)."""
    vmin, vmax = np.minimum(v0, v1), np.maximum(v0, v1)
    # Rows whose centre j + 0.5 lies in [vmin, vmax): half-open, so a vertex counts once.
    r_lo = np.ceil(vmin - 0.5).astype(np.int64)
    r_hi = np.ceil(vmax - 0.5).astype(np.int64) - 1
    nrows = np.maximum(r_hi - r_lo + 1, 0)
    seg = np.repeat(np.arange(len(u0)), nrows)
    row = np.repeat(r_lo, nrows) + _ranks(nrows)
    yc = row + 0.5
    x = u0[seg] + (yc - v0[seg]) * ((u1 - u0)[seg] / (v1 - v0)[seg])
    key = owner[seg] * height + row
    order = np.lexsort((x, key))
    key, x = key[order], x[order]
    # Each (owner, row) has an even number of crossings, so global pairs never straddle groups.
    if len(key) % 2 or np.any(key[0::2] != key[1::2]):
        raise ValueError("a polygon ring is not closed; cannot rasterise it")
    start = np.ceil(x[0::2] - 0.5).astype(np.int64)
    stop = np.ceil(x[1::2] - 0.5).astype(np.int64)  # exclusive
    span_row = key[0::2] % height
    span_owner = key[0::2] // height
    start = np.clip(start, 0, width)
    stop = np.clip(stop, 0, width)
    valid = (stop > start) & (span_row >= 0) & (span_row < height)
    start, stop = start[valid], stop[valid]
    span_row, span_owner = span_row[valid], span_owner[valid]
    length = stop - start
    span = np.repeat(np.arange(len(start)), length)
    col = np.repeat(start, length) + _ranks(length)
    return span_row[span] * width + col, span_owner[span]


def naive_locate(leaves: Sequence[tuple[int, BaseGeometry, str]], lons: npt.ArrayLike,
                 lats: npt.ArrayLike) -> IntArray:
    """Reference answer: for each point the best (deepest level, then smallest id) leaf
    whose closed polygon holds it. `leaves` are (id, geometry, level); slow, for checks."""
    x = np.asarray(lons, dtype=np.float64)
    y = np.asarray(lats, dtype=np.float64)
    result = np.full(len(x), OUTSIDE, dtype=np.int64)
    for rid, geom, _level in sorted(leaves, key=lambda item: (-_level_depth(item[2]), item[0])):
        open_points = result == OUTSIDE
        if not open_points.any():
            break
        hit = shapely.intersects_xy(geom, x[open_points], y[open_points])
        idx = np.flatnonzero(open_points)[hit]
        result[idx] = rid
    return result
