"""Tables of the incident command loop: categories, incidents, their history, rosters and clocks."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import (
    Boolean,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

import grassroots.kernel.addresses.models  # noqa: F401  (incident.std_address_id's table)
from grassroots.command.states import (
    Audience,
    Channel,
    DeadlineKind,
    DeadlineLevel,
    DeadlineState,
    IncidentState,
    LimitUnit,
    NoticeLevel,
    ResponderState,
    ResponseRole,
    Tier,
    UnitType,
)
from grassroots.db import Base
from grassroots.kernel.auth.roles import Role


def _enum(enum_class: type[enum.Enum], length: int = 30) -> Enum:
    # Stored as plain strings (no native enum type) so adding a member needs no DDL.
    return Enum(enum_class, native_enum=False, length=length,
                values_callable=lambda e: [m.value for m in e])


class IncidentCategory(Base):
    """A minor class of the catalogue (service_code in Open311), under its major class."""

    __tablename__ = "incident_category"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(60), unique=True)
    major_code: Mapped[str] = mapped_column(String(40), index=True)
    major_name_zh: Mapped[str] = mapped_column(String(60))
    major_name_en: Mapped[str] = mapped_column(String(80))
    name_zh: Mapped[str] = mapped_column(String(60))
    name_en: Mapped[str] = mapped_column(String(120))
    urgency: Mapped[int] = mapped_column(Integer)  # 1 emergency … 4 routine
    limit_value: Mapped[int] = mapped_column(Integer)
    limit_unit: Mapped[LimitUnit] = mapped_column(_enum(LimitUnit, 20))
    unit_type: Mapped[UnitType] = mapped_column(_enum(UnitType))
    is_police: Mapped[bool] = mapped_column(Boolean, default=False)
    may_close_at: Mapped[Tier] = mapped_column(_enum(Tier, 20))
    on_scene_required: Mapped[bool] = mapped_column(Boolean, default=True)
    duplicate_radius_m: Mapped[int] = mapped_column(Integer)
    duplicate_window_min: Mapped[int] = mapped_column(Integer)
    attributes: Mapped[str] = mapped_column(Text, default="[]")  # Open311 attributes, JSON
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    sort_order: Mapped[int] = mapped_column(Integer, default=0)
    version: Mapped[int] = mapped_column(Integer, default=1)
    updated_at: Mapped[datetime]


class IncidentNumberCounter(Base):
    """The last public number issued on a (Beijing) day; bumped in the intake transaction."""

    __tablename__ = "incident_number_counter"

    day: Mapped[str] = mapped_column(String(8), primary_key=True)  # YYYYMMDD
    last: Mapped[int] = mapped_column(Integer, default=0)


class Incident(Base):
    """An incident or work order (事件/工单): anything reported that someone must handle."""

    __tablename__ = "incident"
    __table_args__ = (
        # A retried submission with the same key from the same client finds the first one.
        UniqueConstraint("channel", "client_ref", "idempotency_key",
                         name="uq_incident_idempotency"),
        # Duplicate probes (queries.duplicate_candidates_many) scan a category's time window
        # for a lon/lat box: with lon and lat in the index, the box is checked on the index
        # entries and only the incidents inside it are read from the table. It serves
        # category (and category + time) lookups too, so category_id has no index of its own.
        Index("ix_incident_duplicate_probe", "category_id", "received_at", "lon", "lat"),
        # Columns most incidents leave empty are indexed only where set, so an intake writes
        # no index entry for them (lookups by value imply NOT NULL and use these).
        *(Index(f"ix_incident_{name}", name, postgresql_where=text(f"{name} IS NOT NULL"),
                sqlite_where=text(f"{name} IS NOT NULL"))
          for name in ("external_ref", "police_ref", "duplicate_of_id")),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    number: Mapped[str] = mapped_column(String(32), unique=True)  # SF20260310-000123
    category_id: Mapped[int] = mapped_column(ForeignKey("incident_category.id"))
    channel: Mapped[Channel] = mapped_column(_enum(Channel, 20))
    client_ref: Mapped[str] = mapped_column(String(120))  # who submitted: user or API client
    external_ref: Mapped[str | None] = mapped_column(String(120))
    idempotency_key: Mapped[str | None] = mapped_column(String(120))
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    lon: Mapped[float | None] = mapped_column(Float)  # WGS-84
    lat: Mapped[float | None] = mapped_column(Float)
    address_text: Mapped[str | None] = mapped_column(String(300))
    # The standard address (一标) the report named or was matched to, when there is one.
    std_address_id: Mapped[int | None] = mapped_column(ForeignKey("std_address.id"))
    micro_grid_id: Mapped[int | None] = mapped_column(ForeignKey("region.id"), index=True)
    grid_id: Mapped[int | None] = mapped_column(ForeignKey("region.id"), index=True)
    zone_id: Mapped[int | None] = mapped_column(ForeignKey("region.id"), index=True)
    # The deepest region's materialised path, for scope filters; "" when outside every region.
    region_path: Mapped[str] = mapped_column(String(400), index=True, default="")
    urgency: Mapped[int] = mapped_column(Integer)
    state: Mapped[IncidentState] = mapped_column(_enum(IncidentState, 20), index=True)
    state_before_suspend: Mapped[IncidentState | None] = mapped_column(_enum(IncidentState, 20))
    tier: Mapped[Tier] = mapped_column(_enum(Tier, 20))
    attributes: Mapped[str] = mapped_column(Text, default="{}")  # answers to the extra questions
    reporter_name_enc: Mapped[str | None] = mapped_column(String(300))  # SM4-GCM
    reporter_phone_enc: Mapped[str | None] = mapped_column(String(300))  # SM4-GCM
    reporter_phone_index: Mapped[str | None] = mapped_column(String(64), index=True)  # HMAC-SM3
    duplicate_of_id: Mapped[int | None] = mapped_column(ForeignKey("incident.id"))
    needs_duplicate_review: Mapped[bool] = mapped_column(Boolean, default=False)
    extension_days: Mapped[int] = mapped_column(Integer, default=0)
    satisfied: Mapped[bool | None] = mapped_column(Boolean)  # the callback's answer
    created_by: Mapped[str] = mapped_column(String(120))
    received_at: Mapped[datetime] = mapped_column(index=True)
    registered_at: Mapped[datetime | None]
    dispatched_at: Mapped[datetime | None]
    first_on_scene_at: Mapped[datetime | None]
    handled_at: Mapped[datetime | None]
    closed_at: Mapped[datetime | None]
    version: Mapped[int] = mapped_column(Integer, default=1)  # compare-and-set on every change
    # A hash of the submitted payload, so a reused idempotency key with other content is refused.
    request_fingerprint: Mapped[str | None] = mapped_column(String(64))
    # The reference 110's desk gave when the centre transferred this police matter to them.
    police_ref: Mapped[str | None] = mapped_column(String(60))


class IncidentTransition(Base):
    """One saved step of the state machine (healthchecks' Flip): who, when, from, to, why."""

    __tablename__ = "incident_transition"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("incident.id"), index=True)
    from_state: Mapped[IncidentState | None] = mapped_column(_enum(IncidentState, 20))
    to_state: Mapped[IncidentState] = mapped_column(_enum(IncidentState, 20))
    action: Mapped[str] = mapped_column(String(40))
    reason: Mapped[str | None] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String(120))
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("app_user.id"))
    at: Mapped[datetime]
    detail: Mapped[str] = mapped_column(Text, default="{}")


class Assignment(Base):
    """A person's part in the response to one incident; ended_at set when released."""

    __tablename__ = "incident_assignment"
    __table_args__ = (Index("ix_incident_assignment_user_active", "user_id", "ended_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("incident.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("app_user.id"))
    role: Mapped[ResponseRole] = mapped_column(_enum(ResponseRole, 20))
    unit_type: Mapped[UnitType | None] = mapped_column(_enum(UnitType))
    reinforcement_request_id: Mapped[int | None] = mapped_column(
        ForeignKey("reinforcement_request.id"))
    distance_m: Mapped[float | None] = mapped_column(Float)  # from the last known position
    assigned_by: Mapped[str] = mapped_column(String(120))
    assigned_at: Mapped[datetime]
    accepted_at: Mapped[datetime | None]
    on_scene_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]


class ReinforcementRequest(Base):
    """A call for another unit (law enforcement, police …) from the scene."""

    __tablename__ = "reinforcement_request"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("incident.id"), index=True)
    unit_type: Mapped[UnitType] = mapped_column(_enum(UnitType))
    reason: Mapped[str | None] = mapped_column(Text)
    requested_by: Mapped[str] = mapped_column(String(120))
    requested_at: Mapped[datetime]
    arrived_at: Mapped[datetime | None]


class Deadline(Base):
    """A stored SLA clock. The sweeper flips it by compare-and-set on `version`."""

    __tablename__ = "deadline"
    __table_args__ = (
        Index("ix_deadline_state_due", "state", "due_at"),
        Index("ix_deadline_state_warn", "state", "warn_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("incident.id"), index=True)
    kind: Mapped[DeadlineKind] = mapped_column(_enum(DeadlineKind, 20))
    escalation_step: Mapped[int] = mapped_column(Integer, default=0)
    reinforcement_request_id: Mapped[int | None] = mapped_column(
        ForeignKey("reinforcement_request.id"))
    starts_at: Mapped[datetime]
    due_at: Mapped[datetime]  # looked up with state (the indexes above), never alone
    warn_at: Mapped[datetime]
    level: Mapped[DeadlineLevel] = mapped_column(_enum(DeadlineLevel, 20),
                                                 default=DeadlineLevel.NONE)
    state: Mapped[DeadlineState] = mapped_column(_enum(DeadlineState, 20),
                                                 default=DeadlineState.OPEN)
    paused_remaining_s: Mapped[int | None] = mapped_column(Integer)
    settled_at: Mapped[datetime | None]
    version: Mapped[int] = mapped_column(Integer, default=1)


class Notice(Base):
    """A warning, reminder or supervision notice (催办/督办) to a person or a role."""

    __tablename__ = "incident_notice"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("incident.id"), index=True)
    deadline_id: Mapped[int | None] = mapped_column(ForeignKey("deadline.id"), index=True)
    level: Mapped[NoticeLevel] = mapped_column(_enum(NoticeLevel, 20))
    audience: Mapped[Audience] = mapped_column(_enum(Audience, 20))
    to_role: Mapped[Role | None] = mapped_column(_enum(Role, 40))
    to_user_id: Mapped[int | None] = mapped_column(ForeignKey("app_user.id"), index=True)
    zone_id: Mapped[int | None] = mapped_column(ForeignKey("region.id"))
    message_id: Mapped[str] = mapped_column(String(120))
    params: Mapped[str] = mapped_column(Text, default="{}")
    at: Mapped[datetime] = mapped_column(index=True)
    # Read by one is read for all it went to (a role's notice is acknowledged once, by whom).
    read_at: Mapped[datetime | None]
    read_by: Mapped[str | None] = mapped_column(String(80))


class DutyShift(Base):
    """Someone on duty for a zone as part of a unit, from starts_at until ends_at."""

    __tablename__ = "duty_shift"
    __table_args__ = (Index("ix_duty_shift_lookup", "zone_id", "unit_type", "starts_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("app_user.id"), index=True)
    zone_id: Mapped[int] = mapped_column(ForeignKey("region.id"))
    unit_type: Mapped[UnitType] = mapped_column(_enum(UnitType))
    starts_at: Mapped[datetime]
    ends_at: Mapped[datetime]


class ResponderStatus(Base):
    """A responder's availability and last known position (WGS-84)."""

    __tablename__ = "responder_status"

    user_id: Mapped[int] = mapped_column(ForeignKey("app_user.id"), primary_key=True)
    state: Mapped[ResponderState] = mapped_column(_enum(ResponderState, 20))
    lon: Mapped[float | None] = mapped_column(Float)
    lat: Mapped[float | None] = mapped_column(Float)
    position_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]



class PhotoStage(enum.StrEnum):
    """When a photo was taken: with the report, or as proof of the handled result."""

    REPORT = "report"
    RESULT = "result"


class IncidentPhoto(Base):
    """A photo of an incident; the bytes live on disk under settings.upload_dir (command.media)."""

    __tablename__ = "incident_photo"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("incident.id"), index=True)
    stage: Mapped[PhotoStage] = mapped_column(_enum(PhotoStage, 20))
    stored_path: Mapped[str] = mapped_column(String(300), unique=True)  # relative to upload_dir
    content_type: Mapped[str] = mapped_column(String(40))  # from the magic bytes, not the client
    size_bytes: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    uploaded_by: Mapped[str] = mapped_column(String(120))
    uploaded_by_id: Mapped[int | None] = mapped_column(ForeignKey("app_user.id"))
    uploaded_at: Mapped[datetime]
