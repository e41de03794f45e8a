"""What every intake channel needs: the working calendar, the locator and the categories.

All are cached per database and rebuilt only when their data changes, so a busy intake
endpoint pays one cheap version query per call (intake_context: one for all), not a reload.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

from sqlalchemy import Select, func, inspect, select, true
from sqlalchemy.orm import Session, make_transient_to_detached

from grassroots.command.models import IncidentCategory
from grassroots.command.states import Locator
from grassroots.kernel.calendar import WorkingCalendar, load_calendar
from grassroots.kernel.calendar.models import CalendarDay
from grassroots.kernel.regions.queries import get_locate_index, tree_version_query

_calendars: dict[str, tuple[tuple[object, ...], WorkingCalendar]] = {}
_lock = threading.Lock()
# Per database: (version, {code: column values}) of every category.
_categories: dict[str, tuple[tuple[object, ...], dict[str, dict[str, Any]]]] = {}
# session.info key: (the transaction the category version was read in, that version).
_CATEGORY_VERSION = "grassroots.category_version"


def _category_version_query() -> Select[tuple[int, int, int, Any, int]]:
    """(count, max id, sum of versions, newest updated_at, active count) of the categories.

    Every write of a category (create_category, update_category, load_default_categories)
    adds a row or bumps its version and updated_at, so any of them changes this.
    """
    c = IncidentCategory
    return select(func.count(c.id), func.coalesce(func.max(c.id), 0),
                  func.coalesce(func.sum(c.version), 0), func.max(c.updated_at),
                  func.count(c.id).filter(c.active.is_(True)))


def category_by_code(session: Session, code: str) -> IncidentCategory | None:
    """The category with this code, as queries.get_category returns it.

    In the transaction intake_context read the categories' version in, the per-process copy of
    that version is used (its row is attached to the session as if just loaded, no query);
    anywhere else, or when the version moved on, the rows are read.
    """
    hint = session.info.get(_CATEGORY_VERSION)
    transaction = session.get_transaction()
    if hint is None or transaction is None or hint[0] is not transaction:
        return session.scalars(select(IncidentCategory)
                               .where(IncidentCategory.code == code)).first()
    key = session.get_bind().engine.url.render_as_string(hide_password=True)
    cached = _categories.get(key)
    if cached is None or cached[0] != hint[1]:
        columns = [attr.key for attr in inspect(IncidentCategory).column_attrs]
        rows = {row.code: {name: getattr(row, name) for name in columns}
                for row in session.scalars(select(IncidentCategory))}
        cached = (hint[1], rows)
        _categories[key] = cached
    values = cached[1].get(code)
    if values is None:
        return None
    present = session.identity_map.get(
        inspect(IncidentCategory).identity_key_from_primary_key((values["id"],)))
    if present is not None:
        return present
    category = IncidentCategory(**values)
    make_transient_to_detached(category)
    session.add(category)
    return category


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


@functools.cache
def _intake_versions() -> Select[Any]:
    """The three version queries as one statement, built once: a statement is immutable, and
    building it (and its cache key, memoised on the object) costs more than running it."""
    calendar = _calendar_version_query().subquery()
    tree = tree_version_query().subquery()
    categories = _category_version_query().subquery()
    return select(*calendar.c, *tree.c, *categories.c).select_from(
        calendar.join(tree, true()).join(categories, true()))


def intake_context(session: Session) -> tuple[WorkingCalendar, Locator]:
    """current_calendar and current_locator, checking their versions and the categories' in
    one query (category_by_code then uses the cached categories in this transaction)."""
    row = session.execute(_intake_versions()).one()
    count, newest, regions, max_id, stamps = row[:5]
    session.info[_CATEGORY_VERSION] = (session.get_transaction(), tuple(row[5:]))
    return (current_calendar(session, (count, newest)),
            get_locate_index(session, (int(regions), int(max_id), int(stamps))).locate)
