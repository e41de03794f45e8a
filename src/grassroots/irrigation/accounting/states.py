"""The account's vocabulary: groupings, periods, measures and the irrigation seasons."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import date, timedelta


class Grouping(enum.StrEnum):
    USE = "use"
    CANAL = "canal"  # the canal a turnout draws from
    WUA = "wua"
    TURNOUT = "turnout"


class Period(enum.StrEnum):
    DAY = "day"
    MONTH = "month"
    SEASON = "season"


class Measure(enum.StrEnum):
    # 取水口毛水量: the share of the lifted water, losses on the way included (the seed's split).
    SOURCE = "source"
    # 斗口净水量: what the turnout or offtake metered.
    DELIVERED = "delivered"


@dataclass(frozen=True)
class Season:
    key: str
    first: tuple[int, int]  # month, day
    last: tuple[int, int]


# The Yellow River lift districts' irrigation seasons. They tile the calendar year, so seasons
# add up to the year; the pumps run only from about April to late November.
SEASONS: tuple[Season, ...] = (
    Season("spring", (1, 1), (5, 20)),  # 春灌
    Season("summer", (5, 21), (8, 31)),  # 夏灌
    Season("autumn", (9, 1), (10, 15)),  # 秋灌
    Season("autumn_winter", (10, 16), (12, 31)),  # 秋浇 / 冬灌
)


def season_of(day: date) -> Season:
    for season in SEASONS:
        if date(day.year, *season.first) <= day <= date(day.year, *season.last):
            return season
    raise AssertionError("the seasons tile the year")


@dataclass(frozen=True)
class Bucket:
    """One period of a report: its key ("2025-04", "2025-summer", "2025-04-08") and its days."""

    key: str
    first: date
    last: date
    kind: Period

    @property
    def year(self) -> int:
        return self.first.year

    @property
    def name(self) -> str:
        """The season key, or the month number, or the ISO day (for labels)."""
        if self.kind == Period.SEASON:
            return self.key.split("-", 1)[1]
        if self.kind == Period.MONTH:
            return str(self.first.month)
        return self.first.isoformat()


def bucket_of(day: date, period: Period) -> Bucket:
    if period == Period.DAY:
        return Bucket(day.isoformat(), day, day, period)
    if period == Period.MONTH:
        first = day.replace(day=1)
        following = date(first.year + first.month // 12, first.month % 12 + 1, 1)
        return Bucket(f"{first:%Y-%m}", first, following - timedelta(days=1), period)
    season = season_of(day)
    return Bucket(f"{day.year}-{season.key}", date(day.year, *season.first),
                  date(day.year, *season.last), period)


def buckets(first: date, last: date, period: Period) -> list[Bucket]:
    """Every period that meets [first, last], in order."""
    found: list[Bucket] = []
    day = first
    while day <= last:
        bucket = bucket_of(day, period)
        found.append(bucket)
        day = bucket.last + timedelta(days=1)
    return found
