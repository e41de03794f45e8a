"""Factories shared by the telemetry tests: structures with device addresses, readings."""

from __future__ import annotations

import asyncio
import getpass
import json
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode
from pymodbus.datastore import (
    ModbusSequentialDataBlock,
    ModbusServerContext,
    ModbusSlaveContext,
)
from pymodbus.pdu import ExceptionResponse
from pymodbus.server import ModbusTcpServer
from sqlalchemy.orm import Session

from grassroots.irrigation.network.models import Structure, StructureKind


def make_structure(
    session: Session,
    *,
    code: str | None = None,
    kind: StructureKind = StructureKind.INTEGRATED_GATE,
    **fields: object,
) -> Structure:
    """A committed structure; device addressing comes in through ``fields``."""
    code = code or f"S-{uuid.uuid4().hex[:8]}"
    with session.begin():
        structure = Structure(code=code, name=f"闸门 {code}", kind=kind, lon=106.2, lat=38.4,
                              **fields)
        session.add(structure)
    return structure


# --------------------------------------------------------------------------- MQTT


def broker_answers(host: str = "127.0.0.1", port: int = 1883) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PrivateBroker:
    """A Mosquitto of our own on an ephemeral port, with persistence, that we may restart."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config = directory / "mosquitto.conf"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {directory}/\nmax_queued_messages 100000\n"
            # Started as root, mosquitto would switch to its own user, who cannot write here.
            f"user {getpass.getuser()}\nlog_dest stderr\n")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.directory / "mosquitto.log").open("ab")
        self.process = subprocess.Popen(["mosquitto", "-c", str(self.config)], stderr=log,
                                        stdout=log)
        wait_until(lambda: broker_answers(port=self.port), timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # saves sessions and queues to disk
            self.process.wait(10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


def wait_until(predicate: Callable[[], object], *, timeout: float = 20.0,
               message: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(0.05)


class Publisher:
    """A device-side paho client publishing at QoS 1 and waiting for each PUBACK."""

    def __init__(self, port: int = 1883, *, client_id: str | None = None,
                 will: tuple[str, bytes] | None = None) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                  client_id=client_id or f"pub-{uuid.uuid4().hex[:12]}",
                                  protocol=mqtt.MQTTv5)
        self.client.max_inflight_messages_set(200)
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes | str | dict[str, object], *,
                retain: bool = False) -> None:
        data = json.dumps(payload) if isinstance(payload, dict) else payload
        self.client.publish(topic, data, qos=1, retain=retain).wait_for_publish(10)

    def close(self, *, with_will: bool = False) -> None:
        if with_will:
            # MQTT 5 reason 0x04: disconnect but have the broker publish our last will.
            self.client.disconnect(ReasonCode(PacketTypes.DISCONNECT, identifier=4))
        else:
            self.client.disconnect()
        self.client.loop_stop()


# --------------------------------------------------------------------------- Modbus


class StrictBlock(ModbusSequentialDataBlock):
    """Answers reads outside its registers with exception 02, as field controllers do."""

    def getValues(self, address: int, count: int = 1) -> Any:  # pymodbus's name
        if address < self.address or address + count > self.address + len(self.values):
            return ExceptionResponse.ILLEGAL_ADDRESS
        return super().getValues(address, count)


class ModbusDevice:
    """A pymodbus TCP server in its own thread and event loop, on an ephemeral port."""

    UNIT = 3

    def __init__(self, holding: list[int], inputs: list[int]) -> None:
        def block(values: list[int]) -> StrictBlock:
            return StrictBlock(1, values)  # the slave context adds 1 to every address

        slave = ModbusSlaveContext(di=block([0]), co=block([0]), hr=block(holding),
                                   ir=block(inputs))
        self.context = ModbusServerContext(slaves={self.UNIT: slave}, single=False)
        self.loop = asyncio.new_event_loop()
        self.server: ModbusTcpServer | None = None
        self.port = 0
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self.loop).result(10)

    async def _listen(self) -> None:
        self.server = ModbusTcpServer(self.context, address=("127.0.0.1", 0))
        await self.server.serve_forever(background=True)
        self.port = self.server.transport.sockets[0].getsockname()[1]

    def stop(self) -> None:
        if self.server is not None:
            asyncio.run_coroutine_threadsafe(self.server.shutdown(), self.loop).result(10)
            self.server = None

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
