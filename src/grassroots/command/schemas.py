"""The incidents API's input and output shapes (tables live in models.py, reads in queries.py)."""

from __future__ import annotations

import enum
import json
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from grassroots.command.queries import IncidentView, ResponderView, TimelineEntry
from grassroots.command.states import (
    DESCRIPTION_MAX_CHARS,
    FIELD_ROLES,
    ResponderState,
    UnitType,
)
from grassroots.kernel.regions.geo import gcj02_to_wgs84

REASON_MAX_CHARS = 2000


class Crs(enum.StrEnum):
    """Coordinates arrive as GPS (WGS-84) or from a Chinese commercial map (GCJ-02)."""

    WGS84 = "wgs84"
    GCJ02 = "gcj02"


def to_wgs84(lon: float | None, lat: float | None, crs: Crs) -> tuple[float | None, float | None]:
    if lon is None or lat is None or crs == Crs.WGS84:
        return lon, lat
    return gcj02_to_wgs84(lon, lat)


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IncidentIn(_In):
    """A new incident. One location: lon+lat (WGS-84 unless crs says gcj02), address_id (a door
    plate's id or a standard address code) or address_text; an address resolves to its point."""

    category_code: str = Field(min_length=1, max_length=60)
    lon: float | None = Field(default=None, ge=-180, le=180)
    lat: float | None = Field(default=None, ge=-90, le=90)
    crs: Crs = Crs.WGS84
    address_text: str | None = Field(default=None, max_length=300)
    address_id: str | None = Field(
        default=None, max_length=120,
        description="a door plate's id (the QR code) or a standard address (一标) code")
    description: str = Field(default="", max_length=DESCRIPTION_MAX_CHARS)
    reporter_phone: str | None = Field(default=None, max_length=40)
    reporter_name: str | None = Field(default=None, max_length=60)
    attributes: dict[str, Any] = Field(default_factory=dict)
    urgency: int | None = Field(default=None, ge=1, le=4)
    channel: Literal["api", "phone", "police_110"] = Field(
        default="api", description="phone and police_110 are for dispatchers only")
    police_ref: str | None = Field(
        default=None, max_length=60,
        description="110's reference number; required with channel police_110, whose "
                    "hand-over it also keys (the Idempotency-Key header is not needed then)")


class ActionIn(_In):
    """What an action takes; each action reads the fields it needs."""

    reason: str | None = Field(default=None, max_length=REASON_MAX_CHARS)
    notes: str | None = Field(default=None, max_length=REASON_MAX_CHARS,
                              description="the same as reason, for handle/check/close/callback")
    expected_version: int | None = Field(
        default=None, description="the incident's version you saw; 409 if it has moved on")
    user_ids: list[int] = Field(default_factory=list, description="dispatch: send these people")
    unit_type: UnitType | None = Field(default=None, description="request_reinforcement")
    request_id: int | None = Field(default=None, description="reinforcement_arrived")
    satisfied: bool | None = Field(default=None, description="callback")
    working_days: int | None = Field(default=None, ge=1, le=10, description="extend")
    original_id: int | None = Field(default=None, description="merge_duplicate")
    lon: float | None = Field(default=None, ge=-180, le=180, description="arrive")
    lat: float | None = Field(default=None, ge=-90, le=90, description="arrive")
    crs: Crs = Crs.WGS84


class RevealIn(_In):
    reason: str = Field(min_length=1, max_length=500)


class PositionIn(_In):
    lon: float | None = Field(default=None, ge=-180, le=180)
    lat: float | None = Field(default=None, ge=-90, le=90)
    crs: Crs = Crs.WGS84
    state: ResponderState | None = None


class RegionOut(BaseModel):
    id: int
    name: str


class CategoryOut(BaseModel):
    code: str
    name: str
    major_code: str
    major_name: str
    is_police: bool


class AssignmentOut(BaseModel):
    user_id: int
    name: str
    role: str
    unit_type: str | None
    responder_state: str | None
    assigned_at: datetime
    accepted_at: datetime | None
    on_scene_at: datetime | None
    ended_at: datetime | None


class DeadlineOut(BaseModel):
    id: int
    kind: str
    state: str
    level: str | None = Field(description="ok, warn or breached while the clock runs")
    due_at: datetime
    warn_at: datetime
    seconds_left: int | None
    escalation_step: int


class ReinforcementOut(BaseModel):
    id: int
    unit_type: str
    requested_at: datetime
    arrived_at: datetime | None


class IncidentOut(BaseModel):
    id: int
    number: str
    state: str
    version: int
    channel: str
    category: CategoryOut
    title: str
    description: str
    lon: float | None
    lat: float | None
    address_text: str | None
    zone: RegionOut | None
    grid: RegionOut | None
    micro_grid: RegionOut | None
    urgency: int
    tier: str
    reporter_phone: str | None = Field(description="masked; see reveal-phone")
    reporter_name: str | None = Field(description="masked")
    attributes: dict[str, Any]
    external_ref: str | None
    police_ref: str | None = Field(description="110's reference after a transfer to 110")
    duplicate_of: str | None
    needs_duplicate_review: bool
    received_at: datetime
    registered_at: datetime | None
    dispatched_at: datetime | None
    first_on_scene_at: datetime | None
    handled_at: datetime | None
    closed_at: datetime | None
    responders: list[AssignmentOut] = Field(description="people on it now")
    assignments: list[AssignmentOut] = Field(description="everyone who ever was")
    deadlines: list[DeadlineOut]
    reinforcements: list[ReinforcementOut]

    @classmethod
    def of(cls, view: IncidentView, language: str) -> IncidentOut:
        incident, category = view.incident, view.category
        english = language == "en"

        def region(region_id: int | None, name: str | None) -> RegionOut | None:
            return RegionOut(id=region_id, name=name or "") if region_id is not None else None

        assignments = [AssignmentOut(
            user_id=a.user_id, name=a.display_name, role=a.role.value,
            unit_type=a.unit_type.value if a.unit_type else None,
            responder_state=a.responder_state.value if a.responder_state else None,
            assigned_at=a.assigned_at, accepted_at=a.accepted_at, on_scene_at=a.on_scene_at,
            ended_at=a.ended_at) for a in view.assignments]
        return cls(
            id=incident.id, number=incident.number, state=incident.state.value,
            version=incident.version, channel=incident.channel.value,
            category=CategoryOut(
                code=category.code, name=category.name_en if english else category.name_zh,
                major_code=category.major_code,
                major_name=category.major_name_en if english else category.major_name_zh,
                is_police=category.is_police),
            title=incident.title, description=incident.description, lon=incident.lon,
            lat=incident.lat, address_text=incident.address_text,
            zone=region(incident.zone_id, view.zone_name),
            grid=region(incident.grid_id, view.grid_name),
            micro_grid=region(incident.micro_grid_id, view.micro_grid_name),
            urgency=incident.urgency, tier=incident.tier.value,
            reporter_phone=view.reporter_phone, reporter_name=view.reporter_name,
            attributes=json.loads(incident.attributes or "{}"),
            external_ref=incident.external_ref, police_ref=incident.police_ref,
            duplicate_of=view.duplicate_of_number,
            needs_duplicate_review=incident.needs_duplicate_review,
            received_at=incident.received_at, registered_at=incident.registered_at,
            dispatched_at=incident.dispatched_at, first_on_scene_at=incident.first_on_scene_at,
            handled_at=incident.handled_at, closed_at=incident.closed_at,
            responders=[a for a, v in zip(assignments, view.assignments, strict=True)
                        if v.ended_at is None and v.role in FIELD_ROLES],
            assignments=assignments,
            deadlines=[DeadlineOut(
                id=d.id, kind=d.kind.value, state=d.state.value,
                level=d.level.value if d.level else None, due_at=d.due_at, warn_at=d.warn_at,
                seconds_left=d.seconds_left, escalation_step=d.escalation_step)
                for d in view.deadlines],
            reinforcements=[ReinforcementOut(
                id=r.id, unit_type=r.unit_type.value, requested_at=r.requested_at,
                arrived_at=r.arrived_at) for r in view.reinforcements],
        )


class IncidentCreated(IncidentOut):
    created: bool = Field(description="false when this was a retry of an earlier request")
    duplicate_candidates: list[str] = Field(
        default_factory=list, description="numbers of open incidents that may be the same")


class IncidentPage(BaseModel):
    items: list[IncidentOut]
    total: int
    limit: int
    offset: int


class TransitionOut(BaseModel):
    id: int
    at: datetime
    action: str
    from_state: str | None
    to_state: str
    reason: str | None
    actor: str
    actor_name: str
    detail: dict[str, Any]

    @classmethod
    def of(cls, entry: TimelineEntry) -> TransitionOut:
        return cls(id=entry.id, at=entry.at, action=entry.action,
                   from_state=entry.from_state.value if entry.from_state else None,
                   to_state=entry.to_state.value, reason=entry.reason, actor=entry.actor,
                   actor_name=entry.actor_name, detail=entry.detail)


class ResponderOut(BaseModel):
    user_id: int
    name: str
    zone: RegionOut
    unit_type: str
    state: str
    lon: float | None
    lat: float | None
    position_at: datetime | None
    position_stale: bool
    shift_starts_at: datetime
    shift_ends_at: datetime
    incidents: list[str]

    @classmethod
    def of(cls, view: ResponderView) -> ResponderOut:
        return cls(user_id=view.user_id, name=view.display_name,
                   zone=RegionOut(id=view.zone_id, name=view.zone_name),
                   unit_type=view.unit_type.value, state=view.state.value, lon=view.lon,
                   lat=view.lat, position_at=view.position_at,
                   position_stale=view.position_stale, shift_starts_at=view.starts_at,
                   shift_ends_at=view.ends_at, incidents=list(view.incident_numbers))


class RevealOut(BaseModel):
    reporter_phone: str
