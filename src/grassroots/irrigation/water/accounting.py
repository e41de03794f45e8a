"""Pure helpers for water accounts: canal efficiency, rotation slots, unit conversions, routing."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

import numpy as np
import numpy.typing as npt

# 1 mu = 10,000/15 m² exactly (15 mu to the hectare); DOMAIN.md rounds it to 666.67 m².
M2_PER_MU = 10_000 / 15


def mu_to_m2(mu: float) -> float:
    """Area in mu to square metres."""
    return mu * M2_PER_MU


def m2_to_mu(m2: float) -> float:
    """Area in square metres to mu."""
    return m2 / M2_PER_MU


def m3_per_mu_to_mm(m3_per_mu: float) -> float:
    """An application in m³ per mu as a depth in mm (1 m³/mu = 1.5 mm)."""
    return m3_per_mu / M2_PER_MU * 1000


def mm_to_m3_per_mu(mm: float) -> float:
    """A depth in mm as m³ per mu."""
    return mm / 1000 * M2_PER_MU


def depth_mm_to_volume_m3(depth_mm: float, area_mu: float) -> float:
    """The volume of a depth spread over an area in mu."""
    return depth_mm / 1000 * mu_to_m2(area_mu)


# --- Canal-system water-use coefficient ---------------------------------------------------------


class DistrictSize(StrEnum):
    """Irrigation district size class."""

    LARGE = "large"
    MEDIUM = "medium"
    SMALL = "small"


# GB/T 50363 (节水灌溉工程技术标准): minimum canal-system water-use coefficient by district size.
MINIMUM_CANAL_COEFFICIENT: dict[DistrictSize, float] = {
    DistrictSize.LARGE: 0.55,
    DistrictSize.MEDIUM: 0.65,
    DistrictSize.SMALL: 0.75,
}

# The usual Chinese size classes by irrigated area: large ≥ 300,000 mu (20,000 ha),
# medium 10,000–300,000 mu, small below 10,000 mu.
LARGE_DISTRICT_MU = 300_000
MEDIUM_DISTRICT_MU = 10_000


def district_size(irrigated_area_mu: float) -> DistrictSize:
    """The size class of a district from its irrigated area."""
    if irrigated_area_mu >= LARGE_DISTRICT_MU:
        return DistrictSize.LARGE
    if irrigated_area_mu >= MEDIUM_DISTRICT_MU:
        return DistrictSize.MEDIUM
    return DistrictSize.SMALL


def canal_water_use_coefficient(*, delivered_m3: float, diverted_m3: float) -> float:
    """η = delivered ÷ diverted for one period."""
    if not diverted_m3 > 0:
        raise ValueError(f"diverted volume must be positive, got {diverted_m3}")
    if delivered_m3 < 0:
        raise ValueError(f"delivered volume must not be negative, got {delivered_m3}")
    return delivered_m3 / diverted_m3


@dataclass(frozen=True, slots=True)
class CoefficientAssessment:
    """A coefficient set against the GB/T 50363 minimum for the district's size."""

    coefficient: float
    size: DistrictSize
    minimum: float
    meets_minimum: bool


def assess_canal_coefficient(coefficient: float, size: DistrictSize) -> CoefficientAssessment:
    """Whether η meets the national minimum for a large, medium or small district."""
    if not 0 <= coefficient <= 1:
        # Above 1 means a meter is wrong, not that the canal gains water; refuse to grade it.
        raise ValueError(f"a water-use coefficient lies in [0, 1], got {coefficient}")
    minimum = MINIMUM_CANAL_COEFFICIENT[size]
    return CoefficientAssessment(coefficient, size, minimum, coefficient >= minimum)


# --- Rotation slots ---------------------------------------------------------------------------


def rotation_slot_hours(
    *, area_mu: float, net_depth_mm: float, efficiency: float, flow_m3s: float
) -> float:
    """T = A·d / (η·q) in hours: the time a turnout flow takes to give an area its net depth.

    1,000 mu at 60 mm net with η 0.9 and q 0.3 m³/s takes 41.15 h.
    """
    if not 0 < efficiency <= 1:
        raise ValueError(f"efficiency must lie in (0, 1], got {efficiency}")
    if not flow_m3s > 0:
        raise ValueError(f"flow must be positive, got {flow_m3s}")
    if area_mu < 0 or net_depth_mm < 0:
        raise ValueError("area and depth must not be negative")
    seconds = depth_mm_to_volume_m3(net_depth_mm, area_mu) / (efficiency * flow_m3s)
    return seconds / 3600


# --- Muskingum routing ------------------------------------------------------------------------


class MuskingumError(ValueError):
    """Muskingum parameters outside the range where the scheme is valid."""


@dataclass(frozen=True, slots=True)
class MuskingumCoefficients:
    """O2 = C0·I2 + C1·I1 + C2·O1."""

    c0: float
    c1: float
    c2: float


def muskingum_coefficients(*, k: timedelta, x: float, dt: timedelta) -> MuskingumCoefficients:
    """C0, C1, C2 for storage constant K, weighting X and step Δt.

    D = 2K(1−X) + Δt, C0 = (Δt − 2KX)/D, C1 = (Δt + 2KX)/D, C2 = (2K(1−X) − Δt)/D; valid
    only for 2KX ≤ Δt ≤ 2K(1−X), outside which a coefficient turns negative and the routed
    flow can dip below zero or oscillate.
    """
    k_s, dt_s = k.total_seconds(), dt.total_seconds()
    if not k_s > 0 or not dt_s > 0:
        raise MuskingumError(f"K and Δt must be positive, got K={k}, Δt={dt}")
    if not 0 <= x <= 0.5:
        raise MuskingumError(f"X must lie in [0, 0.5], got {x}")
    lower, upper = 2 * k_s * x, 2 * k_s * (1 - x)
    # A relative tolerance keeps Δt = 2KX exactly (a common textbook choice) valid.
    tolerance = 1e-9 * upper
    if not lower - tolerance <= dt_s <= upper + tolerance:
        raise MuskingumError(
            f"Δt={dt_s:g} s is outside 2KX={lower:g} s … 2K(1−X)={upper:g} s; "
            "choose Δt (or split the reach) so that 2KX ≤ Δt ≤ 2K(1−X)"
        )
    d = upper + dt_s
    return MuskingumCoefficients((dt_s - lower) / d, (dt_s + lower) / d, (upper - dt_s) / d)


def route(
    inflows: Sequence[float] | npt.NDArray[np.floating],
    *,
    k: timedelta,
    x: float,
    dt: timedelta,
    initial_outflow: float | None = None,
) -> npt.NDArray[np.float64]:
    """Muskingum-route inflows sampled every Δt; the reach starts at steady state unless told."""
    c = muskingum_coefficients(k=k, x=x, dt=dt)
    inflow = np.asarray(inflows, dtype=np.float64)
    if inflow.ndim != 1:
        raise ValueError("inflows must be one-dimensional")
    if not np.all(np.isfinite(inflow)):
        # A hole in the inflow would be carried downstream forever; fill it before routing.
        raise ValueError("inflows contain missing values")
    outflow = np.empty_like(inflow)
    if inflow.size == 0:
        return outflow
    outflow[0] = inflow[0] if initial_outflow is None else initial_outflow
    if not math.isfinite(float(outflow[0])):
        raise ValueError("initial outflow must be a number")
    for i in range(1, inflow.size):
        outflow[i] = c.c0 * inflow[i] + c.c1 * inflow[i - 1] + c.c2 * outflow[i - 1]
    return outflow
