"""The demo year's ingredients: climate, crop coefficients, rounds, losses, exact rounding."""

from __future__ import annotations

import re
from collections import Counter
from datetime import date, timedelta

import numpy as np
import pytest

from grassroots.irrigation.accounting.states import SEASONS, Period, bucket_of, buckets, season_of
from grassroots.irrigation.demo import TOTAL_AREA_MU, build_demo_network, flume_size_m
from grassroots.irrigation.network.models import Crop, StructureKind
from grassroots.irrigation.simulate_year import (
    LIFTED_TOTAL_M3,
    MAX_APPLICATION_MM,
    ROUNDS,
    USE_TOTALS_M3,
    demo_climate,
    kc_on,
    largest_remainder,
    round_depths,
    seepage_per_km,
)
from grassroots.irrigation.water.hydraulics import ParshallFlume


def test_the_seed_split_by_use_adds_up_to_the_lifted_total() -> None:
    assert sum(USE_TOTALS_M3.values()) == LIFTED_TOTAL_M3 == 51_858_000


def test_the_demo_climate_is_arid_with_a_june_july_peak() -> None:
    climate = demo_climate(2025)
    assert 1100 <= climate.et0_mm.sum() <= 1250
    assert 40 <= climate.rain_mm.sum() <= 200
    june_july = [e for d, e in zip(climate.days, climate.et0_mm, strict=True)
                 if d.month in (6, 7)]
    assert 6.0 <= max(june_july) <= 8.5
    assert 5.5 <= float(np.mean(june_july)) <= 7.5
    january = [e for d, e in zip(climate.days, climate.et0_mm, strict=True) if d.month == 1]
    assert max(january) < 1.5


def test_the_demo_climate_is_the_same_every_time() -> None:
    first, second = demo_climate(2025), demo_climate(2025)
    assert np.array_equal(first.et0_mm, second.et0_mm)
    assert np.array_equal(first.rain_mm, second.rain_mm)


@pytest.mark.parametrize(("crop", "day", "kc"), [
    (Crop.MAIZE, date(2025, 5, 1), 0.30),  # initial stage
    (Crop.MAIZE, date(2025, 7, 20), 1.20),  # mid-season
    (Crop.MAIZE, date(2025, 12, 1), 0.0),  # out of season
    (Crop.SPRING_WHEAT, date(2025, 6, 1), 1.15),
    (Crop.SUNFLOWER, date(2025, 5, 26), 0.35),
    (Crop.SUNFLOWER, date(2025, 8, 1), 1.10),
    (Crop.ALFALFA, date(2025, 4, 6), 0.40),
    (Crop.ALFALFA, date(2025, 5, 20), 0.95),
])
def test_crop_coefficients_follow_fao56_table_12(crop: Crop, day: date, kc: float) -> None:
    assert kc_on(crop, day) == pytest.approx(kc)


def test_the_maize_curve_ends_at_its_late_season_value() -> None:
    # Sown 28 April; 30 + 40 + 50 + 30 days: the last day is 24 September.
    assert kc_on(Crop.MAIZE, date(2025, 9, 24)) == pytest.approx(0.35, abs=0.03)
    assert kc_on(Crop.MAIZE, date(2025, 9, 25)) == 0.0


def test_round_depths_stay_within_what_surface_irrigation_applies() -> None:
    depths = round_depths(demo_climate(2025))
    assert len(depths) == len(ROUNDS)
    for rnd, by_crop in zip(ROUNDS, depths, strict=True):
        for crop, depth in by_crop.items():
            assert depth >= 0
            assert depth <= MAX_APPLICATION_MM + rnd.fixed_mm.get(crop, 0.0)
    # The autumn-winter leaching irrigation reaches every field.
    assert all(d > 0 for d in depths[-1].values())


def test_largest_remainder_hits_the_total_exactly_and_keeps_proportions() -> None:
    values = np.array([[0.3, 1.7, 2.25], [0.0, 5.5, 1.25]])
    result = largest_remainder(1_000_003, values)
    assert int(result.sum()) == 1_000_003
    assert result.dtype == np.int64
    expected = values / values.sum() * 1_000_003
    assert np.all(np.abs(result - expected) < 1.0)
    assert result[1, 0] == 0


def test_a_lined_canal_loses_less_than_an_earth_one() -> None:
    assert seepage_per_km(1.2, "混凝土U形槽") < seepage_per_km(1.2, "浆砌石") \
        < seepage_per_km(1.2, "土渠")
    # Kostyakov: a bigger canal loses a smaller share per km.
    assert seepage_per_km(6.0, "土渠") < seepage_per_km(1.0, "土渠")


def test_the_seasons_tile_the_calendar_year() -> None:
    day, seen = date(2025, 1, 1), Counter[str]()
    while day.year == 2025:
        seen[season_of(day).key] += 1
        day += timedelta(days=1)
    assert sum(seen.values()) == 365
    assert list(seen) == [s.key for s in SEASONS]


def test_buckets_cover_a_range_once_each() -> None:
    months = buckets(date(2025, 3, 15), date(2025, 6, 2), Period.MONTH)
    assert [b.key for b in months] == ["2025-03", "2025-04", "2025-05", "2025-06"]
    seasons = buckets(date(2025, 1, 1), date(2025, 12, 31), Period.SEASON)
    assert [b.key for b in seasons] == ["2025-spring", "2025-summer", "2025-autumn",
                                       "2025-autumn_winter"]
    assert bucket_of(date(2025, 12, 31), Period.MONTH).last == date(2025, 12, 31)
    assert bucket_of(date(2025, 5, 21), Period.SEASON).key == "2025-summer"


def test_the_demo_network_has_the_published_counts() -> None:
    net = build_demo_network()
    kinds = Counter(s.kind for s in net.structures)
    assert kinds[StructureKind.PUMP_STATION] == 1
    assert kinds[StructureKind.INTEGRATED_GATE] == 39
    assert kinds[StructureKind.SMART_HOIST] == 13
    assert kinds[StructureKind.PARSHALL_FLUME] == 27
    assert kinds[StructureKind.SOIL_MOISTURE] == 2
    assert kinds[StructureKind.WEATHER] == 2
    assert sum(f.area_mu for f in net.fields) == TOTAL_AREA_MU == 85_000
    assert {f.crop for f in net.fields} == set(Crop)


def test_the_demo_network_is_deterministic() -> None:
    assert build_demo_network() == build_demo_network()


def test_every_demo_device_has_an_address_of_the_right_form() -> None:
    net = build_demo_network()
    sl651 = [s.sl651_address for s in net.structures if s.sl651_address]
    assert len(sl651) == len(set(sl651))
    assert all(re.fullmatch(r"[0-9A-F]{10}", a) for a in sl651)
    for s in net.structures:
        if s.kind in (StructureKind.INTEGRATED_GATE, StructureKind.PARSHALL_FLUME,
                      StructureKind.LEVEL_GAUGE):
            assert s.sl651_address, s.code
        else:
            assert s.mqtt_device_id, s.code
    modbus = [s for s in net.structures if s.modbus_host]
    assert 3 <= len(modbus) <= 10
    assert all(s.modbus_host == "127.0.0.1" and s.modbus_port for s in modbus)


def test_each_flume_is_sized_to_carry_its_design_flow() -> None:
    for s in build_demo_network().structures:
        if s.kind == StructureKind.PARSHALL_FLUME:
            flume = ParshallFlume(s.config["throat_width_m"])
            capacity = flume.free_flow_m3s(flume.rated_max_head_m)
            assert capacity >= s.config["design_flow_m3s"], s.code
    assert flume_size_m(0.3) < flume_size_m(1.2) < flume_size_m(6.5)
