"""The water account: groupings and periods add up to the year, whichever way it is cut."""

from __future__ import annotations

from datetime import date

import pytest
from sqlalchemy.orm import Session

from grassroots.irrigation.accounting.queries import (
    AccountTable,
    account_report,
    account_table,
)
from grassroots.irrigation.accounting.states import Grouping, Measure, Period
from grassroots.irrigation.demo import seed_irrigation_demo
from grassroots.irrigation.simulate_year import DEMO_YEAR, USE_TOTALS_M3
from grassroots.kernel.errors import ValidationFailed
from grassroots.runtime import Runtime

FIRST, LAST = date(DEMO_YEAR, 1, 1), date(DEMO_YEAR, 12, 31)


@pytest.fixture
def seeded(runtime: Runtime) -> Runtime:
    seed_irrigation_demo(runtime)
    return runtime


def _table(session: Session, grouping: Grouping, period: Period,
           measure: Measure = Measure.SOURCE, first: date = FIRST,
           last: date = LAST) -> AccountTable:
    return account_table(session=session, grouping=grouping, period=period, measure=measure,
                         first=first, last=last)


def test_months_and_seasons_and_days_add_up_to_the_year(session: Session,
                                                        seeded: Runtime) -> None:
    for measure in Measure:
        year_total = _table(session, Grouping.USE, Period.MONTH, measure).total
        for period in Period:
            table = _table(session, Grouping.USE, period, measure)
            assert sum(table.row_total(b.key) for b, _ in table.periods) == year_total
            assert table.total == year_total
    months = _table(session, Grouping.USE, Period.MONTH)
    assert len(months.periods) == 12
    assert months.periods[3][1] == "2025年4月"
    assert months.row_total("2025-01") == 0 and months.row_total("2025-12") == 0
    seasons = _table(session, Grouping.USE, Period.SEASON)
    assert [label for _, label in seasons.periods] == [
        "2025年春灌", "2025年夏灌", "2025年秋灌", "2025年秋浇（冬灌）"]
    assert all(seasons.row_total(b.key) > 0 for b, _ in seasons.periods)


def test_the_year_by_use_at_the_source_is_the_seed(session: Session, seeded: Runtime) -> None:
    table = _table(session, Grouping.USE, Period.SEASON)
    assert {g.key: table.column_total(g.key) for g in table.groups} == {
        use.value: total for use, total in USE_TOTALS_M3.items()}
    assert table.total == 51_858_000


@pytest.mark.parametrize("grouping", [Grouping.CANAL, Grouping.WUA, Grouping.TURNOUT])
def test_every_grouping_accounts_for_the_same_water(session: Session, seeded: Runtime,
                                                    grouping: Grouping) -> None:
    for measure in Measure:
        by_use = _table(session, Grouping.USE, Period.MONTH, measure)
        other = _table(session, grouping, Period.MONTH, measure)
        if grouping == Grouping.WUA:  # associations take only the agricultural water
            assert other.total == by_use.column_total("agriculture")
        else:
            assert other.total == by_use.total
        for bucket, _ in other.periods:
            assert other.row_total(bucket.key) == sum(other.cell(bucket.key, g.key)
                                                      for g in other.groups)


def test_a_part_year_counts_only_its_days(session: Session, seeded: Runtime) -> None:
    july = _table(session, Grouping.USE, Period.DAY, first=date(DEMO_YEAR, 7, 1),
                  last=date(DEMO_YEAR, 7, 31))
    months = _table(session, Grouping.USE, Period.MONTH)
    assert july.total == months.row_total(f"{DEMO_YEAR}-07")
    assert len(july.periods) == 31  # the pumps ran every day of July
    spring_half = _table(session, Grouping.USE, Period.SEASON, first=date(DEMO_YEAR, 5, 1),
                         last=date(DEMO_YEAR, 6, 30))
    assert [b.key for b, _ in spring_half.periods] == ["2025-spring", "2025-summer"]
    assert spring_half.total == months.row_total("2025-05") + months.row_total("2025-06")


def test_a_backwards_or_overlong_daily_range_is_refused(session: Session,
                                                        seeded: Runtime) -> None:
    with pytest.raises(ValidationFailed):
        _table(session, Grouping.USE, Period.MONTH, first=LAST, last=FIRST)
    with pytest.raises(ValidationFailed):
        _table(session, Grouping.USE, Period.DAY, first=date(2024, 1, 1), last=LAST)


def test_the_report_ties_deliveries_to_canal_balances(session: Session,
                                                      seeded: Runtime) -> None:
    report = account_report(session=session, grouping=Grouping.USE, period=Period.MONTH,
                            measure=Measure.DELIVERED, first=FIRST, last=LAST,
                            language="en")
    assert report.lifted_m3 == 51_858_000
    assert report.delivered_m3 == report.table.total
    main = next(b for b in report.balances if b.code == "MC")
    assert main.inflow_m3 == 51_858_000
    branches = [b for b in report.balances if b.code != "MC"]
    offtakes = report.delivered_m3 - sum(b.outflow_m3 for b in branches)
    assert main.outflow_m3 == sum(b.inflow_m3 for b in branches) + offtakes
    assert report.uses[0].label == "Agriculture"
    assert report.table.periods[0][1] == "2025-01"
