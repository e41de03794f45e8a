"""The alarm rules as pure functions: thresholds from config, verdicts with hysteresis."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from grassroots.irrigation.alarm_models import AlarmKind, AlarmState
from grassroots.irrigation.alarms import (
    ALARM_TRANSITIONS,
    CANAL_BREACH,
    GATE_FAULT,
    METER_FAULT,
    AlarmAction,
    StructureFacts,
    Thresholds,
    judge,
    judge_battery,
    judge_flow,
    judge_high_level,
    judge_low_level,
    judge_offline,
    thresholds_for,
    work_order_category,
)
from grassroots.irrigation.network.models import StructureKind
from grassroots.irrigation.telemetry.state import DeviceHealth

NOW = datetime(2026, 7, 1, 2, 0, tzinfo=UTC)
GATE = StructureKind.INTEGRATED_GATE


def facts(**values: object) -> StructureFacts:
    base: dict[str, object] = {"structure_id": 1, "kind": GATE,
                               "thresholds": Thresholds(high_level_m=1.2, low_level_m=0.4)}
    base.update(values)
    return StructureFacts(**base)


def test_a_gate_takes_its_level_limits_from_its_design_levels() -> None:
    t = thresholds_for(GATE, {"upstream_min_m": 0.42, "upstream_max_m": 1.2})
    assert (t.high_level_m, t.low_level_m, t.low_level_needs_water) == (1.2, 0.42, True)


def test_explicit_alarm_levels_win_over_the_design_levels() -> None:
    t = thresholds_for(GATE, {"upstream_max_m": 1.2, "alarm_high_m": 1.1, "alarm_low_m": 0.5})
    assert (t.high_level_m, t.low_level_m, t.low_level_needs_water) == (1.1, 0.5, False)


def test_a_flume_alarms_above_its_rated_head_and_a_pump_below_its_forebay_minimum() -> None:
    assert thresholds_for(StructureKind.PARSHALL_FLUME, {"rated_max_head_m": 0.76}
                          ).high_level_m == 0.76
    assert thresholds_for(StructureKind.PUMP_STATION, {"forebay_min_level_m": 1.2}
                          ).low_level_m == 1.2
    assert thresholds_for(StructureKind.WEATHER, {}).high_level_m is None


def test_the_documented_defaults_apply_and_config_overrides_them() -> None:
    t = thresholds_for(StructureKind.LEVEL_GAUGE, {})
    assert (t.level_hysteresis_m, t.flow_tolerance, t.low_battery_v, t.confirm_readings,
            t.offline_after) == (0.05, 0.3, 11.5, 2, timedelta(minutes=5))
    t = thresholds_for(StructureKind.LEVEL_GAUGE, {
        "alarm_hysteresis_m": 0.1, "low_battery_v": 22.0, "offline_alarm_s": 60,
        "alarm_confirm_readings": 1, "flow_tolerance": "lots"})
    assert (t.level_hysteresis_m, t.low_battery_v, t.offline_after, t.confirm_readings,
            t.flow_tolerance) == (0.1, 22.0, timedelta(seconds=60), 1, 0.3)


def test_a_high_level_needs_two_readings_past_the_limit_and_clears_below_the_band() -> None:
    assert not judge_high_level(facts(levels=(1.25, 1.1))).raise_alarm
    assert judge_high_level(facts(levels=(1.25, 1.2))).raise_alarm
    assert not judge_high_level(facts(levels=(1.17, 1.3))).clear
    assert judge_high_level(facts(levels=(1.14, 1.3))).clear
    assert judge_high_level(facts(levels=())) == judge_high_level(facts(levels=()))


def test_a_gate_low_level_counts_only_while_water_is_due() -> None:
    due = StructureFacts(1, GATE, Thresholds(low_level_m=0.4, low_level_needs_water=True),
                         levels=(0.3, 0.3), water_expected=True)
    dry = StructureFacts(1, GATE, Thresholds(low_level_m=0.4, low_level_needs_water=True),
                         levels=(0.3, 0.3), water_expected=False)
    assert judge_low_level(due).raise_alarm
    assert not judge_low_level(dry).raise_alarm and judge_low_level(dry).clear


def test_flow_far_from_plan_uses_the_larger_of_the_relative_and_absolute_allowance() -> None:
    assert not judge_flow(facts(flows=(0.14, 0.14), plan_m3s=0.1)).raise_alarm  # 0.04 < 0.05
    assert judge_flow(facts(flows=(0.16, 0.16), plan_m3s=0.1)).raise_alarm
    assert not judge_flow(facts(flows=(1.25, 1.25), plan_m3s=1.0)).raise_alarm  # 25 % < 30 %
    assert judge_flow(facts(flows=(1.35, 1.35), plan_m3s=1.0)).raise_alarm
    assert judge_flow(facts(flows=(1.15,), plan_m3s=1.0)).clear
    assert not judge_flow(facts(flows=(1.25,), plan_m3s=1.0)).clear
    assert judge_flow(facts(flows=(1.0, 1.0))) == judge_flow(facts(flows=()))  # no plan


def test_each_flow_reading_is_held_to_its_own_days_plan() -> None:
    verdict = judge_flow(facts(flows=(0.6, 0.2), flow_plans=(0.6, 0.2), plan_m3s=0.6))
    assert not verdict.raise_alarm and verdict.clear


def test_low_battery_raises_below_the_limit_and_clears_only_above_the_hysteresis() -> None:
    assert judge_battery(facts(voltage_v=11.4)).raise_alarm
    assert not judge_battery(facts(voltage_v=11.8)).clear
    assert judge_battery(facts(voltage_v=11.9)).clear


def test_offline_raises_after_the_threshold_and_only_online_clears() -> None:
    since = NOW - timedelta(minutes=4)
    assert not judge_offline(facts(health=DeviceHealth.OFFLINE, offline_since=since),
                             NOW).raise_alarm
    later = judge_offline(facts(health=DeviceHealth.OFFLINE, offline_since=since),
                          NOW + timedelta(minutes=1))
    assert later.raise_alarm and later.value == 300
    assert not judge_offline(facts(health=DeviceHealth.STALE), NOW).clear
    assert judge_offline(facts(health=DeviceHealth.ONLINE), NOW).clear
    assert judge_offline(facts(health=None), NOW) == judge_offline(facts(), NOW)


def test_judge_answers_for_every_kind() -> None:
    assert set(judge(facts(), NOW)) == set(AlarmKind)


@pytest.mark.parametrize(("alarm", "structure", "category"), [
    (AlarmKind.HIGH_LEVEL, StructureKind.PARSHALL_FLUME, CANAL_BREACH),
    (AlarmKind.DEVICE_OFFLINE, StructureKind.SMART_HOIST, GATE_FAULT),
    (AlarmKind.FLOW_FAR_FROM_PLAN, StructureKind.INTEGRATED_GATE, GATE_FAULT),
    (AlarmKind.FLOW_FAR_FROM_PLAN, StructureKind.PARSHALL_FLUME, METER_FAULT),
    (AlarmKind.DEVICE_OFFLINE, StructureKind.LEVEL_GAUGE, METER_FAULT),
])
def test_each_field_alarm_maps_to_an_irrigation_category(alarm: AlarmKind,
                                                         structure: StructureKind,
                                                         category: str) -> None:
    assert work_order_category(alarm, structure) == category


def test_an_alarm_is_acknowledged_only_while_open_and_clears_from_either_live_state() -> None:
    assert ALARM_TRANSITIONS == {
        (AlarmState.OPEN, AlarmAction.ACKNOWLEDGE): AlarmState.ACKNOWLEDGED,
        (AlarmState.OPEN, AlarmAction.CLEAR): AlarmState.CLEARED,
        (AlarmState.ACKNOWLEDGED, AlarmAction.CLEAR): AlarmState.CLEARED,
    }
