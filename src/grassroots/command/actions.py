"""Every write of the command loop. One action = one transaction with its audit row(s).

Each transition checks the table in states.py, changes the incident by compare-and-set on
`version` (`UPDATE incident … WHERE id = ? AND version = ?`, exactly one row or Conflict),
saves an IncidentTransition row and an audit row, and settles the clocks the action affects.
(The steps intake takes on the incident it has just inserted have no one to race and are made
in memory instead: see _Fresh.)
Actions commit their own transaction (the web layer's session only closes), so a caller must not
hold uncommitted writes of its own in the session it passes in.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from pydantic import ValidationError
from sqlalchemy import (
    CursorResult,
    Table,
    Update,
    bindparam,
    exists,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from grassroots.command import queries
from grassroots.command.categories import (
    CategorySpec,
    apply_changes,
    attributes_of,
    read_default_catalogue,
    row_values,
    spec_of,
    validate_answers,
)
from grassroots.command.context import category_by_code, intake_context
from grassroots.command.models import (
    Assignment,
    Deadline,
    DutyShift,
    Incident,
    IncidentCategory,
    IncidentNumberCounter,
    IncidentTransition,
    Notice,
    ReinforcementRequest,
    ResponderStatus,
)
from grassroots.command.police import (
    TRANSFER_TO_POLICE,
    PoliceDesk,
    PoliceDeskUnavailable,
    PoliceTransfer,
)
from grassroots.command.states import (
    AUDIENCE_ROLE,
    AUTO_DISPATCH,
    CALL_PROCESSING_LIMIT,
    CALLBACK_WORKING_DAYS,
    DEADLINE_EFFECTS,
    DESCRIPTION_MAX_CHARS,
    EFFECTIVE_RESPONSE_LIMIT,
    EXTENSION_MAX_WORKING_DAYS,
    FIELD_RESPONDER_ROLES,
    FIELD_ROLES,
    FIRST_RESPONDERS_BY_URGENCY,
    FIRST_RESPONSE_LIMIT,
    REINFORCEMENTS_PER_REQUEST,
    RELEASES,
    SEND_BACK_WORKING_DAYS,
    TIER_AUDIENCE,
    TIER_ORDER,
    TIMESTAMPS,
    UNIT_TIER,
    Action,
    Actor,
    Audience,
    Channel,
    DeadlineKind,
    DeadlineLevel,
    DeadlineState,
    IncidentState,
    Locator,
    NoticeLevel,
    PersonActor,
    ResponderState,
    ResponseRole,
    Tier,
    TransitionContext,
    TransitionRule,
    UnitType,
    WorkingCalendar,
    check_transition,
    format_number,
    handling_due,
    higher_tier,
    next_tier,
    normalize_phone,
    tier_due,
    warn_time,
)
from grassroots.db import attach_as_written, column_values, insert_in_one_statement
from grassroots.kernel.addresses.queries import resolve as resolve_address
from grassroots.kernel.audit import record
from grassroots.kernel.auth.models import User
from grassroots.kernel.auth.roles import Permission, Role, has_permission
from grassroots.kernel.auth.scope import path_in_scope, scope_path
from grassroots.kernel.clock import to_display
from grassroots.kernel.errors import (
    Conflict,
    GrassrootsError,
    NotFound,
    PermissionDenied,
    ValidationFailed,
)
from grassroots.kernel.personal import reveal
from grassroots.kernel.regions.locate import LocateIndex
from grassroots.kernel.regions.models import Region, RegionLevel

if TYPE_CHECKING:
    from grassroots.runtime import Runtime

TITLE_MAX_CHARS = 200
_FIELD_RESPONDER_ROLES = FIELD_RESPONDER_ROLES


# --- plumbing ----------------------------------------------------------------------------------


@contextmanager
def _atomic(session: Session) -> Iterator[None]:
    """Commit on success, roll back on any error.

    A read-only transaction the caller left open (say, after loading the user) is ended first,
    so the action reads fresh rows. On SQLite a transaction whose snapshot went stale under a
    concurrent writer fails with "database is locked" at its first write; that is a lost race,
    reported as Conflict. Under READ COMMITTED (PostgreSQL's default) every statement reads
    the rows committed when it starts, whatever the transaction read before, so there the
    read-only transaction is simply carried on: ending it would only cost a COMMIT, a pool
    checkout with its ping and a new BEGIN, and change nothing the action can see.
    """
    if session.in_transaction() and not (session.new or session.dirty or session.deleted) \
            and not _reads_fresh_per_statement(session):
        session.commit()
    try:
        yield
        session.commit()
    except OperationalError as exc:
        session.rollback()
        if session.get_bind().dialect.name == "sqlite" and "locked" in str(exc.orig):
            raise Conflict("command.error.concurrent_change") from exc
        raise
    except BaseException:
        session.rollback()
        raise


def _reads_fresh_per_statement(session: Session) -> bool:
    """Whether the session's open transaction gives each statement a fresh snapshot.

    Only PostgreSQL at READ COMMITTED; SQLite's read transaction keeps its snapshot, as do
    REPEATABLE READ and SERIALIZABLE. Reads no more than what the connection already knows.
    """
    connection = session.connection()
    if connection.dialect.name != "postgresql":
        return False
    level = connection.get_execution_options().get(
        "isolation_level", connection.default_isolation_level)
    return str(level).upper().replace("_", " ") == "READ COMMITTED"


def _rowcount(session: Session, stmt: Update) -> int:
    result = cast(CursorResult[Any], session.execute(
        stmt.execution_options(synchronize_session=False)))
    return result.rowcount


def _insert(session: Session) -> Any:
    """The dialect's INSERT, for ON CONFLICT clauses (PostgreSQL and SQLite share the API)."""
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def _require(actor: Actor, permission: Permission) -> None:
    # A SystemActor (role None) is the platform acting by rule and passes.
    if actor.role is not None and not has_permission(actor.role, permission):
        raise PermissionDenied()


def _audit(session: Session, runtime: Runtime, actor: Actor, action: str, object_type: str,
           object_id: int | str, source_ip: str | None, detail: Mapping[str, Any]) -> None:
    record(session, runtime=runtime, actor=actor.username, action=action,
           object_type=object_type, object_id=object_id, source_ip=source_ip,
           detail=dict(detail))


def _load(session: Session, incident_id: int) -> Incident:
    # populate_existing: the session keeps objects across commits, so re-read the current row.
    incident = session.get(Incident, incident_id, populate_existing=True)
    if incident is None:
        raise NotFound()
    return incident


def _category(session: Session, incident: Incident) -> IncidentCategory:
    category = session.get(IncidentCategory, incident.category_id)
    assert category is not None  # a foreign key
    return category


def new_deadline(session: Session, *, incident_id: int, kind: DeadlineKind, start: datetime,
                  due: datetime, step: int = 0,
                  reinforcement_request_id: int | None = None) -> Deadline:
    deadline = _deadline(incident_id=incident_id, kind=kind, start=start, due=due, step=step,
                         reinforcement_request_id=reinforcement_request_id)
    session.add(deadline)
    return deadline


def _deadline(*, incident_id: int | None, kind: DeadlineKind, start: datetime, due: datetime,
              step: int = 0, reinforcement_request_id: int | None = None) -> Deadline:
    return Deadline(incident_id=incident_id, kind=kind, escalation_step=step,
                    reinforcement_request_id=reinforcement_request_id, starts_at=start,
                    due_at=due, warn_at=warn_time(start, due), level=DeadlineLevel.NONE,
                    state=DeadlineState.OPEN, version=1)


def _start_clock(session: Session, fresh: _Fresh | None, *, incident: Incident,
                 kind: DeadlineKind, start: datetime, due: datetime) -> None:
    """A new clock: a fresh incident's is kept with it (written by _insert_new), any other's
    goes into the session."""
    if fresh is None:
        new_deadline(session, incident_id=incident.id, kind=kind, start=start, due=due)
    else:
        fresh.deadlines.append(_deadline(incident_id=None, kind=kind, start=start, due=due))


def _settle(session: Session, incident_id: int, kinds: frozenset[DeadlineKind],
            to: DeadlineState, now: datetime) -> None:
    _rowcount(session, update(Deadline).where(
        Deadline.incident_id == incident_id, Deadline.kind.in_(list(kinds)),
        Deadline.state == DeadlineState.OPEN,
    ).values(state=to, settled_at=now, version=Deadline.version + 1))


def _has_field_work(session: Session, user_id: int) -> bool:
    return bool(session.scalar(select(exists().where(
        Assignment.user_id == user_id, Assignment.ended_at.is_(None),
        Assignment.role.in_(list(FIELD_ROLES))))))


def _free(session: Session, user_ids: Sequence[int], now: datetime) -> None:
    """Responders with no field assignment left go from busy back to available."""
    for user_id in dict.fromkeys(user_ids):
        if not _has_field_work(session, user_id):
            _rowcount(session, update(ResponderStatus).where(
                ResponderStatus.user_id == user_id,
                ResponderStatus.state == ResponderState.BUSY,
            ).values(state=ResponderState.AVAILABLE, updated_at=now))


def _force_busy(session: Session, user_id: int, now: datetime) -> None:
    session.execute(
        _insert(session)(ResponderStatus)
        .values(user_id=user_id, state=ResponderState.BUSY, updated_at=now)
        .on_conflict_do_update(index_elements=[ResponderStatus.user_id],
                               set_={"state": ResponderState.BUSY, "updated_at": now}))


def _require_assigned(session: Session, incident_id: int, actor: Actor) -> Assignment | None:
    """A field responder may act only on incidents they are sent to; others are not checked."""
    if actor.role not in _FIELD_RESPONDER_ROLES:
        return None
    assignment = session.scalars(select(Assignment).where(
        Assignment.incident_id == incident_id, Assignment.user_id == actor.id,
        Assignment.ended_at.is_(None), Assignment.role.in_(list(FIELD_ROLES)))
        .order_by(Assignment.id)).first()
    if assignment is None:
        raise PermissionDenied("command.error.not_assigned")
    return assignment


@dataclass
class _Fresh:
    """An incident inserted by this very transaction, and the clocks it has started so far.

    No other transaction can see its row before COMMIT, so its steps have no version to
    compare against: they change the object, and build these clocks and assignments, in memory
    (none of them in the session yet), and _insert_new writes the outcome in one go.
    """

    deadlines: list[Deadline] = field(default_factory=list)
    assignments: list[Assignment] = field(default_factory=list)
    # Its transitions' column values: nothing reads them back, so they are written as one
    # Core executemany once the incident has its id, not as ORM objects through the flush.
    transitions: list[dict[str, Any]] = field(default_factory=list)
    # (actor, action, detail) of the audit rows its steps owe, recorded once it has a number.
    audits: list[tuple[Actor, str, dict[str, Any]]] = field(default_factory=list)

    def settle(self, kinds: frozenset[DeadlineKind], to: DeadlineState, now: datetime) -> None:
        for deadline in self.deadlines:  # as _settle does in SQL
            if deadline.kind in kinds and deadline.state == DeadlineState.OPEN:
                deadline.state, deadline.settled_at = to, now
                deadline.version += 1

    def has_open(self, kind: DeadlineKind) -> bool:
        return any(d.kind == kind and d.state in (DeadlineState.OPEN, DeadlineState.PAUSED)
                   for d in self.deadlines)


def _step(session: Session, runtime: Runtime, actor: Actor, incident: Incident, action: Action, *,
          reason: str | None = None, expected_version: int | None = None,
          context: TransitionContext | None = None, values: Mapping[str, Any] | None = None,
          detail: Mapping[str, Any] | None = None, source_ip: str | None = None,
          keep_busy: Sequence[int] = (), fresh: _Fresh | None = None) -> TransitionRule:
    """Check the rule, compare-and-set the incident, save the Flip and the audit row.

    With `fresh` (an incident created in this transaction) the change is made to the object
    instead, `values` must be plain values, and the clocks settled are fresh's.
    """
    rule = check_transition(incident.state, action, actor.role, reason=reason, context=context)
    if expected_version is not None and expected_version != incident.version:
        raise Conflict("command.error.concurrent_change")
    now = runtime.clock.now()
    from_state = incident.state
    to_state = rule.to_state or from_state
    if rule.restores_previous:
        to_state = incident.state_before_suspend or IncidentState.REGISTERED
    changes: dict[str, Any] = {"state": to_state}
    stamp = TIMESTAMPS.get(rule.action)
    if stamp is not None and (not stamp[1] or getattr(incident, stamp[0]) is None):
        changes[stamp[0]] = now
    changes.update(values or {})
    if fresh is not None:
        for name, value in changes.items():
            setattr(incident, name, value)
        incident.version += 1
    else:
        # RETURNING reloads the row we just changed into `incident` (populate_existing), which
        # saves the SELECT a refresh afterwards would cost; an empty answer is a lost race.
        won = session.execute(
            update(Incident)
            .where(Incident.id == incident.id, Incident.version == incident.version)
            .values(**changes, version=Incident.version + 1).returning(Incident),
            execution_options={"synchronize_session": False, "populate_existing": True},
        ).scalars().all()
        if len(won) != 1:
            raise Conflict("command.error.concurrent_change")
    details = {"from": from_state.value, "to": to_state.value, **(detail or {})}
    transition = dict(
        incident_id=incident.id, from_state=from_state, to_state=to_state, action=rule.action,
        reason=reason, actor=actor.username, actor_id=actor.id, at=now,
        detail=json.dumps(details, ensure_ascii=False, sort_keys=True, default=str))
    if fresh is not None:
        fresh.transitions.append(transition)
    else:
        session.add(IncidentTransition(**transition))
    if fresh is not None:
        fresh.audits.append((actor, f"incident:transition:{rule.action}",
                             {"reason": reason, **details}))
    else:
        _audit(session, runtime, actor, f"incident:transition:{rule.action}", "incident",
               incident.id, source_ip, {"number": incident.number, "reason": reason, **details})
    for kinds, settled in DEADLINE_EFFECTS.get(rule.action, ()):
        if fresh is not None:
            fresh.settle(kinds, settled, now)
        else:
            _settle(session, incident.id, kinds, settled, now)
    released = RELEASES.get(rule.action)
    if released and fresh is None:  # a fresh incident has no assignments to end yet
        _release_keeping(session, incident.id, released, now, keep_busy)
    return rule


def _release_keeping(session: Session, incident_id: int, roles: frozenset[ResponseRole],
                     now: datetime, keep_busy: Sequence[int]) -> None:
    ended = session.scalars(
        update(Assignment).where(
            Assignment.incident_id == incident_id, Assignment.ended_at.is_(None),
            Assignment.role.in_(list(roles))).values(ended_at=now)
        .returning(Assignment.user_id),
        execution_options={"synchronize_session": False})
    _free(session, [u for u in ended if u not in keep_busy], now)


# --- categories --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CategoryLoadResult:
    created: list[str]
    kept: list[str]


def load_default_categories(*, session: Session, runtime: Runtime, actor: Actor,
                            path: Path | None = None,
                            source_ip: str | None = None) -> CategoryLoadResult:
    """Insert the catalogue's categories that are missing; a deployment's edits are kept."""
    _require(actor, Permission.CATEGORIES_EDIT)
    catalogue = read_default_catalogue(path)
    with _atomic(session):
        existing = set(session.scalars(select(IncidentCategory.code)))
        created, kept = [], []
        now = runtime.clock.now()
        order = 0
        for major in catalogue.classes:
            for spec in major.categories:
                order += 10
                if spec.code in existing:
                    kept.append(spec.code)
                    continue
                session.add(IncidentCategory(
                    major_code=major.code, major_name_zh=major.name_zh,
                    major_name_en=major.name_en, sort_order=order, version=1, updated_at=now,
                    **row_values(spec)))
                created.append(spec.code)
        if created:
            session.flush()
            _audit(session, runtime, actor, "category:load_defaults", "category", "catalogue",
                   source_ip, {"created": created, "catalogue_version": catalogue.version})
    return CategoryLoadResult(created=created, kept=kept)


def update_category(*, session: Session, runtime: Runtime, actor: Actor, code: str,
                    changes: Mapping[str, Any], expected_version: int | None = None,
                    source_ip: str | None = None) -> IncidentCategory:
    """Change a category's editable fields (spec field names, e.g. {"limit": {...}})."""
    _require(actor, Permission.CATEGORIES_EDIT)
    with _atomic(session):
        category = session.scalars(select(IncidentCategory).where(IncidentCategory.code == code)
                                   .execution_options(populate_existing=True)).first()
        if category is None:
            raise NotFound()
        before = spec_of(category)
        after = apply_changes(before, changes)
        version = category.version
        if expected_version is not None and expected_version != version:
            raise Conflict("command.error.concurrent_change")
        values = row_values(after)
        won = _rowcount(session, update(IncidentCategory).where(
            IncidentCategory.id == category.id, IncidentCategory.version == version,
        ).values(version=IncidentCategory.version + 1, updated_at=runtime.clock.now(), **values))
        if won != 1:
            raise Conflict("command.error.concurrent_change")
        old, new = before.model_dump(mode="json"), after.model_dump(mode="json")
        _audit(session, runtime, actor, "category:update", "category", category.id, source_ip,
               {"code": code, "changed": {k: {"from": old[k], "to": new[k]}
                                          for k in new if old[k] != new[k]}})
        session.refresh(category)
    return category


def create_category(*, session: Session, runtime: Runtime, actor: Actor, major_code: str,
                    spec: Mapping[str, Any], major_name_zh: str | None = None,
                    major_name_en: str | None = None,
                    source_ip: str | None = None) -> IncidentCategory:
    """Add a minor class (spec field names) under a major class; a new major class needs names.

    An existing major class keeps its names; the new class is listed after its siblings.
    """
    _require(actor, Permission.CATEGORIES_EDIT)
    try:
        checked = CategorySpec.model_validate(dict(spec))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ValidationFailed("command.error.bad_category",
                               detail=f"{where}: {first['msg']}" if where else first["msg"],
                               ) from None
    if checked.code.split(".", 1)[0] != major_code:
        raise ValidationFailed("command.error.category_not_in_major", code=checked.code,
                               major=major_code)
    with _atomic(session):
        if queries.get_category(session=session, code=checked.code) is not None:
            raise Conflict("command.error.category_exists", code=checked.code)
        sibling = session.scalars(select(IncidentCategory).where(
            IncidentCategory.major_code == major_code)
            .order_by(IncidentCategory.sort_order.desc())).first()
        if sibling is not None:
            names = (sibling.major_name_zh, sibling.major_name_en)
            order = sibling.sort_order + 1
        else:
            names = ((major_name_zh or "").strip(), (major_name_en or "").strip())
            if not all(names) or len(names[0]) > 60 or len(names[1]) > 80:
                raise ValidationFailed("command.error.major_names_required")
            last = session.scalar(select(func.max(IncidentCategory.sort_order))) or 0
            order = (last // 10 + 1) * 10
        category = IncidentCategory(major_code=major_code, major_name_zh=names[0],
                                    major_name_en=names[1], sort_order=order, version=1,
                                    updated_at=runtime.clock.now(), **row_values(checked))
        session.add(category)
        session.flush()
        _audit(session, runtime, actor, "category:create", "category", category.id, source_ip,
               {"code": checked.code, "major_code": major_code,
                "spec": checked.model_dump(mode="json")})
    return category


# --- intake ------------------------------------------------------------------------------------


@dataclass
class IntakeResult:
    incident: Incident
    created: bool
    duplicate_candidates: list[Incident] = field(default_factory=list)
    assigned_user_ids: list[int] = field(default_factory=list)
    category: IncidentCategory | None = None  # set when created
    # What a created incident's view needs, as this transaction wrote it (see
    # queries.build_incident_view): its assignments and clocks in id order, the assigned
    # people's names, and the reporter's phone (normalised) and name in plain text.
    assignments: list[Assignment] = field(default_factory=list)
    deadlines: list[Deadline] = field(default_factory=list)
    assigned_names: dict[int, str] = field(default_factory=dict)
    reporter_phone: str | None = None
    reporter_name: str | None = None
    # The names of its zone, grid and micro-grid, when the locator's index knew them all.
    region_names: dict[int, str] | None = None


def _check_location(lon: float | None, lat: float | None, address_text: str | None,
                    address_id: str | None = None) -> None:
    if (lon is None) != (lat is None):
        raise ValidationFailed("command.error.bad_location")
    if lon is None and not (address_text and address_text.strip()) and not address_id:
        raise ValidationFailed("command.error.location_required")
    if lon is not None and lat is not None and not (-180 <= lon <= 180 and -90 <= lat <= 90):
        raise ValidationFailed("command.error.bad_location")


@dataclass(frozen=True)
class _Place:
    lon: float | None
    lat: float | None
    address_text: str | None
    std_address_id: int | None = None


def _resolve_place(session: Session, lon: float | None, lat: float | None,
                   address_text: str | None, address_id: str | None) -> _Place:
    """A point for a report that gave a door plate, a standard address code or only an address.

    A given point is kept (the reporter stood there); the standard address is still recorded
    when its id came with it. An address text that matches no standard address leaves the
    report without a point for the dispatcher to place; an id that matches nothing (and no
    text to fall back on) is refused, since the reporter pointed at something definite.
    """
    text = address_text.strip() if address_text and address_text.strip() else None
    key = address_id.strip() if address_id and address_id.strip() else None
    if key is None and (lon is not None or text is None):
        return _Place(lon, lat, text)
    found = resolve_address(session=session, address_id=key,
                            text=text if lon is None else None)
    if found is None:
        if key is not None and text is None:
            raise ValidationFailed("command.error.unknown_address_id", address_id=key)
        return _Place(lon, lat, text)
    if lon is None or lat is None:
        lon, lat = found.lon, found.lat
    return _Place(lon, lat, text or found.text, found.address_id)


_LEVEL_COLUMNS = {RegionLevel.MICRO_GRID.value: "micro_grid_id", RegionLevel.GRID.value: "grid_id",
                  RegionLevel.ZONE.value: "zone_id"}


def _regions(locator: Locator | None, lon: float | None, lat: float | None) -> dict[str, Any]:
    """micro_grid_id, grid_id, zone_id and region_path from the locator's deepest-first list."""
    found = list(locator(lon, lat) or []) if (
        locator is not None and lon is not None and lat is not None) else []
    values: dict[str, Any] = dict.fromkeys(_LEVEL_COLUMNS.values())
    values["region_path"] = found[0].path if found else ""
    for region in found:
        column = _LEVEL_COLUMNS.get(str(region.level))
        if column is not None and values[column] is None:
            values[column] = region.id
    return values


def _channel(channel: Channel | str) -> Channel:
    try:
        return Channel(channel)
    except ValueError:
        raise ValidationFailed("command.error.unknown_channel", channel=channel) from None


def _bump_counter(session: Session, day: str, count: int) -> int:
    """Reserve `count` of the day's numbers; the last one. The upsert's row lock orders intakes.
    (SQLite; on PostgreSQL _number_and_reserve_ids bumps every day of a batch at once.)"""
    return int(session.execute(_bump_statement(), {"day": day, "count": count}).scalar_one())


@functools.cache
def _bump_statement() -> Any:
    table = IncidentNumberCounter
    return (sqlite.insert(table).values(day=bindparam("day"), last=bindparam("count"))
            .on_conflict_do_update(index_elements=[table.day],
                                   set_={"last": table.last + bindparam("count")})
            .returning(table.last))


def _by_day(incidents: Sequence[Incident]) -> dict[str, list[Incident]]:
    """The new incidents by the day (Beijing time) their numbers belong to, in order."""
    by_day: dict[str, list[Incident]] = {}
    for incident in incidents:
        by_day.setdefault(to_display(incident.received_at).strftime("%Y%m%d"), []).append(
            incident)
    return by_day


def _give_numbers(by_day: Mapping[str, list[Incident]], lasts: Mapping[str, int]) -> None:
    """Each day's incidents get the numbers up to that day's counter, in order."""
    for day, group in by_day.items():
        first = lasts[day] - len(group) + 1
        for offset, incident in enumerate(group):
            incident.number = format_number(day, first + offset)


class IntakeAlone(Exception):
    """intake_many's outcome for a report it left for later: it repeats the idempotency key of
    an earlier report in the same batch, so it must run by itself once that one is in (and
    will then return it)."""


@dataclass
class IntakeCall:
    """One report: what intake takes besides the session, the calendar and the locator."""

    actor: Actor
    channel: Channel | str
    category_code: str
    lon: float | None = None
    lat: float | None = None
    address_text: str | None = None
    address_id: str | None = None
    description: str = ""
    title: str | None = None
    idempotency_key: str | None = None
    client_ref: str | None = None
    external_ref: str | None = None
    reporter_phone: str | None = None
    reporter_name: str | None = None
    attributes: Mapping[str, Any] | None = None
    urgency: int | None = None
    received_at: datetime | None = None
    auto_register: bool = True
    auto_dispatch: bool = True
    source_ip: str | None = None
    fingerprint: str | None = None
    # A person's report (enter_incident) must fall inside their data scope, wherever the point,
    # plate or address puts it: they could not follow it up otherwise.
    check_scope: bool = False
    scope_region_id: int | None = None

    @property
    def client(self) -> str:
        return self.client_ref or self.actor.username


@dataclass
class _Checked:
    """A report that passed every check, with its category, place and cleaned values."""

    call: IntakeCall
    channel: Channel
    category: IncidentCategory
    place: _Place
    title: str
    urgency: int
    answers: dict[str, Any]
    phone: str | None
    received: datetime
    regions: dict[str, Any]

    @functools.cached_property
    def probe(self) -> queries.DuplicateProbe:
        return queries.DuplicateProbe(self.category, self.place.lon, self.place.lat,
                                      self.received)

    @property
    def dispatches(self) -> bool:
        return self.call.auto_register and self.call.auto_dispatch


def intake(*, session: Session, runtime: Runtime, actor: Actor, channel: Channel | str,
           category_code: str, calendar: WorkingCalendar, locator: Locator | None = None,
           lon: float | None = None, lat: float | None = None, address_text: str | None = None,
           address_id: str | None = None, description: str = "", title: str | None = None,
           idempotency_key: str | None = None, client_ref: str | None = None,
           external_ref: str | None = None, reporter_phone: str | None = None,
           reporter_name: str | None = None, attributes: Mapping[str, Any] | None = None,
           urgency: int | None = None, received_at: datetime | None = None,
           auto_register: bool = True, auto_dispatch: bool = True,
           source_ip: str | None = None, fingerprint: str | None = None,
           check_scope: bool = False, scope_region_id: int | None = None) -> IntakeResult:
    """The one way in for every channel: record, locate, flag duplicates, register, dispatch.

    auto_register=False leaves it received for the centre to verify first (collect → verify →
    register); auto_dispatch=False registers it but leaves dispatching to a person. A retry
    with the same idempotency key (per channel and client) returns the first incident and
    writes nothing. `locator(lon, lat)` returns regions deepest first (or None outside).
    `fingerprint` (see request_fingerprint) is stored with the incident; a retry whose
    fingerprint differs from the stored one is refused instead of returning the first incident.
    `address_id` (a door plate's id or a standard address code) or an address text alone
    resolves to the standard address's point (see _resolve_place). check_scope refuses a
    report placed outside the data scope of scope_region_id (None: unlimited).
    """
    return intake_one(session=session, runtime=runtime, calendar=calendar, locator=locator,
                      call=IntakeCall(
                          actor=actor, channel=channel, category_code=category_code, lon=lon,
                          lat=lat, address_text=address_text, address_id=address_id,
                          description=description, title=title,
                          idempotency_key=idempotency_key, client_ref=client_ref,
                          external_ref=external_ref, reporter_phone=reporter_phone,
                          reporter_name=reporter_name, attributes=attributes, urgency=urgency,
                          received_at=received_at, auto_register=auto_register,
                          auto_dispatch=auto_dispatch, source_ip=source_ip,
                          fingerprint=fingerprint, check_scope=check_scope,
                          scope_region_id=scope_region_id))


def intake_one(*, session: Session, runtime: Runtime, calendar: WorkingCalendar,
               locator: Locator | None, call: IntakeCall) -> IntakeResult:
    """intake_many for a single report: its result, or its error raised."""
    try:
        outcome = intake_many(session=session, runtime=runtime, calendar=calendar,
                              locator=locator, calls=[call])[0]
    except IntegrityError:
        # Two submissions with one key raced; the loser returns the winner's incident.
        if not call.idempotency_key:
            raise
        existing = queries.find_by_idempotency_key(
            session=session, channel=_channel(call.channel), client_ref=call.client,
            key=call.idempotency_key)
        session.commit()
        if existing is None:
            raise
        _same_request(existing, call.fingerprint)
        return IntakeResult(incident=existing, created=False)
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def intake_many(*, session: Session, runtime: Runtime, calendar: WorkingCalendar,
                locator: Locator | None,
                calls: Sequence[IntakeCall]) -> list[IntakeResult | Exception]:
    """Take in many reports in one transaction, each exactly as intake takes one.

    Why a batch: every intake shares two rows, the day's number counter and the audit chain's
    head, each locked from its write to COMMIT. One by one, intakes queue on those locks and pay
    a commit (a disk flush) each. A batch takes both locks once, reads the idempotency keys,
    the duplicate candidates and the on-duty people in one query each, and writes its
    incidents, transitions, clocks and assignments (one statement on PostgreSQL, see
    _insert_new) and its audit rows together.

    The outcome of each report, in order: its IntakeResult, or the error that refused it (it
    writes nothing; the others go on), or IntakeAlone. A database error rolls the whole batch
    back and is raised; the caller can then take the reports one by one (intake_one).
    """
    outcomes: list[IntakeResult | Exception | None] = [None] * len(calls)
    with _atomic(session):
        now = runtime.clock.now()
        channels: dict[int, Channel] = {}
        for n, call in enumerate(calls):
            try:
                _require(call.actor, Permission.INCIDENTS_REPORT)
                channels[n] = _channel(call.channel)
            except GrassrootsError as exc:
                outcomes[n] = exc
        _answer_retries(session, calls, channels, outcomes)
        checked: dict[int, _Checked] = {}
        for n, channel in channels.items():
            if outcomes[n] is None:
                try:
                    checked[n] = _check(session, calls[n], channel, locator, now)
                except GrassrootsError as exc:
                    outcomes[n] = exc
        if checked:
            made = _take_in(session, runtime, calendar, locator, list(checked.values()), now)
            for n, result in zip(checked, made, strict=True):
                outcomes[n] = result
    return [outcome if outcome is not None else IntakeAlone() for outcome in outcomes]


def _answer_retries(session: Session, calls: Sequence[IntakeCall], channels: Mapping[int, Channel],
                    outcomes: list[IntakeResult | Exception | None]) -> None:
    """A report whose idempotency key is on file gets that incident back (created=False)."""
    keyed = {n: (channel, calls[n].client, calls[n].idempotency_key)
             for n, channel in channels.items()
             if outcomes[n] is None and calls[n].idempotency_key}
    if not keyed:
        return
    found = queries.find_by_idempotency_keys(
        session=session, keys=[cast(tuple[Channel, str, str], key) for key in keyed.values()])
    first: set[tuple[Channel, str, str | None]] = set()
    for n, key in keyed.items():
        existing = found.get(cast(tuple[Channel, str, str], key))
        if existing is not None:
            try:
                _same_request(existing, calls[n].fingerprint)
                outcomes[n] = IntakeResult(incident=existing, created=False)
            except ValidationFailed as exc:
                outcomes[n] = exc
        elif key in first:
            outcomes[n] = IntakeAlone()
        else:
            first.add(key)


def _check(session: Session, call: IntakeCall, channel: Channel, locator: Locator | None,
           now: datetime) -> _Checked:
    """Every check of one report, in the order its errors are reported; nothing is written."""
    place = _resolve_place(session, call.lon, call.lat, call.address_text, call.address_id)
    if call.check_scope:
        _check_scope(session, call.scope_region_id, place, locator)
    received = call.received_at or now
    if received > now:
        raise ValidationFailed("command.error.received_in_future")
    category = category_by_code(session, call.category_code)
    if category is None or not category.active:
        raise ValidationFailed("command.error.unknown_category", code=call.category_code)
    _check_location(place.lon, place.lat, place.address_text)
    if len(call.description) > DESCRIPTION_MAX_CHARS:
        raise ValidationFailed("command.error.description_too_long", limit=DESCRIPTION_MAX_CHARS)
    title = (call.title or category.name_zh).strip()
    if len(title) > TITLE_MAX_CHARS:
        raise ValidationFailed("command.error.title_too_long", limit=TITLE_MAX_CHARS)
    if call.urgency is not None and call.urgency not in FIRST_RESPONDERS_BY_URGENCY:
        raise ValidationFailed("command.error.bad_urgency")
    answers = validate_answers(attributes_of(category), call.attributes)
    phone = normalize_phone(call.reporter_phone) if call.reporter_phone else None
    return _Checked(call=call, channel=channel, category=category, place=place, title=title,
                    urgency=call.urgency or category.urgency, answers=answers, phone=phone,
                    received=received, regions=_regions(locator, place.lon, place.lat))


@dataclass(frozen=True)
class _Scoped:
    scope_region_id: int | None


def _check_scope(session: Session, scope_region_id: int | None, place: _Place,
                 locator: Locator | None) -> None:
    """A point in a region outside the scope is refused; one outside every region is the
    centre's, and allowed."""
    if place.lon is None or place.lat is None or locator is None or scope_region_id is None:
        return
    found = locator(place.lon, place.lat)
    # The cached LocateIndex behind the locator (its tree version checked in this transaction)
    # knows every region's path, the scope region's included.
    index = _index_of(locator)
    known = index.refs if index is not None else None
    if found and not path_in_scope(scope_path(session, _Scoped(scope_region_id), known),
                                   found[0].path):
        raise ValidationFailed("command.error.location_outside_scope")


def _take_in(session: Session, runtime: Runtime, calendar: WorkingCalendar,
             locator: Locator | None, batch: list[_Checked],
             now: datetime) -> list[IntakeResult]:
    """Write the checked reports, numbered: the rows of each as _first_steps leaves them."""
    incidents: list[Incident] = []
    duplicates: list[list[Incident]] = []
    for report, on_file in zip(batch, queries.duplicate_candidates_many(
            session=session, probes=[report.probe for report in batch]), strict=True):
        found = _with_earlier(report.probe, on_file, incidents)
        duplicates.append(found)
        incidents.append(_new_incident(runtime, report, bool(found)))
    sent, names = _claim_for(session, batch, incidents, now)
    freshes: list[_Fresh] = []
    for report, incident, people in zip(batch, incidents, sent, strict=True):
        freshes.append(_first_steps(session, runtime, report, incident, calendar, people))
    _insert_new(session, incidents, freshes)
    results = []
    for report, incident, fresh, found, people in zip(batch, incidents, freshes, duplicates,
                                                       sent, strict=True):
        _audit_new(session, runtime, report, incident, fresh, found)
        user_ids = [user_id for user_id, _ in people]
        results.append(IntakeResult(
            incident=incident, created=True, duplicate_candidates=found,
            assigned_user_ids=user_ids, category=report.category,
            assignments=sorted(fresh.assignments, key=lambda a: a.id),
            deadlines=sorted(fresh.deadlines, key=lambda d: d.id),
            assigned_names={u: names[u] for u in user_ids if names.get(u) is not None},
            reporter_phone=report.phone, reporter_name=report.call.reporter_name or None,
            region_names=_region_names(locator, incident)))
    return results


def _index_of(locator: Locator | None) -> LocateIndex | None:
    """The cached LocateIndex whose bound locate() the locator is, if it is one."""
    index = getattr(locator, "__self__", None)
    return index if isinstance(index, LocateIndex) else None


def _region_names(locator: Locator | None, incident: Incident) -> dict[int, str] | None:
    """The names of the incident's regions from the locator's index, None if it lacks one."""
    index = _index_of(locator)
    if index is None:
        return None
    ids = {incident.zone_id, incident.grid_id, incident.micro_grid_id} - {None}
    names = {rid: index.refs[rid].name for rid in ids if rid in index.refs}
    return names if len(names) == len(ids) else None


def _with_earlier(probe: queries.DuplicateProbe, on_file: list[Incident],
                  earlier: list[Incident]) -> list[Incident]:
    """The candidates on file plus the batch's earlier reports that match, nearest first.

    One by one, each of those would have been on file already.
    """
    near = [(distance, k, incident) for k, incident in enumerate(earlier)
            if (distance := probe.matches(incident)) is not None]
    if not near:
        return on_file
    # Ties by age, as by id on file: what is on file came before the batch.
    ranked = [(probe.matches(incident) or 0.0, 0, incident.id, incident) for incident in on_file]
    ranked += [(distance, 1, k, incident) for distance, k, incident in near]
    return [incident for *_, incident in sorted(ranked, key=lambda t: t[:3])]


def _new_incident(runtime: Runtime, report: _Checked, has_duplicates: bool) -> Incident:
    call, category, place, crypto = report.call, report.category, report.place, runtime.crypto
    phone = report.phone
    return Incident(
        category_id=category.id, channel=report.channel,
        client_ref=call.client, external_ref=call.external_ref,
        idempotency_key=call.idempotency_key, title=report.title, description=call.description,
        lon=place.lon, lat=place.lat, address_text=place.address_text,
        std_address_id=place.std_address_id, urgency=report.urgency,
        state=IncidentState.RECEIVED, tier=UNIT_TIER[category.unit_type],
        attributes=json.dumps(report.answers, ensure_ascii=False, sort_keys=True),
        reporter_phone_enc=crypto.encrypt(phone, context=queries.PHONE_CONTEXT) if phone else None,
        reporter_phone_index=crypto.blind_index(phone, context=queries.PHONE_CONTEXT)
        if phone else None,
        reporter_name_enc=crypto.encrypt(call.reporter_name, context=queries.NAME_CONTEXT)
        if call.reporter_name else None,
        needs_duplicate_review=has_duplicates, created_by=call.actor.username,
        received_at=report.received, version=1, request_fingerprint=call.fingerprint or None,
        **report.regions)


_People = list[tuple[int, float | None]]
# Each round a report whose pick was taken (or is being claimed by another batch right now,
# SKIP LOCKED) picks its next nearest. Two busy writers can hold several people of one zone at
# once: with 4 rounds, 1.5 % of the bench's reports were left undispatched while people were
# free; 8 leaves none, and rounds past the first happen only on such a clash.
_CLAIM_ROUNDS = 8


def _claim_for(session: Session, batch: list[_Checked], incidents: list[Incident],
               now: datetime) -> tuple[list[_People], dict[int, str]]:
    """The nearest available on-duty people of the right unit for each report, claimed.

    In batch order each report picks its nearest not yet picked; all picks are claimed by one
    compare-and-set. A pick another transaction claimed first is dropped and that report picks
    again, a few rounds at most. No one found leaves the incident registered for a person to
    dispatch. Returns each report's (user id, distance) list and the display names.
    """
    wanted = {n: FIRST_RESPONDERS_BY_URGENCY[incident.urgency]
              for n, (report, incident) in enumerate(zip(batch, incidents, strict=True))
              if report.dispatches and incident.zone_id is not None}
    rosters = queries.on_duty_rosters(
        session=session, at=now, pairs={(cast(int, incidents[n].zone_id),
                                         str(batch[n].category.unit_type)) for n in wanted})
    sent: list[_People] = [[] for _ in batch]
    names: dict[int, str] = {}
    picked: set[int] = set()
    todo = sorted(wanted)
    for _ in range(_CLAIM_ROUNDS):
        picks: dict[int, tuple[int, queries.Candidate]] = {}
        for n in todo:
            incident = incidents[n]
            roster = rosters[(cast(int, incident.zone_id), str(batch[n].category.unit_type))]
            need = wanted[n] - len(sent[n])
            for candidate in queries.rank_on_duty(roster, at=now, lon=incident.lon,
                                                  lat=incident.lat):
                if need == 0 or candidate.state != ResponderState.AVAILABLE:
                    break  # the list puts available people first
                if candidate.user_id not in picked:
                    picked.add(candidate.user_id)
                    picks[candidate.user_id] = (n, candidate)
                    need -= 1
        if not picks:
            break
        won = _claim_all(session, [c for _, c in picks.values()], now)
        retry = set()
        for user_id, (n, candidate) in picks.items():
            if user_id in won:
                sent[n].append((user_id, candidate.distance_m))
                if candidate.display_name is not None:
                    names[user_id] = candidate.display_name
            else:
                retry.add(n)
        todo = sorted(retry)
        if not todo:
            break
    return sent, names


@functools.cache
def _claim_all_statement(skip_locked: bool) -> Update:
    """_claim_all's compare-and-set, built once (see queries._by_idempotency_key)."""
    match = [ResponderStatus.user_id.in_(bindparam("claimed", expanding=True)),
             ResponderStatus.state == ResponderState.AVAILABLE]
    if skip_locked:
        match = [ResponderStatus.user_id.in_(select(ResponderStatus.user_id).where(*match)
                                             .with_for_update(skip_locked=True))]
    return update(ResponderStatus).where(*match).values(
        state=ResponderState.BUSY, updated_at=bindparam("now")).returning(ResponderStatus.user_id)


def _claim_all(session: Session, candidates: Sequence[queries.Candidate], now: datetime, *,
               skip_locked: bool = True) -> set[int]:
    """Mark available people busy by compare-and-set, so two dispatches never share one; those
    with no status row yet get one. The ids claimed.

    skip_locked: on PostgreSQL, a responder another transaction is claiming right now counts
    as taken at once, instead of waiting for that transaction to end (the caller moves on to
    the next nearest). SQLite has one writer at a time, so it never waits on a claim anyway.
    """
    skip = skip_locked and session.get_bind().dialect.name == "postgresql"
    won = set(session.scalars(_claim_all_statement(skip),
                              {"claimed": [c.user_id for c in candidates], "now": now},
                              execution_options={"synchronize_session": False}))
    new = [c.user_id for c in candidates if not c.has_status and c.user_id not in won]
    if new:
        won.update(session.scalars(
            _insert(session)(ResponderStatus)
            .values([{"user_id": user_id, "state": ResponderState.BUSY, "updated_at": now}
                     for user_id in new])
            .on_conflict_do_nothing(index_elements=[ResponderStatus.user_id])
            .returning(ResponderStatus.user_id)))
    return won


def _first_steps(session: Session, runtime: Runtime, report: _Checked, incident: Incident,
                 calendar: WorkingCalendar, people: _People) -> _Fresh:
    """Receive, register and dispatch the new incident in memory (see _Fresh), before its row
    exists: the INSERT then writes it as the steps leave it, with no UPDATE after. The rows the
    steps add get the incident's id in _insert_new."""
    call, now = report.call, runtime.clock.now()
    fresh = _Fresh()
    fresh.transitions.append(dict(
        incident_id=None, from_state=None, to_state=IncidentState.RECEIVED, action="receive",
        reason=None, actor=call.actor.username, actor_id=call.actor.id, at=now,
        detail=json.dumps({"channel": report.channel.value}, sort_keys=True)))
    _start_clock(session, fresh, incident=incident, kind=DeadlineKind.DISPATCH,
                 start=report.received, due=report.received + CALL_PROCESSING_LIMIT)
    if call.auto_register:
        _step(session, runtime, AUTO_DISPATCH, incident, Action.REGISTER,
              source_ip=call.source_ip, fresh=fresh)
        _start_tier_clock(session, incident, report.category, calendar, now, fresh=fresh)
    if people:
        _send(session, runtime, AUTO_DISPATCH, incident, report.category, calendar, people,
              source_ip=call.source_ip, fresh=fresh)
    return fresh


def _insert_new(session: Session, incidents: list[Incident], freshes: list[_Fresh]) -> None:
    """Number the incidents, then write them with their transitions, clocks and assignments.

    The day's number counter is the one row every intake shares, locked from its bump to
    COMMIT: a batch bumps it once per day, just before its INSERTs, so the numbers go in with
    the rows and need no UPDATE after. On PostgreSQL the bump and the drawing of the rows' ids
    are one round trip and the rows one statement (db.insert_in_one_statement); elsewhere the
    counter is bumped per day and the rows go in through the flush (the incidents first, for
    their ids).
    """
    deadlines = [d for f in freshes for d in f.deadlines]
    assignments = [a for f in freshes for a in f.assignments]
    by_day = _by_day(incidents)
    if session.get_bind().dialect.name != "postgresql":
        _give_numbers(by_day, {day: _bump_counter(session, day, len(group))
                               for day, group in by_day.items()})
        session.add_all(incidents)
        session.flush(incidents)
        session.execute(_INSERT_TRANSITIONS, _link_to_incidents(incidents, freshes))
        session.add_all([*deadlines, *assignments])
        session.flush()
        return
    _give_numbers(by_day, _number_and_reserve_ids(session, by_day, incidents, deadlines,
                                                  assignments))
    transitions = _link_to_incidents(incidents, freshes)
    insert_in_one_statement(session, [
        (_table(Incident), [column_values(i) for i in incidents]),
        (_table(IncidentTransition), transitions),
        (_table(Deadline), [column_values(d) for d in deadlines]),
        (_table(Assignment), [column_values(a) for a in assignments])])
    attach_as_written(session, [*incidents, *deadlines, *assignments])


def _link_to_incidents(incidents: list[Incident], freshes: list[_Fresh]) -> list[dict[str, Any]]:
    """Set each fresh row's incident_id, now that the incidents have ids; the transitions."""
    transitions = []
    for incident, fresh in zip(incidents, freshes, strict=True):
        for deadline in fresh.deadlines:
            deadline.incident_id = incident.id
        for assignment in fresh.assignments:
            assignment.incident_id = incident.id
        for transition in fresh.transitions:
            transition["incident_id"] = incident.id
            transitions.append(transition)
    return transitions


def _table(model: type[Any]) -> Table:
    return cast(Table, model.__table__)


# PostgreSQL, in one round trip: each day's counter bumped by its count (the days sorted, so
# two batches lock them in the same order), the counters as {day: last}, and the next ids of
# the three sequences.
_NUMBER_AND_RESERVE_IDS = text(
    "WITH bumped AS (INSERT INTO incident_number_counter (day, last) "
    "SELECT day, n FROM unnest(CAST(:days AS varchar[]), CAST(:counts AS integer[])) "
    "AS t(day, n) ON CONFLICT (day) DO UPDATE SET last = incident_number_counter.last + "
    "excluded.last RETURNING day, last) "
    "SELECT (SELECT json_object_agg(day, last) FROM bumped), " + ", ".join(
        f"(SELECT array_agg(nextval(pg_get_serial_sequence('{table}', 'id'))) "
        f"FROM generate_series(1, :{table}))" for table in (
            Incident.__tablename__, Deadline.__tablename__, Assignment.__tablename__)))


def _number_and_reserve_ids(session: Session, by_day: Mapping[str, list[Incident]],
                            incidents: list[Incident], deadlines: list[Deadline],
                            assignments: list[Assignment]) -> dict[str, int]:
    """Bump the days' counters and give the new rows their ids from the sequences before they
    are written, so that the incidents and the rows pointing at them can go in as one
    statement, with nothing to read back. Each day's last number."""
    days = sorted(by_day)
    row = session.execute(_NUMBER_AND_RESERVE_IDS, {
        "days": days, "counts": [len(by_day[day]) for day in days],
        Incident.__tablename__: len(incidents), Deadline.__tablename__: len(deadlines),
        Assignment.__tablename__: len(assignments)}).one()
    _set_ids(incidents, row[1])
    _set_ids(deadlines, row[2])
    _set_ids(assignments, row[3])
    return {day: int(last) for day, last in row[0].items()}


def _set_ids(objects: Sequence[Any], ids: list[int] | None) -> None:
    for obj, new_id in zip(objects, ids or [], strict=True):
        obj.id = new_id


def _audit_new(session: Session, runtime: Runtime, report: _Checked, incident: Incident,
               fresh: _Fresh, duplicates: list[Incident]) -> None:
    """The new incident's audit rows, now that it (and any duplicate in its batch) has its
    number: its creation, then its steps'."""
    call = report.call
    _audit(session, runtime, call.actor, "incident:create", "incident", incident.id,
           call.source_ip, {"number": incident.number, "channel": report.channel.value,
                            "category": report.category.code, "zone_id": incident.zone_id,
                            "duplicate_candidates": [d.number for d in duplicates]})
    for actor, action, detail in fresh.audits:
        _audit(session, runtime, actor, action, "incident", incident.id, call.source_ip,
               {"number": incident.number, **detail})


def request_fingerprint(payload: Mapping[str, Any]) -> str:
    """A stable hash of a submission's content, for telling a true retry from a reused key."""
    text = json.dumps(dict(payload), ensure_ascii=False, sort_keys=True, default=str,
                      separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _same_request(existing: Incident, fingerprint: str | None) -> None:
    # An incident stored without a fingerprint cannot be compared; it counts as the same.
    if fingerprint and existing.request_fingerprint and (
            existing.request_fingerprint != fingerprint):
        raise ValidationFailed("command.error.idempotency_key_reused", number=existing.number)


_INSERT_TRANSITIONS = insert(cast(Table, IncidentTransition.__table__))


# --- dispatch ----------------------------------------------------------------------------------


def _claim_nearest(session: Session, incident: Incident, unit_type: UnitType | str, count: int,
                   now: datetime, *, skip_locked: bool = False,
                   names: dict[int, str] | None = None) -> list[tuple[int, float | None]]:
    """Claim up to `count` of the nearest available; `names` gets the display names of those."""
    if incident.zone_id is None or count <= 0:
        return []
    claimed: list[tuple[int, float | None]] = []
    for candidate in queries.on_duty(session=session, zone_id=incident.zone_id,
                                     unit_type=unit_type, at=now, lon=incident.lon,
                                     lat=incident.lat):
        if candidate.state != ResponderState.AVAILABLE:
            break  # the list puts available people first
        if _claim_all(session, [candidate], now, skip_locked=skip_locked):
            claimed.append((candidate.user_id, candidate.distance_m))
            if names is not None and candidate.display_name is not None:
                names[candidate.user_id] = candidate.display_name
            if len(claimed) == count:
                break
    return claimed


def _send(session: Session, runtime: Runtime, actor: Actor, incident: Incident,
          category: IncidentCategory, calendar: WorkingCalendar,
          people: list[tuple[int, float | None]], *, reason: str | None = None,
          expected_version: int | None = None, source_ip: str | None = None,
          fresh: _Fresh | None = None) -> None:
    now = runtime.clock.now()
    user_ids = [user_id for user_id, _ in people]
    _step(session, runtime, actor, incident, Action.DISPATCH, reason=reason,
          expected_version=expected_version, keep_busy=user_ids, source_ip=source_ip,
          detail={"sent_to": user_ids, "unit_type": category.unit_type.value}, fresh=fresh)
    for user_id, distance in people:
        assignment = Assignment(
            incident_id=incident.id, user_id=user_id, role=ResponseRole.FIRST_RESPONDER,
            unit_type=category.unit_type, distance_m=distance, assigned_by=actor.username,
            assigned_at=now)
        if fresh is None:
            session.add(assignment)
        else:
            fresh.assignments.append(assignment)
    if category.on_scene_required:
        _start_clock(session, fresh, incident=incident, kind=DeadlineKind.FIRST_ON_SCENE,
                     start=now, due=now + FIRST_RESPONSE_LIMIT)
    if fresh is not None:
        has_handling = fresh.has_open(DeadlineKind.HANDLING)
    else:
        has_handling = bool(session.scalar(select(exists().where(
            Deadline.incident_id == incident.id, Deadline.kind == DeadlineKind.HANDLING,
            Deadline.state.in_([DeadlineState.OPEN, DeadlineState.PAUSED])))))
    if not has_handling:
        # The unit's limit runs from when it receives the order (12345 practice).
        _start_clock(session, fresh, incident=incident, kind=DeadlineKind.HANDLING, start=now,
                     due=handling_due(category.limit_value, category.limit_unit, now, calendar))
    if fresh is None:
        session.flush()


def dispatch(*, session: Session, runtime: Runtime, actor: Actor, incident_id: int,
             calendar: WorkingCalendar, user_ids: Sequence[int] | None = None,
             reason: str | None = None, expected_version: int | None = None,
             source_ip: str | None = None) -> Incident:
    """Dispatch by hand: to the named people (even if busy), or to the nearest available."""
    with _atomic(session):
        incident = _load(session, incident_id)
        category = _category(session, incident)
        now = runtime.clock.now()
        check_transition(incident.state, Action.DISPATCH, actor.role, reason=reason)
        if user_ids:
            found = set(session.scalars(select(User.id).where(
                User.id.in_(list(user_ids)), User.is_active.is_(True))))
            if found != set(user_ids):
                raise ValidationFailed("command.error.unknown_user")
            for user_id in user_ids:
                _force_busy(session, user_id, now)
            people: list[tuple[int, float | None]] = [(u, None) for u in dict.fromkeys(user_ids)]
        else:
            people = _claim_nearest(session, incident, category.unit_type,
                                    FIRST_RESPONDERS_BY_URGENCY[incident.urgency], now)
            if not people:
                raise ValidationFailed("command.error.no_responder")
        _send(session, runtime, actor, incident, category, calendar, people, reason=reason,
              expected_version=expected_version, source_ip=source_ip)
    return incident


def register(*, session: Session, runtime: Runtime, actor: Actor, incident_id: int,
             calendar: WorkingCalendar, expected_version: int | None = None,
             source_ip: str | None = None) -> Incident:
    with _atomic(session):
        incident = _load(session, incident_id)
        _step(session, runtime, actor, incident, Action.REGISTER,
              expected_version=expected_version, source_ip=source_ip)
        _start_tier_clock(session, incident, _category(session, incident), calendar,
                          runtime.clock.now())
    return incident


# --- tiered handling (分级诊疗) -------------------------------------------------------------------


def _start_tier_clock(session: Session, incident: Incident, category: IncidentCategory,
                      calendar: WorkingCalendar, now: datetime,
                      fresh: _Fresh | None = None) -> None:
    """The limit of the level that holds the incident now; the top level has none."""
    due = tier_due(Tier(incident.tier), now, calendar, handling_value=category.limit_value,
                   handling_unit=category.limit_unit)
    if due is None:
        return
    _start_clock(session, fresh, incident=incident, kind=DeadlineKind.TIER, start=now, due=due)


def closing_floor(category: IncidentCategory, tier: Tier) -> Tier:
    """The lowest level that may close: the category's own, or the level it was passed up to.

    An incident starts at its unit's tier (UNIT_TIER); only a tier above that start means it was
    escalated, and then the level that took it over closes it, not the one that missed the limit.
    """
    start = UNIT_TIER[UnitType(category.unit_type)]
    if TIER_ORDER[tier] <= TIER_ORDER[start]:
        return Tier(category.may_close_at)
    return higher_tier(Tier(category.may_close_at), tier)


def escalate_tier(session: Session, runtime: Runtime, actor: Actor, incident: Incident,
                  calendar: WorkingCalendar, *, reason: str, expected_version: int | None = None,
                  source_ip: str | None = None) -> Tier:
    """Pass the incident up one level, inside the caller's transaction; the new tier.

    The level below's clock is cancelled (DEADLINE_EFFECTS), the new level's starts, and the
    new level is told. Used by escalate() and by the sweeper when a tier limit runs out.
    """
    above = next_tier(Tier(incident.tier))
    if above is None:
        raise Conflict("command.error.top_tier")
    below = Tier(incident.tier)
    _step(session, runtime, actor, incident, Action.ESCALATE, reason=reason,
          expected_version=expected_version, source_ip=source_ip,
          values={"tier": above}, detail={"from_tier": below.value, "to_tier": above.value})
    now = runtime.clock.now()
    _start_tier_clock(session, incident, _category(session, incident), calendar, now)
    notify(session=session, incident=incident, deadline_id=None, level=NoticeLevel.ESCALATION,
           audience=TIER_AUDIENCE[above], message_id=f"command.notice.tier.escalated.{above}",
           params={"number": incident.number, "reason": reason}, at=now)
    return above


def escalate(*, session: Session, runtime: Runtime, actor: Actor, incident_id: int,
             calendar: WorkingCalendar, reason: str, expected_version: int | None = None,
             source_ip: str | None = None) -> Incident:
    """升级 by hand: the centre passes an incident up a level before its limit runs out."""
    with _atomic(session):
        incident = _load(session, incident_id)
        escalate_tier(session, runtime, actor, incident, calendar, reason=reason,
                      expected_version=expected_version, source_ip=source_ip)
    return incident


# --- the responder's steps ---------------------------------------------------------------------


def accept(*, session: Session, runtime: Runtime, actor: Actor, incident_id: int,
           expected_version: int | None = None, source_ip: str | None = None) -> Incident:
    with _atomic(session):
        incident = _load(session, incident_id)
        check_transition(incident.state, Action.ACCEPT, actor.role)
        assignment = _require_assigned(session, incident.id, actor)
        _step(session, runtime, actor, incident, Action.ACCEPT,
              expected_version=expected_version, source_ip=source_ip)
        if assignment is not None and assignment.accepted_at is None:
            assignment.accepted_at = runtime.clock.now()
    return incident


def arrive(*, session: Session, runtime: Runtime, actor: Actor, incident_id: int,
           lon: float | None = None, lat: float | None = None,
           expected_version: int | None = None, source_ip: str | None = None) -> Incident:
    """The first responder is on scene: stops the five-minute clock."""
    with _atomic(session):
        incident = _load(session, incident_id)
        check_transition(incident.state, Action.ARRIVE, actor.role)
        assignment = _require_assigned(session, incident.id, actor)
        _step(session, runtime, actor, incident, Action.ARRIVE,
              expected_version=expected_version, source_ip=source_ip,
              detail={"lon": lon, "lat": lat})
        now = runtime.clock.now()
        if assignment is not None and assignment.on_scene_at is None:
            assignment.on_scene_at = now
        if actor.id is not None and lon is not None and lat is not None:
            session.execute(
                _insert(session)(ResponderStatus)
                .values(user_id=actor.id, state=ResponderState.BUSY, lon=lon, lat=lat,
                        position_at=now, updated_at=now)
                .on_conflict_do_update(index_elements=[ResponderStatus.user_id],
                                       set_={"lon": lon, "lat": lat, "position_at": now,
                                             "updated_at": now}))
    return incident


def request_reinforcement(*, session: Session, runtime: Runtime, actor: Actor,
                          incident_id: int, unit_type: UnitType | str,
                          reason: str | None = None, expected_version: int | None = None,
                          source_ip: str | None = None) -> ReinforcementRequest:
    """Call another unit to the scene: sends the nearest available and starts its 15 minutes."""
    try:
        unit = UnitType(unit_type)
    except ValueError:
        raise ValidationFailed("command.error.unknown_unit_type") from None
    with _atomic(session):
        incident = _load(session, incident_id)
        check_transition(incident.state, Action.REQUEST_REINFORCEMENT, actor.role)
        _require_assigned(session, incident.id, actor)
        now = runtime.clock.now()
        people = _claim_nearest(session, incident, unit, REINFORCEMENTS_PER_REQUEST, now)
        request = ReinforcementRequest(incident_id=incident.id, unit_type=unit, reason=reason,
                                       requested_by=actor.username, requested_at=now)
        session.add(request)
        session.flush()
        _step(session, runtime, actor, incident, Action.REQUEST_REINFORCEMENT, reason=reason,
              expected_version=expected_version, source_ip=source_ip,
              detail={"request_id": request.id, "unit_type": unit.value,
                      "sent_to": [u for u, _ in people]})
        for user_id, distance in people:
            session.add(Assignment(
                incident_id=incident.id, user_id=user_id, role=ResponseRole.REINFORCEMENT,
                unit_type=unit, reinforcement_request_id=request.id, distance_m=distance,
                assigned_by=actor.username, assigned_at=now))
        new_deadline(session, incident_id=incident.id, kind=DeadlineKind.REINFORCEMENT,
                      start=now, due=now + EFFECTIVE_RESPONSE_LIMIT,
                      reinforcement_request_id=request.id)
    return request


def reinforcement_arrived(*, session: Session, runtime: Runtime, actor: Actor, incident_id: int,
                          request_id: int, expected_version: int | None = None,
                          source_ip: str | None = None) -> ReinforcementRequest:
    with _atomic(session):
        incident = _load(session, incident_id)
        request = session.get(ReinforcementRequest, request_id, populate_existing=True)
        if request is None or request.incident_id != incident.id:
            raise NotFound()
        if request.arrived_at is not None:
            raise Conflict("command.error.already_arrived")
        _step(session, runtime, actor, incident, Action.REINFORCEMENT_ARRIVED,
              expected_version=expected_version, source_ip=source_ip,
              detail={"request_id": request.id})
        now = runtime.clock.now()
        request.arrived_at = now
        _rowcount(session, update(Deadline).where(
            Deadline.reinforcement_request_id == request.id, Deadline.state == DeadlineState.OPEN,
        ).values(state=DeadlineState.MET, settled_at=now, version=Deadline.version + 1))
        _rowcount(session, update(Assignment).where(
            Assignment.reinforcement_request_id == request.id, Assignment.on_scene_at.is_(None),
        ).values(on_scene_at=now))
    return request


def handle(*, session: Session, runtime: Runtime, actor: Actor, incident_id: int,
           note: str | None = None, expected_version: int | None = None,
           source_ip: str | None = None) -> Incident:
    """The work is done (处置) and reported back (反馈); it now waits for a check."""
    with _atomic(session):
        incident = _load(session, incident_id)
        category = _category(session, incident)
        context = TransitionContext(actor_id=actor.id,
                                    on_scene_required=category.on_scene_required)
        check_transition(incident.state, Action.HANDLE, actor.role, context=context)
        _require_assigned(session, incident.id, actor)
        _step(session, runtime, actor, incident, Action.HANDLE, reason=note, context=context,
              expected_version=expected_version, source_ip=source_ip)
        if actor.id is not None:
            session.add(Assignment(incident_id=incident.id, user_id=actor.id,
                                   role=ResponseRole.HANDLER, assigned_by=actor.username,
                                   assigned_at=runtime.clock.now()))
    return incident


def check(*, session: Session, runtime: Runtime, actor: Actor, incident_id: int,
          note: str | None = None, expected_version: int | None = None,
          source_ip: str | None = None) -> Incident:
    """Verify the work (核查); refused to whoever handled it."""
    with _atomic(session):
        incident = _load(session, incident_id)
        context = TransitionContext(
            actor_id=actor.id,
            handler_ids=queries.handler_ids(session=session, incident_id=incident.id))
        _step(session, runtime, actor, incident, Action.CHECK, reason=note, context=context,
              expected_version=expected_version, source_ip=source_ip)
        if actor.id is not None:
            session.add(Assignment(incident_id=incident.id, user_id=actor.id,
                                   role=ResponseRole.CHECKER, assigned_by=actor.username,
                                   assigned_at=runtime.clock.now()))
    return incident


def close(*, session: Session, runtime: Runtime, actor: Actor, incident_id: int,
          calendar: WorkingCalendar, note: str | None = None,
          expected_version: int | None = None, source_ip: str | None = None) -> Incident:
    """Close (结案) at or above the category's tier; a reporter is called back next working day."""
    with _atomic(session):
        incident = _load(session, incident_id)
        category = _category(session, incident)
        context = TransitionContext(actor_id=actor.id,
                                    may_close_at=closing_floor(category, Tier(incident.tier)))
        _step(session, runtime, actor, incident, Action.CLOSE, reason=note, context=context,
              expected_version=expected_version, source_ip=source_ip)
        if incident.reporter_phone_enc is not None:
            now = runtime.clock.now()
            new_deadline(session, incident_id=incident.id, kind=DeadlineKind.CALLBACK,
                          start=now, due=calendar.add_working_days(now, CALLBACK_WORKING_DAYS))
    return incident


def callback(*, session: Session, runtime: Runtime, actor: Actor, incident_id: int,
             satisfied: bool, note: str | None = None, expected_version: int | None = None,
             source_ip: str | None = None) -> Incident:
    """Record the reporter's answer to the callback (回访); an unhappy one may be reopened."""
    with _atomic(session):
        incident = _load(session, incident_id)
        _step(session, runtime, actor, incident, Action.CALLBACK, reason=note,
              expected_version=expected_version, source_ip=source_ip,
              values={"satisfied": satisfied}, detail={"satisfied": satisfied})
    return incident


# --- exception paths ---------------------------------------------------------------------------


def extend(*, session: Session, runtime: Runtime, actor: Actor, incident_id: int,
           calendar: WorkingCalendar, working_days: int, reason: str,
           expected_version: int | None = None, source_ip: str | None = None) -> Incident:
    """Extend the handling limit (延时), at most EXTENSION_MAX_WORKING_DAYS in all."""
    with _atomic(session):
        incident = _load(session, incident_id)
        check_transition(incident.state, Action.EXTEND, actor.role, reason=reason)
        if not 1 <= working_days <= EXTENSION_MAX_WORKING_DAYS - incident.extension_days:
            raise ValidationFailed("command.error.extension_too_long",
                                   limit=EXTENSION_MAX_WORKING_DAYS)
        handling = [d for d in queries.deadlines_of(session=session, incident_id=incident.id,
                                                    open_only=True)
                    if d.kind == DeadlineKind.HANDLING]
        if not handling:
            raise Conflict("command.error.no_open_deadline")
        _step(session, runtime, actor, incident, Action.EXTEND, reason=reason,
              expected_version=expected_version, source_ip=source_ip,
              values={"extension_days": Incident.extension_days + working_days},
              detail={"working_days": working_days})
        for deadline in handling:
            due = calendar.add_working_days(deadline.due_at, working_days)
            won = _rowcount(session, update(Deadline).where(
                Deadline.id == deadline.id, Deadline.version == deadline.version,
            ).values(due_at=due, warn_at=warn_time(deadline.starts_at, due),
                     level=DeadlineLevel.NONE, version=Deadline.version + 1))
            if won != 1:
                raise Conflict("command.error.concurrent_change")
    return incident


def send_back(*, session: Session, runtime: Runtime, actor: Actor, incident_id: int,
              reason: str, calendar: WorkingCalendar | None = None,
              expected_version: int | None = None, source_ip: str | None = None) -> Incident:
    """"Not ours" (回退): back to the command centre, within 2 working days of the dispatch."""
    with _atomic(session):
        incident = _load(session, incident_id)
        check_transition(incident.state, Action.SEND_BACK, actor.role, reason=reason)
        _require_assigned(session, incident.id, actor)
        now = runtime.clock.now()
        dispatched = queries.latest_transition_at(session=session, incident_id=incident.id,
                                                  action=Action.DISPATCH)
        if calendar is not None and dispatched is not None and now > calendar.add_working_days(
                dispatched, SEND_BACK_WORKING_DAYS):
            raise ValidationFailed("command.error.send_back_too_late",
                                   days=SEND_BACK_WORKING_DAYS)
        _step(session, runtime, actor, incident, Action.SEND_BACK, reason=reason,
              expected_version=expected_version, source_ip=source_ip)
        new_deadline(session, incident_id=incident.id, kind=DeadlineKind.DISPATCH, start=now,
                      due=now + CALL_PROCESSING_LIMIT)
    return incident


def void(*, session: Session, runtime: Runtime, actor: Actor, incident_id: int, reason: str,
         expected_version: int | None = None, source_ip: str | None = None) -> Incident:
    with _atomic(session):
        incident = _load(session, incident_id)
        _step(session, runtime, actor, incident, Action.VOID, reason=reason,
              expected_version=expected_version, source_ip=source_ip)
    return incident


def merge_duplicate(*, session: Session, runtime: Runtime, actor: Actor, incident_id: int,
                    original_id: int, reason: str | None = None,
                    expected_version: int | None = None,
                    source_ip: str | None = None) -> Incident:
    """Fold a duplicate into the original: it is voided and points at the original."""
    with _atomic(session):
        incident = _load(session, incident_id)
        original = session.get(Incident, original_id)
        if original is None:
            raise NotFound()
        if original.id == incident.id or original.state == IncidentState.VOIDED:
            raise ValidationFailed("command.error.bad_original")
        _step(session, runtime, actor, incident, Action.MERGE, reason=reason,
              expected_version=expected_version, source_ip=source_ip,
              values={"duplicate_of_id": original.id, "needs_duplicate_review": False},
              detail={"original": original.number})
    return incident


def keep_separate(*, session: Session, runtime: Runtime, actor: Actor, incident_id: int,
                  reason: str | None = None, expected_version: int | None = None,
                  source_ip: str | None = None) -> Incident:
    """The dispatcher judged a flagged incident not to be a duplicate."""
    with _atomic(session):
        incident = _load(session, incident_id)
        _step(session, runtime, actor, incident, Action.KEEP_SEPARATE, reason=reason,
              expected_version=expected_version, source_ip=source_ip,
              values={"needs_duplicate_review": False})
    return incident


def suspend(*, session: Session, runtime: Runtime, actor: Actor, incident_id: int, reason: str,
            expected_version: int | None = None, source_ip: str | None = None) -> Incident:
    """Suspend (挂账): every running clock is paused with the time it had left."""
    with _atomic(session):
        incident = _load(session, incident_id)
        _step(session, runtime, actor, incident, Action.SUSPEND, reason=reason,
              expected_version=expected_version, source_ip=source_ip,
              values={"state_before_suspend": incident.state})
        now = runtime.clock.now()
        for deadline in queries.deadlines_of(session=session, incident_id=incident.id,
                                             open_only=True):
            remaining = max(0, int((deadline.due_at - now).total_seconds()))
            _cas_deadline(session, deadline, state=DeadlineState.PAUSED,
                          paused_remaining_s=remaining)
    return incident


def resume(*, session: Session, runtime: Runtime, actor: Actor, incident_id: int, reason: str,
           expected_version: int | None = None, source_ip: str | None = None) -> Incident:
    """Resume: back to the state before the suspension, the clocks with the time they had."""
    with _atomic(session):
        incident = _load(session, incident_id)
        _step(session, runtime, actor, incident, Action.RESUME, reason=reason,
              expected_version=expected_version, source_ip=source_ip,
              values={"state_before_suspend": None})
        now = runtime.clock.now()
        paused = session.scalars(select(Deadline).where(
            Deadline.incident_id == incident.id, Deadline.state == DeadlineState.PAUSED)).all()
        for deadline in paused:
            due = now + timedelta(seconds=deadline.paused_remaining_s or 0)
            warn_gap = deadline.due_at - deadline.warn_at
            _cas_deadline(session, deadline, state=DeadlineState.OPEN, due_at=due,
                          warn_at=max(now, due - warn_gap), paused_remaining_s=None)
    return incident


def _cas_deadline(session: Session, deadline: Deadline, **values: Any) -> None:
    won = _rowcount(session, update(Deadline).where(
        Deadline.id == deadline.id, Deadline.version == deadline.version,
    ).values(version=Deadline.version + 1, **values))
    if won != 1:
        raise Conflict("command.error.concurrent_change")


def supervise(*, session: Session, runtime: Runtime, actor: Actor, incident_id: int,
              reason: str, expected_version: int | None = None,
              source_ip: str | None = None) -> list[Notice]:
    """督办: a supervision notice to the people on the incident (or the zone's responders)."""
    with _atomic(session):
        incident = _load(session, incident_id)
        _step(session, runtime, actor, incident, Action.SUPERVISE, reason=reason,
              expected_version=expected_version, source_ip=source_ip)
        notices = notify(session=session, incident=incident, deadline_id=None,
                         level=NoticeLevel.SUPERVISION, audience=Audience.RESPONDER,
                         message_id="command.notice.supervise",
                         params={"number": incident.number, "reason": reason,
                                 "by": actor.username},
                         at=runtime.clock.now())
    return notices


def reopen(*, session: Session, runtime: Runtime, actor: Actor, incident_id: int, reason: str,
           calendar: WorkingCalendar, expected_version: int | None = None,
           source_ip: str | None = None) -> Incident:
    """Reopen (重开) a closed incident, e.g. after an unsatisfied callback; it needs dispatching."""
    with _atomic(session):
        incident = _load(session, incident_id)
        _step(session, runtime, actor, incident, Action.REOPEN, reason=reason,
              expected_version=expected_version, source_ip=source_ip)
        now = runtime.clock.now()
        new_deadline(session, incident_id=incident.id, kind=DeadlineKind.DISPATCH, start=now,
                      due=now + CALL_PROCESSING_LIMIT)
        # The level that holds it gets its limit afresh (the old clock ended at closing).
        _start_tier_clock(session, incident, _category(session, incident), calendar, now)
    return incident


# --- notices (also used by the sweeper) --------------------------------------------------------


def _audience_role(session: Session, incident: Incident, audience: Audience) -> Role:
    """The role a notice to the audience goes to. A zone with no zone leader named yet (say,
    a deployment from before the role) has its notices go to its responders, as before,
    rather than to no one."""
    role = AUDIENCE_ROLE[audience]
    if audience == Audience.ZONE_LEADER and not queries.has_role_over(
            session=session, role=role, region_path=incident.region_path):
        return Role.ZONE_RESPONDER
    return role


def notify(*, session: Session, incident: Incident, deadline_id: int | None, level: NoticeLevel,
           audience: Audience, message_id: str, params: Mapping[str, Any], at: datetime,
           responder_roles: frozenset[ResponseRole] = FIELD_ROLES) -> list[Notice]:
    """Notices to an audience: a responder audience means the people on the incident, by name."""
    users = queries.active_field_user_ids(session=session, incident_id=incident.id,
                                          roles=responder_roles) \
        if audience == Audience.RESPONDER else []
    text = json.dumps(dict(params), ensure_ascii=False, sort_keys=True, default=str)
    targets: list[tuple[Role | None, int | None]] = [(None, u) for u in users] or [
        (_audience_role(session, incident, audience), None)]
    notices = [Notice(incident_id=incident.id, deadline_id=deadline_id, level=level,
                      audience=audience, to_role=role, to_user_id=user_id,
                      zone_id=incident.zone_id, message_id=message_id, params=text, at=at)
               for role, user_id in targets]
    session.add_all(notices)
    return notices


def mark_notices_read(*, session: Session, runtime: Runtime, actor: User,
                      notice_ids: Sequence[int], source_ip: str | None = None) -> int:
    """Mark these notices read (已阅). Only unread notices the actor may see are touched
    (queries.notices_for); the others are left as they are, as if not there. How many were
    marked; nothing is written when none were. (The page's "mark all" sends the ids it showed:
    a notice that came in since, or one beyond the page, is not acknowledged unseen.)"""
    person = cast(Actor, actor)
    _require(person, Permission.INCIDENTS_READ)
    if not notice_ids:
        return 0
    with _atomic(session):
        marked = session.scalars(
            update(Notice)
            .where(Notice.id.in_(sorted(set(notice_ids))), Notice.read_at.is_(None),
                   Notice.id.in_(queries.notice_ids_for(session=session, user=actor)))
            .values(read_at=runtime.clock.now(), read_by=actor.username)
            .returning(Notice.id)
            .execution_options(synchronize_session=False))
        ids = sorted(marked)
        if ids:
            _audit(session, runtime, person, "notice:read", "notice",
                   ids[0] if len(ids) == 1 else "many", source_ip, {"notice_ids": ids})
    return len(ids)


# --- rosters -----------------------------------------------------------------------------------


def create_duty_shift(*, session: Session, runtime: Runtime, actor: Actor, user_id: int,
                      zone_id: int, unit_type: UnitType | str, starts_at: datetime,
                      ends_at: datetime, source_ip: str | None = None) -> DutyShift:
    """Put someone on the roster of a zone's unit for a time span."""
    _require(actor, Permission.INCIDENTS_DISPATCH)
    try:
        unit = UnitType(unit_type)
    except ValueError:
        raise ValidationFailed("command.error.unknown_unit_type") from None
    if ends_at <= starts_at:
        raise ValidationFailed("command.error.bad_shift")
    with _atomic(session):
        user = session.get(User, user_id)
        zone = session.get(Region, zone_id)
        if user is None or not user.is_active:
            raise ValidationFailed("command.error.unknown_user")
        if zone is None or zone.level != RegionLevel.ZONE:
            raise ValidationFailed("command.error.not_a_zone")
        shift = DutyShift(user_id=user_id, zone_id=zone_id, unit_type=unit,
                          starts_at=starts_at, ends_at=ends_at)
        session.add(shift)
        session.flush()
        _audit(session, runtime, actor, "duty_shift:create", "duty_shift", shift.id, source_ip,
               {"user_id": user_id, "zone_id": zone_id, "unit_type": unit.value,
                "starts_at": starts_at, "ends_at": ends_at})
    return shift


def update_responder_status(*, session: Session, runtime: Runtime, actor: Actor,
                            user_id: int | None = None, state: ResponderState | str | None = None,
                            lon: float | None = None, lat: float | None = None,
                            source_ip: str | None = None) -> ResponderStatus:
    """A responder reports availability and/or position; dispatchers may set anyone's.

    Availability changes are audited; a bare position ping is not, because it is telemetry
    (every 30 s from each phone) and the audit trail would drown in it.
    """
    target = user_id if user_id is not None else actor.id
    if target is None:
        raise ValidationFailed("command.error.unknown_user")
    if target != actor.id:
        _require(actor, Permission.INCIDENTS_DISPATCH)
    if (lon is None) != (lat is None) or (
            lon is not None and lat is not None and not (-180 <= lon <= 180 and -90 <= lat <= 90)):
        raise ValidationFailed("command.error.bad_location")
    try:
        new_state = ResponderState(state) if state is not None else None
    except ValueError:
        raise ValidationFailed("command.error.bad_responder_state") from None
    with _atomic(session):
        now = runtime.clock.now()
        status = session.get(ResponderStatus, target, populate_existing=True)
        before = status.state if status is not None else None
        if status is None:
            if session.get(User, target) is None:
                raise ValidationFailed("command.error.unknown_user")
            status = ResponderStatus(user_id=target, state=new_state or ResponderState.AVAILABLE,
                                     updated_at=now)
            session.add(status)
        elif new_state is not None:
            status.state = new_state
        if lon is not None and lat is not None:
            status.lon, status.lat, status.position_at = lon, lat, now
        status.updated_at = now
        session.flush()
        if status.state != before:
            _audit(session, runtime, actor, "responder:status", "user", target, source_ip,
                   {"from": before.value if before else None, "to": status.state.value})
    return status


# --- 12345 ↔ 110 transfers ---------------------------------------------------------------------

POLICE_CLIENT = "police_110"  # the 110 desk, as the client of an incident it hands over
POLICE_REF_MAX_CHARS = 60


def _police_ref(reference: str | None) -> str:
    ref = (reference or "").strip()
    if not ref or len(ref) > POLICE_REF_MAX_CHARS:
        raise ValidationFailed("command.error.police_ref_required")
    return ref


def receive_from_police(*, session: Session, runtime: Runtime, actor: Actor, police_ref: str,
                        category_code: str, calendar: WorkingCalendar,
                        locator: Locator | None = None, fingerprint: str | None = None,
                        **fields: Any) -> IntakeResult:
    """Take in an incident 110 handed over (非警务警情), keyed by 110's reference number.

    The reference is the idempotency key with the 110 desk as the client, so the same hand-over
    entered twice (a double click, or two dispatchers) is one incident; entered again with
    different content it is refused, naming the incident it already became. Only people who
    dispatch may record a hand-over. `fields` are intake's other keywords.
    """
    _require(actor, Permission.INCIDENTS_DISPATCH)
    ref = _police_ref(police_ref)
    existing = queries.find_by_idempotency_key(session=session, channel=Channel.POLICE_110,
                                               client_ref=POLICE_CLIENT, key=ref)
    if existing is not None and fingerprint and existing.request_fingerprint and (
            existing.request_fingerprint != fingerprint):
        raise ValidationFailed("command.error.police_ref_taken", ref=ref, number=existing.number)
    return intake(session=session, runtime=runtime, actor=actor, channel=Channel.POLICE_110,
                  category_code=category_code, calendar=calendar, locator=locator,
                  idempotency_key=ref, client_ref=POLICE_CLIENT, external_ref=ref,
                  fingerprint=fingerprint, **fields)


def transfer_to_police(*, session: Session, runtime: Runtime, actor: Actor, incident_id: int,
                       desk: PoliceDesk, reason: str | None = None,
                       expected_version: int | None = None,
                       source_ip: str | None = None) -> Incident:
    """Hand a police-work incident (category is_police) to 110 and keep the desk's reference.

    Transferring is how police work is dispatched, so the dispatch row of the transition table
    decides who may do it and from which states; the incident becomes dispatched (to 110), its
    dispatch clock is met and no local clocks start, since the police run their own. The row is
    changed first and the desk called after, so a lost race never sends anything; if the desk
    fails, nothing is recorded.
    """
    _require(actor, Permission.INCIDENTS_DISPATCH)
    with _atomic(session):
        incident = _load(session, incident_id)
        category = _category(session, incident)
        if not category.is_police:
            raise ValidationFailed("command.error.not_police_work")
        if incident.police_ref:
            raise Conflict("command.error.already_with_police", ref=incident.police_ref)
        check_transition(incident.state, Action.DISPATCH, actor.role, reason=reason)
        if expected_version is not None and expected_version != incident.version:
            raise Conflict("command.error.concurrent_change")
        now = runtime.clock.now()
        from_state = incident.state
        changes: dict[str, Any] = {"state": IncidentState.DISPATCHED,
                                   "version": Incident.version + 1}
        if incident.dispatched_at is None:
            changes["dispatched_at"] = now
        won = _rowcount(session, update(Incident).where(
            Incident.id == incident.id, Incident.version == incident.version).values(**changes))
        if won != 1:
            raise Conflict("command.error.concurrent_change")
        phone = runtime.crypto.decrypt(incident.reporter_phone_enc,
                                       context=queries.PHONE_CONTEXT) \
            if incident.reporter_phone_enc else None
        sent = PoliceTransfer(
            incident_number=incident.number, category_code=category.code,
            category_name=category.name_zh, title=incident.title,
            description=incident.description, lon=incident.lon, lat=incident.lat,
            address_text=incident.address_text, reporter_phone=phone, reason=reason,
            sent_at=now)
        try:
            reference = desk.transfer(sent)
        except PoliceDeskUnavailable:
            raise
        except Exception as exc:
            raise PoliceDeskUnavailable() from exc
        reference = _police_ref(reference)
        _rowcount(session, update(Incident).where(Incident.id == incident.id)
                  .values(police_ref=reference))
        details = {"from": from_state.value, "to": IncidentState.DISPATCHED.value,
                   "police_ref": reference, "desk": type(desk).__name__,
                   "reporter_phone_sent": phone is not None}
        session.add(IncidentTransition(
            incident_id=incident.id, from_state=from_state, to_state=IncidentState.DISPATCHED,
            action=TRANSFER_TO_POLICE, reason=reason, actor=actor.username, actor_id=actor.id,
            at=now, detail=json.dumps(details, ensure_ascii=False, sort_keys=True)))
        _audit(session, runtime, actor, f"incident:transition:{TRANSFER_TO_POLICE}", "incident",
               incident.id, source_ip, {"number": incident.number, "reason": reason, **details})
        for kinds, settled in DEADLINE_EFFECTS.get(Action.DISPATCH, ()):
            _settle(session, incident.id, kinds, settled, now)
        _release_keeping(session, incident.id, RELEASES[Action.DISPATCH], now, ())
        session.refresh(incident)
    return incident


# --- personal data -----------------------------------------------------------------------------


def reveal_reporter_phone(*, session: Session, runtime: Runtime, actor: Actor, incident_id: int,
                          reason: str, source_ip: str | None = None) -> str:
    """The reporter's full phone number for someone allowed to unmask it, logged with the reason.

    The caller has checked the incident is in the actor's data scope.
    """
    _require(actor, Permission.PERSONAL_DATA_UNMASK)
    if actor.role is None:
        raise PermissionDenied()  # a person states the reason, never a process
    with _atomic(session):
        incident = _load(session, incident_id)
        if incident.reporter_phone_enc is None:
            raise NotFound("command.error.no_reporter_phone")
        return reveal(session, runtime=runtime, actor=actor.username,
                      field_context=queries.PHONE_CONTEXT, object_type="incident",
                      object_id=incident.id, ciphertext=incident.reporter_phone_enc,
                      reason=reason, source_ip=source_ip)


# --- one entry by name, for the API and the pages ----------------------------------------------


@dataclass(frozen=True)
class StepRequest:
    """What a person submits with an action; each action reads the fields it needs."""

    reason: str | None = None
    expected_version: int | None = None
    user_ids: tuple[int, ...] = ()
    unit_type: str | None = None
    request_id: int | None = None
    satisfied: bool | None = None
    working_days: int | None = None
    original_id: int | None = None
    lon: float | None = None
    lat: float | None = None


@dataclass(frozen=True)
class _Call:
    session: Session
    runtime: Runtime
    actor: Actor
    incident_id: int
    request: StepRequest
    calendar: WorkingCalendar
    desk: PoliceDesk | None
    source_ip: str | None

    def common(self) -> dict[str, Any]:
        return {"session": self.session, "runtime": self.runtime, "actor": self.actor,
                "incident_id": self.incident_id,
                "expected_version": self.request.expected_version, "source_ip": self.source_ip}

    @property
    def text(self) -> str:
        return self.request.reason or ""


def _needed(value: Any, name: str) -> Any:
    if value is None:
        raise ValidationFailed("command.error.field_required", field=name)
    return value


def _transfer(c: _Call) -> Incident:
    desk: PoliceDesk = _needed(c.desk, "police_desk")
    return transfer_to_police(**c.common(), desk=desk, reason=c.request.reason)


_STEPS: dict[str, Callable[[_Call], object]] = {
    "register": lambda c: register(**c.common(), calendar=c.calendar),
    "dispatch": lambda c: dispatch(**c.common(), calendar=c.calendar,
                                   user_ids=list(c.request.user_ids) or None,
                                   reason=c.request.reason),
    "accept": lambda c: accept(**c.common()),
    "arrive": lambda c: arrive(**c.common(), lon=c.request.lon, lat=c.request.lat),
    "request_reinforcement": lambda c: request_reinforcement(
        **c.common(), unit_type=_needed(c.request.unit_type, "unit_type"),
        reason=c.request.reason),
    "reinforcement_arrived": lambda c: reinforcement_arrived(
        **c.common(), request_id=_needed(c.request.request_id, "request_id")),
    "handle": lambda c: handle(**c.common(), note=c.request.reason),
    "check": lambda c: check(**c.common(), note=c.request.reason),
    "close": lambda c: close(**c.common(), calendar=c.calendar, note=c.request.reason),
    "callback": lambda c: callback(**c.common(), satisfied=_needed(c.request.satisfied,
                                                                   "satisfied"),
                                   note=c.request.reason),
    "extend": lambda c: extend(**c.common(), calendar=c.calendar, reason=c.text,
                               working_days=_needed(c.request.working_days, "working_days")),
    "send_back": lambda c: send_back(**c.common(), reason=c.text, calendar=c.calendar),
    "void": lambda c: void(**c.common(), reason=c.text),
    "suspend": lambda c: suspend(**c.common(), reason=c.text),
    "resume": lambda c: resume(**c.common(), reason=c.text),
    "supervise": lambda c: supervise(**c.common(), reason=c.text),
    "reopen": lambda c: reopen(**c.common(), reason=c.text, calendar=c.calendar),
    "escalate": lambda c: escalate(**c.common(), calendar=c.calendar, reason=c.text),
    "merge_duplicate": lambda c: merge_duplicate(
        **c.common(), original_id=_needed(c.request.original_id, "original_id"),
        reason=c.request.reason),
    "keep_separate": lambda c: keep_separate(**c.common(), reason=c.request.reason),
    TRANSFER_TO_POLICE: _transfer,
}
# The names the API and the pages accept: the table's actions ("merge" is spelt out) plus the
# transfer to 110.
STEP_NAMES: tuple[str, ...] = tuple(_STEPS)
STEP_ACTIONS: dict[str, str] = {name: ("merge" if name == "merge_duplicate" else name)
                                for name in STEP_NAMES}


def take_action(*, session: Session, runtime: Runtime, actor: Actor, incident_id: int,
                action: str, request: StepRequest, calendar: WorkingCalendar,
                police_desk: PoliceDesk | None = None, source_ip: str | None = None) -> None:
    """Run one of STEP_NAMES on an incident; an unknown name is NotFound."""
    step = _STEPS.get(action)
    if step is None:
        raise NotFound("command.error.unknown_action", action=action)
    step(_Call(session, runtime, actor, incident_id, request, calendar, police_desk, source_ip))


# --- the dispatcher's and the API's entry --------------------------------------------------------

# Channels a person or client may name when entering an incident directly; the others belong to
# their own front doors (Open311, the grid worker's phone page, irrigation alarms …).
ENTRY_CHANNELS = frozenset({Channel.API, Channel.PHONE, Channel.POLICE_110})
# Calls taken by the centre: only people who dispatch may record them.
CENTRE_CHANNELS = frozenset({Channel.PHONE, Channel.POLICE_110})


def _entry_channel(actor: User, channel: Channel | str) -> Channel:
    """The channel a person enters a report by, refused if it is not theirs to use."""
    chosen = _channel(channel)
    if chosen not in ENTRY_CHANNELS:
        raise ValidationFailed("command.error.unknown_channel", channel=chosen.value)
    if chosen in CENTRE_CHANNELS:
        _require(cast(Actor, actor), Permission.INCIDENTS_DISPATCH)
    return chosen


def entry_call(*, actor: User, channel: Channel | str, category_code: str,
               lon: float | None = None, lat: float | None = None,
               address_text: str | None = None, address_id: str | None = None,
               description: str = "", reporter_phone: str | None = None,
               reporter_name: str | None = None, attributes: Mapping[str, Any] | None = None,
               urgency: int | None = None, idempotency_key: str | None = None,
               fingerprint: str | None = None, source_ip: str | None = None,
               received_at: datetime | None = None) -> IntakeCall | None:
    """enter_incident's report as an IntakeCall for the group-commit writer, checked as far as
    it can be without the database; None for a 110 hand-over, which enter_incident takes."""
    chosen = _entry_channel(actor, channel)
    if chosen == Channel.POLICE_110:
        return None
    return IntakeCall(
        actor=PersonActor.of(cast(Actor, actor)), channel=chosen, category_code=category_code,
        idempotency_key=idempotency_key or None, fingerprint=fingerprint,
        received_at=received_at, **_entry_fields(
            actor, lon=lon, lat=lat, address_text=address_text, address_id=address_id,
            description=description, reporter_phone=reporter_phone,
            reporter_name=reporter_name, attributes=attributes, urgency=urgency,
            source_ip=source_ip))


def _entry_fields(actor: User, *, lon: float | None, lat: float | None,
                  address_text: str | None, address_id: str | None, description: str,
                  reporter_phone: str | None, reporter_name: str | None,
                  attributes: Mapping[str, Any] | None, urgency: int | None,
                  source_ip: str | None) -> dict[str, Any]:
    """intake's keywords for a report a person enters: blanks as None, and the place checked
    against their data scope."""
    return {"lon": lon, "lat": lat, "address_text": address_text or None,
            "address_id": address_id, "description": description,
            "reporter_phone": reporter_phone or None, "reporter_name": reporter_name or None,
            "attributes": attributes, "urgency": urgency, "source_ip": source_ip,
            "check_scope": True, "scope_region_id": actor.scope_region_id}


def enter_incident(*, session: Session, runtime: Runtime, actor: User, channel: Channel | str,
                   category_code: str, calendar: WorkingCalendar | None,
                   locator: Locator | None,
                   lon: float | None = None, lat: float | None = None,
                   address_text: str | None = None, address_id: str | None = None,
                   description: str = "",
                   reporter_phone: str | None = None, reporter_name: str | None = None,
                   attributes: Mapping[str, Any] | None = None, urgency: int | None = None,
                   idempotency_key: str | None = None, police_ref: str | None = None,
                   fingerprint: str | None = None, source_ip: str | None = None) -> IntakeResult:
    """A report typed in by a person (phone call, 110 hand-over) or sent by an API client.

    Phone calls and 110 hand-overs are the centre's to record. A point located in a region
    outside the person's data scope is refused, since they could not follow it up (a point
    outside every region is the centre's, and allowed). A 110 hand-over is keyed by its
    reference number (receive_from_police); everything else by the caller's idempotency key.
    With no calendar, the calendar and the locator are read here (intake_context). entry_call
    makes the same report for the group-commit writer instead.
    """
    chosen = _entry_channel(actor, channel)
    who = cast(Actor, actor)  # a User is an Actor; mypy cannot read Mapped[] columns as values
    fields = _entry_fields(actor, lon=lon, lat=lat, address_text=address_text,
                           address_id=address_id, description=description,
                           reporter_phone=reporter_phone, reporter_name=reporter_name,
                           attributes=attributes, urgency=urgency, source_ip=source_ip)
    if calendar is None:
        calendar, locator = intake_context(session)
    if chosen == Channel.POLICE_110:
        return receive_from_police(session=session, runtime=runtime, actor=who,
                                   police_ref=police_ref or "", category_code=category_code,
                                   calendar=calendar, locator=locator, fingerprint=fingerprint,
                                   **fields)
    return intake(session=session, runtime=runtime, actor=who, channel=chosen,
                  category_code=category_code, calendar=calendar, locator=locator,
                  idempotency_key=idempotency_key or None, fingerprint=fingerprint, **fields)
