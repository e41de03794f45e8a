import json
import logging
from datetime import UTC, date, datetime, time, timedelta
from importlib import resources
from typing import Any

import pytest

from grassroots.kernel.calendar import (
    CalendarDataError,
    CalendarNotCovered,
    DayKind,
    OfficeHours,
    WorkingCalendar,
    parse_year,
    shipped_arrangements,
    shipped_calendar,
)
from grassroots.kernel.clock import DISPLAY_TZ, format_display


def bj(y: int, m: int, d: int, hh: int = 0, mm: int = 0) -> datetime:
    """A Beijing wall-clock time."""
    return datetime(y, m, d, hh, mm, tzinfo=DISPLAY_TZ)


def end_of(y: int, m: int, d: int) -> datetime:
    return datetime.combine(date(y, m, d), time.max, tzinfo=DISPLAY_TZ).astimezone(UTC)


@pytest.fixture
def cal() -> WorkingCalendar:
    return shipped_calendar()


# -- the shipped years -----------------------------------------------------------------------

# (days off listed, make-up working days) per notice, counted from the notices' spans.
NOTICE_TOTALS = {2020: (30, 6), 2021: (31, 7), 2022: (31, 7), 2023: (26, 7), 2024: (28, 8),
                 2025: (28, 5), 2026: (33, 6)}
NOTICE_NUMBERS = {2020: "国办发明电〔2019〕16号", 2021: "国办发明电〔2020〕27号",
                  2022: "国办发明电〔2021〕11号", 2023: "国办发明电〔2022〕16号",
                  2024: "国办发明电〔2023〕7号", 2025: "国办发明电〔2024〕12号",
                  2026: "国办发明电〔2025〕7号"}


def test_the_year_files_are_found_as_package_data() -> None:
    folder = resources.files("grassroots.kernel.calendar").joinpath("data")
    names = sorted(item.name for item in folder.iterdir() if item.name.endswith(".json"))
    assert names == [f"cn_{year}.json" for year in range(2020, 2027)]


def test_every_shipped_year_from_2020_to_2026_loads_with_the_notice_totals() -> None:
    years = shipped_arrangements()
    assert sorted(years) == list(range(2020, 2027))
    for year, (holidays, workdays) in NOTICE_TOTALS.items():
        assert (len(years[year].holidays), len(years[year].workdays)) == (holidays, workdays), year


def test_each_shipped_year_cites_its_state_council_notice() -> None:
    for year, number in NOTICE_NUMBERS.items():
        source = shipped_arrangements()[year].source
        assert number in source and f"关于{year}年部分节假日安排的通知" in source


def test_every_shipped_make_up_day_is_a_weekend_working_day(cal: WorkingCalendar) -> None:
    for arrangement in shipped_arrangements().values():
        for entry in arrangement.workdays:
            assert entry.date.weekday() >= 5 and cal.is_working_day(entry.date), entry


def test_every_shipped_day_off_is_not_a_working_day(cal: WorkingCalendar) -> None:
    for arrangement in shipped_arrangements().values():
        for entry in arrangement.holidays:
            assert not cal.is_working_day(entry.date), entry


@pytest.mark.parametrize(("day", "working"), [
    (date(2020, 1, 19), True),   # Sunday make-up, Spring Festival
    (date(2020, 2, 1), False),   # Saturday: make-up cancelled by the COVID-19 extension
    (date(2020, 1, 31), False),  # Friday inside the extension
    (date(2020, 2, 3), True),    # work resumed
    (date(2020, 10, 10), True),  # Saturday make-up, National Day
    (date(2021, 2, 20), True),   # Saturday make-up
    (date(2021, 9, 20), False),  # Monday, Mid-Autumn span
    (date(2022, 1, 30), True),   # Sunday make-up
    (date(2022, 4, 2), True),    # Saturday make-up, Qingming
    (date(2022, 5, 4), False),   # Wednesday, Labour Day span
    (date(2023, 1, 2), False),   # Monday, New Year span
    (date(2023, 4, 5), False),   # Wednesday, Qingming
    (date(2023, 10, 8), True),   # Sunday make-up
    (date(2024, 2, 4), True),    # Sunday make-up
    (date(2024, 2, 9), True),    # Spring Festival eve 2024: only "encouraged" off, not a holiday
    (date(2024, 6, 10), False),  # Monday, Dragon Boat
    (date(2025, 1, 26), True),   # Sunday make-up
    (date(2025, 2, 4), False),   # Tuesday, last day of the Spring Festival span
    (date(2025, 5, 2), False),   # statutory since 2025
    (date(2025, 10, 8), False),  # Wednesday, National Day span
    (date(2025, 10, 11), True),  # Saturday make-up
    (date(2025, 3, 8), False),   # ordinary Saturday
    (date(2025, 3, 10), True),   # ordinary Monday
    (date(2026, 1, 4), True),    # Sunday make-up, New Year
    (date(2026, 2, 23), False),  # Monday, Spring Festival span
    (date(2026, 2, 28), True),   # Saturday make-up
    (date(2026, 9, 20), True),   # Sunday make-up, National Day
    (date(2026, 10, 8), True),   # Thursday after National Day
])
def test_it_knows_the_official_days_off_and_make_up_days(cal: WorkingCalendar, day: date,
                                                         working: bool) -> None:
    assert cal.is_working_day(day) is working


def test_the_2020_file_records_the_covid_extension_notice() -> None:
    year = shipped_arrangements()[2020]
    assert "国办发明电〔2020〕1号" in year.source and "国办发明电〔2020〕1号" in year.notes
    assert date(2020, 2, 1) not in {e.date for e in year.workdays}


def test_it_names_the_festival_of_a_listed_day(cal: WorkingCalendar) -> None:
    entry = cal.entry(date(2025, 10, 8))
    assert entry is not None and entry.kind is DayKind.HOLIDAY
    assert entry.name_zh == "国庆节、中秋节"
    assert entry.name_en == "National Day and Mid-Autumn Festival"
    assert cal.entry(date(2025, 3, 10)) is None


def test_a_datetime_is_judged_on_its_beijing_date(cal: WorkingCalendar) -> None:
    # 2025-09-30 17:00 UTC is already 1 October in Beijing.
    assert not cal.is_working_day(datetime(2025, 9, 30, 17, 0, tzinfo=UTC))
    assert cal.is_working_day(datetime(2025, 9, 30, 15, 0, tzinfo=UTC))


# -- working days ----------------------------------------------------------------------------

def test_add_working_days_counts_across_the_spring_festival(cal: WorkingCalendar) -> None:
    # Fri 24 Jan 2025: Sun 26 (make-up) is day 1, Mon 27 day 2, 28 Jan-4 Feb off, Wed 5 Feb day 3.
    assert cal.add_working_days(bj(2025, 1, 24, 10), 1) == end_of(2025, 1, 26)
    assert cal.add_working_days(bj(2025, 1, 24, 10), 3) == end_of(2025, 2, 5)


def test_add_working_days_does_not_count_the_start_day(cal: WorkingCalendar) -> None:
    assert cal.add_working_days(bj(2025, 3, 10, 8, 0), 1) == end_of(2025, 3, 11)
    assert cal.add_working_days(bj(2025, 3, 10, 23, 59), 5) == end_of(2025, 3, 17)


def test_add_working_days_from_a_rest_day_counts_from_the_next_working_day(
        cal: WorkingCalendar) -> None:
    assert cal.add_working_days(bj(2025, 3, 8, 15), 1) == end_of(2025, 3, 10)
    assert cal.add_working_days(bj(2025, 10, 3, 9), 1) == end_of(2025, 10, 9)


def test_zero_working_days_is_the_end_of_the_same_or_next_working_day(
        cal: WorkingCalendar) -> None:
    assert cal.add_working_days(bj(2025, 3, 10, 9), 0) == end_of(2025, 3, 10)
    assert cal.add_working_days(bj(2025, 3, 9, 9), 0) == end_of(2025, 3, 10)


def test_a_working_day_deadline_is_utc_and_shows_as_the_beijing_day_end(
        cal: WorkingCalendar) -> None:
    deadline = cal.add_working_days(datetime(2025, 3, 10, 1, 30, tzinfo=UTC), 1)
    assert deadline.tzinfo is UTC
    assert format_display(deadline) == "2025-03-11 23:59"


def test_add_working_days_rejects_naive_times_and_negative_counts(cal: WorkingCalendar) -> None:
    with pytest.raises(ValueError, match="naive"):
        cal.add_working_days(datetime(2025, 3, 10, 9), 1)
    with pytest.raises(ValueError):
        cal.add_working_days(bj(2025, 3, 10, 9), -1)


def test_next_working_day_skips_the_national_day_break(cal: WorkingCalendar) -> None:
    assert cal.next_working_day(date(2025, 9, 30)) == date(2025, 10, 9)
    assert cal.next_working_day(date(2025, 9, 26)) == date(2025, 9, 28)  # Sunday make-up
    assert cal.next_working_day(date(2025, 9, 26), inclusive=True) == date(2025, 9, 26)
    assert cal.next_working_day(date(2025, 10, 4), inclusive=True) == date(2025, 10, 9)


def test_working_days_between_counts_after_the_first_up_to_the_second(
        cal: WorkingCalendar) -> None:
    assert cal.working_days_between(date(2025, 1, 24), date(2025, 2, 5)) == 3
    assert cal.working_days_between(date(2025, 2, 5), date(2025, 1, 24)) == -3
    assert cal.working_days_between(date(2025, 10, 1), date(2025, 10, 8)) == 0
    assert cal.working_days_between(date(2025, 3, 10), date(2025, 3, 10)) == 0


# -- working hours ---------------------------------------------------------------------------

def test_working_hours_skip_the_lunch_break(cal: WorkingCalendar) -> None:
    assert cal.add_working_hours(bj(2025, 3, 10, 11), 2) == bj(2025, 3, 10, 14, 30)
    assert cal.add_working_hours(bj(2025, 3, 10, 12, 30), 1) == bj(2025, 3, 10, 14, 30)


def test_working_hours_that_use_up_the_morning_end_at_noon(cal: WorkingCalendar) -> None:
    assert cal.add_working_hours(bj(2025, 3, 10, 11), 1) == bj(2025, 3, 10, 12)


def test_working_hours_carry_over_the_evening(cal: WorkingCalendar) -> None:
    assert cal.add_working_hours(bj(2025, 3, 10, 17), 1) == bj(2025, 3, 11, 9, 30)
    assert cal.add_working_hours(bj(2025, 3, 10, 20), 1) == bj(2025, 3, 11, 10)


def test_working_hours_skip_the_weekend(cal: WorkingCalendar) -> None:
    assert cal.add_working_hours(bj(2025, 3, 7, 17), 2) == bj(2025, 3, 10, 10, 30)


def test_working_hours_skip_a_holiday_and_use_a_make_up_sunday(cal: WorkingCalendar) -> None:
    assert cal.add_working_hours(bj(2025, 9, 30, 17), 1) == bj(2025, 10, 9, 9, 30)
    assert cal.add_working_hours(bj(2025, 9, 26, 17), 2) == bj(2025, 9, 28, 10, 30)


def test_working_hours_span_several_days(cal: WorkingCalendar) -> None:
    # 7 office hours a day: 15 hours from Monday 09:00 end on Wednesday 10:00.
    assert cal.add_working_hours(bj(2025, 3, 10, 9), 15) == bj(2025, 3, 12, 10)


def test_working_hours_accept_a_timedelta_and_return_utc(cal: WorkingCalendar) -> None:
    # 03:00 UTC is 11:00 in Beijing: one hour to noon, half an hour from 13:30.
    result = cal.add_working_hours(datetime(2025, 3, 10, 3, 0, tzinfo=UTC), timedelta(minutes=90))
    assert result == bj(2025, 3, 10, 14, 0) and result.tzinfo is UTC


def test_zero_working_hours_return_the_start(cal: WorkingCalendar) -> None:
    assert cal.add_working_hours(bj(2025, 3, 8, 20), 0) == bj(2025, 3, 8, 20)


def test_office_hours_are_configurable(cal: WorkingCalendar) -> None:
    summer = cal.with_office_hours(OfficeHours.parse("08:00-12:00,14:30-18:00"))
    assert summer.office_hours.per_day() == timedelta(hours=7, minutes=30)
    assert summer.add_working_hours(bj(2025, 3, 10, 11), 2) == bj(2025, 3, 10, 15, 30)
    assert cal.add_working_hours(bj(2025, 3, 10, 11), 2) == bj(2025, 3, 10, 14, 30)


def test_office_hours_reject_overlapping_periods() -> None:
    with pytest.raises(ValueError, match="overlaps"):
        OfficeHours.parse("09:00-12:00,11:00-17:00")
    with pytest.raises(ValueError, match="ends before"):
        OfficeHours.parse("12:00-09:00")


def test_office_time_between_counts_only_office_hours(cal: WorkingCalendar) -> None:
    # Fri 16:00-17:30 and Mon 09:00-10:00.
    elapsed = cal.office_time_between(bj(2025, 3, 7, 16), bj(2025, 3, 10, 10))
    assert elapsed == timedelta(hours=2, minutes=30)
    assert cal.office_time_between(bj(2025, 10, 1, 9), bj(2025, 10, 8, 18)) == timedelta()


def test_office_time_between_undoes_add_working_hours(cal: WorkingCalendar) -> None:
    start = bj(2025, 1, 24, 16, 10)
    assert cal.office_time_between(start, cal.add_working_hours(start, 20)) == timedelta(hours=20)


# -- CPL Art. 85 -----------------------------------------------------------------------------

def test_it_moves_a_period_ending_on_a_holiday_to_the_next_working_day(
        cal: WorkingCalendar) -> None:
    # 30 days from 5 Sep 2025 end on Sun 5 Oct, inside the 1-8 Oct break: Thu 9 Oct.
    assert cal.add_calendar_days_cpl85(date(2025, 9, 5), 30) == date(2025, 10, 9)
    assert cal.add_calendar_days_cpl85(date(2026, 1, 17), 30) == date(2026, 2, 24)


def test_a_period_does_not_count_its_start_day(cal: WorkingCalendar) -> None:
    assert cal.add_calendar_days_cpl85(date(2025, 3, 3), 1) == date(2025, 3, 4)
    assert cal.add_calendar_days_cpl85(date(2025, 3, 3), 3) == date(2025, 3, 6)


def test_a_period_ending_on_a_make_up_saturday_stays_there(cal: WorkingCalendar) -> None:
    assert cal.add_calendar_days_cpl85(date(2025, 9, 11), 30) == date(2025, 10, 11)


def test_a_period_ending_on_an_ordinary_weekend_moves_to_monday(cal: WorkingCalendar) -> None:
    assert cal.add_calendar_days_cpl85(date(2025, 3, 1), 7) == date(2025, 3, 10)


def test_days_off_inside_a_period_do_not_lengthen_it(cal: WorkingCalendar) -> None:
    assert cal.add_calendar_days_cpl85(date(2025, 9, 25), 20) == date(2025, 10, 15)


def test_a_period_from_a_datetime_starts_on_its_beijing_date(cal: WorkingCalendar) -> None:
    # 17:00 UTC on 4 Sep is 01:00 on 5 Sep in Beijing.
    start = datetime(2025, 9, 4, 17, 0, tzinfo=UTC)
    assert cal.add_calendar_days_cpl85(start, 30) == date(2025, 10, 9)


def test_a_period_must_be_at_least_one_day(cal: WorkingCalendar) -> None:
    with pytest.raises(ValueError):
        cal.add_calendar_days_cpl85(date(2025, 3, 3), 0)


# -- years not covered -----------------------------------------------------------------------

def test_it_reports_which_years_it_covers(cal: WorkingCalendar) -> None:
    assert cal.known_years == frozenset(range(2020, 2027))
    assert cal.covers(date(2026, 12, 31)) and not cal.covers(date(2027, 1, 1))
    assert not cal.covers(date(2019, 12, 31))


def test_an_uncovered_year_falls_back_to_monday_to_friday_with_a_warning(
        cal: WorkingCalendar, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="grassroots.kernel.calendar.working"):
        assert cal.is_working_day(date(2027, 1, 4))      # Monday
        assert not cal.is_working_day(date(2027, 1, 2))  # Saturday
    warnings = [r for r in caplog.records if "2027" in r.getMessage()]
    assert len(warnings) == 1  # once per year, not once per day


def test_a_strict_calendar_refuses_an_uncovered_year() -> None:
    strict = WorkingCalendar.shipped(strict=True)
    assert strict.is_working_day(date(2026, 12, 31))
    with pytest.raises(CalendarNotCovered) as caught:
        strict.add_working_days(bj(2026, 12, 30, 10), 5)
    assert caught.value.params["year"] == 2027
    assert "2027" in caught.value.message("en")


def test_an_empty_calendar_covers_nothing() -> None:
    empty = WorkingCalendar()
    assert empty.known_years == frozenset()
    assert empty.is_working_day(date(2025, 10, 8))  # a Wednesday: the fallback, not the notice
    assert not empty.covers(date(2025, 10, 8))


# -- the year-file checks --------------------------------------------------------------------

def good_file(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "year": 2027, "source": "test fixture",
        "holidays": [{"date": "2027-01-01", "name_zh": "元旦", "name_en": "New Year's Day"}],
        "workdays": [{"date": "2027-01-09", "name_zh": "元旦调休上班",
                      "name_en": "New Year's Day make-up working day"}],
    }
    data.update(changes)
    return data


def problems_of(data: object) -> list[str]:
    with pytest.raises(CalendarDataError) as caught:
        parse_year(data)
    return caught.value.problems


def test_a_good_year_file_parses() -> None:
    year = parse_year(good_file())
    assert year.year == 2027 and [e.date for e in year.holidays] == [date(2027, 1, 1)]
    assert [e.date for e in year.workdays] == [date(2027, 1, 9)]


def test_a_year_file_with_several_faults_lists_every_problem() -> None:
    data = good_file(
        holidays=[{"date": "2027-02-30", "name_zh": "春节", "name_en": "Spring Festival"},
                  {"date": "2026-12-31", "name_zh": "元旦", "name_en": "New Year's Day"},
                  {"date": "2027-01-01", "name_zh": "元旦", "name_en": "New Year's Day"},
                  {"date": "2027-01-01", "name_zh": "元旦", "name_en": "New Year's Day"},
                  {"date": "2027/05/01", "name_zh": "劳动节", "name_en": "Labour Day"},
                  {"date": "2027-01-02", "name_zh": "元旦", "name_en": "New Year's Day"}],
        workdays=[{"date": "2027-01-02", "name_zh": "x", "name_en": "x"},
                  {"date": "2027-01-04", "name_zh": "x", "name_en": "x"}])
    problems = problems_of(data)
    text = "\n".join(problems)
    assert "'2027-02-30' is not a real calendar date" in text
    assert "2026-12-31 is outside the stated year 2027" in text
    assert "holidays[3]: 2027-01-01 is listed twice" in text
    assert "'2027/05/01' is not a date in YYYY-MM-DD form" in text
    assert "2027-01-02 is listed both as a holiday and as a make-up working day" in text
    assert "2027-01-04 is a Monday" in text
    assert len(problems) == 6


def test_a_year_file_missing_its_parts_is_rejected() -> None:
    text = "\n".join(problems_of({"year": "2027", "holidays": [], "extra": 1}))
    assert "unknown keys: extra" in text
    assert "year: expected a whole number" in text
    assert "source: expected non-empty text" in text
    assert "holidays: the list is empty" in text
    assert "workdays: expected a list" in text


def test_a_year_file_that_is_not_an_object_is_rejected() -> None:
    assert problems_of([1, 2]) == ["the year file must be a JSON object"]


def test_the_rejection_message_carries_the_problems() -> None:
    with pytest.raises(CalendarDataError) as caught:
        parse_year(good_file(source=""))
    assert "source" in caught.value.message("en")
    assert "source" in caught.value.describe()


def test_a_shipped_file_passes_the_import_checks() -> None:
    path = resources.files("grassroots.kernel.calendar").joinpath("data/cn_2025.json")
    year = parse_year(json.loads(path.read_text(encoding="utf-8")))
    assert year == shipped_arrangements()[2025]
