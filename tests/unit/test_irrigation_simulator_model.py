"""The simulator's hydraulic model, its faults and its Modbus register encoding."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from grassroots.irrigation.network.models import StructureKind
from grassroots.irrigation.simulator import (
    SimulatorOptions,
    device_interval_s,
    element_values,
    encode_registers,
)
from grassroots.irrigation.simulator_model import (
    CanalInfo,
    DistrictModel,
    FaultKind,
    Faults,
    PlanSource,
    Site,
    invert_flume,
)
from grassroots.irrigation.telemetry.modbus_poll import (
    DEFAULT_REGISTERS,
    DataType,
    Order,
    RegisterSpec,
    RegisterTable,
)
from grassroots.irrigation.water.hydraulics import GateRating, GateRegime, ParshallFlume

START = datetime(2025, 7, 11, 2, 0, tzinfo=UTC)  # 10:00 in Beijing
DAY = date(2025, 7, 11)
GATE_CONFIG = {"gate_width_m": 0.7, "discharge_coefficient": 0.61, "max_opening_m": 0.6,
               "design_flow_m3s": 0.4, "upstream_min_m": 0.42, "upstream_max_m": 1.2}

MAIN, BRANCH = CanalInfo(1, "MC", 6.5), CanalInfo(2, "B1", 1.4)
PUMP = Site(1, "PS-01", StructureKind.PUMP_STATION, 106.75, 39.4, outlet_canal_id=1,
            config={"static_lift_m": 68.0, "forebay_min_level_m": 1.2})
HEAD = Site(2, "G-B1", StructureKind.INTEGRATED_GATE, 106.7, 39.4, canal_id=1,
            outlet_canal_id=2, config={**GATE_CONFIG, "gate_width_m": 1.5,
                                       "upstream_max_m": 1.8, "upstream_min_m": 0.63,
                                       "max_opening_m": 1.0, "design_flow_m3s": 1.4})
TURNOUT = Site(3, "G-B1-L01", StructureKind.INTEGRATED_GATE, 106.7, 39.39, canal_id=2,
               outlet_canal_id=3, is_turnout=True, config=GATE_CONFIG)
SECTION = Site(4, "F-B1-HEAD", StructureKind.PARSHALL_FLUME, 106.7, 39.398, canal_id=2,
               config={"throat_width_m": 0.9, "design_flow_m3s": 1.4})
HOIST = Site(5, "H-B1-L04", StructureKind.SMART_HOIST, 106.7, 39.38, canal_id=2,
             config=GATE_CONFIG)
METER = Site(6, "F-B1-L04", StructureKind.PARSHALL_FLUME, 106.7, 39.38, canal_id=2,
             outlet_canal_id=4, is_turnout=True,
             config={"throat_width_m": 0.45, "design_flow_m3s": 0.3})
SOIL = Site(7, "SM-01", StructureKind.SOIL_MOISTURE, 106.71, 39.39,
            config={"depths_cm": [10, 40], "refill_point_pct": 18.0, "field_capacity_pct": 32.0})
GAUGE = Site(8, "LG-MC-END", StructureKind.LEVEL_GAUGE, 106.5, 39.4, canal_id=1,
             config={"alarm_high_m": 1.4})
SITES = [PUMP, HEAD, TURNOUT, SECTION, HOIST, METER, SOIL, GAUGE]
PLAN = {PUMP.id: 5.2, HEAD.id: 1.1, TURNOUT.id: 0.3, METER.id: 0.2}


def plans(flows: Mapping[int, float]) -> PlanSource:
    def source(first: date, last: date) -> dict[date, dict[int, float]]:
        return {first + timedelta(days=i): dict(flows) for i in range((last - first).days + 1)}
    return source


def model(flows: Mapping[int, float] = PLAN, **kwargs: object) -> DistrictModel:
    return DistrictModel(SITES, [MAIN, BRANCH], plans(flows), sim_start=START,
                         **kwargs)


def test_a_planned_structure_flows_at_its_plan_give_or_take_the_daily_swing() -> None:
    district = model()
    for hour in range(0, 24, 3):
        at = START + timedelta(hours=hour)
        assert district.sample(TURNOUT, at)["flow_m3s"] == pytest.approx(0.3, rel=0.07)
        assert district.sample(PUMP, at)["flow_m3s"] == pytest.approx(5.2, rel=0.07)


def test_a_gates_opening_and_levels_pass_its_flow_by_the_gate_rating_in_free_flow() -> None:
    values = model().sample(HEAD, START)
    rating = GateRating(1.5, 0.61)
    result = rating.flow(values["gate_opening_m"], values["water_level_upstream_m"],
                         values["water_level_downstream_m"])
    assert result.regime == GateRegime.FREE
    assert result.q_m3s == pytest.approx(values["flow_m3s"], rel=0.01)
    assert 0.63 < values["water_level_upstream_m"] < 1.8


def test_a_flumes_head_gives_back_its_flow_through_the_flume_formula() -> None:
    values = model().sample(SECTION, START)
    flume = ParshallFlume(0.9)
    assert values["flow_m3s"] == pytest.approx(1.1, rel=0.07)  # its canal's flow, at design
    assert flume.free_flow_m3s(values["head_m"]) == pytest.approx(values["flow_m3s"], rel=1e-3)


@pytest.mark.parametrize("width", [0.3, 0.6, 1.2, 2.4, 3.048])
def test_inverting_the_flume_formula_round_trips(width: float) -> None:
    flume = ParshallFlume(width)
    for q in (0.01, 0.2, 1.0, 3.0):
        assert flume.free_flow_m3s(invert_flume(flume, q)) == pytest.approx(q, rel=1e-4)
    assert invert_flume(flume, 0.0) == 0.0


def test_a_smart_hoist_opens_for_the_flow_its_flume_meters() -> None:
    district = model()
    hoist, meter = district.sample(HOIST, START), district.sample(METER, START)
    upstream = hoist["water_level_upstream_m"]
    implied = GateRating(0.7, 0.61).flow(hoist["gate_opening_m"], upstream).q_m3s
    assert implied == pytest.approx(meter["flow_m3s"], rel=0.02)
    assert "flow_m3s" not in hoist  # a hoist measures no flow of its own


def test_a_dry_canal_shuts_its_gates_and_empties_its_flumes() -> None:
    district = model({PUMP.id: 0.0, HEAD.id: 0.0, TURNOUT.id: 0.0, METER.id: 0.0})
    gate = district.sample(TURNOUT, START)
    assert gate["flow_m3s"] == 0 and gate["gate_opening_m"] == 0
    assert gate["water_level_upstream_m"] < 0.05
    assert district.sample(SECTION, START)["head_m"] == 0


def test_without_any_plan_the_district_runs_at_a_typical_share_of_design() -> None:
    district = model({})
    assert not district.has_plans
    assert district.sample(TURNOUT, START)["flow_m3s"] == pytest.approx(0.6 * 0.4, rel=0.07)


def test_the_gauge_and_pump_read_plausible_levels_and_power() -> None:
    district = model()
    level = district.sample(GAUGE, START)["water_level_m"]
    assert 0.3 < level < 1.4
    pump = district.sample(PUMP, START)
    assert pump["power_kw"] == pytest.approx(9.81 * pump["flow_m3s"] * 70.7 / 0.78, rel=0.02)
    assert "voltage_v" not in pump  # mains powered


def test_soil_moisture_is_high_after_watering_and_dries_without_it() -> None:
    watered = model().sample(SOIL, START)["soil_moisture_pct_10cm"]
    dry = model({PUMP.id: 5.0}).sample(SOIL, START)["soil_moisture_pct_10cm"]
    assert 18 <= dry < watered <= 32


def test_batteries_run_down_over_simulated_time_and_one_runs_down_fast() -> None:
    district = model()
    weak = next(s for s in SITES if s.id == district.weak_battery_id)
    other = next(s for s in SITES if s.id not in (district.weak_battery_id, PUMP.id))
    for site in (weak, other):
        assert district.voltage(site, START + timedelta(hours=48)) < district.voltage(site,
                                                                                      START)
    assert district.voltage(weak, START + timedelta(hours=40)) < 11.5 < district.voltage(
        other, START + timedelta(hours=40))


def test_the_same_seed_gives_the_same_district() -> None:
    assert model().sample(HEAD, START) == model().sample(HEAD, START)


# --------------------------------------------------------------------------- faults


def test_a_stuck_sensor_repeats_its_value_until_the_fault_ends() -> None:
    faults = Faults(rate_per_hour=0)
    faults.start(HEAD.id, FaultKind.STUCK, now=0.0, duration_s=10)
    first = faults.apply(HEAD.id, {"flow_m3s": 1.0, "voltage_v": 12.5}, now=1.0)
    later = faults.apply(HEAD.id, {"flow_m3s": 2.0, "voltage_v": 12.5}, now=5.0)
    assert first == later == {"flow_m3s": 1.0, "voltage_v": 12.5}
    faults.tick([HEAD.id], now=11.0, dt_s=1)
    assert faults.apply(HEAD.id, {"flow_m3s": 2.0}, now=11.0) == {"flow_m3s": 2.0}


def test_a_spike_lifts_a_level_for_a_few_readings_only() -> None:
    faults = Faults(rate_per_hour=0)
    fault = faults.start(HEAD.id, FaultKind.SPIKE, now=0.0)
    count = fault.remaining
    readings = [faults.apply(HEAD.id, {"water_level_upstream_m": 1.0}, now=1.0)
                for _ in range(count + 2)]
    assert [r["water_level_upstream_m"] for r in readings[:count]] == [1.6] * count
    assert readings[-1] == {"water_level_upstream_m": 1.0}


def test_a_drifting_gate_moves_its_flow_far_from_plan() -> None:
    faults = Faults(rate_per_hour=0)
    fault = faults.start(HEAD.id, FaultKind.DRIFT, now=0.0, duration_s=60)
    values = faults.apply(HEAD.id, {"flow_m3s": 1.0, "gate_opening_m": 0.2}, now=1.0)
    assert values["flow_m3s"] == pytest.approx(fault.factor, abs=1e-4)
    assert abs(fault.factor - 1) >= 0.5


def test_an_offline_fault_silences_the_device_for_its_duration() -> None:
    faults = Faults(rate_per_hour=0)
    faults.start(HEAD.id, FaultKind.OFFLINE, now=0.0, duration_s=30)
    assert faults.offline(HEAD.id, now=29.0) and not faults.offline(HEAD.id, now=30.0)
    assert not faults.offline(TURNOUT.id, now=1.0)


def test_faults_are_drawn_at_about_their_rate_and_never_at_rate_zero() -> None:
    ids = list(range(1, 101))
    assert Faults(rate_per_hour=0).tick(ids, now=0, dt_s=3600) == []
    started = Faults(rate_per_hour=0.5, seed=1).tick(ids, now=0, dt_s=3600)
    assert 25 <= len(started) <= 55  # 1 - e^-0.5 ≈ 39 %


# --------------------------------------------------------------------------- protocols


@pytest.mark.parametrize("spec", [
    RegisterSpec("gate_opening_m", 0, DataType.UINT16, 0.001, invalid=0xFFFF),
    RegisterSpec("water_level_m", 0, DataType.INT16, 0.01),
    RegisterSpec("flow_m3s", 0, DataType.INT32, 0.0001, word_order=Order.LITTLE),
    RegisterSpec("volume_m3", 0, DataType.UINT32, 1.0, byte_order=Order.LITTLE),
    RegisterSpec("flow_m3s", 0, DataType.FLOAT32, table=RegisterTable.INPUT,
                 word_order=Order.LITTLE, byte_order=Order.LITTLE),
    RegisterSpec("voltage_v", 0, DataType.UINT16, 0.01, offset=-5.0),
])
def test_registers_written_by_the_simulator_read_back_through_the_pollers_spec(
        spec: RegisterSpec) -> None:
    for value in (0.0, 1.234, 12.6):
        words = encode_registers(spec, value)
        assert words is not None and len(words) == spec.count
        assert spec.value_fn(words) == pytest.approx(value, abs=spec.scale / 2 + 1e-6)


def test_an_unavailable_value_is_written_as_the_devices_invalid_marker_or_nan() -> None:
    u16 = RegisterSpec("gate_opening_m", 0, DataType.UINT16, 0.001, invalid=0xFFFF)
    assert encode_registers(u16, None) == [0xFFFF] and u16.value_fn([0xFFFF]) is None
    assert encode_registers(u16, 1000.0) == [0xFFFE]  # clamped short of the marker
    f32 = RegisterSpec("flow_m3s", 0, DataType.FLOAT32)
    words = encode_registers(f32, None)
    assert words is not None and f32.value_fn(words) is None
    assert encode_registers(RegisterSpec("flow_m3s", 0, DataType.INT16), None) is None


def test_every_default_register_map_has_its_quantities_in_the_model() -> None:
    district = model()
    by_kind = {HEAD.kind: HEAD, PUMP.kind: PUMP, SECTION.kind: SECTION, GAUGE.kind: GAUGE}
    for kind, specs in DEFAULT_REGISTERS.items():
        if kind in by_kind:
            values = district.sample(by_kind[kind], START)
            assert {s.quantity for s in specs} <= set(values), kind


def test_sl651_elements_carry_each_readings_decimals_and_a_flumes_head_as_its_level() -> None:
    elements = {e.quantity: e.value for e in element_values(
        {"head_m": 0.4567, "flow_m3s": 0.12345, "voltage_v": 12.345, "power_kw": 3.0})}
    assert elements == {"water_level_m": Decimal("0.457"), "flow_m3s": Decimal("0.123"),
                        "voltage_v": Decimal("12.35")}


def test_speed_shortens_the_reporting_interval_down_to_a_floor() -> None:
    options = SimulatorOptions(speed=60)
    assert device_interval_s(HEAD, options) == 1.0  # one minute at 60x
    assert device_interval_s(SECTION, options) == 5.0
    assert device_interval_s(HEAD, SimulatorOptions(speed=10_000)) == 0.2
