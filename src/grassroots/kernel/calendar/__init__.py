"""The official Chinese working-day calendar: State Council holiday arrangements, 2020 onward.

Shipped years live in data/cn_YYYY.json; later years are imported at run time (import_year) and
stored in calendar_day, overriding a shipped year of the same number (load_calendar).
"""

from grassroots.kernel.calendar.arrangement import (
    CalendarDataError,
    CalendarEntry,
    DayKind,
    Origin,
    YearArrangement,
    parse_year,
    shipped_arrangements,
)
from grassroots.kernel.calendar.store import (
    IMPORT_ACTION,
    ImportResult,
    import_year,
    imported_arrangements,
    load_calendar,
)
from grassroots.kernel.calendar.working import (
    DEFAULT_OFFICE_HOURS,
    CalendarNotCovered,
    OfficeHours,
    WorkingCalendar,
    shipped_calendar,
)

__all__ = [
    "DEFAULT_OFFICE_HOURS",
    "IMPORT_ACTION",
    "CalendarDataError",
    "CalendarEntry",
    "CalendarNotCovered",
    "DayKind",
    "ImportResult",
    "OfficeHours",
    "Origin",
    "WorkingCalendar",
    "YearArrangement",
    "import_year",
    "imported_arrangements",
    "load_calendar",
    "parse_year",
    "shipped_arrangements",
    "shipped_calendar",
]
