"""The demo district: a Yellow-River lift-irrigation district in Alxa League, Inner Mongolia.

The counts follow the published figures (DOMAIN.md §1): one pump station, 39 integrated gate
boxes, 13 smart hoists, 27 Parshall flumes, 2 soil-moisture and 2 weather stations, 85,000 mu,
and a year in which the station lifted 51.858 million m³ (agriculture 39.135, industry 8.778,
ecology 3.945). The layout, names and device addresses are made up.

Where: the pump station stands on the Yellow River's west bank in Alxa Left Banner, between
Shizuishan and Wuhai (about 106.75 E, 39.40 N), lifting onto the desert terrace to the west.
(Bayanhot, the banner seat at 105.67 E, 38.83 N, lies 70 km from the river behind the Helan
Shan, so the district is placed on the river instead.)

Layout, in metres east/north of the pump station: a rising main to the outlet basin, a 32 km
main canal (总干渠) running west with an industrial-park offtake near its head and a
wetland/shelter-belt offtake at its tail, four check gates, and six branch canals (支渠)
leaving it alternately south and north. Each branch feeds 6 or 7 laterals (斗渠) that run east
or west from it; every lateral head is a metered turnout (斗口): 33 integrated gate boxes, and
7 smart hoists each metered by a Parshall flume in the turnout. The branch heads are integrated
gate boxes; the other flumes measure canal sections (main head, above each check, main tail,
branch heads and tails) for loss studies. Fields are rectangles of 500 m depth strung along
both sides of their lateral, one water-user association per branch.

Idempotent: objects are looked up by code and only the missing ones are created; the simulated
year is written once (`grassroots.irrigation.simulate_year`).
"""

from __future__ import annotations

import itertools
import math
import random
import sys
from typing import Any

from grassroots.irrigation.network import actions
from grassroots.irrigation.network.models import (
    CanalLevel,
    Crop,
    StructureKind,
    WaterUse,
)
from grassroots.irrigation.network.schemas import (
    CanalIn,
    FieldIn,
    LonLat,
    NetworkIn,
    PumpUnitIn,
    StructureIn,
    WuaIn,
)
from grassroots.irrigation.water.hydraulics import ParshallFlume
from grassroots.kernel.regions.geo import metres_per_degree
from grassroots.runtime import Runtime

ORIGIN_LON, ORIGIN_LAT = 106.752, 39.398  # the pump station, on the river's west bank
SEED = 651  # every random choice below comes from one random.Random(SEED): deterministic
ACTOR = "seed"

TOTAL_AREA_MU = 85_000
PUMP_STATION = "PS-01"
MAIN_CANAL = "MC"
RISING_MAIN_END = (-1800.0, 300.0)
MAIN_VERTICES = [RISING_MAIN_END, (-9000.0, 1300.0), (-17000.0, 700.0), (-25000.0, 1600.0),
                 (-33400.0, 1000.0)]
INDUSTRY_OFFTAKE_KM = 2.6
ECOLOGY_OFFTAKE_KM = 31.4
CHECK_GATES_KM = (7.3, 11.9, 16.5, 21.1)
BRANCH_HEADS_KM = (5.0, 9.6, 14.2, 18.8, 23.4, 28.0)
LATERALS_PER_BRANCH = (7, 7, 7, 7, 6, 6)
BRANCH_CAPACITY_M3S = (1.4, 1.4, 1.3, 1.3, 1.2, 1.1)
BRANCH_LINING = ("混凝土U形槽", "混凝土U形槽", "混凝土板衬砌", "混凝土板衬砌", "浆砌石", "土渠")
FIRST_LATERAL_KM = 0.8
LATERAL_SPACING_KM = 1.25
FIELD_DEPTH_M = 500.0
# Laterals metered by a smart hoist + Parshall flume instead of an integrated gate box.
HOIST_LATERALS = frozenset({(1, 4), (1, 7), (2, 7), (3, 7), (4, 7), (5, 6), (6, 6)})
CROP_SHARES = ((Crop.MAIZE, 0.42), (Crop.SUNFLOWER, 0.22), (Crop.ALFALFA, 0.20),
               (Crop.SPRING_WHEAT, 0.16))
# Metric Parshall sizes (m) and the 10 ft flume for the main canal's head.
FLUME_SIZES_M = (0.3, 0.45, 0.6, 0.75, 0.9, 1.2, 1.5, 1.8, 2.4, 3.048)
NUMERALS = "一二三四五六七八九十"
WUA_NAMES = ("巴音乌素", "沙日布拉格", "宝日呼都格", "额尔很", "图克木", "乌兰布和")
SL651_PREFIX = "0015"  # this district's prefix in the made-up SL 651 address plan
MODBUS_HOST = "127.0.0.1"  # the Modbus simulator (`grassroots simulate` or tests)
MODBUS_BASE_PORT = 15020


class _Local:
    """Metres east/north of the pump station to WGS-84."""

    def __init__(self) -> None:
        self.per_lon, self.per_lat = metres_per_degree(ORIGIN_LAT)

    def lonlat(self, x: float, y: float) -> LonLat:
        return (round(ORIGIN_LON + x / self.per_lon, 6), round(ORIGIN_LAT + y / self.per_lat, 6))


def _polyline_length(points: list[tuple[float, float]]) -> float:
    return sum(math.dist(a, b) for a, b in itertools.pairwise(points))


def _along(points: list[tuple[float, float]], distance_m: float) -> tuple[float, float]:
    """The point `distance_m` along a polyline."""
    left = distance_m
    for a, b in itertools.pairwise(points):
        step = math.dist(a, b)
        if left <= step:
            t = left / step
            return (a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1]))
        left -= step
    return points[-1]


def _largest_remainder(total: int, weights: list[float]) -> list[int]:
    """Integers proportional to weights that add up to `total` exactly."""
    scale = total / sum(weights)
    raw = [w * scale for w in weights]
    floors = [math.floor(r) for r in raw]
    short = total - sum(floors)
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - floors[i]), i))
    for i in order[:short]:
        floors[i] += 1
    return floors


def flume_size_m(design_flow_m3s: float) -> float:
    """The smallest stock throat width whose rated maximum flow covers 1.25 × the design flow."""
    for width in FLUME_SIZES_M:
        flume = ParshallFlume(width)
        if flume.free_flow_m3s(flume.rated_max_head_m) >= 1.25 * design_flow_m3s:
            return width
    raise ValueError(f"no stock flume for {design_flow_m3s} m³/s")


def _flume_config(design_flow_m3s: float) -> dict[str, Any]:
    width = flume_size_m(design_flow_m3s)
    flume = ParshallFlume(width)
    return {"throat_width_m": width, "equation": flume.equation.value,
            "rated_max_head_m": flume.rated_max_head_m,
            "rated_max_flow_m3s": round(flume.free_flow_m3s(flume.rated_max_head_m), 3),
            "design_flow_m3s": design_flow_m3s, "free_flow_limit": flume.free_flow_limit}


def _gate_config(rng: random.Random, width_m: float, max_opening_m: float,
                 design_flow_m3s: float, upstream_max_m: float) -> dict[str, Any]:
    return {"gate_width_m": width_m, "discharge_coefficient": round(rng.uniform(0.58, 0.64), 3),
            "max_opening_m": max_opening_m, "design_flow_m3s": design_flow_m3s,
            "max_step_m": 0.05, "upstream_min_m": round(0.35 * upstream_max_m, 2),
            "upstream_max_m": upstream_max_m, "remote": True}


class _Addresses:
    def __init__(self) -> None:
        self.next = {"01": 1, "02": 1, "03": 1}

    def sl651(self, kind: StructureKind) -> str:
        group = {StructureKind.INTEGRATED_GATE: "01", StructureKind.PARSHALL_FLUME: "02"}.get(
            kind, "03")
        number = self.next[group]
        self.next[group] += 1
        return f"{SL651_PREFIX}{group}{number:04d}"


def build_demo_network() -> NetworkIn:
    """The demo district as the input of one network import (pure and deterministic)."""
    local = _Local()
    rng = random.Random(SEED)
    net = NetworkIn()
    addresses = _Addresses()
    main_len_km = round(_polyline_length(MAIN_VERTICES) / 1000, 2)

    def main_point(km: float) -> tuple[float, float]:
        return _along(MAIN_VERTICES, km * 1000)

    def add(kind: StructureKind, code: str, name: str, xy: tuple[float, float], **extra: Any
            ) -> None:
        values: dict[str, Any] = {"code": code, "name": name, "kind": kind,
                                  "lon": local.lonlat(*xy)[0], "lat": local.lonlat(*xy)[1]}
        if kind in (StructureKind.INTEGRATED_GATE, StructureKind.PARSHALL_FLUME,
                    StructureKind.LEVEL_GAUGE):
            values["sl651_address"] = addresses.sl651(kind)
        else:
            values["mqtt_device_id"] = f"alxa-yr-{code.lower()}"
        values.update(extra)
        net.structures.append(StructureIn(**values))

    # --- main canal, pump station, offtakes, checks ---
    net.canals.append(CanalIn(code=MAIN_CANAL, name="总干渠", level=CanalLevel.MAIN,
                              length_km=main_len_km, design_capacity_m3s=6.5,
                              lining="混凝土板衬砌",
                              path=[local.lonlat(*p) for p in MAIN_VERTICES]))
    add(StructureKind.PUMP_STATION, PUMP_STATION, "黄河扬水泵站", (0.0, 0.0),
        outlet_canal_code=MAIN_CANAL, modbus_host=MODBUS_HOST, modbus_port=MODBUS_BASE_PORT,
        modbus_unit=1,
        config={"rising_main_m": round(math.dist((0, 0), RISING_MAIN_END)),
                "static_lift_m": 68.0, "forebay_min_level_m": 1.2,
                "outlet_basin_max_level_m": 2.6})
    # 4 large and 2 small sets, 8 m³/s installed, at about 68 m static lift plus losses.
    net.pump_units[PUMP_STATION] = [
        *(PumpUnitIn(number=n, rated_flow_m3s=1.6, rated_head_m=72.0, rated_power_kw=1600.0)
          for n in (1, 2, 3, 4)),
        *(PumpUnitIn(number=n, rated_flow_m3s=0.8, rated_head_m=72.0, rated_power_kw=800.0)
          for n in (5, 6))]
    add(StructureKind.LEVEL_GAUGE, "LG-RIVER", "黄河取水口水位计", (150.0, -40.0),
        config={"datum": "1985国家高程基准", "alarm_low_m": 1089.2})
    add(StructureKind.LEVEL_GAUGE, "LG-BASIN", "出水池水位计", RISING_MAIN_END,
        canal_code=MAIN_CANAL, chainage_km=0.0, config={"alarm_high_m": 2.6})
    add(StructureKind.PARSHALL_FLUME, "F-MC-00", "总干渠渠首量水槽", main_point(0.3),
        canal_code=MAIN_CANAL, chainage_km=0.3, config=_flume_config(6.5))
    add(StructureKind.SMART_HOIST, "H-IND", "工业园区分水闸", main_point(INDUSTRY_OFFTAKE_KM),
        canal_code=MAIN_CANAL, chainage_km=INDUSTRY_OFFTAKE_KM,
        config=_gate_config(rng, 1.0, 0.6, 0.6, 1.6))
    ind = main_point(INDUSTRY_OFFTAKE_KM)
    add(StructureKind.PARSHALL_FLUME, "F-IND", "工业园区供水计量槽", (ind[0], ind[1] + 40),
        canal_code=MAIN_CANAL, chainage_km=INDUSTRY_OFFTAKE_KM, is_turnout=True,
        water_use=WaterUse.INDUSTRY, config=_flume_config(0.6))
    for n, km in enumerate(CHECK_GATES_KM, start=1):
        add(StructureKind.PARSHALL_FLUME, f"F-MC-{n:02d}", f"总干渠{n}号节制闸上游量水槽",
            main_point(km - 0.2), canal_code=MAIN_CANAL, chainage_km=round(km - 0.2, 2),
            config=_flume_config(6.5 - 1.1 * n))
        add(StructureKind.SMART_HOIST, f"H-MC-{n:02d}", f"总干渠{n}号节制闸", main_point(km),
            canal_code=MAIN_CANAL, chainage_km=km,
            config=_gate_config(rng, 2.5, 1.2, 6.5 - 1.1 * n, 2.2))
    add(StructureKind.SMART_HOIST, "H-ECO", "生态补水分水闸", main_point(ECOLOGY_OFFTAKE_KM),
        canal_code=MAIN_CANAL, chainage_km=ECOLOGY_OFFTAKE_KM,
        config=_gate_config(rng, 1.0, 0.6, 0.7, 1.4))
    eco = main_point(ECOLOGY_OFFTAKE_KM)
    add(StructureKind.PARSHALL_FLUME, "F-ECO", "湿地与防护林带生态补水计量槽",
        (eco[0], eco[1] - 40), canal_code=MAIN_CANAL, chainage_km=ECOLOGY_OFFTAKE_KM,
        is_turnout=True, water_use=WaterUse.ECOLOGY, config=_flume_config(0.7))
    tail_km = round(main_len_km - 0.3, 2)
    add(StructureKind.PARSHALL_FLUME, "F-MC-END", "总干渠退水量水槽", main_point(tail_km),
        canal_code=MAIN_CANAL, chainage_km=tail_km, config=_flume_config(0.7))
    add(StructureKind.LEVEL_GAUGE, "LG-MC-END", "总干渠末端水位计", main_point(main_len_km - 0.1),
        canal_code=MAIN_CANAL, chainage_km=round(main_len_km - 0.1, 2),
        config={"alarm_high_m": 1.4})
    add(StructureKind.WEATHER, "WS-01", "管理所气象站", (-400.0, -300.0),
        config={"elevation_m": 1098, "wind_height_m": 10.0, "latitude": ORIGIN_LAT})

    # --- branches, laterals, turnouts, fields ---
    lateral_weights = [rng.uniform(0.8, 1.2) for _ in range(sum(LATERALS_PER_BRANCH))]
    lateral_areas = iter(_largest_remainder(TOTAL_AREA_MU, lateral_weights))
    modbus_port = MODBUS_BASE_PORT
    for b, (head_km, n_laterals) in enumerate(zip(BRANCH_HEADS_KM, LATERALS_PER_BRANCH,
                                                  strict=True), start=1):
        side = -1.0 if b % 2 else 1.0  # odd branches run south, even ones north
        hx, hy = main_point(head_km)
        length_km = round(FIRST_LATERAL_KM + (n_laterals - 1) * LATERAL_SPACING_KM + 0.7, 2)
        code, name = f"B{b}", f"{NUMERALS[b - 1]}支渠"
        capacity = BRANCH_CAPACITY_M3S[b - 1]

        def on_branch(km: float, hx: float = hx, hy: float = hy, side: float = side
                      ) -> tuple[float, float]:
            return (hx, hy + side * km * 1000)

        net.canals.append(CanalIn(code=code, name=name, level=CanalLevel.BRANCH,
                                  parent_code=MAIN_CANAL, length_km=length_km,
                                  design_capacity_m3s=capacity, lining=BRANCH_LINING[b - 1],
                                  path=[local.lonlat(*on_branch(0)),
                                        local.lonlat(*on_branch(length_km))]))
        modbus_port += 1
        add(StructureKind.INTEGRATED_GATE, f"G-{code}", f"{name}进水闸", (hx, hy),
            canal_code=MAIN_CANAL, chainage_km=head_km, outlet_canal_code=code,
            modbus_host=MODBUS_HOST, modbus_port=modbus_port, modbus_unit=1,
            config=_gate_config(rng, 1.5, 1.0, capacity, 1.8))
        add(StructureKind.PARSHALL_FLUME, f"F-{code}-HEAD", f"{name}渠首量水槽", on_branch(0.2),
            canal_code=code, chainage_km=0.2, config=_flume_config(capacity))
        add(StructureKind.PARSHALL_FLUME, f"F-{code}-TAIL", f"{name}退水量水槽",
            on_branch(length_km - 0.1), canal_code=code, chainage_km=round(length_km - 0.1, 2),
            config=_flume_config(0.3))
        wua_code = f"WUA-{b:02d}"
        wua_turnouts: list[str] = []
        field_no = 0
        for j in range(1, n_laterals + 1):
            km = round(FIRST_LATERAL_KM + (j - 1) * LATERAL_SPACING_KM, 2)
            lx, ly = on_branch(km)
            east = 1.0 if j % 2 else -1.0
            lat_code, lat_name = f"{code}-L{j:02d}", f"{name}{NUMERALS[j - 1]}斗渠"
            area_mu = next(lateral_areas)
            design = round(0.25 + 0.1 * (area_mu - 1700) / 900, 2)
            pieces = rng.choice((4, 5, 6))
            field_areas = _largest_remainder(area_mu, [rng.uniform(0.7, 1.3)
                                                       for _ in range(pieces)])
            reach = [0.0, 0.0]  # how far along the lateral each side's fields reach (m)
            rings: list[tuple[list[LonLat], LonLat, float]] = []
            for k, piece in enumerate(field_areas):
                s = k % 2
                length = piece * 10_000 / 15 / FIELD_DEPTH_M
                x0, x1 = lx + east * (60 + reach[s]), lx + east * (60 + reach[s] + length)
                y_sign = 1.0 if s == 0 else -1.0
                y0, y1 = ly + y_sign * 8, ly + y_sign * (8 + FIELD_DEPTH_M)
                corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
                rings.append(([local.lonlat(*c) for c in corners],
                              local.lonlat((x0 + x1) / 2, (y0 + y1) / 2), piece))
                reach[s] += length + 15
            lat_len = max(reach) + 60
            net.canals.append(CanalIn(
                code=lat_code, name=lat_name, level=CanalLevel.LATERAL, parent_code=code,
                length_km=round(lat_len / 1000, 2), design_capacity_m3s=design,
                lining="U形混凝土渠", path=[local.lonlat(lx, ly),
                                          local.lonlat(lx + east * lat_len, ly)]))
            if (b, j) in HOIST_LATERALS:
                add(StructureKind.SMART_HOIST, f"H-{lat_code}", f"{lat_name}斗口闸", (lx, ly),
                    canal_code=code, chainage_km=km,
                    config=_gate_config(rng, 0.8, 0.6, design, 1.2))
                turnout = f"F-{lat_code}"
                add(StructureKind.PARSHALL_FLUME, turnout, f"{lat_name}斗口量水槽",
                    (lx + east * 30, ly), canal_code=code, chainage_km=km,
                    outlet_canal_code=lat_code, is_turnout=True,
                    water_use=WaterUse.AGRICULTURE, config=_flume_config(design))
            else:
                turnout = f"G-{lat_code}"
                add(StructureKind.INTEGRATED_GATE, turnout, f"{lat_name}斗口闸", (lx, ly),
                    canal_code=code, chainage_km=km, outlet_canal_code=lat_code,
                    is_turnout=True, water_use=WaterUse.AGRICULTURE,
                    config=_gate_config(rng, 0.7, 0.6, design, 1.2))
            wua_turnouts.append(turnout)
            for ring, centre, field_mu in rings:
                field_no += 1
                crop = rng.choices([c for c, _ in CROP_SHARES],
                                   weights=[w for _, w in CROP_SHARES])[0]
                net.fields.append(FieldIn(
                    code=f"{wua_code}-F{field_no:03d}",
                    name=f"{WUA_NAMES[b - 1]}嘎查{field_no}号地", wua_code=wua_code,
                    turnout_code=turnout, area_mu=field_mu, crop=crop, lon=centre[0],
                    lat=centre[1], ring=ring))
            if (b, j) in ((2, 3), (5, 2)):
                number = 1 if b == 2 else 2
                add(StructureKind.SOIL_MOISTURE, f"SM-{number:02d}", f"{lat_name}墒情站",
                    (lx + east * 400, ly + 250),
                    config={"depths_cm": [10, 20, 40, 60], "refill_point_pct": 18.0,
                            "field_capacity_pct": 32.0,
                            "field": f"{wua_code}-F{field_no - len(rings) + 1:03d}"})
        if b == 4:
            add(StructureKind.WEATHER, "WS-02", "灌区中部气象站", (hx + 300, hy + 200),
                config={"elevation_m": 1124, "wind_height_m": 2.0, "latitude": ORIGIN_LAT})
        net.wuas.append(WuaIn(code=wua_code, name=f"{WUA_NAMES[b - 1]}农民用水户协会",
                              canal_code=code, contact=f"{name}管理段",
                              turnout_codes=wua_turnouts))
    return net


def seed_irrigation_demo(runtime: Runtime, *, progress: bool = False) -> dict[str, Any]:
    """Create the demo district and its simulated year; returns the counts afterwards."""
    from grassroots.irrigation.network.queries import counts
    from grassroots.irrigation.simulate_year import DEMO_YEAR, simulate_year

    with runtime.session_factory() as session:
        created = actions.import_network(session=session, runtime=runtime, actor=ACTOR,
                                         data=build_demo_network())
        if progress and any(created.values()):
            sys.stderr.write("  irrigation district: " + ", ".join(
                f"{n} {what}" for what, n in created.items()) + "\n")
        summary = simulate_year(runtime, year=DEMO_YEAR)
        if progress and summary.written:
            sys.stderr.write(f"  simulated {summary.year}: {summary.rows} daily volumes, "
                             f"{summary.lifted_m3:,} m³ lifted\n")
        result = counts(session=session)
    result["simulated_year"] = summary.year
    result["lifted_m3"] = summary.lifted_m3
    return result
