"""Regions with their GeoJSON polygons (WGS-84) and a materialised path for subtree scopes."""

from __future__ import annotations

import enum

from sqlalchemy import Enum, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from grassroots.db import Base


class RegionLevel(enum.StrEnum):
    DISTRICT = "district"
    STREET = "street"
    ZONE = "zone"
    GRID = "grid"
    MICRO_GRID = "micro_grid"
    BUILDING = "building"


LEVEL_ORDER = list(RegionLevel)


class Region(Base):
    __tablename__ = "region"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(120))
    level: Mapped[RegionLevel] = mapped_column(
        Enum(RegionLevel, native_enum=False, length=20, values_callable=lambda e: [m.value for m in e])
    )
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("region.id"), index=True)
    # "/1/4/19/" — every ancestor id, so a scope check is a prefix match.
    path: Mapped[str] = mapped_column(String(400), index=True, default="/")
    geometry: Mapped[str] = mapped_column(Text)  # GeoJSON geometry, WGS-84 lon/lat
    min_lon: Mapped[float] = mapped_column(Float)
    min_lat: Mapped[float] = mapped_column(Float)
    max_lon: Mapped[float] = mapped_column(Float)
    max_lat: Mapped[float] = mapped_column(Float)
