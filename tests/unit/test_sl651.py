"""SL 651-2014 codec: frames built byte by byte from the standard, plus fuzzing."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grassroots.irrigation.telemetry.sl651 import (
    Control,
    Direction,
    ElementValue,
    Frame,
    FrameError,
    FrameErrorKind,
    FrameReassembler,
    FrameScanner,
    FunctionCode,
    SeriesValue,
    StationClass,
    build_ack,
    crc16,
    decode_frame,
    encode_frame,
    encode_gate_control,
    encode_gate_response,
    encode_keepalive,
    encode_packets,
    encode_report,
    encode_report_body,
    parse_gate_response,
    parse_report,
    reading,
)

STATION = "0012345678"
# 2026-03-10 09:30 in Beijing.
AT = datetime(2026, 3, 10, 1, 30, tzinfo=UTC)
AT_BCD = bytes.fromhex("260310093000")
OBS_BCD = bytes.fromhex("2603100930")

# A timed report as captured from a field unit and published with its CRC (83 97) in
# an open-source SL651 centre (handsomestWei/sl651-2014, Crc16Util): station 0010100001,
# river class, current rain 13.0 mm, 5-minute rain 4.0 mm, level 0.550 m, 12.68 V.
PUBLISHED_FRAME = bytes.fromhex(
    "7e7e01 0010100001 a000 32 002b 02"
    "000c 200724172349 f1f1 0010100001 48 f0f0 2007241723"
    "2019000130 2219000040 392300000550 38121268"
    "03 8397".replace(" ", "")
)


def bitwise_crc(data: bytes) -> int:
    """CRC-16 written out bit by bit, independent of the codec's table."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def with_crc(frame: bytes) -> bytes:
    crc = bitwise_crc(frame)
    return frame + bytes([crc >> 8, crc & 0xFF])


def uplink(function: int, body: bytes, *, end: int = 0x03, start: bytes = b"\x02",
           length: int | None = None) -> bytes:
    """An uplink frame assembled field by field."""
    size = len(body) if length is None else length
    head = (b"\x7e\x7e" + b"\x01" + bytes.fromhex(STATION) + b"\x12\x34" + bytes([function])
            + bytes([size >> 8, size & 0xFF]) + start)
    return with_crc(head + body + bytes([end]))


REPORT_HEAD = (b"\x01\x02" + AT_BCD + b"\xf1\xf1" + bytes.fromhex(STATION) + b"\x48"
               + b"\xf0\xf0" + OBS_BCD)


def report_frame(elements: bytes, function: int = 0x32) -> bytes:
    return uplink(function, REPORT_HEAD + elements)


# --------------------------------------------------------------------------- CRC and layout


def test_crc16_gives_the_modbus_check_value_for_123456789() -> None:
    assert crc16(b"123456789") == 0x4B37


def test_the_published_field_frame_carries_its_crc_high_byte_first() -> None:
    crc = crc16(PUBLISHED_FRAME[:-2])
    assert crc == 0x8397
    assert PUBLISHED_FRAME[-2:] == bytes([crc >> 8, crc & 0xFF])


def test_the_published_field_frame_decodes_to_its_readings() -> None:
    frame = decode_frame(PUBLISHED_FRAME)
    report = parse_report(frame)
    assert (frame.centre, frame.station, frame.password) == (1, "0010100001", 0xA000)
    assert report.function == FunctionCode.TIMED
    assert report.serial == 12
    assert report.station_class == StationClass.RIVER
    assert report.send_time == datetime(2020, 7, 24, 9, 23, 49, tzinfo=UTC)
    assert report.observed_at == datetime(2020, 7, 24, 9, 23, tzinfo=UTC)
    assert report.value("rain_mm") == Decimal("13.0")
    assert report.value("rain_5min_mm") == Decimal("4.0")
    assert report.value("water_level_m") == Decimal("0.550")
    assert report.value("voltage_v") == Decimal("12.68")


def test_the_published_field_frame_re_encodes_byte_for_byte() -> None:
    report = parse_report(decode_frame(PUBLISHED_FRAME))
    assert report.station_class is not None and report.observed_at is not None
    rebuilt = encode_report(
        station=report.station, function=report.function, serial=report.serial,
        sent_at=report.send_time, station_class=report.station_class,
        observed_at=report.observed_at, values=report.values, password=0xA000,
    )
    assert rebuilt == PUBLISHED_FRAME


def test_an_encoded_timed_report_matches_the_standard_layout_byte_by_byte() -> None:
    body = (
        b"\x01\x02"                                       # serial number 258
        + bytes.fromhex("260310093000")                   # send time, Beijing
        + b"\xf1\xf1" + bytes.fromhex("0012345678") + b"\x48"  # station, river
        + b"\xf0\xf0" + bytes.fromhex("2603100930")       # observation time
        + bytes.fromhex("39 23 00012345")                 # water level N(7,3): 12.345 m
        + bytes.fromhex("38 12 1250")                     # supply voltage N(4,2): 12.50 V
        + bytes.fromhex("20 19 000125")                   # current rainfall N(5,1): 12.5 mm
    )
    head = bytes.fromhex("7e7e 01 0012345678 1234 32") + bytes([0x00, len(body)]) + b"\x02"
    expected = with_crc(head + body + b"\x03")
    built = encode_report(
        station=STATION, function=FunctionCode.TIMED, serial=258, sent_at=AT,
        station_class=StationClass.RIVER, observed_at=AT, centre=1, password=0x1234,
        values=[reading(0x39, "12.345"), reading(0x38, "12.50"), reading(0x20, "12.5")],
    )
    assert built == expected
    assert len(body) == 0x26


def test_a_decoded_frame_exposes_every_header_field() -> None:
    frame = decode_frame(report_frame(bytes.fromhex("38121250")))
    assert frame.direction == Direction.UP
    assert (frame.centre, frame.station, frame.password, frame.function) == (
        1, STATION, 0x1234, 0x32)
    assert frame.start == Control.STX and frame.end == Control.ETX
    assert frame.body.startswith(b"\x01\x02" + AT_BCD)
    assert frame.crc_ok and frame.packet_total is None


def test_times_are_read_as_beijing_time_and_returned_in_utc() -> None:
    report = parse_report(decode_frame(report_frame(b"")))
    assert report.send_time == AT
    assert report.observed_at == AT
    assert report.send_time.utcoffset() == timedelta(0)


# --------------------------------------------------------------------------- elements


def test_decimals_come_from_the_low_three_bits_of_the_definition_byte() -> None:
    # 1A with definition 0x1A: 3 bytes, 2 decimals (not the table's 1).
    report = parse_report(decode_frame(report_frame(bytes.fromhex("1a1a001234"))))
    (value,) = report.values
    assert (value.quantity, value.value, value.decimals, value.size) == (
        "rain_1h_mm", Decimal("12.34"), 2, 3)
    assert str(value.value) == "12.34"


def test_a_negative_value_is_an_ff_byte_then_the_magnitude() -> None:
    # 5 bytes including the FF sign byte, 3 decimals: -1.234 m.
    elements = bytes.fromhex("392b ff00001234")
    report = parse_report(decode_frame(report_frame(elements)))
    assert report.value("water_level_m") == Decimal("-1.234")
    assert report_frame(elements) == encode_report(
        station=STATION, function=0x32, serial=258, sent_at=AT, station_class=0x48,
        observed_at=AT, values=[reading(0x39, "-1.234")], password=0x1234)


def test_an_all_ff_value_is_unavailable_not_zero() -> None:
    report = parse_report(decode_frame(report_frame(bytes.fromhex("3923ffffffff 38121250"))))
    assert report.value("water_level_m") is None
    assert report.unavailable == (0x39,)
    assert report.value("voltage_v") == Decimal("12.50")
    assert any("no valid reading" in warning for warning in report.warnings)


def test_element_ids_map_to_quantities_and_units() -> None:
    elements = bytes.fromhex("0912 0150 1011 0234 1f19 000456 2619 001234 272b 0000001500 "
                             "302b 0000123450 3a23 00001000 3b23 00002500")
    report = parse_report(decode_frame(report_frame(elements)))
    got = {(v.quantity, v.unit): v.value for v in report.values}
    assert got == {
        ("gate_opening_m", "m"): Decimal("1.50"),
        ("soil_moisture_pct_10cm", "%"): Decimal("23.4"),
        ("rain_daily_mm", "mm"): Decimal("45.6"),
        ("rain_accumulated_mm", "mm"): Decimal("123.4"),
        ("flow_m3s", "m³/s"): Decimal("1.500"),
        ("flow_total_m3s", "m³/s"): Decimal("123.450"),
        ("water_level_downstream_m", "m"): Decimal("1.000"),
        ("water_level_upstream_m", "m"): Decimal("2.500"),
    }


def test_status_bits_are_kept_raw_not_read_as_bcd() -> None:
    report = parse_report(decode_frame(report_frame(bytes.fromhex("4520 0000a00f"))))
    assert report.status_bits == 0x0000A00F
    assert report.values == ()


def test_an_unknown_element_is_skipped_by_its_length_and_kept_raw() -> None:
    elements = bytes.fromhex("7f19 abcdef 38121250")
    report = parse_report(decode_frame(report_frame(elements)))
    assert [u.element_id for u in report.raw_unknown] == [0x7F]
    assert report.raw_unknown[0].data == bytes.fromhex("abcdef")
    assert report.value("voltage_v") == Decimal("12.50")
    assert any("unknown element 7f" in warning for warning in report.warnings)


def test_an_ff_prefixed_extended_element_is_kept_raw_with_its_two_byte_id() -> None:
    report = parse_report(decode_frame(report_frame(bytes.fromhex("ff85 08 21 38121250"))))
    assert report.raw_unknown[0].element_id == 0xFF85
    assert report.raw_unknown[0].data == b"\x21"
    assert report.value("voltage_v") == Decimal("12.50")


def test_a_second_observation_time_applies_to_the_values_after_it() -> None:
    elements = bytes.fromhex("38121250 f0f0 2603100935 38121260")
    report = parse_report(decode_frame(report_frame(elements)))
    first, second = report.values
    assert first.observed_at == AT
    assert second.observed_at == AT + timedelta(minutes=5)
    assert report.observed_at == AT


@pytest.mark.parametrize("function", [0x30, 0x31, 0x32, 0x33, 0x34])
def test_every_report_function_round_trips(function: int) -> None:
    values = [reading(0x39, "3.210"), reading(0x38, "12.01"), reading(0x1A, "0.5"),
              reading(0x27, "0.125"), reading(0x10, "31.5")]
    raw = encode_report(station=STATION, function=function, serial=65535, sent_at=AT,
                        station_class=StationClass.INTAKE, observed_at=AT, values=values)
    report = parse_report(decode_frame(raw))
    assert report.function == function
    assert report.serial == 65535
    assert report.station_class == StationClass.INTAKE
    assert [(v.element_id, v.value) for v in report.values] == [
        (v.element_id, v.value) for v in values]
    assert report.warnings == ()


def test_a_keepalive_carries_only_serial_and_send_time() -> None:
    raw = encode_keepalive(station=STATION, serial=7, sent_at=AT)
    assert raw == with_crc(bytes.fromhex("7e7e 01 0012345678 0000 2f 0008 02 0007 260310093000 03"))
    frame = decode_frame(raw)
    assert frame.body == b"\x00\x07" + AT_BCD
    report = parse_report(frame)
    assert (report.function, report.serial, report.send_time) == (0x2F, 7, AT)
    assert report.station == STATION and report.values == () and report.observed_at is None


def test_the_dedupe_key_tells_apart_reports_whose_serial_wrapped() -> None:
    first = parse_report(decode_frame(report_frame(b"")))
    later_obs = REPORT_HEAD[:-5] + bytes.fromhex("2603110930")
    later = parse_report(decode_frame(uplink(0x32, later_obs)))
    assert first.serial == later.serial
    assert first.dedupe_key == (STATION, 258, AT)
    assert first.dedupe_key != later.dedupe_key


# --------------------------------------------------------------------------- series


def test_the_hourly_report_carries_5_minute_rain_and_levels() -> None:
    rain = bytes([5, 0, 0xFF, 12, 0, 0, 0, 0, 0, 0, 0, 254])
    levels = b"".join((123 + i).to_bytes(2, "big") for i in range(11)) + b"\xff\xff"
    elements = b"\xf4\x60" + rain + b"\xf5\xc0" + levels + bytes.fromhex("2619 000105")
    report = parse_report(decode_frame(report_frame(elements, function=0x34)))
    rain_series, level_series = report.series
    assert rain_series.quantity == "rain_5min_mm" and rain_series.unit == "mm"
    assert rain_series.values[:4] == (Decimal("0.5"), Decimal("0.0"), None, Decimal("1.2"))
    assert rain_series.values[-1] == Decimal("25.4")
    # Twelve 5-minute entries that end at the observation time.
    assert rain_series.observed_at == AT - timedelta(minutes=55)
    assert rain_series.step == timedelta(minutes=5)
    assert level_series.quantity == "water_level_relative_1_m"
    assert level_series.values[0] == Decimal("1.23") and level_series.values[-1] is None
    points = level_series.points()
    assert len(points) == 11
    assert points[-1] == (AT - timedelta(minutes=5), Decimal("1.33"))
    assert report.value("rain_accumulated_mm") == Decimal("10.5")


def test_an_hourly_series_round_trips_through_the_encoder() -> None:
    values = (Decimal("0.5"), None, *([Decimal("0.0")] * 10))
    series = SeriesValue(0xF4, "rain_5min_mm", "mm", AT - timedelta(minutes=55),
                         timedelta(minutes=5), values)
    raw = encode_report(station=STATION, function=0x34, serial=1, sent_at=AT,
                        station_class=StationClass.RAINFALL, observed_at=AT, series=[series])
    assert parse_report(decode_frame(raw)).series == (series,)


def test_an_equal_interval_report_spreads_values_over_its_time_step() -> None:
    elements = bytes.fromhex("0418 000005 3923 00001000 00001010 ffffffff")
    report = parse_report(decode_frame(report_frame(elements, function=0x31)))
    assert report.time_step == timedelta(minutes=5)
    (series,) = report.series
    assert series.quantity == "water_level_m"
    assert series.values == (Decimal("1.000"), Decimal("1.010"), None)
    assert series.points()[1] == (AT + timedelta(minutes=5), Decimal("1.010"))


# --------------------------------------------------------------------------- malformed


def _error(data: bytes) -> FrameError:
    with pytest.raises(FrameError) as caught:
        parse_report(decode_frame(data))
    return caught.value


GOOD = report_frame(bytes.fromhex("38121250"))


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (GOOD[:10], FrameErrorKind.SHORT),
        (b"\x7f" + GOOD[1:], FrameErrorKind.START),
        (GOOD[:11] + bytes([0x30 | GOOD[11]]) + GOOD[12:], FrameErrorKind.DIRECTION),
        (GOOD[:13] + b"\x05" + GOOD[14:], FrameErrorKind.START),
        (GOOD + b"\x00", FrameErrorKind.LENGTH),
        (uplink(0x32, REPORT_HEAD, end=0x04), FrameErrorKind.END),
        (GOOD[:-1] + bytes([GOOD[-1] ^ 0x01]), FrameErrorKind.CRC),
        (uplink(0x32, b"\x00\x20\x00" + REPORT_HEAD, start=b"\x16"), FrameErrorKind.PACKET),
        (report_frame(bytes.fromhex("3923 000a2345")), FrameErrorKind.BCD),
        (report_frame(bytes.fromhex("3923 0001")), FrameErrorKind.TRUNCATED),
        (uplink(0x32, REPORT_HEAD[:2] + bytes.fromhex("261310093000") + REPORT_HEAD[8:]),
         FrameErrorKind.TIME),
        (uplink(0x32, REPORT_HEAD[:8] + b"\xf1\xf2" + REPORT_HEAD[10:]),
         FrameErrorKind.STRUCTURE),
        (uplink(0x37, REPORT_HEAD), FrameErrorKind.FUNCTION),
    ],
    ids=["short", "bad-start", "direction", "start-byte", "length", "end-byte", "crc",
         "packet-seq-zero", "bcd", "truncated-element", "impossible-month", "guide",
         "not-a-report"],
)
def test_each_malformed_frame_is_rejected_with_its_reason(data: bytes,
                                                         kind: FrameErrorKind) -> None:
    error = _error(data)
    assert error.kind == kind
    assert error.raw == data[: len(error.raw)] and error.raw
    assert error.reason


def test_a_crc_error_can_be_waived_to_inspect_the_frame() -> None:
    broken = GOOD[:-1] + bytes([GOOD[-1] ^ 0x01])
    frame = decode_frame(broken, check_crc=False)
    assert not frame.crc_ok
    assert parse_report(frame).value("voltage_v") == Decimal("12.50")


# --------------------------------------------------------------------------- downlink


def test_the_centre_confirmation_echoes_the_serial_with_the_centre_time() -> None:
    frame = decode_frame(GOOD)
    now = datetime(2026, 3, 10, 1, 31, 5, tzinfo=UTC)
    ack = build_ack(frame, end=Control.EOT, now=now)
    expected = with_crc(
        bytes.fromhex("7e7e 0012345678 01 1234 32 8008 02 0102 260310093105 04")
    )
    assert ack == expected
    downlink = decode_frame(ack)
    assert downlink.direction == Direction.DOWN
    assert (downlink.station, downlink.centre, downlink.end) == (STATION, 1, Control.EOT)


def test_a_downlink_may_not_end_like_an_uplink() -> None:
    with pytest.raises(ValueError):
        build_ack(decode_frame(GOOD), end=Control.ETX, now=AT)
    bad = with_crc(bytes.fromhex("7e7e 0012345678 01 1234 32 8008 02 0102 260310093105 03"))
    assert _error(bad).kind == FrameErrorKind.END


def test_gate_control_sends_openings_in_centimetres_as_bcd() -> None:
    raw = encode_gate_control(station=STATION, serial=7, sent_at=AT,
                              openings_cm={1: 50, 3: 120})
    body = b"\x00\x07" + AT_BCD + b"\x03" + b"\x05" + b"\x00\x50" + b"\x01\x20"
    expected = with_crc(bytes.fromhex("7e7e 0012345678 01 0000 4e")
                        + bytes([0x80, len(body), 0x02]) + body + b"\x05")
    assert raw == expected


def test_a_gate_control_response_decodes_to_openings() -> None:
    raw = encode_gate_response(station=STATION, serial=7, sent_at=AT,
                               openings_cm={2: 35, 9: 1200})
    response = parse_gate_response(decode_frame(raw))
    assert response.serial == 7 and response.station == STATION
    assert dict(response.openings_cm) == {2: 35, 9: 1200}


# --------------------------------------------------------------------------- stream


def test_the_scanner_splits_two_frames_in_one_chunk() -> None:
    second = report_frame(bytes.fromhex("38121260"))
    items = FrameScanner().feed(GOOD + second)
    assert [type(item) for item in items] == [Frame, Frame]
    assert [item.raw for item in items if isinstance(item, Frame)] == [GOOD, second]


def test_the_scanner_assembles_a_frame_fed_one_byte_at_a_time() -> None:
    scanner = FrameScanner()
    items = [item for byte in GOOD for item in scanner.feed(bytes([byte]))]
    assert len(items) == 1 and isinstance(items[0], Frame)
    assert scanner.buffered == 0


def test_the_scanner_reports_garbage_and_resynchronises_on_7e_7e() -> None:
    items = FrameScanner().feed(b"\xde\xad\x7e\xbe\xef" + GOOD + b"\x00\x11" + GOOD)
    kinds = [item.kind if isinstance(item, FrameError) else "frame" for item in items]
    assert kinds == [FrameErrorKind.GARBAGE, "frame", FrameErrorKind.GARBAGE, "frame"]
    garbage = items[0]
    assert isinstance(garbage, FrameError) and garbage.raw == b"\xde\xad\x7e\xbe\xef"


def test_a_corrupted_frame_is_one_error_and_the_next_frame_still_decodes() -> None:
    corrupted = GOOD[:20] + bytes([GOOD[20] ^ 0xFF]) + GOOD[21:]
    error, frame = FrameScanner().feed(corrupted + GOOD)
    assert isinstance(error, FrameError) and error.kind == FrameErrorKind.CRC
    assert error.raw == corrupted
    assert isinstance(frame, Frame) and frame.raw == GOOD


def test_a_false_start_marker_is_one_error_and_the_frame_behind_it_survives() -> None:
    false_start = b"\x7e\x7e" + bytes(9) + b"\x30\x00\x02" + b"\x55\x66"
    error, frame = FrameScanner().feed(false_start + GOOD)
    assert isinstance(error, FrameError) and error.kind == FrameErrorKind.DIRECTION
    assert error.raw == false_start
    assert isinstance(frame, Frame) and frame.raw == GOOD


def test_a_bogus_head_claiming_4k_does_not_hold_back_a_real_frame() -> None:
    bogus = b"\x7e\x7e" + bytes(9) + b"\x0f\xff\x02"
    scanner = FrameScanner()
    items = scanner.feed(bogus + GOOD)
    assert isinstance(items[-1], Frame) and items[-1].raw == GOOD
    assert scanner.buffered == 0


def test_flush_reports_a_frame_cut_off_by_the_end_of_stream() -> None:
    scanner = FrameScanner()
    assert scanner.feed(GOOD[:25]) == []
    (error,) = scanner.flush()
    assert error.kind == FrameErrorKind.INCOMPLETE and error.raw == GOOD[:25]


# --------------------------------------------------------------------------- packets


def _long_body() -> bytes:
    values = [reading(0x10 + i, f"{20 + i}.5") for i in range(8)] + [reading(0x39, "1.5")]
    return encode_report_body(station=STATION, serial=99, sent_at=AT, station_class=0x4D,
                              observed_at=AT, values=values)


def test_packets_reassemble_out_of_order_and_despite_duplicates() -> None:
    body = _long_body()
    packets = [decode_frame(p) for p in encode_packets(
        station=STATION, function=0x32, body=body, packet_size=21)]
    assert len(packets) == 3
    assert [p.end for p in packets] == [Control.ETB, Control.ETB, Control.ETX]
    reassembler = FrameReassembler()
    results = [reassembler.add(p, now=float(t))
               for t, p in enumerate([packets[2], packets[0], packets[0], packets[1]])]
    assert results[:3] == [None, None, None]
    whole = results[3]
    assert whole is not None and whole.is_reassembled and whole.body == body
    assert reassembler.duplicates == 1 and reassembler.pending == 0
    single = parse_report(decode_frame(encode_frame(station=STATION, function=0x32,
                                                    body=body)))
    assert parse_report(whole) == single


def test_the_length_of_a_packet_counts_its_packet_info_bytes() -> None:
    raw = encode_packets(station=STATION, function=0x32, body=b"\x01\x02\x03", packet_size=3)[0]
    assert raw[11:14] == bytes([0x00, 6, 0x16])
    assert raw[14:17] == bytes.fromhex("001001")  # 1 packet in total, this is packet 1


def test_a_packet_whose_length_leaves_out_the_packet_info_is_tolerated() -> None:
    raw = uplink(0x32, b"\x00\x20\x01" + b"\xaa\xbb", start=b"\x16", length=2, end=0x17)
    frame = decode_frame(raw)
    assert (frame.packet_total, frame.packet_seq, frame.body) == (2, 1, b"\xaa\xbb")
    assert FrameScanner().feed(raw) == [frame]


def test_a_lone_packet_must_be_reassembled_before_parsing() -> None:
    packet = decode_frame(encode_packets(station=STATION, function=0x32, body=_long_body(),
                                         packet_size=21)[0])
    with pytest.raises(FrameError) as caught:
        parse_report(packet)
    assert caught.value.kind == FrameErrorKind.PACKET


def test_an_incomplete_message_times_out() -> None:
    packets = [decode_frame(p) for p in encode_packets(
        station=STATION, function=0x32, body=_long_body(), packet_size=21)]
    reassembler = FrameReassembler(timeout_s=300)
    assert reassembler.add(packets[0], now=0.0) is None
    assert reassembler.expire(now=299.0) == []
    assert reassembler.expire(now=301.0) == [(1, STATION, 0x32, 3)]
    assert reassembler.pending == 0
    # A late packet starts a new message instead of completing the dropped one.
    assert reassembler.add(packets[1], now=302.0) is None
    assert reassembler.add(packets[2], now=303.0) is None


# --------------------------------------------------------------------------- fuzzing

VALID_FRAMES = [
    GOOD,
    PUBLISHED_FRAME,
    encode_keepalive(station=STATION, serial=3, sent_at=AT),
    report_frame(bytes([0xF4, 0x60, *range(12)]), function=0x34),
    report_frame(bytes.fromhex("0418 000005 3923 00001000 00001010"), function=0x31),
    *encode_packets(station=STATION, function=0x32, body=_long_body(), packet_size=21),
    encode_gate_response(station=STATION, serial=1, sent_at=AT, openings_cm={1: 10}),
]


def _consume(items: list[Frame | FrameError]) -> None:
    """Everything downstream of the scanner may fail only with FrameError."""
    for item in items:
        assert isinstance(item, Frame | FrameError)
        if isinstance(item, Frame) and not item.is_packet:
            with contextlib.suppress(FrameError):
                parse_report(item)


@settings(max_examples=300, database=None)
@given(chunks=st.lists(st.binary(max_size=80), max_size=12))
def test_random_bytes_yield_only_frames_or_frame_errors(chunks: list[bytes]) -> None:
    scanner = FrameScanner()
    for chunk in chunks:
        _consume(scanner.feed(chunk))
    _consume(list(scanner.flush()))
    assert scanner.buffered == 0


_MUTATIONS = st.lists(
    st.tuples(st.sampled_from(["flip", "insert", "delete", "truncate"]),
              st.integers(min_value=0, max_value=400), st.integers(min_value=0, max_value=255)),
    min_size=1, max_size=4,
)


def _mutate(data: bytes, mutations: list[tuple[str, int, int]]) -> bytes:
    buffer = bytearray(data)
    for operation, position, value in mutations:
        at = position % (len(buffer) + 1)
        if operation == "flip" and at < len(buffer):
            buffer[at] = value
        elif operation == "insert":
            buffer[at:at] = bytes([value])
        elif operation == "delete":
            del buffer[at:at + 1]
        else:
            del buffer[at:]
    return bytes(buffer)


@settings(max_examples=400, database=None)
@given(frame=st.sampled_from(VALID_FRAMES), mutations=_MUTATIONS,
       split=st.integers(min_value=0, max_value=400))
def test_mutated_frames_never_raise_anything_but_frame_error(
        frame: bytes, mutations: list[tuple[str, int, int]], split: int) -> None:
    data = _mutate(frame, mutations)
    scanner = FrameScanner()
    _consume(scanner.feed(data[:split]) + scanner.feed(data[split:] + GOOD))
    # Waiving the CRC lets the mutations reach the body parser.
    try:
        decoded = decode_frame(data, check_crc=False)
    except FrameError:
        return
    with contextlib.suppress(FrameError):
        parse_report(decoded)
    with contextlib.suppress(FrameError):
        parse_gate_response(decoded)


@settings(max_examples=400, database=None)
@given(function=st.sampled_from([0x2F, 0x30, 0x31, 0x32, 0x33, 0x34]),
       tail=st.binary(max_size=120), keep_head=st.booleans())
def test_random_report_bodies_never_raise_anything_but_frame_error(
        function: int, tail: bytes, keep_head: bool) -> None:
    body = (REPORT_HEAD if keep_head else b"") + tail
    frame = decode_frame(encode_frame(station=STATION, function=function, body=body))
    try:
        report = parse_report(frame)
    except FrameError:
        return
    assert report.function == function
    assert all(isinstance(v, ElementValue) for v in report.values)
