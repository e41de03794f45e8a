"""The simulated demo year reproduces the seed's totals to the cubic metre, plausibly shaped."""

from __future__ import annotations

from collections import defaultdict
from datetime import date

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from grassroots.irrigation.accounting.models import DailyVolume, VolumeSource
from grassroots.irrigation.accounting.queries import canal_balances, lifted_m3, use_summaries
from grassroots.irrigation.demo import PUMP_STATION, seed_irrigation_demo
from grassroots.irrigation.network import queries
from grassroots.irrigation.network.models import WaterUse
from grassroots.irrigation.simulate_year import DEMO_YEAR, simulate_year
from grassroots.runtime import Runtime

YEAR = (date(DEMO_YEAR, 1, 1), date(DEMO_YEAR, 12, 31))


@pytest.fixture
def seeded(runtime: Runtime) -> Runtime:
    seed_irrigation_demo(runtime)
    return runtime


def test_the_year_lifts_exactly_51_858_million_m3(session: Session, seeded: Runtime) -> None:
    assert lifted_m3(session=session, first=YEAR[0], last=YEAR[1]) == 51_858_000


def test_the_lifted_water_splits_by_use_exactly_as_the_seed_says(session: Session,
                                                                 seeded: Runtime) -> None:
    by_use = {u.use: u.source_m3 for u in use_summaries(session=session, first=YEAR[0],
                                                        last=YEAR[1])}
    assert by_use == {WaterUse.AGRICULTURE: 39_135_000, WaterUse.INDUSTRY: 8_778_000,
                      WaterUse.ECOLOGY: 3_945_000}
    assert round(by_use[WaterUse.AGRICULTURE] / 1e6, 3) == 39.135
    assert round(by_use[WaterUse.INDUSTRY] / 1e6, 3) == 8.778
    assert round(by_use[WaterUse.ECOLOGY] / 1e6, 3) == 3.945


def test_each_days_shares_add_up_to_that_days_pumping(session: Session,
                                                      seeded: Runtime) -> None:
    pump = queries.structure_by_code(session=session, code=PUMP_STATION)
    lifted = {day: volume for day, volume in session.execute(
        select(DailyVolume.day, DailyVolume.volume_m3)
        .where(DailyVolume.structure_id == pump.id))}
    shares = {day: int(total) for day, total in session.execute(
        select(DailyVolume.day, func.sum(DailyVolume.source_m3))
        .where(DailyVolume.water_use.is_not(None)).group_by(DailyVolume.day))}
    assert shares == lifted


def test_deliveries_are_smaller_than_shares_by_plausible_canal_losses(
        session: Session, seeded: Runtime) -> None:
    uses = use_summaries(session=session, first=YEAR[0], last=YEAR[1])
    delivered = sum(u.delivered_m3 for u in uses)
    district = delivered / 51_858_000
    assert 0.68 <= district <= 0.88
    for use in uses:
        assert use.coefficient is not None and 0.68 <= use.coefficient < 1.0, use.use


def test_every_canal_has_a_plausible_water_use_coefficient(session: Session,
                                                           seeded: Runtime) -> None:
    balances = canal_balances(session=session, first=YEAR[0], last=YEAR[1])
    assert {b.code for b in balances} == {"MC", "B1", "B2", "B3", "B4", "B5", "B6"}
    for b in balances:
        assert b.coefficient is not None and 0.75 <= b.coefficient <= 0.95, b.code
        assert b.loss_m3 > 0


def test_the_pumps_run_from_april_to_november_and_peak_in_summer(session: Session,
                                                                 seeded: Runtime) -> None:
    pump = queries.structure_by_code(session=session, code=PUMP_STATION)
    by_month: dict[int, int] = defaultdict(int)
    peak = 0
    for day, volume in session.execute(select(DailyVolume.day, DailyVolume.volume_m3)
                                       .where(DailyVolume.structure_id == pump.id)):
        by_month[day.month] += volume
        peak = max(peak, volume)
    assert set(by_month) == set(range(4, 12))
    assert max(by_month, key=lambda m: by_month[m]) in (6, 7, 8)
    units = queries.pump_units(session=session, station_id=pump.id)
    assert peak / 86_400 <= sum(u.rated_flow_m3s for u in units)


def test_industry_draws_steadily_and_ecology_in_spring_and_autumn(session: Session,
                                                                  seeded: Runtime) -> None:
    days: dict[WaterUse, set[int]] = defaultdict(set)
    for use, day in session.execute(select(DailyVolume.water_use, DailyVolume.day)
                                    .where(DailyVolume.water_use.is_not(None))):
        days[use].add(day.month)
    assert days[WaterUse.INDUSTRY] == set(range(4, 12))
    assert {4, 5, 10, 11} <= days[WaterUse.ECOLOGY]


def test_the_simulation_is_written_once_and_rewritten_identically(session: Session,
                                                                  seeded: Runtime) -> None:
    def snapshot() -> list[tuple[object, ...]]:
        return [tuple(r) for r in session.execute(
            select(DailyVolume.day, DailyVolume.structure_id, DailyVolume.volume_m3,
                   DailyVolume.source_m3).order_by(DailyVolume.day, DailyVolume.structure_id))]

    before = snapshot()
    again = simulate_year(seeded, year=DEMO_YEAR)
    assert not again.written and again.rows == len(before)
    rewritten = simulate_year(seeded, year=DEMO_YEAR, replace=True)
    assert rewritten.written and rewritten.lifted_m3 == 51_858_000
    session.expire_all()
    assert snapshot() == before
    assert session.scalar(select(func.count(DailyVolume.id)).where(
        DailyVolume.source != VolumeSource.SIMULATED)) == 0
