"""What every intake channel needs from the kernel: the working calendar and the locator.

Both are cached per database and rebuilt only when their data changes, so a busy intake
endpoint pays one cheap version query per call, not a reload.
"""

from __future__ import annotations

import threading

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from grassroots.command.states import Locator
from grassroots.kernel.calendar import WorkingCalendar, load_calendar
from grassroots.kernel.calendar.models import CalendarDay
from grassroots.kernel.regions.queries import get_locate_index

_calendars: dict[str, tuple[tuple[object, ...], WorkingCalendar]] = {}
_lock = threading.Lock()


def _calendar_version(session: Session) -> tuple[object, ...]:
    count, newest = session.execute(
        select(func.count(CalendarDay.id), func.max(CalendarDay.imported_at))
    ).one()
    return (count, newest)


def current_calendar(session: Session) -> WorkingCalendar:
    """The shipped and imported holiday schedules, reloaded after an import."""
    key = session.get_bind().engine.url.render_as_string(hide_password=True)
    version = _calendar_version(session)
    cached = _calendars.get(key)
    if cached is not None and cached[0] == version:
        return cached[1]
    with _lock:
        calendar = load_calendar(session)
        _calendars[key] = (version, calendar)
    return calendar


def current_locator(session: Session) -> Locator:
    """locate(lon, lat) over the current region tree, deepest region first."""
    return get_locate_index(session).locate
