"""Region API and map page: locate a point, list and fetch regions, GeoJSON layers, the map.

Every route needs a signed-in user with regions.read, and every answer is cut to the user's data
scope: a grid worker sees their grid and what lies below it, and nothing of any other grid
(a point located in another grid gets the same 404 as a point outside every region).
"""

from __future__ import annotations

import enum
import json
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, Field

from grassroots.kernel.auth.models import User
from grassroots.kernel.auth.roles import Permission
from grassroots.kernel.auth.scope import ensure_region_in_scope, path_in_scope, scope_path
from grassroots.kernel.errors import NotFound
from grassroots.kernel.regions import queries
from grassroots.kernel.regions.geo import gcj02_to_wgs84, gcj02_to_wgs84_array
from grassroots.kernel.regions.locate import OUTSIDE, LocateIndex
from grassroots.kernel.regions.models import Region, RegionLevel
from grassroots.web.deps import LanguageDep, SessionDep, require_permission
from grassroots.web.templating import page_context

router = APIRouter()

Reader = Annotated[User, Depends(require_permission(Permission.REGIONS_READ))]
MAX_BATCH = 100_000
MAP_LEVELS = (RegionLevel.ZONE, RegionLevel.GRID, RegionLevel.MICRO_GRID, RegionLevel.BUILDING)


class Crs(enum.StrEnum):
    WGS84 = "wgs84"
    GCJ02 = "gcj02"


class BatchLocateIn(BaseModel):
    points: list[tuple[float, float]] = Field(
        max_length=MAX_BATCH, description="[lon, lat] pairs, at most 100,000")
    crs: Crs = Crs.WGS84


def _region_json(region: Region) -> dict[str, Any]:
    return {
        "id": region.id,
        "code": region.code,
        "name": region.name,
        "level": region.level.value,
        "parent_id": region.parent_id,
        "path": region.path,
        "bbox": [region.min_lon, region.min_lat, region.max_lon, region.max_lat],
    }


def _visible_leaves(index: LocateIndex, scope: str | None) -> np.ndarray:
    """For each indexed leaf, whether the scope allows it."""
    return np.array([path_in_scope(scope, index.refs[int(rid)].path)
                     for rid in index.leaf_ids.tolist()], dtype=bool)


@router.get("/api/v1/regions/locate", tags=["regions"])
def locate_point(
    user: Reader,
    session: SessionDep,
    lon: Annotated[float, Query(ge=-180, le=180, description="longitude")],
    lat: Annotated[float, Query(ge=-90, le=90, description="latitude")],
    crs: Crs = Crs.WGS84,
) -> dict[str, Any]:
    """The region holding a point, deepest first up to the district."""
    wgs_lon, wgs_lat = gcj02_to_wgs84(lon, lat) if crs == Crs.GCJ02 else (lon, lat)
    path = queries.get_locate_index(session).locate(wgs_lon, wgs_lat)
    if path is None or not path_in_scope(scope_path(session, user), path[0].path):
        raise NotFound("regions.locate.outside", lon=f"{lon:.6f}", lat=f"{lat:.6f}")
    return {"wgs84": [wgs_lon, wgs_lat], "path": [ref.as_dict() for ref in path]}


@router.post("/api/v1/regions/locate", tags=["regions"])
def locate_points(user: Reader, session: SessionDep, body: BatchLocateIn) -> dict[str, Any]:
    """Many points at once: `ids[i]` is the deepest region of point i (null outside the scope);
    `regions` describes each id found, with its ancestors' ids."""
    points = np.asarray(body.points, dtype=np.float64).reshape(-1, 2)
    lons, lats = points[:, 0], points[:, 1]
    if body.crs == Crs.GCJ02:
        lons, lats = gcj02_to_wgs84_array(lons, lats)
    index = queries.get_locate_index(session)
    leaves = index.locate_leaves(lons, lats)
    visible = _visible_leaves(index, scope_path(session, user))
    found = leaves != OUTSIDE
    found[found] = visible[leaves[found]]
    ids = np.where(found, np.concatenate(([OUTSIDE], index.leaf_ids))[leaves + 1], OUTSIDE)
    regions = {}
    for rid in np.unique(ids[found]).tolist():
        chain = index.path_of(rid)
        regions[str(rid)] = {**chain[0].as_dict(), "path": [ref.id for ref in chain]}
    return {
        "count": len(ids),
        "located": int(found.sum()),
        "ids": [None if i == OUTSIDE else i for i in ids.tolist()],
        "regions": regions,
    }


@router.get("/api/v1/regions", tags=["regions"])
def list_regions(
    user: Reader,
    session: SessionDep,
    level: RegionLevel | None = None,
    parent: Annotated[int | None, Query(description="parent region id")] = None,
    parent_code: Annotated[str | None, Query(description="parent region code")] = None,
) -> dict[str, Any]:
    """Regions within the user's scope, optionally of one level and/or under one parent."""
    scope = scope_path(session, user)
    if parent_code is not None:
        found = queries.region_by_code(session=session, code=parent_code, scope=None)
        if found is None:
            return {"regions": []}
        parent = found.id
    rows = queries.list_regions(session=session, scope=scope, level=level, parent_id=parent)
    return {"regions": [_region_json(r) for r in rows]}


@router.get("/api/v1/regions.geojson", tags=["regions"])
def regions_geojson(
    user: Reader,
    session: SessionDep,
    level: RegionLevel = RegionLevel.ZONE,
) -> Response:
    """One level of the user's regions as a FeatureCollection (WGS-84), for the map."""
    rows = queries.list_regions(session=session, scope=scope_path(session, user), level=level)
    # Geometry is stored as GeoJSON text: splice it in rather than parse and re-serialise.
    features = ",".join(
        '{"type":"Feature","id":' + str(r.id) + ',"properties":'
        + json.dumps({"id": r.id, "code": r.code, "name": r.name, "level": r.level.value,
                      "parent_id": r.parent_id}, ensure_ascii=False)
        + ',"geometry":' + r.geometry + "}"
        for r in rows
    )
    body = '{"type":"FeatureCollection","features":[' + features + "]}"
    return Response(body, media_type="application/geo+json")


@router.get("/api/v1/regions/{region_id}", tags=["regions"])
def get_region(region_id: int, user: Reader, session: SessionDep) -> dict[str, Any]:
    """One region with its outline and ancestors; 404 when it is outside the user's scope."""
    region = ensure_region_in_scope(session, user, session.get(Region, region_id))
    ancestors = queries.path_up(session=session, region=region)[1:]
    return {
        **_region_json(region),
        "geometry": json.loads(region.geometry),
        "ancestors": [{"id": a.id, "code": a.code, "name": a.name, "level": a.level.value}
                      for a in ancestors],
    }


@router.get("/regions", response_class=HTMLResponse, include_in_schema=False)
def regions_page(request: Request, user: Reader, language: LanguageDep) -> Response:
    """The map of zones, grids and micro-grids with click-to-identify and a lon/lat search."""
    settings = request.app.state.runtime.settings
    config = {
        "tileUrl": settings.tile_url or "",
        "levels": [level.value for level in MAP_LEVELS],
        "microGridMinZoom": 15,
        "buildingMinZoom": 17,
    }
    templates = request.app.state.templates
    return templates.TemplateResponse(
        request, "regions/map.html",
        page_context(request, user=user, lang=language, map_config=config),
    )
