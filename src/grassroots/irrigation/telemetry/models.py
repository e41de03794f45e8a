"""Telemetry tables: one row per reading, and the last known state of each structure's device."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Float, ForeignKey, Index, PrimaryKeyConstraint, SmallInteger, String
from sqlalchemy.orm import Mapped, mapped_column

from grassroots.db import Base

# Quantity names are ASCII identifiers: byte order is right for them, and on PostgreSQL the
# "C" collation keeps the key index free of locale-aware string comparison (a third faster
# to load under C.UTF-8, more under zh_CN.UTF-8).
QUANTITY_TYPE = String(40).with_variant(String(40, collation="C"), "postgresql")


class Reading(Base):
    """One value of one quantity at one structure at one instant; NULL value = unavailable.

    The primary key (structure_id, quantity, observed_at) is the dedupe key: a reading is
    stored once however often it arrives, and the first copy stored wins. It also serves
    the usual read, one structure's quantity over a time range, and it holds the month
    partitioning key that PostgreSQL needs on every unique index.
    """

    __tablename__ = "irr_reading"
    __table_args__ = (
        PrimaryKeyConstraint("structure_id", "quantity", "observed_at",
                             name="pk_irr_reading"),
        # Reads across structures by time (dashboards, retention). BRIN on PostgreSQL: rows
        # arrive roughly in time order, and a BRIN index costs almost nothing to keep up.
        Index("ix_irr_reading_observed_at", "observed_at", postgresql_using="brin"),
    )

    structure_id: Mapped[int] = mapped_column(ForeignKey("irr_structure.id"))
    quantity: Mapped[str] = mapped_column(QUANTITY_TYPE)
    observed_at: Mapped[datetime]
    value: Mapped[float | None] = mapped_column(Float)
    quality: Mapped[int] = mapped_column(SmallInteger, default=0)
    source: Mapped[str] = mapped_column(String(8))
    received_at: Mapped[datetime]


class DeviceState(Base):
    """What we last heard from a structure's device; ``state`` is kept by state.refresh_states."""

    __tablename__ = "irr_device_state"

    structure_id: Mapped[int] = mapped_column(ForeignKey("irr_structure.id"), primary_key=True)
    state: Mapped[str] = mapped_column(String(8), default="offline")
    state_changed_at: Mapped[datetime | None]
    # Receive time of the last sign of life (a message, an answered poll).
    last_seen_at: Mapped[datetime | None]
    # Newest observation time of a reading that carried a value.
    last_reading_at: Mapped[datetime | None]
    # Last poll the device did not answer, and why (translated at the adapter edge).
    last_failure_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(String(200))
    # The device's own word on its MQTT status topic (online, or offline from its last will).
    announced: Mapped[str | None] = mapped_column(String(8))
    announced_at: Mapped[datetime | None]
    voltage_v: Mapped[float | None] = mapped_column(Float)
    voltage_at: Mapped[datetime | None]
    last_source: Mapped[str | None] = mapped_column(String(8))
