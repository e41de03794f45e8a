"""SL651 centre station over real TCP on 127.0.0.1: confirm only what the sink committed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from grassroots.irrigation.telemetry.sl651 import (
    Control,
    Direction,
    Frame,
    FrameScanner,
    FunctionCode,
    Report,
    StationClass,
    build_ack,
    decode_frame,
    encode_keepalive,
    encode_packets,
    encode_report,
    encode_report_body,
    reading,
)
from grassroots.irrigation.telemetry.sl651_server import LinkMode, Sl651Server
from grassroots.kernel.clock import FixedClock

STATION = "0012345678"
AT = datetime(2026, 3, 10, 1, 30, tzinfo=UTC)
CENTRE_NOW = datetime(2026, 3, 10, 1, 31, 5, tzinfo=UTC)
QUIET_S = 0.3  # how long "no confirmation" is waited for
SERVER_LOGGER = "grassroots.irrigation.telemetry.sl651_server"


def report(serial: int, *, end: Control = Control.ETX, level: str = "1.250") -> bytes:
    return encode_report(station=STATION, function=FunctionCode.TIMED, serial=serial,
                         sent_at=AT, station_class=StationClass.RIVER, observed_at=AT,
                         values=[reading(0x39, level), reading(0x38, "12.40")], end=end)


class Sink:
    """Records reports; answers with ``result`` (a bool, or an exception to raise)."""

    def __init__(self, result: bool | Exception = True) -> None:
        self.result = result
        self.reports: list[Report] = []
        self.gate: asyncio.Event | None = None
        self.log: list[str] = []

    async def __call__(self, item: Report) -> bool:
        self.log.append(f"sink-start {item.serial}")
        if self.gate is not None:
            await self.gate.wait()
        self.reports.append(item)
        self.log.append(f"sink-done {item.serial}")
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


Scenario = Callable[[Sl651Server], Awaitable[None]]


def run(sink: Sink, scenario: Scenario, **options: Any) -> Sl651Server:
    """Start a server on an ephemeral port, run the scenario, always shut down."""

    async def main() -> Sl651Server:
        server = Sl651Server(sink, host="127.0.0.1", port=0,
                             clock=FixedClock(CENTRE_NOW), **options)
        async with server:
            await asyncio.wait_for(scenario(server), timeout=10)
        return server

    return asyncio.run(main())


async def connect(server: Sl651Server) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", server.port)


async def read_frames(reader: asyncio.StreamReader, count: int) -> list[Frame]:
    scanner = FrameScanner()
    frames: list[Frame] = []
    while len(frames) < count:
        chunk = await reader.read(4096)
        assert chunk, "connection closed before the confirmations arrived"
        frames.extend(item for item in scanner.feed(chunk) if isinstance(item, Frame))
    return frames


async def nothing_arrives(reader: asyncio.StreamReader) -> bool:
    try:
        data = await asyncio.wait_for(reader.read(4096), QUIET_S)
    except TimeoutError:
        return True
    return data == b""


async def send(writer: asyncio.StreamWriter, *chunks: bytes) -> None:
    for chunk in chunks:
        writer.write(chunk)
        await writer.drain()
        await asyncio.sleep(0.01)  # separate TCP segments, as a slow modem link would


def serial_of(ack: Frame) -> int:
    return int.from_bytes(ack.body[:2], "big")


def test_reports_in_one_chunk_split_across_chunks_and_among_garbage_are_all_confirmed() -> None:
    sink = Sink()
    acks: list[Frame] = []

    async def scenario(server: Sl651Server) -> None:
        reader, writer = await connect(server)
        third = report(3)
        await send(writer, report(1) + report(2), b"\x00\xde\xad\x7e\xbe\xef",
                   third[:9], third[9:30], third[30:])
        acks.extend(await read_frames(reader, 3))
        writer.close()

    server = run(sink, scenario)
    assert [r.serial for r in sink.reports] == [1, 2, 3]
    assert [serial_of(ack) for ack in acks] == [1, 2, 3]
    for ack in acks:
        assert ack.direction == Direction.DOWN
        assert (ack.station, ack.function, ack.end) == (STATION, FunctionCode.TIMED, Control.EOT)
        assert ack.body[2:] == bytes.fromhex("260310093105")  # the centre's clock, Beijing
    counters = server.counters.as_dict()
    assert (counters["reports_sunk"], counters["acks_sent"], counters["frames_ok"]) == (3, 3, 3)
    assert counters["frames_bad"] == 1  # the garbage between the reports


def test_the_confirmation_is_sent_only_after_the_sink_returns_true() -> None:
    sink = Sink()
    seen: list[str] = []

    async def scenario(server: Sl651Server) -> None:
        sink.gate = asyncio.Event()
        reader, writer = await connect(server)
        await send(writer, report(5))
        assert await nothing_arrives(reader)
        assert sink.log == ["sink-start 5"]
        sink.gate.set()
        (ack,) = await read_frames(reader, 1)
        seen.extend(sink.log)
        assert serial_of(ack) == 5
        writer.close()

    run(sink, scenario)
    assert seen == ["sink-start 5", "sink-done 5"]


@pytest.mark.parametrize("result", [False, RuntimeError("database is down")],
                         ids=["sink-returns-false", "sink-raises"])
def test_no_confirmation_is_sent_when_the_sink_does_not_commit(
        result: bool | Exception, caplog: pytest.LogCaptureFixture) -> None:
    sink = Sink(result)

    async def scenario(server: Sl651Server) -> None:
        reader, writer = await connect(server)
        await send(writer, report(8))
        assert await nothing_arrives(reader)
        # The same connection keeps working once storage recovers.
        sink.result = True
        await send(writer, report(8))
        (ack,) = await read_frames(reader, 1)
        assert serial_of(ack) == 8
        writer.close()

    with caplog.at_level(logging.INFO, logger=SERVER_LOGGER):
        server = run(sink, scenario)
    assert server.counters.sink_refusals == 1
    assert server.counters.acks_sent == 1 and server.counters.reports_sunk == 1
    if isinstance(result, Exception):
        assert any(r.levelno == logging.ERROR and "not confirming" in r.getMessage()
                   for r in caplog.records)


def test_a_resent_report_reaches_the_sink_again() -> None:
    sink = Sink()

    async def scenario(server: Sl651Server) -> None:
        reader, writer = await connect(server)
        await send(writer, report(11), report(11))
        assert [serial_of(a) for a in await read_frames(reader, 2)] == [11, 11]
        writer.close()

    run(sink, scenario)
    assert len(sink.reports) == 2
    assert sink.reports[0].dedupe_key == sink.reports[1].dedupe_key


def test_a_bad_frame_is_logged_in_hex_with_the_peer_and_spares_every_connection(
        caplog: pytest.LogCaptureFixture) -> None:
    sink = Sink()
    peers: list[str] = []

    async def scenario(server: Sl651Server) -> None:
        reader_a, writer_a = await connect(server)
        reader_b, writer_b = await connect(server)
        peers.append("{}:{}".format(*writer_a.get_extra_info("sockname")))
        corrupt = bytearray(report(20))
        corrupt[-1] ^= 0xFF
        await send(writer_a, bytes(corrupt))
        await send(writer_b, report(21))
        assert serial_of((await read_frames(reader_b, 1))[0]) == 21
        await send(writer_a, report(22))
        assert serial_of((await read_frames(reader_a, 1))[0]) == 22
        reader_c, writer_c = await connect(server)  # the listener still accepts
        await send(writer_c, report(23))
        assert serial_of((await read_frames(reader_c, 1))[0]) == 23
        for writer in (writer_a, writer_b, writer_c):
            writer.close()

    with caplog.at_level(logging.WARNING, logger=SERVER_LOGGER):
        server = run(sink, scenario)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    crc_warnings = [m for m in warnings if "crc" in m]
    assert len(crc_warnings) == 1
    assert peers[0] in crc_warnings[0]
    assert report(20)[:16].hex(" ") in crc_warnings[0]
    assert [r.serial for r in sink.reports] == [21, 22, 23]
    assert server.counters.frames_bad == 1 and server.counters.connections == 3


def test_a_downlink_frame_sent_to_the_centre_is_counted_as_bad_and_ignored() -> None:
    sink = Sink()

    async def scenario(server: Sl651Server) -> None:
        reader, writer = await connect(server)
        await send(writer, build_ack(decode_frame(report(1)), end=Control.EOT, now=AT))
        assert await nothing_arrives(reader)
        writer.close()

    server = run(sink, scenario)
    assert (server.counters.frames_bad, server.counters.frames_ok) == (1, 0)
    assert sink.reports == []


def test_a_keepalive_gets_no_answer() -> None:
    sink = Sink()

    async def scenario(server: Sl651Server) -> None:
        reader, writer = await connect(server)
        await send(writer, encode_keepalive(station=STATION, serial=1, sent_at=AT))
        assert await nothing_arrives(reader)
        writer.close()

    server = run(sink, scenario)
    assert server.counters.keepalives == 1
    assert sink.reports == [] and server.counters.acks_sent == 0


def test_stay_online_mode_confirms_the_last_frame_with_esc_and_earlier_ones_with_ack() -> None:
    sink = Sink()

    async def scenario(server: Sl651Server) -> None:
        reader, writer = await connect(server)
        await send(writer, report(30, end=Control.ETB), report(31, end=Control.ETX))
        first, last = await read_frames(reader, 2)
        assert (serial_of(first), first.end) == (30, Control.ACK)
        assert (serial_of(last), last.end) == (31, Control.ESC)
        writer.close()

    run(sink, scenario, link_mode=LinkMode.STAY_ONLINE)
    assert len(sink.reports) == 2


def test_a_multi_packet_report_is_sunk_and_confirmed_once_after_its_last_packet() -> None:
    sink = Sink()
    body = encode_report_body(station=STATION, serial=40, sent_at=AT,
                              station_class=StationClass.SOIL_MOISTURE, observed_at=AT,
                              values=[reading(0x10 + i, f"2{i}.5") for i in range(8)])
    packets = encode_packets(station=STATION, function=FunctionCode.TIMED, body=body,
                             packet_size=16)

    async def scenario(server: Sl651Server) -> None:
        reader, writer = await connect(server)
        await send(writer, *packets[:-1])
        assert await nothing_arrives(reader)
        await send(writer, packets[-1])
        (ack,) = await read_frames(reader, 1)
        assert (serial_of(ack), ack.end) == (40, Control.EOT)
        writer.close()

    run(sink, scenario)
    assert len(packets) >= 3
    (only,) = sink.reports
    assert only.serial == 40
    assert only.value("soil_moisture_pct_100cm") == Decimal("27.5")
    assert decode_frame(packets[0]).packet_total == len(packets)


def test_an_idle_connection_is_closed() -> None:
    sink = Sink()

    async def scenario(server: Sl651Server) -> None:
        reader, _writer = await connect(server)
        assert await asyncio.wait_for(reader.read(), 2) == b""

    server = run(sink, scenario, idle_timeout_s=0.2)
    assert server.counters.idle_timeouts == 1


def test_a_non_report_function_goes_to_the_frame_hook_unconfirmed() -> None:
    sink = Sink()
    hooked: list[Frame] = []

    async def hook(frame: Frame) -> None:
        hooked.append(frame)

    async def scenario(server: Sl651Server) -> None:
        reader, writer = await connect(server)
        raw = encode_report(station=STATION, function=FunctionCode.QUERY_REALTIME, serial=2,
                            sent_at=AT, station_class=StationClass.RIVER, observed_at=AT)
        await send(writer, raw)
        assert await nothing_arrives(reader)
        writer.close()

    server = run(sink, scenario, on_frame=hook)
    assert [f.function for f in hooked] == [FunctionCode.QUERY_REALTIME]
    assert server.counters.other_frames == 1 and sink.reports == []
