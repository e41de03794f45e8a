"""Reads of the region tree, every list limited to a data scope, and the cached locate index."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from sqlalchemy import Select, case, func, select
from sqlalchemy.orm import Session

from grassroots.kernel.auth.scope import path_in_scope, scope_clause
from grassroots.kernel.regions.locate import DEFAULT_MAX_SIDE, LocateIndex
from grassroots.kernel.regions.models import LEVEL_ORDER, Region, RegionLevel

_LEVEL_RANK = case({level: i for i, level in enumerate(LEVEL_ORDER)}, value=Region.level)


def region_by_id(*, session: Session, region_id: int, scope: str | None = None) -> Region | None:
    """The region, or None when it does not exist or lies outside the scope."""
    region = session.get(Region, region_id)
    if region is None or not path_in_scope(scope, region.path):
        return None
    return region


def region_by_code(*, session: Session, code: str, scope: str | None = None) -> Region | None:
    region = session.scalar(select(Region).where(Region.code == code))
    if region is None or not path_in_scope(scope, region.path):
        return None
    return region


def list_regions(
    *,
    session: Session,
    scope: str | None,
    level: RegionLevel | None = None,
    parent_id: int | None = None,
    under: str | None = None,
) -> Sequence[Region]:
    """Regions in the scope, optionally one level, the children of one parent, or a subtree
    (`under` is a materialised path); ordered from the top level down, then by code."""
    query = select(Region).where(scope_clause(scope, Region.path))
    if level is not None:
        query = query.where(Region.level == level)
    if parent_id is not None:
        query = query.where(Region.parent_id == parent_id)
    if under is not None:
        query = query.where(scope_clause(under, Region.path))
    return session.scalars(query.order_by(_LEVEL_RANK, Region.code)).all()


def subtree(*, session: Session, root: Region, scope: str | None) -> Sequence[Region]:
    """The root and everything below it that the scope allows."""
    return list_regions(session=session, scope=scope, under=root.path)


def children(*, session: Session, region_id: int, scope: str | None) -> Sequence[Region]:
    return list_regions(session=session, scope=scope, parent_id=region_id)


def path_up(*, session: Session, region: Region) -> list[Region]:
    """The region and its ancestors, deepest first (read from its materialised path)."""
    ids = [int(part) for part in region.path.strip("/").split("/") if part]
    rows = {r.id: r for r in session.scalars(select(Region).where(Region.id.in_(ids)))}
    return [rows[i] for i in reversed(ids) if i in rows]


# --- the locate index, built once per process and database, rebuilt when regions change ------

_cache: dict[str, tuple[tuple[int, int, int], LocateIndex]] = {}
_cache_lock = threading.Lock()


def tree_version_query() -> Select[tuple[int, int, int]]:
    """The query behind tree_version, for callers that fold it into a query of their own."""
    return select(func.count(Region.id), func.coalesce(func.max(Region.id), 0),
                  func.coalesce(func.sum(Region.stamp), 0))


def tree_version(session: Session) -> tuple[int, int, int]:
    """(count, max id, sum of row stamps): changes whenever any region row is written."""
    count, max_id, stamps = session.execute(tree_version_query()).one()
    return int(count), int(max_id), int(stamps)


def build_locate_index(*, session: Session, max_side: int = DEFAULT_MAX_SIDE) -> LocateIndex:
    """A fresh index over every stored region (about half a second for the demo street)."""
    version = tree_version(session)
    return LocateIndex.from_regions(session.scalars(select(Region)), max_side=max_side,
                                    version=version)


def get_locate_index(session: Session,
                     version: tuple[int, int, int] | None = None) -> LocateIndex:
    """The cached index for this database, rebuilt when the tree's version has changed.

    `version` is tree_version(session) when the caller has just read it.
    """
    key = session.get_bind().engine.url.render_as_string(hide_password=True)
    if version is None:
        version = tree_version(session)
    cached = _cache.get(key)
    if cached is not None and cached[0] == version:
        return cached[1]
    with _cache_lock:  # one build at a time; a racing thread reuses the fresh result
        cached = _cache.get(key)
        if cached is not None and cached[0] == version:
            return cached[1]
        index = build_locate_index(session=session)
        _cache[key] = (version, index)
        return index


def clear_locate_cache() -> None:
    with _cache_lock:
        _cache.clear()
