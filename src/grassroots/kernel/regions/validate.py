"""Checks a region set before it is stored, naming each offending region code and the problem.

Rules: codes are unique; parents exist; each level sits directly under the one above it
(district → street → zone → grid → micro-grid → building); polygons are valid; a child lies
inside its parent; siblings do not overlap; and where a level must tile its parent (zones tile
the street, grids tile a zone, micro-grids tile a grid) the children leave no gap. Buildings need
not tile. Areas are compared in square metres with a small tolerance for survey slivers.
"""

from __future__ import annotations

import enum
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from grassroots.kernel.regions.geo import metres_per_degree
from grassroots.kernel.regions.models import RegionLevel

L = RegionLevel
PARENT_LEVEL: dict[RegionLevel, RegionLevel] = {
    L.STREET: L.DISTRICT,
    L.ZONE: L.STREET,
    L.GRID: L.ZONE,
    L.MICRO_GRID: L.GRID,
    L.BUILDING: L.MICRO_GRID,
}
ROOT_LEVELS = frozenset({L.DISTRICT, L.STREET})  # a street may be imported on its own
# parent level → the child level that must cover it completely
TILING_CHILD: dict[RegionLevel, RegionLevel] = {L.STREET: L.ZONE, L.ZONE: L.GRID,
                                                L.GRID: L.MICRO_GRID}
DEFAULT_TOLERANCE_M2 = 1.0

LEVEL_ZH = {L.DISTRICT: "区", L.STREET: "街道", L.ZONE: "片区", L.GRID: "网格",
            L.MICRO_GRID: "微网格", L.BUILDING: "楼栋"}


class ProblemKind(enum.StrEnum):
    BAD_FEATURE = "bad_feature"
    DUPLICATE_CODE = "duplicate_code"
    EXISTS = "exists"
    UNKNOWN_PARENT = "unknown_parent"
    LEVEL_ORDER = "level_order"
    INVALID_GEOMETRY = "invalid_geometry"
    OUTSIDE_PARENT = "outside_parent"
    OVERLAP = "overlap"
    GAP = "gap"


@dataclass(frozen=True)
class Problem:
    code: str
    kind: str
    message_zh: str
    message_en: str

    def message(self, language: str = "zh_CN") -> str:
        return self.message_en if language == "en" else self.message_zh


@dataclass(frozen=True)
class RegionSpec:
    """A region as imported: its parent is named by code; geometry in WGS-84 lon/lat."""

    code: str
    name: str
    level: RegionLevel
    parent_code: str | None
    geometry: BaseGeometry


@dataclass
class ValidationReport:
    checked: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, code: str, kind: ProblemKind, zh: str, en: str) -> None:
        self.problems.append(Problem(code, kind.value, zh, en))

    def codes(self, kind: str | None = None) -> set[str]:
        return {p.code for p in self.problems if kind is None or p.kind == kind}

    def describe(self, limit: int = 50) -> str:
        if self.ok:
            return f"区域校验通过 / regions valid: {self.checked} checked"
        lines = [f"区域校验失败 / regions invalid: {len(self.problems)} problem(s) in "
                 f"{self.checked} regions"]
        for p in self.problems[:limit]:
            lines.append(f"  - {p.code} [{p.kind}] {p.message_zh} / {p.message_en}")
        if len(self.problems) > limit:
            lines.append(f"  … and {len(self.problems) - limit} more")
        return "\n".join(lines)


def _m2(area_deg2: float, lat: float) -> float:
    per_lon, per_lat = metres_per_degree(lat)
    return area_deg2 * per_lon * per_lat


def _where(geometry: BaseGeometry) -> str:
    point = geometry.representative_point()
    return f"({point.x:.6f}, {point.y:.6f})"


def validate_regions(
    specs: Sequence[RegionSpec],
    *,
    tolerance_m2: float = DEFAULT_TOLERANCE_M2,
) -> ValidationReport:
    """Check a complete region set (everything stored plus everything being imported)."""
    report = ValidationReport(checked=len(specs))
    by_code: dict[str, RegionSpec] = {}
    for spec in specs:
        if spec.code in by_code:
            report.add(spec.code, ProblemKind.DUPLICATE_CODE, f"区域编码 {spec.code} 重复",
                       f"region code {spec.code} appears more than once")
            continue
        by_code[spec.code] = spec

    usable: dict[str, RegionSpec] = {}
    for spec in by_code.values():
        geom = spec.geometry
        if geom.is_empty or geom.geom_type not in ("Polygon", "MultiPolygon"):
            report.add(spec.code, ProblemKind.INVALID_GEOMETRY,
                       f"{spec.code} 的几何图形必须是非空的 Polygon 或 MultiPolygon（实际为 "
                       f"{geom.geom_type}）",
                       f"{spec.code}: geometry must be a non-empty Polygon or MultiPolygon, "
                       f"got {geom.geom_type}")
        elif not shapely.is_valid(geom):
            reason = shapely.is_valid_reason(geom)
            report.add(spec.code, ProblemKind.INVALID_GEOMETRY,
                       f"{spec.code} 的多边形无效：{reason}",
                       f"{spec.code}: invalid polygon: {reason}")
        else:
            usable[spec.code] = spec

    children: dict[str, list[RegionSpec]] = defaultdict(list)
    for spec in by_code.values():
        if spec.parent_code is None:
            if spec.level not in ROOT_LEVELS:
                report.add(spec.code, ProblemKind.LEVEL_ORDER,
                           f"{spec.code}（{LEVEL_ZH[spec.level]}）缺少上级区域",
                           f"{spec.code} ({spec.level.value}) has no parent; only a district "
                           "or a street may be a root")
            continue
        parent = by_code.get(spec.parent_code)
        if parent is None:
            report.add(spec.code, ProblemKind.UNKNOWN_PARENT,
                       f"{spec.code} 的上级编码 {spec.parent_code} 不存在",
                       f"{spec.code}: parent code {spec.parent_code} is unknown")
            continue
        expected = PARENT_LEVEL.get(spec.level)
        if parent.level != expected:
            report.add(spec.code, ProblemKind.LEVEL_ORDER,
                       f"层级错误：{LEVEL_ZH[spec.level]} {spec.code} 不能直接隶属于"
                       f"{LEVEL_ZH[parent.level]} {parent.code}",
                       f"level order: a {spec.level.value} ({spec.code}) cannot sit directly "
                       f"under a {parent.level.value} ({parent.code})"
                       + (f"; its parent must be a {expected.value}" if expected else ""))
            continue
        children[parent.code].append(spec)

    for parent_code, kids in children.items():
        parent = usable.get(parent_code)
        good = [k for k in kids if k.code in usable]
        if parent is None or not good:
            continue
        lat = parent.geometry.centroid.y
        _check_inside(report, parent, good, lat, tolerance_m2)
        _check_overlaps(report, good, lat, tolerance_m2)
        tiling = TILING_CHILD.get(parent.level)
        if tiling is not None and len(good) == len(kids):
            _check_gaps(report, parent, [k for k in good if k.level == tiling], lat,
                        tolerance_m2)
    return report


def _check_inside(report: ValidationReport, parent: RegionSpec, kids: list[RegionSpec],
                  lat: float, tolerance_m2: float) -> None:
    shapely.prepare(parent.geometry)
    geoms = np.array([k.geometry for k in kids], dtype=object)
    covered = shapely.covers(parent.geometry, geoms)
    for kid, ok in zip(kids, covered, strict=True):
        if ok:
            continue
        outside = _m2(kid.geometry.difference(parent.geometry).area, lat)
        if outside > tolerance_m2:
            report.add(kid.code, ProblemKind.OUTSIDE_PARENT,
                       f"{kid.code} 有 {outside:.1f} 平方米超出上级区域 {parent.code}",
                       f"{kid.code} extends {outside:.1f} m² outside its parent {parent.code}")


def _check_overlaps(report: ValidationReport, kids: list[RegionSpec], lat: float,
                    tolerance_m2: float) -> None:
    if len(kids) < 2:
        return
    geoms = np.array([k.geometry for k in kids], dtype=object)
    tree = shapely.STRtree(geoms)
    left, right = tree.query(geoms, predicate="intersects")
    pairs = left < right
    left, right = left[pairs], right[pairs]
    if not len(left):
        return
    areas = shapely.area(shapely.intersection(geoms[left], geoms[right]))
    for i, j, area in zip(left.tolist(), right.tolist(), areas.tolist(), strict=True):
        overlap = _m2(area, lat)
        if overlap > tolerance_m2:
            a, b = kids[i], kids[j]
            where = _where(shapely.intersection(a.geometry, b.geometry))
            report.add(a.code, ProblemKind.OVERLAP,
                       f"{a.code} 与同级区域 {b.code} 重叠 {overlap:.1f} 平方米，位置约 {where}",
                       f"{a.code} overlaps its sibling {b.code} by {overlap:.1f} m² near {where}")


def _check_gaps(report: ValidationReport, parent: RegionSpec, kids: list[RegionSpec],
                lat: float, tolerance_m2: float) -> None:
    if not kids:
        return  # a region with no children at the tiling level is a leaf, not a gap
    union = shapely.union_all([k.geometry for k in kids])
    gap = parent.geometry.difference(union)
    gap_m2 = _m2(gap.area, lat)
    if gap_m2 > tolerance_m2:
        level = kids[0].level
        report.add(parent.code, ProblemKind.GAP,
                   f"{parent.code} 有 {gap_m2:.1f} 平方米未被其下级{LEVEL_ZH[level]}覆盖，"
                   f"位置约 {_where(gap)}",
                   f"{parent.code}: {gap_m2:.1f} m² is not covered by its {level.value} "
                   f"children, near {_where(gap)}")
