"""SL 651 frames built with the codec, sent to the real TCP centre, stored by the sink."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session
from tests.telemetry_factories import make_structure

from grassroots.db import make_engine, make_session_factory
from grassroots.irrigation.network.models import Structure, StructureKind
from grassroots.irrigation.telemetry.models import DeviceState, Reading
from grassroots.irrigation.telemetry.sl651 import (
    ELEMENTS,
    SERIES,
    Control,
    Direction,
    FunctionCode,
    Report,
    SeriesValue,
    StationClass,
    decode_frame,
    encode_frame,
    encode_report,
    encode_report_body,
    reading,
)
from grassroots.irrigation.telemetry.sl651_ingest import ELEMENT_QUANTITIES, Sl651Sink
from grassroots.irrigation.telemetry.sl651_server import Sl651Server
from grassroots.irrigation.telemetry.state import QUANTITIES, DeviceHealth, Quality
from grassroots.runtime import Runtime

STATION = "0012345678"
OBSERVED = datetime(2026, 3, 10, 1, 0, tzinfo=UTC)  # 09:00 in Beijing


def timed_report(serial: int = 1, *, station: str = STATION) -> bytes:
    return encode_report(
        station=station, function=FunctionCode.TIMED, serial=serial,
        sent_at=OBSERVED + timedelta(minutes=1), station_class=StationClass.GATE_DAM,
        observed_at=OBSERVED,
        values=[reading(0x39, Decimal("2.345")), reading(0x09, Decimal("0.50")),
                reading(0x38, Decimal("12.60"))])


Sink = Callable[[Report], Awaitable[bool]]


async def send(server: Sl651Server, frame: bytes, *, wait: float = 2.0) -> bytes | None:
    """Send one frame as a unit would; return the centre's answer, or None for silence."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(frame)
        await writer.drain()
        try:
            answer = await asyncio.wait_for(reader.read(4096), wait)
        except TimeoutError:
            return None
        return answer or None
    finally:
        writer.close()
        await writer.wait_closed()


def run_centre(runtime: Runtime, sink: Sink,
               scenario: Callable[[Sl651Server], Awaitable[None]]) -> None:
    async def main() -> None:
        async with Sl651Server(sink, host="127.0.0.1", port=0, clock=runtime.clock) as server:
            await scenario(server)

    asyncio.run(main())


def station_structure(session: Session) -> Structure:
    return make_structure(session, kind=StructureKind.INTEGRATED_GATE, sl651_address=STATION)


def stored(session: Session) -> list[tuple[str, datetime, float | None, int, str]]:
    with Session(session.get_bind()) as fresh:
        return list(fresh.execute(
            sa.select(Reading.quantity, Reading.observed_at, Reading.value, Reading.quality,
                      Reading.source).order_by(Reading.quantity, Reading.observed_at)).tuples())


def test_a_timed_report_is_stored_then_confirmed(runtime: Runtime, session: Session) -> None:
    gate = station_structure(session)
    sink = Sl651Sink(session_factory=runtime.session_factory, clock=runtime.clock)
    seen_at_confirmation: list[object] = []

    async def scenario(server: Sl651Server) -> None:
        answer = await send(server, timed_report())
        # What another connection sees the moment the confirmation arrives.
        seen_at_confirmation.extend(await asyncio.to_thread(stored, session))
        assert answer is not None
        ack = decode_frame(answer)
        assert (ack.direction, ack.end, ack.function) == (Direction.DOWN, Control.EOT, 0x32)
        assert ack.body[:2] == (1).to_bytes(2, "big")

    run_centre(runtime, sink, scenario)

    expected = [("gate_opening_m", OBSERVED, 0.5, 0, "sl651"),
                ("voltage_v", OBSERVED, 12.6, 0, "sl651"),
                ("water_level_m", OBSERVED, 2.345, 0, "sl651")]
    assert seen_at_confirmation == expected
    with Session(runtime.engine) as fresh:
        state = fresh.get(DeviceState, gate.id)
        assert state is not None
        assert (state.state, state.voltage_v) == (DeviceHealth.ONLINE, 12.6)
    assert sink.counters.readings_inserted == 3


def test_a_resent_report_is_confirmed_again_but_stored_once(
    runtime: Runtime, session: Session,
) -> None:
    station_structure(session)
    sink = Sl651Sink(session_factory=runtime.session_factory, clock=runtime.clock)
    answers: list[bytes | None] = []

    async def scenario(server: Sl651Server) -> None:
        answers.append(await send(server, timed_report(serial=7)))
        answers.append(await send(server, timed_report(serial=7)))

    run_centre(runtime, sink, scenario)

    assert all(answer is not None for answer in answers)
    assert len(stored(session)) == 3
    assert (sink.counters.readings_inserted, sink.counters.duplicates) == (3, 3)


def test_a_report_the_database_could_not_take_is_not_confirmed(
    runtime: Runtime, session: Session, tmp_path: Path,
) -> None:
    station_structure(session)
    broken = make_session_factory(make_engine(f"sqlite:///{tmp_path}/missing/dir/x.db"))
    sink = Sl651Sink(session_factory=broken, clock=runtime.clock)
    answers: list[bytes | None] = []
    servers: list[Sl651Server] = []

    async def scenario(server: Sl651Server) -> None:
        servers.append(server)
        answers.append(await send(server, timed_report(), wait=1.0))

    run_centre(runtime, sink, scenario)

    assert answers == [None]
    assert servers[0].counters.sink_refusals == 1
    assert servers[0].counters.acks_sent == 0
    assert stored(session) == []


def test_a_report_from_an_unknown_station_is_counted_and_not_confirmed(
    runtime: Runtime, session: Session,
) -> None:
    station_structure(session)
    sink = Sl651Sink(session_factory=runtime.session_factory, clock=runtime.clock)
    answers: list[bytes | None] = []

    async def scenario(server: Sl651Server) -> None:
        answers.append(await send(server, timed_report(station="0099999999"), wait=1.0))

    run_centre(runtime, sink, scenario)

    assert answers == [None]
    assert sink.counters.unknown_station == 1
    assert stored(session) == []


def test_unavailable_elements_and_five_minute_series_become_readings(
    runtime: Runtime, session: Session,
) -> None:
    station_structure(session)
    sink = Sl651Sink(session_factory=runtime.session_factory, clock=runtime.clock)
    rain = (Decimal("0.5"), None) + (Decimal("0"),) * 10
    body = encode_report_body(
        station=STATION, serial=3, sent_at=OBSERVED, station_class=StationClass.GATE_DAM,
        observed_at=OBSERVED,
        series=[SeriesValue(0xF4, "rainfall_5min", "mm", OBSERVED, timedelta(minutes=5),
                            rain)])
    # Water level sent as all FF: the unit's way of saying the sensor has no valid value.
    body += bytes([0x39, (4 << 3) | 3]) + b"\xff" * 4
    frame = encode_frame(station=STATION, function=FunctionCode.HOURLY, body=body)

    async def scenario(server: Sl651Server) -> None:
        assert await send(server, frame) is not None

    run_centre(runtime, sink, scenario)

    rows = stored(session)
    rain_rows = [row for row in rows if row[0] == "rain_5min_mm"]
    assert len(rain_rows) == 12
    assert rain_rows[0][1:4] == (OBSERVED - timedelta(minutes=55), 0.5, 0)
    assert rain_rows[1][1:4] == (OBSERVED - timedelta(minutes=50), None, Quality.UNAVAILABLE)
    assert rain_rows[-1][1:3] == (OBSERVED, 0.0)
    assert ("water_level_m", OBSERVED, None, Quality.UNAVAILABLE, "sl651") in rows


def test_every_element_the_codec_knows_maps_to_a_known_quantity() -> None:
    assert set(ELEMENTS) | set(SERIES) <= set(ELEMENT_QUANTITIES)
    assert set(ELEMENT_QUANTITIES.values()) <= set(QUANTITIES)
