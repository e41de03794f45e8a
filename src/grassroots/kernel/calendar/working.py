"""Working-day arithmetic on the official Chinese calendar: days off, make-up days, office hours.

A day is a working day when it is a listed make-up working day (调休上班), or a Monday to Friday
that is not a listed day off. For a year without a loaded arrangement the calendar falls back to
Monday to Friday, says so (`covers`, `known_years`, a logged warning once per year) and, when
built with strict=True, refuses instead (CalendarNotCovered).

Days are Beijing dates (DISPLAY_TZ); every datetime in or out is aware and what comes out is UTC.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo

from grassroots.kernel.calendar.arrangement import (
    CalendarEntry,
    DayKind,
    YearArrangement,
    shipped_arrangements,
)
from grassroots.kernel.clock import DISPLAY_TZ
from grassroots.kernel.errors import GrassrootsError
from grassroots.kernel.i18n import register_messages

log = logging.getLogger(__name__)

register_messages("zh_CN", {
    "error.calendar_not_covered":
        "{year}年的节假日安排尚未导入，无法按工作日计算期限（已有年份：{known}）",
})
register_messages("en", {
    "error.calendar_not_covered":
        "The holiday arrangement for {year} has not been imported, so working days cannot be "
        "counted (known years: {known})",
})


class CalendarNotCovered(GrassrootsError):
    """A strict calendar was asked about a year whose official arrangement is not loaded."""

    status_code = 422
    code = "calendar_not_covered"
    message_id = "error.calendar_not_covered"


def _parse_clock(text: str) -> time:
    hours, minutes = text.strip().split(":")
    return time(int(hours), int(minutes))


@dataclass(frozen=True)
class OfficeHours:
    """The office periods of a working day, as local wall-clock times, in order, not overlapping."""

    periods: tuple[tuple[time, time], ...]

    def __post_init__(self) -> None:
        if not self.periods:
            raise ValueError("office hours need at least one period")
        previous_end: time | None = None
        for begin, end in self.periods:
            if begin.tzinfo is not None or end.tzinfo is not None:
                raise ValueError("office hours are local wall-clock times; give naive times")
            if not begin < end:
                raise ValueError(f"office period {begin}-{end} ends before it begins")
            if previous_end is not None and begin < previous_end:
                raise ValueError(f"office period {begin}-{end} overlaps or is out of order")
            previous_end = end

    @classmethod
    def parse(cls, text: str) -> OfficeHours:
        """Read "09:00-12:00,13:30-17:30" (the form a setting would hold)."""
        periods = []
        for part in text.split(","):
            begin, end = part.split("-")
            periods.append((_parse_clock(begin), _parse_clock(end)))
        return cls(tuple(periods))

    def per_day(self) -> timedelta:
        """Office time in one working day."""
        day = date(2000, 1, 3)
        return sum((datetime.combine(day, e) - datetime.combine(day, b)
                    for b, e in self.periods), timedelta())


DEFAULT_OFFICE_HOURS = OfficeHours(((time(9, 0), time(12, 0)), (time(13, 30), time(17, 30))))


class WorkingCalendar:
    """The official working-day calendar built from year arrangements (shipped and imported)."""

    def __init__(self, arrangements: Iterable[YearArrangement] = (), *,
                 office_hours: OfficeHours = DEFAULT_OFFICE_HOURS,
                 tz: tzinfo = DISPLAY_TZ, strict: bool = False) -> None:
        self._years = {a.year: a for a in arrangements}
        self.office_hours = office_hours
        self.tz = tz
        self.strict = strict
        self._warned: set[int] = set()

    @classmethod
    def shipped(cls, *, office_hours: OfficeHours = DEFAULT_OFFICE_HOURS,
                strict: bool = False) -> WorkingCalendar:
        """A calendar from the years shipped with the code only (no database overrides)."""
        return cls(shipped_arrangements().values(), office_hours=office_hours, strict=strict)

    def with_office_hours(self, office_hours: OfficeHours) -> WorkingCalendar:
        """The same days with other office hours."""
        return WorkingCalendar(self._years.values(), office_hours=office_hours, tz=self.tz,
                               strict=self.strict)

    # -- which days ------------------------------------------------------------------------

    @property
    def known_years(self) -> frozenset[int]:
        return frozenset(self._years)

    def arrangement(self, year: int) -> YearArrangement | None:
        return self._years.get(year)

    def covers(self, d: date | datetime) -> bool:
        """Whether the official arrangement for this day's year is loaded."""
        return self._local_date(d).year in self._years

    def entry(self, d: date | datetime) -> CalendarEntry | None:
        """The listed holiday or make-up working day on this date, if any."""
        day = self._local_date(d)
        year = self._years.get(day.year)
        return year.by_date.get(day) if year else None

    def is_working_day(self, d: date | datetime) -> bool:
        """A make-up working day, or a Monday to Friday that is not a listed day off."""
        day = self._local_date(d)
        self._check_covered(day.year)
        listed = self.entry(day)
        if listed is not None:
            return listed.kind is DayKind.WORKDAY
        return day.weekday() < 5

    def next_working_day(self, d: date | datetime, *, inclusive: bool = False) -> date:
        """The first working day after d (or d itself when inclusive and d is a working day)."""
        day = self._local_date(d)
        if not inclusive:
            day += timedelta(days=1)
        while not self.is_working_day(day):
            day += timedelta(days=1)
        return day

    def working_days_between(self, a: date | datetime, b: date | datetime) -> int:
        """Working days after a up to and including b; negative when b is before a."""
        first, last = self._local_date(a), self._local_date(b)
        if last < first:
            return -self.working_days_between(last, first)
        count, day = 0, first
        while day < last:
            day += timedelta(days=1)
            count += self.is_working_day(day)
        return count

    # -- deadlines in days -----------------------------------------------------------------

    def end_of_day(self, d: date) -> datetime:
        """The last instant of a Beijing date (23:59:59.999999), in UTC."""
        return datetime.combine(d, time.max, tzinfo=self.tz).astimezone(UTC)

    def add_working_days(self, start: datetime, n: int) -> datetime:
        """Deadline n working days after start: the end of the n-th working day after the start day.

        Hotline practice (次日起算): the day of `start` (Beijing date) is never counted; the
        working days after it are counted 1..n and the deadline is the end (23:59:59.999999
        Beijing time) of the n-th, returned in UTC. A start on a rest day therefore counts from
        the start of the next working day: received Saturday, 1 working day -> end of Monday.
        n=0 means the end of the start day when it is a working day, otherwise the end of the
        next working day.
        """
        if n < 0:
            raise ValueError("n must be zero or more working days")
        day = self._local_date(_aware(start))
        if n == 0:
            return self.end_of_day(self.next_working_day(day, inclusive=True))
        for _ in range(n):
            day = self.next_working_day(day)
        return self.end_of_day(day)

    def add_calendar_days_cpl85(self, start: date | datetime, days: int) -> date:
        """Last day of a period of `days` days under Civil Procedure Law Art. 85.

        CPL Art. 85 (numbering of the 2021 and 2023 texts; Art. 82 in the 2017 text): the day a
        period starts is not counted (期间开始的时和日，不计算在期间内); if its last day is a
        statutory rest day (法定休假日) the period ends on the first day after it. Civil Code
        Art. 203 says the same and ends the last day at 24:00. In Chinese court practice
        法定休假日 includes Saturdays and Sundays, and days off inside a period are not deducted;
        where rest days are moved by 调休 the actual rest days count (former SPC Opinions on the
        General Principles of Civil Law, Art. 198: 以实际休假日的次日为期间的最后一天). So a
        weekend or listed day off at the end moves the end to the next working day, and a
        make-up working Saturday or Sunday is not a rest day: a period ending on it ends there.
        The period runs to the end of the returned Beijing date (see end_of_day).
        """
        if days < 1:
            raise ValueError("a period is at least one day")
        last = self._local_date(start) + timedelta(days=days)
        return self.next_working_day(last, inclusive=True)

    # -- deadlines in office hours ---------------------------------------------------------

    def add_working_hours(self, start: datetime, hours: float | timedelta) -> datetime:
        """The instant `hours` of office time after start, skipping lunch, nights and rest days.

        Office time is counted in the calendar's office hours on working days only; a start
        outside office hours begins at the next office period. A deadline that uses up a
        period exactly ends at that period's end (12:00, not 13:30). Returned in UTC.
        """
        remaining = _duration(hours)
        at = _aware(start).astimezone(UTC)
        if not remaining:
            return at
        for begin, end in self._office_periods_from(at):
            begin = max(begin, at)
            if remaining <= end - begin:
                return begin + remaining
            remaining -= end - begin
        raise AssertionError("unreachable: office periods never run out")

    def office_time_between(self, a: datetime, b: datetime) -> timedelta:
        """Office time elapsed from a to b (for measuring how long handling took)."""
        start, stop = _aware(a).astimezone(UTC), _aware(b).astimezone(UTC)
        if stop < start:
            raise ValueError("the end is before the start")
        total = timedelta()
        for begin, end in self._office_periods_from(start):
            if begin >= stop:
                return total
            total += min(end, stop) - max(begin, start)
        raise AssertionError("unreachable: office periods never run out")

    def _office_periods_from(self, at: datetime) -> Iterator[tuple[datetime, datetime]]:
        """Office periods (UTC) of working days that end after `at`, in order, without end."""
        day = self._local_date(at)
        while True:
            if self.is_working_day(day):
                for begin, end in self.office_hours.periods:
                    # Local wall time -> UTC per period, so a zone with DST still counts right.
                    period = (datetime.combine(day, begin, tzinfo=self.tz).astimezone(UTC),
                              datetime.combine(day, end, tzinfo=self.tz).astimezone(UTC))
                    if period[1] > at:
                        yield period
            day += timedelta(days=1)

    # -- helpers ---------------------------------------------------------------------------

    def _local_date(self, value: date | datetime) -> date:
        # datetime is a subclass of date, so it must be tested first.
        if isinstance(value, datetime):
            return _aware(value).astimezone(self.tz).date()
        return value

    def _check_covered(self, year: int) -> None:
        if year in self._years:
            return
        known = ", ".join(str(y) for y in sorted(self._years)) or "none"
        if self.strict:
            raise CalendarNotCovered(year=year, known=known)
        if year not in self._warned:
            self._warned.add(year)
            log.warning("no official holiday arrangement loaded for %s; counting Monday to "
                        "Friday as working days (known years: %s)", year, known)


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("naive datetime given; use an aware datetime from the clock")
    return value


def _duration(hours: float | timedelta) -> timedelta:
    duration = hours if isinstance(hours, timedelta) else timedelta(hours=hours)
    if duration < timedelta():
        raise ValueError("a duration of office time cannot be negative")
    return duration


def shipped_calendar() -> WorkingCalendar:
    """A calendar from the shipped years only; use load_calendar to include imported years."""
    return WorkingCalendar.shipped()
