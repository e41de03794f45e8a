"""Reads of the address register: resolve a plate, a code or a typed address to its point."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from grassroots.kernel.addresses.models import DoorPlate, StandardAddress
from grassroots.kernel.addresses.normalize import lookup_keys
from grassroots.kernel.auth.scope import scope_clause
from grassroots.kernel.regions.models import Region

LIST_LIMIT_MAX = 500


@dataclass(frozen=True)
class ResolvedAddress:
    """A live standard address and its point; `plate_token` is the plate it was found by."""

    address_id: int
    code: str
    text: str
    lon: float
    lat: float
    region_id: int | None
    plate_token: str | None = None


def _resolved(address: StandardAddress, plate_token: str | None = None) -> ResolvedAddress:
    return ResolvedAddress(address_id=address.id, code=address.code, text=address.text,
                           lon=address.lon, lat=address.lat, region_id=address.region_id,
                           plate_token=plate_token)


def get_by_plate(*, session: Session, token: str) -> ResolvedAddress | None:
    """The address of an active plate; None for an unknown or revoked plate or a retired address."""
    address = session.scalar(
        select(StandardAddress)
        .join(DoorPlate, DoorPlate.address_id == StandardAddress.id)
        .where(DoorPlate.token == token, DoorPlate.revoked_at.is_(None),
               StandardAddress.retired_at.is_(None)))
    return _resolved(address, plate_token=token) if address is not None else None


def get_by_code(*, session: Session, code: str) -> ResolvedAddress | None:
    """The live (not retired) address with this standard address code."""
    address = session.scalar(select(StandardAddress).where(
        StandardAddress.code == code, StandardAddress.retired_at.is_(None)))
    return _resolved(address) if address is not None else None


def match_text(*, session: Session, text: str) -> ResolvedAddress | None:
    """The live address whose normalised text is the longest key of `text`; ties: smallest id."""
    keys = lookup_keys(text)
    if not keys:
        return None
    address = session.scalar(
        select(StandardAddress)
        .where(StandardAddress.normalized.in_(keys), StandardAddress.retired_at.is_(None))
        .order_by(func.length(StandardAddress.normalized).desc(), StandardAddress.id)
        .limit(1))
    return _resolved(address) if address is not None else None


def resolve(*, session: Session, address_id: str | None = None,
            text: str | None = None) -> ResolvedAddress | None:
    """Resolve what an intake was given: `address_id` (a door-plate token, else a standard
    address code), then, when that finds nothing, the typed `text`. None when neither matches.

    Plates are tried first: a token is what a scanned QR code sends, and tokens and codes do not
    collide in practice (22 random URL-safe characters against an administrative code).
    """
    wanted = (address_id or "").strip()
    if wanted:
        found = (get_by_plate(session=session, token=wanted)
                 or get_by_code(session=session, code=wanted))
        if found is not None:
            return found
    if text and text.strip():
        return match_text(session=session, text=text)
    return None


def active_plates(*, session: Session, address_id: int) -> Sequence[DoorPlate]:
    """The unrevoked plates of an address, oldest first."""
    return session.scalars(
        select(DoorPlate)
        .where(DoorPlate.address_id == address_id, DoorPlate.revoked_at.is_(None))
        .order_by(DoorPlate.id)).all()


def list_addresses(*, session: Session, region_path_prefix: str | None = None,
                   limit: int = 100, offset: int = 0,
                   include_retired: bool = False) -> Sequence[StandardAddress]:
    """Addresses ordered by code; with `region_path_prefix` (a materialised path such as a data
    scope, '/1/4/'), only those whose region lies in that subtree."""
    query = select(StandardAddress)
    if region_path_prefix is not None:
        query = query.join(Region, Region.id == StandardAddress.region_id).where(
            scope_clause(region_path_prefix, Region.path))
    if not include_retired:
        query = query.where(StandardAddress.retired_at.is_(None))
    limit = max(0, min(limit, LIST_LIMIT_MAX))
    return session.scalars(
        query.order_by(StandardAddress.code).limit(limit).offset(max(0, offset))).all()


def active_plate_rows(*, session: Session) -> list[tuple[str, str, str]]:
    """(token, address code, address text) of every plate in use, by address code."""
    rows = session.execute(
        select(DoorPlate.token, StandardAddress.code, StandardAddress.text)
        .join(StandardAddress, StandardAddress.id == DoorPlate.address_id)
        .where(DoorPlate.revoked_at.is_(None), StandardAddress.retired_at.is_(None))
        .order_by(StandardAddress.code, DoorPlate.id)).tuples().all()
    return [(token, code, text) for token, code, text in rows]
