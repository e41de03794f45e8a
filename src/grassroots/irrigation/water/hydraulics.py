"""Discharge through Parshall flumes and undershot gates, and pump-station lifted volume.

Pure functions on SI inputs (m, m³/s, hours); a result that cannot be trusted carries a
quality flag, and a value the formula cannot give is ``None``, never a silent zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from grassroots.irrigation.water.quality import QualityFlag

FT_M = 0.3048  # international foot, exact
IN_M = FT_M / 12
CFS_M3S = FT_M**3  # one cubic foot per second in m³/s, exact
G = 9.80665  # standard gravity, m/s²


def ft_to_m(feet: float) -> float:
    """Feet to metres."""
    return feet * FT_M


def m_to_ft(metres: float) -> float:
    """Metres to feet."""
    return metres / FT_M


def cfs_to_m3s(cfs: float) -> float:
    """Cubic feet per second to cubic metres per second."""
    return cfs * CFS_M3S


def m3s_to_cfs(m3s: float) -> float:
    """Cubic metres per second to cubic feet per second."""
    return m3s / CFS_M3S


@dataclass(frozen=True, slots=True)
class FlowResult:
    """A discharge with its quality; ``submergence`` is Hb/Ha when a throat level was given."""

    q_m3s: float | None
    quality: QualityFlag
    submergence: float | None = None


# --- Parshall flumes ------------------------------------------------------------------------


class FlumeForm(StrEnum):
    """Which free-flow equation a flume uses (DOMAIN.md §8)."""

    US_SMALL = "us_small"  # 1, 2, 3, 6, 9 in: Q = C·Ha^n from the table, ft and ft³/s
    US_1_TO_8_FT = "us_1_to_8_ft"  # Q = 4·W·Ha^(1.522·W^0.026), ft and ft³/s
    US_10_TO_50_FT = "us_10_to_50_ft"  # Q = (3.6875·W + 2.5)·Ha^1.6, ft and ft³/s
    METRIC_CN = "metric_cn"  # Q = 0.372·b·(Ha/0.305)^(1.569·b^0.026), m and m³/s, b 0.3–2.4 m


# Beyond this submergence no correction is practical and the reading is not a measurement.
INVALID_SUBMERGENCE = 0.9

# Rated maximum upstream heads Ha (m) by size, the upper ends of the head ranges tabulated with
# the standard flume dimensions in ISO 9826:1992 (1-in 0.21 m … 1–8 ft 0.76 m = 2.5 ft, which
# also matches the USBR maximum free-flow capacities, e.g. 1 ft 16.1 ft³/s at 2.5 ft). Taken
# from the tables as remembered, not from a copy at hand: check them against the standard; a
# flume rated differently on site passes ``max_head_m``.
_SMALL_FLUMES: dict[int, tuple[float, float, float, float]] = {
    # inches: (C, n, free-flow submergence limit, max Ha in m)
    1: (0.338, 1.55, 0.5, 0.21),
    2: (0.676, 1.55, 0.5, 0.24),
    3: (0.992, 1.547, 0.5, 0.33),
    6: (2.06, 1.58, 0.6, 0.45),
    9: (3.07, 1.53, 0.6, 0.61),
}
_MEDIUM_FEET = (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0)
_MEDIUM_MAX_HEAD_M = 0.76
_LARGE_MAX_HEAD_M: dict[float, float] = {
    10.0: 1.07,
    12.0: 1.37,
    15.0: 1.67,
    20.0: 1.83,
    25.0: 1.83,
    30.0: 1.83,
    40.0: 1.83,
    50.0: 1.83,
}
_METRIC_RANGE_M = (0.3, 2.4)
# The metric form is the 1–8 ft equation converted to SI, so it shares that family's limits.
_METRIC_MAX_HEAD_M = _MEDIUM_MAX_HEAD_M

# A width within 0.5 % of a nominal US size is that size: 0.305 m is the 1-ft flume, while the
# Chinese metric sizes (0.3, 0.6, 0.9 m …) differ from the nearest US size by ~1.6 %.
_SIZE_TOLERANCE = 0.005


def _matches(width: float, nominal: float) -> bool:
    return abs(width - nominal) <= _SIZE_TOLERANCE * nominal


@dataclass(frozen=True, slots=True)
class _FlumeRating:
    form: FlumeForm
    free_flow_limit: float
    max_head_m: float
    free_flow: Callable[[float], float]  # Ha in m -> Q in m³/s


def _us(coefficient: float, exponent: float) -> Callable[[float], float]:
    def free_flow(ha_m: float) -> float:
        return cfs_to_m3s(coefficient * m_to_ft(ha_m) ** exponent)

    return free_flow


def _rate_flume(width_m: float, form: FlumeForm | None, max_head_m: float | None) -> _FlumeRating:
    width_ft = m_to_ft(width_m)
    small = next((i for i in _SMALL_FLUMES if _matches(width_m, i * IN_M)), None)
    medium = next((f for f in _MEDIUM_FEET if _matches(width_ft, f)), None)
    large = next((f for f in _LARGE_MAX_HEAD_M if _matches(width_ft, f)), None)
    lo, hi = _METRIC_RANGE_M
    in_metric_range = lo * (1 - _SIZE_TOLERANCE) <= width_m <= hi * (1 + _SIZE_TOLERANCE)
    if form is None:
        if small is not None:
            form = FlumeForm.US_SMALL
        elif medium is not None:
            form = FlumeForm.US_1_TO_8_FT
        elif large is not None:
            form = FlumeForm.US_10_TO_50_FT
        elif in_metric_range:
            form = FlumeForm.METRIC_CN
        else:
            raise ValueError(
                f"no Parshall equation for a {width_m} m throat: not a standard US size "
                "(1, 2, 3, 6, 9 in; 1–8 ft; 10–50 ft) and outside the metric 0.3–2.4 m range"
            )

    if form is FlumeForm.US_SMALL:
        if small is None:
            raise ValueError(f"{width_m} m is not a 1, 2, 3, 6 or 9 in throat")
        c, n, limit, rated = _SMALL_FLUMES[small]
        return _FlumeRating(form, limit, max_head_m or rated, _us(c, n))
    if form is FlumeForm.US_1_TO_8_FT:
        if not 1.0 * (1 - _SIZE_TOLERANCE) <= width_ft <= 8.0 * (1 + _SIZE_TOLERANCE):
            raise ValueError(f"{width_m} m is outside the 1–8 ft equation's range")
        c, n = 4.0 * width_ft, 1.522 * width_ft**0.026
        return _FlumeRating(form, 0.7, max_head_m or _MEDIUM_MAX_HEAD_M, _us(c, n))
    if form is FlumeForm.US_10_TO_50_FT:
        if not 10.0 * (1 - _SIZE_TOLERANCE) <= width_ft <= 50.0 * (1 + _SIZE_TOLERANCE):
            raise ValueError(f"{width_m} m is outside the 10–50 ft equation's range")
        rated = _LARGE_MAX_HEAD_M[large] if large is not None else max(_LARGE_MAX_HEAD_M.values())
        return _FlumeRating(form, 0.8, max_head_m or rated, _us(3.6875 * width_ft + 2.5, 1.6))
    if not in_metric_range:
        raise ValueError(f"{width_m} m is outside the metric equation's 0.3–2.4 m range")
    exponent = 1.569 * width_m**0.026

    def metric(ha_m: float) -> float:
        return float(0.372 * width_m * (ha_m / 0.305) ** exponent)

    return _FlumeRating(form, 0.7, max_head_m or _METRIC_MAX_HEAD_M, metric)


@dataclass(frozen=True, slots=True)
class ParshallFlume:
    """A Parshall flume rated by its throat width; the equation is chosen from the width.

    ``form`` forces an equation (a 0.305 m Chinese flume can be read with ``METRIC_CN``);
    ``max_head_m`` overrides the standard's rated maximum head.
    """

    throat_width_m: float
    form: FlumeForm | None = None
    max_head_m: float | None = None
    _rating: _FlumeRating = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.throat_width_m) and self.throat_width_m > 0):
            raise ValueError(f"throat width must be positive, got {self.throat_width_m}")
        if self.max_head_m is not None and not self.max_head_m > 0:
            raise ValueError(f"max_head_m must be positive, got {self.max_head_m}")
        object.__setattr__(
            self, "_rating", _rate_flume(self.throat_width_m, self.form, self.max_head_m)
        )

    @classmethod
    def us_inches(cls, inches: int) -> ParshallFlume:
        """A standard 1, 2, 3, 6 or 9 inch flume."""
        return cls(inches * IN_M)

    @classmethod
    def us_feet(cls, feet: float) -> ParshallFlume:
        """A standard 1–8 ft or 10–50 ft flume."""
        return cls(ft_to_m(feet))

    @property
    def equation(self) -> FlumeForm:
        """The free-flow equation this flume uses."""
        return self._rating.form

    @property
    def free_flow_limit(self) -> float:
        """The largest Hb/Ha at which the free-flow equation still holds."""
        return self._rating.free_flow_limit

    @property
    def rated_max_head_m(self) -> float:
        """The largest upstream head the rating covers."""
        return self._rating.max_head_m

    def free_flow_m3s(self, ha_m: float) -> float:
        """The free-flow equation alone, no checks; 0 for a dry crest."""
        return self._rating.free_flow(ha_m) if ha_m > 0 else 0.0

    def discharge(self, ha_m: float, hb_m: float | None = None) -> FlowResult:
        """Free-flow discharge from the upstream head Ha, checked against the throat head Hb.

        Hb/Ha above the size's free-flow limit flags SUBMERGED: the free-flow value is still
        returned (it over-reads; no submergence correction is applied). Above 0.9 the reading is
        INVALID and the value is None. Ha above the rated maximum adds OUT_OF_RANGE.
        """
        if not math.isfinite(ha_m) or (hb_m is not None and not math.isfinite(hb_m)):
            return FlowResult(None, QualityFlag.INVALID)
        if ha_m <= 0:
            return FlowResult(0.0, QualityFlag.OK)
        quality = QualityFlag.OK
        if ha_m > self._rating.max_head_m:
            quality |= QualityFlag.OUT_OF_RANGE
        submergence = None if hb_m is None else hb_m / ha_m
        if submergence is not None:
            if submergence > INVALID_SUBMERGENCE:
                return FlowResult(None, quality | QualityFlag.INVALID, submergence)
            if submergence > self._rating.free_flow_limit:
                quality |= QualityFlag.SUBMERGED
        return FlowResult(self._rating.free_flow(ha_m), quality, submergence)


# --- Undershot (sluice) gates -----------------------------------------------------------------


class GateRegime(StrEnum):
    """How water passes an undershot gate."""

    CLOSED = "closed"
    FREE = "free"
    SUBMERGED = "submerged"


@dataclass(frozen=True, slots=True)
class GateFlow:
    """A gate discharge, its quality and the regime it was computed in (None when invalid)."""

    q_m3s: float | None
    quality: QualityFlag
    regime: GateRegime | None


def sequent_depth_m(contracted_depth_m: float, q_m3s: float, width_m: float) -> float:
    """The depth conjugate to a supercritical depth (Bélanger's hydraulic-jump equation)."""
    if contracted_depth_m <= 0 or q_m3s <= 0:
        return 0.0
    velocity = q_m3s / (width_m * contracted_depth_m)
    froude_sq = velocity**2 / (G * contracted_depth_m)
    return contracted_depth_m / 2 * (math.sqrt(1 + 8 * froude_sq) - 1)


def _is_submerged(
    opening_m: float, downstream_m: float, q_free_m3s: float, width_m: float, cc: float
) -> bool:
    # Transition rule: the jet leaves the gate at the vena contracta depth Cc·e; flow stays free
    # while the tailwater is no deeper than the depth conjugate to that jet (the hydraulic jump
    # can form clear of the gate). Deeper tailwater drowns the jump and the gate runs submerged.
    # Henderson, F. M. (1966) Open Channel Flow, ch. 6 (sluice gates); Chow, V. T. (1959)
    # Open-Channel Hydraulics, the hydraulic jump (Bélanger) chapter. Cc ≈ 0.61 for a vertical
    # sharp-edged gate.
    return downstream_m > sequent_depth_m(cc * opening_m, q_free_m3s, width_m)


def _driving_head(
    opening_m: float,
    upstream_m: float,
    downstream_m: float | None,
    q_m3s: float,
    width_m: float,
    cc: float,
) -> tuple[float, GateRegime]:
    """The head that drives the flow, and the regime it belongs to."""
    if downstream_m is not None and _is_submerged(opening_m, downstream_m, q_m3s, width_m, cc):
        return upstream_m - downstream_m, GateRegime.SUBMERGED
    return upstream_m, GateRegime.FREE


def _gate_input_error(opening_m: float, upstream_m: float, downstream_m: float | None) -> str:
    values = [opening_m, upstream_m] + ([] if downstream_m is None else [downstream_m])
    if not all(math.isfinite(v) for v in values):
        return "a level or opening is not a number"
    if min(values) < 0:
        return "a level or opening is negative"
    if opening_m > upstream_m:
        return "the opening is above the upstream level (weir flow, not gate flow)"
    if downstream_m is not None and downstream_m > upstream_m:
        return "the downstream level is above the upstream level (reverse head)"
    return ""


@dataclass(frozen=True, slots=True)
class GateRating:
    """An undershot gate: Q = Cd·b·e·√(2g·h1) free, Q = Cd·b·e·√(2g·(h1 − h2)) submerged.

    Levels h1 (upstream) and h2 (downstream) are metres above the gate sill; e is the opening.
    ``discharge_coefficient`` is the gate's own calibrated Cd (``calibrate_coefficient``).
    """

    width_m: float
    discharge_coefficient: float
    contraction_coefficient: float = 0.61

    def __post_init__(self) -> None:
        if not self.width_m > 0:
            raise ValueError(f"gate width must be positive, got {self.width_m}")
        if not 0 < self.discharge_coefficient <= 1.2:
            raise ValueError(f"implausible discharge coefficient {self.discharge_coefficient}")
        if not 0 < self.contraction_coefficient <= 1:
            raise ValueError(f"implausible contraction coefficient {self.contraction_coefficient}")

    def flow(
        self, opening_m: float, upstream_m: float, downstream_m: float | None = None
    ) -> GateFlow:
        """Discharge for one opening and pair of levels; no downstream level means free flow."""
        if _gate_input_error(opening_m, upstream_m, downstream_m):
            return GateFlow(None, QualityFlag.INVALID, None)
        if opening_m == 0:
            return GateFlow(0.0, QualityFlag.OK, GateRegime.CLOSED)
        area = self.discharge_coefficient * self.width_m * opening_m
        q_free = area * math.sqrt(2 * G * upstream_m)
        head, regime = _driving_head(
            opening_m, upstream_m, downstream_m, q_free, self.width_m, self.contraction_coefficient
        )
        return GateFlow(area * math.sqrt(2 * G * head), QualityFlag.OK, regime)


@dataclass(frozen=True, slots=True)
class GateSample:
    """One calibration measurement: opening, levels above the sill, and the measured flow."""

    opening_m: float
    upstream_m: float
    downstream_m: float | None
    measured_q_m3s: float


@dataclass(frozen=True, slots=True)
class GateCalibration:
    """A least-squares Cd with its fit: RMS residual and each sample's residual (m³/s)."""

    discharge_coefficient: float
    rmse_m3s: float
    residuals_m3s: tuple[float, ...]
    regimes: tuple[GateRegime, ...]


def calibrate_coefficient(
    samples: Sequence[GateSample | tuple[float, float, float | None, float]],
    *,
    width_m: float,
    contraction_coefficient: float = 0.61,
) -> GateCalibration:
    """Fit Cd to measured flows by least squares through the origin: Cd = Σxq / Σx².

    x is b·e·√(2g·Δh) with Δh = h1 free or h1 − h2 submerged; each sample's regime is judged
    from its measured flow. Invalid samples raise rather than being dropped silently.
    """
    rows = [s if isinstance(s, GateSample) else GateSample(*s) for s in samples]
    if not rows:
        raise ValueError("calibration needs at least one sample")
    xs: list[float] = []
    regimes: list[GateRegime] = []
    for index, row in enumerate(rows):
        error = _gate_input_error(row.opening_m, row.upstream_m, row.downstream_m)
        if error or not (math.isfinite(row.measured_q_m3s) and row.measured_q_m3s >= 0):
            raise ValueError(f"calibration sample {index} is invalid: {error or 'bad flow'}")
        if row.opening_m == 0:
            xs.append(0.0)
            regimes.append(GateRegime.CLOSED)
            continue
        head, regime = _driving_head(
            row.opening_m,
            row.upstream_m,
            row.downstream_m,
            row.measured_q_m3s,
            width_m,
            contraction_coefficient,
        )
        xs.append(width_m * row.opening_m * math.sqrt(2 * G * head))
        regimes.append(regime)
    sxx = sum(x * x for x in xs)
    if sxx == 0:
        raise ValueError("calibration needs a sample with the gate open and a positive head")
    cd = sum(x * row.measured_q_m3s for x, row in zip(xs, rows, strict=True)) / sxx
    residuals = tuple(row.measured_q_m3s - cd * x for x, row in zip(xs, rows, strict=True))
    rmse = math.sqrt(sum(r * r for r in residuals) / len(residuals))
    return GateCalibration(cd, rmse, residuals, tuple(regimes))


# --- Pump stations ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PumpVolume:
    """Lifted volume; ESTIMATED when it comes from the rated flow rather than a flow meter."""

    volume_m3: float
    quality: QualityFlag


def pump_volume(
    *,
    running_hours: float,
    flow_m3s: float | None = None,
    rated_flow_m3s: float | None = None,
) -> PumpVolume:
    """Volume lifted over ``running_hours`` at a measured mean flow, or else at the rated flow."""
    if not (math.isfinite(running_hours) and running_hours >= 0):
        raise ValueError(f"running hours must be a non-negative number, got {running_hours}")
    if flow_m3s is not None and rated_flow_m3s is None:
        rate, quality = flow_m3s, QualityFlag.OK
    elif rated_flow_m3s is not None and flow_m3s is None:
        rate, quality = rated_flow_m3s, QualityFlag.ESTIMATED
    else:
        raise ValueError("give exactly one of flow_m3s (measured) or rated_flow_m3s")
    if not (math.isfinite(rate) and rate >= 0):
        raise ValueError(f"pump flow must be a non-negative number, got {rate}")
    return PumpVolume(rate * running_hours * 3600.0, quality)
