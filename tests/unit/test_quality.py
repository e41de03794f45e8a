"""Quality flags and the per-reading checks declared as data."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from grassroots.irrigation.water.quality import (
    QualityFlag,
    RangeCheck,
    SpikeCheck,
    StuckCheck,
    apply_checks,
    combine,
)

T0 = datetime(2024, 6, 1, tzinfo=UTC)


def _every(minutes: float, n: int) -> list[datetime]:
    return [T0 + timedelta(minutes=minutes * i) for i in range(n)]


def test_flags_combine_and_ok_is_the_empty_set() -> None:
    both = QualityFlag.SUBMERGED | QualityFlag.OUT_OF_RANGE
    assert QualityFlag.SUBMERGED in both
    assert QualityFlag.INVALID not in both
    assert not QualityFlag.OK
    assert combine([QualityFlag.GAP, QualityFlag.ESTIMATED]) == QualityFlag.GAP | (
        QualityFlag.ESTIMATED
    )
    assert combine([]) is QualityFlag.OK


def test_a_range_check_flags_readings_outside_its_bounds_only() -> None:
    flags = apply_checks(_every(5, 5), [-0.1, 0.0, 2.0, 5.0, 5.01], [RangeCheck(min=0.0, max=5.0)])
    assert flags == [
        QualityFlag.OUT_OF_RANGE,
        QualityFlag.OK,
        QualityFlag.OK,
        QualityFlag.OK,
        QualityFlag.OUT_OF_RANGE,
    ]


def test_a_range_check_with_one_bound_leaves_the_other_side_open() -> None:
    flags = apply_checks(_every(5, 3), [-50.0, 1.0, 1e6], [RangeCheck(min=0.0)])
    assert flags == [QualityFlag.OUT_OF_RANGE, QualityFlag.OK, QualityFlag.OK]


def test_a_range_check_with_crossed_bounds_is_refused() -> None:
    with pytest.raises(ValueError):
        RangeCheck(min=2.0, max=1.0)


def test_a_reading_that_jumps_and_comes_back_is_a_spike() -> None:
    values = [1.0, 1.0, 1.0, 9.0, 1.0, 1.0]
    flags = apply_checks(_every(1, 6), values, [SpikeCheck(max_step_per_minute=2.0)])
    assert [i for i, f in enumerate(flags) if f] == [3]
    assert flags[3] is QualityFlag.SPIKE


def test_a_step_that_stays_is_not_a_spike() -> None:
    values = [1.0, 1.0, 9.0, 9.0, 9.0]  # a gate opened
    flags = apply_checks(_every(1, 5), values, [SpikeCheck(max_step_per_minute=2.0)])
    assert not any(flags)


def test_a_change_within_the_allowed_rate_is_not_a_spike() -> None:
    values = [1.0, 1.0, 2.5, 1.0, 1.0]
    flags = apply_checks(_every(1, 5), values, [SpikeCheck(max_step_per_minute=2.0)])
    assert not any(flags)


def test_the_spike_rate_is_per_minute_of_the_actual_spacing() -> None:
    # 8 units over 10 minutes is 0.8 per minute: slow enough at a 2/min limit.
    values = [1.0, 9.0, 1.0]
    assert not any(apply_checks(_every(10, 3), values, [SpikeCheck(max_step_per_minute=2.0)]))
    assert apply_checks(_every(1, 3), values, [SpikeCheck(max_step_per_minute=2.0)])[1]


def test_the_first_and_last_readings_are_never_spikes() -> None:
    flags = apply_checks(_every(1, 3), [9.0, 1.0, 9.0], [SpikeCheck(max_step_per_minute=2.0)])
    assert flags[0] is QualityFlag.OK
    assert flags[2] is QualityFlag.OK


def test_a_sensor_repeating_one_value_past_the_window_is_stuck() -> None:
    values = [3.0, 4.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 6.0]
    check = StuckCheck(window=timedelta(minutes=30), min_readings=4)
    flags = apply_checks(_every(10, 9), values, [check])
    # The run of 5.0 starts at index 2; it has lasted 30 min with 4 readings at index 5.
    assert [i for i, f in enumerate(flags) if f] == [5, 6, 7]
    assert flags[5] is QualityFlag.STUCK


def test_a_short_or_sparse_repeat_is_not_stuck() -> None:
    check = StuckCheck(window=timedelta(minutes=30), min_readings=4)
    # Four identical readings but only 15 minutes apart in total.
    assert not any(apply_checks(_every(5, 4), [2.0] * 4, [check]))
    # Two readings spanning an hour: long enough but too few.
    assert not any(apply_checks(_every(60, 2), [2.0] * 2, [check]))


def test_a_stuck_check_with_a_tolerance_ignores_tiny_jitter() -> None:
    check = StuckCheck(window=timedelta(minutes=20), min_readings=3, tolerance=0.001)
    flags = apply_checks(_every(10, 4), [7.0, 7.0005, 7.0, 7.0008], [check])
    assert [i for i, f in enumerate(flags) if f] == [2, 3]


def test_missing_readings_are_flagged_gap_and_skipped_by_the_checks() -> None:
    values = [1.0, None, 1.0, math.nan, 9.0, 1.0, 1.0]
    flags = apply_checks(_every(1, 7), values, [SpikeCheck(max_step_per_minute=2.0)])
    assert flags[1] is QualityFlag.GAP
    assert flags[3] is QualityFlag.GAP
    assert flags[4] is QualityFlag.SPIKE


def test_checks_accept_unsorted_input_and_answer_in_the_callers_order() -> None:
    times = _every(1, 6)
    values = [1.0, 1.0, 1.0, 9.0, 1.0, 1.0]
    order = [4, 0, 3, 5, 1, 2]
    flags = apply_checks([times[i] for i in order], [values[i] for i in order], [SpikeCheck(2.0)])
    assert flags == [QualityFlag.SPIKE if i == 3 else QualityFlag.OK for i in order]


def test_several_checks_combine_their_flags_on_one_reading() -> None:
    values = [1.0, 1.0, 50.0, 1.0, 1.0]
    flags = apply_checks(
        _every(1, 5), values, [RangeCheck(max=10.0), SpikeCheck(max_step_per_minute=2.0)]
    )
    assert flags[2] == QualityFlag.OUT_OF_RANGE | QualityFlag.SPIKE


def test_checks_take_numpy_datetime64_and_float_arrays() -> None:
    times = np.array(["2024-06-01T00:00", "2024-06-01T00:01", "2024-06-01T00:02"], "datetime64[s]")
    values = np.array([1.0, 9.0, 1.0])
    flags = apply_checks(times, values, [SpikeCheck(max_step_per_minute=2.0)])
    assert flags == [QualityFlag.OK, QualityFlag.SPIKE, QualityFlag.OK]


def test_naive_timestamps_are_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        apply_checks([datetime(2024, 6, 1)], [1.0], [RangeCheck(max=2.0)])


def test_invalid_check_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        SpikeCheck(max_step_per_minute=0)
    with pytest.raises(ValueError):
        StuckCheck(window=timedelta(0))
    with pytest.raises(ValueError):
        StuckCheck(window=timedelta(minutes=5), min_readings=1)
