"""Polling a real pymodbus TCP server on an ephemeral port; failures come from real sockets."""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from tests.telemetry_factories import ModbusDevice, free_port, make_structure

from grassroots.irrigation.network.models import StructureKind
from grassroots.irrigation.telemetry.modbus_poll import (
    DataType,
    ModbusPoller,
    Order,
    RegisterSpec,
    RegisterTable,
    plan_blocks,
    poller_for,
    store_snapshot,
)
from grassroots.irrigation.telemetry.models import DeviceState, Reading
from grassroots.irrigation.telemetry.state import DeviceHealth, Quality, refresh_states
from grassroots.kernel.clock import FixedClock
from grassroots.runtime import Runtime

UNIT = ModbusDevice.UNIT


def words(fmt: str, value: float, *, swap_words: bool = False,
          swap_bytes: bool = False) -> list[int]:
    data = struct.pack(fmt, value)
    pairs = [data[i:i + 2] for i in range(0, len(data), 2)]
    if swap_bytes:
        pairs = [pair[::-1] for pair in pairs]
    if swap_words:
        pairs.reverse()
    return [int.from_bytes(pair, "big") for pair in pairs]


# What an integrated gate controller holds (the kind's default map) plus odd encodings.
HOLDING = [
    1234, 0, *words(">f", 1105.25), *words(">f", 1103.5), *words(">f", 2.75), 1260, 0,
    *words(">h", -250), 0, *words(">i", 123456, swap_words=True),
    *words(">f", 0.375, swap_words=True, swap_bytes=True), 0xFFFF,
]
INPUT = [*words(">f", 55.5), *[0] * 8]


class SilentDevice:
    """Accepts connections and never answers: a controller that hung."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        try:
            while True:
                self.accepted.append(self.listener.accept()[0])
        except OSError:
            return

    def close(self) -> None:
        for connection in self.accepted:
            connection.close()
        self.listener.close()


@pytest.fixture
def device() -> Iterator[ModbusDevice]:
    server = ModbusDevice(HOLDING, INPUT)
    server.start()
    yield server
    server.close()


ODD_SPECS = (
    RegisterSpec("water_level_relative_1_m", 10, DataType.INT16, scale=0.01),
    RegisterSpec("volume_m3", 12, DataType.INT32, word_order=Order.LITTLE),
    RegisterSpec("head_m", 14, DataType.FLOAT32, word_order=Order.LITTLE,
                 byte_order=Order.LITTLE),
    RegisterSpec("rain_mm", 16, DataType.UINT16, invalid=0xFFFF),
    RegisterSpec("power_kw", 0, DataType.FLOAT32, table=RegisterTable.INPUT),
)


def test_a_poll_decodes_every_declared_register_in_its_own_encoding(
    device: ModbusDevice, clock: FixedClock,
) -> None:
    with ModbusPoller("127.0.0.1", device.port, UNIT, ODD_SPECS, clock=clock) as poller:
        snapshot = poller.poll()

    assert snapshot.ok and snapshot.answered
    assert snapshot.observed_at == clock.now()
    assert snapshot.values == {"water_level_relative_1_m": -2.5, "volume_m3": 123456.0,
                               "head_m": 0.375, "rain_mm": None, "power_kw": 55.5}
    assert snapshot.quality["rain_mm"] == Quality.UNAVAILABLE
    assert snapshot.quality["power_kw"] == Quality.OK


def test_registers_are_read_in_as_few_requests_as_gaps_and_tables_allow() -> None:
    blocks = plan_blocks([*ODD_SPECS, RegisterSpec("flow_m3s", 60, DataType.FLOAT32)])

    assert [(b.table, b.address, b.count) for b in blocks] == [
        (RegisterTable.HOLDING, 10, 7), (RegisterTable.HOLDING, 60, 2),
        (RegisterTable.INPUT, 0, 2)]


def test_a_gate_with_the_default_map_is_polled_and_stored(
    device: ModbusDevice, runtime: Runtime, session: Session,
) -> None:
    gate = make_structure(session, kind=StructureKind.INTEGRATED_GATE,
                          modbus_host="127.0.0.1", modbus_port=device.port, modbus_unit=UNIT)
    poller = poller_for(gate, clock=runtime.clock)
    assert poller is not None

    with poller:
        result, _changes = store_snapshot(session_factory=runtime.session_factory,
                                          structure_id=gate.id, snapshot=poller.poll())

    assert result.inserted == 5
    with Session(runtime.engine) as fresh:
        values = dict(fresh.execute(sa.select(Reading.quantity, Reading.value)
                                    .where(Reading.structure_id == gate.id)).tuples().all())
        state = fresh.get(DeviceState, gate.id)
    assert values == pytest.approx({"gate_opening_m": 1.234, "water_level_upstream_m": 1105.25,
                                    "water_level_downstream_m": 1103.5, "flow_m3s": 2.75,
                                    "voltage_v": 12.6})
    assert state is not None and state.state == DeviceHealth.ONLINE


def test_a_register_map_in_the_structure_config_wins_over_the_kind_default(
    device: ModbusDevice, session: Session, clock: FixedClock,
) -> None:
    config = {"modbus_registers": [{"quantity": "head_m", "address": 14, "type": "float32",
                                    "word_order": "little", "byte_order": "little"}]}
    flume = make_structure(session, kind=StructureKind.PARSHALL_FLUME, config=json.dumps(config),
                           modbus_host="127.0.0.1", modbus_port=device.port, modbus_unit=UNIT)
    poller = poller_for(flume, clock=clock)
    assert poller is not None

    with poller:
        assert poller.poll().values == {"head_m": 0.375}


def test_a_refused_connection_gives_unavailable_readings_never_zero(
    runtime: Runtime, session: Session,
) -> None:
    gate = make_structure(session)
    specs = (RegisterSpec("gate_opening_m", 0, scale=0.001),
             RegisterSpec("flow_m3s", 6, DataType.FLOAT32))

    with ModbusPoller("127.0.0.1", free_port(), UNIT, specs, timeout_s=1,
                      clock=runtime.clock) as poller:
        snapshot = poller.poll()
    store_snapshot(session_factory=runtime.session_factory, structure_id=gate.id,
                   snapshot=snapshot)

    assert not snapshot.answered
    assert "cannot connect" in snapshot.errors[0]
    assert snapshot.values == {"gate_opening_m": None, "flow_m3s": None}
    with Session(runtime.engine) as fresh:
        rows = fresh.execute(sa.select(Reading.value, Reading.quality)).tuples().all()
        state = fresh.get(DeviceState, gate.id)
    assert rows == [(None, Quality.UNAVAILABLE | Quality.NO_RESPONSE)] * 2
    assert state is not None
    assert (state.state, state.last_seen_at) == (DeviceHealth.OFFLINE, None)
    assert "cannot connect" in (state.last_error or "")


def test_a_device_that_never_answers_times_out_as_unavailable(clock: FixedClock) -> None:
    hung = SilentDevice()
    try:
        with ModbusPoller("127.0.0.1", hung.port, UNIT,
                          (RegisterSpec("gate_opening_m", 0),), timeout_s=0.3,
                          clock=clock) as poller:
            snapshot = poller.poll()
    finally:
        hung.close()

    assert not snapshot.answered
    assert "timeout" in snapshot.errors[0]
    assert snapshot.values == {"gate_opening_m": None}
    assert snapshot.quality["gate_opening_m"] == Quality.UNAVAILABLE | Quality.NO_RESPONSE


def test_an_exception_response_leaves_only_that_block_unavailable(
    device: ModbusDevice, clock: FixedClock,
) -> None:
    specs = (RegisterSpec("gate_opening_m", 0, scale=0.001),
             RegisterSpec("flow_m3s", 500, DataType.FLOAT32))

    with ModbusPoller("127.0.0.1", device.port, UNIT, specs, clock=clock) as poller:
        snapshot = poller.poll()

    assert snapshot.answered and not snapshot.ok
    assert snapshot.errors == ("exception 02 (illegal data address) at holding 500",)
    assert snapshot.values == {"gate_opening_m": 1.234, "flow_m3s": None}
    assert snapshot.quality["flow_m3s"] == Quality.UNAVAILABLE


def test_a_device_that_stops_answering_goes_stale_then_offline(
    device: ModbusDevice, runtime: Runtime, session: Session, clock: FixedClock,
) -> None:
    gate = make_structure(session, kind=StructureKind.INTEGRATED_GATE,
                          modbus_host="127.0.0.1", modbus_port=device.port, modbus_unit=UNIT)
    poller = poller_for(gate, timeout_s=0.5, clock=clock)
    assert poller is not None
    with poller:
        store_snapshot(session_factory=runtime.session_factory, structure_id=gate.id,
                       snapshot=poller.poll())
        device.stop()
        clock.advance(timedelta(seconds=60))
        failed = poller.poll()
        _result, changes = store_snapshot(session_factory=runtime.session_factory,
                                          structure_id=gate.id, snapshot=failed)

    assert not failed.answered
    assert all(value is None for value in failed.values.values())
    assert [(c.previous, c.current) for c in changes] == [
        (DeviceHealth.ONLINE, DeviceHealth.STALE)]
    clock.advance(timedelta(minutes=6))  # a gate reports every minute: offline after six
    with Session(runtime.engine) as sweep, sweep.begin():
        later = refresh_states(session=sweep, now=clock.now())
    assert [(c.previous, c.current) for c in later] == [
        (DeviceHealth.STALE, DeviceHealth.OFFLINE)]
