"""Alarms on the district's structures, and the work orders they raise in the command loop.

``evaluate_alarms`` reads the latest readings, device states and the day's plan, judges each
structure against its thresholds (pure rules, ``judge``), opens an alarm once per condition,
clears it when the condition has ended with hysteresis, and for a newly opened alarm of a
kind that needs someone in the field (a device offline, water near overtopping, a flow far
from plan) raises a work order through ``grassroots.command.actions.intake`` on the
``irrigation`` channel, with ``irr-alarm-{id}`` as its idempotency key, and keeps the
incident's id on the alarm.

Races. Evaluators may run side by side (several workers, a restart mid-sweep). An alarm is
opened by ``INSERT … ON CONFLICT DO NOTHING`` against the partial unique index on live alarms
(structure, kind), so of two evaluators judging the same condition exactly one inserts the
row and only that one raises the work order; the idempotency key makes a retried raise
return the same incident. A raise that failed (say the category is missing) is retried by a
later sweep once the alarm is ``WORK_ORDER_RETRY_AFTER`` old. Clears and acknowledgements
are compare-and-set on the alarm's version.

Thresholds come from the structure's ``config`` JSON; the defaults (``thresholds_for``):

* ``alarm_high_m``: level at or above which water is near overtopping. Default: a gate's
  ``upstream_max_m``, a flume's ``rated_max_head_m``; none for other structures.
* ``alarm_low_m``: low level. Default: a pump station's ``forebay_min_level_m``; a gate's
  ``upstream_min_m``, judged only while water is planned through it or its canal.
* ``alarm_hysteresis_m`` (0.05): a level alarm clears this far back inside its threshold.
* ``flow_tolerance`` (0.30) and ``flow_min_deviation_m3s`` (0.05): flow is far from plan when
  |flow − plan| exceeds the larger of tolerance × plan and the minimum deviation;
  ``flow_clear_tolerance`` (0.20) and ``flow_clear_deviation_m3s`` (0.03) to clear.
* ``low_battery_v`` (11.5) and ``battery_hysteresis_v`` (0.4) for a 12 V supply.
* ``offline_alarm_s`` (300): how long a device must have been offline (telemetry.state's
  rules: silent for six reporting intervals, or its MQTT last will) before the alarm.
* ``alarm_confirm_readings`` (2): a level or flow alarm needs this many newest readings in a
  row past the threshold, so one spike does not send a crew out; one reading back inside
  clears it. Readings older than six reporting intervals are not used at all.

A structure whose device has never reported raises nothing (it may not be installed yet).

When most devices are offline at once (``OUTAGE_SHARE`` of those that have reported, and at
least ``OUTAGE_MIN_DEVICES``), the fault is the link, the ingest worker or the centre, not a
hundred field devices: the offline alarms open for the control room, but their work orders are
held until the outage is over; devices still offline then get theirs by the retry path.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from grassroots.command.actions import intake
from grassroots.command.context import current_calendar, current_locator
from grassroots.command.queries import get_incident
from grassroots.command.states import Actor, Channel, Locator, SystemActor
from grassroots.irrigation.alarm_models import LIVE_STATES, Alarm, AlarmKind, AlarmState
from grassroots.irrigation.flow_plan import accounting_day, planned_flows_range
from grassroots.irrigation.network.models import Canal, Structure, StructureKind
from grassroots.irrigation.telemetry.models import DeviceState, Reading
from grassroots.irrigation.telemetry.state import (
    STALE_INTERVALS,
    Announced,
    DeviceHealth,
    Quality,
    health_of,
    report_interval,
)
from grassroots.irrigation.water.quality import QualityFlag
from grassroots.kernel.audit import record
from grassroots.kernel.auth.roles import Permission, has_permission
from grassroots.kernel.errors import Conflict, GrassrootsError, NotFound, PermissionDenied
from grassroots.runtime import Runtime

log = logging.getLogger(__name__)

SYSTEM = SystemActor("system:irrigation")
IDEMPOTENCY_PREFIX = "irr-alarm-"
WORK_ORDER_RETRY_AFTER = timedelta(minutes=2)
READING_MAX_AGE_INTERVALS = STALE_INTERVALS
MAX_CONFIRM_READINGS = 10
ALARM_JOB_INTERVAL_S = 30.0
OUTAGE_SHARE = 0.5
OUTAGE_MIN_DEVICES = 5

DEFAULT_LEVEL_HYSTERESIS_M = 0.05
DEFAULT_FLOW_TOLERANCE = 0.30
DEFAULT_FLOW_MIN_DEVIATION_M3S = 0.05
DEFAULT_FLOW_CLEAR_TOLERANCE = 0.20
DEFAULT_FLOW_CLEAR_DEVIATION_M3S = 0.03
DEFAULT_LOW_BATTERY_V = 11.5
DEFAULT_BATTERY_HYSTERESIS_V = 0.4
DEFAULT_OFFLINE_ALARM = timedelta(minutes=5)
DEFAULT_CONFIRM_READINGS = 2

GATE_KINDS = frozenset({StructureKind.INTEGRATED_GATE, StructureKind.SMART_HOIST})
# Which quantity is "the level" of a structure; a flume's gauge may arrive as either name
# (head_m by Modbus, water_level_m by SL 651), and the newest one counts.
LEVEL_QUANTITIES: Mapping[StructureKind, tuple[str, ...]] = {
    StructureKind.INTEGRATED_GATE: ("water_level_upstream_m",),
    StructureKind.SMART_HOIST: ("water_level_upstream_m",),
    StructureKind.LEVEL_GAUGE: ("water_level_m",),
    StructureKind.PARSHALL_FLUME: ("head_m", "water_level_m"),
    StructureKind.PUMP_STATION: ("water_level_m",),
}
FLOW_QUANTITY = "flow_m3s"
# Readings that say nothing about the water: no value, invalid, or flagged as a spike by the
# quality checks (the bits agree with water.quality.QualityFlag).
_BAD_QUALITY = int(Quality.INVALID | Quality.UNAVAILABLE | Quality.NO_RESPONSE) | int(
    QualityFlag.SPIKE)

# Kinds that need someone in the field; the others are for the control room only.
WORK_ORDER_KINDS = frozenset({AlarmKind.DEVICE_OFFLINE, AlarmKind.HIGH_LEVEL,
                              AlarmKind.FLOW_FAR_FROM_PLAN})
CANAL_BREACH = "irrigation.canal_breach"
GATE_FAULT = "irrigation.gate_fault"
METER_FAULT = "irrigation.meter_fault"

AUDIT_RAISE = "irrigation:alarm:raise"
AUDIT_CLEAR = "irrigation:alarm:clear"
AUDIT_ACKNOWLEDGE = "irrigation:alarm:acknowledge"


# --------------------------------------------------------------------------- state machine


class AlarmAction(StrEnum):
    ACKNOWLEDGE = "acknowledge"
    CLEAR = "clear"


# (from state, action) -> to state; anything else is refused.
ALARM_TRANSITIONS: Mapping[tuple[AlarmState, AlarmAction], AlarmState] = {
    (AlarmState.OPEN, AlarmAction.ACKNOWLEDGE): AlarmState.ACKNOWLEDGED,
    (AlarmState.OPEN, AlarmAction.CLEAR): AlarmState.CLEARED,
    (AlarmState.ACKNOWLEDGED, AlarmAction.CLEAR): AlarmState.CLEARED,
}


def allowed_from(action: AlarmAction) -> list[AlarmState]:
    """The states an action may start from."""
    return [state for (state, name) in ALARM_TRANSITIONS if name == action]


# --------------------------------------------------------------------------- thresholds


@dataclass(frozen=True, slots=True)
class Thresholds:
    high_level_m: float | None = None
    low_level_m: float | None = None
    # A gate's low level means something only while water should be reaching it.
    low_level_needs_water: bool = False
    level_hysteresis_m: float = DEFAULT_LEVEL_HYSTERESIS_M
    flow_tolerance: float = DEFAULT_FLOW_TOLERANCE
    flow_min_deviation_m3s: float = DEFAULT_FLOW_MIN_DEVIATION_M3S
    flow_clear_tolerance: float = DEFAULT_FLOW_CLEAR_TOLERANCE
    flow_clear_deviation_m3s: float = DEFAULT_FLOW_CLEAR_DEVIATION_M3S
    low_battery_v: float = DEFAULT_LOW_BATTERY_V
    battery_hysteresis_v: float = DEFAULT_BATTERY_HYSTERESIS_V
    offline_after: timedelta = DEFAULT_OFFLINE_ALARM
    confirm_readings: int = DEFAULT_CONFIRM_READINGS


def _number(config: Mapping[str, Any], key: str) -> float | None:
    value = config.get(key)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def parse_config(raw: str | None) -> dict[str, Any]:
    try:
        config = json.loads(raw or "{}")
    except ValueError:
        return {}
    return config if isinstance(config, dict) else {}


def thresholds_for(kind: StructureKind | str, config: Mapping[str, Any]) -> Thresholds:
    """A structure's thresholds: its config's keys, else the defaults of its kind."""
    kind = StructureKind(kind)
    high = _number(config, "alarm_high_m")
    low = _number(config, "alarm_low_m")
    needs_water = False
    if high is None and kind in GATE_KINDS:
        high = _number(config, "upstream_max_m")
    if high is None and kind == StructureKind.PARSHALL_FLUME:
        high = _number(config, "rated_max_head_m")
    if low is None and kind == StructureKind.PUMP_STATION:
        low = _number(config, "forebay_min_level_m")
    if low is None and kind in GATE_KINDS:
        low = _number(config, "upstream_min_m")
        needs_water = low is not None
    defaults = Thresholds()

    def pick(key: str, default: float) -> float:
        value = _number(config, key)
        return default if value is None or value < 0 else value

    offline_s = _number(config, "offline_alarm_s")
    confirm = _number(config, "alarm_confirm_readings")
    return Thresholds(
        high_level_m=high, low_level_m=low, low_level_needs_water=needs_water,
        level_hysteresis_m=pick("alarm_hysteresis_m", defaults.level_hysteresis_m),
        flow_tolerance=pick("flow_tolerance", defaults.flow_tolerance),
        flow_min_deviation_m3s=pick("flow_min_deviation_m3s", defaults.flow_min_deviation_m3s),
        flow_clear_tolerance=pick("flow_clear_tolerance", defaults.flow_clear_tolerance),
        flow_clear_deviation_m3s=pick("flow_clear_deviation_m3s",
                                      defaults.flow_clear_deviation_m3s),
        low_battery_v=pick("low_battery_v", defaults.low_battery_v),
        battery_hysteresis_v=pick("battery_hysteresis_v", defaults.battery_hysteresis_v),
        offline_after=(defaults.offline_after if offline_s is None or offline_s < 0
                       else timedelta(seconds=offline_s)),
        confirm_readings=(defaults.confirm_readings if confirm is None
                          else max(1, min(MAX_CONFIRM_READINGS, int(confirm)))),
    )


# --------------------------------------------------------------------------- pure rules


@dataclass(frozen=True, slots=True)
class StructureFacts:
    """What the rules need to know about one structure at one moment."""

    structure_id: int
    kind: StructureKind
    thresholds: Thresholds
    levels: tuple[float, ...] = ()  # newest first, fresh and valid only
    flows: tuple[float, ...] = ()
    # The plan each flow reading is judged against: that of the day it was observed on, so a
    # reading taken before midnight is not held to the next day's plan. Empty: ``plan_m3s``.
    flow_plans: tuple[float | None, ...] = ()
    plan_m3s: float | None = None
    water_expected: bool | None = None
    health: DeviceHealth | None = None  # None: the device has never reported
    offline_since: datetime | None = None
    voltage_v: float | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """Raise (with the value and the threshold crossed), clear (with the value), or neither."""

    raise_alarm: bool = False
    clear: bool = False
    value: float | None = None
    threshold: float | None = None


_NOTHING = Verdict()


def _confirmed(values: Sequence[Any], count: int, past: Any) -> bool:
    return len(values) >= count and all(past(v) for v in values[:count])


def judge_high_level(facts: StructureFacts) -> Verdict:
    t, values, limit = facts.thresholds, facts.levels, facts.thresholds.high_level_m
    if limit is None or not values:
        return _NOTHING
    if _confirmed(values, t.confirm_readings, lambda v: v >= limit):
        return Verdict(raise_alarm=True, value=values[0], threshold=limit)
    return Verdict(clear=values[0] < limit - t.level_hysteresis_m, value=values[0],
                   threshold=limit)


def judge_low_level(facts: StructureFacts) -> Verdict:
    t, values, limit = facts.thresholds, facts.levels, facts.thresholds.low_level_m
    if limit is None or not values:
        return _NOTHING
    if t.low_level_needs_water and not facts.water_expected:
        # No water due: a low level is normal; an alarm from when water was due clears.
        return Verdict(clear=True, value=values[0], threshold=limit)
    if _confirmed(values, t.confirm_readings, lambda v: v <= limit):
        return Verdict(raise_alarm=True, value=values[0], threshold=limit)
    return Verdict(clear=values[0] > limit + t.level_hysteresis_m, value=values[0],
                   threshold=limit)


def judge_flow(facts: StructureFacts) -> Verdict:
    t = facts.thresholds
    plans = facts.flow_plans or (facts.plan_m3s,) * len(facts.flows)
    pairs = [(value, plan) for value, plan in zip(facts.flows, plans, strict=True)
             if plan is not None]
    if not pairs:
        return _NOTHING
    value, plan = pairs[0]

    def far(pair: tuple[float, float]) -> bool:
        v, p = pair
        return abs(v - p) > max(t.flow_tolerance * p, t.flow_min_deviation_m3s)

    if _confirmed(pairs, t.confirm_readings, far):
        return Verdict(raise_alarm=True, value=value, threshold=plan)
    back = max(t.flow_clear_tolerance * plan, t.flow_clear_deviation_m3s)
    return Verdict(clear=abs(value - plan) <= back, value=value, threshold=plan)


def judge_battery(facts: StructureFacts) -> Verdict:
    t, voltage = facts.thresholds, facts.voltage_v
    if voltage is None:
        return _NOTHING
    if voltage < t.low_battery_v:
        return Verdict(raise_alarm=True, value=voltage, threshold=t.low_battery_v)
    return Verdict(clear=voltage >= t.low_battery_v + t.battery_hysteresis_v, value=voltage,
                   threshold=t.low_battery_v)


def judge_offline(facts: StructureFacts, now: datetime) -> Verdict:
    after = facts.thresholds.offline_after.total_seconds()
    if facts.health is None:
        return _NOTHING
    if facts.health == DeviceHealth.OFFLINE and facts.offline_since is not None:
        offline_s = (now - facts.offline_since).total_seconds()
        if offline_s >= after:
            return Verdict(raise_alarm=True, value=round(offline_s), threshold=after)
        return _NOTHING
    # Back ONLINE clears; STALE (heard from, but late or failing polls) holds the alarm.
    return Verdict(clear=facts.health == DeviceHealth.ONLINE, threshold=after)


def judge(facts: StructureFacts, now: datetime) -> dict[AlarmKind, Verdict]:
    """Every alarm kind's verdict for one structure."""
    return {
        AlarmKind.HIGH_LEVEL: judge_high_level(facts),
        AlarmKind.LOW_LEVEL: judge_low_level(facts),
        AlarmKind.FLOW_FAR_FROM_PLAN: judge_flow(facts),
        AlarmKind.LOW_BATTERY: judge_battery(facts),
        AlarmKind.DEVICE_OFFLINE: judge_offline(facts, now),
    }


def work_order_category(alarm_kind: AlarmKind, structure_kind: StructureKind) -> str:
    """The command loop's category for an alarm's work order (categories_default.json)."""
    if alarm_kind == AlarmKind.HIGH_LEVEL:
        return CANAL_BREACH
    return GATE_FAULT if structure_kind in GATE_KINDS else METER_FAULT


# --------------------------------------------------------------------------- facts from the DB


def offline_since(row: DeviceState, interval: timedelta) -> datetime | None:
    """When a device went offline: its last will, else six intervals after it was last heard."""
    if (row.announced == Announced.OFFLINE and row.announced_at is not None
            and (row.last_seen_at is None or row.announced_at >= row.last_seen_at)):
        return row.announced_at
    if row.last_seen_at is None:
        return None
    return row.last_seen_at + STALE_INTERVALS * interval


def _recent_values(session: Session, *, quantities: Iterable[str], since: datetime,
                   per_series: int) -> dict[tuple[int, str], list[tuple[datetime, float]]]:
    """The newest ``per_series`` valid readings of each (structure, quantity), newest first."""
    rank = func.row_number().over(
        partition_by=(Reading.structure_id, Reading.quantity),
        order_by=Reading.observed_at.desc()).label("rank")
    inner = (select(Reading.structure_id, Reading.quantity, Reading.observed_at,
                    Reading.value, rank)
             .where(Reading.quantity.in_(sorted(set(quantities))),
                    Reading.observed_at >= since, Reading.value.is_not(None),
                    Reading.quality.op("&")(_BAD_QUALITY) == 0)
             .subquery())
    rows = session.execute(
        select(inner.c.structure_id, inner.c.quantity, inner.c.observed_at, inner.c.value)
        .where(inner.c.rank <= per_series)
        .order_by(inner.c.structure_id, inner.c.quantity, inner.c.observed_at.desc()))
    found: dict[tuple[int, str], list[tuple[datetime, float]]] = {}
    for structure_id, quantity, observed_at, value in rows.tuples():
        found.setdefault((structure_id, quantity), []).append((observed_at, float(value)))
    return found


@dataclass(frozen=True, slots=True)
class _Site:
    """A structure as the work order needs it."""

    id: int
    code: str
    name: str
    kind: StructureKind
    lon: float
    lat: float
    canal_level: str | None


def collect_facts(*, session: Session, now: datetime
                  ) -> tuple[list[StructureFacts], dict[int, _Site]]:
    """Facts for every structure, and what a work order needs to know about each."""
    structures = session.scalars(select(Structure).order_by(Structure.id)).all()
    levels = {canal_id: str(level.value) for canal_id, level in
              session.execute(select(Canal.id, Canal.level)).tuples()}
    devices = {row.structure_id: row for row in session.scalars(select(DeviceState))}
    today = accounting_day(now)
    plans_by_day = planned_flows_range(session=session, first=today - timedelta(days=1),
                                       last=today)
    plans = plans_by_day[today]
    feeder = {s.outlet_canal_id: s.id for s in structures if s.outlet_canal_id is not None}
    prepared = []
    oldest = now
    for s in structures:
        kind = StructureKind(s.kind)
        config = parse_config(s.config)
        thresholds = thresholds_for(kind, config)
        interval = report_interval(kind, s.config)
        since = now - READING_MAX_AGE_INTERVALS * interval
        if kind in LEVEL_QUANTITIES:  # the only kinds whose levels and flows are read below
            oldest = min(oldest, since)
        prepared.append((s, kind, thresholds, interval, since))
    per_series = max((p[2].confirm_readings for p in prepared), default=1)
    wanted = {FLOW_QUANTITY, *(q for qs in LEVEL_QUANTITIES.values() for q in qs)}
    recent = _recent_values(session, quantities=wanted, since=oldest, per_series=per_series)
    facts: list[StructureFacts] = []
    sites: dict[int, _Site] = {}
    for s, kind, thresholds, interval, since in prepared:
        series = [recent.get((s.id, q), []) for q in LEVEL_QUANTITIES.get(kind, ())]
        series = [values for values in series if values]
        newest_levels = max(series, key=lambda values: values[0][0]) if series else []
        level_values = tuple(v for at, v in newest_levels if at >= since)
        flow_readings = [(at, v) for at, v in recent.get((s.id, FLOW_QUANTITY), [])
                         if at >= since]
        flow_values = tuple(v for _, v in flow_readings)
        flow_plans = tuple(plans_by_day.get(accounting_day(at), {}).get(s.id)
                           for at, _ in flow_readings)
        plan = plans.get(s.id)
        feeder_plan = plans.get(feeder.get(s.canal_id, -1)) if s.canal_id is not None else None
        known = [p for p in (plan, feeder_plan) if p is not None]
        device = devices.get(s.id)
        health = since_offline = voltage = None
        if device is not None:
            health = health_of(device, now=now, interval=interval)
            since_offline = offline_since(device, interval)
            voltage = device.voltage_v
        facts.append(StructureFacts(
            structure_id=s.id, kind=kind, thresholds=thresholds, levels=level_values,
            flows=flow_values, flow_plans=flow_plans, plan_m3s=plan,
            water_expected=any(p > 0 for p in known) if known else None,
            health=health, offline_since=since_offline, voltage_v=voltage))
        sites[s.id] = _Site(s.id, s.code, s.name, kind, s.lon, s.lat,
                            levels.get(s.canal_id) if s.canal_id is not None else None)
    return facts, sites


# --------------------------------------------------------------------------- the sweep


@dataclass
class AlarmSweepResult:
    examined: int = 0
    opened: int = 0
    cleared: int = 0
    work_orders: int = 0  # incidents created by this sweep (a retried raise counts once)
    lost: int = 0  # another evaluator got there first
    failed: int = 0
    held: int = 0  # device-offline work orders held back during a communications outage
    outage: bool = False
    opened_ids: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Live:
    id: int
    structure_id: int
    kind: AlarmKind
    state: AlarmState
    version: int
    raised_at: datetime
    incident_id: int | None
    value: float | None
    threshold: float | None


def _dialect_insert(session: Session) -> Any:
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def _open(session_factory: sessionmaker[Session], runtime: Runtime, structure_id: int,
          kind: AlarmKind, verdict: Verdict, now: datetime) -> int | None:
    """Insert the live alarm unless one exists; its id, or None when another was first."""
    with session_factory() as session, session.begin():
        alarm_id = session.execute(
            _dialect_insert(session)(Alarm).values(
                structure_id=structure_id, kind=kind.value, state=AlarmState.OPEN.value,
                raised_at=now, value=verdict.value, threshold=verdict.threshold, version=1)
            .on_conflict_do_nothing().returning(Alarm.id)).scalar_one_or_none()
        if alarm_id is None:
            return None
        record(session, runtime=runtime, actor=SYSTEM.username, action=AUDIT_RAISE,
               object_type="irr_alarm", object_id=alarm_id,
               detail={"structure_id": structure_id, "kind": kind.value,
                       "value": verdict.value, "threshold": verdict.threshold})
    return int(alarm_id)


def _clear(session_factory: sessionmaker[Session], runtime: Runtime, alarm: _Live,
           verdict: Verdict, now: datetime) -> bool:
    with session_factory() as session, session.begin():
        flipped = session.execute(
            update(Alarm)
            .where(Alarm.id == alarm.id, Alarm.version == alarm.version,
                   Alarm.state.in_([s.value for s in allowed_from(AlarmAction.CLEAR)]))
            .values(state=AlarmState.CLEARED.value, cleared_at=now, clear_value=verdict.value,
                    version=Alarm.version + 1)
            .execution_options(synchronize_session=False)).rowcount
        if flipped != 1:
            return False
        record(session, runtime=runtime, actor=SYSTEM.username, action=AUDIT_CLEAR,
               object_type="irr_alarm", object_id=alarm.id,
               detail={"kind": alarm.kind.value, "value": verdict.value})
    return True


_UNITS = {AlarmKind.HIGH_LEVEL: "m", AlarmKind.LOW_LEVEL: "m",
          AlarmKind.FLOW_FAR_FROM_PLAN: "m³/s", AlarmKind.DEVICE_OFFLINE: "s",
          AlarmKind.LOW_BATTERY: "V"}
_KIND_TITLES = {
    AlarmKind.HIGH_LEVEL: "水位超高",
    AlarmKind.LOW_LEVEL: "水位过低",
    AlarmKind.FLOW_FAR_FROM_PLAN: "流量偏离计划",
    AlarmKind.DEVICE_OFFLINE: "设备离线",
    AlarmKind.LOW_BATTERY: "电池电压低",
}


def _work_order_fields(site: _Site, kind: AlarmKind, value: float | None,
                       threshold: float | None) -> dict[str, Any]:
    category = work_order_category(kind, site.kind)
    attributes: dict[str, Any] = {}
    if category == CANAL_BREACH:
        attributes = {"canal_level": site.canal_level or "main", "structure_code": site.code}
    elif category == GATE_FAULT:
        attributes = {"gate_code": site.code}
    else:
        attributes = {"station_code": site.code}
    what, unit = _KIND_TITLES[kind], _UNITS[kind]
    label = "计划" if kind == AlarmKind.FLOW_FAR_FROM_PLAN else "阈值"
    parts = [f"测值 {value:.4g} {unit}" if value is not None else "",
             f"{label} {threshold:.4g} {unit}" if threshold is not None else ""]
    detail = "，".join(p for p in parts if p)
    return {"category_code": category, "attributes": attributes,
            "title": f"{site.name}（{site.code}）{what}",
            "description": f"灌区自动报警：{site.name}（{site.code}）{what}。{detail}".strip(),
            "address_text": f"{site.name}（{site.code}）"}


def _raise_work_order(session_factory: sessionmaker[Session], runtime: Runtime, alarm_id: int,
                      site: _Site, kind: AlarmKind, value: float | None,
                      threshold: float | None, locator: Locator | None) -> tuple[int, bool]:
    """Intake the alarm's work order (idempotent by key) and keep its id on the alarm."""
    fields = _work_order_fields(site, kind, value, threshold)
    with session_factory() as session:
        result = intake(session=session, runtime=runtime, actor=SYSTEM,
                        channel=Channel.IRRIGATION, calendar=current_calendar(session),
                        locator=locator, lon=site.lon, lat=site.lat,
                        idempotency_key=f"{IDEMPOTENCY_PREFIX}{alarm_id}",
                        external_ref=f"irr_alarm:{alarm_id}", **fields)
        incident_id = result.incident.id
        with session.begin():
            session.execute(update(Alarm)
                            .where(Alarm.id == alarm_id, Alarm.incident_id.is_(None))
                            .values(incident_id=incident_id, version=Alarm.version + 1)
                            .execution_options(synchronize_session=False))
    return incident_id, result.created


def _live_alarms(session: Session) -> dict[tuple[int, AlarmKind], _Live]:
    rows = session.scalars(select(Alarm).where(Alarm.state.in_([s.value for s in LIVE_STATES])))
    return {(a.structure_id, AlarmKind(a.kind)): _Live(
        a.id, a.structure_id, AlarmKind(a.kind), AlarmState(a.state), a.version, a.raised_at,
        a.incident_id, a.value, a.threshold) for a in rows}


def communications_outage(facts: Sequence[StructureFacts]) -> bool:
    """Most devices offline at once: the link or the intake is down, not the devices."""
    known = [item for item in facts if item.health is not None]
    offline = sum(1 for item in known if item.health == DeviceHealth.OFFLINE)
    return offline >= max(OUTAGE_MIN_DEVICES, OUTAGE_SHARE * len(known))


def evaluate_alarms(*, session_factory: sessionmaker[Session], runtime: Runtime,
                    now: datetime | None = None) -> AlarmSweepResult:
    """One sweep over every structure: open, clear, and raise the work orders due."""
    now = now or runtime.clock.now()
    result = AlarmSweepResult()
    with session_factory() as session:
        facts, sites = collect_facts(session=session, now=now)
        live = _live_alarms(session)
        locator: Locator | None = current_locator(session)
        is_sqlite = session.get_bind().dialect.name == "sqlite"
        session.rollback()
    result.outage = communications_outage(facts)
    if result.outage:
        log.warning("most field devices are offline at once: a communications or intake "
                    "outage; device-offline work orders are held until it is over")
    to_raise: list[tuple[int, _Site, AlarmKind, float | None, float | None]] = []
    cleared: set[int] = set()
    for item in facts:
        result.examined += 1
        for kind, verdict in judge(item, now).items():
            alarm = live.get((item.structure_id, kind))
            try:
                if alarm is None and verdict.raise_alarm:
                    alarm_id = _open(session_factory, runtime, item.structure_id, kind,
                                     verdict, now)
                    if alarm_id is None:
                        result.lost += 1
                        continue
                    result.opened += 1
                    result.opened_ids.append(alarm_id)
                    if kind in WORK_ORDER_KINDS:
                        to_raise.append((alarm_id, sites[item.structure_id], kind,
                                         verdict.value, verdict.threshold))
                elif alarm is not None and verdict.clear:
                    if _clear(session_factory, runtime, alarm, verdict, now):
                        result.cleared += 1
                        cleared.add(alarm.id)
                    else:
                        result.lost += 1
            except OperationalError as error:
                # SQLite: a write whose snapshot went stale under another writer; it lost.
                if not (is_sqlite and "locked" in str(error.orig)):
                    raise
                result.lost += 1
    for alarm in live.values():
        # A raise that failed earlier (or whose evaluator died) is retried once it is old
        # enough that its own evaluator is surely done with it.
        if (alarm.kind in WORK_ORDER_KINDS and alarm.incident_id is None
                and alarm.id not in cleared and alarm.raised_at <= now - WORK_ORDER_RETRY_AFTER):
            to_raise.append((alarm.id, sites[alarm.structure_id], alarm.kind, alarm.value,
                             alarm.threshold))
    for alarm_id, site, kind, value, threshold in to_raise:
        if result.outage and kind == AlarmKind.DEVICE_OFFLINE:
            result.held += 1
            continue
        try:
            _, created = _raise_work_order(session_factory, runtime, alarm_id, site, kind,
                                           value, threshold, locator)
        except GrassrootsError as error:  # say a category missing; retried by a later sweep
            log.warning("work order for irrigation alarm %s refused: %s", alarm_id, error)
            result.failed += 1
            continue
        except Exception:  # retried by a later sweep
            log.exception("work order for irrigation alarm %s failed", alarm_id)
            result.failed += 1
            continue
        result.work_orders += int(created)
    return result


def run_alarm_job(runtime: Runtime, stop: threading.Event,
                  interval_s: float = ALARM_JOB_INTERVAL_S) -> None:
    """A worker's loop: evaluate the alarms every ``interval_s`` until ``stop`` is set."""
    while not stop.is_set():
        try:
            result = evaluate_alarms(session_factory=runtime.session_factory, runtime=runtime)
        except Exception:  # one bad sweep must not end the job
            log.exception("irrigation alarm sweep failed")
        else:
            if result.opened or result.cleared or result.failed:
                log.info("irrigation alarms: %d opened, %d cleared, %d work orders, %d failed",
                         result.opened, result.cleared, result.work_orders, result.failed)
        stop.wait(interval_s)


# --------------------------------------------------------------------------- acknowledge


def acknowledge_alarm(*, session: Session, runtime: Runtime, actor: Actor, alarm_id: int,
                      expected_version: int | None = None,
                      source_ip: str | None = None) -> Alarm:
    """Someone on duty has seen the alarm: open → acknowledged, compare-and-set, audited."""
    if actor.role is not None and not has_permission(actor.role, Permission.IRRIGATION_DISPATCH):
        raise PermissionDenied()
    if session.in_transaction():
        session.commit()
    with session.begin():
        alarm = session.get(Alarm, alarm_id, populate_existing=True)
        if alarm is None:
            raise NotFound("irrigation.alarm.error.not_found")
        version = alarm.version if expected_version is None else expected_version
        flipped = session.execute(
            update(Alarm)
            .where(Alarm.id == alarm_id, Alarm.version == version,
                   Alarm.state.in_([s.value for s in allowed_from(AlarmAction.ACKNOWLEDGE)]))
            .values(state=AlarmState.ACKNOWLEDGED.value, acknowledged_at=runtime.clock.now(),
                    acknowledged_by=actor.username, version=Alarm.version + 1)
            .execution_options(synchronize_session=False)).rowcount
        if flipped != 1:
            raise Conflict("irrigation.alarm.error.not_open")
        record(session, runtime=runtime, actor=actor.username, action=AUDIT_ACKNOWLEDGE,
               object_type="irr_alarm", object_id=alarm_id, source_ip=source_ip,
               detail={"kind": str(alarm.kind), "structure_id": alarm.structure_id})
    session.refresh(alarm)
    return alarm


def open_alarm_counts(*, session: Session) -> dict[str, int]:
    """Live alarms by state, for badges."""
    rows = session.execute(select(Alarm.state, func.count()).where(
        Alarm.state.in_([s.value for s in LIVE_STATES])).group_by(Alarm.state)).tuples()
    return {str(getattr(state, "value", state)): count for state, count in rows}




# --------------------------------------------------------------------------- reads


@dataclass(frozen=True, slots=True)
class AlarmRow:
    """An alarm as the list shows it, with its structure and its work order's number."""

    alarm: Alarm
    structure_code: str
    structure_name: str
    structure_kind: str
    incident_number: str | None


MAX_LIST = 500


def list_alarms(*, session: Session, states: Sequence[AlarmState] = LIVE_STATES,
                limit: int = 200, alarm_id: int | None = None) -> list[AlarmRow]:
    """Alarms in the given states (or the one alarm asked for), newest first."""
    query = (select(Alarm, Structure.code, Structure.name, Structure.kind)
             .join(Structure, Structure.id == Alarm.structure_id)
             .where(Alarm.state.in_([s.value for s in states])))
    if alarm_id is not None:
        query = query.where(Alarm.id == alarm_id)
    rows = session.execute(
        query.order_by(Alarm.raised_at.desc(), Alarm.id.desc())
        .limit(max(1, min(limit, MAX_LIST)))).tuples().all()
    numbers: dict[int, str] = {}
    for alarm, *_ in rows:
        if alarm.incident_id is not None and alarm.incident_id not in numbers:
            incident = get_incident(session=session, incident_id=alarm.incident_id)
            if incident is not None:
                numbers[alarm.incident_id] = incident.number
    return [AlarmRow(alarm, code, name, str(getattr(kind, "value", kind)),
                     numbers.get(alarm.incident_id) if alarm.incident_id else None)
            for alarm, code, name, kind in rows]
