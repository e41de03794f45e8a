"""Modbus TCP polling: one poller per device endpoint, registers declared as data.

A ``RegisterSpec`` says where a quantity lives (table, address), how it is encoded
(int16, uint16, int32, uint32, float32; byte order within a register, word order
across two) and how to scale it. ``ModbusPoller.poll()`` reads the registers in as
few requests as it can and returns a ``Snapshot``. pymodbus errors are translated here
and go no further: a failed poll (connection refused, timeout, an exception response)
gives readings with no value, flagged UNAVAILABLE | NO_RESPONSE, and a failed contact,
so the device shows as stale and then offline; a failed poll is never a zero.

Register maps come from the structure's ``config`` JSON (``"modbus_registers": [...]``,
see ``RegisterSpec.from_config``) or else from ``DEFAULT_REGISTERS`` for its kind.
"""

from __future__ import annotations

import json
import logging
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from types import TracebackType
from typing import Any

from pymodbus.client import ModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from sqlalchemy.orm import Session, sessionmaker

from grassroots.irrigation.network.models import Structure, StructureKind
from grassroots.irrigation.telemetry.state import (
    QUANTITIES,
    Quality,
    Source,
    StateChange,
    refresh_states,
)
from grassroots.irrigation.telemetry.store import (
    Contact,
    ReadingIn,
    StoreResult,
    insert_readings,
)
from grassroots.kernel.clock import Clock, get_clock

logger = logging.getLogger(__name__)

DEFAULT_PORT = 502
TIMEOUT_S = 2.0
# The Modbus limit per read request, and the widest hole worth reading across.
MAX_REGISTERS_PER_READ = 125
MAX_GAP = 8
_MODBUS = Source.MODBUS.value
_FAILED = int(Quality.UNAVAILABLE | Quality.NO_RESPONSE)

_EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "device failure",
    5: "acknowledge",
    6: "device busy",
    10: "gateway path unavailable",
    11: "gateway target failed to respond",
}


class RegisterTable(StrEnum):
    HOLDING = "holding"  # function 03
    INPUT = "input"  # function 04


class DataType(StrEnum):
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    FLOAT32 = "float32"


class Order(StrEnum):
    BIG = "big"
    LITTLE = "little"


_FORMATS = {DataType.INT16: ">h", DataType.UINT16: ">H", DataType.INT32: ">i",
            DataType.UINT32: ">I", DataType.FLOAT32: ">f"}


@dataclass(frozen=True, slots=True)
class RegisterSpec:
    """One quantity in a device's register map; ``value_fn`` turns raw registers into it."""

    quantity: str
    address: int
    data_type: DataType = DataType.UINT16
    scale: float = 1.0
    offset: float = 0.0
    table: RegisterTable = RegisterTable.HOLDING
    # Byte order inside each 16-bit register, and which register holds the high word.
    byte_order: Order = Order.BIG
    word_order: Order = Order.BIG
    # The raw value the device sends for "no reading" (often 0xFFFF or 0x7FFF).
    invalid: int | None = None

    def __post_init__(self) -> None:
        if self.quantity not in QUANTITIES:
            raise ValueError(f"unknown quantity {self.quantity!r}")
        if not 0 <= self.address <= 0xFFFF:
            raise ValueError(f"register address {self.address} out of range")

    @property
    def count(self) -> int:
        return 1 if self.data_type in (DataType.INT16, DataType.UINT16) else 2

    def value_fn(self, registers: Sequence[int]) -> float | None:
        """The scaled value, or None for the device's invalid marker or a NaN."""
        words = list(registers[: self.count])
        if self.word_order == Order.LITTLE:
            words.reverse()
        data = b"".join(word.to_bytes(2, self.byte_order.value) for word in words)
        raw = struct.unpack(_FORMATS[self.data_type], data)[0]
        if self.data_type != DataType.FLOAT32:
            unsigned = int.from_bytes(data, "big")
            if self.invalid is not None and unsigned == self.invalid:
                return None
        elif not math.isfinite(raw):
            return None
        return float(raw) * self.scale + self.offset

    @classmethod
    def from_config(cls, item: Mapping[str, Any]) -> RegisterSpec:
        """From JSON: {"quantity", "address", "type", "scale", "offset", "table",
        "byte_order", "word_order", "invalid"}; omitted keys take the defaults."""
        return cls(
            quantity=str(item["quantity"]), address=int(item["address"]),
            data_type=DataType(item.get("type", DataType.UINT16)),
            scale=float(item.get("scale", 1.0)), offset=float(item.get("offset", 0.0)),
            table=RegisterTable(item.get("table", RegisterTable.HOLDING)),
            byte_order=Order(item.get("byte_order", Order.BIG)),
            word_order=Order(item.get("word_order", Order.BIG)),
            invalid=None if item.get("invalid") is None else int(item["invalid"]),
        )


def _u16(quantity: str, address: int, scale: float) -> RegisterSpec:
    return RegisterSpec(quantity, address, DataType.UINT16, scale, invalid=0xFFFF)


def _f32(quantity: str, address: int,
         table: RegisterTable = RegisterTable.HOLDING) -> RegisterSpec:
    return RegisterSpec(quantity, address, DataType.FLOAT32, table=table)


_INPUT = RegisterTable.INPUT

# A sample map per kind for controllers without one in their config; real devices differ,
# so production structures should carry config.modbus_registers.
DEFAULT_REGISTERS: Mapping[StructureKind, tuple[RegisterSpec, ...]] = {
    StructureKind.INTEGRATED_GATE: (
        _u16("gate_opening_m", 0, 0.001), _f32("water_level_upstream_m", 2),
        _f32("water_level_downstream_m", 4), _f32("flow_m3s", 6), _u16("voltage_v", 8, 0.01),
    ),
    StructureKind.SMART_HOIST: (_u16("gate_opening_m", 0, 0.001), _u16("voltage_v", 8, 0.01)),
    StructureKind.PUMP_STATION: (
        _f32("flow_m3s", 0, _INPUT), _f32("power_kw", 2, _INPUT), _f32("water_level_m", 4, _INPUT),
    ),
    StructureKind.PARSHALL_FLUME: (_u16("head_m", 0, 0.001), _f32("flow_m3s", 2)),
    StructureKind.LEVEL_GAUGE: (_f32("water_level_m", 0),),
}


def registers_for(structure: Structure) -> tuple[RegisterSpec, ...]:
    """The structure's own register map from its config, else its kind's default."""
    try:
        config = json.loads(structure.config or "{}")
    except ValueError:
        config = {}
    items = config.get("modbus_registers") if isinstance(config, dict) else None
    if items:
        return tuple(RegisterSpec.from_config(item) for item in items)
    return DEFAULT_REGISTERS.get(StructureKind(structure.kind), ())


@dataclass(frozen=True, slots=True)
class Block:
    """Registers read in one request."""

    table: RegisterTable
    address: int
    count: int
    specs: tuple[RegisterSpec, ...]


def plan_blocks(specs: Sequence[RegisterSpec], *, max_gap: int = MAX_GAP,
                max_count: int = MAX_REGISTERS_PER_READ) -> list[Block]:
    """Group registers into as few reads as the gap and size limits allow."""
    blocks: list[Block] = []
    for table in RegisterTable:
        group = sorted((s for s in specs if s.table == table), key=lambda s: s.address)
        current: list[RegisterSpec] = []
        start = end = 0
        for spec in group:
            spec_end = spec.address + spec.count
            if current and (spec.address - end > max_gap
                            or max(end, spec_end) - start > max_count):
                blocks.append(Block(table, start, end - start, tuple(current)))
                current = []
            if not current:
                start, end = spec.address, spec_end
            current.append(spec)
            end = max(end, spec_end)
        if current:
            blocks.append(Block(table, start, end - start, tuple(current)))
    return blocks


class PollError(Exception):
    """A read that failed, with its reason in the platform's words (not pymodbus's)."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One poll of one device: every configured quantity, a value or None, and why not."""

    observed_at: datetime
    values: Mapping[str, float | None]
    quality: Mapping[str, int]
    errors: tuple[str, ...] = ()
    answered: bool = True

    @property
    def ok(self) -> bool:
        return not self.errors

    def readings(self, structure_id: int) -> list[ReadingIn]:
        return [ReadingIn(structure_id, quantity, self.observed_at, value,
                          self.quality[quantity], _MODBUS)
                for quantity, value in self.values.items()]

    def contact(self, structure_id: int) -> Contact:
        return Contact(structure_id, self.observed_at, ok=self.answered,
                       error="; ".join(self.errors) or None, source=_MODBUS)


@dataclass
class ModbusPoller:
    """Polls one Modbus TCP device; not thread-safe, one poller per gateway."""

    host: str
    port: int
    unit: int
    registers: Sequence[RegisterSpec]
    timeout_s: float = TIMEOUT_S
    clock: Clock = field(default_factory=get_clock)

    def __post_init__(self) -> None:
        self.blocks = plan_blocks(self.registers)
        self._client: ModbusTcpClient | None = None

    def poll(self) -> Snapshot:
        """Read every block; a block that fails leaves its quantities unavailable."""
        observed_at = self.clock.now()
        values: dict[str, float | None] = {}
        quality: dict[str, int] = {}
        errors: list[str] = []
        answered = False
        for block in self.blocks:
            try:
                registers = self._read(block)
            except PollError as error:
                errors.append(str(error))
                for spec in block.specs:
                    values[spec.quantity] = None
                    quality[spec.quantity] = int(Quality.UNAVAILABLE)
                if not self._connected:
                    break  # the link is gone; the other blocks would only time out too
                continue
            answered = True
            for spec in block.specs:
                offset = spec.address - block.address
                value = spec.value_fn(registers[offset: offset + spec.count])
                values[spec.quantity] = value
                quality[spec.quantity] = int(QUANTITIES[spec.quantity].quality_of(value))
        for spec in self.registers:  # blocks never reached after the link dropped
            values.setdefault(spec.quantity, None)
            quality.setdefault(spec.quantity, int(Quality.UNAVAILABLE))
        if not answered:
            quality = dict.fromkeys(quality, _FAILED)
        if errors:
            logger.info("Modbus %s:%s unit %s: %s", self.host, self.port, self.unit,
                        "; ".join(errors))
        return Snapshot(observed_at, values, quality, tuple(errors), answered)

    @property
    def _connected(self) -> bool:
        return self._client is not None and self._client.connected

    def _read(self, block: Block) -> list[int]:
        client = self._connect()
        read = (client.read_holding_registers if block.table == RegisterTable.HOLDING
                else client.read_input_registers)
        try:
            response = read(block.address, count=block.count, slave=self.unit)
        except ModbusIOException as error:
            self.close()  # a late answer would be mistaken for the next one
            raise PollError(f"timeout reading {block.table} {block.address}") from error
        except ConnectionException as error:
            self.close()
            raise PollError("connection lost") from error
        except ModbusException as error:
            self.close()
            raise PollError(f"modbus error: {error}") from error
        if response.isError():
            code = getattr(response, "exception_code", 0)
            name = _EXCEPTION_NAMES.get(code, "unknown exception")
            raise PollError(f"exception {code:02d} ({name}) at {block.table} {block.address}")
        registers = list(response.registers)
        if len(registers) < block.count:
            raise PollError(f"short answer: {len(registers)} of {block.count} registers")
        return registers

    def _connect(self) -> ModbusTcpClient:
        if self._client is None:
            self._client = ModbusTcpClient(self.host, port=self.port, timeout=self.timeout_s,
                                           retries=0)
        if not self._client.connected and not self._client.connect():
            self.close()
            raise PollError(f"cannot connect to {self.host}:{self.port}")
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> ModbusPoller:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()


def poller_for(structure: Structure, *, timeout_s: float = TIMEOUT_S,
               clock: Clock | None = None) -> ModbusPoller | None:
    """A poller for a structure with a Modbus endpoint and a register map, else None."""
    registers = registers_for(structure)
    if not structure.modbus_host or not registers:
        return None
    return ModbusPoller(structure.modbus_host, structure.modbus_port or DEFAULT_PORT,
                        structure.modbus_unit or 1, registers, timeout_s=timeout_s,
                        clock=clock or get_clock())


def store_snapshot(
    *,
    session_factory: sessionmaker[Session],
    structure_id: int,
    snapshot: Snapshot,
    now: datetime | None = None,
) -> tuple[StoreResult, list[StateChange]]:
    """Store a poll's readings and re-judge the device's state, in one transaction."""
    at = now or snapshot.observed_at
    with session_factory() as session, session.begin():
        result = insert_readings(session, snapshot.readings(structure_id), received_at=at,
                                 contacts=[snapshot.contact(structure_id)])
        changes = refresh_states(session=session, now=at, structure_ids=[structure_id])
    return result, changes
