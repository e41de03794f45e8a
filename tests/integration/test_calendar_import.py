import json
from datetime import date
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

# Importing the models module registers calendar_day on Base.metadata before the session-wide
# create_all, until the lead adds it to grassroots.models_registry.
import grassroots.kernel.calendar.models  # noqa: F401
from grassroots.kernel.audit.chain import verify_chain
from grassroots.kernel.audit.models import AuditRow
from grassroots.kernel.calendar import (
    IMPORT_ACTION,
    CalendarDataError,
    DayKind,
    Origin,
    import_year,
    load_calendar,
    shipped_arrangements,
)
from grassroots.kernel.calendar.models import CalendarDay
from grassroots.runtime import Runtime


def day(iso: str, zh: str, en: str) -> dict[str, str]:
    return {"date": iso, "name_zh": zh, "name_en": en}


def year_2027(**changes: Any) -> dict[str, Any]:
    """A made-up 2027 arrangement shaped like a notice; test data, not the official one."""
    sf, sf_en = "春节", "Spring Festival"
    data: dict[str, Any] = {
        "year": 2027,
        "source": "test fixture shaped like 国务院办公厅关于2027年部分节假日安排的通知",
        "notes": "not the official 2027 arrangement",
        "holidays": [day("2027-01-01", "元旦", "New Year's Day")]
        + [day(f"2027-02-{d:02d}", sf, sf_en) for d in range(5, 13)],
        "workdays": [day("2027-02-14", "春节调休上班", "Spring Festival make-up working day")],
    }
    data.update(changes)
    return data


def rows(session: Session) -> list[CalendarDay]:
    with session.begin():
        return list(session.scalars(sa.select(CalendarDay).order_by(CalendarDay.date)))


def audit_rows(session: Session) -> list[AuditRow]:
    with session.begin():
        return list(session.scalars(sa.select(AuditRow).order_by(AuditRow.seq)))


def test_importing_a_new_year_stores_its_days_and_the_calendar_uses_them(
        session: Session, runtime: Runtime) -> None:
    result = import_year(session, year_2027(), actor="admin", runtime=runtime)
    assert (result.year, result.holidays, result.workdays, result.replaced) == (2027, 9, 1, False)
    stored = rows(session)
    assert len(stored) == 10
    assert stored[0].date == date(2027, 1, 1) and stored[0].kind is DayKind.HOLIDAY
    assert stored[0].imported_at == runtime.clock.now()
    cal = load_calendar(session)
    assert cal.covers(date(2027, 6, 1)) and 2027 in cal.known_years
    assert not cal.is_working_day(date(2027, 2, 8))  # a Monday inside the break
    assert cal.is_working_day(date(2027, 2, 14))     # the Sunday make-up day
    assert cal.arrangement(2027) is not None and cal.arrangement(2027).origin is Origin.IMPORTED


def test_an_import_writes_one_audit_row_in_an_intact_chain(
        session: Session, runtime: Runtime) -> None:
    import_year(session, year_2027(), actor="admin", runtime=runtime)
    (row,) = audit_rows(session)
    assert (row.actor, row.action, row.object_type, row.object_id) == (
        "admin", IMPORT_ACTION, "calendar_year", "2027")
    detail = json.loads(row.detail)
    assert (detail["holidays"], detail["workdays"], detail["replaced_rows"]) == (9, 1, 0)
    assert verify_chain(session=session, runtime=runtime).ok


def test_a_bad_year_file_is_rejected_and_nothing_is_stored(
        session: Session, runtime: Runtime) -> None:
    bad = year_2027(workdays=[day("2027-02-08", "x", "x"), day("2026-02-14", "x", "x")])
    with pytest.raises(CalendarDataError) as caught:
        import_year(session, bad, actor="admin", runtime=runtime)
    assert len(caught.value.problems) == 3  # both lists, a Monday, the wrong year
    assert rows(session) == [] and audit_rows(session) == []


def test_a_bad_reimport_leaves_the_earlier_import_in_place(
        session: Session, runtime: Runtime) -> None:
    import_year(session, year_2027(), actor="admin", runtime=runtime)
    with pytest.raises(CalendarDataError):
        import_year(session, year_2027(holidays=[]), actor="admin", runtime=runtime)
    assert len(rows(session)) == 10 and len(audit_rows(session)) == 1


def test_reimporting_a_year_replaces_its_rows(session: Session, runtime: Runtime) -> None:
    import_year(session, year_2027(), actor="admin", runtime=runtime)
    corrected = year_2027(
        source="corrected fixture",
        holidays=[day("2027-01-01", "元旦", "New Year's Day")],
        workdays=[day("2027-01-09", "元旦调休上班", "New Year's Day make-up working day")])
    result = import_year(session, corrected, actor="admin2", runtime=runtime)
    assert result.replaced_rows == 10 and "replaced 10" in result.describe()
    assert [(r.date, r.kind, r.source) for r in rows(session)] == [
        (date(2027, 1, 1), DayKind.HOLIDAY, "corrected fixture"),
        (date(2027, 1, 9), DayKind.WORKDAY, "corrected fixture")]
    assert [a.actor for a in audit_rows(session)] == ["admin", "admin2"]
    assert load_calendar(session).is_working_day(date(2027, 2, 8))


def test_reimporting_one_year_leaves_other_years_alone(
        session: Session, runtime: Runtime) -> None:
    import_year(session, year_2027(), actor="admin", runtime=runtime)
    import_year(session, {"year": 2028, "source": "fixture",
                          "holidays": [day("2028-01-01", "元旦", "New Year's Day")],
                          "workdays": []}, actor="admin", runtime=runtime)
    import_year(session, year_2027(), actor="admin", runtime=runtime)
    assert sorted({r.date.year for r in rows(session)}) == [2027, 2028]
    assert load_calendar(session).known_years >= {2027, 2028}


def test_an_imported_year_overrides_the_shipped_year(session: Session, runtime: Runtime) -> None:
    assert not load_calendar(session).is_working_day(date(2025, 1, 28))
    revised = {"year": 2025, "source": "revised fixture",
               "holidays": [day("2025-01-01", "元旦", "New Year's Day")], "workdays": []}
    import_year(session, revised, actor="admin", runtime=runtime)
    cal = load_calendar(session)
    assert cal.is_working_day(date(2025, 1, 28))      # the shipped break is gone
    assert not cal.is_working_day(date(2025, 1, 26))  # and so is the shipped Sunday make-up
    assert cal.arrangement(2025).source == "revised fixture"
    assert cal.arrangement(2024) == shipped_arrangements()[2024]


def test_the_calendar_without_imports_is_the_shipped_one(session: Session) -> None:
    cal = load_calendar(session)
    assert cal.known_years == frozenset(range(2020, 2027))
    assert not session.in_transaction()  # loading leaves the session as it found it


def test_import_refuses_a_session_with_an_open_transaction(
        session: Session, runtime: Runtime) -> None:
    with session.begin(), pytest.raises(RuntimeError, match="own transaction"):
        import_year(session, year_2027(), actor="admin", runtime=runtime)
    assert rows(session) == []
