"""Data scope: a user sees the region subtree rooted at their scope region (None = everything)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from sqlalchemy import ColumnElement, select, true
from sqlalchemy.orm import InstrumentedAttribute, Session

from grassroots.kernel.auth.models import User
from grassroots.kernel.errors import NotFound
from grassroots.kernel.regions.models import Region


class _HasPath(Protocol):
    @property
    def path(self) -> str: ...


class Scoped(Protocol):
    """A user, or anything standing for one, with a scope region (None = everything)."""

    @property
    def scope_region_id(self) -> int | None: ...


def scope_path(session: Session, user: User | Scoped,
               known: Mapping[int, _HasPath] | None = None) -> str | None:
    """The materialised path of the user's scope region, e.g. '/1/4/19/'; None means unlimited.

    Only the path column is read (never the region's geometry). `known` is a map of region id
    to something with that region's current path (a LocateIndex's refs, checked against the
    tree's version in this request): a scope region found there costs no query.
    """
    region_id = user.scope_region_id
    if region_id is None:
        return None
    if known is not None:
        ref = known.get(region_id)
        if ref is not None:
            return ref.path
    path = session.scalar(select(Region.path).where(Region.id == region_id))
    if path is None:  # a dangling scope must never widen access
        return "/nonexistent/"
    return path


def path_in_scope(scope: str | None, region_path: str) -> bool:
    return scope is None or region_path.startswith(scope)


def scope_clause(scope: str | None, path_column: InstrumentedAttribute[str]) -> ColumnElement[bool]:
    """A WHERE clause limiting rows whose region path column lies in the scope."""
    if scope is None:
        return true()
    return path_column.startswith(scope, autoescape=True)


def ensure_region_in_scope(session: Session, user: User, region: Region | None) -> Region:
    """The region if the user may see it; else 404, so out-of-scope ids cannot be probed."""
    if region is None or not path_in_scope(scope_path(session, user), region.path):
        raise NotFound()
    return region
