"""Water-account helpers: canal efficiency, rotation slots, unit conversions, Muskingum routing."""

from __future__ import annotations

import csv
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from grassroots.irrigation.water.accounting import (
    M2_PER_MU,
    DistrictSize,
    MuskingumError,
    assess_canal_coefficient,
    canal_water_use_coefficient,
    depth_mm_to_volume_m3,
    district_size,
    m2_to_mu,
    m3_per_mu_to_mm,
    mm_to_m3_per_mu,
    mu_to_m2,
    muskingum_coefficients,
    rotation_slot_hours,
    route,
)

HOUR = timedelta(hours=1)

# --- units ------------------------------------------------------------------------------------


def test_a_mu_is_666_67_square_metres_and_one_cubic_metre_per_mu_is_1_5_mm() -> None:
    assert mu_to_m2(1) == pytest.approx(666.67, abs=0.005)
    assert mu_to_m2(15) == pytest.approx(10_000)
    assert m2_to_mu(M2_PER_MU * 85_000) == pytest.approx(85_000)
    assert m3_per_mu_to_mm(1.0) == pytest.approx(1.5)
    assert mm_to_m3_per_mu(1.5) == pytest.approx(1.0)
    assert mm_to_m3_per_mu(m3_per_mu_to_mm(37.0)) == pytest.approx(37.0)


def test_the_district_lift_of_51_858_million_m3_is_about_610_m3_per_mu() -> None:
    # DOMAIN.md §1: 51.858 million m³ lifted for 85,000 mu, i.e. ~915 mm over the district.
    per_mu = 51.858e6 / 85_000
    assert per_mu == pytest.approx(610.1, abs=0.1)
    assert m3_per_mu_to_mm(per_mu) == pytest.approx(915.1, abs=0.1)
    assert depth_mm_to_volume_m3(m3_per_mu_to_mm(per_mu), 85_000) == pytest.approx(51.858e6)


# --- rotation slots ---------------------------------------------------------------------------


def test_a_thousand_mu_at_60_mm_takes_41_15_hours_at_0_3_m3s_and_efficiency_0_9() -> None:
    hours = rotation_slot_hours(area_mu=1000, net_depth_mm=60, efficiency=0.9, flow_m3s=0.3)
    assert round(hours, 2) == 41.15


def test_a_rotation_slot_scales_with_area_and_inversely_with_flow() -> None:
    base = rotation_slot_hours(area_mu=500, net_depth_mm=80, efficiency=0.8, flow_m3s=0.2)
    assert rotation_slot_hours(
        area_mu=1000, net_depth_mm=80, efficiency=0.8, flow_m3s=0.4
    ) == pytest.approx(base)


@pytest.mark.parametrize(
    ("area", "depth", "eta", "q"),
    [(1000, 60, 0.0, 0.3), (1000, 60, 1.1, 0.3), (1000, 60, 0.9, 0.0), (-1, 60, 0.9, 0.3)],
)
def test_a_rotation_slot_with_impossible_inputs_is_refused(
    area: float, depth: float, eta: float, q: float
) -> None:
    with pytest.raises(ValueError):
        rotation_slot_hours(area_mu=area, net_depth_mm=depth, efficiency=eta, flow_m3s=q)


# --- canal water-use coefficient --------------------------------------------------------------


def test_the_coefficient_is_delivered_over_diverted() -> None:
    assert canal_water_use_coefficient(delivered_m3=7_800, diverted_m3=10_000) == 0.78
    with pytest.raises(ValueError):
        canal_water_use_coefficient(delivered_m3=1, diverted_m3=0)


def test_the_coefficient_matches_the_murrumbidgee_system_efficiency_report() -> None:
    path = (
        Path(__file__).parents[2].parent
        / "shared/data/irrigation/murrumbidgee_lvbc_canal/SysEff-20200117-report.csv"
    )
    if not path.exists():
        pytest.skip(f"shared data not present: {path}")
    rows = {r[0]: r[1] for r in csv.reader(path.read_text().splitlines()) if len(r) > 1}
    eta = canal_water_use_coefficient(
        delivered_m3=float(rows["Delivered (ML):"]) * 1000,
        diverted_m3=float(rows["Diverted (ML):"]) * 1000,
    )
    assert round(eta * 100, 1) == float(rows["System Efficiency (%):"])  # 96.2 %


@pytest.mark.parametrize(
    ("size", "minimum"),
    [(DistrictSize.LARGE, 0.55), (DistrictSize.MEDIUM, 0.65), (DistrictSize.SMALL, 0.75)],
)
def test_each_district_size_has_its_gb_t_50363_minimum(size: DistrictSize, minimum: float) -> None:
    at = assess_canal_coefficient(minimum, size)
    assert at.minimum == minimum
    assert at.meets_minimum
    assert not assess_canal_coefficient(minimum - 0.001, size).meets_minimum


def test_a_lift_district_at_0_68_meets_the_medium_minimum_but_not_the_small_one() -> None:
    assert assess_canal_coefficient(0.68, DistrictSize.MEDIUM).meets_minimum
    assert not assess_canal_coefficient(0.68, DistrictSize.SMALL).meets_minimum


def test_a_coefficient_above_one_is_a_metering_fault_not_a_grade() -> None:
    with pytest.raises(ValueError):
        assess_canal_coefficient(1.04, DistrictSize.LARGE)


def test_the_alxa_district_of_85_000_mu_is_a_medium_district() -> None:
    assert district_size(85_000) is DistrictSize.MEDIUM
    assert district_size(300_000) is DistrictSize.LARGE
    assert district_size(9_999) is DistrictSize.SMALL


# --- Muskingum --------------------------------------------------------------------------------


def test_muskingum_coefficients_match_the_textbook_example() -> None:
    # Chow, Maidment & Mays (1988) Applied Hydrology, Example 8.4.1: K 2.3 h, X 0.15, Δt 1 h.
    c = muskingum_coefficients(k=timedelta(hours=2.3), x=0.15, dt=HOUR)
    assert (round(c.c0, 4), round(c.c1, 4), round(c.c2, 4)) == (0.0631, 0.3442, 0.5927)


@pytest.mark.parametrize(
    ("k_h", "x", "dt_h"), [(2.3, 0.15, 1.0), (2.0, 0.2, 1.0), (5.0, 0.0, 3.0), (1.0, 0.5, 1.0)]
)
def test_muskingum_coefficients_sum_to_one(k_h: float, x: float, dt_h: float) -> None:
    c = muskingum_coefficients(k=timedelta(hours=k_h), x=x, dt=timedelta(hours=dt_h))
    assert c.c0 + c.c1 + c.c2 == pytest.approx(1.0, abs=1e-12)
    assert min(c.c0, c.c1, c.c2) >= -1e-12


def test_muskingum_holds_at_both_ends_of_its_validity_range() -> None:
    k, x = timedelta(hours=2), 0.25
    assert muskingum_coefficients(k=k, x=x, dt=timedelta(hours=1)).c0 == pytest.approx(0.0)
    assert muskingum_coefficients(k=k, x=x, dt=timedelta(hours=3)).c2 == pytest.approx(0.0)


def test_a_step_shorter_than_2kx_is_refused_with_the_rule_in_the_message() -> None:
    with pytest.raises(MuskingumError, match="2KX ≤ Δt ≤ 2K"):
        muskingum_coefficients(k=timedelta(hours=2), x=0.3, dt=timedelta(hours=1))


def test_a_step_longer_than_2k_one_minus_x_is_refused() -> None:
    with pytest.raises(MuskingumError, match="outside"):
        muskingum_coefficients(k=timedelta(hours=1), x=0.2, dt=timedelta(hours=2))


def test_nonsense_muskingum_parameters_are_refused() -> None:
    with pytest.raises(MuskingumError):
        muskingum_coefficients(k=timedelta(0), x=0.2, dt=HOUR)
    with pytest.raises(MuskingumError):
        muskingum_coefficients(k=HOUR, x=0.6, dt=HOUR)
    assert issubclass(MuskingumError, ValueError)


def _triangle(base: float, peak: float, rise: int, fall: int, tail: int) -> np.ndarray:
    up = np.linspace(base, peak, rise + 1)
    down = np.linspace(peak, base, fall + 1)[1:]
    return np.concatenate([up, down, np.full(tail, base)])


def test_routing_a_triangular_hydrograph_conserves_volume_and_attenuates_the_peak() -> None:
    inflow = _triangle(base=2.0, peak=20.0, rise=6, fall=12, tail=80)
    outflow = route(inflow, k=timedelta(hours=3), x=0.1, dt=HOUR)
    assert outflow.shape == inflow.shape
    # Volume above the base flow goes in and, once the wave has passed, all of it comes out.
    excess_in = np.sum(inflow - 2.0)
    excess_out = np.sum(outflow - 2.0)
    assert excess_out == pytest.approx(excess_in, rel=1e-6)
    assert outflow.max() < inflow.max()
    assert int(np.argmax(outflow)) > int(np.argmax(inflow))
    assert outflow[-1] == pytest.approx(2.0, rel=1e-6)


def test_routing_a_steady_flow_returns_it_unchanged() -> None:
    outflow = route([5.0] * 20, k=timedelta(hours=2.3), x=0.15, dt=HOUR)
    assert np.allclose(outflow, 5.0)


def test_routing_reproduces_one_step_by_hand() -> None:
    c = muskingum_coefficients(k=timedelta(hours=2.3), x=0.15, dt=HOUR)
    outflow = route([10.0, 30.0, 50.0], k=timedelta(hours=2.3), x=0.15, dt=HOUR)
    o1 = c.c0 * 30 + c.c1 * 10 + c.c2 * 10
    assert outflow[1] == pytest.approx(o1)
    assert outflow[2] == pytest.approx(c.c0 * 50 + c.c1 * 30 + c.c2 * o1)


def test_routing_can_start_from_a_given_outflow_and_refuses_holes() -> None:
    outflow = route([10.0, 10.0], k=timedelta(hours=2.3), x=0.15, dt=HOUR, initial_outflow=4.0)
    assert outflow[0] == 4.0
    with pytest.raises(ValueError, match="missing"):
        route([10.0, float("nan")], k=timedelta(hours=2.3), x=0.15, dt=HOUR)
    assert route([], k=timedelta(hours=2.3), x=0.15, dt=HOUR).size == 0
