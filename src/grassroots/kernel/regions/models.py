"""Regions with their GeoJSON polygons (WGS-84) and a materialised path for subtree scopes."""

from __future__ import annotations

import enum
import secrets
from typing import Any

from sqlalchemy import Enum, Float, ForeignKey, Index, Integer, String, Text
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


def _new_stamp(_previous: Any) -> int:
    return secrets.randbelow(2**31 - 2) + 1


class Region(Base):
    __tablename__ = "region"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(120))
    level: Mapped[RegionLevel] = mapped_column(
        Enum(RegionLevel, native_enum=False, length=20,
             values_callable=lambda e: [m.value for m in e])
    )
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("region.id"), index=True)
    # "/1/4/19/" — every ancestor id, so a scope check is a prefix match.
    path: Mapped[str] = mapped_column(String(400), index=True, default="/")
    geometry: Mapped[str] = mapped_column(Text)  # GeoJSON geometry, WGS-84 lon/lat
    min_lon: Mapped[float] = mapped_column(Float)
    min_lat: Mapped[float] = mapped_column(Float)
    max_lon: Mapped[float] = mapped_column(Float)
    max_lat: Mapped[float] = mapped_column(Float)
    # A random number renewed by SQLAlchemy on every ORM insert and update of the row (its
    # version counter, so concurrent edits also fail loudly). The locate index is cached per
    # process under (count, max id, sum of stamps), which changes whenever any region does,
    # even after a delete-and-reimport that reuses the same ids.
    stamp: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    __mapper_args__ = {  # noqa: RUF012 (SQLAlchemy reads it as declared)
        "version_id_col": stamp, "version_id_generator": _new_stamp}
    # The tree version (count, max id, sum of stamps) that every intake checks reads only this
    # index (an index-only scan), not the rows with their geometries.
    __table_args__ = (Index("ix_region_id_stamp", "id", "stamp"),)
