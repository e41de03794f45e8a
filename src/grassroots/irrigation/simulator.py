"""`grassroots irrigation simulate`: the demo district's field devices, talking real protocols.

Reads the structures from the database (seed them with ``grassroots seed demo``) and runs, for
each one, the device its addressing names:

* ``sl651_address``: a telemetry unit that connects by TCP to the SL 651 centre station
  (``grassroots ingest``), sends a timed report (32H) every reporting interval with its
  levels, flow, gate opening and supply voltage, waits for the centre's confirmation, keeps
  what is unconfirmed in a small outbox and resends it (oldest first, ETB between frames of a
  backlog, ETX on the last). It hangs up when the centre ends the session (EOT) and stays on
  the line with a 2F keep-alive every ``keepalive_s`` when it answers ESC.
* ``mqtt_device_id``: an MQTT client publishing to ``{root}/{id}/telemetry`` at QoS 1
  (docs/mqtt.md), with a retained ``offline`` last will on ``{root}/{id}/status`` and a
  retained ``online`` once connected; readings taken while it is cut off are flushed as
  one array on return.
* a Modbus endpoint: a Modbus TCP server on the structure's host and port exposing the
  registers the poller reads (``modbus_poll.registers_for``), refreshed as the state moves.

Values come from ``simulator_model.DistrictModel``. Flows follow the plan of today
(``flow_plan``), the same plan the alarms judge flows against, so a fault-free run raises no
flow alarm; ``season_day`` makes the devices follow another day's plan instead (moving on with
the calendar), say a summer round while the real canals are dry in winter, and then
flow-versus-plan alarms fire where that day's flows differ from today's. ``speed`` fast-forwards
the rest: at speed 60 the diurnal swing, sensor noise, battery drain and soil drying run 60
times faster and each device reports 60 times as often (at most every ``MIN_INTERVAL_S``).
Timestamps stay wall-clock time, since the platform judges data and liveness in real time.

Observation times of SL 651 reports have minute resolution (the standard's), so at high
speeds several reports of a minute share one observation time and storage keeps the first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import signal
import struct
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from pymodbus.datastore import (
    ModbusSequentialDataBlock,
    ModbusServerContext,
    ModbusSlaveContext,
)
from pymodbus.server import ModbusTcpServer
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from grassroots.irrigation.flow_plan import planned_flows_range
from grassroots.irrigation.network.models import Canal, Structure, StructureKind
from grassroots.irrigation.simulator_model import (
    CanalInfo,
    DistrictModel,
    Faults,
    Site,
    local,
)
from grassroots.irrigation.telemetry.modbus_poll import (
    DataType,
    Order,
    RegisterSpec,
    RegisterTable,
    registers_for,
)
from grassroots.irrigation.telemetry.mqtt_ingest import DEFAULT_TOPIC_ROOT, STATUS, TELEMETRY
from grassroots.irrigation.telemetry.sl651 import (
    ELEMENTS_BY_NAME,
    Control,
    Direction,
    ElementValue,
    Frame,
    FrameScanner,
    FunctionCode,
    StationClass,
    encode_keepalive,
    encode_report,
    reading,
)
from grassroots.irrigation.telemetry.sl651_server import DEFAULT_HOST, DEFAULT_PORT
from grassroots.irrigation.telemetry.state import report_interval
from grassroots.kernel.clock import Clock, get_clock
from grassroots.runtime import Runtime
from grassroots.settings import Settings

logger = logging.getLogger(__name__)

SEED = 651
DEFAULT_FAULT_RATE = 0.02  # faults per device per wall-clock hour
MIN_INTERVAL_S = 0.2
KEEPALIVE_S = 60.0
CONFIRM_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 5.0
OUTBOX_SIZE = 64  # reports a unit keeps while the centre cannot be reached
MQTT_BUFFER = 500
FAULT_TICK_S = 1.0
PLAN_REFRESH_S = 5.0
SUMMER_ROUND_DAY = (7, 11)  # a summer irrigation round in full swing, for the hint
STATS_EVERY_S = 60.0

# SL 651 station class by structure kind; a metered turnout is an intake.
STATION_CLASSES: Mapping[StructureKind, StationClass] = {
    StructureKind.INTEGRATED_GATE: StationClass.GATE_DAM,
    StructureKind.SMART_HOIST: StationClass.GATE_DAM,
    StructureKind.PARSHALL_FLUME: StationClass.RIVER,
    StructureKind.LEVEL_GAUGE: StationClass.RIVER,
    StructureKind.PUMP_STATION: StationClass.PUMP_STATION,
    StructureKind.SOIL_MOISTURE: StationClass.SOIL_MOISTURE,
    StructureKind.WEATHER: StationClass.RAINFALL,
}
# A flume's gauge is its water level element (39H) in SL 651.
SL651_ALIASES = {"head_m": "water_level_m"}


class SimulatorError(RuntimeError):
    """The simulator cannot start (no structures, a port taken)."""


@dataclass(frozen=True, slots=True)
class SimulatorOptions:
    mqtt_host: str | None = "127.0.0.1"  # None: no MQTT devices
    mqtt_port: int = 1883
    mqtt_topic_root: str = DEFAULT_TOPIC_ROOT
    mqtt_client_prefix: str = "sim-"
    sl651_host: str = DEFAULT_HOST
    sl651_port: int | None = DEFAULT_PORT  # None: no SL 651 units
    modbus: bool = True
    speed: float = 1.0
    duration_s: float | None = None
    season_day: date | None = None
    fault_rate: float = DEFAULT_FAULT_RATE
    seed: int = SEED
    min_interval_s: float = MIN_INTERVAL_S
    keepalive_s: float = KEEPALIVE_S
    confirm_timeout_s: float = CONFIRM_TIMEOUT_S
    outbox_size: int = OUTBOX_SIZE


@dataclass
class SimulatorStats:
    sl651_units: int = 0
    sl651_reports: int = 0  # observations queued
    sl651_frames: int = 0  # frames sent, resends included
    sl651_confirmed: int = 0
    sl651_resent: int = 0
    sl651_unconfirmed: int = 0
    sl651_keepalives: int = 0
    sl651_dropped: int = 0  # outbox overflow while cut off
    sl651_connect_failures: int = 0
    mqtt_devices: int = 0
    mqtt_messages: int = 0
    mqtt_buffered: int = 0
    modbus_servers: int = 0
    modbus_updates: int = 0
    faults: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- time


class SimClock:
    """Simulated time: ``start`` plus ``speed`` × the wall-clock time since it began."""

    def __init__(self, start: datetime, speed: float) -> None:
        if not speed > 0:
            raise ValueError("speed must be positive")
        self.start = start
        self.speed = speed
        self._origin = asyncio.get_running_loop().time()

    def now(self) -> datetime:
        elapsed = asyncio.get_running_loop().time() - self._origin
        return self.start + timedelta(seconds=elapsed * self.speed)


def device_interval_s(site: Site, options: SimulatorOptions) -> float:
    """Wall-clock seconds between two reports: the platform's interval over the speed."""
    config = json.dumps(dict(site.config)) if site.config else None
    seconds = report_interval(site.kind, config).total_seconds() / options.speed
    return max(options.min_interval_s, seconds)


# --------------------------------------------------------------------------- SL 651


def element_values(values: Mapping[str, float]) -> list[ElementValue]:
    """Readings as SL 651 elements, rounded to each element's decimals; others are left out."""
    elements: list[ElementValue] = []
    taken: set[int] = set()
    for quantity, value in values.items():
        name = SL651_ALIASES.get(quantity, quantity)
        if name != quantity and name in values:
            continue
        element = ELEMENTS_BY_NAME.get(name)
        if element is None or element.element_id in taken or not math.isfinite(value):
            continue
        taken.add(element.element_id)
        rounded = Decimal(str(round(value, element.decimals)))
        elements.append(reading(element.element_id, rounded))
    return elements


@dataclass(slots=True)
class _Pending:
    serial: int
    sent_at: datetime
    observed_at: datetime
    values: tuple[ElementValue, ...]
    attempts: int = 0


class Sl651Unit:
    """One telemetry unit (RTU): observe on schedule, report, await confirmation, resend."""

    def __init__(self, *, station: str, station_class: int, host: str, port: int,
                 interval_s: float, sample: Callable[[], Mapping[str, float]],
                 offline: Callable[[], bool] = lambda: False, clock: Clock | None = None,
                 stats: SimulatorStats | None = None, keepalive_s: float = KEEPALIVE_S,
                 confirm_timeout_s: float = CONFIRM_TIMEOUT_S, outbox_size: int = OUTBOX_SIZE,
                 first_report_s: float = 0.0, serial: int = 1) -> None:
        self.station = station
        self.station_class = station_class
        self.host, self.port = host, port
        self.interval_s = interval_s
        self.sample = sample
        self.offline = offline
        self.clock = clock or get_clock()
        self.stats = stats or SimulatorStats()
        self.keepalive_s = keepalive_s
        self.confirm_timeout_s = confirm_timeout_s
        self.first_report_s = first_report_s
        self.retry_s = min(max(interval_s, 1.0), 30.0)
        self.outbox: deque[_Pending] = deque()
        self.outbox_size = outbox_size
        self.confirmed_serials: list[int] = []
        self._serial = serial
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._scanner = FrameScanner()
        self._stay_online = False
        self._last_tx = 0.0
        self._retry_at = 0.0

    @property
    def online(self) -> bool:
        return self._writer is not None

    def observe(self) -> None:
        """Take a reading and queue its timed report."""
        now = self.clock.now()
        values = tuple(element_values(self.sample()))
        if not values:
            return
        if len(self.outbox) >= self.outbox_size:
            self.outbox.popleft()
            self.stats.sl651_dropped += 1
        self.outbox.append(_Pending(self._next_serial(), now,
                                    now.replace(second=0, microsecond=0), values))
        self.stats.sl651_reports += 1

    def _next_serial(self) -> int:
        serial = self._serial
        self._serial = self._serial % 0xFFFF + 1
        return serial

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        next_report = loop.time() + self.first_report_s
        try:
            while not stop.is_set():
                wake = next_report
                if self.outbox and not self.offline():
                    wake = min(wake, self._retry_at)
                if self._writer is not None and self._stay_online:
                    wake = min(wake, self._last_tx + self.keepalive_s)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(0.0, wake - loop.time()))
                    break
                now = loop.time()
                if now >= next_report:
                    self.observe()
                    next_report += self.interval_s
                    if next_report < now:  # fell behind (a slow centre): skip, do not burst
                        next_report = now + self.interval_s
                if self.offline():
                    self._hang_up()
                    continue
                if self.outbox and now >= self._retry_at:
                    await self.flush()
                elif (self._writer is not None and self._stay_online
                      and now - self._last_tx >= self.keepalive_s):
                    await self._keepalive()
        finally:
            self._hang_up()

    async def flush(self) -> None:
        """Send the outbox oldest first, each frame confirmed before the next is sent."""
        loop = asyncio.get_running_loop()
        try:
            while self.outbox:
                if self._writer is None:
                    await self._connect()
                assert self._writer is not None
                item = self.outbox[0]
                end = Control.ETB if len(self.outbox) > 1 else Control.ETX
                self._writer.write(encode_report(
                    station=self.station, function=FunctionCode.TIMED, serial=item.serial,
                    sent_at=item.sent_at, station_class=self.station_class,
                    observed_at=item.observed_at, values=item.values, end=end))
                await self._writer.drain()
                self._last_tx = loop.time()
                self.stats.sl651_frames += 1
                if item.attempts:
                    self.stats.sl651_resent += 1
                item.attempts += 1
                answer = await self._confirmation(item.serial)
                if answer is None or answer == Control.NAK:
                    self.stats.sl651_unconfirmed += 1
                    self._hang_up()
                    self._retry_at = loop.time() + self.retry_s
                    return
                self.outbox.popleft()
                self.confirmed_serials.append(item.serial)
                self.stats.sl651_confirmed += 1
                if answer == Control.EOT:
                    self._hang_up()  # the centre ends the session; call again for more
                elif answer == Control.ESC:
                    self._stay_online = True
        except (OSError, TimeoutError) as error:
            self.stats.sl651_connect_failures += 1
            logger.debug("SL651 unit %s: %s", self.station, error)
            self._hang_up()
            self._retry_at = loop.time() + self.retry_s

    async def _connect(self) -> None:
        self._reader, self._writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port), CONNECT_TIMEOUT_S)
        self._scanner = FrameScanner()
        self._stay_online = False

    async def _confirmation(self, serial: int) -> Control | None:
        """The end byte of the centre's answer to ``serial``, or None on silence or hang-up."""
        assert self._reader is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.confirm_timeout_s
        wanted = serial.to_bytes(2, "big")
        while (remaining := deadline - loop.time()) > 0:
            try:
                chunk = await asyncio.wait_for(self._reader.read(4096), remaining)
            except TimeoutError:
                return None
            if not chunk:
                return None
            for item in self._scanner.feed(chunk):
                if (isinstance(item, Frame) and item.direction == Direction.DOWN
                        and item.function == FunctionCode.TIMED and item.body[:2] == wanted):
                    return item.end
        return None

    async def _keepalive(self) -> None:
        assert self._writer is not None
        try:
            self._writer.write(encode_keepalive(station=self.station, serial=self._next_serial(),
                                                sent_at=self.clock.now()))
            await self._writer.drain()
        except OSError:
            self._hang_up()
            return
        self._last_tx = asyncio.get_running_loop().time()
        self.stats.sl651_keepalives += 1

    def _hang_up(self) -> None:
        if self._writer is not None:
            self._writer.transport.abort()
        self._reader = self._writer = None
        self._stay_online = False


# --------------------------------------------------------------------------- MQTT


class MqttDevice:
    """One MQTT field device: last will, retained status, QoS 1 telemetry, buffer while cut off."""

    def __init__(self, *, device_id: str, host: str, port: int,
                 topic_root: str = DEFAULT_TOPIC_ROOT, client_prefix: str = "sim-",
                 stats: SimulatorStats | None = None) -> None:
        self.device_id = device_id
        self.host, self.port = host, port
        root = topic_root.rstrip("/")
        self.telemetry_topic = f"{root}/{device_id}/{TELEMETRY}"
        self.status_topic = f"{root}/{device_id}/{STATUS}"
        self.stats = stats or SimulatorStats()
        self.connected = threading.Event()
        self.buffer: deque[dict[str, Any]] = deque(maxlen=MQTT_BUFFER)
        self.cut_off = False
        self._seq = 0
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                   client_id=f"{client_prefix}{device_id}",
                                   protocol=mqtt.MQTTv5)
        self._client.will_set(self.status_topic, "offline", qos=1, retain=True)
        self._client.reconnect_delay_set(1, 15)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect

    def start(self) -> None:
        self._client.connect_async(self.host, self.port, keepalive=30)
        self._client.loop_start()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags,
                    reason: ReasonCode, properties: Properties | None) -> None:
        if reason.is_failure:
            logger.warning("MQTT device %s refused by the broker: %s", self.device_id, reason)
            return
        client.publish(self.status_topic, "online", qos=1, retain=True)
        self.connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: mqtt.DisconnectFlags,
                       reason: ReasonCode, properties: Properties | None) -> None:
        self.connected.clear()

    def publish(self, observed_at: datetime, readings: Mapping[str, float | None]
                ) -> mqtt.MQTTMessageInfo | None:
        """Send one sample, with whatever was buffered before it, or buffer it (None)."""
        self._seq += 1
        item = {"ts": observed_at.isoformat(timespec="milliseconds"), "seq": self._seq,
                "readings": dict(readings)}
        if self.cut_off or not self.connected.is_set():
            self.buffer.append(item)
            self.stats.mqtt_buffered += 1
            return None
        payload: Any = item
        if self.buffer:
            payload = [*self.buffer, item]
            self.buffer.clear()
        info = self._client.publish(self.telemetry_topic, json.dumps(payload), qos=1)
        self.stats.mqtt_messages += 1
        return info

    def cut(self) -> None:
        """Drop off the network: the broker publishes the last will (MQTT 5 reason 0x04)."""
        if self.cut_off:
            return
        self.cut_off = True
        self._client.disconnect(ReasonCode(PacketTypes.DISCONNECT, identifier=4))
        self._client.loop_stop()
        self.connected.clear()

    def restore(self) -> None:
        if not self.cut_off:
            return
        self.cut_off = False
        self.start()

    def stop(self) -> None:
        """A clean shutdown: say offline (as the will would), then disconnect."""
        if not self.cut_off and self.connected.is_set():
            self._client.publish(self.status_topic, "offline", qos=1,
                                 retain=True).wait_for_publish(2)
        self._client.disconnect()
        self._client.loop_stop()


# --------------------------------------------------------------------------- Modbus


def encode_registers(spec: RegisterSpec, value: float | None) -> list[int] | None:
    """The raw registers a device holds for ``value`` (the inverse of ``spec.value_fn``)."""
    if spec.data_type == DataType.FLOAT32:
        data = struct.pack(">f", math.nan if value is None else (value - spec.offset) / spec.scale)
    else:
        if value is None:
            if spec.invalid is None:
                return None
            data = spec.invalid.to_bytes(2 * spec.count, "big")
        else:
            raw = round((value - spec.offset) / spec.scale)
            bits = 16 * spec.count
            signed = spec.data_type in (DataType.INT16, DataType.INT32)
            low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (
                0, (1 << bits) - 1)
            if spec.invalid is not None and not signed:
                high = min(high, spec.invalid - 1)
            raw = max(low, min(high, raw))
            data = raw.to_bytes(2 * spec.count, "big", signed=signed)
    words = [data[i:i + 2] for i in range(0, len(data), 2)]
    if spec.word_order == Order.LITTLE:
        words.reverse()
    return [int.from_bytes(word, spec.byte_order.value) for word in words]


class ModbusDevice:
    """A Modbus TCP server exposing one structure's registers."""

    def __init__(self, *, host: str, port: int, unit: int,
                 registers: Sequence[RegisterSpec]) -> None:
        self.host, self.port, self.unit = host, port, unit
        self.registers = tuple(registers)

        def block(table: RegisterTable) -> ModbusSequentialDataBlock:
            size = max((s.address + s.count for s in self.registers if s.table == table),
                       default=1)
            return ModbusSequentialDataBlock(1, [0] * size)  # the context adds 1 to addresses

        self._slave = ModbusSlaveContext(hr=block(RegisterTable.HOLDING),
                                         ir=block(RegisterTable.INPUT))
        self.context = ModbusServerContext(slaves={unit: self._slave}, single=False)
        self._server: ModbusTcpServer | None = None

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        server = ModbusTcpServer(self.context, address=(self.host, self.port))
        await server.serve_forever(background=True)
        if not server.transport:
            raise SimulatorError(f"cannot listen for Modbus on {self.host}:{self.port}")
        self._server = server

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()
            self._server = None

    def write(self, values: Mapping[str, float | None]) -> None:
        for spec in self.registers:
            if spec.quantity not in values:
                continue
            words = encode_registers(spec, values[spec.quantity])
            if words is None:
                continue
            function = 3 if spec.table == RegisterTable.HOLDING else 4
            self._slave.setValues(function, spec.address, words)


# --------------------------------------------------------------------------- the district


def _config(raw: str | None) -> dict[str, Any]:
    try:
        value = json.loads(raw or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def load_district(session: Session) -> tuple[list[Site], list[CanalInfo], dict[int, Structure]]:
    """Every structure as a Site, the canals, and the rows (for register maps)."""
    structures = session.scalars(select(Structure).order_by(Structure.id)).all()
    sites = [Site(id=s.id, code=s.code, kind=StructureKind(s.kind), lon=s.lon, lat=s.lat,
                  config=_config(s.config), canal_id=s.canal_id,
                  outlet_canal_id=s.outlet_canal_id, is_turnout=bool(s.is_turnout),
                  sl651_address=s.sl651_address, mqtt_device_id=s.mqtt_device_id,
                  modbus_host=s.modbus_host, modbus_port=s.modbus_port,
                  modbus_unit=s.modbus_unit) for s in structures]
    canals = [CanalInfo(c.id, c.code, c.design_capacity_m3s)
              for c in session.scalars(select(Canal))]
    return sites, canals, {s.id: s for s in structures}


class Simulator:
    """Every device of the district, in one event loop (MQTT clients keep their own threads)."""

    def __init__(self, session_factory: sessionmaker[Session], options: SimulatorOptions, *,
                 clock: Clock | None = None) -> None:
        self.session_factory = session_factory
        self.options = options
        self.clock = clock or get_clock()
        self.stats = SimulatorStats()
        self.faults = Faults(rate_per_hour=options.fault_rate, seed=options.seed)
        self.units: dict[int, Sl651Unit] = {}
        self.mqtt: dict[int, MqttDevice] = {}
        self.modbus: dict[int, ModbusDevice] = {}
        self.model: DistrictModel | None = None
        self.sim_clock: SimClock | None = None
        self.sites: dict[int, Site] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._rng = random.Random(options.seed)
        today = local(self.clock.now()).date()
        self._season_offset = (options.season_day - today) if options.season_day else timedelta()

    def _plans(self, first: date, last: date) -> Mapping[date, Mapping[int, float]]:
        with self.session_factory() as session:
            return planned_flows_range(session=session, first=first, last=last)

    def plan_day(self) -> date:
        """The day whose plan the devices follow: today, or season_day moving with the calendar."""
        return local(self.clock.now()).date() + self._season_offset

    async def _ensure_plans(self, model: DistrictModel, day: date) -> None:
        first, last = day - timedelta(days=30), day + timedelta(days=2)
        if not model.plans_cached(first, last):
            model.apply_plans(await asyncio.to_thread(self._plans, first, last))

    async def start(self) -> None:
        """Load the district and open the Modbus servers; ``run`` starts it unless done."""
        sites, canals, rows = await asyncio.to_thread(self._load)
        if not any(s.sl651_address or s.mqtt_device_id or s.modbus_host for s in sites):
            raise SimulatorError("no structure with a device address in the database; "
                                 "seed the demo district first (grassroots seed demo)")
        self.sites = {site.id: site for site in sites}
        now = local(self.clock.now())
        start = datetime.combine(self.plan_day(), now.timetz())
        model = DistrictModel(sites, canals, self._plans, sim_start=start,
                              seed=self.options.seed)
        await self._ensure_plans(model, self.plan_day())
        if model.has_plans and model.planned_pump_flow(self.plan_day()) <= 0:
            logger.info("no water is planned on %s: the canals are dry (outside the pumping "
                        "season, pass a season day such as %s to simulate a summer round)",
                        self.plan_day(), date(now.year, *SUMMER_ROUND_DAY).isoformat())
        self.model = model
        self.sim_clock = SimClock(start, self.options.speed)
        options = self.options
        for site in sites:
            interval = device_interval_s(site, options)
            first = self._rng.uniform(0, min(interval, 1.0))
            if site.sl651_address and options.sl651_port is not None:
                unit = Sl651Unit(
                    station=site.sl651_address, station_class=STATION_CLASSES[site.kind],
                    host=options.sl651_host, port=options.sl651_port, interval_s=interval,
                    sample=self._sampler(site), offline=self._offline(site),
                    clock=self.clock, stats=self.stats, keepalive_s=options.keepalive_s,
                    confirm_timeout_s=options.confirm_timeout_s,
                    outbox_size=options.outbox_size, first_report_s=first,
                    serial=self._rng.randint(1, 60_000))
                self.units[site.id] = unit
            if site.mqtt_device_id and options.mqtt_host is not None:
                device = MqttDevice(device_id=site.mqtt_device_id, host=options.mqtt_host,
                                    port=options.mqtt_port, topic_root=options.mqtt_topic_root,
                                    client_prefix=options.mqtt_client_prefix, stats=self.stats)
                device.start()
                self.mqtt[site.id] = device
            if site.modbus_host and options.modbus:
                registers = registers_for(rows[site.id])
                if registers:
                    modbus = ModbusDevice(host=site.modbus_host, port=site.modbus_port or 502,
                                          unit=site.modbus_unit or 1, registers=registers)
                    modbus.write(self._sampler(site)())
                    await modbus.start()
                    self.modbus[site.id] = modbus
        self.stats.sl651_units = len(self.units)
        self.stats.mqtt_devices = len(self.mqtt)
        self.stats.modbus_servers = len(self.modbus)
        logger.info("simulating %d SL651 units, %d MQTT devices, %d Modbus servers at %gx "
                    "from %s", len(self.units), len(self.mqtt), len(self.modbus),
                    options.speed, start.isoformat(timespec="minutes"))

    def _load(self) -> tuple[list[Site], list[CanalInfo], dict[int, Structure]]:
        with self.session_factory() as session:
            return load_district(session)

    def _sampler(self, site: Site) -> Callable[[], dict[str, float]]:
        def sample() -> dict[str, float]:
            assert self.model is not None and self.sim_clock is not None
            values = self.model.sample(site, self.sim_clock.now(), self.plan_day())
            return self.faults.apply(site.id, values, now=self._wall())
        return sample

    def _offline(self, site: Site) -> Callable[[], bool]:
        return lambda: self.faults.offline(site.id, now=self._wall())

    @staticmethod
    def _wall() -> float:
        return asyncio.get_running_loop().time()

    async def run(self, stop: asyncio.Event) -> SimulatorStats:
        """Start, run until ``stop`` is set or the duration is over, stop cleanly."""
        try:
            if self.model is None:
                await self.start()
            for site_id, unit in self.units.items():
                self._spawn(unit.run(stop), f"sl651-{site_id}")
            for site_id in self.mqtt:
                self._spawn(self._mqtt_forever(site_id, stop), f"mqtt-{site_id}")
            for site_id in self.modbus:
                self._spawn(self._modbus_forever(site_id, stop), f"modbus-{site_id}")
            self._spawn(self._faults_forever(stop), "faults")
            self._spawn(self._plans_forever(stop), "plans")
            self._spawn(self._log_forever(stop), "stats")
            if self.options.duration_s is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.options.duration_s)
            else:
                await stop.wait()
        finally:
            stop.set()
            await self.close()
        self.stats.faults = {str(k): v for k, v in self.faults.started.items()}
        return self.stats

    async def close(self) -> None:
        tasks, self._tasks = self._tasks, []
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=5)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for device in self.mqtt.values():
            await asyncio.to_thread(device.stop)
        for modbus in self.modbus.values():
            await modbus.stop()

    def _spawn(self, work: Any, name: str) -> None:
        self._tasks.append(asyncio.create_task(work, name=name))

    async def _sleep(self, stop: asyncio.Event, seconds: float) -> bool:
        """Sleep; True when it is time to stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
            return True
        return False

    async def _mqtt_forever(self, site_id: int, stop: asyncio.Event) -> None:
        site, device = self.sites[site_id], self.mqtt[site_id]
        interval = device_interval_s(site, self.options)
        sample = self._sampler(site)
        if await self._sleep(stop, self._rng.uniform(0, min(interval, 1.0))):
            return
        while True:
            if self.faults.offline(site_id, now=self._wall()):
                device.cut()
            elif device.cut_off:
                device.restore()
            device.publish(self.clock.now(), sample())
            if await self._sleep(stop, interval):
                return

    async def _modbus_forever(self, site_id: int, stop: asyncio.Event) -> None:
        site, device = self.sites[site_id], self.modbus[site_id]
        interval = min(device_interval_s(site, self.options), 5.0)
        sample = self._sampler(site)
        while not await self._sleep(stop, interval):
            offline = self.faults.offline(site_id, now=self._wall())
            try:
                if offline and device.running:
                    await device.stop()
                elif not offline and not device.running:
                    await device.start()
            except SimulatorError:
                logger.warning("Modbus device of structure %s could not listen again; retrying",
                               site_id)
            device.write(sample())
            self.stats.modbus_updates += 1

    async def _faults_forever(self, stop: asyncio.Event) -> None:
        ids = list(self.sites)
        while not await self._sleep(stop, FAULT_TICK_S):
            for site_id, fault in self.faults.tick(ids, now=self._wall(), dt_s=FAULT_TICK_S):
                logger.info("fault injected at %s: %s", self.sites[site_id].code, fault.kind)

    async def _plans_forever(self, stop: asyncio.Event) -> None:
        assert self.model is not None and self.sim_clock is not None
        while not await self._sleep(stop, PLAN_REFRESH_S):
            day = self.plan_day()
            try:
                await self._ensure_plans(self.model, day)
            except Exception:  # the model fetches what it lacks itself; this only prefetches
                logger.exception("prefetching plans failed")

    async def _log_forever(self, stop: asyncio.Event) -> None:
        while not await self._sleep(stop, STATS_EVERY_S):
            logger.info("simulator: %s", self.stats.as_dict())


# --------------------------------------------------------------------------- CLI


def cli_simulate(
    settings: Settings,
    *,
    mqtt_host: str | None = "127.0.0.1",
    mqtt_port: int = 1883,
    sl651_host: str = DEFAULT_HOST,
    sl651_port: int | None = DEFAULT_PORT,
    modbus: bool = True,
    speed: float = 1.0,
    duration_s: float | None = None,
    season_day: date | None = None,
    fault_rate: float = DEFAULT_FAULT_RATE,
    seed: int = SEED,
) -> int:
    """`grassroots irrigation simulate`: run the district's devices until Ctrl-C or the duration."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not speed > 0:
        logger.error("speed must be positive, got %s", speed)
        return 2
    runtime = Runtime(settings)
    options = SimulatorOptions(mqtt_host=mqtt_host, mqtt_port=mqtt_port, sl651_host=sl651_host,
                               sl651_port=sl651_port, modbus=modbus, speed=speed,
                               duration_s=duration_s, season_day=season_day,
                               fault_rate=fault_rate, seed=seed)

    async def main() -> SimulatorStats:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, stop.set)
        return await Simulator(runtime.session_factory, options, clock=runtime.clock).run(stop)

    try:
        stats = asyncio.run(main())
    except KeyboardInterrupt:
        return 0
    except (SimulatorError, OSError) as error:
        logger.error("simulator could not run: %s", error)
        return 1
    finally:
        runtime.engine.dispose()
    logger.info("simulator stopped: %s", stats.as_dict())
    return 0
