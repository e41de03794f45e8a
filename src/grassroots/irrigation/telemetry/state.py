"""Telemetry vocabulary as data (sources, quality flags, quantities) and device liveness rules.

A device is ONLINE while the time since we last heard from it is at most two of its
reporting intervals, STALE up to six, OFFLINE after that. The interval comes from the
structure's kind (``KIND_INTERVALS``) unless its ``config`` JSON names ``report_interval_s``.
A device that failed its last poll is at best STALE; one whose MQTT status says ``offline``
(its last will) is OFFLINE until it is heard from again.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import IntFlag, StrEnum

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from grassroots.irrigation.network.models import Structure, StructureKind
from grassroots.irrigation.telemetry.models import DeviceState


class Source(StrEnum):
    """Where a reading came from."""

    MQTT = "mqtt"
    SL651 = "sl651"
    MODBUS = "modbus"
    HTTP = "http"
    SIM = "sim"
    # Computed here from other readings (irrigation.derive), not sent by a device.
    DERIVED = "derived"


# Sources that mean the device itself was just heard from; an HTTP upload may be old data
# relayed by someone else, so it does not count as contact.
LIVE_SOURCES = frozenset({Source.MQTT, Source.SL651, Source.MODBUS, Source.SIM})


class Quality(IntFlag):
    """Flags stored with each reading; bits shared with water.quality.QualityFlag agree."""

    OK = 0
    OUT_OF_RANGE = 1
    SPIKE = 2
    STUCK = 4
    SUBMERGED = 8
    INVALID = 16
    # The reading has no value (sensor fault, no answer); stored as NULL, never as zero.
    UNAVAILABLE = 32
    ESTIMATED = 64
    # The device did not answer at all (poll timeout, connection refused, exception reply).
    NO_RESPONSE = 128
    # Typed in or uploaded by a person rather than sent by the device.
    MANUAL = 256


class DeviceHealth(StrEnum):
    ONLINE = "online"
    STALE = "stale"
    OFFLINE = "offline"


class Announced(StrEnum):
    """What a device last said about itself on its MQTT status topic."""

    ONLINE = "online"
    OFFLINE = "offline"


# --------------------------------------------------------------------------- quantities

QUANTITY_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


@dataclass(frozen=True, slots=True)
class QuantitySpec:
    """A quantity a reading may carry: its unit and the range a sane sensor reports."""

    name: str
    unit: str
    label_zh: str
    minimum: float | None = None
    maximum: float | None = None

    def quality_of(self, value: float | None) -> Quality:
        """UNAVAILABLE for no value, OUT_OF_RANGE outside the plausible range, else OK."""
        if value is None:
            return Quality.UNAVAILABLE
        if (self.minimum is not None and value < self.minimum) or (
                self.maximum is not None and value > self.maximum):
            return Quality.OUT_OF_RANGE
        return Quality.OK


_SOIL_DEPTHS_CM = (10, 20, 30, 40, 50, 60, 80, 100)

_RAIN_PERIODS = (("1min", "1分钟", 50), ("5min", "5分钟", 200), ("10min", "10分钟", 300),
                 ("30min", "30分钟", 400), ("1h", "1小时", 500), ("2h", "2小时", 800),
                 ("3h", "3小时", 1000), ("6h", "6小时", 1500), ("12h", "12小时", 2000),
                 ("daily", "日", 2000), ("storm", "场次", 5000))
_INTAKES = range(1, 9)

QUANTITIES: Mapping[str, QuantitySpec] = {
    spec.name: spec
    for spec in (
        QuantitySpec("water_level_m", "m", "水位", -50, 5000),
        QuantitySpec("water_level_upstream_m", "m", "闸前水位", -50, 5000),
        QuantitySpec("water_level_downstream_m", "m", "闸后水位", -50, 5000),
        *(QuantitySpec(f"water_level_relative_{n}_m", "m", f"相对水位{n}", -100, 700)
          for n in _INTAKES),
        *(QuantitySpec(f"intake_water_level_{n}_m", "m", f"取水口{n}水位", -50, 5000)
          for n in _INTAKES),
        QuantitySpec("head_m", "m", "堰上水头", -1, 50),
        QuantitySpec("flow_m3s", "m³/s", "瞬时流量", -10, 10_000),
        QuantitySpec("flow_total_m3s", "m³/s", "总流量", -10, 10_000),
        QuantitySpec("gate_group_flow_m3s", "m³/s", "闸群过闸流量", -10, 10_000),
        *(QuantitySpec(f"intake_flow_{n}_m3s", "m³/s", f"取水口{n}流量", -10, 10_000)
          for n in _INTAKES),
        QuantitySpec("volume_m3", "m³", "累计水量", 0, 1e13),
        QuantitySpec("velocity_ms", "m/s", "瞬时流速", -20, 20),
        QuantitySpec("velocity_mean_ms", "m/s", "断面平均流速", -20, 20),
        QuantitySpec("gate_opening_m", "m", "闸门开度", -0.1, 30),
        QuantitySpec("rain_mm", "mm", "当前降水量", 0, 10_000),
        *(QuantitySpec(f"rain_{period}_mm", "mm", f"{label}降水量", 0, top)
          for period, label, top in _RAIN_PERIODS),
        QuantitySpec("rain_accumulated_mm", "mm", "累计降水量", 0, 1e6),
        *(QuantitySpec(f"soil_moisture_pct_{depth}cm", "%", f"{depth}厘米墒情", 0, 100)
          for depth in _SOIL_DEPTHS_CM),
        QuantitySpec("voltage_v", "V", "电源电压", 0, 100),
        QuantitySpec("air_temperature_c", "°C", "气温", -60, 70),
        QuantitySpec("water_temperature_c", "°C", "水温", -5, 50),
        QuantitySpec("humidity_pct", "%", "相对湿度", 0, 100),
        QuantitySpec("wind_speed_ms", "m/s", "风速", 0, 100),
        QuantitySpec("evaporation_daily_mm", "mm", "日蒸发量", 0, 100),
        QuantitySpec("evaporation_current_mm", "mm", "当前蒸发量", 0, 100),
        QuantitySpec("groundwater_depth_m", "m", "地下水埋深", -10, 1000),
        QuantitySpec("power_kw", "kW", "有功功率", -10, 100_000),
        QuantitySpec("status_bits", "", "状态及报警"),
    )
}


def quantity_spec(name: str) -> QuantitySpec | None:
    return QUANTITIES.get(name)


def finite_or_none(value: object) -> float | None:
    """A JSON number as a float; None for null. Raises ValueError for anything else."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("not a number")
    result = float(value)
    if not math.isfinite(result):
        raise ValueError("not a finite number")
    return result


# --------------------------------------------------------------------------- liveness

ONLINE_INTERVALS = 2
STALE_INTERVALS = 6

KIND_INTERVALS: Mapping[StructureKind, timedelta] = {
    StructureKind.PUMP_STATION: timedelta(minutes=1),
    StructureKind.INTEGRATED_GATE: timedelta(minutes=1),
    StructureKind.SMART_HOIST: timedelta(minutes=1),
    StructureKind.PARSHALL_FLUME: timedelta(minutes=5),
    StructureKind.LEVEL_GAUGE: timedelta(minutes=5),
    StructureKind.WEATHER: timedelta(minutes=10),
    StructureKind.SOIL_MOISTURE: timedelta(hours=1),
}
DEFAULT_INTERVAL = timedelta(minutes=5)


def report_interval(kind: StructureKind | str | None, config: str | None = None) -> timedelta:
    """How often a structure's device is expected to report."""
    if config:
        try:
            seconds = json.loads(config).get("report_interval_s")
        except (ValueError, AttributeError):
            seconds = None
        if isinstance(seconds, int | float) and not isinstance(seconds, bool) and seconds > 0:
            return timedelta(seconds=seconds)
    try:
        return KIND_INTERVALS[StructureKind(kind)] if kind is not None else DEFAULT_INTERVAL
    except ValueError:
        return DEFAULT_INTERVAL


def classify(
    *,
    last_seen_at: datetime | None,
    now: datetime,
    interval: timedelta,
    failing: bool = False,
    announced_offline: bool = False,
) -> DeviceHealth:
    """The liveness of one device at ``now``."""
    if last_seen_at is None or announced_offline:
        return DeviceHealth.OFFLINE
    age = now - last_seen_at
    if age > STALE_INTERVALS * interval:
        return DeviceHealth.OFFLINE
    if age > ONLINE_INTERVALS * interval or failing:
        return DeviceHealth.STALE
    return DeviceHealth.ONLINE


def health_of(row: DeviceState, *, now: datetime, interval: timedelta) -> DeviceHealth:
    """Classify a stored device state row."""
    failing = row.last_failure_at is not None and (
        row.last_seen_at is None or row.last_failure_at > row.last_seen_at)
    announced_offline = row.announced == Announced.OFFLINE and row.announced_at is not None and (
        row.last_seen_at is None or row.announced_at >= row.last_seen_at)
    return classify(last_seen_at=row.last_seen_at, now=now, interval=interval,
                    failing=failing, announced_offline=announced_offline)


@dataclass(frozen=True, slots=True)
class StateChange:
    structure_id: int
    previous: DeviceHealth
    current: DeviceHealth
    at: datetime


def refresh_states(
    *,
    session: Session,
    now: datetime,
    structure_ids: Iterable[int] | None = None,
) -> list[StateChange]:
    """Recompute every (or the given) device's state; flip changed rows by compare-and-set.

    Runs inside the caller's transaction. Two sweepers racing flip each row once: the
    UPDATE only matches while the row still holds the state this sweeper read.
    """
    query = (select(DeviceState, Structure.kind, Structure.config)
             .join(Structure, Structure.id == DeviceState.structure_id)
             .order_by(DeviceState.structure_id))
    if structure_ids is not None:
        query = query.where(DeviceState.structure_id.in_(list(structure_ids)))
    changes: list[StateChange] = []
    for row, kind, config in session.execute(query).tuples():
        current = health_of(row, now=now, interval=report_interval(kind, config))
        previous = DeviceHealth(row.state)
        if current == previous:
            continue
        flipped = session.execute(
            update(DeviceState)
            .where(DeviceState.structure_id == row.structure_id, DeviceState.state == previous)
            .values(state=current.value, state_changed_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount
        if flipped == 1:
            changes.append(StateChange(row.structure_id, previous, current, now))
    session.expire_all()
    return changes


def device_states(
    *, session: Session, now: datetime, structure_ids: Sequence[int] | None = None,
) -> dict[int, DeviceHealth]:
    """Live health by structure id, computed at ``now`` (no write)."""
    query = (select(DeviceState, Structure.kind, Structure.config)
             .join(Structure, Structure.id == DeviceState.structure_id))
    if structure_ids is not None:
        query = query.where(DeviceState.structure_id.in_(list(structure_ids)))
    return {row.structure_id: health_of(row, now=now, interval=report_interval(kind, config))
            for row, kind, config in session.execute(query).tuples()}
