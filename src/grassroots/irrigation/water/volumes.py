"""Volumes from flow series (trapezoid rule, gaps reported, never bridged) and from totalisers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import numpy as np

from grassroots.irrigation.water._series import (
    US_PER_S,
    FloatArray,
    IntArray,
    TimesLike,
    ValuesLike,
    as_series,
    clean_sorted,
    from_us,
    td_us,
    to_us,
)
from grassroots.irrigation.water.quality import QualityFlag

# Water accounts close on Beijing-time days and months, whatever the server's zone.
ACCOUNTING_TZ = ZoneInfo("Asia/Shanghai")
# At a 5-minute reporting interval this bridges one or two lost reports; anything longer is a
# gap to report, not a slope to draw.
DEFAULT_MAX_GAP = timedelta(minutes=15)


@dataclass(frozen=True, slots=True)
class Gap:
    """A stretch of the window with no usable flow data; its volume is not counted."""

    start: datetime
    end: datetime
    duration: timedelta


@dataclass(frozen=True, slots=True)
class VolumeResult:
    """Volume over the covered part of a window; None when nothing of it was covered."""

    volume_m3: float | None
    covered_seconds: float
    gaps: tuple[Gap, ...]
    coverage: float
    quality: QualityFlag


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _integrate(t: IntArray, v: FloatArray, start_us: int, end_us: int, gap_us: int) -> VolumeResult:
    """Trapezoid integral over [start, end) of a clean, sorted series (times in µs, m³/s)."""
    if end_us <= start_us:
        raise ValueError("the window's end must come after its start")
    # Only the readings inside the window and the one just outside each edge can matter.
    lo = max(int(np.searchsorted(t, start_us, side="right")) - 1, 0)
    hi = min(int(np.searchsorted(t, end_us, side="left")) + 1, t.size)
    t, v = t[lo:hi], v[lo:hi]

    volume = 0.0
    covered_us = 0
    spans: list[tuple[int, int]] = []
    if t.size == 0:
        spans.append((start_us, end_us))
    else:
        if t[0] > start_us:
            spans.append((start_us, min(int(t[0]), end_us)))
        if t[-1] < end_us:
            spans.append((max(int(t[-1]), start_us), end_us))
    if t.size >= 2:
        t0, t1, v0, v1 = t[:-1], t[1:], v[:-1], v[1:]
        step = t1 - t0
        a = np.maximum(t0, start_us)
        b = np.minimum(t1, end_us)
        overlaps = b > a
        bridged = step <= gap_us
        use = overlaps & bridged
        # Clip at the window edges by linear interpolation inside the interval.
        slope = (v1 - v0) / step
        va = v0 + slope * (a - t0)
        vb = v0 + slope * (b - t0)
        width_us = (b - a)[use]
        volume = float(np.sum((va[use] + vb[use]) / 2 * width_us)) / US_PER_S
        covered_us = int(np.sum(width_us))
        missing = overlaps & ~bridged
        spans.extend(zip(a[missing].tolist(), b[missing].tolist(), strict=True))

    gaps = tuple(
        Gap(from_us(s), from_us(e), timedelta(microseconds=e - s)) for s, e in _merge(spans)
    )
    return VolumeResult(
        volume_m3=volume if covered_us > 0 else None,
        covered_seconds=covered_us / US_PER_S,
        gaps=gaps,
        coverage=covered_us / (end_us - start_us),
        quality=QualityFlag.GAP if gaps else QualityFlag.OK,
    )


def _check_gap(max_gap: timedelta) -> int:
    if max_gap <= timedelta(0):
        raise ValueError("max_gap must be positive")
    return td_us(max_gap)


def integrate_flow(
    times: TimesLike,
    flows_m3s: ValuesLike,
    *,
    start: datetime,
    end: datetime,
    max_gap: timedelta = DEFAULT_MAX_GAP,
) -> VolumeResult:
    """Volume (m³) over [start, end) from flow readings (m³/s) by the trapezoid rule.

    Readings may be unsorted; None/NaN readings are unavailable and skipped. Two neighbouring
    readings further apart than ``max_gap`` are not interpolated across: that stretch is a
    gap, its volume is left out and ``coverage`` falls. The same goes for any part of the window
    before the first or after the last reading. Intervals straddling an edge of the window
    are clipped there by linear interpolation.
    """
    t, v = clean_sorted(*as_series(times, flows_m3s))
    return _integrate(t, v, to_us(start), to_us(end), _check_gap(max_gap))


def _local_midnight_us(day: date, tz: ZoneInfo) -> int:
    return to_us(datetime.combine(day, time(0), tzinfo=tz))


def _day_bounds(
    t: IntArray, first: date | None, last: date | None, tz: ZoneInfo
) -> tuple[date, date] | None:
    if first is not None and last is not None:
        return first, last
    if t.size == 0:
        return None
    first = first or from_us(t[0]).astimezone(tz).date()
    last = last or from_us(t[-1]).astimezone(tz).date()
    return first, last


def volumes_by_day(
    times: TimesLike,
    flows_m3s: ValuesLike,
    *,
    first_day: date | None = None,
    last_day: date | None = None,
    tz: ZoneInfo = ACCOUNTING_TZ,
    max_gap: timedelta = DEFAULT_MAX_GAP,
) -> dict[date, VolumeResult]:
    """One volume per local day (Beijing time by default), first to last day inclusive.

    Without ``first_day``/``last_day`` the days of the first and last available readings are
    used; a reading-free series then gives no days.
    """
    t, v = clean_sorted(*as_series(times, flows_m3s))
    gap_us = _check_gap(max_gap)
    bounds = _day_bounds(t, first_day, last_day, tz)
    if bounds is None:
        return {}
    results: dict[date, VolumeResult] = {}
    day = bounds[0]
    while day <= bounds[1]:
        following = day + timedelta(days=1)
        start_us = _local_midnight_us(day, tz)
        results[day] = _integrate(t, v, start_us, _local_midnight_us(following, tz), gap_us)
        day = following
    return results


def _next_month(day: date) -> date:
    return date(day.year + day.month // 12, day.month % 12 + 1, 1)


def volumes_by_month(
    times: TimesLike,
    flows_m3s: ValuesLike,
    *,
    first_month: date | None = None,
    last_month: date | None = None,
    tz: ZoneInfo = ACCOUNTING_TZ,
    max_gap: timedelta = DEFAULT_MAX_GAP,
) -> dict[date, VolumeResult]:
    """One volume per local calendar month, keyed by the month's first day."""
    t, v = clean_sorted(*as_series(times, flows_m3s))
    gap_us = _check_gap(max_gap)
    bounds = _day_bounds(t, first_month, last_month, tz)
    if bounds is None:
        return {}
    results: dict[date, VolumeResult] = {}
    month = bounds[0].replace(day=1)
    while month <= bounds[1]:
        following = _next_month(month)
        start_us = _local_midnight_us(month, tz)
        results[month] = _integrate(t, v, start_us, _local_midnight_us(following, tz), gap_us)
        month = following
    return results


# --- Totalisers -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TotaliserResult:
    """Volume from cumulative counter readings, with the rollovers and resets it crossed."""

    volume_m3: float | None
    rollovers: int
    resets: tuple[datetime, ...]
    quality: QualityFlag


def totaliser_volume(
    times: TimesLike,
    readings_m3: ValuesLike,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    rollover_at: float | None = None,
    noise_tolerance_m3: float = 0.0,
) -> TotaliserResult:
    """Volume between the first and last counter readings in [start, end] (m³).

    A fall in the counter is a rollover when ``rollover_at`` (the counter's modulus) is set and
    wrapping explains it with less than half a turn; otherwise it is a reset (meter replaced,
    memory lost): the counter is taken to have restarted at zero, the volume before the reset
    that no reading saw is lost, and the result is flagged ESTIMATED. Falls within
    ``noise_tolerance_m3`` are meter jitter and net out. Fewer than two readings give None,
    flagged GAP.
    """
    t, r = clean_sorted(*as_series(times, readings_m3))
    inside = np.ones(t.size, dtype=np.bool_)
    if start is not None:
        inside &= t >= to_us(start)
    if end is not None:
        inside &= t <= to_us(end)
    t, r = t[inside], r[inside]
    if t.size < 2:
        return TotaliserResult(None, 0, (), QualityFlag.GAP)

    step = np.diff(r)
    # A dip within the tolerance is kept as a small negative step, so it nets out against the
    # next rise instead of inflating the total.
    increments = np.where(step >= -noise_tolerance_m3, step, np.nan)
    fell = np.isnan(increments)
    rolled = np.zeros(step.shape, dtype=np.bool_)
    if rollover_at is not None:
        wrapped = rollover_at - r[:-1] + r[1:]
        rolled = fell & (wrapped >= 0) & (wrapped <= rollover_at / 2)
        increments = np.where(rolled, wrapped, increments)
    reset = fell & ~rolled
    increments = np.where(reset, r[1:], increments)
    quality = QualityFlag.ESTIMATED if np.any(reset) else QualityFlag.OK
    return TotaliserResult(
        volume_m3=float(np.sum(increments)),
        rollovers=int(np.sum(rolled)),
        resets=tuple(from_us(x) for x in t[1:][reset]),
        quality=quality,
    )
