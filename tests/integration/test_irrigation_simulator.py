"""The device simulator against the real intakes: SL 651 centre, Mosquitto, Modbus pollers.

Each test uses its own MQTT topic root and client ids and ephemeral ports, so runs on the
machine's broker never see each other.
"""

from __future__ import annotations

import asyncio
import json
import queue
import socket
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import paho.mqtt.client as mqtt
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy.orm import Session
from tests.telemetry_factories import Publisher, broker_answers, make_structure, wait_until

from grassroots.irrigation.demo import seed_irrigation_demo
from grassroots.irrigation.network.models import Structure, StructureKind
from grassroots.irrigation.simulator import (
    MqttDevice,
    Simulator,
    SimulatorOptions,
    SimulatorStats,
    Sl651Unit,
    cli_simulate,
)
from grassroots.irrigation.telemetry.api import router as telemetry_router
from grassroots.irrigation.telemetry.models import DeviceState, Reading
from grassroots.irrigation.telemetry.mqtt_ingest import MqttIngestor
from grassroots.irrigation.telemetry.service import IngestOptions, IngestService
from grassroots.irrigation.telemetry.sl651 import Report, StationClass
from grassroots.irrigation.telemetry.sl651_server import LinkMode, Sl651Server
from grassroots.irrigation.telemetry.state import Announced, DeviceHealth, device_states
from grassroots.irrigation.water.hydraulics import GateRating, ParshallFlume
from grassroots.kernel.auth.models import User
from grassroots.kernel.auth.roles import Role
from grassroots.kernel.clock import SystemClock
from grassroots.runtime import Runtime
from grassroots.settings import Settings
from grassroots.web.deps import get_current_user
from grassroots.web.errors import install_error_handlers

needs_broker = pytest.mark.skipif(not broker_answers(), reason="no MQTT broker at 1883")
SUMMER_ROUND = date(2025, 7, 11)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def fresh(session: Session) -> Session:
    return Session(session.get_bind())


def unique_root() -> str:
    return f"test/{uuid.uuid4().hex}/irrigation"


# --------------------------------------------------------------------------- the whole district


def devices_all_reporting(session: Session, runtime: Runtime, ids: set[int]) -> bool:
    with fresh(session) as s:
        seen = set(s.scalars(sa.select(Reading.structure_id).distinct()))
        states = device_states(session=s, now=runtime.clock.now())
    sources = sources_of(session)
    return ids <= seen and all(states.get(i) == DeviceHealth.ONLINE for i in ids) and {
        "sl651", "mqtt", "modbus"} <= set(sources)


def sources_of(session: Session) -> dict[str, int]:
    with fresh(session) as s:
        return dict(s.execute(sa.select(Reading.source, sa.func.count())
                              .group_by(Reading.source)).tuples().all())


def latest(session: Session, code: str, source: str | None = None) -> dict[str, float]:
    """The newest value of each quantity of a structure (from one source, if given)."""
    query = (sa.select(Reading.quantity, Reading.value)
             .join(Structure, Structure.id == Reading.structure_id)
             .where(Structure.code == code).order_by(Reading.observed_at))
    if source is not None:
        query = query.where(Reading.source == source)
    with fresh(session) as s:
        rows = s.execute(query).tuples().all()
    return {quantity: value for quantity, value in rows if value is not None}


@needs_broker
def test_the_simulated_district_reaches_the_platform_by_sl651_mqtt_and_modbus_and_is_online(
        session: Session, runtime: Runtime) -> None:
    seed_irrigation_demo(runtime)
    # Wall-clock time, as in production: with a frozen clock every protocol's readings would
    # share one timestamp and the first copy stored would hide the others.
    live = Runtime(runtime.settings, clock=SystemClock())
    live.__dict__["engine"] = runtime.engine
    with session.begin():  # ephemeral ports instead of the demo's 15020-15026
        for structure in session.scalars(sa.select(Structure)
                                         .where(Structure.modbus_host.is_not(None))):
            structure.modbus_port = free_port()
    with fresh(session) as s:
        devices = {sid for sid, *addresses in s.execute(sa.select(
            Structure.id, Structure.sl651_address, Structure.mqtt_device_id,
            Structure.modbus_host)).tuples() if any(addresses)}
        mqtt_ids = set(s.scalars(sa.select(Structure.id)
                                 .where(Structure.mqtt_device_id.is_not(None))))
    root = unique_root()
    ingest = IngestOptions(mqtt_client_id=f"ingest-{uuid.uuid4().hex}", mqtt_topic_root=root,
                           mqtt_session_expiry_s=60, sl651_port=0,
                           modbus_interval=timedelta(seconds=0.2),
                           sweep_every=timedelta(seconds=0.5))
    stats = SimulatorStats()

    async def scenario() -> None:
        nonlocal stats
        service = IngestService(live, ingest)
        simulator = Simulator(live.session_factory, SimulatorOptions(
            mqtt_topic_root=root, mqtt_client_prefix=f"sim-{uuid.uuid4().hex[:8]}-",
            sl651_port=0, speed=60, season_day=SUMMER_ROUND, fault_rate=0.0),
            clock=live.clock)
        await simulator.start()
        await service.start()
        stop = asyncio.Event()
        try:
            assert service.mqtt is not None and service.sl651 is not None
            await asyncio.to_thread(service.mqtt.wait_connected, 10)
            for unit in simulator.units.values():
                unit.port = service.sl651.port
            running = asyncio.create_task(simulator.run(stop))
            try:
                await asyncio.to_thread(
                    wait_until, lambda: devices_all_reporting(session, live, devices),
                    timeout=60, message="every device reporting and online")
            finally:
                stop.set()
                stats = await running
        finally:
            await service.stop()

    asyncio.run(scenario())

    assert {"sl651", "mqtt", "modbus"} <= set(sources_of(session))
    assert stats.sl651_units == 69 and stats.mqtt_devices == 18 and stats.modbus_servers == 7
    assert stats.sl651_confirmed >= 69 and stats.sl651_unconfirmed == 0
    with fresh(session) as s:
        announced = {row.structure_id: row.announced
                     for row in s.scalars(sa.select(DeviceState))}
    # They said online on connecting; a clean stop says offline again, like the last will.
    assert {announced[i] for i in mqtt_ids} <= {Announced.ONLINE, Announced.OFFLINE}
    assert all(announced[i] is not None for i in mqtt_ids)

    # The state is hydraulically consistent: a flume's head gives its flow by its formula…
    flume = latest(session, "F-MC-00", "sl651")
    assert flume["flow_m3s"] > 1.0
    with fresh(session) as s:
        config = json.loads(s.scalars(sa.select(Structure.config)
                                      .where(Structure.code == "F-MC-00")).one())
    rating = ParshallFlume(config["throat_width_m"])
    assert rating.free_flow_m3s(flume["water_level_m"]) == pytest.approx(flume["flow_m3s"],
                                                                        rel=0.01)
    # …and a gate's opening and levels give its flow by the undershot-gate rating.
    gate = latest(session, "G-B1", "modbus")
    with fresh(session) as s:
        gate_config = json.loads(s.scalars(sa.select(Structure.config)
                                           .where(Structure.code == "G-B1")).one())
    expected = GateRating(gate_config["gate_width_m"], gate_config["discharge_coefficient"]).flow(
        gate["gate_opening_m"], gate["water_level_upstream_m"], gate["water_level_downstream_m"])
    assert gate["flow_m3s"] > 0.1
    assert expected.q_m3s == pytest.approx(gate["flow_m3s"], rel=0.02)
    assert gate["water_level_upstream_m"] < gate_config["upstream_max_m"]
    pump = latest(session, "PS-01", "mqtt")
    assert pump["power_kw"] == pytest.approx(9.81 * pump["flow_m3s"] * 72 / 0.78, rel=0.05)


# --------------------------------------------------------------------------- SL 651 unit


class RecordingSink:
    """Refuses the first ``refuse`` reports (no confirmation goes out), stores the rest."""

    def __init__(self, refuse: int = 0) -> None:
        self.refuse = refuse
        self.reports: list[Report] = []

    async def __call__(self, report: Report) -> bool:
        self.reports.append(report)
        return len(self.reports) > self.refuse


def unit(port: int, **kwargs: object) -> Sl651Unit:
    values = {"water_level_m": 1.234, "flow_m3s": 0.5, "voltage_v": 12.6}
    options: dict[str, object] = {"interval_s": 0.2, "confirm_timeout_s": 0.5, "serial": 100,
                                  "sample": lambda: values}
    options.update(kwargs)
    return Sl651Unit(station="0015020001", station_class=StationClass.RIVER, host="127.0.0.1",
                     port=port, **options)


async def run_for(target: Sl651Unit, seconds: float) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(target.run(stop))
    await asyncio.sleep(seconds)
    stop.set()
    await task


def test_a_unit_resends_an_unconfirmed_report_with_its_serial_until_it_is_confirmed() -> None:
    sink = RecordingSink(refuse=1)

    async def scenario() -> Sl651Unit:
        async with Sl651Server(sink, port=0) as server:
            target = unit(server.port, interval_s=10.0)
            target.retry_s = 0.2
            await run_for(target, 1.5)
            return target

    target = asyncio.run(scenario())

    first, second = sink.reports[0], sink.reports[1]
    assert first.serial == second.serial == 100
    assert first.observed_at == second.observed_at
    assert first.value("water_level_m") == Decimal("1.234")
    assert target.confirmed_serials == [100]
    assert target.stats.sl651_resent == 1 and target.stats.sl651_unconfirmed == 1
    assert not target.outbox


def test_a_unit_cut_off_keeps_its_reports_and_sends_the_backlog_in_one_session() -> None:
    sink = RecordingSink()
    cut_off = True
    values = {"water_level_m": 1.5}

    async def scenario() -> tuple[Sl651Unit, int]:
        nonlocal cut_off
        async with Sl651Server(sink, port=0) as server:
            # It observes only while cut off, so the backlog is all there is to send.
            target = unit(server.port, offline=lambda: cut_off, interval_s=0.15,
                          sample=lambda: values if cut_off else {})
            stop = asyncio.Event()
            task = asyncio.create_task(target.run(stop))
            await asyncio.sleep(0.8)
            assert sink.reports == [] and len(target.outbox) >= 4
            queued = len(target.outbox)
            cut_off = False
            await asyncio.to_thread(wait_until, lambda: len(sink.reports) >= queued, timeout=5)
            stop.set()
            await task
            return target, server.counters.connections

    target, sessions = asyncio.run(scenario())

    serials = [r.serial for r in sink.reports]
    assert len(serials) >= 4 and serials == list(range(100, 100 + len(serials)))
    assert sessions == 1  # ETB between the backlog's frames, ETX on its last
    assert target.stats.sl651_confirmed == len(serials) and not target.outbox


def test_a_unit_stays_on_line_with_keepalives_when_the_centre_answers_esc() -> None:
    sink = RecordingSink()

    async def scenario() -> Sl651Server:
        async with Sl651Server(sink, port=0, link_mode=LinkMode.STAY_ONLINE) as server:
            await run_for(unit(server.port, interval_s=5.0, keepalive_s=0.2), 1.3)
            return server

    server = asyncio.run(scenario())

    assert len(sink.reports) == 1
    assert server.counters.connections == 1
    assert server.counters.keepalives >= 3


def test_a_unit_that_cannot_reach_the_centre_keeps_trying_without_losing_reports() -> None:
    port = free_port()  # nothing listens here

    async def scenario() -> Sl651Unit:
        target = unit(port, interval_s=0.1)
        target.retry_s = 0.1
        await run_for(target, 0.6)
        return target

    target = asyncio.run(scenario())

    assert target.stats.sl651_connect_failures >= 2
    assert len(target.outbox) == target.stats.sl651_reports >= 4


# --------------------------------------------------------------------------- MQTT device


class Watcher:
    """Subscribes to a device's topics and queues what arrives."""

    def __init__(self, topic: str) -> None:
        self.messages: queue.SimpleQueue[tuple[str, bytes, bool]] = queue.SimpleQueue()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                  client_id=f"watch-{uuid.uuid4().hex[:12]}",
                                  protocol=mqtt.MQTTv5)
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, m.payload,
                                                                    bool(m.retain)))
        self.client.connect("127.0.0.1", 1883)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()

    def next(self, topic_end: str, timeout: float = 10.0) -> bytes:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                topic, payload, _ = self.messages.get(timeout=left)
            except queue.Empty:
                break
            if topic.endswith(topic_end):
                return payload
        raise AssertionError(f"nothing on …{topic_end}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@needs_broker
def test_an_mqtt_device_says_online_its_last_will_says_offline_and_it_flushes_its_buffer(
) -> None:
    root = unique_root()
    watcher = Watcher(f"{root}/#")
    device = MqttDevice(device_id="gate-7", host="127.0.0.1", port=1883, topic_root=root,
                        client_prefix=f"sim-{uuid.uuid4().hex[:8]}-")
    try:
        device.start()
        assert device.connected.wait(10)
        assert watcher.next("/status") == b"online"
        at = datetime(2026, 3, 10, 1, 0, tzinfo=UTC)
        sent = device.publish(at, {"flow_m3s": 0.5})
        assert sent is not None
        sent.wait_for_publish(10)  # acknowledged, so not resent after the reconnect below
        assert json.loads(watcher.next("/telemetry"))["readings"] == {"flow_m3s": 0.5}

        device.cut()
        assert watcher.next("/status") == b"offline"  # the broker published the will
        device.publish(at + timedelta(minutes=1), {"flow_m3s": 0.6})
        device.publish(at + timedelta(minutes=2), {"flow_m3s": 0.7})
        device.restore()
        assert device.connected.wait(10)
        assert watcher.next("/status") == b"online"
        device.publish(at + timedelta(minutes=3), {"flow_m3s": 0.8})
        batch = json.loads(watcher.next("/telemetry"))
        assert [item["readings"]["flow_m3s"] for item in batch] == [0.6, 0.7, 0.8]
        assert [item["seq"] for item in batch] == [2, 3, 4]
    finally:
        device.stop()
        watcher.close()
    cleaner = Publisher()  # leave no retained status behind on the shared broker
    cleaner.publish(device.status_topic, b"", retain=True)
    cleaner.close()


# --------------------------------------------------------------------------- end to end


@pytest.fixture
def readings_api(runtime: Runtime, session: Session) -> Iterator[TestClient]:
    app = FastAPI()
    app.state.runtime = runtime
    install_error_handlers(app)
    app.include_router(telemetry_router)
    now = runtime.clock.now()
    with session.begin():
        user = User(username="viewer-e2e", display_name="viewer", role=Role.VIEWER,
                    password_hash="!", created_at=now, password_changed_at=now)
        session.add(user)
    app.dependency_overrides[get_current_user] = lambda: user
    with TestClient(app) as client:
        yield client


@needs_broker
def test_a_published_reading_is_queryable_through_the_readings_api_within_a_second(
        session: Session, runtime: Runtime, readings_api: TestClient) -> None:
    root = unique_root()
    device_id = f"e2e-{uuid.uuid4().hex[:8]}"
    structure = make_structure(session, kind=StructureKind.PARSHALL_FLUME,
                               mqtt_device_id=device_id)
    ingestor = MqttIngestor(session_factory=runtime.session_factory,
                            client_id=f"ingest-{uuid.uuid4().hex}", topic_root=root,
                            session_expiry_s=60, clock=runtime.clock)
    publisher = Publisher()
    url = f"/api/v1/irrigation/readings?structure={structure.code}&quantity=flow_m3s"
    try:
        ingestor.start()
        assert ingestor.wait_connected(10)
        started = time.monotonic()
        publisher.publish(f"{root}/{device_id}/telemetry",
                          {"ts": "2026-03-10T09:00:00+08:00", "readings": {"flow_m3s": 0.42}})
        body: dict[str, object] = {}
        while time.monotonic() - started < 1.0:
            body = readings_api.get(url).json()
            if body.get("count"):
                break
            time.sleep(0.02)
        elapsed = time.monotonic() - started
    finally:
        publisher.close()
        ingestor.stop()
    assert body.get("count") == 1, f"not visible after {elapsed:.2f}s"
    assert elapsed < 1.0
    assert body["readings"] == [{"quantity": "flow_m3s", "observed_at": "2026-03-10T01:00:00Z",
                                 "value": 0.42, "quality": 0, "source": "mqtt"}]


# --------------------------------------------------------------------------- the command


def test_the_command_refuses_to_run_on_a_database_without_devices(settings: Settings,
                                                                  runtime: Runtime) -> None:
    assert cli_simulate(settings, mqtt_host=None, sl651_port=None, modbus=False, speed=10,
                        duration_s=0.2) == 1


def test_the_command_runs_for_its_duration_and_stops_cleanly(settings: Settings,
                                                             runtime: Runtime) -> None:
    seed_irrigation_demo(runtime)
    started = time.monotonic()
    assert cli_simulate(settings, mqtt_host=None, sl651_port=free_port(), modbus=False,
                        speed=60, duration_s=0.5, fault_rate=0) == 0
    assert time.monotonic() - started < 10
