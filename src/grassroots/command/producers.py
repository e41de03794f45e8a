"""Work orders raised by the platform's own processes, through the same intake as a resident's.

An irrigation alarm, a door-plate scan or a mediation case that needs field work calls
`raise_work_order`; the order is recorded, located, registered and dispatched to the zone's
on-duty unit exactly as any report is, with the producer as a SystemActor in the audit trail.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from grassroots.command import actions
from grassroots.command.context import current_calendar, current_locator
from grassroots.command.states import Channel, Locator, SystemActor, WorkingCalendar
from grassroots.kernel.errors import ValidationFailed

if TYPE_CHECKING:
    from grassroots.runtime import Runtime

REF_MAX_CHARS = 120  # Incident.external_ref and idempotency_key
# The internal producers and the intake channel each one reports on.
SOURCES: dict[str, Channel] = {
    "irrigation": Channel.IRRIGATION,
    "door_plate": Channel.DOOR_PLATE,
    "mediation": Channel.MEDIATION,
}


def producer_actor(source: str) -> SystemActor:
    """The actor a producer's orders are recorded under, e.g. system:irrigation."""
    return SystemActor(f"system:{source}")


def raise_work_order(*, session: Session, runtime: Runtime, source: str, category_code: str,
                     lon: float | None, lat: float | None, description: str,
                     external_ref: str, idempotency_key: str | None = None,
                     address_text: str | None = None, address_id: str | None = None,
                     title: str | None = None,
                     attributes: Mapping[str, Any] | None = None, urgency: int | None = None,
                     calendar: WorkingCalendar | None = None,
                     locator: Locator | None = None) -> actions.IntakeResult:
    """Raise a work order for `source` ('irrigation', 'door_plate' or 'mediation').

    `external_ref` names the producer's own record (an alarm id, a plate code, a case number)
    and is kept on the incident. Raising again with the same idempotency key returns the first
    incident (created=False) and writes nothing; the key defaults to external_ref, so a producer
    that re-sends the same record after a crash or a timeout gets one order, not two.
    Calendar and locator default to the database's current ones.
    """
    channel = SOURCES.get(source)
    if channel is None:
        raise ValidationFailed("command.error.unknown_channel", channel=source)
    reference = external_ref.strip()
    key = idempotency_key or reference
    if not reference:
        raise ValidationFailed("command.error.external_ref_required")
    if len(reference) > REF_MAX_CHARS or len(key) > REF_MAX_CHARS:
        raise ValidationFailed("command.error.external_ref_too_long", limit=REF_MAX_CHARS)
    return actions.intake(
        session=session, runtime=runtime, actor=producer_actor(source), channel=channel,
        category_code=category_code,
        calendar=calendar if calendar is not None else current_calendar(session),
        locator=locator if locator is not None else current_locator(session),
        lon=lon, lat=lat, address_text=address_text, address_id=address_id,
        description=description, title=title,
        idempotency_key=key, external_ref=reference,
        attributes=attributes, urgency=urgency)
