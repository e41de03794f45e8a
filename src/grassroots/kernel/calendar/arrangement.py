"""One year's official holiday arrangement: the year-file format, its checks and the shipped years.

A year file mirrors one State Council General Office notice (国务院办公厅关于…部分节假日安排的通知):

    {"year": 2025, "source": "…（国办发明电〔2024〕12号…）", "notes": "…", "url": "…",
     "holidays": [{"date": "2025-01-01", "name_zh": "元旦", "name_en": "New Year's Day"}, …],
     "workdays": [{"date": "2025-01-26", "name_zh": "春节调休上班",
                   "name_en": "Spring Festival make-up working day"}, …]}

"holidays" lists every day the notice gives off (放假), weekend days inside a span included;
"workdays" lists the weekend days it makes working days (调休上班). "notes" and "url" are optional.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from functools import cache
from importlib import resources
from types import MappingProxyType
from typing import Any

from grassroots.kernel.errors import ValidationFailed

DATA_PACKAGE = "grassroots.kernel.calendar"
DATA_DIR = "data"
FIRST_YEAR = 1949
LAST_YEAR = 2200
MAX_NAME = 120
MAX_SOURCE = 500
_TOP_KEYS = {"year", "source", "notes", "url", "holidays", "workdays"}
_ENTRY_KEYS = {"date", "name_zh", "name_en"}
# date.fromisoformat also takes "20250101" and week dates; the file format allows one spelling.
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


class DayKind(enum.StrEnum):
    HOLIDAY = "holiday"
    WORKDAY = "workday"


class Origin(enum.StrEnum):
    SHIPPED = "shipped"
    IMPORTED = "imported"


@dataclass(frozen=True)
class CalendarEntry:
    """One listed day: a day off or a make-up working day, with the festival's names."""

    date: date
    kind: DayKind
    name_zh: str
    name_en: str


@dataclass(frozen=True)
class YearArrangement:
    """The listed days of one year and where they came from."""

    year: int
    source: str
    entries: tuple[CalendarEntry, ...]
    notes: str = ""
    origin: Origin = Origin.SHIPPED
    by_date: Mapping[date, CalendarEntry] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_date", {e.date: e for e in self.entries})

    @property
    def holidays(self) -> tuple[CalendarEntry, ...]:
        return tuple(e for e in self.entries if e.kind is DayKind.HOLIDAY)

    @property
    def workdays(self) -> tuple[CalendarEntry, ...]:
        return tuple(e for e in self.entries if e.kind is DayKind.WORKDAY)


class CalendarDataError(ValidationFailed):
    """A year file that fails its checks; `problems` lists every one found, not just the first."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__(detail="; ".join(self.problems))

    def describe(self) -> str:
        return "calendar data rejected:\n" + "\n".join(f"  - {p}" for p in self.problems)


def parse_year(data: object) -> YearArrangement:
    """Check a decoded year file; raise CalendarDataError listing every problem found."""
    if not isinstance(data, dict):
        raise CalendarDataError(["the year file must be a JSON object"])
    problems: list[str] = []
    unknown = sorted(str(k) for k in set(data) - _TOP_KEYS)
    if unknown:
        problems.append(f"unknown keys: {', '.join(unknown)}")
    year = _parse_year_number(data.get("year"), problems)
    source = _text(data.get("source"), "source", MAX_SOURCE, problems)
    notes = _optional_text(data.get("notes"), "notes", problems)
    _optional_text(data.get("url"), "url", problems)
    entries = _parse_list(data, "holidays", DayKind.HOLIDAY, year, problems)
    entries += _parse_list(data, "workdays", DayKind.WORKDAY, year, problems)
    problems += _cross_checks(entries)
    if problems:
        raise CalendarDataError(problems)
    assert year is not None  # a missing year is a problem above
    return YearArrangement(year=year, source=source, notes=notes,
                           entries=tuple(sorted((e for e, _ in entries), key=lambda e: e.date)))


def _parse_year_number(value: Any, problems: list[str]) -> int | None:
    # bool is an int in Python; "year": true must not read as 1.
    if isinstance(value, bool) or not isinstance(value, int):
        problems.append(f"year: expected a whole number, got {value!r}")
        return None
    if not FIRST_YEAR <= value <= LAST_YEAR:
        problems.append(f"year: {value} is outside {FIRST_YEAR}..{LAST_YEAR}")
        return None
    return value


def _text(value: Any, where: str, limit: int, problems: list[str]) -> str:
    if not isinstance(value, str) or not value.strip():
        problems.append(f"{where}: expected non-empty text, got {value!r}")
        return ""
    if len(value) > limit:
        problems.append(f"{where}: longer than {limit} characters")
    return value.strip()


def _optional_text(value: Any, where: str, problems: list[str]) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        problems.append(f"{where}: expected text, got {value!r}")
        return ""
    return value.strip()


def _parse_list(data: dict[str, Any], key: str, kind: DayKind, year: int | None,
                problems: list[str]) -> list[tuple[CalendarEntry, str]]:
    rows = data.get(key)
    if not isinstance(rows, list):
        problems.append(f"{key}: expected a list, got {rows!r}")
        return []
    if kind is DayKind.HOLIDAY and not rows:
        # Every notice gives days off; an empty list is a truncated or wrong file.
        problems.append("holidays: the list is empty")
    parsed = []
    for index, row in enumerate(rows):
        entry = _parse_entry(row, f"{key}[{index}]", kind, year, problems)
        if entry is not None:
            parsed.append((entry, f"{key}[{index}]"))
    return parsed


def _parse_entry(row: Any, where: str, kind: DayKind, year: int | None,
                 problems: list[str]) -> CalendarEntry | None:
    if not isinstance(row, dict):
        problems.append(f"{where}: expected an object with date, name_zh, name_en")
        return None
    unknown = sorted(str(k) for k in set(row) - _ENTRY_KEYS)
    if unknown:
        problems.append(f"{where}: unknown keys: {', '.join(unknown)}")
    day = _parse_date(row.get("date"), where, problems)
    name_zh = _text(row.get("name_zh"), f"{where}.name_zh", MAX_NAME, problems)
    name_en = _text(row.get("name_en"), f"{where}.name_en", MAX_NAME, problems)
    if day is None:
        return None
    if year is not None and day.year != year:
        problems.append(f"{where}: {day.isoformat()} is outside the stated year {year}")
    return CalendarEntry(date=day, kind=kind, name_zh=name_zh, name_en=name_en)


def _parse_date(value: Any, where: str, problems: list[str]) -> date | None:
    if not isinstance(value, str) or not _ISO_DATE.match(value):
        problems.append(f"{where}.date: {value!r} is not a date in YYYY-MM-DD form")
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        problems.append(f"{where}.date: {value!r} is not a real calendar date")
        return None


def _cross_checks(entries: list[tuple[CalendarEntry, str]]) -> list[str]:
    problems: list[str] = []
    seen: dict[date, tuple[CalendarEntry, str]] = {}
    for entry, where in entries:
        if entry.kind is DayKind.WORKDAY and entry.date.weekday() < 5:
            problems.append(
                f"{where}: {entry.date.isoformat()} is a {_WEEKDAYS[entry.date.weekday()]}; "
                "a make-up working day (调休上班) is a Saturday or Sunday")
        first = seen.get(entry.date)
        if first is None:
            seen[entry.date] = (entry, where)
        elif first[0].kind is entry.kind:
            problems.append(f"{where}: {entry.date.isoformat()} is listed twice "
                            f"(also at {first[1]})")
        else:
            problems.append(f"{where}: {entry.date.isoformat()} is listed both as a holiday "
                            f"and as a make-up working day (also at {first[1]})")
    return problems


@cache
def shipped_arrangements() -> Mapping[int, YearArrangement]:
    """The years shipped in data/cn_YYYY.json, checked with the same rules as an import."""
    folder = resources.files(DATA_PACKAGE).joinpath(DATA_DIR)
    years: dict[int, YearArrangement] = {}
    for item in sorted(folder.iterdir(), key=lambda i: i.name):
        if not (item.name.startswith("cn_") and item.name.endswith(".json")):
            continue
        arrangement = parse_year(json.loads(item.read_text(encoding="utf-8")))
        # A file named for one year but holding another would silently shadow the real one.
        if item.name != f"cn_{arrangement.year}.json":
            raise CalendarDataError([f"{item.name} holds the year {arrangement.year}"])
        years[arrangement.year] = arrangement
    # Read-only: the cache is shared by every caller in the process.
    return MappingProxyType(years)
