"""The planned flow of each structure on a day: what alarms compare with and the simulator follows.

Until water orders and allocation plans have their own tables, a day's plan is the water
account's daily volume of source ``simulated`` (the demo's planned year) as a mean flow,
volume / 86,400 s. A day in a year the account holds no planned rows for is read from the same
calendar day of the latest year that has them (29 February from the 28th), so the demo year
keeps serving as "the plan" in later years. A structure with planned rows that year but none on
the day is planned shut (0 m³/s); one with no planned rows at all has no plan (left out).
A structure's ``config`` JSON may pin its plan with ``planned_flow_m3s``, which wins.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import date, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from grassroots.irrigation.accounting.models import DailyVolume, VolumeSource
from grassroots.irrigation.network.models import Structure
from grassroots.irrigation.water.volumes import ACCOUNTING_TZ

SECONDS_PER_DAY = 86_400
CONFIG_KEY = "planned_flow_m3s"


def accounting_day(moment: datetime) -> date:
    """The Beijing-time day a moment belongs to, as the water account counts days."""
    return moment.astimezone(ACCOUNTING_TZ).date()


def _year_bounds(year: int) -> tuple[date, date]:
    return date(year, 1, 1), date(year, 12, 31)


def _same_day_in(day: date, year: int) -> date:
    if day.month == 2 and day.day == 29:
        return date(year, 2, 28)
    return day.replace(year=year)


def reference_day(*, session: Session, day: date) -> date | None:
    """The day whose planned rows stand for ``day``; None when nothing is planned at all."""
    planned = DailyVolume.source == VolumeSource.SIMULATED
    first, last = _year_bounds(day.year)
    if session.scalar(select(DailyVolume.id).where(planned, DailyVolume.day >= first,
                                                   DailyVolume.day <= last).limit(1)):
        return day
    newest = session.scalar(select(func.max(DailyVolume.day)).where(planned))
    return None if newest is None else _same_day_in(day, newest.year)


def _pinned(session: Session, structure_ids: Iterable[int] | None) -> dict[int, float]:
    query = select(Structure.id, Structure.config).where(
        Structure.config.contains(CONFIG_KEY))
    if structure_ids is not None:
        query = query.where(Structure.id.in_(list(structure_ids)))
    pinned: dict[int, float] = {}
    for structure_id, config in session.execute(query).tuples():
        try:
            value = json.loads(config or "{}").get(CONFIG_KEY)
        except (ValueError, AttributeError):
            continue
        if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
            pinned[structure_id] = float(value)
    return pinned


def planned_flows(*, session: Session, day: date,
                  structure_ids: Iterable[int] | None = None) -> dict[int, float]:
    """Mean planned flow (m³/s) on ``day`` of every structure that has a plan."""
    return planned_flows_range(session=session, first=day, last=day,
                               structure_ids=structure_ids)[day]


def planned_flows_range(*, session: Session, first: date, last: date,
                        structure_ids: Iterable[int] | None = None
                        ) -> dict[date, dict[int, float]]:
    """``planned_flows`` for every day from ``first`` to ``last``, in a few queries."""
    ids = None if structure_ids is None else sorted(set(structure_ids))
    days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    result: dict[date, dict[int, float]] = {day: {} for day in days}
    references = {day: reference_day(session=session, day=day) for day in days}
    planned = DailyVolume.source == VolumeSource.SIMULATED
    wanted = sorted({ref for ref in references.values() if ref is not None})
    if wanted:
        structure_filter = [] if ids is None else [DailyVolume.structure_id.in_(ids)]
        years = sorted({ref.year for ref in wanted})
        planned_in: dict[int, set[int]] = {}
        for year in years:
            start, end = _year_bounds(year)
            planned_in[year] = set(session.scalars(
                select(DailyVolume.structure_id).distinct()
                .where(planned, DailyVolume.day >= start, DailyVolume.day <= end,
                       *structure_filter)))
        volumes: dict[date, dict[int, int]] = {}
        for ref_day, structure_id, volume in session.execute(
                select(DailyVolume.day, DailyVolume.structure_id, DailyVolume.volume_m3)
                .where(planned, DailyVolume.day.in_(wanted), *structure_filter)).tuples():
            volumes.setdefault(ref_day, {})[structure_id] = volume
        for day, ref in references.items():
            if ref is None:
                continue
            on_day = volumes.get(ref, {})
            result[day] = {sid: on_day.get(sid, 0) / SECONDS_PER_DAY
                           for sid in planned_in[ref.year]}
    pinned = _pinned(session, ids)
    for flows in result.values():
        flows.update(pinned)
    return result
