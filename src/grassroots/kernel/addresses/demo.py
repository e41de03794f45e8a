"""Demo standard addresses: one per building of the demo street, each with one door plate.

It reads the region tree already in the database (the kernel imports no demo code), so it works
for any tree that has building regions.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import shapely
from sqlalchemy import select
from sqlalchemy.orm import Session

from grassroots.kernel.addresses.actions import (
    NewAddress,
    existing_codes,
    register_located_addresses,
)
from grassroots.kernel.addresses.models import CODE_MAX, TEXT_MAX
from grassroots.kernel.regions.models import Region, RegionLevel

if TYPE_CHECKING:
    from grassroots.runtime import Runtime

SEED_ACTOR = "seed"
# The demo tree starts at the district (江津区); the city is not a region of it.
ADDRESS_PREFIX = "重庆市江津区"
COORDINATE_DECIMALS = 7  # about 1 cm, like the demo outlines themselves
# Levels whose names make up the address, from the street down to the building.
NAMED_LEVELS = frozenset({RegionLevel.STREET, RegionLevel.ZONE, RegionLevel.GRID,
                          RegionLevel.MICRO_GRID, RegionLevel.BUILDING})


def _join_names(names: list[str]) -> str:
    """Concatenate, with "·" where two numbers would otherwise run together:
    "微网格3-2" + "1栋" reads "微网格3-2·1栋", not "微网格3-21栋"."""
    text = ""
    for name in names:
        if text and text[-1].isdigit() and name[:1].isdigit():
            text += "·"
        text += name
    return text


def building_address_text(building: Region, regions: dict[int, Region]) -> str:
    """'重庆市江津区双福街道双福新区片区第3网格微网格3-2·1栋': the building's ancestors from
    the street down (levels above the street are skipped; the walk is cycle-safe)."""
    chain: list[Region] = []
    seen: set[int] = set()
    current: Region | None = building
    while current is not None and current.id not in seen:
        seen.add(current.id)
        chain.append(current)
        current = regions.get(current.parent_id) if current.parent_id is not None else None
    names = [r.name.strip() for r in reversed(chain) if r.level in NAMED_LEVELS]
    return (ADDRESS_PREFIX + _join_names(names))[:TEXT_MAX]


def demo_addresses(session: Session) -> list[NewAddress]:
    """An address for every building region whose code is not registered yet, by code."""
    regions = {r.id: r for r in session.scalars(select(Region))}
    buildings = sorted((r for r in regions.values() if r.level == RegionLevel.BUILDING),
                       key=lambda r: r.code)
    taken = existing_codes(session, (b.code for b in buildings))
    wanted = [b for b in buildings if b.code not in taken and len(b.code) <= CODE_MAX]
    if not wanted:
        return []
    # One vectorised parse and centroid for every outline instead of a loop of json.loads.
    centroids = shapely.centroid(shapely.from_geojson([b.geometry for b in wanted]))
    lons, lats = shapely.get_x(centroids), shapely.get_y(centroids)
    return [NewAddress(code=b.code, text=building_address_text(b, regions),
                       lon=round(float(x), COORDINATE_DECIMALS),
                       lat=round(float(y), COORDINATE_DECIMALS), region_id=b.id)
            for b, x, y in zip(wanted, lons, lats, strict=True)]


def seed_demo_addresses(*, session: Session, runtime: Runtime, progress: bool = False) -> int:
    """One address and one door plate per building without one yet; returns how many were made.

    A second run creates nothing. One bulk insert per table and one audit row for the batch,
    so the demo street's ~2,000 buildings take well under a second.
    """
    items = demo_addresses(session)
    if not items:
        return 0
    if progress:
        sys.stderr.write(f"  registering {len(items)} demo standard addresses and door plates…\n")
    return register_located_addresses(session=session, runtime=runtime, actor=SEED_ACTOR,
                                      items=items, issue_plates=True, source="demo buildings")
