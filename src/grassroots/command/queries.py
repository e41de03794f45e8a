"""Reads for pages, the API and the actions: incidents, their history, rosters and clocks."""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from grassroots.command.models import (
    Assignment,
    Deadline,
    DutyShift,
    Incident,
    IncidentCategory,
    IncidentTransition,
    Notice,
    ReinforcementRequest,
    ResponderStatus,
)
from grassroots.command.states import (
    FIELD_ROLES,
    POSITION_STALE_AFTER,
    DeadlineState,
    IncidentState,
    ResponderState,
    ResponseRole,
    UnitType,
    haversine_m,
    normalize_phone,
)
from grassroots.kernel.auth.models import User
from grassroots.kernel.auth.scope import scope_clause, scope_path
from grassroots.kernel.crypto import CryptoProvider

PHONE_CONTEXT = "incident.reporter_phone"
NAME_CONTEXT = "incident.reporter_name"
_METRES_PER_DEGREE = 111_320.0


def get_incident(*, session: Session, incident_id: int) -> Incident | None:
    return session.get(Incident, incident_id)


def get_incident_by_number(*, session: Session, number: str) -> Incident | None:
    return session.scalars(select(Incident).where(Incident.number == number)).first()


def find_by_idempotency_key(*, session: Session, channel: str, client_ref: str,
                            key: str) -> Incident | None:
    return session.scalars(select(Incident).where(
        Incident.channel == channel, Incident.client_ref == client_ref,
        Incident.idempotency_key == key)).first()


def find_by_reporter_phone(*, session: Session, crypto: CryptoProvider,
                           phone: str) -> list[Incident]:
    """Earlier incidents from the same caller, newest first, found by the blind index."""
    index = crypto.blind_index(normalize_phone(phone), context=PHONE_CONTEXT)
    return list(session.scalars(select(Incident).where(Incident.reporter_phone_index == index)
                                .order_by(Incident.received_at.desc())))


def get_category(*, session: Session, code: str) -> IncidentCategory | None:
    return session.scalars(select(IncidentCategory).where(IncidentCategory.code == code)).first()


def list_categories(*, session: Session, include_inactive: bool = False) -> list[IncidentCategory]:
    stmt = select(IncidentCategory).order_by(IncidentCategory.sort_order, IncidentCategory.code)
    if not include_inactive:
        stmt = stmt.where(IncidentCategory.active.is_(True))
    return list(session.scalars(stmt))


def list_incidents(*, session: Session, user: User | None = None,
                   states: Collection[IncidentState] | None = None, zone_id: int | None = None,
                   category_id: int | None = None, limit: int = 100,
                   offset: int = 0) -> list[Incident]:
    """Incidents newest first, limited to the user's data scope when a user is given."""
    stmt = select(Incident)
    if user is not None:
        stmt = stmt.where(scope_clause(scope_path(session, user), Incident.region_path))
    if states:
        stmt = stmt.where(Incident.state.in_(list(states)))
    if zone_id is not None:
        stmt = stmt.where(Incident.zone_id == zone_id)
    if category_id is not None:
        stmt = stmt.where(Incident.category_id == category_id)
    stmt = stmt.order_by(Incident.received_at.desc(), Incident.id.desc())
    return list(session.scalars(stmt.limit(limit).offset(offset)))


def transitions_of(*, session: Session, incident_id: int) -> list[IncidentTransition]:
    return list(session.scalars(select(IncidentTransition)
                                .where(IncidentTransition.incident_id == incident_id)
                                .order_by(IncidentTransition.id)))


def assignments_of(*, session: Session, incident_id: int, active_only: bool = False,
                   roles: Collection[ResponseRole] | None = None) -> list[Assignment]:
    stmt = select(Assignment).where(Assignment.incident_id == incident_id)
    if active_only:
        stmt = stmt.where(Assignment.ended_at.is_(None))
    if roles:
        stmt = stmt.where(Assignment.role.in_(list(roles)))
    return list(session.scalars(stmt.order_by(Assignment.id)))


def handler_ids(*, session: Session, incident_id: int) -> frozenset[int]:
    """Everyone who recorded the work as handled, for the check-by-someone-else rule."""
    return frozenset(session.scalars(select(Assignment.user_id).where(
        Assignment.incident_id == incident_id, Assignment.role == ResponseRole.HANDLER)))


def deadlines_of(*, session: Session, incident_id: int,
                 open_only: bool = False) -> list[Deadline]:
    stmt = select(Deadline).where(Deadline.incident_id == incident_id)
    if open_only:
        stmt = stmt.where(Deadline.state == DeadlineState.OPEN)
    return list(session.scalars(stmt.order_by(Deadline.id)))


def reinforcement_requests_of(*, session: Session,
                              incident_id: int) -> list[ReinforcementRequest]:
    return list(session.scalars(select(ReinforcementRequest)
                                .where(ReinforcementRequest.incident_id == incident_id)
                                .order_by(ReinforcementRequest.id)))


def notices_of(*, session: Session, incident_id: int) -> list[Notice]:
    return list(session.scalars(select(Notice).where(Notice.incident_id == incident_id)
                                .order_by(Notice.id)))


def notices_for(*, session: Session, user: User, unread_only: bool = True,
                limit: int = 100) -> list[Notice]:
    """Notices addressed to the user, or to their role within their data scope."""
    scope = scope_path(session, user)
    stmt = (select(Notice).join(Incident, Incident.id == Notice.incident_id)
            .where(or_(Notice.to_user_id == user.id,
                       (Notice.to_role == user.role)
                       & scope_clause(scope, Incident.region_path))))
    if unread_only:
        stmt = stmt.where(Notice.read_at.is_(None))
    return list(session.scalars(stmt.order_by(Notice.at.desc(), Notice.id.desc()).limit(limit)))


def duplicate_candidates(*, session: Session, category: IncidentCategory, lon: float | None,
                         lat: float | None, at: datetime,
                         exclude_id: int | None = None) -> list[Incident]:
    """Open incidents of the same category within the category's radius and window, nearest first.

    The bounding box keeps the scan small; the haversine distance decides.
    """
    radius, window = category.duplicate_radius_m, category.duplicate_window_min
    if lon is None or lat is None or radius <= 0 or window <= 0:
        return []
    dlat = radius / _METRES_PER_DEGREE
    dlon = dlat / max(0.01, math.cos(math.radians(lat)))
    stmt = select(Incident).where(
        Incident.category_id == category.id,
        Incident.received_at >= at - timedelta(minutes=window),
        Incident.received_at <= at,
        Incident.state.not_in([IncidentState.CLOSED, IncidentState.VOIDED]),
        Incident.lon.between(lon - dlon, lon + dlon),
        Incident.lat.between(lat - dlat, lat + dlat),
    )
    if exclude_id is not None:
        stmt = stmt.where(Incident.id != exclude_id)
    found = []
    for incident in session.scalars(stmt):
        assert incident.lon is not None and incident.lat is not None
        distance = haversine_m(lon, lat, incident.lon, incident.lat)
        if distance <= radius:
            found.append((distance, incident.id, incident))
    return [incident for _, _, incident in sorted(found, key=lambda t: (t[0], t[1]))]


@dataclass(frozen=True)
class Candidate:
    """Someone on duty who could be sent, with how far away they were last seen."""

    user_id: int
    state: ResponderState
    distance_m: float | None
    has_status: bool


def on_duty(*, session: Session, zone_id: int, unit_type: UnitType | str, at: datetime,
            lon: float | None = None, lat: float | None = None) -> list[Candidate]:
    """Everyone on a shift covering `at` for the zone and unit: available first, nearest first.

    A responder with no status yet counts as available with no known position; a position
    older than POSITION_STALE_AFTER counts as unknown.
    """
    rows = session.execute(
        select(DutyShift.user_id, ResponderStatus)
        .join(User, User.id == DutyShift.user_id)
        .outerjoin(ResponderStatus, ResponderStatus.user_id == DutyShift.user_id)
        .where(DutyShift.zone_id == zone_id, DutyShift.unit_type == unit_type,
               DutyShift.starts_at <= at, DutyShift.ends_at > at, User.is_active.is_(True))
    ).all()
    seen: dict[int, Candidate] = {}
    for user_id, status in rows:
        state = status.state if status is not None else ResponderState.AVAILABLE
        if state == ResponderState.OFF:
            continue
        distance = None
        if (status is not None and status.lon is not None and status.lat is not None
                and status.position_at is not None and lon is not None and lat is not None
                and at - status.position_at <= POSITION_STALE_AFTER):
            distance = haversine_m(lon, lat, status.lon, status.lat)
        seen[user_id] = Candidate(user_id, state, distance, status is not None)
    return sorted(seen.values(), key=lambda c: (
        c.state != ResponderState.AVAILABLE, c.distance_m is None, c.distance_m or 0.0,
        c.user_id))


def active_field_user_ids(*, session: Session, incident_id: int,
                          roles: Collection[ResponseRole] = FIELD_ROLES) -> list[int]:
    return list(session.scalars(select(Assignment.user_id).where(
        Assignment.incident_id == incident_id, Assignment.ended_at.is_(None),
        Assignment.role.in_(list(roles))).order_by(Assignment.id)))


def latest_transition_at(*, session: Session, incident_id: int, action: str) -> datetime | None:
    return session.scalars(select(IncidentTransition.at).where(
        IncidentTransition.incident_id == incident_id, IncidentTransition.action == action)
        .order_by(IncidentTransition.id.desc()).limit(1)).first()
