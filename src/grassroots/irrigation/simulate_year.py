"""A simulated delivery year for the demo district, whose totals reproduce the seed exactly.

The seed (DOMAIN.md §1) says the pump station lifted 51.858 million m³ in a year: agriculture
39.135, industry 8.778, ecology 3.945. We read that split as being **at the source**: each
use is charged the water lifted for it, which is what it received at its turnout plus the
conveyance losses on the canals that carried it there (the usual loss allocation, 渠系损失分摊,
and how a water permit counts use at the intake). So in the daily volume table:

* the pump station's rows add up to exactly 51,858,000 m³ for the year;
* each delivery row (turnout or offtake) carries `source_m3`, its share of that day's lifted
  water, and the shares add up per day to the pump's row and per year, by use, to exactly
  39,135,000 / 8,778,000 / 3,945,000 m³;
* `volume_m3` of a delivery row is what its turnout metered, smaller than its share by the
  losses; delivered ÷ lifted is the canal-system water-use coefficient (about 0.8 here, inside
  the 0.68–0.88 of lift districts, DOMAIN.md §8); the branch head gates' rows give each
  branch's own coefficient.

Volumes are whole m³ (see grassroots.irrigation.accounting.models), so "exactly" means to the
cubic metre: the float series is scaled to the targets and then rounded by the largest-remainder
method, per use over the whole year, so that no rounding error is left over.

The shape is built from the district's physics. Agriculture is rationed to its allocation the
way a district does it, by giving every round proportionally less depth (shorter slots at the
turnouts' normal flow; about 84 % of the crops' full deficit in the demo year), so the residual
scale before rounding is 1. Industry and ecology keep their shapes and are scaled onto theirs.

* climate: a smooth arid-climate ET0 curve for 39.4° N (about 1,200 mm a year, 6.5–7.5 mm/day
  in June–July) with deterministic day-to-day weather and about 115 mm of rain, mostly July
  and August;
* crops: FAO-56 Table 12 crop coefficients (maize 0.3/1.20/0.35, spring wheat 0.3/1.15/0.25,
  sunflower 0.35/1.10/0.35, alfalfa 0.40/0.95/0.90 per cutting cycle) on local sowing dates;
* agriculture is delivered in rotation rounds (轮灌): spring irrigation (春灌) in April,
  summer rounds every two weeks, an autumn round (秋灌) and the large autumn-winter leaching
  irrigation (秋浇) from mid-October. Each round gives every field the crop's soil-water
  deficit since its last watering (capped at what surface irrigation can apply); on each
  branch the laterals take turns in groups of up to three at 80 % of their design flow, each
  for T = A·d/(η·q) hours (`rotation_slot_hours`), so turnout flows start and stop mid-day;
* industry takes a steady flow through the pumping season (the park stores water for winter),
  a little less at weekends, with a three-day maintenance stop in July;
* ecology (a wetland and the shelter-forest belt) takes spring and autumn-winter recharge and
  a small summer maintenance flow;
* canal losses per km follow Kostyakov's seepage formula σ = β·A/(100·Q^m) for the light,
  sandy soils of the desert margin (A = 3.4, m = 0.5, Q the design capacity) reduced by the
  lining (β), plus an operating loss per canal (gate leakage, evaporation, tail spills).
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import Table, delete, func, insert, select
from sqlalchemy.orm import Session

from grassroots.irrigation.accounting.models import DailyVolume, VolumeSource
from grassroots.irrigation.network.models import (
    Canal,
    CanalLevel,
    Crop,
    IrrigatedField,
    Structure,
    StructureKind,
    WaterUse,
)
from grassroots.irrigation.water.accounting import depth_mm_to_volume_m3, rotation_slot_hours
from grassroots.irrigation.water.quality import QualityFlag
from grassroots.kernel.audit import record

if TYPE_CHECKING:
    from grassroots.runtime import Runtime

FloatArray = npt.NDArray[np.float64]
DAILY_VOLUME_TABLE: Table = DailyVolume.__table__  # type: ignore[assignment]

DEMO_YEAR = 2025
LIFTED_TOTAL_M3 = 51_858_000
USE_TOTALS_M3: dict[WaterUse, int] = {
    WaterUse.AGRICULTURE: 39_135_000,
    WaterUse.INDUSTRY: 8_778_000,
    WaterUse.ECOLOGY: 3_945_000,
}
assert sum(USE_TOTALS_M3.values()) == LIFTED_TOTAL_M3

# --- climate ---------------------------------------------------------------------------------

ET0_MEAN_MM = 3.3  # annual mean of the smooth curve, mm/day
ET0_AMPLITUDE_MM = 3.6  # so the curve peaks near 6.9 mm/day
ET0_PEAK_DOY = 190  # early July
ET0_FLOOR_MM = 0.35  # frozen winter days still lose a little
ANNUAL_RAIN_MM = 115.0
# Chance of a rain day and mean event depth (mm) by month: the East Asian monsoon's edge.
RAIN_DAYS = (0.02, 0.02, 0.04, 0.05, 0.08, 0.12, 0.18, 0.18, 0.10, 0.05, 0.02, 0.01)
RAIN_DEPTH = (1.0, 1.5, 2.0, 3.0, 4.5, 6.0, 8.0, 8.0, 6.0, 3.0, 1.5, 1.0)


@dataclass(frozen=True)
class Climate:
    days: list[date]
    et0_mm: FloatArray
    rain_mm: FloatArray

    @property
    def effective_rain_mm(self) -> FloatArray:
        """Rain that stays in the root zone: light showers evaporate, a quarter of the rest runs
        off or drains (a USDA-SCS-like rule of thumb for arid soils)."""
        return np.maximum(0.0, 0.75 * (self.rain_mm - 5.0))


def year_days(year: int) -> list[date]:
    first = date(year, 1, 1)
    return [first + timedelta(days=i) for i in range((date(year + 1, 1, 1) - first).days)]


def demo_climate(year: int) -> Climate:
    """Daily ET0 and rain for an arid lift district at 39.4° N; deterministic for a year."""
    rng = random.Random(year * 7919 + 17)
    days = year_days(year)
    et0 = np.empty(len(days))
    rain = np.empty(len(days))
    for i, day in enumerate(days):
        doy = day.timetuple().tm_yday
        rain[i] = (rng.expovariate(1 / RAIN_DEPTH[day.month - 1])
                   if rng.random() < RAIN_DAYS[day.month - 1] else 0.0)
        smooth = ET0_MEAN_MM + ET0_AMPLITUDE_MM * math.cos(2 * math.pi * (doy - ET0_PEAK_DOY)
                                                           / 365.25)
        weather = min(1.25, max(0.75, rng.gauss(1.0, 0.08)))
        cloudy = 0.6 if rain[i] > 2 else 1.0
        et0[i] = max(ET0_FLOOR_MM, smooth * weather * cloudy)
    rain *= ANNUAL_RAIN_MM / rain.sum()
    return Climate(days, et0, rain)


# --- crops (FAO-56) --------------------------------------------------------------------------


@dataclass(frozen=True)
class CropSeason:
    """One FAO-56 single-coefficient Kc curve: stage lengths in days and Kc ini/mid/end."""

    start: tuple[int, int]  # month, day: sowing, or green-up/regrowth for alfalfa
    stages: tuple[int, int, int, int]  # initial, development, mid-season, late
    kc: tuple[float, float, float]


# Sowing dates for the Hetao/Alxa lift districts; stage lengths after FAO-56 Table 11 for arid
# regions; alfalfa as four cutting cycles (first cycle longer), each restarting at Kc ini.
CROP_SEASONS: dict[Crop, tuple[CropSeason, ...]] = {
    Crop.MAIZE: (CropSeason((4, 28), (30, 40, 50, 30), (0.30, 1.20, 0.35)),),
    Crop.SPRING_WHEAT: (CropSeason((3, 25), (20, 25, 40, 30), (0.30, 1.15, 0.25)),),
    Crop.SUNFLOWER: (CropSeason((5, 25), (25, 35, 45, 25), (0.35, 1.10, 0.35)),),
    Crop.ALFALFA: (
        CropSeason((4, 5), (10, 30, 25, 10), (0.40, 0.95, 0.90)),
        CropSeason((6, 19), (5, 20, 10, 10), (0.40, 0.95, 0.90)),
        CropSeason((8, 3), (5, 20, 10, 10), (0.40, 0.95, 0.90)),
        CropSeason((9, 17), (5, 10, 10, 5), (0.40, 0.95, 0.90)),
    ),
}


def kc_on(crop: Crop, day: date) -> float:
    """The crop coefficient on a day (FAO-56 piecewise-linear curve); 0 outside the season."""
    for season in CROP_SEASONS[crop]:
        t = (day - date(day.year, *season.start)).days
        ini, dev, mid, late = season.stages
        kc_ini, kc_mid, kc_end = season.kc
        if t < 0 or t >= ini + dev + mid + late:
            continue
        if t < ini:
            return kc_ini
        if t < ini + dev:
            return kc_ini + (kc_mid - kc_ini) * (t - ini) / dev
        if t < ini + dev + mid:
            return kc_mid
        return kc_mid + (kc_end - kc_mid) * (t - ini - dev - mid) / late
    return 0.0


def crop_et_mm(crop: Crop, climate: Climate) -> FloatArray:
    """Daily crop evapotranspiration ETc = Kc·ET0."""
    return np.array([kc_on(crop, d) for d in climate.days]) * climate.et0_mm


# --- rotation rounds -------------------------------------------------------------------------

MAX_APPLICATION_MM = 65.0  # what one surface (border) irrigation puts into the root zone
MIN_APPLICATION_MM = 20.0  # below this a field skips the round
STORED_SOIL_WATER_MM = 40.0  # left in the root zone by last year's autumn irrigation
BELOW_TURNOUT_EFFICIENCY = 0.82  # lateral, farm ditches and field application
TURNOUT_FLOW_SHARE = 0.8  # turnouts run at 80 % of their lateral's design capacity
GROUP_SIZE = 3  # laterals of a branch that run at once
CHANGEOVER_HOURS = 2.0  # to close one group's gates and open the next's
ROUND_START_HOUR = 8  # rounds start at 08:00 Beijing time


@dataclass(frozen=True)
class Round:
    """A rotation round: when it starts, and what each crop gets."""

    key: str  # spring, summer_1 … autumn, autumn_winter
    start: tuple[int, int]
    deficit_crops: frozenset[Crop]  # crops given their soil-water deficit
    fixed_mm: dict[Crop, float] = field(default_factory=dict)  # pre-sowing / leaching water


_ALL = frozenset(Crop)
ROUNDS: tuple[Round, ...] = (
    # 春灌: alfalfa's green-up water and maize's pre-sowing water; wheat's first water.
    Round("spring_1", (4, 12), frozenset({Crop.ALFALFA}), {Crop.MAIZE: 60.0}),
    Round("spring_2", (5, 8), frozenset({Crop.SPRING_WHEAT, Crop.ALFALFA})),
    # 夏灌: rounds every two weeks through the ET peak; sunflower's pre-sowing water first.
    Round("summer_1", (5, 24), frozenset({Crop.SPRING_WHEAT, Crop.ALFALFA, Crop.MAIZE}),
          {Crop.SUNFLOWER: 60.0}),
    Round("summer_2", (6, 8), _ALL),
    Round("summer_3", (6, 22), _ALL),
    Round("summer_4", (7, 6), _ALL),
    Round("summer_5", (7, 20), _ALL),
    Round("summer_6", (8, 3), _ALL),
    Round("summer_7", (8, 18), _ALL),
    # 秋灌
    Round("autumn", (9, 4), frozenset({Crop.ALFALFA, Crop.SUNFLOWER, Crop.MAIZE})),
    # 秋浇: leaching salt and storing water for next spring, on every field after harvest.
    Round("autumn_winter", (10, 16), frozenset(),
          {Crop.MAIZE: 90.0, Crop.SUNFLOWER: 90.0, Crop.SPRING_WHEAT: 90.0,
           Crop.ALFALFA: 60.0}),
)


def round_depths(climate: Climate, rounds: Sequence[Round] = ROUNDS
                 ) -> list[dict[Crop, float]]:
    """Net depth (mm) each crop gets in each round, from a daily soil-water deficit."""
    eff_rain = climate.effective_rain_mm
    index = {d: i for i, d in enumerate(climate.days)}
    year = climate.days[0].year
    depths: list[dict[Crop, float]] = []
    for crop in Crop:
        etc = crop_et_mm(crop, climate)
        need = np.maximum(0.0, etc - np.where(etc > 0, eff_rain, 0.0))
        deficit = -STORED_SOIL_WATER_MM
        last = 0
        for r, rnd in enumerate(rounds):
            if len(depths) <= r:
                depths.append({})
            today = index[date(year, *rnd.start)]
            deficit += float(need[last:today].sum())
            last = today
            depth = rnd.fixed_mm.get(crop, 0.0)
            if crop in rnd.deficit_crops and deficit >= MIN_APPLICATION_MM:
                depth += min(deficit, MAX_APPLICATION_MM)
                deficit = 0.0  # what the cap leaves unmet is stress, not a debt carried on
            depths[r][crop] = depth
    return depths


# --- canal losses ----------------------------------------------------------------------------

KOSTYAKOV_A, KOSTYAKOV_M = 3.4, 0.5  # strongly permeable (light, sandy) soils
# Share of the unlined seepage a lining lets through.
LINING_SEEPAGE = {"混凝土板衬砌": 0.35, "混凝土U形槽": 0.2, "U形混凝土渠": 0.2, "浆砌石": 0.45,
                  "土渠": 1.0}
OPERATING_LOSS = {CanalLevel.MAIN: 0.04, CanalLevel.BRANCH: 0.08, CanalLevel.LATERAL: 0.05}


def seepage_per_km(design_capacity_m3s: float, lining: str) -> float:
    """Kostyakov: the share of a canal's flow lost per km, σ = β·A / (100·Q^m)."""
    beta = LINING_SEEPAGE.get(lining, 1.0)
    return beta * KOSTYAKOV_A / (100 * design_capacity_m3s**KOSTYAKOV_M)


def reach_efficiency(canal: Canal, chainage_km: float) -> float:
    """The share of a canal's inflow that reaches a point `chainage_km` down it."""
    sigma = seepage_per_km(canal.design_capacity_m3s, canal.lining)
    return (1 - OPERATING_LOSS[canal.level]) * math.exp(-sigma * max(chainage_km, 0.0))


# --- the plan --------------------------------------------------------------------------------


@dataclass
class Delivery:
    """A delivery point (turnout or offtake) as the planner sees it."""

    structure_id: int
    canal_id: int | None
    wua_id: int | None
    water_use: WaterUse
    chainage_km: float
    flow_m3s: float
    efficiency: float  # lifted → this turnout
    head_id: int | None = None  # the gate feeding this turnout's canal, if metered
    head_efficiency: float = 1.0  # lifted → that gate
    fields: list[tuple[Crop, float]] = field(default_factory=list)  # (crop, area in mu)


@dataclass
class YearPlan:
    year: int
    days: list[date]
    deliveries: list[Delivery]
    source_m3: npt.NDArray[np.int64]  # days × deliveries
    delivered_m3: npt.NDArray[np.int64]  # days × deliveries
    lifted_m3: npt.NDArray[np.int64]  # days
    heads: dict[int, npt.NDArray[np.int64]]  # head gate id → days
    ration: float  # agricultural depths as a share of the crops' full deficit depths
    residual_scale: float  # the last correction onto the seed's total (1 up to rounding)


def _spread(intervals: list[tuple[float, float, float]], n_days: int) -> FloatArray:
    """Daily volumes (m³) from (start hour, end hour, flow m³/s) intervals of one turnout."""
    daily = np.zeros(n_days)
    for start, end, flow in intervals:
        hour = start
        while hour < end:
            day = int(hour // 24)
            if day >= n_days:
                break
            step_end = min(end, (day + 1) * 24)
            daily[day] += flow * 3600 * (step_end - hour)
            hour = step_end
    return daily


def agriculture_intervals(deliveries: Sequence[Delivery], depths: list[dict[Crop, float]],
                          year: int, rounds: Sequence[Round] = ROUNDS
                          ) -> dict[int, list[tuple[float, float, float]]]:
    """Rotation: each branch runs its laterals in groups, one group after another, per round."""
    by_canal: dict[int | None, list[Delivery]] = defaultdict(list)
    for d in deliveries:
        by_canal[d.canal_id].append(d)
    intervals: dict[int, list[tuple[float, float, float]]] = defaultdict(list)
    for members in by_canal.values():
        members.sort(key=lambda d: d.chainage_km)
        free_at = 0.0
        for r, rnd in enumerate(rounds):
            start = max(free_at, (date(year, *rnd.start) - date(year, 1, 1)).days * 24.0
                        + ROUND_START_HOUR)
            # Alternate head-first and tail-first so no lateral always waits longest.
            order = members if r % 2 == 0 else members[::-1]
            for g in range(0, len(order), GROUP_SIZE):
                longest = 0.0
                for d in order[g:g + GROUP_SIZE]:
                    area = sum(a for _, a in d.fields)
                    if area <= 0:
                        continue
                    depth = sum(depths[r].get(c, 0.0) * a for c, a in d.fields) / area
                    if depth <= 0:
                        continue
                    hours = rotation_slot_hours(area_mu=area, net_depth_mm=depth,
                                                efficiency=BELOW_TURNOUT_EFFICIENCY,
                                                flow_m3s=d.flow_m3s)
                    intervals[d.structure_id].append((start, start + hours, d.flow_m3s))
                    longest = max(longest, hours)
                if longest > 0:
                    start += longest + CHANGEOVER_HOURS
            free_at = start
    return intervals


def _season_days(days: list[date], first: tuple[int, int], last: tuple[int, int]
                 ) -> FloatArray:
    year = days[0].year
    lo, hi = date(year, *first), date(year, *last)
    return np.array([1.0 if lo <= d <= hi else 0.0 for d in days])


PUMP_SEASON = ((4, 8), (11, 25))  # the river is ice-free and the rising main drained after


def industry_shape(days: list[date]) -> FloatArray:
    """A steady draw through the pumping season, 7 % less at weekends, a July maintenance stop."""
    shape = _season_days(days, *PUMP_SEASON)
    weekend = np.array([0.93 if d.weekday() >= 5 else 1.0 for d in days])
    stop = 1.0 - _season_days(days, (7, 14), (7, 16))
    return shape * weekend * stop


def ecology_shape(days: list[date]) -> FloatArray:
    """Spring and autumn-winter recharge of the wetland, a small summer flow for the forest belt."""
    spring = _season_days(days, (4, 15), (5, 10)) * 1.0
    summer = _season_days(days, (6, 1), (8, 31)) * 0.12
    autumn = _season_days(days, (10, 20), (11, 22)) * 1.0
    return spring + summer + autumn


def largest_remainder(total: int, values: FloatArray) -> npt.NDArray[np.int64]:
    """Round non-negative values to integers summing to `total`, keeping their proportions."""
    flat = values.ravel()
    scaled = flat * (total / flat.sum())
    floors = np.floor(scaled).astype(np.int64)
    short = int(total - floors.sum())
    if short:
        remainders = scaled - floors
        # Stable order: largest remainder first, earlier cell first among equals.
        order = np.lexsort((np.arange(flat.size), -remainders))
        floors[order[:short]] += 1
    return floors.reshape(values.shape)


def plan_year(deliveries: list[Delivery], year: int, climate: Climate | None = None
              ) -> YearPlan:
    """Daily source shares and deliveries for every delivery point, scaled onto the seed.

    Agriculture is scheduled twice: once at full deficit depths, to learn what they would
    lift, then with every depth scaled so that the rounds lift the seed's volume (the district
    rations to its allocation by shortening slots, not by throttling turnouts). What is left
    after that (slots cut off by the year's end, rounding) is scaled out exactly.
    """
    climate = climate or demo_climate(year)
    days = climate.days
    n = len(days)
    efficiency = np.array([d.efficiency for d in deliveries])
    agri = [i for i, d in enumerate(deliveries) if d.water_use == WaterUse.AGRICULTURE]
    depths = round_depths(climate)
    full = _agriculture_source(deliveries, agri, depths, year, n, efficiency)
    ration = USE_TOTALS_M3[WaterUse.AGRICULTURE] / float(full.sum()) if full.sum() else 1.0
    depths = [{crop: depth * ration for crop, depth in r.items()} for r in depths]
    source_raw = np.zeros((n, len(deliveries)))
    source_raw[:, agri] = _agriculture_source(deliveries, agri, depths, year, n, efficiency)
    for i, d in enumerate(deliveries):
        if d.water_use == WaterUse.INDUSTRY:
            source_raw[:, i] = industry_shape(days) * d.flow_m3s * 86_400 / d.efficiency
        elif d.water_use == WaterUse.ECOLOGY:
            source_raw[:, i] = ecology_shape(days) * d.flow_m3s * 86_400 / d.efficiency
    source = np.zeros((n, len(deliveries)), dtype=np.int64)
    for use, target in USE_TOTALS_M3.items():
        columns = [i for i, d in enumerate(deliveries) if d.water_use == use]
        if not columns or not source_raw[:, columns].sum() > 0:
            raise ValueError(f"the network has no {use.value} turnout to deliver to")
        source[:, columns] = largest_remainder(target, source_raw[:, columns])
    residual = USE_TOTALS_M3[WaterUse.AGRICULTURE] / float(source_raw[:, agri].sum())
    delivered = np.rint(source * efficiency).astype(np.int64)
    heads: dict[int, npt.NDArray[np.int64]] = {}
    by_head: dict[int, list[int]] = defaultdict(list)
    for i, d in enumerate(deliveries):
        if d.head_id is not None:
            by_head[d.head_id].append(i)
    for head_id, columns in by_head.items():
        head_eff = np.array([deliveries[i].head_efficiency for i in columns])
        heads[head_id] = np.rint((source[:, columns] * head_eff).sum(axis=1)).astype(np.int64)
    return YearPlan(year, days, deliveries, source, delivered, source.sum(axis=1), heads,
                    ration, residual)


def _agriculture_source(deliveries: list[Delivery], agri: list[int],
                        depths: list[dict[Crop, float]], year: int, n: int,
                        efficiency: FloatArray) -> FloatArray:
    """Lifted water (m³/day) for each agricultural turnout under the rotation, unrounded."""
    intervals = agriculture_intervals([deliveries[i] for i in agri], depths, year)
    block = np.zeros((n, len(agri)))
    for k, i in enumerate(agri):
        block[:, k] = _spread(intervals.get(deliveries[i].structure_id, []), n) / efficiency[i]
    return block


# --- reading the network, writing the table ---------------------------------------------------


def _chainage(structure: Structure, canal: Canal | None) -> float:
    if structure.chainage_km is not None:
        return structure.chainage_km
    return canal.length_km / 2 if canal else 0.0


def network_deliveries(session: Session) -> tuple[int, list[Delivery]]:
    """The pump station's id and every delivery point with its path efficiency."""
    canals = {c.id: c for c in session.scalars(select(Canal))}
    structure_list = list(session.scalars(select(Structure).order_by(Structure.code)))
    pumps = [s for s in structure_list if s.kind == StructureKind.PUMP_STATION]
    if len(pumps) != 1:
        raise ValueError(f"the simulation needs exactly one pump station, found {len(pumps)}")
    feeder = {s.outlet_canal_id: s for s in structure_list
              if s.outlet_canal_id is not None and not s.is_turnout}

    def efficiency_to(canal_id: int | None, chainage_km: float) -> float:
        """Lifted water reaching `chainage_km` down a canal: the product over the path up."""
        eta = 1.0
        while canal_id is not None:
            canal = canals[canal_id]
            eta *= reach_efficiency(canal, chainage_km)
            head = feeder.get(canal_id)
            if head is None or head.kind == StructureKind.PUMP_STATION:
                break
            chainage_km = _chainage(head, canals.get(head.canal_id) if head.canal_id else None)
            canal_id = head.canal_id
        return eta

    areas: dict[int, list[tuple[Crop, float]]] = defaultdict(list)
    for f in session.scalars(select(IrrigatedField)):
        if f.turnout_id is not None:
            areas[f.turnout_id].append((f.crop, f.area_mu))
    wua_of: dict[int, int] = {}
    for f in session.scalars(select(IrrigatedField)):
        if f.turnout_id is not None:
            wua_of.setdefault(f.turnout_id, f.wua_id)
    deliveries: list[Delivery] = []
    for s in structure_list:
        if not s.is_turnout or s.water_use is None:
            continue
        canal = canals.get(s.canal_id) if s.canal_id else None
        chainage = _chainage(s, canal)
        head = feeder.get(s.canal_id) if s.canal_id else None
        metered_head = head if head is not None and head.kind != StructureKind.PUMP_STATION \
            else None
        head_eff = (efficiency_to(metered_head.canal_id, _chainage(
            metered_head, canals.get(metered_head.canal_id) if metered_head.canal_id else None))
            if metered_head is not None else 1.0)
        outlet = canals.get(s.outlet_canal_id) if s.outlet_canal_id else None
        design = outlet.design_capacity_m3s if outlet else _config_flow(s)
        deliveries.append(Delivery(
            structure_id=s.id, canal_id=s.canal_id, wua_id=wua_of.get(s.id),
            water_use=s.water_use, chainage_km=chainage,
            flow_m3s=design * (TURNOUT_FLOW_SHARE if s.water_use == WaterUse.AGRICULTURE
                               else 0.75),
            efficiency=efficiency_to(s.canal_id, chainage),
            head_id=metered_head.id if metered_head else None, head_efficiency=head_eff,
            fields=areas.get(s.id, [])))
    return pumps[0].id, deliveries


def _config_flow(structure: Structure) -> float:
    import json

    config = json.loads(structure.config or "{}")
    return float(config.get("design_flow_m3s", 0.5))


@dataclass(frozen=True)
class SimulationSummary:
    year: int
    rows: int
    lifted_m3: int
    by_use_source_m3: dict[str, int]
    by_use_delivered_m3: dict[str, int]
    written: bool


def _summary(session: Session, year: int, written: bool) -> SimulationSummary:
    in_year = (DailyVolume.day >= date(year, 1, 1), DailyVolume.day <= date(year, 12, 31))
    rows = session.scalar(select(func.count(DailyVolume.id)).where(*in_year)) or 0
    lifted = session.scalar(
        select(func.sum(DailyVolume.volume_m3))
        .join(Structure, Structure.id == DailyVolume.structure_id)
        .where(*in_year, Structure.kind == StructureKind.PUMP_STATION)) or 0
    source: dict[str, int] = {}
    delivered: dict[str, int] = {}
    for use, src, vol in session.execute(
            select(DailyVolume.water_use, func.sum(DailyVolume.source_m3),
                   func.sum(DailyVolume.volume_m3))
            .where(*in_year, DailyVolume.water_use.is_not(None))
            .group_by(DailyVolume.water_use)):
        source[use.value] = int(src or 0)
        delivered[use.value] = int(vol or 0)
    return SimulationSummary(year, rows, int(lifted), source, delivered, written)


def simulate_year(runtime: Runtime, *, year: int = DEMO_YEAR, replace: bool = False,
                  actor: str = "seed") -> SimulationSummary:
    """Write the simulated year into irr_daily_volume (once; `replace` rewrites it)."""
    with runtime.session_factory() as session, session.begin():
        in_year = (DailyVolume.day >= date(year, 1, 1), DailyVolume.day <= date(year, 12, 31))
        existing = session.scalar(select(func.count(DailyVolume.id)).where(*in_year)) or 0
        if existing and not replace:
            return _summary(session, year, written=False)
        measured = session.scalar(select(func.count(DailyVolume.id)).where(
            *in_year, DailyVolume.source == VolumeSource.MEASURED)) or 0
        if measured:
            raise ValueError(f"{year} holds measured volumes; a simulation would hide them")
        session.execute(delete(DailyVolume).where(*in_year))
        pump_id, deliveries = network_deliveries(session)
        plan = plan_year(deliveries, year)
        rows = plan_rows(plan, pump_id, session)
        # Core, not ORM bulk insert: the ORM would split the rows into batches by which
        # columns are NULL, one round trip each.
        session.execute(insert(DAILY_VOLUME_TABLE), rows)
        summary = _summary(session, year, written=True)
        record(session, runtime=runtime, actor=actor, action="irrigation:daily_volume:simulate",
               object_type="irr_daily_volume", object_id=year,
               detail={"rows": len(rows), "lifted_m3": summary.lifted_m3,
                       "by_use_source_m3": summary.by_use_source_m3,
                       "ration": round(plan.ration, 4)})
    return summary


def plan_rows(plan: YearPlan, pump_id: int, session: Session) -> list[dict[str, Any]]:
    """The plan as irr_daily_volume rows; days without water get no row."""
    canal_of = {sid: cid for sid, cid in session.execute(
        select(Structure.id, Structure.canal_id))}
    common = {"source": VolumeSource.SIMULATED, "quality": int(QualityFlag.OK)}
    rows: list[dict[str, Any]] = []
    for t, day in enumerate(plan.days):
        if plan.lifted_m3[t] > 0:
            rows.append({"day": day, "structure_id": pump_id, "canal_id": None, "wua_id": None,
                         "water_use": None, "volume_m3": int(plan.lifted_m3[t]),
                         "source_m3": None, **common})
        for head_id, series in plan.heads.items():
            if series[t] > 0:
                rows.append({"day": day, "structure_id": head_id,
                             "canal_id": canal_of.get(head_id), "wua_id": None,
                             "water_use": None, "volume_m3": int(series[t]),
                             "source_m3": None, **common})
        for i, d in enumerate(plan.deliveries):
            if plan.source_m3[t, i] > 0:
                rows.append({"day": day, "structure_id": d.structure_id,
                             "canal_id": d.canal_id, "wua_id": d.wua_id,
                             "water_use": d.water_use, "volume_m3": int(plan.delivered_m3[t, i]),
                             "source_m3": int(plan.source_m3[t, i]), **common})
    return rows


def area_depth_check(plan: YearPlan) -> dict[str, float]:
    """Agricultural water per mu at the pump and at the turnouts (for docs and sanity tests)."""
    agri = [i for i, d in enumerate(plan.deliveries) if d.water_use == WaterUse.AGRICULTURE]
    area = sum(a for i in agri for _, a in plan.deliveries[i].fields)
    source = float(plan.source_m3[:, agri].sum())
    delivered = float(plan.delivered_m3[:, agri].sum())
    return {"area_mu": area, "source_m3_per_mu": source / area,
            "delivered_m3_per_mu": delivered / area,
            "delivered_mm": delivered / depth_mm_to_volume_m3(1.0, area)}
