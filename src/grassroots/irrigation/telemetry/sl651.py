"""SL 651-2014 hydrological telemetry protocol in HEX/BCD mode: a pure codec, no I/O.

Frame layout (uplink; a downlink swaps the station and centre address fields)::

    7E 7E | centre (1) | station (5) | password (2) | function (1)
          | direction (high 4 bits) + length (low 12 bits) (2)
          | STX 02                  or   SYN 16 + packet total/sequence (3, 12 bits each)
          | body | end byte (1) | CRC-16 (2, high byte first)

Decisions where the standard left room (each is tested):

* The length counts every byte between the start byte and the end byte, so for a
  multi-packet (SYN) frame it includes the 3 packet-info bytes; that is what RTU
  firmware in the field sends. A frame whose length leaves those 3 bytes out is
  accepted too, since the standard's wording allows both readings.
* A negative value's first byte is FF and the remaining bytes hold the magnitude;
  the byte count in the definition byte includes that FF byte.
* A value made only of FF bytes is the unit saying "no valid reading" (sensor
  fault): it becomes ``Report.unavailable``, never a zero.
* Station addresses stay as their 10 hex digits: BCD for hydrological station
  codes, but the standard also allows user-defined (hex) addresses.
* Only packet 1 of a multi-packet message carries the serial number, so packets
  are grouped by (centre, station, function, packet total) on one connection; the
  serial is read from the reassembled body.
* 5-minute series (F4 rainfall, F5..FC relative levels) end at the observation
  time: entry i of 12 is at ``observed_at - (11 - i) * 5 min``. An equal-interval
  report (31) starts its series at the observation time and steps by its 04 code.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import IntEnum, StrEnum
from zoneinfo import ZoneInfo

# The standard's clocks run on Beijing time; everything handed out is UTC-aware.
SL651_TZ = ZoneInfo("Asia/Shanghai")

FRAME_START = b"\x7e\x7e"
HEAD_SIZE = 14  # 7E 7E, 6 address bytes, password, function, length word, start byte
TAIL_SIZE = 3  # end byte and CRC
PACKET_INFO_SIZE = 3
MIN_FRAME_SIZE = HEAD_SIZE + TAIL_SIZE
MAX_BODY_SIZE = 0x0FFF
MAX_FRAME_SIZE = HEAD_SIZE + PACKET_INFO_SIZE + MAX_BODY_SIZE + TAIL_SIZE
STATION_ADDRESS_SIZE = 5
SERIAL_MODULUS = 0x10000


class Control(IntEnum):
    """Start and end bytes of a frame."""

    STX = 0x02
    SYN = 0x16
    ETX = 0x03
    ETB = 0x17
    ENQ = 0x05
    ACK = 0x06
    NAK = 0x15
    EOT = 0x04
    ESC = 0x1B


class Direction(IntEnum):
    """High nibble of the length word."""

    UP = 0x0
    DOWN = 0x8


class FunctionCode(IntEnum):
    """Function codes this codec knows by name; others pass through as plain ints."""

    KEEPALIVE = 0x2F
    TEST = 0x30
    EQUAL_INTERVAL = 0x31
    TIMED = 0x32
    ADDED = 0x33
    HOURLY = 0x34
    MANUAL = 0x35
    IMAGE = 0x36
    QUERY_REALTIME = 0x37
    GATE_CONTROL = 0x4E


REPORT_FUNCTIONS = frozenset(
    {
        FunctionCode.TEST,
        FunctionCode.EQUAL_INTERVAL,
        FunctionCode.TIMED,
        FunctionCode.ADDED,
        FunctionCode.HOURLY,
    }
)


class StationClass(IntEnum):
    """Station class codes (the letter's ASCII code: P rainfall, H river, ...)."""

    RAINFALL = 0x50
    RIVER = 0x48
    RESERVOIR = 0x4B
    GATE_DAM = 0x5A
    PUMP_STATION = 0x44
    TIDE = 0x54
    SOIL_MOISTURE = 0x4D
    GROUNDWATER = 0x47
    WATER_QUALITY = 0x51
    INTAKE = 0x49
    OUTFALL = 0x4F


_STATION_CLASSES = frozenset(int(member) for member in StationClass)
UPLINK_ENDS = frozenset({Control.ETX, Control.ETB})
DOWNLINK_ENDS = frozenset({Control.ENQ, Control.ACK, Control.NAK, Control.EOT, Control.ESC})
_STARTS = frozenset({Control.STX, Control.SYN})


class FrameErrorKind(StrEnum):
    """Why bytes were rejected; stable for counters and tests."""

    SHORT = "short"
    START = "start"
    DIRECTION = "direction"
    LENGTH = "length"
    END = "end"
    CRC = "crc"
    PACKET = "packet"
    BCD = "bcd"
    TIME = "time"
    TRUNCATED = "truncated"
    STRUCTURE = "structure"
    FUNCTION = "function"
    GARBAGE = "garbage"
    INCOMPLETE = "incomplete"


class FrameError(ValueError):
    """Bytes that are not a well-formed SL651 frame or report; carries the raw bytes."""

    def __init__(
        self, reason: str, raw: bytes = b"", *, kind: FrameErrorKind = FrameErrorKind.STRUCTURE
    ) -> None:
        super().__init__(f"{kind}: {reason}")
        self.reason = reason
        self.raw = bytes(raw)
        self.kind = kind


# --------------------------------------------------------------------------- CRC


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    """CRC-16 of x^16+x^15+x^2+1, Modbus arithmetic (init FFFF, reflected A001)."""
    crc = 0xFFFF
    table = _CRC_TABLE
    for byte in data:
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc


# --------------------------------------------------------------------------- frames


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame, or a multi-packet message put back together."""

    direction: Direction
    centre: int
    station: str
    password: int
    function: int
    body: bytes
    end: Control
    start: Control = Control.STX
    packet_total: int | None = None
    # None on a SYN frame means "reassembled from packet_total packets".
    packet_seq: int | None = None
    crc: int = 0
    crc_ok: bool = True
    raw: bytes = b""

    @property
    def is_packet(self) -> bool:
        """One packet of a multi-packet message, still to be reassembled."""
        return self.start == Control.SYN and self.packet_seq is not None

    @property
    def is_reassembled(self) -> bool:
        """A whole multi-packet message built by FrameReassembler."""
        return self.start == Control.SYN and self.packet_seq is None


def _station_bytes(station: str) -> bytes:
    if len(station) != 2 * STATION_ADDRESS_SIZE:
        raise ValueError(f"station address must be 10 hex digits, got {station!r}")
    return bytes.fromhex(station)


def _packet_info(total: int, seq: int) -> bytes:
    if not 1 <= seq <= total <= 0x0FFF:
        raise ValueError(f"bad packet {seq} of {total}")
    return ((total << 12) | seq).to_bytes(PACKET_INFO_SIZE, "big")


def encode_frame(
    *,
    station: str,
    function: int,
    body: bytes = b"",
    centre: int = 1,
    password: int = 0,
    direction: Direction = Direction.UP,
    end: Control | None = None,
    packet: tuple[int, int] | None = None,
) -> bytes:
    """Build a complete frame; ``packet`` is (total, sequence) for a SYN packet."""
    if end is None:
        end = Control.ETX if direction == Direction.UP else Control.ENQ
    address = _station_bytes(station)
    centre_byte = bytes([centre])
    addresses = centre_byte + address if direction == Direction.UP else address + centre_byte
    payload = body if packet is None else _packet_info(*packet) + body
    if len(payload) > MAX_BODY_SIZE:
        raise ValueError(f"body of {len(payload)} bytes exceeds {MAX_BODY_SIZE}")
    start = Control.STX if packet is None else Control.SYN
    head = struct.pack(">HB", password, function) + struct.pack(
        ">HB", (direction << 12) | len(payload), start
    )
    frame = FRAME_START + addresses + head + payload + bytes([end])
    return frame + struct.pack(">H", crc16(frame))


def _fail(reason: str, raw: bytes, kind: FrameErrorKind) -> FrameError:
    return FrameError(reason, raw, kind=kind)


def _check_head(raw: bytes) -> tuple[Direction, int, Control]:
    """Validate the 14-byte head; returns direction, declared length and start byte."""
    if len(raw) < HEAD_SIZE:
        raise _fail(f"{len(raw)} bytes, a frame head has {HEAD_SIZE}", raw, FrameErrorKind.SHORT)
    if raw[:2] != FRAME_START:
        raise _fail(f"starts {raw[:2].hex(' ')}, expected 7e 7e", raw, FrameErrorKind.START)
    nibble = raw[11] >> 4
    if nibble not in (Direction.UP, Direction.DOWN):
        raise _fail(f"direction nibble {nibble:X}, expected 0 or 8", raw,
                    FrameErrorKind.DIRECTION)
    start = raw[13]
    if start not in _STARTS:
        raise _fail(f"start byte {start:02x}, expected 02 (STX) or 16 (SYN)", raw,
                    FrameErrorKind.START)
    return Direction(nibble), ((raw[11] & 0x0F) << 8) | raw[12], Control(start)


def frame_sizes(head: bytes) -> tuple[int, ...]:
    """Possible total sizes of the frame whose first 14 bytes are ``head``."""
    _, length, start = _check_head(head)
    size = HEAD_SIZE + length + TAIL_SIZE
    # A SYN frame from a unit that left the packet info out of the length.
    return (size, size + PACKET_INFO_SIZE) if start == Control.SYN else (size,)


def _split_packet(payload: bytes, raw: bytes) -> tuple[int, int, bytes]:
    if len(payload) < PACKET_INFO_SIZE:
        raise _fail("SYN frame too short for its packet info", raw, FrameErrorKind.PACKET)
    value = int.from_bytes(payload[:PACKET_INFO_SIZE], "big")
    total, seq = value >> 12, value & 0x0FFF
    if not 1 <= seq <= total:
        raise _fail(f"packet {seq} of {total}", raw, FrameErrorKind.PACKET)
    return total, seq, payload[PACKET_INFO_SIZE:]


def decode_frame(data: bytes, *, check_crc: bool = True) -> Frame:
    """Decode exactly one frame; raises FrameError with a precise reason."""
    raw = bytes(data)
    if len(raw) < MIN_FRAME_SIZE:
        raise _fail(f"{len(raw)} bytes, a frame has at least {MIN_FRAME_SIZE}", raw,
                    FrameErrorKind.SHORT)
    direction, length, start = _check_head(raw)
    declared = HEAD_SIZE + length + TAIL_SIZE
    tolerated = declared + PACKET_INFO_SIZE if start == Control.SYN else declared
    if len(raw) not in (declared, tolerated):
        raise _fail(f"length field says {length} body bytes, frame carries "
                    f"{len(raw) - HEAD_SIZE - TAIL_SIZE}", raw, FrameErrorKind.LENGTH)
    end = raw[-3]
    allowed = UPLINK_ENDS if direction == Direction.UP else DOWNLINK_ENDS
    if end not in allowed:
        raise _fail(f"end byte {end:02x} not allowed in a {direction.name.lower()}link frame",
                    raw, FrameErrorKind.END)
    crc = (raw[-2] << 8) | raw[-1]
    computed = crc16(raw[:-2])
    if check_crc and crc != computed:
        raise _fail(f"CRC {crc:04x} on the wire, {computed:04x} computed", raw,
                    FrameErrorKind.CRC)
    payload = raw[HEAD_SIZE:-TAIL_SIZE]
    total = seq = None
    if start == Control.SYN:
        total, seq, payload = _split_packet(payload, raw)
    if direction == Direction.UP:
        centre, station = raw[2], raw[3:8].hex().upper()
    else:
        station, centre = raw[2:7].hex().upper(), raw[7]
    return Frame(
        direction=direction, centre=centre, station=station,
        password=(raw[8] << 8) | raw[9], function=raw[10], body=payload, end=Control(end),
        start=start, packet_total=total, packet_seq=seq, crc=crc, crc_ok=crc == computed,
        raw=raw,
    )


# --------------------------------------------------------------------------- stream


class FrameScanner:
    """Split a TCP byte stream into frames; garbage and broken frames come out as FrameError."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes held while waiting for the rest of a frame."""
        return len(self._buffer)

    def feed(self, chunk: bytes) -> list[Frame | FrameError]:
        """Add bytes; return every frame (or error) they complete, in stream order."""
        self._buffer += chunk
        items: list[Frame | FrameError] = []
        while (item := self._next()) is not None:
            items.append(item)
        return items

    def flush(self) -> list[FrameError]:
        """End of stream: report any bytes still held as an incomplete frame."""
        if not self._buffer:
            return []
        raw = bytes(self._buffer)
        self._buffer.clear()
        return [FrameError(f"stream ended inside a frame ({len(raw)} bytes held)", raw,
                           kind=FrameErrorKind.INCOMPLETE)]

    def _next(self) -> Frame | FrameError | None:
        buffer = self._buffer
        index = buffer.find(FRAME_START)
        if index < 0:
            # Keep a trailing 7E: it may be the first half of the next start marker.
            keep = 1 if buffer[-1:] == FRAME_START[:1] else 0
            return self._discard(len(buffer) - keep)
        if index > 0:
            return self._discard(index)
        if len(buffer) < HEAD_SIZE:
            return None
        try:
            sizes = frame_sizes(bytes(buffer[:HEAD_SIZE]))
        except FrameError as error:
            # A false start marker: everything up to the next one is the same garbage.
            trailing_half_marker = buffer[-1:] == FRAME_START[:1]
            return self._reject(error, len(buffer) - trailing_half_marker)
        return self._try_sizes(sizes)

    def _try_sizes(self, sizes: tuple[int, ...]) -> Frame | FrameError | None:
        buffer = self._buffer
        first_error: FrameError | None = None
        for size in sizes:
            if len(buffer) < size:
                return self._unstall()
            try:
                frame = decode_frame(bytes(buffer[:size]))
            except FrameError as error:
                first_error = first_error or error
                continue
            del buffer[:size]
            return frame
        assert first_error is not None
        return self._reject(first_error, sizes[0])

    def _unstall(self) -> FrameError | None:
        """Wait for more bytes, unless a whole valid frame already sits behind this head.

        A corrupt head can claim up to 4 KB; a unit that sent one report and waits for
        its confirmation would never send them, so a later complete frame wins.
        """
        later = self._buffer.find(FRAME_START, 1)
        while later > 0:
            if _holds_frame(bytes(self._buffer[later:])):
                return self._discard(later)
            later = self._buffer.find(FRAME_START, later + 1)
        return None

    def _reject(self, error: FrameError, span: int) -> FrameError:
        """Drop a rejected frame as one error, but never past a 7E 7E inside it."""
        # A real frame may start inside what looked like this one, so cut there.
        inner = self._buffer.find(FRAME_START, 1, span + 1)
        cut = inner if inner > 0 else max(span, 1)
        raw = bytes(self._buffer[:cut])
        del self._buffer[:cut]
        return FrameError(error.reason, raw, kind=error.kind)

    def _discard(self, count: int) -> FrameError | None:
        if count <= 0:
            return None
        raw = bytes(self._buffer[:count])
        del self._buffer[:count]
        return FrameError(f"skipped {count} bytes before a 7e 7e start marker", raw,
                          kind=FrameErrorKind.GARBAGE)


def _holds_frame(data: bytes) -> bool:
    """Whether ``data`` starts with a complete, valid frame."""
    try:
        sizes = frame_sizes(data[:HEAD_SIZE])
    except FrameError:
        return False
    for size in sizes:
        if size <= len(data):
            try:
                decode_frame(data[:size])
            except FrameError:
                continue
            return True
    return False


# --------------------------------------------------------------------------- packets

PacketKey = tuple[int, str, int, int]


@dataclass(slots=True)
class _Partial:
    last_seen: float
    packets: dict[int, Frame] = field(default_factory=dict)


class FrameReassembler:
    """Collect the SYN packets of multi-packet messages until each message is whole."""

    def __init__(self, *, timeout_s: float = 300.0) -> None:
        self.timeout_s = timeout_s
        self.duplicates = 0
        self._partials: dict[PacketKey, _Partial] = {}

    @property
    def pending(self) -> int:
        """Messages still missing packets."""
        return len(self._partials)

    def add(self, packet: Frame, *, now: float) -> Frame | None:
        """Take one packet; return the whole message once its last packet is in."""
        if not packet.is_packet or packet.packet_total is None or packet.packet_seq is None:
            raise ValueError("only SYN packets are reassembled")
        self.expire(now=now)
        key = (packet.centre, packet.station, packet.function, packet.packet_total)
        partial = self._partials.setdefault(key, _Partial(last_seen=now))
        partial.last_seen = now
        if packet.packet_seq in partial.packets:
            self.duplicates += 1  # a resend: the latest copy wins
        partial.packets[packet.packet_seq] = packet
        if len(partial.packets) < packet.packet_total:
            return None
        del self._partials[key]
        return _join(partial.packets, packet.packet_total)

    def expire(self, *, now: float) -> list[PacketKey]:
        """Drop messages that got no packet for ``timeout_s``; return their keys."""
        stale = [key for key, partial in self._partials.items()
                 if now - partial.last_seen > self.timeout_s]
        for key in stale:
            del self._partials[key]
        return stale


def _join(packets: Mapping[int, Frame], total: int) -> Frame:
    ordered = [packets[seq] for seq in range(1, total + 1)]
    last = ordered[-1]
    return Frame(
        direction=last.direction, centre=last.centre, station=last.station,
        password=last.password, function=last.function,
        body=b"".join(p.body for p in ordered), end=last.end, start=Control.SYN,
        packet_total=total, packet_seq=None, crc=last.crc,
        crc_ok=all(p.crc_ok for p in ordered), raw=b"".join(p.raw for p in ordered),
    )


def encode_packets(
    *,
    station: str,
    function: int,
    body: bytes,
    packet_size: int,
    centre: int = 1,
    password: int = 0,
) -> list[bytes]:
    """Split a message body into SYN packets of at most ``packet_size`` body bytes."""
    if packet_size <= 0:
        raise ValueError("packet_size must be positive")
    chunks = [body[i:i + packet_size] for i in range(0, len(body), packet_size)] or [b""]
    total = len(chunks)
    return [
        encode_frame(station=station, function=function, body=chunk, centre=centre,
                     password=password, packet=(total, seq),
                     end=Control.ETX if seq == total else Control.ETB)
        for seq, chunk in enumerate(chunks, start=1)
    ]


# --------------------------------------------------------------------------- elements


@dataclass(frozen=True, slots=True)
class Quantity:
    """What an element id measures, with the standard's N(digits, decimals) format."""

    element_id: int
    name: str
    unit: str
    digits: int
    decimals: int

    @property
    def size(self) -> int:
        """Bytes the standard's format takes in BCD."""
        return (self.digits + 1) // 2


def _quantities(*rows: tuple[int, str, str, int, int]) -> dict[int, Quantity]:
    return {row[0]: Quantity(*row) for row in rows}


def _numbered(first: int, name: str, unit: str, digits: int, decimals: int,
              labels: Sequence[str]) -> tuple[tuple[int, str, str, int, int], ...]:
    return tuple((first + i, name.format(label), unit, digits, decimals)
                 for i, label in enumerate(labels))


_ONE_TO_EIGHT = tuple(str(n) for n in range(1, 9))
_SOIL_DEPTHS_CM = ("10", "20", "30", "40", "50", "60", "80", "100")

# Element identifiers of SL 651-2014 used by irrigation districts, named like the
# telemetry store's quantities (unit last). 30H is a flow rate (total outflow or total
# flow through the gates), m³/s, not a volume.
ELEMENTS: Mapping[int, Quantity] = _quantities(
    (0x02, "air_temperature_c", "°C", 3, 1),
    (0x03, "water_temperature_c", "°C", 3, 1),
    (0x06, "evaporation_daily_mm", "mm", 5, 1),
    (0x07, "evaporation_current_mm", "mm", 5, 1),
    (0x09, "gate_opening_m", "m", 5, 2),
    (0x0E, "groundwater_depth_m", "m", 6, 2),
    *_numbered(0x10, "soil_moisture_pct_{}cm", "%", 4, 1, _SOIL_DEPTHS_CM),
    (0x18, "humidity_pct", "%", 4, 1),
    (0x1A, "rain_1h_mm", "mm", 5, 1),
    (0x1B, "rain_2h_mm", "mm", 5, 1),
    (0x1C, "rain_3h_mm", "mm", 5, 1),
    (0x1D, "rain_6h_mm", "mm", 5, 1),
    (0x1E, "rain_12h_mm", "mm", 5, 1),
    (0x1F, "rain_daily_mm", "mm", 5, 1),
    (0x20, "rain_mm", "mm", 5, 1),  # current rainfall
    (0x21, "rain_1min_mm", "mm", 5, 1),
    (0x22, "rain_5min_mm", "mm", 5, 1),
    (0x23, "rain_10min_mm", "mm", 5, 1),
    (0x24, "rain_30min_mm", "mm", 5, 1),
    (0x25, "rain_storm_mm", "mm", 5, 1),
    (0x26, "rain_accumulated_mm", "mm", 6, 1),
    (0x27, "flow_m3s", "m³/s", 9, 3),  # instantaneous flow
    *_numbered(0x28, "intake_flow_{}_m3s", "m³/s", 9, 3, _ONE_TO_EIGHT),
    (0x30, "flow_total_m3s", "m³/s", 9, 3),
    (0x31, "gate_group_flow_m3s", "m³/s", 9, 3),
    (0x35, "wind_speed_ms", "m/s", 4, 1),
    (0x36, "velocity_mean_ms", "m/s", 5, 3),
    (0x37, "velocity_ms", "m/s", 5, 3),  # instantaneous velocity
    (0x38, "voltage_v", "V", 4, 2),  # supply voltage
    (0x39, "water_level_m", "m", 7, 3),
    (0x3A, "water_level_downstream_m", "m", 7, 3),
    (0x3B, "water_level_upstream_m", "m", 7, 3),
    *_numbered(0x3C, "intake_water_level_{}_m", "m", 7, 3, _ONE_TO_EIGHT),
)
ELEMENTS_BY_NAME: Mapping[str, Quantity] = {q.name: q for q in ELEMENTS.values()}

TIME_STEP_ELEMENT = 0x04
STATUS_ELEMENT = 0x45
OBSERVED_AT_GUIDE = 0xF0
STATION_GUIDE = 0xF1
EXTENDED_ELEMENT = 0xFF
# Manual entry (F2) and image (F3) run to the end of the body; their length is implicit.
_OPAQUE_GUIDES = frozenset({0xF2, 0xF3})


@dataclass(frozen=True, slots=True)
class SeriesSpec:
    """A fixed-size series element of the hourly report: unsigned binary entries, not BCD."""

    element_id: int
    name: str
    unit: str
    item_size: int
    resolution: Decimal
    count: int
    step: timedelta

    @property
    def invalid(self) -> int:
        """The all-ones entry that marks a missing reading."""
        return (1 << (8 * self.item_size)) - 1


_FIVE_MINUTES = timedelta(minutes=5)
SERIES: Mapping[int, SeriesSpec] = {
    spec.element_id: spec
    for spec in (
        SeriesSpec(0xF4, "rain_5min_mm", "mm", 1, Decimal("0.1"), 12, _FIVE_MINUTES),
        *(SeriesSpec(0xF5 + i, f"water_level_relative_{i + 1}_m", "m", 2,
                     Decimal("0.01"), 12, _FIVE_MINUTES) for i in range(8)),
    )
}


@dataclass(frozen=True, slots=True)
class ElementValue:
    """One reading: element id, quantity name, exact value, unit and decimals."""

    element_id: int
    quantity: str
    value: Decimal
    unit: str
    decimals: int
    # Bytes on the wire, the FF sign byte included; None lets the encoder pick.
    size: int | None = None
    observed_at: datetime | None = None


def reading(element_id: int, value: Decimal | str | int, *, decimals: int | None = None,
            size: int | None = None) -> ElementValue:
    """An ElementValue for encoding, named and scaled from the element table."""
    quantity = ELEMENTS.get(element_id)
    return ElementValue(
        element_id=element_id,
        quantity=quantity.name if quantity else f"element_{element_id:02x}",
        value=Decimal(value),
        unit=quantity.unit if quantity else "",
        decimals=decimals if decimals is not None else (quantity.decimals if quantity else 0),
        size=size,
    )


@dataclass(frozen=True, slots=True)
class SeriesValue:
    """Evenly spaced readings of one quantity; None marks an invalid entry."""

    element_id: int
    quantity: str
    unit: str
    observed_at: datetime  # time of the first entry
    step: timedelta
    values: tuple[Decimal | None, ...]

    def points(self) -> tuple[tuple[datetime, Decimal], ...]:
        """Timestamped valid entries, invalid ones left out."""
        return tuple((self.observed_at + i * self.step, value)
                     for i, value in enumerate(self.values) if value is not None)


@dataclass(frozen=True, slots=True)
class UnknownElement:
    """An element this codec has no table entry for, kept as it came."""

    element_id: int
    definition: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Report:
    """A decoded telemetry report (functions 2F, 30 to 34)."""

    function: int
    serial: int
    send_time: datetime
    station: str
    station_class: int | None
    observed_at: datetime | None
    values: tuple[ElementValue, ...] = ()
    series: tuple[SeriesValue, ...] = ()
    status_bits: int | None = None
    time_step: timedelta | None = None
    unavailable: tuple[int, ...] = ()
    raw_unknown: tuple[UnknownElement, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def dedupe_key(self) -> tuple[str, int, datetime]:
        """Station and serial, plus observation time because serials wrap at 65535."""
        return (self.station, self.serial, self.observed_at or self.send_time)

    def value(self, quantity: str) -> Decimal | None:
        """The first value of a quantity by name, or None."""
        return next((v.value for v in self.values if v.quantity == quantity), None)


# --------------------------------------------------------------------------- BCD


def _bcd_digits(data: bytes, what: str, raw: bytes) -> str:
    digits = data.hex()
    if not digits.isdigit():
        raise _fail(f"bad BCD digit in {what}: {data.hex(' ')}", raw, FrameErrorKind.BCD)
    return digits


def decode_time(data: bytes, what: str = "time", raw: bytes = b"") -> datetime:
    """BCD YYMMDDhhmm[ss] in Beijing time to an aware UTC datetime."""
    digits = _bcd_digits(data, what, raw)
    parts = [int(digits[i:i + 2]) for i in range(0, len(digits), 2)] + [0]
    try:
        local = datetime(2000 + parts[0], parts[1], parts[2], parts[3], parts[4], parts[5],
                         tzinfo=SL651_TZ)
    except ValueError as error:
        raise _fail(f"impossible {what} {digits}: {error}", raw, FrameErrorKind.TIME) from None
    return local.astimezone(UTC)


def encode_time(moment: datetime, *, seconds: bool = True) -> bytes:
    """An aware datetime as BCD YYMMDDhhmm[ss] in Beijing time."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime given")
    local = moment.astimezone(SL651_TZ)
    if not 2000 <= local.year <= 2099:
        raise ValueError(f"year {local.year} does not fit two BCD digits")
    return bytes.fromhex(local.strftime("%y%m%d%H%M%S" if seconds else "%y%m%d%H%M"))


def decode_number(data: bytes, decimals: int, what: str = "value",
                  raw: bytes = b"") -> Decimal | None:
    """A BCD value, FF-first for negative; None when every byte is FF (no reading)."""
    if data.count(0xFF) == len(data):
        return None
    negative = data[0] == 0xFF
    digits = _bcd_digits(data[1:] if negative else data, what, raw)
    return Decimal(f"{'-' if negative else ''}{int(digits)}E-{decimals}")


def encode_number(value: Decimal, decimals: int, size: int) -> bytes:
    """A value as ``size`` BCD bytes, the FF sign byte included when negative."""
    units = value.scaleb(decimals)
    if units != units.to_integral_value():
        raise ValueError(f"{value} has more than {decimals} decimals")
    negative = units < 0
    digits = str(abs(int(units)))
    room = 2 * (size - negative)
    if len(digits) > room:
        raise ValueError(f"{value} does not fit {size} bytes with {decimals} decimals")
    return (b"\xff" if negative else b"") + bytes.fromhex(digits.zfill(room))


def _default_size(value: ElementValue) -> int:
    units = abs(value.value.scaleb(value.decimals))
    needed = (len(str(int(units))) + 1) // 2
    quantity = ELEMENTS.get(value.element_id)
    size = max(needed, quantity.size if quantity else 1)
    return size + (value.value < 0)


def encode_element(value: ElementValue) -> bytes:
    """Identifier, definition byte and BCD data of one reading."""
    size = value.size or _default_size(value)
    if not 0 < size < 32 or not 0 <= value.decimals < 8:
        raise ValueError(f"size {size} / decimals {value.decimals} do not fit a definition byte")
    identifier = (bytes([EXTENDED_ELEMENT, value.element_id & 0xFF])
                  if value.element_id > 0xFF else bytes([value.element_id]))
    data = encode_number(value.value, value.decimals, size)
    return identifier + bytes([(size << 3) | value.decimals]) + data


def encode_series(series: SeriesValue) -> bytes:
    """A 5-minute series element (F4..FC) as identifier, definition and binary entries."""
    spec = SERIES.get(series.element_id)
    if spec is None:
        raise ValueError(f"element {series.element_id:02x} is not a fixed series")
    if len(series.values) != spec.count:
        raise ValueError(f"{spec.name} needs {spec.count} entries")
    data = b"".join(_series_entry(value, spec).to_bytes(spec.item_size, "big")
                    for value in series.values)
    return bytes([spec.element_id, (len(data) << 3)]) + data


def _series_entry(value: Decimal | None, spec: SeriesSpec) -> int:
    if value is None:
        return spec.invalid
    count = value / spec.resolution
    if count != count.to_integral_value() or not 0 <= count < spec.invalid:
        raise ValueError(f"{value} is not a valid {spec.name} entry")
    return int(count)


# --------------------------------------------------------------------------- reports


class _Reader:
    """A cursor over a body that fails with FrameError instead of reading past the end."""

    __slots__ = ("data", "pos", "raw")

    def __init__(self, data: bytes, raw: bytes) -> None:
        self.data = data
        self.pos = 0
        self.raw = raw

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, count: int, what: str, element_id: int | None = None) -> bytes:
        """Next ``count`` bytes; ``what`` (and the element id) only name them in errors."""
        end = self.pos + count
        if end > len(self.data):
            label = what if element_id is None else f"{what} of element {element_id:02x}"
            raise _fail(f"{label} needs {count} bytes at body offset {self.pos}, "
                        f"{self.remaining} left", self.raw, FrameErrorKind.TRUNCATED)
        chunk = self.data[self.pos:end]
        self.pos = end
        return chunk

    def byte(self, what: str, element_id: int | None = None) -> int:
        return self.take(1, what, element_id)[0]

    def guide(self, value: int, what: str) -> None:
        found = self.byte(what)
        if found != value:
            raise _fail(f"expected {what} {value:02x}, found {found:02x} at body offset "
                        f"{self.pos - 1}", self.raw, FrameErrorKind.STRUCTURE)

    def rest(self) -> bytes:
        chunk = self.data[self.pos:]
        self.pos = len(self.data)
        return chunk


@dataclass(slots=True)
class _Draft:
    """A report while its elements are being read."""

    function: int
    raw: bytes
    observed_at: datetime | None = None  # the latest F0 F0 time: it stamps what follows
    first_observed_at: datetime | None = None  # the report's own observation time
    values: list[ElementValue] = field(default_factory=list)
    series: list[SeriesValue] = field(default_factory=list)
    unavailable: list[int] = field(default_factory=list)
    unknown: list[UnknownElement] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    status_bits: int | None = None
    time_step: timedelta | None = None

    def observed(self, element_id: int) -> datetime:
        if self.observed_at is None:
            raise _fail(f"element {element_id:02x} before any F0 F0 observation time",
                        self.raw, FrameErrorKind.STRUCTURE)
        return self.observed_at


def _on_number(draft: _Draft, element_id: int, definition: int, data: bytes) -> None:
    quantity = ELEMENTS.get(element_id)
    if quantity is None:
        _on_unknown(draft, element_id, definition, data)
        return
    if not data:
        draft.warnings.append(f"element {element_id:02x} ({quantity.name}) has no value bytes")
        return
    value = decode_number(data, definition & 0x07, f"element {element_id:02x}", draft.raw)
    if value is None:
        draft.unavailable.append(element_id)
        draft.warnings.append(f"element {element_id:02x} ({quantity.name}) has no valid reading")
        return
    draft.values.append(ElementValue(
        element_id=element_id, quantity=quantity.name, value=value, unit=quantity.unit,
        decimals=definition & 0x07, size=len(data), observed_at=draft.observed(element_id),
    ))


def _on_unknown(draft: _Draft, element_id: int, definition: int, data: bytes) -> None:
    draft.unknown.append(UnknownElement(element_id, definition, data))
    draft.warnings.append(f"unknown element {element_id:02x} ({len(data)} bytes) kept raw")


def _on_time_step(draft: _Draft, element_id: int, definition: int, data: bytes) -> None:
    digits = _bcd_digits(data, "time step code", draft.raw)
    if len(digits) != 6:
        raise _fail(f"time step code of {len(data)} bytes, expected 3", draft.raw,
                    FrameErrorKind.STRUCTURE)
    days, hours, minutes = int(digits[:2]), int(digits[2:4]), int(digits[4:])
    draft.time_step = timedelta(days=days, hours=hours, minutes=minutes)


def _on_status(draft: _Draft, element_id: int, definition: int, data: bytes) -> None:
    # Alarm and state flags are bits, not BCD: keep them exactly as sent.
    draft.status_bits = int.from_bytes(data, "big")


def _on_fixed_series(draft: _Draft, element_id: int, definition: int, data: bytes) -> None:
    spec = SERIES[element_id]
    if len(data) != spec.count * spec.item_size:
        _on_unknown(draft, element_id, definition, data)
        draft.warnings.append(f"series {element_id:02x} has {len(data)} bytes, "
                              f"expected {spec.count * spec.item_size}")
        return
    entries = [int.from_bytes(data[i:i + spec.item_size], "big")
               for i in range(0, len(data), spec.item_size)]
    values = tuple(None if entry == spec.invalid else entry * spec.resolution
                   for entry in entries)
    first = draft.observed(element_id) - (spec.count - 1) * spec.step
    draft.series.append(SeriesValue(element_id, spec.name, spec.unit, first, spec.step, values))


_Handler = Callable[[_Draft, int, int, bytes], None]
_HANDLERS: Mapping[int, _Handler] = {
    TIME_STEP_ELEMENT: _on_time_step,
    STATUS_ELEMENT: _on_status,
    **dict.fromkeys(SERIES, _on_fixed_series),
}


def _equal_interval_series(draft: _Draft, reader: _Reader, element_id: int,
                           definition: int) -> None:
    """In a 31 report the element after the time step carries one value per step."""
    quantity = ELEMENTS[element_id]
    size, decimals = definition >> 3, definition & 0x07
    data = reader.rest()
    if size == 0 or len(data) % size:
        raise _fail(f"equal-interval data of {len(data)} bytes is not a multiple of {size}",
                    draft.raw, FrameErrorKind.TRUNCATED)
    what = f"element {element_id:02x}"
    values = tuple(decode_number(data[i:i + size], decimals, what, draft.raw)
                   for i in range(0, len(data), size))
    step = draft.time_step or timedelta(0)
    draft.series.append(SeriesValue(element_id, quantity.name, quantity.unit,
                                    draft.observed(element_id), step, values))


def _read_elements(reader: _Reader, draft: _Draft) -> None:
    while reader.remaining:
        element_id = reader.byte("element identifier")
        if element_id == OBSERVED_AT_GUIDE:
            reader.guide(OBSERVED_AT_GUIDE, "second F0 of the observation time guide")
            draft.observed_at = decode_time(reader.take(5, "observation time"),
                                            "observation time", draft.raw)
            draft.first_observed_at = draft.first_observed_at or draft.observed_at
            continue
        if element_id in _OPAQUE_GUIDES:
            reader.guide(element_id, f"second {element_id:02X} of its guide")
            _on_unknown(draft, element_id, element_id, reader.rest())
            return
        if element_id == EXTENDED_ELEMENT:
            element_id = 0xFF00 | reader.byte("extended element identifier")
        definition = reader.byte("definition byte", element_id)
        if (draft.function == FunctionCode.EQUAL_INTERVAL and draft.time_step is not None
                and element_id in ELEMENTS):
            _equal_interval_series(draft, reader, element_id, definition)
            return
        data = reader.take(definition >> 3, "value", element_id)
        _HANDLERS.get(element_id, _on_number)(draft, element_id, definition, data)


def parse_report(frame: Frame) -> Report:
    """Decode the body of a report frame (2F keep-alive, 30 to 34) into a Report."""
    if frame.function != FunctionCode.KEEPALIVE and frame.function not in REPORT_FUNCTIONS:
        raise _fail(f"function {frame.function:02x} is not a report", frame.raw,
                    FrameErrorKind.FUNCTION)
    if frame.is_packet:
        raise _fail(f"packet {frame.packet_seq} of {frame.packet_total}: reassemble first",
                    frame.raw, FrameErrorKind.PACKET)
    reader = _Reader(frame.body, frame.raw)
    serial = int.from_bytes(reader.take(2, "serial number"), "big")
    send_time = decode_time(reader.take(6, "send time"), "send time", frame.raw)
    if frame.function == FunctionCode.KEEPALIVE:
        extra = (f"keep-alive carries {reader.remaining} extra bytes",) if reader.remaining else ()
        return Report(function=frame.function, serial=serial, send_time=send_time,
                      station=frame.station, station_class=None, observed_at=None,
                      warnings=extra)
    reader.guide(STATION_GUIDE, "station address guide F1")
    reader.guide(STATION_GUIDE, "station address guide F1")
    station = reader.take(STATION_ADDRESS_SIZE, "station address").hex().upper()
    station_class = reader.byte("station class")
    draft = _Draft(function=frame.function, raw=frame.raw)
    if station != frame.station:
        draft.warnings.append(f"body station {station} differs from header {frame.station}")
    if station_class not in _STATION_CLASSES:
        draft.warnings.append(f"unknown station class {station_class:02x}")
    _read_elements(reader, draft)
    return Report(
        function=frame.function, serial=serial, send_time=send_time, station=station,
        station_class=station_class, observed_at=draft.first_observed_at,
        values=tuple(draft.values), series=tuple(draft.series), status_bits=draft.status_bits,
        time_step=draft.time_step, unavailable=tuple(draft.unavailable),
        raw_unknown=tuple(draft.unknown), warnings=tuple(draft.warnings),
    )


def encode_report_body(
    *,
    station: str,
    serial: int,
    sent_at: datetime,
    station_class: int,
    observed_at: datetime,
    values: Iterable[ElementValue] = (),
    series: Iterable[SeriesValue] = (),
    status_bits: int | None = None,
) -> bytes:
    """The body of a report: serial, send time, F1 F1 station, F0 F0 time, elements."""
    parts = [
        (serial % SERIAL_MODULUS).to_bytes(2, "big"),
        encode_time(sent_at),
        bytes([STATION_GUIDE, STATION_GUIDE]), _station_bytes(station), bytes([station_class]),
        bytes([OBSERVED_AT_GUIDE, OBSERVED_AT_GUIDE]), encode_time(observed_at, seconds=False),
        *(encode_element(value) for value in values),
        *(encode_series(item) for item in series),
    ]
    if status_bits is not None:
        parts.append(bytes([STATUS_ELEMENT, 4 << 3]) + status_bits.to_bytes(4, "big"))
    return b"".join(parts)


def encode_report(
    *,
    station: str,
    function: int,
    serial: int,
    sent_at: datetime,
    station_class: int,
    observed_at: datetime,
    values: Iterable[ElementValue] = (),
    series: Iterable[SeriesValue] = (),
    status_bits: int | None = None,
    centre: int = 1,
    password: int = 0,
    end: Control = Control.ETX,
) -> bytes:
    """A complete single-frame report, as a telemetry unit would send it."""
    body = encode_report_body(station=station, serial=serial, sent_at=sent_at,
                              station_class=station_class, observed_at=observed_at,
                              values=values, series=series, status_bits=status_bits)
    return encode_frame(station=station, function=function, body=body, centre=centre,
                        password=password, end=end)


def encode_keepalive(*, station: str, serial: int, sent_at: datetime, centre: int = 1,
                     password: int = 0) -> bytes:
    """A 2F link keep-alive: serial number and send time only."""
    body = (serial % SERIAL_MODULUS).to_bytes(2, "big") + encode_time(sent_at)
    return encode_frame(station=station, function=FunctionCode.KEEPALIVE, body=body,
                        centre=centre, password=password)


def build_ack(frame: Frame, *, end: Control, now: datetime) -> bytes:
    """The centre's confirmation: same function, the frame's serial, the centre's time."""
    if end not in DOWNLINK_ENDS:
        raise ValueError(f"{end!r} is not a downlink end byte")
    if len(frame.body) < 2:
        raise _fail("no serial number to confirm", frame.raw, FrameErrorKind.TRUNCATED)
    return encode_frame(
        station=frame.station, function=frame.function, body=frame.body[:2] + encode_time(now),
        centre=frame.centre, password=frame.password, direction=Direction.DOWN, end=end,
    )


# --------------------------------------------------------------------------- gate control
#
# 4E body, as built here: serial (2), send time (6), gate count N (1, binary), a bitmap of
# ceil(N/8) bytes (bit k-1 of the bitmap, least significant bit of the first byte first,
# selects gate k), then one 2-byte BCD opening in centimetres per selected gate, in gate
# order. The unit's answer adds F1 F1 + station address after the send time.
# This layout could not be checked against the text of the standard; it lives only in
# _gate_payload and parse_gate_response so that it can be corrected in one place.

GATE_OPENING_SIZE = 2


@dataclass(frozen=True, slots=True)
class GateResponse:
    """A unit's 4E answer: the gate openings it reports, in centimetres."""

    serial: int
    send_time: datetime
    station: str
    openings_cm: Mapping[int, int]


def _gate_payload(openings_cm: Mapping[int, int]) -> bytes:
    if not openings_cm or min(openings_cm) < 1 or max(openings_cm) > 0xFF:
        raise ValueError("gate numbers must be 1..255")
    count = max(openings_cm)
    bitmap = 0
    for gate in openings_cm:
        bitmap |= 1 << (gate - 1)
    mask = bitmap.to_bytes((count + 7) // 8, "little")
    openings = b"".join(encode_number(Decimal(openings_cm[gate]), 0, GATE_OPENING_SIZE)
                        for gate in sorted(openings_cm))
    return bytes([count]) + mask + openings


def encode_gate_control(*, station: str, serial: int, sent_at: datetime,
                        openings_cm: Mapping[int, int], centre: int = 1,
                        password: int = 0) -> bytes:
    """A 4E downlink asking the unit to move gates to openings given in centimetres."""
    if any(value < 0 for value in openings_cm.values()):
        raise ValueError("gate openings cannot be negative")
    body = ((serial % SERIAL_MODULUS).to_bytes(2, "big") + encode_time(sent_at)
            + _gate_payload(openings_cm))
    return encode_frame(station=station, function=FunctionCode.GATE_CONTROL, body=body,
                        centre=centre, password=password, direction=Direction.DOWN,
                        end=Control.ENQ)


def encode_gate_response(*, station: str, serial: int, sent_at: datetime,
                         openings_cm: Mapping[int, int], centre: int = 1,
                         password: int = 0) -> bytes:
    """A unit's 4E answer (for simulators and tests)."""
    body = ((serial % SERIAL_MODULUS).to_bytes(2, "big") + encode_time(sent_at)
            + bytes([STATION_GUIDE, STATION_GUIDE]) + _station_bytes(station)
            + _gate_payload(openings_cm))
    return encode_frame(station=station, function=FunctionCode.GATE_CONTROL, body=body,
                        centre=centre, password=password)


def parse_gate_response(frame: Frame) -> GateResponse:
    """Decode a unit's 4E answer."""
    if frame.function != FunctionCode.GATE_CONTROL or frame.direction != Direction.UP:
        raise _fail("not an uplink 4E frame", frame.raw, FrameErrorKind.FUNCTION)
    reader = _Reader(frame.body, frame.raw)
    serial = int.from_bytes(reader.take(2, "serial number"), "big")
    send_time = decode_time(reader.take(6, "send time"), "send time", frame.raw)
    reader.guide(STATION_GUIDE, "station address guide F1")
    reader.guide(STATION_GUIDE, "station address guide F1")
    station = reader.take(STATION_ADDRESS_SIZE, "station address").hex().upper()
    count = reader.byte("gate count")
    bitmap = int.from_bytes(reader.take((count + 7) // 8, "gate bitmap"), "little")
    gates = [gate for gate in range(1, count + 1) if bitmap >> (gate - 1) & 1]
    openings = {}
    for gate in gates:
        data = reader.take(GATE_OPENING_SIZE, f"opening of gate {gate}")
        openings[gate] = int(_bcd_digits(data, f"opening of gate {gate}", frame.raw))
    return GateResponse(serial=serial, send_time=send_time, station=station,
                        openings_cm=openings)
