"""Parshall flume and gate discharge, unit conversions, pump volume."""

from __future__ import annotations

import math

import pytest

from grassroots.irrigation.water.hydraulics import (
    CFS_M3S,
    IN_M,
    FlumeForm,
    G,
    GateRating,
    GateRegime,
    GateSample,
    ParshallFlume,
    calibrate_coefficient,
    cfs_to_m3s,
    ft_to_m,
    m3s_to_cfs,
    m_to_ft,
    pump_volume,
    sequent_depth_m,
)
from grassroots.irrigation.water.quality import QualityFlag


def _cfs(flume: ParshallFlume, ha_ft: float, hb_ft: float | None = None) -> float:
    hb = None if hb_ft is None else ft_to_m(hb_ft)
    result = flume.discharge(ft_to_m(ha_ft), hb)
    assert result.q_m3s is not None
    return m3s_to_cfs(result.q_m3s)


# --- conversions ------------------------------------------------------------------------------


def test_feet_and_cubic_feet_per_second_convert_exactly_and_round_trip() -> None:
    assert ft_to_m(1.0) == 0.3048
    assert cfs_to_m3s(1.0) == pytest.approx(0.028316846592, rel=1e-12)
    assert pytest.approx(0.3048**3) == CFS_M3S
    assert m_to_ft(ft_to_m(2.5)) == pytest.approx(2.5)
    assert m3s_to_cfs(cfs_to_m3s(16.1)) == pytest.approx(16.1)


# --- Parshall flume: equations ------------------------------------------------------------------


def test_a_one_foot_flume_at_one_foot_of_head_passes_four_cubic_feet_per_second() -> None:
    flume = ParshallFlume.us_feet(1)
    assert flume.equation is FlumeForm.US_1_TO_8_FT
    result = flume.discharge(ft_to_m(1.0))
    assert result.quality is QualityFlag.OK
    assert result.q_m3s == pytest.approx(cfs_to_m3s(4.00), rel=1e-12)


# Free-flow values in ft³/s as printed in the free-flow discharge tables for standard flumes
# (USBR Water Measurement Manual, 3rd ed., 2001, ch. 8 and appendix; ISO 9826:1992). The tables
# are generated from the same C·Ha^n equations and printed to two or three significant figures,
# so each value is checked to within half a unit of its last printed digit. The entries are
# quoted from memory of those tables, not copied from a copy at hand.
TABLE_VALUES = [
    # (size, unit, Ha ft, tabulated Q ft³/s, half a unit of the last digit)
    (1, "in", 0.20, 0.028, 0.0005),
    (2, "in", 0.50, 0.231, 0.0005),
    (3, "in", 0.50, 0.34, 0.005),
    (3, "in", 1.00, 0.992, 0.0005),
    (6, "in", 0.50, 0.69, 0.005),
    (6, "in", 1.00, 2.06, 0.005),
    (9, "in", 0.50, 1.06, 0.005),
    (9, "in", 1.00, 3.07, 0.005),
    (2, "ft", 1.00, 8.00, 0.005),
    (3, "ft", 2.00, 35.5, 0.05),
    (10, "ft", 1.00, 39.4, 0.05),
    (10, "ft", 2.00, 119.4, 0.05),
]


@pytest.mark.parametrize(("size", "unit", "ha_ft", "table_cfs", "half_digit"), TABLE_VALUES)
def test_standard_flumes_reproduce_the_published_free_flow_tables(
    size: int, unit: str, ha_ft: float, table_cfs: float, half_digit: float
) -> None:
    flume = ParshallFlume.us_inches(size) if unit == "in" else ParshallFlume.us_feet(size)
    assert _cfs(flume, ha_ft) == pytest.approx(table_cfs, abs=half_digit)


def test_the_small_flume_table_uses_each_sizes_own_coefficient_and_exponent() -> None:
    for inches, c, n in [(1, 0.338, 1.55), (2, 0.676, 1.55), (3, 0.992, 1.547), (6, 2.06, 1.58)]:
        flume = ParshallFlume.us_inches(inches)
        assert flume.equation is FlumeForm.US_SMALL
        assert _cfs(flume, 0.4) == pytest.approx(c * 0.4**n, rel=1e-12)


def test_large_flumes_use_the_ten_to_fifty_foot_equation() -> None:
    flume = ParshallFlume.us_feet(20)
    assert flume.equation is FlumeForm.US_10_TO_50_FT
    assert _cfs(flume, 3.0) == pytest.approx((3.6875 * 20 + 2.5) * 3.0**1.6, rel=1e-12)


def test_the_metric_formula_is_the_one_given_for_chinese_flumes() -> None:
    flume = ParshallFlume(0.6)
    assert flume.equation is FlumeForm.METRIC_CN
    expected = 0.372 * 0.6 * (0.4 / 0.305) ** (1.569 * 0.6**0.026)
    assert flume.discharge(0.4).q_m3s == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("ha_m", [0.03, 0.1, 0.2, 0.3, 0.5, 0.76])
def test_the_metric_and_us_formulas_agree_within_0_2_percent_for_a_one_foot_throat(
    ha_m: float,
) -> None:
    # The metric form is the 1–8 ft equation converted to SI and rounded (0.372, 0.305, 1.569),
    # so across the rated heads the two differ by about 0.14 % at most.
    us = ParshallFlume(0.3048, form=FlumeForm.US_1_TO_8_FT).discharge(ha_m).q_m3s
    metric = ParshallFlume(0.3048, form=FlumeForm.METRIC_CN).discharge(ha_m).q_m3s
    assert us is not None
    assert metric is not None
    assert metric == pytest.approx(us, rel=2e-3)


def test_the_equation_is_chosen_from_the_throat_width() -> None:
    assert ParshallFlume(3 * IN_M).equation is FlumeForm.US_SMALL
    assert ParshallFlume(0.305).equation is FlumeForm.US_1_TO_8_FT  # 1 ft within 0.5 %
    assert ParshallFlume(0.3).equation is FlumeForm.METRIC_CN  # Chinese 0.3 m size
    assert ParshallFlume(1.5).equation is FlumeForm.METRIC_CN
    assert ParshallFlume(ft_to_m(12)).equation is FlumeForm.US_10_TO_50_FT


@pytest.mark.parametrize("width_m", [0.1, 3.0, 20.0])
def test_a_throat_width_no_equation_covers_is_refused(width_m: float) -> None:
    with pytest.raises(ValueError, match="no Parshall equation"):
        ParshallFlume(width_m)


def test_forcing_an_equation_outside_its_range_is_refused() -> None:
    with pytest.raises(ValueError):
        ParshallFlume(0.2, form=FlumeForm.US_SMALL)
    with pytest.raises(ValueError):
        ParshallFlume(3.0, form=FlumeForm.METRIC_CN)


# --- Parshall flume: checks -------------------------------------------------------------------


def test_a_dry_crest_reads_zero_flow_not_a_fault() -> None:
    flume = ParshallFlume.us_feet(1)
    assert flume.discharge(0.0) == flume.discharge(-0.01)
    result = flume.discharge(0.0, 0.0)
    assert result.q_m3s == 0.0
    assert result.quality is QualityFlag.OK


def test_a_head_that_is_not_a_number_is_invalid_and_gives_no_value() -> None:
    flume = ParshallFlume.us_feet(1)
    for ha, hb in [(math.nan, None), (0.3, math.nan), (math.inf, None)]:
        result = flume.discharge(ha, hb)
        assert result.q_m3s is None
        assert result.quality is QualityFlag.INVALID


@pytest.mark.parametrize(
    ("flume", "limit"),
    [
        (ParshallFlume.us_inches(1), 0.5),
        (ParshallFlume.us_inches(3), 0.5),
        (ParshallFlume.us_inches(6), 0.6),
        (ParshallFlume.us_inches(9), 0.6),
        (ParshallFlume.us_feet(1), 0.7),
        (ParshallFlume.us_feet(8), 0.7),
        (ParshallFlume(0.9), 0.7),
        (ParshallFlume.us_feet(10), 0.8),
        (ParshallFlume.us_feet(50), 0.8),
    ],
)
def test_submergence_is_flagged_just_above_each_sizes_free_flow_limit(
    flume: ParshallFlume, limit: float
) -> None:
    ha = 0.125  # a power of two keeps Hb/Ha exact at the boundary
    assert flume.free_flow_limit == limit
    at_limit = flume.discharge(ha, limit * ha)
    assert at_limit.quality is QualityFlag.OK
    assert at_limit.submergence == pytest.approx(limit)
    above = flume.discharge(ha, (limit + 1e-4) * ha)
    assert above.quality is QualityFlag.SUBMERGED
    # No correction: the submerged reading carries the free-flow value, clearly flagged.
    assert above.q_m3s == at_limit.q_m3s == flume.free_flow_m3s(ha)


def test_beyond_ninety_percent_submergence_the_reading_is_invalid() -> None:
    flume = ParshallFlume.us_feet(1)
    at_ninety = flume.discharge(0.5, 0.45)
    assert at_ninety.quality is QualityFlag.SUBMERGED
    assert at_ninety.q_m3s is not None
    above = flume.discharge(0.5, 0.4501)
    assert above.quality is QualityFlag.INVALID
    assert above.q_m3s is None
    assert above.submergence == pytest.approx(0.9002)


def test_a_head_above_the_rated_maximum_is_flagged_out_of_range_but_still_computed() -> None:
    flume = ParshallFlume.us_feet(1)
    assert flume.rated_max_head_m == 0.76
    result = flume.discharge(0.80)
    assert result.quality is QualityFlag.OUT_OF_RANGE
    assert result.q_m3s == pytest.approx(flume.free_flow_m3s(0.80))
    both = flume.discharge(0.80, 0.60)
    assert both.quality == QualityFlag.OUT_OF_RANGE | QualityFlag.SUBMERGED


def test_a_site_rating_can_override_the_standard_maximum_head() -> None:
    flume = ParshallFlume(0.6, max_head_m=0.5)
    assert flume.discharge(0.55).quality is QualityFlag.OUT_OF_RANGE
    assert flume.discharge(0.45).quality is QualityFlag.OK


# --- gates ------------------------------------------------------------------------------------

GATE = GateRating(width_m=2.0, discharge_coefficient=0.6)


def test_a_free_gate_follows_cd_b_e_root_two_g_h1() -> None:
    result = GATE.flow(0.3, 1.5)
    assert result.regime is GateRegime.FREE
    assert result.quality is QualityFlag.OK
    assert result.q_m3s == pytest.approx(0.6 * 2.0 * 0.3 * math.sqrt(2 * G * 1.5))


def test_a_fully_closed_gate_passes_nothing_and_that_is_fine() -> None:
    result = GATE.flow(0.0, 1.5, 1.2)
    assert result.q_m3s == 0.0
    assert result.quality is QualityFlag.OK
    assert result.regime is GateRegime.CLOSED


@pytest.mark.parametrize(
    ("opening", "h1", "h2"),
    [
        (1.6, 1.5, None),  # opening above the upstream level: weir flow, not gate flow
        (0.3, 0.0, None),  # a level sensor reading zero under an open gate
        (-0.1, 1.5, None),
        (0.3, -1.5, None),
        (0.3, 1.5, -0.2),
        (0.3, 1.5, 1.6),  # reverse head
        (math.nan, 1.5, 1.0),
    ],
)
def test_impossible_gate_inputs_are_flagged_invalid_never_read_as_zero(
    opening: float, h1: float, h2: float | None
) -> None:
    result = GATE.flow(opening, h1, h2)
    assert result.q_m3s is None
    assert result.quality is QualityFlag.INVALID
    assert result.regime is None


def test_belanger_gives_the_sequent_depth_of_the_contracted_jet() -> None:
    y1, b = 0.2, 1.5
    critical_q = b * y1 * math.sqrt(G * y1)  # Fr = 1: the jump vanishes, y2 = y1
    assert sequent_depth_m(y1, critical_q, b) == pytest.approx(y1)
    fr_sqrt3_q = b * y1 * math.sqrt(3 * G * y1)  # Fr² = 3: y2 = y1/2·(√25 − 1) = 2·y1
    assert sequent_depth_m(y1, fr_sqrt3_q, b) == pytest.approx(2 * y1)


def test_the_gate_runs_submerged_once_tailwater_drowns_the_jump() -> None:
    e, h1 = 0.3, 1.5
    q_free = 0.6 * 2.0 * e * math.sqrt(2 * G * h1)
    transition = sequent_depth_m(0.61 * e, q_free, 2.0)
    assert 0.9 < transition < 1.0  # ≈ 0.943 m for this gate

    below = GATE.flow(e, h1, transition - 0.001)
    assert below.regime is GateRegime.FREE
    assert below.q_m3s == pytest.approx(q_free)

    above = GATE.flow(e, h1, transition + 0.001)
    assert above.regime is GateRegime.SUBMERGED
    drowned_head = h1 - (transition + 0.001)
    assert above.q_m3s == pytest.approx(0.6 * 2.0 * e * math.sqrt(2 * G * drowned_head))

    level = GATE.flow(e, h1, h1)
    assert level.regime is GateRegime.SUBMERGED
    assert level.q_m3s == 0.0


def test_calibration_recovers_the_coefficient_that_produced_the_measurements() -> None:
    truth = GateRating(width_m=1.2, discharge_coefficient=0.62)
    cases = [(0.2, 1.0, None), (0.4, 1.4, 0.3), (0.3, 1.2, 0.9), (0.5, 1.6, 1.3), (0.1, 0.8, 0.7)]
    samples = []
    for e, h1, h2 in cases:
        q = truth.flow(e, h1, h2).q_m3s
        assert q is not None
        samples.append((e, h1, h2, q))
    fit = calibrate_coefficient(samples, width_m=1.2)
    assert fit.discharge_coefficient == pytest.approx(0.62, rel=1e-9)
    assert fit.rmse_m3s == pytest.approx(0.0, abs=1e-12)
    assert GateRegime.FREE in fit.regimes
    assert GateRegime.SUBMERGED in fit.regimes


def test_calibration_reports_the_residual_of_a_noisy_fit() -> None:
    samples = [
        GateSample(0.2, 1.0, None, 0.60 * 1.0 * 0.2 * math.sqrt(2 * G * 1.0) * 1.03),
        GateSample(0.3, 1.0, None, 0.60 * 1.0 * 0.3 * math.sqrt(2 * G * 1.0) * 0.97),
        GateSample(0.4, 1.5, None, 0.60 * 1.0 * 0.4 * math.sqrt(2 * G * 1.5)),
    ]
    fit = calibrate_coefficient(samples, width_m=1.0)
    assert 0.58 < fit.discharge_coefficient < 0.62
    assert fit.rmse_m3s > 0
    expected_rmse = math.sqrt(sum(r * r for r in fit.residuals_m3s) / 3)
    assert fit.rmse_m3s == pytest.approx(expected_rmse)
    assert len(fit.residuals_m3s) == 3


def test_calibration_refuses_invalid_samples_and_all_closed_gates() -> None:
    with pytest.raises(ValueError, match="sample 1 is invalid"):
        calibrate_coefficient([(0.2, 1.0, None, 0.5), (1.2, 1.0, None, 0.5)], width_m=1.0)
    with pytest.raises(ValueError, match="gate open"):
        calibrate_coefficient([(0.0, 1.0, None, 0.0)], width_m=1.0)
    with pytest.raises(ValueError):
        calibrate_coefficient([], width_m=1.0)


# --- pumps ------------------------------------------------------------------------------------


def test_pump_volume_from_a_measured_flow_is_a_measurement() -> None:
    result = pump_volume(running_hours=10, flow_m3s=1.2)
    assert result.volume_m3 == pytest.approx(43_200)
    assert result.quality is QualityFlag.OK


def test_pump_volume_from_rated_flow_and_running_hours_is_an_estimate() -> None:
    result = pump_volume(running_hours=2.5, rated_flow_m3s=2.0)
    assert result.volume_m3 == pytest.approx(18_000)
    assert result.quality is QualityFlag.ESTIMATED


def test_pump_volume_needs_exactly_one_flow_and_sane_hours() -> None:
    with pytest.raises(ValueError):
        pump_volume(running_hours=1)
    with pytest.raises(ValueError):
        pump_volume(running_hours=1, flow_m3s=1.0, rated_flow_m3s=1.0)
    with pytest.raises(ValueError):
        pump_volume(running_hours=-1, flow_m3s=1.0)
    with pytest.raises(ValueError):
        pump_volume(running_hours=1, rated_flow_m3s=math.nan)
