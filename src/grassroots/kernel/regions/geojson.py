"""GeoJSON in and out of the region tree.

A FeatureCollection whose features carry properties `code`, `name`, `level` (district, street,
zone, grid, micro_grid, building) and `parent_code` (null for a root), with a Polygon or
MultiPolygon in WGS-84 lon/lat; `crs_input: "gcj02"` on a feature converts it from GCJ-02 first.
Export writes the same shape, so an export imports again unchanged.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

import shapely
from sqlalchemy import select
from sqlalchemy.orm import Session

from grassroots.kernel.regions.actions import (
    Actor,
    ImportItem,
    ImportResult,
    geometry_json,
    import_regions,
)
from grassroots.kernel.regions.geo import gcj02_to_wgs84_coordinates
from grassroots.kernel.regions.models import LEVEL_ORDER, Region, RegionLevel
from grassroots.kernel.regions.validate import Problem, ProblemKind, RegionSpec

if TYPE_CHECKING:
    from grassroots.runtime import Runtime

__all__ = ["ImportResult", "export_geojson", "import_geojson", "parse_features"]

MAX_CODE = 40
MAX_NAME = 120
CRS_INPUTS = ("wgs84", "gcj02")


def _bad(label: str, zh: str, en: str) -> Problem:
    return Problem(label, ProblemKind.BAD_FEATURE.value, zh, en)


def _coordinates_problem(coordinates: Any) -> str | None:
    """None if every position is a finite [lon, lat] in range, else what is wrong (English)."""
    stack = [coordinates]
    while stack:
        part = stack.pop()
        if not isinstance(part, list | tuple):
            return "coordinates must be nested lists"
        if part and all(isinstance(v, int | float) and not isinstance(v, bool) for v in part):
            if len(part) < 2 or not all(math.isfinite(v) for v in part):
                return "a position must be [lon, lat] with finite numbers"
            lon, lat = part[0], part[1]
            if not (-180 <= lon <= 180 and -90 <= lat <= 90):
                return (f"position [{lon}, {lat}] is outside lon -180..180 / lat -90..90 "
                        "(longitude and latitude swapped?)")
        else:
            stack.extend(part)
    return None


def _parse_feature(index: int, feature: Any) -> tuple[ImportItem | None, list[Problem]]:
    label = f"#{index + 1}"
    if not isinstance(feature, dict) or feature.get("type") != "Feature":
        return None, [_bad(label, f"第 {index + 1} 个要素不是 GeoJSON Feature",
                           f"feature {index + 1} is not a GeoJSON Feature")]
    props = feature.get("properties")
    if not isinstance(props, dict):
        return None, [_bad(label, f"第 {index + 1} 个要素缺少 properties",
                           f"feature {index + 1} has no properties")]
    problems: list[Problem] = []
    code = props.get("code")
    if not isinstance(code, str) or not code.strip() or len(code.strip()) > MAX_CODE:
        return None, [_bad(label, f"第 {index + 1} 个要素的 code 必须是 1–{MAX_CODE} 个字符",
                           f"feature {index + 1}: code must be a string of 1–{MAX_CODE} "
                           "characters")]
    code = code.strip()
    name = props.get("name")
    if not isinstance(name, str) or not name.strip() or len(name.strip()) > MAX_NAME:
        problems.append(_bad(code, f"{code} 的名称必须是 1–{MAX_NAME} 个字符",
                             f"{code}: name must be a string of 1–{MAX_NAME} characters"))
    level_value = props.get("level")
    try:
        level = RegionLevel(str(level_value))
    except ValueError:
        levels = ", ".join(level.value for level in RegionLevel)
        problems.append(_bad(code, f"{code} 的层级 {level_value!r} 无效，应为 {levels} 之一",
                             f"{code}: level {level_value!r} is not one of {levels}"))
        level = None
    parent_code = props.get("parent_code")
    if parent_code is not None and not isinstance(parent_code, str):
        problems.append(_bad(code, f"{code} 的 parent_code 必须是字符串或 null",
                             f"{code}: parent_code must be a string or null"))
    parent = (parent_code.strip() or None) if isinstance(parent_code, str) else None
    crs = str(props.get("crs_input") or "wgs84").lower()
    if crs not in CRS_INPUTS:
        problems.append(_bad(code, f"{code} 的 crs_input 只能是 wgs84 或 gcj02",
                             f"{code}: crs_input must be wgs84 or gcj02, not {crs!r}"))
    geometry = feature.get("geometry")
    if (not isinstance(geometry, dict)
            or geometry.get("type") not in ("Polygon", "MultiPolygon")
            or "coordinates" not in geometry):
        problems.append(_bad(code, f"{code} 的几何必须是 Polygon 或 MultiPolygon",
                             f"{code}: geometry must be a GeoJSON Polygon or MultiPolygon"))
        return None, problems
    problem = _coordinates_problem(geometry["coordinates"])
    if problem:
        problems.append(_bad(code, f"{code} 的坐标有误：{problem}", f"{code}: {problem}"))
        return None, problems
    if crs == "gcj02":
        geometry = {"type": geometry["type"],
                    "coordinates": gcj02_to_wgs84_coordinates(geometry["coordinates"])}
    try:
        shape = shapely.geometry.shape(geometry)
    except (ValueError, TypeError, IndexError, shapely.errors.GEOSException) as exc:
        problems.append(_bad(code, f"{code} 的几何无法解析：{exc}",
                             f"{code}: geometry cannot be read: {exc}"))
        return None, problems
    if problems or level is None or not isinstance(name, str):
        return None, problems
    spec = RegionSpec(code=code, name=name.strip(), level=level, parent_code=parent,
                      geometry=shape)
    return ImportItem(spec, geometry_json(geometry)), []


def parse_features(data: Any) -> tuple[list[ImportItem], list[Problem]]:
    """Structure checks for a FeatureCollection; the items that passed and every problem."""
    if not isinstance(data, dict) or data.get("type") != "FeatureCollection" or not isinstance(
            data.get("features"), list):
        return [], [_bad("*", "文件不是 GeoJSON FeatureCollection",
                         "the file is not a GeoJSON FeatureCollection")]
    items: list[ImportItem] = []
    problems: list[Problem] = []
    for index, feature in enumerate(data["features"]):
        item, found = _parse_feature(index, feature)
        problems += found
        if item is not None:
            items.append(item)
    if not data["features"]:
        problems.append(_bad("*", "FeatureCollection 中没有要素", "the FeatureCollection is empty"))
    return items, problems


def import_geojson(*, session: Session, actor: Actor, data: dict[str, Any], runtime: Runtime,
                   replace: bool = False) -> ImportResult:
    """Check the whole file, then store all of it in one transaction, or nothing."""
    items, problems = parse_features(data)
    return import_regions(session=session, runtime=runtime, actor=actor, items=items,
                          replace=replace, problems=problems)


def export_geojson(*, session: Session, level: str | None = None) -> dict[str, Any]:
    """The stored regions (optionally one level) as a FeatureCollection, parents first."""
    wanted = RegionLevel(level) if level else None  # ValueError names the bad level
    code_of = dict(session.execute(select(Region.id, Region.code)).tuples().all())
    query = select(Region)
    if wanted is not None:
        query = query.where(Region.level == wanted)
    depth = {lvl: i for i, lvl in enumerate(LEVEL_ORDER)}
    regions = sorted(session.scalars(query), key=lambda r: (depth[r.level], r.code))
    features = [
        {
            "type": "Feature",
            "properties": {
                "code": r.code,
                "name": r.name,
                "level": r.level.value,
                "parent_code": code_of.get(r.parent_id) if r.parent_id is not None else None,
            },
            "geometry": json.loads(r.geometry),
        }
        for r in regions
    ]
    return {"type": "FeatureCollection", "features": features}
