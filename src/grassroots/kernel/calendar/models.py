"""Calendar days imported at run time, one row per listed day; they override the shipped years."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Date, Enum, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from grassroots.db import Base
from grassroots.kernel.calendar.arrangement import MAX_NAME, MAX_SOURCE, DayKind


class CalendarDay(Base):
    """A day off or a make-up working day from an imported State Council notice."""

    __tablename__ = "calendar_day"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # One row per date: a date is either a day off or a make-up working day, never both.
    date: Mapped[dt.date] = mapped_column(Date, unique=True)
    kind: Mapped[DayKind] = mapped_column(
        Enum(DayKind, native_enum=False, length=10, values_callable=lambda e: [m.value for m in e])
    )
    name_zh: Mapped[str] = mapped_column(String(MAX_NAME))
    name_en: Mapped[str] = mapped_column(String(MAX_NAME))
    source: Mapped[str] = mapped_column(String(MAX_SOURCE))
    imported_at: Mapped[dt.datetime]
