"""Importing a year's arrangement into the database, and loading the calendar the app uses."""

from __future__ import annotations

from collections import defaultdict
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from grassroots.kernel.audit import record
from grassroots.kernel.calendar.arrangement import (
    CalendarEntry,
    Origin,
    YearArrangement,
    parse_year,
    shipped_arrangements,
)
from grassroots.kernel.calendar.models import CalendarDay
from grassroots.kernel.calendar.working import DEFAULT_OFFICE_HOURS, OfficeHours, WorkingCalendar

if TYPE_CHECKING:
    from grassroots.runtime import Runtime

IMPORT_ACTION = "calendar:year:import"


@dataclass(frozen=True)
class ImportResult:
    year: int
    holidays: int
    workdays: int
    replaced_rows: int
    source: str

    @property
    def replaced(self) -> bool:
        return self.replaced_rows > 0

    def describe(self) -> str:
        verb = f"replaced {self.replaced_rows} earlier rows with" if self.replaced else "stored"
        return (f"calendar {self.year}: {verb} {self.holidays} days off and {self.workdays} "
                f"make-up working days ({self.source})")


def _year_rows(year: int) -> Any:
    return CalendarDay.date.between(date(year, 1, 1), date(year, 12, 31))


def import_year(session: Session, data: object, *, actor: str, runtime: Runtime) -> ImportResult:
    """Check a year file and store it, replacing that year's rows, with one audit row, in one go.

    Raises CalendarDataError (nothing stored) when the file fails its checks. Commits its own
    transaction, so the session must not have one open.
    """
    arrangement = parse_year(data)
    if session.in_transaction():
        # Joining the caller's transaction would leave the commit to them; an uncommitted
        # import would then vanish silently when the session closes.
        raise RuntimeError("import_year commits its own transaction; "
                           "call it with no transaction open on the session")
    with session.begin():
        replaced = session.scalar(select(func.count()).where(_year_rows(arrangement.year))) or 0
        session.execute(delete(CalendarDay).where(_year_rows(arrangement.year)))
        now = runtime.clock.now()
        session.add_all(_row(entry, arrangement.source, now) for entry in arrangement.entries)
        result = ImportResult(year=arrangement.year, holidays=len(arrangement.holidays),
                              workdays=len(arrangement.workdays), replaced_rows=replaced,
                              source=arrangement.source)
        record(session, runtime=runtime, actor=actor, action=IMPORT_ACTION,
               object_type="calendar_year", object_id=arrangement.year,
               detail={"year": arrangement.year, "source": arrangement.source,
                       "holidays": result.holidays, "workdays": result.workdays,
                       "replaced_rows": replaced})
    return result


def _row(entry: CalendarEntry, source: str, now: datetime) -> CalendarDay:
    return CalendarDay(date=entry.date, kind=entry.kind, name_zh=entry.name_zh,
                       name_en=entry.name_en, source=source, imported_at=now)


def imported_arrangements(session: Session) -> dict[int, YearArrangement]:
    """The years stored in the database, one arrangement per year."""
    with _read(session):
        rows = session.scalars(select(CalendarDay).order_by(CalendarDay.date)).all()
    by_year: dict[int, list[CalendarDay]] = defaultdict(list)
    for row in rows:
        by_year[row.date.year].append(row)
    return {year: _arrangement(year, year_rows) for year, year_rows in by_year.items()}


def _arrangement(year: int, rows: list[CalendarDay]) -> YearArrangement:
    entries = tuple(CalendarEntry(date=r.date, kind=r.kind, name_zh=r.name_zh, name_en=r.name_en)
                    for r in rows)
    return YearArrangement(year=year, source=rows[0].source, entries=entries,
                           origin=Origin.IMPORTED)


def load_calendar(session: Session, *, office_hours: OfficeHours = DEFAULT_OFFICE_HOURS,
                  strict: bool = False) -> WorkingCalendar:
    """The shipped years plus the imported ones; an imported year replaces a shipped one whole."""
    years = dict(shipped_arrangements())
    years.update(imported_arrangements(session))
    return WorkingCalendar(years.values(), office_hours=office_hours, strict=strict)


def _read(session: Session) -> AbstractContextManager[Any]:
    # Reading in our own short transaction leaves the session as we found it, so a caller
    # can load the calendar and then import a year on the same session.
    return nullcontext() if session.in_transaction() else session.begin()
