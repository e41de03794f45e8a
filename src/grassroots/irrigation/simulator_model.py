"""The hydraulic state the simulated field devices report, and the faults injected into it.

Pure: no I/O beyond the plan source it is given. ``DistrictModel.sample(site, at, day)`` answers
what a structure's sensors read at simulated time ``at`` on a day that follows ``day``'s plan:

* flows follow the day's plan (``grassroots.irrigation.flow_plan``: the water account's planned
  daily volume as a mean flow) with a small diurnal swing and sensor noise; a structure without
  a plan of its own takes its share of its canal's flow (a canal-section flume: its design flow
  × the canal's load), and a smart hoist the flow of the flume it is metered by;
* a gate's upstream level rises with the load on the canal it sits on, between its configured
  ``upstream_min_m`` and ``upstream_max_m``; its opening is the one at which the undershot-gate
  rating (``water.hydraulics.GateRating``) passes the flow in free flow, and its downstream level
  stays under the depth conjugate to the jet, so the gate's own reading is consistent;
* a Parshall flume's head is its flow put back through the flume's free-flow equation
  (``water.hydraulics.ParshallFlume``), inverted by bisection;
* levels at gauges, the pump station's power, soil moisture after irrigation, weather and a
  battery voltage that drops slowly over simulated time complete the picture.

Faults (``Faults``) are drawn per structure at ``rate_per_hour`` per wall-clock hour: a sensor
stuck at its value, a spike of one to three readings, a gate drifting off its setting (flow far
from plan) and the device going offline. Their durations are in wall-clock seconds, because the
platform judges liveness in real time whatever the simulation's speed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import Any

from grassroots.irrigation.network.models import StructureKind
from grassroots.irrigation.water.hydraulics import (
    FlumeForm,
    G,
    GateRating,
    ParshallFlume,
    sequent_depth_m,
)
from grassroots.irrigation.water.volumes import ACCOUNTING_TZ

PlanSource = Callable[[date, date], Mapping[date, Mapping[int, float]]]

# A structure without a plan anywhere in the database runs at this share of its design flow.
NO_PLAN_LOAD = 0.6
DIURNAL_SWING = 0.04  # ± share of the flow over a day, highest mid-afternoon
NOISE = 0.015  # ± share of the flow, sensor and turbulence
LEVEL_WAVE_M = 0.015
PLAN_WINDOW_DAYS = 31  # plans kept around the simulated day (soil moisture looks back)
SOIL_MEMORY_DAYS = 6.0  # e-folding time of the root zone drying after a watering
BATTERY_START_V = (12.5, 13.3)
BATTERY_DROP_V_PER_H = (0.002, 0.008)
WEAK_BATTERY_DROP_V_PER_H = 0.04  # one device per district, so low-battery alarms show up
BATTERY_FLOOR_V = 10.8
PUMP_EFFICIENCY = 0.78
PUMP_FRICTION_M_PER_M3S2 = 0.1
# Monthly mean air temperature (°C) of the Alxa Left Banner river plain, January first.
MONTHLY_TEMPERATURE_C = (-9.0, -4.0, 3.0, 11.0, 18.0, 23.0, 25.0, 23.0, 17.0, 9.0, 1.0, -7.0)
MONTHLY_HUMIDITY_PCT = (45, 38, 30, 25, 28, 35, 45, 52, 48, 42, 44, 47)
SOIL_DEPTHS_CM = (10, 20, 40, 60)

MAINS_POWERED = frozenset({StructureKind.PUMP_STATION})


@dataclass(frozen=True, slots=True)
class CanalInfo:
    id: int
    code: str
    design_capacity_m3s: float


@dataclass(frozen=True, slots=True)
class Site:
    """A structure as the simulator sees it."""

    id: int
    code: str
    kind: StructureKind
    lon: float
    lat: float
    config: Mapping[str, Any] = field(default_factory=dict)
    canal_id: int | None = None
    outlet_canal_id: int | None = None
    is_turnout: bool = False
    sl651_address: str | None = None
    mqtt_device_id: str | None = None
    modbus_host: str | None = None
    modbus_port: int | None = None
    modbus_unit: int | None = None

    def number(self, key: str, default: float) -> float:
        value = self.config.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        return default


def local(moment: datetime) -> datetime:
    return moment.astimezone(ACCOUNTING_TZ)


def invert_flume(flume: ParshallFlume, q_m3s: float, *, tolerance_m: float = 1e-6) -> float:
    """The upstream head at which the flume's free-flow equation passes ``q_m3s``."""
    if q_m3s <= 0:
        return 0.0
    low, high = 0.0, max(flume.rated_max_head_m, 0.1)
    while flume.free_flow_m3s(high) < q_m3s:
        high *= 2
    while high - low > tolerance_m:
        middle = (low + high) / 2
        if flume.free_flow_m3s(middle) < q_m3s:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def gate_opening(rating: GateRating, q_m3s: float, upstream_m: float) -> float:
    """The opening at which the gate passes ``q_m3s`` in free flow (Q = Cd·b·e·√(2g·h1))."""
    if q_m3s <= 0 or upstream_m <= 0:
        return 0.0
    return q_m3s / (rating.discharge_coefficient * rating.width_m * math.sqrt(2 * G * upstream_m))


@dataclass(frozen=True, slots=True)
class _Battery:
    start_v: float
    drop_v_per_h: float


class DistrictModel:
    """What every structure's sensors read at a simulated moment."""

    def __init__(self, sites: Sequence[Site], canals: Iterable[CanalInfo], plans: PlanSource, *,
                 sim_start: datetime, seed: int = 651) -> None:
        self.sites = {site.id: site for site in sites}
        self.canals = {canal.id: canal for canal in canals}
        self.sim_start = sim_start
        self._plan_source = plans
        self._plans: dict[date, dict[int, float]] = {}
        self._planned_ids: set[int] = set()
        rng = random.Random(seed)
        by_code = {site.code: site for site in sites}
        self._feeder = {s.outlet_canal_id: s for s in sites if s.outlet_canal_id is not None
                        and s.kind != StructureKind.PARSHALL_FLUME}
        # A hoist is metered by the flume that carries its code: H-B1-L04 by F-B1-L04.
        self._meter = {s.id: by_code[f"F-{s.code[2:]}"] for s in sites
                       if s.kind == StructureKind.SMART_HOIST and f"F-{s.code[2:]}" in by_code}
        self._phases = {s.id: (rng.uniform(0, 2 * math.pi), rng.uniform(0, 2 * math.pi))
                        for s in sites}
        battery_sites = [s for s in sites if s.kind not in MAINS_POWERED]
        self._batteries = {s.id: _Battery(rng.uniform(*BATTERY_START_V),
                                          rng.uniform(*BATTERY_DROP_V_PER_H))
                           for s in battery_sites}
        self.weak_battery_id: int | None = None
        if battery_sites:
            self.weak_battery_id = rng.choice(battery_sites).id
            self._batteries[self.weak_battery_id] = _Battery(rng.uniform(12.3, 12.6),
                                                             WEAK_BATTERY_DROP_V_PER_H)
        self._flumes: dict[int, ParshallFlume] = {}
        for s in sites:
            if s.kind == StructureKind.PARSHALL_FLUME:
                width = s.number("throat_width_m", 0.6)
                form = s.config.get("equation")
                self._flumes[s.id] = ParshallFlume(
                    width, form=FlumeForm(form) if isinstance(form, str) else None)
        turnouts = [s for s in sites if s.is_turnout]
        self._soil_turnout = {
            s.id: min(turnouts, key=lambda t: (t.lon - s.lon) ** 2 + (t.lat - s.lat) ** 2).id
            for s in sites if s.kind == StructureKind.SOIL_MOISTURE and turnouts}

    # ------------------------------------------------------------------ plan

    def load_plans(self, first: date, last: date) -> None:
        """Fetch the plans of a span of days."""
        self.apply_plans(self._plan_source(first, last))

    def apply_plans(self, plans: Mapping[date, Mapping[int, float]]) -> None:
        """Keep plans fetched elsewhere (the simulator fetches ahead, off the event loop)."""
        for day, flows in plans.items():
            self._plans[day] = dict(flows)
            self._planned_ids.update(flows)

    def plans_cached(self, first: date, last: date) -> bool:
        return all(first + timedelta(days=i) in self._plans
                   for i in range((last - first).days + 1))

    def plan(self, day: date) -> dict[int, float]:
        if day not in self._plans:
            self.load_plans(day - timedelta(days=PLAN_WINDOW_DAYS - 1), day + timedelta(days=1))
        return self._plans[day]

    @property
    def has_plans(self) -> bool:
        return bool(self._planned_ids)

    def planned_pump_flow(self, day: date) -> float:
        pumps = [s.id for s in self.sites.values() if s.kind == StructureKind.PUMP_STATION]
        flows = self.plan(day)
        return sum(flows.get(p, 0.0) for p in pumps)

    # ------------------------------------------------------------------ flows

    def base_flow(self, site: Site, day: date) -> float | None:
        """The day's mean flow through a structure, before the diurnal swing and noise."""
        flows = self.plan(day)
        if site.id in flows:
            return flows[site.id]
        if site.id in self._meter:
            return self.base_flow(self._meter[site.id], day)
        if site.kind == StructureKind.PARSHALL_FLUME:
            load = self.canal_load(site.canal_id, day)
            return None if load is None else load * site.number("design_flow_m3s", 0.5)
        if not self.has_plans and site.outlet_canal_id is not None:
            canal = self.canals.get(site.outlet_canal_id)
            design = site.number("design_flow_m3s",
                                 canal.design_capacity_m3s if canal else 0.0)
            return NO_PLAN_LOAD * design
        if site.kind == StructureKind.SMART_HOIST and site.canal_id is not None:
            # A check gate passes what its canal carries at that point.
            load = self.canal_load(site.canal_id, day)
            return None if load is None else load * site.number("design_flow_m3s", 1.0)
        return None

    def canal_load(self, canal_id: int | None, day: date) -> float | None:
        """The canal's flow as a share of its design capacity (0 dry, 1 full)."""
        if canal_id is None:
            return None
        canal, feeder = self.canals.get(canal_id), self._feeder.get(canal_id)
        if canal is None or feeder is None or canal.design_capacity_m3s <= 0:
            return None
        flow = self.base_flow(feeder, day)
        return None if flow is None else max(0.0, flow / canal.design_capacity_m3s)

    def modulation(self, site: Site, at: datetime) -> float:
        hours = (at - self.sim_start).total_seconds() / 3600
        hour = local(at).hour + local(at).minute / 60
        first, second = self._phases.get(site.id, (0.0, 0.0))
        noise = (math.sin(2 * math.pi * hours / 1.7 + first)
                 + 0.5 * math.sin(2 * math.pi * hours / 0.37 + second)) / 1.5
        return (1 + DIURNAL_SWING * math.sin(2 * math.pi * (hour - 9) / 24)) * (1 + NOISE * noise)

    def flow(self, site: Site, at: datetime, day: date | None = None) -> float | None:
        base = self.base_flow(site, day or local(at).date())
        return None if base is None else max(0.0, base * self.modulation(site, at))

    def _wave(self, site: Site, at: datetime) -> float:
        hours = (at - self.sim_start).total_seconds() / 3600
        first, _ = self._phases.get(site.id, (0.0, 0.0))
        return LEVEL_WAVE_M * math.sin(2 * math.pi * hours / 0.8 + first)

    # ------------------------------------------------------------------ per kind

    def sample(self, site: Site, at: datetime, day: date | None = None) -> dict[str, float]:
        """Every quantity the structure's device measures at simulated time ``at``, following
        the plan of ``day`` (by default the day of ``at``)."""
        kind = site.kind
        day = day or local(at).date()
        if kind in (StructureKind.INTEGRATED_GATE, StructureKind.SMART_HOIST):
            values = self._gate(site, at, day)
        elif kind == StructureKind.PARSHALL_FLUME:
            values = self._flume(site, at, day)
        elif kind == StructureKind.LEVEL_GAUGE:
            values = {"water_level_m": self._gauge_level(site, at, day)}
        elif kind == StructureKind.PUMP_STATION:
            values = self._pump(site, at, day)
        elif kind == StructureKind.SOIL_MOISTURE:
            values = self._soil(site, at, day)
        elif kind == StructureKind.WEATHER:
            values = self._weather(site, at)
        else:
            values = {}
        voltage = self.voltage(site, at)
        if voltage is not None:
            values["voltage_v"] = voltage
        return values

    def _gate(self, site: Site, at: datetime, day: date) -> dict[str, float]:
        rating = GateRating(site.number("gate_width_m", 1.0),
                            site.number("discharge_coefficient", 0.6))
        low, high = site.number("upstream_min_m", 0.5), site.number("upstream_max_m", 1.5)
        load = self.canal_load(site.canal_id, day)
        if load is None:  # no feeder known: a canal at its usual half load
            load = 0.5
        if load <= 0.01:
            upstream = 0.02  # a dry canal bed, a puddle at the sill
        else:
            upstream = low + (high - low) * (0.45 + 0.35 * min(load, 1.0)) + self._wave(site, at)
        q = self.flow(site, at, day) or 0.0
        opening = min(gate_opening(rating, q, upstream), site.number("max_opening_m", 1.0),
                      0.95 * upstream)
        q = rating.discharge_coefficient * rating.width_m * opening * math.sqrt(
            2 * G * upstream) if opening > 0 else 0.0
        if q > 0:
            design = site.number("design_flow_m3s", max(q, 0.1))
            downstream = min(0.55 * upstream * math.sqrt(q / design),
                             0.9 * sequent_depth_m(rating.contraction_coefficient * opening,
                                                   q, rating.width_m))
        else:
            downstream = 0.0
        values = {"gate_opening_m": round(opening, 3),
                  "water_level_upstream_m": round(upstream, 3)}
        if site.kind == StructureKind.INTEGRATED_GATE:
            values["water_level_downstream_m"] = round(downstream, 3)
            values["flow_m3s"] = round(q, 4)
        return values

    def _flume(self, site: Site, at: datetime, day: date) -> dict[str, float]:
        q = self.flow(site, at, day) or 0.0
        head = invert_flume(self._flumes[site.id], q)
        return {"head_m": round(head, 4), "flow_m3s": round(q, 4)}

    def _gauge_level(self, site: Site, at: datetime, day: date) -> float:
        high = site.config.get("alarm_high_m")
        low = site.config.get("alarm_low_m")
        if isinstance(high, int | float):
            load = self.canal_load(site.canal_id, day)
            load = 0.5 if load is None else min(load, 1.0)
            return round(float(high) * (0.25 + 0.55 * load) + self._wave(site, at), 3)
        season = math.sin(math.pi * (day.timetuple().tm_yday - 100) / 265) ** 2
        base = float(low) + 1.2 if isinstance(low, int | float) else 1.0
        return round(base + 0.5 * season + self._wave(site, at), 3)

    def _pump(self, site: Site, at: datetime, day: date) -> dict[str, float]:
        q = self.flow(site, at, day) or 0.0
        lift = site.number("static_lift_m", 68.0) + PUMP_FRICTION_M_PER_M3S2 * q * q
        power = 9.81 * q * lift / PUMP_EFFICIENCY
        forebay = site.number("forebay_min_level_m", 1.2) + 0.9 + self._wave(site, at)
        return {"flow_m3s": round(q, 4), "power_kw": round(power, 1),
                "water_level_m": round(forebay, 3)}

    def days_since_watering(self, site: Site, at: datetime, day: date) -> float:
        turnout = self._soil_turnout.get(site.id)
        if turnout is None:
            return 3.0
        for back in range(PLAN_WINDOW_DAYS):
            if self.plan(day - timedelta(days=back)).get(turnout, 0.0) > 0:
                return back + local(at).hour / 24
        return float(PLAN_WINDOW_DAYS)

    def _soil(self, site: Site, at: datetime, day: date) -> dict[str, float]:
        refill = site.number("refill_point_pct", 18.0)
        capacity = site.number("field_capacity_pct", 32.0)
        depths = site.config.get("depths_cm") or SOIL_DEPTHS_CM
        wetness = math.exp(-self.days_since_watering(site, at, day) / SOIL_MEMORY_DAYS)
        values = {}
        for depth in depths:
            # Deeper layers dry more slowly and never quite as far.
            kept = wetness ** (1 / (1 + float(depth) / 40))
            theta = refill + (capacity - refill) * (0.1 + 0.85 * kept) + self._wave(site, at)
            values[f"soil_moisture_pct_{int(depth)}cm"] = round(theta, 1)
        return values

    def _weather(self, site: Site, at: datetime) -> dict[str, float]:
        moment = local(at)
        hour = moment.hour + moment.minute / 60
        daily = math.sin(2 * math.pi * (hour - 9) / 24)  # lowest near dawn, highest at 15:00
        month = moment.month - 1
        temperature = MONTHLY_TEMPERATURE_C[month] + 7.0 * daily + 2 * self._wave(site, at)
        humidity = MONTHLY_HUMIDITY_PCT[month] - 15.0 * daily
        wind = 2.8 + 1.6 * max(daily, 0.0) + 20 * abs(self._wave(site, at))
        return {"air_temperature_c": round(temperature, 1),
                "humidity_pct": round(min(max(humidity, 5.0), 100.0), 1),
                "wind_speed_ms": round(wind, 1), "rain_mm": 0.0}

    def voltage(self, site: Site, at: datetime) -> float | None:
        battery = self._batteries.get(site.id)
        if battery is None:
            return None
        hours = max(0.0, (at - self.sim_start).total_seconds() / 3600)
        moment = local(at)
        sun = max(0.0, math.sin(math.pi * (moment.hour + moment.minute / 60 - 7) / 12))
        value = battery.start_v - battery.drop_v_per_h * hours + 0.05 * sun
        return round(max(BATTERY_FLOOR_V, value), 2)


# --------------------------------------------------------------------------- faults


class FaultKind(StrEnum):
    STUCK = "stuck"  # a sensor keeps sending the value it had
    SPIKE = "spike"  # one to three readings far off
    DRIFT = "drift"  # a gate or meter off its setting: flow far from plan
    OFFLINE = "offline"  # the device stops talking


FAULT_WEIGHTS: Mapping[FaultKind, float] = {FaultKind.STUCK: 0.3, FaultKind.SPIKE: 0.3,
                                            FaultKind.DRIFT: 0.2, FaultKind.OFFLINE: 0.2}
STUCK_S = (600.0, 2400.0)
DRIFT_S = (600.0, 1800.0)
OFFLINE_S = (900.0, 2700.0)
_LEVELS = ("water_level_upstream_m", "water_level_m", "head_m")


@dataclass(slots=True)
class Fault:
    kind: FaultKind
    until: float  # wall-clock (monotonic) seconds; a spike ends on its count instead
    quantity: str | None = None
    value: float | None = None
    factor: float = 1.0
    remaining: int = 0


class Faults:
    """Faults per structure: drawn at random, or forced (tests, demos)."""

    def __init__(self, *, rate_per_hour: float, seed: int = 651) -> None:
        self.rate_per_hour = rate_per_hour
        self._rng = random.Random(seed ^ 0x5EED)
        self._active: dict[int, Fault] = {}
        self.started: dict[FaultKind, int] = dict.fromkeys(FaultKind, 0)

    def tick(self, site_ids: Iterable[int], *, now: float, dt_s: float) -> list[tuple[int, Fault]]:
        """End expired faults and maybe start new ones; returns the ones started."""
        for site_id, fault in list(self._active.items()):
            if (fault.kind != FaultKind.SPIKE and now >= fault.until) or (
                    fault.kind == FaultKind.SPIKE and fault.remaining <= 0):
                del self._active[site_id]
        started: list[tuple[int, Fault]] = []
        if self.rate_per_hour <= 0:
            return started
        chance = 1 - math.exp(-self.rate_per_hour * dt_s / 3600)
        for site_id in site_ids:
            if site_id not in self._active and self._rng.random() < chance:
                kind = self._rng.choices(list(FAULT_WEIGHTS), weights=list(
                    FAULT_WEIGHTS.values()))[0]
                started.append((site_id, self.start(site_id, kind, now=now)))
        return started

    def start(self, site_id: int, kind: FaultKind, *, now: float,
              duration_s: float | None = None) -> Fault:
        span = {FaultKind.STUCK: STUCK_S, FaultKind.DRIFT: DRIFT_S,
                FaultKind.OFFLINE: OFFLINE_S}.get(kind, (0.0, 0.0))
        until = now + (duration_s if duration_s is not None else self._rng.uniform(*span))
        fault = Fault(kind, until)
        if kind == FaultKind.SPIKE:
            fault.remaining = self._rng.randint(1, 3)
        if kind == FaultKind.DRIFT:
            fault.factor = self._rng.choice((self._rng.uniform(1.5, 1.9),
                                             self._rng.uniform(0.2, 0.5)))
        self._active[site_id] = fault
        self.started[kind] += 1
        return fault

    def active(self, site_id: int) -> Fault | None:
        return self._active.get(site_id)

    def offline(self, site_id: int, *, now: float) -> bool:
        fault = self._active.get(site_id)
        return fault is not None and fault.kind == FaultKind.OFFLINE and now < fault.until

    def apply(self, site_id: int, values: dict[str, float], *, now: float) -> dict[str, float]:
        """The readings as the faulty sensor sends them."""
        fault = self._active.get(site_id)
        if fault is None or not values:
            return values
        values = dict(values)
        if fault.kind == FaultKind.STUCK and now < fault.until:
            if fault.quantity is None:
                candidates = sorted(q for q in values if q != "voltage_v") or sorted(values)
                fault.quantity = self._rng.choice(candidates)
                fault.value = values.get(fault.quantity)
            if fault.quantity in values and fault.value is not None:
                values[fault.quantity] = fault.value
        elif fault.kind == FaultKind.SPIKE and fault.remaining > 0:
            if fault.quantity is None:
                levels = [q for q in _LEVELS if q in values]
                fault.quantity = self._rng.choice(levels or sorted(values))
            quantity = fault.quantity
            if quantity in values:
                value = values[quantity]
                values[quantity] = round(value + max(0.5, 0.6 * abs(value)), 3) if (
                    quantity in _LEVELS) else round(value * 3 + 0.2, 3)
                fault.remaining -= 1
        elif fault.kind == FaultKind.DRIFT and now < fault.until:
            for quantity in ("flow_m3s", "gate_opening_m"):
                if quantity in values:
                    values[quantity] = round(values[quantity] * fault.factor, 4)
        return values
