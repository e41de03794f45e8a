"""Reads for pages, the API and the actions: incidents, their history, rosters and clocks."""

from __future__ import annotations

import enum
import functools
import json
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    DateTime,
    Float,
    Integer,
    Select,
    String,
    and_,
    any_,
    bindparam,
    column,
    exists,
    func,
    or_,
    select,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session, aliased
from sqlalchemy.types import TypeEngine

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
from grassroots.command.police import TRANSFER_TO_POLICE
from grassroots.command.states import (
    EARTH_RADIUS_M,
    FIELD_RESPONDER_ROLES,
    FIELD_ROLES,
    OPEN_STATES,
    POSITION_STALE_AFTER,
    TERMINAL_STATES,
    TRANSITIONS,
    Action,
    Channel,
    DeadlineKind,
    DeadlineLevel,
    DeadlineState,
    IncidentState,
    ResponderState,
    ResponseRole,
    Tier,
    TransitionContext,
    UnitType,
    check_transition,
    haversine_m,
    next_tier,
    normalize_phone,
)
from grassroots.kernel.auth.models import User
from grassroots.kernel.auth.roles import Permission, Role, has_permission
from grassroots.kernel.auth.scope import path_in_scope, scope_clause, scope_path
from grassroots.kernel.clock import to_display
from grassroots.kernel.crypto import CryptoProvider
from grassroots.kernel.errors import GrassrootsError, NotFound
from grassroots.kernel.personal import mask_name, mask_phone
from grassroots.kernel.regions.models import Region

PHONE_CONTEXT = "incident.reporter_phone"
NAME_CONTEXT = "incident.reporter_name"
_BOX_MARGIN_DEG = 1e-9  # about 0.1 mm


def get_incident(*, session: Session, incident_id: int) -> Incident | None:
    return session.get(Incident, incident_id)


def get_incident_by_number(*, session: Session, number: str) -> Incident | None:
    return session.scalars(select(Incident).where(Incident.number == number)).first()


def find_by_idempotency_key(*, session: Session, channel: str, client_ref: str,
                            key: str) -> Incident | None:
    return session.scalars(_by_idempotency_key(), {
        "channel": channel, "client_ref": client_ref, "key": key}).first()


def find_by_idempotency_keys(*, session: Session, keys: Collection[tuple[Channel, str, str]]
                             ) -> dict[tuple[Channel, str, str], Incident]:
    """find_by_idempotency_key for many (channel, client, key) at once: a query per client."""
    by_client: dict[tuple[Channel, str], list[str]] = {}
    for channel, client, key in keys:
        by_client.setdefault((channel, client), []).append(key)
    found: dict[tuple[Channel, str, str], Incident] = {}
    as_array = _is_postgresql(session)
    for (channel, client), wanted in by_client.items():
        if len(wanted) == 1:
            rows = [find_by_idempotency_key(session=session, channel=channel, client_ref=client,
                                            key=wanted[0])]
        else:
            rows = list(session.scalars(_by_idempotency_keys(as_array), {
                "channel": channel, "client_ref": client, "keys": wanted}))
        for row in rows:
            if row is not None and row.idempotency_key is not None:
                found[(channel, client, row.idempotency_key)] = row
    return found


def _is_postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


@functools.cache
def _by_idempotency_keys(as_array: bool) -> Select[tuple[Incident]]:
    """as_array (PostgreSQL): the keys go as one array parameter, so the SQL text is the same
    for any number of keys and the server prepares and plans it once; otherwise each key is a
    parameter of its own (IN (?, ?, …), a text per count)."""
    keys = (Incident.idempotency_key == any_(bindparam("keys", type_=ARRAY(String)))
            if as_array else Incident.idempotency_key.in_(bindparam("keys", expanding=True)))
    return select(Incident).where(
        Incident.channel == bindparam("channel"), Incident.client_ref == bindparam("client_ref"),
        keys)


# The intake path's statements are built once with bind parameters: building a statement and
# its cache key each call costs more CPU than running it (the key is memoised on the object).
@functools.cache
def _by_idempotency_key() -> Select[tuple[Incident]]:
    return select(Incident).where(
        Incident.channel == bindparam("channel"), Incident.client_ref == bindparam("client_ref"),
        Incident.idempotency_key == bindparam("key"))


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
    """Notices addressed to the user, or to their role within their data scope; newest first."""
    stmt = select(Notice).where(Notice.id.in_(notice_ids_for(session=session, user=user)))
    if unread_only:
        stmt = stmt.where(Notice.read_at.is_(None))
    return list(session.scalars(stmt.order_by(Notice.at.desc(), Notice.id.desc()).limit(limit)))


def has_role_over(*, session: Session, role: Role, region_path: str) -> bool:
    """Whether an active user with this role has a data scope that holds the region."""
    scopes = session.execute(
        select(Region.path).select_from(User)
        .outerjoin(Region, Region.id == User.scope_region_id)
        .where(User.role == role, User.is_active.is_(True))).scalars().all()
    return any(path_in_scope(scope, region_path) for scope in scopes)


def notice_ids_for(*, session: Session, user: User) -> Select[tuple[int]]:
    """The ids of the notices the user may see (see notices_for), as a subquery."""
    scope = scope_path(session, user)
    return (select(Notice.id).join(Incident, Incident.id == Notice.incident_id)
            .where(or_(Notice.to_user_id == user.id,
                       (Notice.to_role == user.role)
                       & scope_clause(scope, Incident.region_path))))


def duplicate_candidates(*, session: Session, category: IncidentCategory, lon: float | None,
                         lat: float | None, at: datetime,
                         exclude_id: int | None = None) -> list[Incident]:
    """Open incidents of the same category within the category's radius and window, nearest first.

    The bounding box keeps the scan small; the haversine distance decides.
    """
    return duplicate_candidates_many(session=session, probes=[DuplicateProbe(
        category, lon, lat, at, exclude_id)])[0]


@dataclass(frozen=True)
class DuplicateProbe:
    """A report to look for duplicates of: its category, point and time."""

    category: IncidentCategory
    lon: float | None
    lat: float | None
    at: datetime
    exclude_id: int | None = None

    @functools.cached_property
    def box(self) -> tuple[datetime, float, float, float, float] | None:
        """(since, lon_lo, lon_hi, lat_lo, lat_hi) to scan, or None when nothing can match."""
        radius, window = self.category.duplicate_radius_m, self.category.duplicate_window_min
        if self.lon is None or self.lat is None or radius <= 0 or window <= 0:
            return None
        # The exact extent of the circle haversine_m measures (a cap on the same sphere), and
        # a hair more, so that the box never cuts off a point the distance check would take.
        angle = radius / EARTH_RADIUS_M
        dlat = math.degrees(angle) + _BOX_MARGIN_DEG
        dlon = math.degrees(math.asin(min(1.0, math.sin(angle) / max(
            1e-9, math.cos(math.radians(self.lat)))))) + _BOX_MARGIN_DEG
        return (self.at - timedelta(minutes=window), self.lon - dlon, self.lon + dlon,
                self.lat - dlat, self.lat + dlat)

    def matches(self, incident: Incident) -> float | None:
        """The distance to `incident` if it is a candidate for this probe, else None."""
        box = self.box
        if (box is None or incident.category_id != self.category.id
                or (self.exclude_id is not None and incident.id == self.exclude_id)
                or incident.lon is None or incident.lat is None
                or not box[0] <= incident.received_at <= self.at):
            return None
        assert self.lon is not None and self.lat is not None
        distance = haversine_m(self.lon, self.lat, incident.lon, incident.lat)
        return distance if distance <= self.category.duplicate_radius_m else None


def duplicate_candidates_many(*, session: Session,
                              probes: Sequence[DuplicateProbe]) -> list[list[Incident]]:
    """duplicate_candidates for each probe, in one query; nearest first.

    Each probe's box (category, time window, lon and lat ranges) is one index range scan on
    ix_incident_duplicate_probe, whose lon and lat columns are checked in the index, so only
    the incidents inside a box are read from the table.
    """
    arms = [(probe, box) for probe in probes if (box := probe.box) is not None]
    if not arms:
        return [[] for _ in probes]
    if _is_postgresql(session):
        rows = list(session.scalars(_duplicates_in_boxes(), _box_arrays(arms)))
    else:
        rows = list(session.scalars(_duplicates(len(arms)), _box_params(arms)))
    found: list[list[Incident]] = []
    for probe in probes:
        near = [(distance, row.id, row) for row in rows
                if (distance := probe.matches(row)) is not None]
        found.append([row for _, _, row in sorted(near, key=lambda t: (t[0], t[1]))])
    return found


_Box = tuple[datetime, float, float, float, float]
_BOX_FIELDS = ("c", "s", "u", "x0", "x1", "y0", "y1")


def _box_values(probe: DuplicateProbe, box: _Box) -> tuple[Any, ...]:
    since, lon_lo, lon_hi, lat_lo, lat_hi = box
    return (probe.category.id, since, probe.at, lon_lo, lon_hi, lat_lo, lat_hi)


def _box_params(arms: Sequence[tuple[DuplicateProbe, _Box]]) -> dict[str, Any]:
    """_duplicates' parameters: c0, s0 … y1<n> for the n-th box."""
    return {f"{name}{n}": value for n, (probe, box) in enumerate(arms)
            for name, value in zip(_BOX_FIELDS, _box_values(probe, box), strict=True)}


def _box_arrays(arms: Sequence[tuple[DuplicateProbe, _Box]]) -> dict[str, list[Any]]:
    """_duplicates_in_boxes' parameters: one array per box field, a box per position."""
    columns = zip(*(_box_values(probe, box) for probe, box in arms), strict=True)
    return {name: list(values) for name, values in zip(_BOX_FIELDS, columns, strict=True)}


# Sorted, so the statement's text is the same in every process.
_ENDED = sorted(TERMINAL_STATES)


@functools.cache
def _duplicates(arms: int) -> Select[tuple[Incident]]:
    """Open incidents in any of `arms` boxes (c: category, s–u: time, x: lon, y: lat), each
    box an arm of an OR (a SQL text per count of boxes)."""
    return select(Incident).where(
        Incident.state.not_in(_ENDED),
        or_(*(and_(Incident.category_id == bindparam(f"c{n}"),
                   Incident.received_at >= bindparam(f"s{n}"),
                   Incident.received_at <= bindparam(f"u{n}"),
                   Incident.lon.between(bindparam(f"x0{n}"), bindparam(f"x1{n}")),
                   Incident.lat.between(bindparam(f"y0{n}"), bindparam(f"y1{n}")))
              for n in range(arms))))


@functools.cache
def _duplicates_in_boxes() -> Select[tuple[Incident]]:
    """_duplicates on PostgreSQL: the boxes arrive as arrays, one per field, and are joined
    to incident row by row (unnest), so there is one SQL text for any number of boxes, which
    the server prepares and plans once; an OR of many arms costs more to plan (~1.5 ms for
    16) than to run."""
    types: tuple[TypeEngine[Any], ...] = (Integer(), DateTime(timezone=True),
                                          DateTime(timezone=True), Float(), Float(), Float(),
                                          Float())
    box = func.unnest(*(bindparam(name, type_=ARRAY(kind))
                        for name, kind in zip(_BOX_FIELDS, types, strict=True))
                      ).table_valued(*(column(name, kind)
                                       for name, kind in zip(_BOX_FIELDS, types, strict=True))
                                     ).render_derived(name="box", with_types=False)
    found = aliased(Incident)
    inside = select(found.id).select_from(box).join(found, and_(
        found.category_id == box.c.c, found.received_at.between(box.c.s, box.c.u),
        found.lon.between(box.c.x0, box.c.x1), found.lat.between(box.c.y0, box.c.y1),
        found.state.not_in(_ENDED)))
    return select(Incident).where(Incident.id.in_(inside))


@dataclass(frozen=True)
class Candidate:
    """Someone on duty who could be sent, with how far away they were last seen."""

    user_id: int
    state: ResponderState
    distance_m: float | None
    has_status: bool
    display_name: str | None = None


@functools.cache
def _on_duty() -> Select[tuple[int, str, int, UnitType, ResponderStatus]]:
    return (select(DutyShift.user_id, User.display_name, DutyShift.zone_id, DutyShift.unit_type,
                   ResponderStatus)
            .join(User, User.id == DutyShift.user_id)
            .outerjoin(ResponderStatus, ResponderStatus.user_id == DutyShift.user_id)
            .where(DutyShift.zone_id.in_(bindparam("zone_ids", expanding=True)),
                   DutyShift.unit_type.in_(bindparam("unit_types", expanding=True)),
                   DutyShift.starts_at <= bindparam("at"), DutyShift.ends_at > bindparam("at"),
                   User.is_active.is_(True)))


def on_duty(*, session: Session, zone_id: int, unit_type: UnitType | str, at: datetime,
            lon: float | None = None, lat: float | None = None) -> list[Candidate]:
    """Everyone on a shift covering `at` for the zone and unit: available first, nearest first.

    A responder with no status yet counts as available with no known position; a position
    older than POSITION_STALE_AFTER counts as unknown.
    """
    return rank_on_duty(on_duty_rows(session=session, zone_id=zone_id, unit_type=unit_type,
                                     at=at), at=at, lon=lon, lat=lat)


@dataclass(frozen=True)
class OnDuty:
    """Someone on a shift, as read: their status row's state and last position, if any."""

    user_id: int
    display_name: str | None
    state: ResponderState
    has_status: bool
    lon: float | None = None
    lat: float | None = None
    position_at: datetime | None = None


def on_duty_rows(*, session: Session, zone_id: int, unit_type: UnitType | str,
                 at: datetime) -> list[OnDuty]:
    """The people on_duty ranks (not off duty), read once so that many reports can share them."""
    return on_duty_rosters(session=session, pairs={(zone_id, str(unit_type))}, at=at)[
        (zone_id, str(unit_type))]


def on_duty_rosters(*, session: Session, pairs: Collection[tuple[int, str]],
                    at: datetime) -> dict[tuple[int, str], list[OnDuty]]:
    """on_duty_rows for each (zone id, unit type) pair, in one query for them all."""
    rosters: dict[tuple[int, str], dict[int, OnDuty]] = {pair: {} for pair in pairs}
    if not pairs:
        return {}
    rows = session.execute(_on_duty(), {"zone_ids": sorted({zone for zone, _ in pairs}),
                                        "unit_types": sorted({unit for _, unit in pairs}),
                                        "at": at}).all()
    for user_id, display_name, zone_id, unit_type, status in rows:
        seen = rosters.get((zone_id, str(unit_type)))
        if seen is None:  # a zone asked for with another pair's unit
            continue
        if status is None:
            seen[user_id] = OnDuty(user_id, display_name, ResponderState.AVAILABLE, False)
        elif status.state != ResponderState.OFF:
            seen[user_id] = OnDuty(user_id, display_name, status.state, True, status.lon,
                                   status.lat, status.position_at)
    return {pair: list(seen.values()) for pair, seen in rosters.items()}


def rank_on_duty(people: Sequence[OnDuty], *, at: datetime, lon: float | None,
                 lat: float | None) -> list[Candidate]:
    """Available first, then those with a fresh known position, nearest first, then by id."""
    ranked = []
    for person in people:
        distance = None
        if (person.lon is not None and person.lat is not None
                and person.position_at is not None and lon is not None and lat is not None
                and at - person.position_at <= POSITION_STALE_AFTER):
            distance = haversine_m(lon, lat, person.lon, person.lat)
        ranked.append(Candidate(person.user_id, person.state, distance, person.has_status,
                                person.display_name))
    return sorted(ranked, key=lambda c: (
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


def incidents_reported_by(*, session: Session, username: str, limit: int = 20) -> list[Incident]:
    """The incidents a person submitted (created_by), newest first."""
    return list(session.scalars(select(Incident).where(Incident.created_by == username)
                                .order_by(Incident.received_at.desc(), Incident.id.desc())
                                .limit(limit)))


def field_work_of(*, session: Session, user_id: int,
                  roles: Collection[ResponseRole] = FIELD_ROLES) -> list[Incident]:
    """Open incidents the person is sent to now (an active field assignment), oldest first."""
    sent_to = select(Assignment.incident_id).where(
        Assignment.user_id == user_id, Assignment.ended_at.is_(None),
        Assignment.role.in_(list(roles)))
    return list(session.scalars(select(Incident).where(
        Incident.id.in_(sent_to), Incident.state.not_in([IncidentState.CLOSED,
                                                         IncidentState.VOIDED]))
        .order_by(Incident.received_at, Incident.id)))


# --- the dispatcher's views: scope, queue, detail, timeline, responders -------------------------

_FIELD_RESPONDER_ROLES = FIELD_RESPONDER_ROLES
# A field responder takes these only on incidents they are sent to (actions._require_assigned).
ASSIGNED_ONLY = frozenset({Action.ACCEPT, Action.ARRIVE, Action.REQUEST_REINFORCEMENT,
                           Action.HANDLE, Action.SEND_BACK})
QUEUE_LIMIT = 300


def incident_scope(session: Session, user: User) -> ColumnElement[bool]:
    """The incidents a user may see: those in their data scope, those they reported and those
    they were ever sent to (a responder dispatched across a zone line must read what they act on).

    An incident outside every region (an address with no point yet) belongs to the command
    centre, so the centre's people (who dispatch or supervise) see it too; everyone else needs
    it located in their scope.
    """
    clause = or_(scope_clause(scope_path(session, user), Incident.region_path),
                 Incident.created_by == user.username,
                 exists().where(Assignment.incident_id == Incident.id,
                                Assignment.user_id == user.id))
    if _centre(user):
        clause = or_(clause, Incident.region_path == "")
    return clause


def _centre(user: User) -> bool:
    return has_permission(user.role, Permission.INCIDENTS_DISPATCH) or has_permission(
        user.role, Permission.INCIDENTS_SUPERVISE)


def incident_visible(session: Session, user: User, incident: Incident) -> bool:
    """incident_scope for one incident already loaded."""
    if incident.region_path == "" and _centre(user):
        return True
    if path_in_scope(scope_path(session, user), incident.region_path):
        return True
    if incident.created_by == user.username:
        return True
    return bool(session.scalar(select(exists().where(
        Assignment.incident_id == incident.id, Assignment.user_id == user.id))))


def incident_for(*, session: Session, user: User, incident_id: int) -> Incident:
    """The incident if the user may see it; else NotFound, so out-of-scope ids cannot be probed."""
    incident = session.get(Incident, incident_id, populate_existing=True)
    if incident is None or not incident_visible(session, user, incident):
        raise NotFound()
    return incident


def search_incidents(*, session: Session, user: User,
                     states: Collection[IncidentState] | None = None,
                     category_code: str | None = None, zone_id: int | None = None,
                     urgency: int | None = None, limit: int = 50,
                     offset: int = 0) -> tuple[list[Incident], int]:
    """A page of the incidents the user may see, newest first, and how many match in all."""
    stmt = select(Incident).where(incident_scope(session, user))
    if states:
        stmt = stmt.where(Incident.state.in_(list(states)))
    if category_code:
        stmt = stmt.join(IncidentCategory, IncidentCategory.id == Incident.category_id).where(
            IncidentCategory.code == category_code)
    if zone_id is not None:
        stmt = stmt.where(Incident.zone_id == zone_id)
    if urgency is not None:
        stmt = stmt.where(Incident.urgency == urgency)
    total = session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    rows = session.scalars(stmt.order_by(Incident.received_at.desc(), Incident.id.desc())
                           .limit(limit).offset(offset))
    return list(rows), total


class ClockLevel(enum.StrEnum):
    """How a clock stands, for colours: ok, warn (the warning share has gone), breached."""

    OK = "ok"
    WARN = "warn"
    BREACHED = "breached"


def clock_level(deadline: Deadline, now: datetime) -> ClockLevel:
    if deadline.level == DeadlineLevel.BREACHED or now >= deadline.due_at:
        return ClockLevel.BREACHED
    if deadline.level == DeadlineLevel.WARNED or now >= deadline.warn_at:
        return ClockLevel.WARN
    return ClockLevel.OK


@dataclass(frozen=True)
class QueueItem:
    """One line of the dispatcher's queue: the incident and its nearest running clock."""

    incident: Incident
    category: IncidentCategory
    zone_name: str | None
    deadline: Deadline | None
    level: ClockLevel | None
    seconds_left: int | None
    responder_names: tuple[str, ...]


def _names(session: Session, user_ids: Collection[int]) -> dict[int, str]:
    if not user_ids:
        return {}
    rows = session.execute(select(User.id, User.display_name)
                           .where(User.id.in_(list(user_ids)))).tuples()
    return {user_id: name for user_id, name in rows}


def region_names(session: Session, region_ids: Collection[int | None]) -> dict[int, str]:
    """{id: name} of the regions (None ids ignored)."""
    return _region_names(session, region_ids)


def _region_names(session: Session, region_ids: Collection[int | None]) -> dict[int, str]:
    ids = [r for r in region_ids if r is not None]
    if not ids:
        return {}
    rows = session.execute(select(Region.id, Region.name).where(Region.id.in_(ids))).tuples()
    return {region_id: name for region_id, name in rows}


def dispatcher_queue(*, session: Session, user: User, now: datetime,
                     limit: int = QUEUE_LIMIT) -> list[QueueItem]:
    """Open incidents the user may see: most urgent first, then the least time left."""
    rows = session.execute(
        select(Incident, IncidentCategory)
        .join(IncidentCategory, IncidentCategory.id == Incident.category_id)
        .where(Incident.state.in_(list(OPEN_STATES)), incident_scope(session, user))
    ).tuples().all()
    ids = [incident.id for incident, _ in rows]
    nearest: dict[int, Deadline] = {}
    if ids:
        for deadline in session.scalars(select(Deadline).where(
                Deadline.incident_id.in_(ids), Deadline.state == DeadlineState.OPEN)):
            current = nearest.get(deadline.incident_id)
            if current is None or deadline.due_at < current.due_at:
                nearest[deadline.incident_id] = deadline
    people: dict[int, list[int]] = {}
    if ids:
        for incident_id, user_id in session.execute(
                select(Assignment.incident_id, Assignment.user_id).where(
                    Assignment.incident_id.in_(ids), Assignment.ended_at.is_(None),
                    Assignment.role.in_(list(FIELD_ROLES))).order_by(Assignment.id)).tuples():
            people.setdefault(incident_id, []).append(user_id)
    names = _names(session, {u for users in people.values() for u in users})
    zones = _region_names(session, {incident.zone_id for incident, _ in rows})
    items = []
    for incident, category in rows:
        clock = nearest.get(incident.id)
        items.append(QueueItem(
            incident=incident, category=category,
            zone_name=zones.get(incident.zone_id) if incident.zone_id else None,
            deadline=clock,
            level=clock_level(clock, now) if clock else None,
            seconds_left=int((clock.due_at - now).total_seconds()) if clock else None,
            responder_names=tuple(names.get(u, str(u)) for u in people.get(incident.id, []))))
    far = datetime.max.replace(tzinfo=now.tzinfo)
    items.sort(key=lambda item: (item.incident.urgency,
                                 item.deadline.due_at if item.deadline else far,
                                 item.incident.received_at, item.incident.id))
    return items[:limit]


def state_counts(*, session: Session, user: User) -> dict[IncidentState, int]:
    """How many incidents the user may see are in each state (every state, zeros included)."""
    counts = dict.fromkeys(IncidentState, 0)
    for state, n in session.execute(select(Incident.state, func.count(Incident.id))
                                    .where(incident_scope(session, user))
                                    .group_by(Incident.state)).tuples():
        counts[IncidentState(state)] = int(n)
    return counts


def change_stamp(*, session: Session) -> str:
    """Changes whenever an incident, a clock's notice or a responder's status changes.

    Every change to an incident writes a transition row, every warning or escalation a notice,
    and every status or position report touches responder_status; comparing this stamp from
    any process tells a live page to refresh.
    """
    transition = session.scalar(select(func.max(IncidentTransition.id))) or 0
    notice = session.scalar(select(func.max(Notice.id))) or 0
    status = session.scalar(select(func.max(ResponderStatus.updated_at)))
    seen = int(status.timestamp() * 1000) if status is not None else 0
    return f"{transition}-{notice}-{seen}"


@dataclass(frozen=True)
class TimelineEntry:
    id: int
    at: datetime
    action: str
    from_state: IncidentState | None
    to_state: IncidentState
    reason: str | None
    actor: str
    actor_name: str
    detail: dict[str, Any]
    sent_to: tuple[str, ...] = ()  # the people a dispatch or a reinforcement went to, by name


def timeline(*, session: Session, incident_id: int) -> list[TimelineEntry]:
    """Every transition of the incident, oldest first, with who took it and whom it sent."""
    rows = transitions_of(session=session, incident_id=incident_id)
    details = [json.loads(r.detail or "{}") for r in rows]
    people = {int(u) for d in details for u in d.get("sent_to", ())}
    names = _names(session, {r.actor_id for r in rows if r.actor_id is not None} | people)
    return [TimelineEntry(
        id=r.id, at=r.at, action=r.action, from_state=r.from_state, to_state=r.to_state,
        reason=r.reason, actor=r.actor,
        actor_name=names.get(r.actor_id, r.actor) if r.actor_id is not None else r.actor,
        detail=detail,
        sent_to=tuple(names.get(int(u), str(u)) for u in detail.get("sent_to", ())))
        for r, detail in zip(rows, details, strict=True)]


@dataclass(frozen=True)
class AssignmentView:
    user_id: int
    display_name: str
    role: ResponseRole
    unit_type: UnitType | None
    assigned_at: datetime
    accepted_at: datetime | None
    on_scene_at: datetime | None
    ended_at: datetime | None
    responder_state: ResponderState | None


@dataclass(frozen=True)
class DeadlineView:
    id: int
    kind: DeadlineKind
    state: DeadlineState
    escalation_step: int
    due_at: datetime
    warn_at: datetime
    level: ClockLevel | None  # None once the clock is settled
    seconds_left: int | None


@dataclass(frozen=True)
class IncidentView:
    """An incident with what a page or the API shows around it; personal data masked."""

    incident: Incident
    category: IncidentCategory
    zone_name: str | None
    grid_name: str | None
    micro_grid_name: str | None
    reporter_phone: str | None  # masked
    reporter_name: str | None  # masked
    assignments: list[AssignmentView]
    deadlines: list[DeadlineView]
    reinforcements: list[ReinforcementRequest]
    duplicate_of_number: str | None


def incident_view(*, session: Session, crypto: CryptoProvider, incident: Incident,
                  now: datetime, category: IncidentCategory | None = None) -> IncidentView:
    """The incident with its surroundings; pass its `category` if already loaded."""
    if category is None or category.id != incident.category_id:
        category = session.get(IncidentCategory, incident.category_id)
    assert category is not None  # a foreign key
    # Each assignment with its person's name and current state, in one query.
    rows = session.execute(
        select(Assignment, User.display_name, ResponderStatus.state)
        .outerjoin(User, User.id == Assignment.user_id)
        .outerjoin(ResponderStatus, ResponderStatus.user_id == Assignment.user_id)
        .where(Assignment.incident_id == incident.id).order_by(Assignment.id)).tuples().all()
    assignments = [assignment for assignment, _, _ in rows]
    names = {a.user_id: name for a, name, _ in rows if name is not None}
    states = {a.user_id: state for a, _, state in rows if state is not None}
    regions = _region_names(session, {incident.zone_id, incident.grid_id, incident.micro_grid_id})
    phone = crypto.decrypt(incident.reporter_phone_enc, context=PHONE_CONTEXT) \
        if incident.reporter_phone_enc else None
    name = crypto.decrypt(incident.reporter_name_enc, context=NAME_CONTEXT) \
        if incident.reporter_name_enc else None
    original = session.get(Incident, incident.duplicate_of_id) if incident.duplicate_of_id else None
    return build_incident_view(
        incident=incident, category=category, now=now, region_names=regions,
        reporter_phone=phone, reporter_name=name, assignments=assignments, names=names,
        states=states, deadlines=deadlines_of(session=session, incident_id=incident.id),
        reinforcements=reinforcement_requests_of(session=session, incident_id=incident.id),
        duplicate_of_number=original.number if original else None)


def build_incident_view(*, incident: Incident, category: IncidentCategory, now: datetime,
                        region_names: Mapping[int, str], reporter_phone: str | None,
                        reporter_name: str | None, assignments: Sequence[Assignment],
                        names: Mapping[int, str], states: Mapping[int, ResponderState],
                        deadlines: Sequence[Deadline],
                        reinforcements: Sequence[ReinforcementRequest] = (),
                        duplicate_of_number: str | None = None) -> IncidentView:
    """An IncidentView from pieces already at hand (plain reporter phone and name, unmasked;
    assignments and deadlines in id order); incident_view reads them, intake knows them."""
    regions = region_names
    return IncidentView(
        incident=incident, category=category,
        zone_name=regions.get(incident.zone_id) if incident.zone_id else None,
        grid_name=regions.get(incident.grid_id) if incident.grid_id else None,
        micro_grid_name=regions.get(incident.micro_grid_id) if incident.micro_grid_id else None,
        reporter_phone=mask_phone(reporter_phone) if reporter_phone else None,
        reporter_name=mask_name(reporter_name) if reporter_name else None,
        assignments=[AssignmentView(
            user_id=a.user_id, display_name=names.get(a.user_id, str(a.user_id)), role=a.role,
            unit_type=a.unit_type, assigned_at=a.assigned_at, accepted_at=a.accepted_at,
            on_scene_at=a.on_scene_at, ended_at=a.ended_at,
            responder_state=states.get(a.user_id)) for a in assignments],
        deadlines=[DeadlineView(
            id=d.id, kind=d.kind, state=d.state, escalation_step=d.escalation_step,
            due_at=d.due_at, warn_at=d.warn_at,
            level=clock_level(d, now) if d.state == DeadlineState.OPEN else None,
            seconds_left=int((d.due_at - now).total_seconds())
            if d.state == DeadlineState.OPEN else None)
            for d in deadlines],
        reinforcements=list(reinforcements),
        duplicate_of_number=duplicate_of_number)


def allowed_steps(*, session: Session, incident: Incident, user: User) -> list[str]:
    """The actions this user may take on the incident now, by actions.STEP_NAMES' names.

    Asks the transition table (with a stand-in reason, since the form asks for the real one)
    plus the rules the actions add: a field responder acts only where sent, "keep separate"
    only on a flagged duplicate, "reinforcement arrived" only with one on the way, the transfer
    to 110 only for police work not yet handed over.
    """
    category = session.get(IncidentCategory, incident.category_id)
    assert category is not None
    context = TransitionContext(actor_id=user.id,
                                handler_ids=handler_ids(session=session, incident_id=incident.id),
                                may_close_at=category.may_close_at,
                                on_scene_required=category.on_scene_required)
    sent = user.id in active_field_user_ids(session=session, incident_id=incident.id)
    waiting = any(r.arrived_at is None for r in reinforcement_requests_of(
        session=session, incident_id=incident.id))
    extra_rules: dict[Action, bool] = {
        Action.KEEP_SEPARATE: incident.needs_duplicate_review,
        Action.REINFORCEMENT_ARRIVED: waiting,
        Action.ESCALATE: next_tier(Tier(incident.tier)) is not None,  # nobody above the district
    }
    allowed: list[str] = []
    for action in TRANSITIONS:
        try:
            check_transition(incident.state, action, user.role, reason="-", context=context)
        except GrassrootsError:
            continue
        if action in ASSIGNED_ONLY and user.role in _FIELD_RESPONDER_ROLES and not sent:
            continue
        if not extra_rules.get(action, True):
            continue
        allowed.append("merge_duplicate" if action == Action.MERGE else action.value)
    if (category.is_police and not incident.police_ref and "dispatch" in allowed
            and has_permission(user.role, Permission.INCIDENTS_DISPATCH)):
        allowed.append(TRANSFER_TO_POLICE)
    return allowed


@dataclass(frozen=True)
class ResponderView:
    """Someone on a shift: where they are, how they stand and what they are on."""

    user_id: int
    display_name: str
    zone_id: int
    zone_name: str
    unit_type: UnitType
    starts_at: datetime
    ends_at: datetime
    state: ResponderState
    lon: float | None
    lat: float | None
    position_at: datetime | None
    position_stale: bool
    incident_numbers: tuple[str, ...]


def _zone_scope(session: Session, user: User) -> ColumnElement[bool]:
    return scope_clause(scope_path(session, user), Region.path)


def duty_roster(*, session: Session, user: User, starts: datetime, ends: datetime,
                now: datetime) -> list[ResponderView]:
    """Shifts overlapping [starts, ends) in the zones the user may see, by zone then start."""
    rows = session.execute(
        select(DutyShift, User, Region, ResponderStatus)
        .join(User, User.id == DutyShift.user_id)
        .join(Region, Region.id == DutyShift.zone_id)
        .outerjoin(ResponderStatus, ResponderStatus.user_id == DutyShift.user_id)
        .where(DutyShift.starts_at < ends, DutyShift.ends_at > starts, User.is_active.is_(True),
               _zone_scope(session, user))
        .order_by(Region.code, DutyShift.unit_type, DutyShift.starts_at, User.username)
    ).tuples().all()
    user_ids = {shift.user_id for shift, _, _, _ in rows}
    working: dict[int, list[str]] = {}
    if user_ids:
        for user_id, number in session.execute(
                select(Assignment.user_id, Incident.number)
                .join(Incident, Incident.id == Assignment.incident_id)
                .where(Assignment.user_id.in_(list(user_ids)), Assignment.ended_at.is_(None),
                       Assignment.role.in_(list(FIELD_ROLES)))
                .order_by(Assignment.id)).tuples():
            working.setdefault(user_id, []).append(number)
    views = []
    for shift, person, zone, status in rows:
        stale = status is None or status.position_at is None or (
            now - status.position_at > POSITION_STALE_AFTER)
        views.append(ResponderView(
            user_id=person.id, display_name=person.display_name, zone_id=zone.id,
            zone_name=zone.name, unit_type=shift.unit_type, starts_at=shift.starts_at,
            ends_at=shift.ends_at,
            state=status.state if status is not None else ResponderState.AVAILABLE,
            lon=status.lon if status is not None else None,
            lat=status.lat if status is not None else None,
            position_at=status.position_at if status is not None else None,
            position_stale=stale, incident_numbers=tuple(working.get(person.id, ()))))
    return views


def responders_on_duty(*, session: Session, user: User, at: datetime) -> list[ResponderView]:
    """Everyone on a shift covering `at` in the zones the user may see."""
    return duty_roster(session=session, user=user, starts=at, ends=at + timedelta(microseconds=1),
                       now=at)


def duty_shifts_around(*, session: Session, user: User, at: datetime) -> list[ResponderView]:
    """The roster of the Beijing calendar day holding `at`."""
    local = to_display(at)
    day_start = local.replace(hour=0, minute=0, second=0, microsecond=0)
    return duty_roster(session=session, user=user, starts=day_start,
                       ends=day_start + timedelta(days=1), now=at)


def categories_by_major(*, session: Session) -> list[tuple[str, str, list[IncidentCategory]]]:
    """Active categories grouped by major class (code, name_zh, categories), in catalogue order."""
    groups: dict[str, tuple[str, str, list[IncidentCategory]]] = {}
    for category in list_categories(session=session):
        group = groups.setdefault(category.major_code,
                                  (category.major_code, category.major_name_zh, []))
        group[2].append(category)
    return list(groups.values())
