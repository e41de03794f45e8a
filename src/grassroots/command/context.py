"""What every intake channel needs from the kernel: the working calendar and the locator.

Both are cached per database and rebuilt only when their data changes, so a busy intake
endpoint pays one cheap version query per call (intake_context: one for both), not a reload.
"""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import Select, func, select, true
from sqlalchemy.orm import Session

from grassroots.command.states import Locator
from grassroots.kernel.calendar import WorkingCalendar, load_calendar
from grassroots.kernel.calendar.models import CalendarDay
from grassroots.kernel.regions.queries import get_locate_index, tree_version_query

_calendars: dict[str, tuple[tuple[object, ...], WorkingCalendar]] = {}
_lock = threading.Lock()


def _calendar_version_query() -> Select[tuple[int, Any]]:
    return select(func.count(CalendarDay.id), func.max(CalendarDay.imported_at))


def _calendar_version(session: Session) -> tuple[object, ...]:
    count, newest = session.execute(_calendar_version_query()).one()
    return (count, newest)


def current_calendar(session: Session,
                     version: tuple[object, ...] | None = None) -> WorkingCalendar:
    """The shipped and imported holiday schedules, reloaded after an import."""
    key = session.get_bind().engine.url.render_as_string(hide_password=True)
    if version is None:
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


def intake_context(session: Session) -> tuple[WorkingCalendar, Locator]:
    """current_calendar and current_locator, checking both versions in one query."""
    calendar = _calendar_version_query().subquery()
    tree = tree_version_query().subquery()
    count, newest, regions, max_id, stamps = session.execute(
        select(*calendar.c, *tree.c).select_from(calendar.join(tree, true()))).one()
    return (current_calendar(session, (count, newest)),
            get_locate_index(session, (int(regions), int(max_id), int(stamps))).locate)
