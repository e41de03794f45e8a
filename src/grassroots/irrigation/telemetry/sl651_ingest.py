"""The storage sink of the SL 651 centre: a decoded report becomes readings of its structure.

``Sl651Sink`` is the ``sink`` of ``sl651_server.Sl651Server``. It finds the structure
whose ``sl651_address`` is the report's station address, maps each element to a
quantity, stores the batch in one transaction and returns True only after the commit,
so the server confirms a report only once it is durable. A resent report lands on the
same (structure, quantity, observed_at) keys and is absorbed by storage's dedupe, then
confirmed again so the unit stops resending.

A report from a station no structure claims is not confirmed (False): the unit keeps
its data and resends, and once the structure is registered the data lands. It is
logged (at most once a minute per station) and counted. An element the platform has
no quantity for is skipped and counted; an element the unit sent as all-FF (no valid
reading) is stored as unavailable, never as zero.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from grassroots.irrigation.network.models import Structure
from grassroots.irrigation.telemetry.sl651 import Report
from grassroots.irrigation.telemetry.state import QUANTITIES, Source
from grassroots.irrigation.telemetry.store import ReadingIn, insert_readings
from grassroots.kernel.clock import Clock, get_clock

logger = logging.getLogger(__name__)

# SL 651 element identifiers -> platform quantities, by id so that the codec's own names
# may change freely. Series elements (F4 5-minute rain, F5..FC relative levels) included.
_SOIL_DEPTHS_CM = (10, 20, 30, 40, 50, 60, 80, 100)
ELEMENT_QUANTITIES: Mapping[int, str] = {
    0x02: "air_temperature_c",
    0x03: "water_temperature_c",
    0x06: "evaporation_daily_mm",
    0x07: "evaporation_current_mm",
    0x09: "gate_opening_m",
    0x0E: "groundwater_depth_m",
    **{0x10 + i: f"soil_moisture_pct_{depth}cm" for i, depth in enumerate(_SOIL_DEPTHS_CM)},
    0x18: "humidity_pct",
    0x1A: "rain_1h_mm",
    0x1B: "rain_2h_mm",
    0x1C: "rain_3h_mm",
    0x1D: "rain_6h_mm",
    0x1E: "rain_12h_mm",
    0x1F: "rain_daily_mm",
    0x20: "rain_mm",
    0x21: "rain_1min_mm",
    0x22: "rain_5min_mm",
    0x23: "rain_10min_mm",
    0x24: "rain_30min_mm",
    0x25: "rain_storm_mm",
    0x26: "rain_accumulated_mm",
    0x27: "flow_m3s",
    **{0x28 + i: f"intake_flow_{i + 1}_m3s" for i in range(8)},
    0x30: "flow_total_m3s",
    0x31: "gate_group_flow_m3s",
    0x35: "wind_speed_ms",
    0x36: "velocity_mean_ms",
    0x37: "velocity_ms",
    0x38: "voltage_v",
    0x39: "water_level_m",
    0x3A: "water_level_downstream_m",
    0x3B: "water_level_upstream_m",
    **{0x3C + i: f"intake_water_level_{i + 1}_m" for i in range(8)},
    0xF4: "rain_5min_mm",
    **{0xF5 + i: f"water_level_relative_{i + 1}_m" for i in range(8)},
}
STATUS_QUANTITY = "status_bits"
UNKNOWN_STATION_RECHECK_S = 60.0
_SL651 = Source.SL651.value


@dataclass(slots=True)
class SinkCounters:
    reports: int = 0
    reports_stored: int = 0
    readings_inserted: int = 0
    duplicates: int = 0
    unknown_station: int = 0
    skipped_elements: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def report_readings(report: Report, structure_id: int) -> tuple[list[ReadingIn], list[str]]:
    """The readings a report carries, and the names of elements that map to no quantity."""
    observed = report.observed_at or report.send_time
    readings: list[ReadingIn] = []
    skipped: list[str] = []

    def add(element_id: int, at: datetime, value: float | None) -> None:
        quantity = ELEMENT_QUANTITIES.get(element_id)
        if quantity is None:
            skipped.append(f"element_{element_id:02x}")
            return
        quality = QUANTITIES[quantity].quality_of(value)
        readings.append(ReadingIn(structure_id, quantity, at, value, int(quality), _SL651))

    for element in report.values:
        add(element.element_id, element.observed_at or observed, float(element.value))
    for element_id in report.unavailable:
        add(element_id, observed, None)
    for series in report.series:
        for index, entry in enumerate(series.values):
            add(series.element_id, series.observed_at + index * series.step,
                None if entry is None else float(entry))
    if report.status_bits is not None:
        readings.append(ReadingIn(structure_id, STATUS_QUANTITY, observed,
                                  float(report.status_bits), 0, _SL651))
    skipped.extend(f"element_{raw.element_id:02x}" for raw in report.raw_unknown)
    return readings, skipped


class Sl651Sink:
    """``await sink(report)`` stores a report and answers True once it is committed."""

    def __init__(self, *, session_factory: sessionmaker[Session], clock: Clock | None = None,
                 recheck_s: float = UNKNOWN_STATION_RECHECK_S) -> None:
        self.session_factory = session_factory
        self.counters = SinkCounters()
        self.recheck_s = recheck_s
        self._clock = clock or get_clock()
        self._stations: dict[str, int] = {}
        self._unknown: dict[str, float] = {}

    async def __call__(self, report: Report) -> bool:
        # The database is blocking; keep the event loop serving other units meanwhile.
        return await asyncio.to_thread(self.store, report)

    def store(self, report: Report) -> bool:
        """Store one report; True after the commit, False for an unknown station."""
        self.counters.reports += 1
        now = self._clock.now()
        with self.session_factory() as session, session.begin():
            structure_id = self._structure_id(session, report.station)
            if structure_id is None:
                self.counters.unknown_station += 1
                return False
            readings, skipped = report_readings(report, structure_id)
            result = insert_readings(session, readings, received_at=now)
        self.counters.reports_stored += 1
        self.counters.readings_inserted += result.inserted
        self.counters.duplicates += result.duplicates
        self.counters.skipped_elements += len(skipped)
        if skipped:
            logger.info("SL651 station %s serial %s: elements without a quantity skipped: %s",
                        report.station, report.serial, ", ".join(sorted(set(skipped))))
        return True

    def _structure_id(self, session: Session, station: str) -> int | None:
        address = station.upper()
        if address in self._stations:
            return self._stations[address]
        last_miss = self._unknown.get(address)
        if last_miss is not None and time.monotonic() - last_miss < self.recheck_s:
            return None
        found = session.scalar(select(Structure.id)
                               .where(func.upper(Structure.sl651_address) == address))
        if found is None:
            self._unknown[address] = time.monotonic()
            logger.warning("SL651 report from unknown station %s not confirmed: no structure "
                           "has this sl651_address", address)
            return None
        self._unknown.pop(address, None)
        self._stations[address] = found
        return found
