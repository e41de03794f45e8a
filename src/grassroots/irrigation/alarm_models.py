"""The alarm table: one row per alarm raised on a structure, from raise to clear.

At most one alarm of a kind is live (open or acknowledged) per structure: the partial unique
index ``uq_irr_alarm_live`` holds that in the database, so two evaluators racing on one
condition insert one row between them, whatever their timing.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import Enum, Float, ForeignKey, Index, Integer, String, text
from sqlalchemy.orm import Mapped, mapped_column

from grassroots.db import Base


def _enum(e: type[enum.Enum], length: int = 30) -> Enum:
    return Enum(e, native_enum=False, length=length, values_callable=lambda x: [m.value for m in x])


class AlarmKind(enum.StrEnum):
    HIGH_LEVEL = "high_level"  # water near overtopping the canal or structure
    LOW_LEVEL = "low_level"
    FLOW_FAR_FROM_PLAN = "flow_far_from_plan"
    DEVICE_OFFLINE = "device_offline"
    LOW_BATTERY = "low_battery"


class AlarmState(enum.StrEnum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"  # someone on duty has seen it; still live until it clears
    CLEARED = "cleared"


LIVE_STATES = (AlarmState.OPEN, AlarmState.ACKNOWLEDGED)
_LIVE_SQL = "state IN ('open', 'acknowledged')"


class Alarm(Base):
    __tablename__ = "irr_alarm"
    __table_args__ = (
        Index("uq_irr_alarm_live", "structure_id", "kind", unique=True,
              sqlite_where=text(_LIVE_SQL), postgresql_where=text(_LIVE_SQL)),
        Index("ix_irr_alarm_state_raised", "state", "raised_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    structure_id: Mapped[int] = mapped_column(ForeignKey("irr_structure.id"), index=True)
    kind: Mapped[AlarmKind] = mapped_column(_enum(AlarmKind))
    state: Mapped[AlarmState] = mapped_column(_enum(AlarmState, 20))
    raised_at: Mapped[datetime]
    cleared_at: Mapped[datetime | None]
    # The value that raised it and the threshold it crossed (m, m³/s, V; seconds offline).
    value: Mapped[float | None] = mapped_column(Float)
    threshold: Mapped[float | None] = mapped_column(Float)
    # The value seen when it cleared.
    clear_value: Mapped[float | None] = mapped_column(Float)
    # The work order raised in the command loop, for kinds that need field work.
    incident_id: Mapped[int | None] = mapped_column(ForeignKey("incident.id"), index=True)
    acknowledged_at: Mapped[datetime | None]
    acknowledged_by: Mapped[str | None] = mapped_column(String(120))
    version: Mapped[int] = mapped_column(Integer, default=1)  # compare-and-set on every change
