"""Reads behind the GeoReport endpoints: the service list, requests and their updates.

Who asks decides what is seen. The public (no api_key) sees every incident except those of
PRIVATE_MAJOR_CLASSES and police work; a client presenting its api_key also sees its own such
requests, and gets their full address and its own contact references back.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, and_, false, func, not_, or_, select
from sqlalchemy.orm import Session

from grassroots.command.models import Deadline, Incident, IncidentCategory, IncidentTransition
from grassroots.command.open311 import PRIVATE_MAJOR_CLASSES
from grassroots.command.open311.models import Open311Request
from grassroots.command.states import Channel, DeadlineKind, IncidentState
from grassroots.kernel.regions.models import Region


@dataclass(frozen=True)
class RequestRow:
    """One incident as a service request, with what the listing needs from other tables."""

    incident: Incident
    category: IncidentCategory
    own: bool  # submitted by the client that asks
    zone_name: str | None
    handling_due: datetime | None
    updated_at: datetime
    duplicate_of: str | None
    extra: Open311Request | None


@dataclass(frozen=True)
class UpdateRow:
    transition: IncidentTransition
    incident: Incident
    own: bool


def _private() -> ColumnElement[bool]:
    return or_(IncidentCategory.is_police.is_(True),
               IncidentCategory.major_code.in_(sorted(PRIVATE_MAJOR_CLASSES)))


def _own(viewer: str | None) -> ColumnElement[bool]:
    if viewer is None:
        return false()
    return and_(Incident.channel == Channel.OPEN311, Incident.client_ref == viewer)


def _visible(viewer: str | None) -> ColumnElement[bool]:
    return or_(not_(_private()), _own(viewer))


def _is_own(incident: Incident, viewer: str | None) -> bool:
    return (viewer is not None and incident.channel == Channel.OPEN311
            and incident.client_ref == viewer)


def list_services(*, session: Session) -> list[IncidentCategory]:
    """Active categories in catalogue order (each one a service)."""
    return list(session.scalars(select(IncidentCategory)
                                .where(IncidentCategory.active.is_(True))
                                .order_by(IncidentCategory.sort_order, IncidentCategory.code)))


def get_service(*, session: Session, code: str) -> IncidentCategory | None:
    return session.scalars(select(IncidentCategory).where(
        IncidentCategory.code == code, IncidentCategory.active.is_(True))).first()


def catalogue_changed_at(*, session: Session) -> datetime | None:
    return session.scalar(select(func.max(IncidentCategory.updated_at)))


def find_requests(*, session: Session, viewer: str | None,
                  numbers: Sequence[str] | None = None,
                  service_codes: Collection[str] | None = None,
                  start: datetime | None = None, end: datetime | None = None,
                  states: Collection[IncidentState] | None = None,
                  limit: int = 1000, offset: int = 0) -> list[RequestRow]:
    """Requests newest first. `numbers` (public incident numbers) overrides every other filter."""
    stmt = (select(Incident, IncidentCategory)
            .join(IncidentCategory, IncidentCategory.id == Incident.category_id)
            .where(_visible(viewer)))
    if numbers is not None:
        stmt = stmt.where(Incident.number.in_(list(numbers)))
    else:
        if service_codes:
            stmt = stmt.where(IncidentCategory.code.in_(list(service_codes)))
        if start is not None:
            stmt = stmt.where(Incident.received_at >= start)
        if end is not None:
            stmt = stmt.where(Incident.received_at <= end)
        if states is not None:
            stmt = stmt.where(Incident.state.in_(list(states)))
    stmt = stmt.order_by(Incident.received_at.desc(), Incident.id.desc()).limit(limit)
    rows = session.execute(stmt.offset(offset)).all()
    return _with_details(session, [(incident, category) for incident, category in rows], viewer)


def _with_details(session: Session, rows: list[tuple[Incident, IncidentCategory]],
                  viewer: str | None) -> list[RequestRow]:
    ids = [incident.id for incident, _ in rows]
    if not ids:
        return []
    updated = dict(session.execute(
        select(IncidentTransition.incident_id, func.max(IncidentTransition.at))
        .where(IncidentTransition.incident_id.in_(ids))
        .group_by(IncidentTransition.incident_id)).tuples().all())
    due: dict[int, datetime] = {}
    for incident_id, due_at in session.execute(
            select(Deadline.incident_id, Deadline.due_at)
            .where(Deadline.incident_id.in_(ids), Deadline.kind == DeadlineKind.HANDLING)
            .order_by(Deadline.id)).tuples():
        due[incident_id] = due_at  # the latest handling clock wins
    zone_ids = {incident.zone_id for incident, _ in rows if incident.zone_id is not None}
    zones = dict(session.execute(select(Region.id, Region.name)
                                 .where(Region.id.in_(zone_ids))).tuples().all()) \
        if zone_ids else {}
    originals = {incident.duplicate_of_id for incident, _ in rows
                 if incident.duplicate_of_id is not None}
    numbers = dict(session.execute(select(Incident.id, Incident.number)
                                   .where(Incident.id.in_(originals))).tuples().all()) \
        if originals else {}
    extras = {extra.incident_id: extra for extra in session.scalars(
        select(Open311Request).where(Open311Request.incident_id.in_(ids)))}
    return [RequestRow(
        incident=incident, category=category, own=_is_own(incident, viewer),
        zone_name=zones.get(incident.zone_id) if incident.zone_id is not None else None,
        handling_due=due.get(incident.id),
        updated_at=updated.get(incident.id) or incident.received_at,
        duplicate_of=numbers.get(incident.duplicate_of_id)
        if incident.duplicate_of_id is not None else None,
        extra=extras.get(incident.id)) for incident, category in rows]


def find_by_number(*, session: Session, viewer: str | None, number: str) -> RequestRow | None:
    rows = find_requests(session=session, viewer=viewer, numbers=[number], limit=1)
    return rows[0] if rows else None


def find_updates(*, session: Session, viewer: str | None, start: datetime, end: datetime,
                 numbers: Sequence[str] | None = None, limit: int = 1000,
                 offset: int = 0) -> list[UpdateRow]:
    """Every saved transition in the window (oldest first), each one an update of its request."""
    stmt = (select(IncidentTransition, Incident)
            .join(Incident, Incident.id == IncidentTransition.incident_id)
            .join(IncidentCategory, IncidentCategory.id == Incident.category_id)
            .where(_visible(viewer), IncidentTransition.at >= start,
                   IncidentTransition.at <= end))
    if numbers is not None:
        stmt = stmt.where(Incident.number.in_(list(numbers)))
    stmt = stmt.order_by(IncidentTransition.at, IncidentTransition.id).limit(limit).offset(offset)
    return [UpdateRow(transition=transition, incident=incident, own=_is_own(incident, viewer))
            for transition, incident in session.execute(stmt).tuples()]
