"""The water account, read from irr_daily_volume: by use, canal, WUA or turnout, per period.

Which rows count: a structure's rows enter the account when it is a turnout (a delivery) or
feeds a canal (the pump station, a branch head gate). A canal's inflow is what the structures
feeding it metered; its outflow is what the turnouts and head gates on it metered. Section
flumes and gauges are for loss studies and operations, never counted twice here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from grassroots.irrigation.accounting.models import DailyVolume
from grassroots.irrigation.accounting.states import (
    SEASONS,
    Bucket,
    Grouping,
    Measure,
    Period,
    bucket_of,
    buckets,
)
from grassroots.irrigation.network.models import (
    Canal,
    CanalLevel,
    Structure,
    StructureKind,
    WaterUse,
    WaterUserAssociation,
)
from grassroots.irrigation.water.accounting import canal_water_use_coefficient
from grassroots.kernel.errors import ValidationFailed
from grassroots.kernel.i18n import translate

# A report longer than this many days per row would be unreadable and slow; ask for months.
MAX_DAY_ROWS = 400


@dataclass(frozen=True)
class Group:
    key: str
    label: str


@dataclass
class AccountTable:
    """Rows are periods, columns are groups; every figure is whole m³."""

    grouping: Grouping
    period: Period
    measure: Measure
    first: date
    last: date
    groups: list[Group]
    periods: list[tuple[Bucket, str]]  # the bucket and its label
    cells: dict[tuple[str, str], int] = field(default_factory=dict)  # (period, group) → m³

    def cell(self, period_key: str, group_key: str) -> int:
        return self.cells.get((period_key, group_key), 0)

    def row_total(self, period_key: str) -> int:
        return sum(self.cell(period_key, g.key) for g in self.groups)

    def column_total(self, group_key: str) -> int:
        return sum(self.cell(b.key, group_key) for b, _ in self.periods)

    @property
    def total(self) -> int:
        return sum(self.cells.values())


@dataclass(frozen=True)
class CanalBalance:
    code: str
    name: str
    level: CanalLevel
    inflow_m3: int
    outflow_m3: int

    @property
    def loss_m3(self) -> int:
        return self.inflow_m3 - self.outflow_m3

    @property
    def coefficient(self) -> float | None:
        if self.inflow_m3 <= 0:
            return None
        return canal_water_use_coefficient(delivered_m3=self.outflow_m3,
                                           diverted_m3=self.inflow_m3)


@dataclass(frozen=True)
class UseSummary:
    use: WaterUse
    label: str
    source_m3: int
    delivered_m3: int

    @property
    def coefficient(self) -> float | None:
        if self.source_m3 <= 0:
            return None
        return canal_water_use_coefficient(delivered_m3=self.delivered_m3,
                                           diverted_m3=self.source_m3)


@dataclass
class AccountReport:
    """Everything the account page, its xlsx and its JSON show, computed once."""

    table: AccountTable
    lifted_m3: int
    uses: list[UseSummary]
    balances: list[CanalBalance]

    @property
    def delivered_m3(self) -> int:
        return sum(u.delivered_m3 for u in self.uses)

    @property
    def district_coefficient(self) -> float | None:
        if self.lifted_m3 <= 0:
            return None
        return canal_water_use_coefficient(delivered_m3=self.delivered_m3,
                                           diverted_m3=self.lifted_m3)


def _in_range(first: date, last: date) -> tuple[Any, Any]:
    return DailyVolume.day >= first, DailyVolume.day <= last


def default_range(*, session: Session, today: date) -> tuple[date, date]:
    """The calendar year of the newest volume in the table (the demo year on a fresh demo),
    or this year when there is none."""
    newest = session.scalar(select(func.max(DailyVolume.day)))
    year = newest.year if newest else today.year
    return date(year, 1, 1), date(year, 12, 31)


def check_range(first: date, last: date, period: Period) -> None:
    if last < first:
        raise ValidationFailed("irrigation.account.bad_range")
    if period == Period.DAY and (last - first).days + 1 > MAX_DAY_ROWS:
        raise ValidationFailed("irrigation.account.range_too_long", days=MAX_DAY_ROWS)


def _period_label(bucket: Bucket, language: str) -> str:
    if bucket.kind == Period.DAY:
        return bucket.key
    if bucket.kind == Period.MONTH:
        return translate("irrigation.account.month_label", language, year=bucket.year,
                         month=bucket.first.month)
    return translate("irrigation.account.season_label", language, year=bucket.year,
                     season=translate(f"irrigation.season.{bucket.name}", language))


def _groups(session: Session, grouping: Grouping, language: str) -> list[Group]:
    if grouping == Grouping.USE:
        return [Group(u.value, translate(f"irrigation.use.{u.value}", language))
                for u in WaterUse]
    if grouping == Grouping.WUA:
        return [Group(w.code, w.name) for w in session.scalars(
            select(WaterUserAssociation).order_by(WaterUserAssociation.code))]
    if grouping == Grouping.CANAL:
        delivering = select(Structure.canal_id).where(Structure.is_turnout.is_(True))
        canals = session.scalars(select(Canal).where(Canal.id.in_(delivering))).all()
        order = {CanalLevel.MAIN: 0, CanalLevel.BRANCH: 1, CanalLevel.LATERAL: 2}
        return [Group(c.code, c.name) for c in sorted(canals,
                                                      key=lambda c: (order[c.level], c.code))]
    turnouts = session.scalars(select(Structure).where(Structure.is_turnout.is_(True))
                               .order_by(Structure.code)).all()
    return [Group(s.code, s.name) for s in turnouts]


def _group_column(grouping: Grouping) -> tuple[Any, Any]:
    """The column to group delivery rows by and the select that maps its ids to codes."""
    if grouping == Grouping.USE:
        return DailyVolume.water_use, None
    if grouping == Grouping.WUA:
        return DailyVolume.wua_id, select(WaterUserAssociation.id, WaterUserAssociation.code)
    if grouping == Grouping.CANAL:
        return DailyVolume.canal_id, select(Canal.id, Canal.code)
    return DailyVolume.structure_id, select(Structure.id, Structure.code)


def account_table(*, session: Session, grouping: Grouping, period: Period, measure: Measure,
                  first: date, last: date, language: str = "zh_CN") -> AccountTable:
    """Delivery volumes (at the source or at the turnout) per period and group."""
    check_range(first, last, period)
    column, id_to_code = _group_column(grouping)
    value = DailyVolume.source_m3 if measure == Measure.SOURCE else DailyVolume.volume_m3
    rows = session.execute(
        select(DailyVolume.day, column, func.sum(value))
        .where(*_in_range(first, last), DailyVolume.water_use.is_not(None))
        .group_by(DailyVolume.day, column)).all()
    codes: dict[Any, str] = {}
    if id_to_code is not None:
        codes = {row_id: code for row_id, code in session.execute(id_to_code)}
    table = AccountTable(grouping, period, measure, first, last,
                         _groups(session, grouping, language), [])
    known = {g.key for g in table.groups}
    used_buckets: dict[str, Bucket] = {}
    for day, group_id, volume in rows:
        if group_id is None or not volume:
            continue
        key = group_id.value if isinstance(group_id, WaterUse) else codes.get(group_id)
        if key is None or key not in known:
            continue
        bucket = bucket_of(day, period)
        used_buckets[bucket.key] = bucket
        table.cells[(bucket.key, key)] = table.cells.get((bucket.key, key), 0) + int(volume)
    # Months and seasons are listed in full (a dry month shows zeros); days only when wet.
    listed = (sorted(used_buckets.values(), key=lambda b: b.first) if period == Period.DAY
              else buckets(first, last, period))
    table.periods = [(b, _period_label(b, language)) for b in listed]
    return table


def _metering_structures(session: Session) -> list[Structure]:
    return list(session.scalars(select(Structure).where(
        Structure.is_turnout.is_(True) | Structure.outlet_canal_id.is_not(None))))


def _sums_by_structure(session: Session, first: date, last: date
                       ) -> dict[int, tuple[int, int]]:
    rows = session.execute(
        select(DailyVolume.structure_id, func.sum(DailyVolume.volume_m3),
               func.sum(DailyVolume.source_m3))
        .where(*_in_range(first, last)).group_by(DailyVolume.structure_id))
    return {sid: (int(volume or 0), int(source or 0)) for sid, volume, source in rows}


def canal_balances(*, session: Session, first: date, last: date) -> list[CanalBalance]:
    """Inflow, outflow and coefficient of every canal metered at both ends."""
    sums = _sums_by_structure(session, first, last)
    inflow: dict[int, int] = {}
    outflow: dict[int, int] = {}
    for s in _metering_structures(session):
        volume = sums.get(s.id, (0, 0))[0]
        if s.outlet_canal_id is not None:
            inflow[s.outlet_canal_id] = inflow.get(s.outlet_canal_id, 0) + volume
        if s.canal_id is not None and s.canal_id != s.outlet_canal_id:
            outflow[s.canal_id] = outflow.get(s.canal_id, 0) + volume
    balances = []
    order = {CanalLevel.MAIN: 0, CanalLevel.BRANCH: 1, CanalLevel.LATERAL: 2}
    for canal in sorted(session.scalars(select(Canal).where(Canal.id.in_(outflow))),
                        key=lambda c: (order[c.level], c.code)):
        if canal.id in inflow:
            balances.append(CanalBalance(canal.code, canal.name, canal.level,
                                         inflow[canal.id], outflow[canal.id]))
    return balances


def lifted_m3(*, session: Session, first: date, last: date) -> int:
    """What the pump stations lifted in the range."""
    return int(session.scalar(
        select(func.coalesce(func.sum(DailyVolume.volume_m3), 0))
        .join(Structure, Structure.id == DailyVolume.structure_id)
        .where(*_in_range(first, last), Structure.kind == StructureKind.PUMP_STATION)) or 0)


def use_summaries(*, session: Session, first: date, last: date, language: str = "zh_CN"
                  ) -> list[UseSummary]:
    """Per use: its share of the lifted water and what its turnouts received."""
    found = {use: (int(source or 0), int(volume or 0)) for use, source, volume in
             session.execute(select(DailyVolume.water_use, func.sum(DailyVolume.source_m3),
                                    func.sum(DailyVolume.volume_m3))
                             .where(*_in_range(first, last),
                                    DailyVolume.water_use.is_not(None))
                             .group_by(DailyVolume.water_use))}
    return [UseSummary(use, translate(f"irrigation.use.{use.value}", language),
                       *found.get(use, (0, 0))) for use in WaterUse]


def account_report(*, session: Session, grouping: Grouping, period: Period, measure: Measure,
                   first: date, last: date, language: str = "zh_CN") -> AccountReport:
    table = account_table(session=session, grouping=grouping, period=period, measure=measure,
                          first=first, last=last, language=language)
    return AccountReport(table, lifted_m3(session=session, first=first, last=last),
                         use_summaries(session=session, first=first, last=last,
                                       language=language),
                         canal_balances(session=session, first=first, last=last))


def report_json(report: AccountReport) -> dict[str, Any]:
    """The report as plain JSON for the API."""
    t = report.table
    return {
        "grouping": t.grouping.value, "period": t.period.value, "measure": t.measure.value,
        "start": t.first.isoformat(), "end": t.last.isoformat(), "unit": "m3",
        "groups": [{"key": g.key, "label": g.label} for g in t.groups],
        "rows": [{"period": b.key, "label": label, "first": b.first.isoformat(),
                  "last": b.last.isoformat(),
                  "values": {g.key: t.cell(b.key, g.key) for g in t.groups},
                  "total": t.row_total(b.key)} for b, label in t.periods],
        "totals": {g.key: t.column_total(g.key) for g in t.groups},
        "total": t.total,
        "lifted_m3": report.lifted_m3,
        "delivered_m3": report.delivered_m3,
        "district_coefficient": report.district_coefficient,
        "uses": [{"use": u.use.value, "label": u.label, "source_m3": u.source_m3,
                  "delivered_m3": u.delivered_m3, "coefficient": u.coefficient}
                 for u in report.uses],
        "canals": [{"code": b.code, "name": b.name, "level": b.level.value,
                    "inflow_m3": b.inflow_m3, "outflow_m3": b.outflow_m3, "loss_m3": b.loss_m3,
                    "coefficient": b.coefficient} for b in report.balances],
    }


# --- per structure ---------------------------------------------------------------------------


def last_volumes(*, session: Session, structure_ids: list[int]
                 ) -> dict[int, tuple[date, int]]:
    """Each structure's newest daily volume."""
    if not structure_ids:
        return {}
    newest = (select(DailyVolume.structure_id, func.max(DailyVolume.day).label("day"))
              .where(DailyVolume.structure_id.in_(structure_ids))
              .group_by(DailyVolume.structure_id).subquery())
    rows = session.execute(
        select(DailyVolume.structure_id, DailyVolume.day, DailyVolume.volume_m3)
        .join(newest, (DailyVolume.structure_id == newest.c.structure_id)
              & (DailyVolume.day == newest.c.day)))
    return {sid: (day, int(volume)) for sid, day, volume in rows}


def daily_volumes(*, session: Session, structure_id: int, first: date, last: date
                  ) -> list[tuple[date, int, int | None]]:
    """A structure's daily (volume, source share) in a range, oldest first."""
    rows = session.execute(
        select(DailyVolume.day, DailyVolume.volume_m3, DailyVolume.source_m3)
        .where(DailyVolume.structure_id == structure_id, *_in_range(first, last))
        .order_by(DailyVolume.day))
    return [(day, int(volume), int(source) if source is not None else None)
            for day, volume, source in rows]


def season_keys() -> list[str]:
    return [s.key for s in SEASONS]
