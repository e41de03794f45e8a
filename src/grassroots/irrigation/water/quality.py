"""Quality flags for derived water quantities, and per-reading checks declared as data."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from enum import IntFlag
from typing import Protocol

import numpy as np
import numpy.typing as npt

from grassroots.irrigation.water._series import (
    US_PER_S,
    FloatArray,
    IntArray,
    TimesLike,
    ValuesLike,
    as_series,
    td_us,
)

BoolArray = npt.NDArray[np.bool_]


class QualityFlag(IntFlag):
    """Why a value should be trusted less; flags combine (``SUBMERGED | OUT_OF_RANGE``)."""

    OK = 0
    OUT_OF_RANGE = 1
    SPIKE = 2
    STUCK = 4
    SUBMERGED = 8
    INVALID = 16
    # For a reading: it is unavailable. For an aggregate: part of the period had no data.
    GAP = 32
    # The value is not a measurement but an estimate (rated pump flow, a reset totaliser).
    ESTIMATED = 64


class Check(Protocol):
    """A per-reading test over one channel's series, sorted by time, missing readings removed."""

    @property
    def flag(self) -> QualityFlag: ...

    def apply(self, t_us: IntArray, values: FloatArray) -> BoolArray:
        """True where a reading fails the check."""
        ...


@dataclass(frozen=True, slots=True)
class RangeCheck:
    """A reading outside [min, max] (either bound optional) is OUT_OF_RANGE."""

    min: float | None = None
    max: float | None = None
    flag: QualityFlag = QualityFlag.OUT_OF_RANGE

    def __post_init__(self) -> None:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"RangeCheck min {self.min} is above max {self.max}")

    def apply(self, t_us: IntArray, values: FloatArray) -> BoolArray:
        failed = np.zeros(values.shape, dtype=np.bool_)
        if self.min is not None:
            failed |= values < self.min
        if self.max is not None:
            failed |= values > self.max
        return failed


@dataclass(frozen=True, slots=True)
class SpikeCheck:
    """A reading that jumps away from both neighbours faster than the allowed rate and comes back.

    Reading i is a SPIKE when the rate of change into it and out of it both exceed
    ``max_step_per_minute``, in opposite directions, while its two neighbours agree with each
    other within that rate. A step that stays (a gate opened) is therefore not a spike, and the
    first and last readings are never flagged: there is nothing to come back to.
    """

    max_step_per_minute: float
    flag: QualityFlag = QualityFlag.SPIKE

    def __post_init__(self) -> None:
        if not self.max_step_per_minute > 0:
            raise ValueError("SpikeCheck max_step_per_minute must be positive")

    def apply(self, t_us: IntArray, values: FloatArray) -> BoolArray:
        failed = np.zeros(values.shape, dtype=np.bool_)
        if values.size < 3:
            return failed
        minutes = t_us.astype(np.float64) / (60 * US_PER_S)
        # Two readings with one timestamp give an undefined rate; NaN compares False below.
        with np.errstate(divide="ignore", invalid="ignore"):
            rate = np.diff(values) / np.diff(minutes)
            across = (values[2:] - values[:-2]) / (minutes[2:] - minutes[:-2])
        rate_in, rate_out = rate[:-1], rate[1:]
        limit = self.max_step_per_minute
        failed[1:-1] = (
            (np.abs(rate_in) > limit)
            & (np.abs(rate_out) > limit)
            & (np.sign(rate_in) != np.sign(rate_out))
            & (np.abs(across) <= limit)
        )
        return failed


@dataclass(frozen=True, slots=True)
class StuckCheck:
    """A sensor repeating the same value: the run has lasted ``window`` and ``min_readings``.

    Consecutive readings within ``tolerance`` of the previous one form a run. A reading is
    STUCK once its run, counted up to and including it, holds at least ``min_readings``
    readings spanning at least ``window``. Like an online flat-line test it is causal: the first
    readings of a run are not flagged, because the value may well have been right when it first
    appeared. Channels that legitimately sit still (a closed gate's zero flow) should not get
    this check.
    """

    window: timedelta
    min_readings: int = 3
    tolerance: float = 0.0
    flag: QualityFlag = QualityFlag.STUCK

    def __post_init__(self) -> None:
        if self.window <= timedelta(0):
            raise ValueError("StuckCheck window must be positive")
        if self.min_readings < 2:
            raise ValueError("StuckCheck min_readings must be at least 2")
        if self.tolerance < 0:
            raise ValueError("StuckCheck tolerance must not be negative")

    def apply(self, t_us: IntArray, values: FloatArray) -> BoolArray:
        n = values.size
        if n == 0:
            return np.zeros(0, dtype=np.bool_)
        changed = np.ones(n, dtype=np.bool_)
        changed[1:] = np.abs(np.diff(values)) > self.tolerance
        run_start = np.maximum.accumulate(np.where(changed, np.arange(n), 0))
        count = np.arange(n) - run_start + 1
        elapsed = t_us - t_us[run_start]
        stuck: BoolArray = (count >= self.min_readings) & (elapsed >= td_us(self.window))
        return stuck


def apply_checks(
    times: TimesLike, values: ValuesLike, checks: Sequence[Check]
) -> list[QualityFlag]:
    """One combined flag per reading, in the caller's order; a missing reading is flagged GAP.

    The checks see the available readings sorted by time, so unsorted input is fine.
    """
    t, v = as_series(times, values)
    flags = np.zeros(v.shape, dtype=np.int64)
    available = np.isfinite(v)
    flags[~available] = int(QualityFlag.GAP)
    index = np.flatnonzero(available)
    index = index[np.argsort(t[index], kind="stable")]
    t_sorted, v_sorted = t[index], v[index]
    for check in checks:
        failed = check.apply(t_sorted, v_sorted)
        flags[index[failed]] |= int(check.flag)
    return [QualityFlag(int(f)) for f in flags]


def combine(flags: Sequence[QualityFlag]) -> QualityFlag:
    """The union of several flags (OK when there are none)."""
    result = QualityFlag.OK
    for flag in flags:
        result |= flag
    return result
