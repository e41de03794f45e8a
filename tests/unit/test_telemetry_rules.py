"""Pure telemetry rules: MQTT payloads, register decoding, device liveness."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from grassroots.irrigation.network.models import StructureKind
from grassroots.irrigation.telemetry.modbus_poll import DataType, Order, RegisterSpec
from grassroots.irrigation.telemetry.mqtt_ingest import (
    PayloadError,
    parse_status,
    parse_telemetry,
    parse_timestamp,
    split_topic,
)
from grassroots.irrigation.telemetry.state import (
    QUANTITIES,
    Announced,
    DeviceHealth,
    Quality,
    classify,
    report_interval,
)

AT = datetime(2026, 5, 1, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize("raw", ["2026-05-01T08:00:00+08:00", "2026-05-01T00:00:00Z",
                                 1777593600000])
def test_a_timestamp_is_read_as_utc_from_an_offset_or_epoch_milliseconds(raw: object) -> None:
    assert parse_timestamp(raw) == AT


@pytest.mark.parametrize(("raw", "reason"), [
    ("2026-05-01T08:00:00", "naive_ts"),
    (1777593600, "ts_out_of_range"),  # seconds where milliseconds are due
    ("yesterday", "bad_ts"),
    (True, "bad_ts"),
])
def test_an_ambiguous_or_wrong_timestamp_is_refused(raw: object, reason: str) -> None:
    with pytest.raises(PayloadError) as caught:
        parse_timestamp(raw)
    assert caught.value.reason == reason


def test_a_payload_may_carry_several_timestamped_samples() -> None:
    samples = parse_telemetry(b'[{"ts": 1777593600000, "readings": {"flow_m3s": 1}},'
                              b' {"ts": 1777593660000, "seq": 2, "readings": {}}]')

    assert [(s.observed_at, s.seq) for s in samples] == [(AT, None),
                                                         (AT + timedelta(minutes=1), 2)]


@pytest.mark.parametrize(("payload", "reason"), [
    (b"\xff\xfe", "not_json"), (b"[]", "empty"), (b'{"readings": {}}', "no_ts"),
    (b'{"ts": 1777593600000}', "no_readings"),
    (b'{"ts": 1777593600000, "seq": "x", "readings": {}}', "bad_seq"),
])
def test_a_malformed_payload_names_its_fault(payload: bytes, reason: str) -> None:
    with pytest.raises(PayloadError) as caught:
        parse_telemetry(payload)
    assert caught.value.reason == reason


def test_topics_and_status_words_are_read_strictly() -> None:
    assert split_topic("grassroots/irrigation/g-1/telemetry", "grassroots/irrigation") == (
        "g-1", "telemetry")
    with pytest.raises(PayloadError):
        split_topic("grassroots/irrigation/g-1/extra/telemetry", "grassroots/irrigation")
    assert parse_status(b"offline") == Announced.OFFLINE
    assert parse_status(b'{"status": "Online"}') == Announced.ONLINE
    assert parse_status(b"") is None
    with pytest.raises(PayloadError):
        parse_status(b"sleeping")


@pytest.mark.parametrize(("spec", "registers", "value"), [
    (RegisterSpec("head_m", 0, DataType.UINT16, scale=0.001), [1234], 1.234),
    (RegisterSpec("head_m", 0, DataType.INT16, scale=0.01), [0xFF06], -2.5),
    (RegisterSpec("volume_m3", 0, DataType.UINT32), [0x0001, 0x0002], 65538.0),
    (RegisterSpec("volume_m3", 0, DataType.INT32, word_order=Order.LITTLE),
     [0x0002, 0x0001], 65538.0),
    (RegisterSpec("flow_m3s", 0, DataType.FLOAT32), [0x4030, 0x0000], 2.75),
    (RegisterSpec("flow_m3s", 0, DataType.FLOAT32, byte_order=Order.LITTLE,
                  word_order=Order.LITTLE), [0x0000, 0x3040], 2.75),
    (RegisterSpec("flow_m3s", 0, DataType.FLOAT32), [0x7FC0, 0x0000], None),  # NaN
    (RegisterSpec("rain_mm", 0, DataType.UINT16, invalid=0xFFFF), [0xFFFF], None),
    (RegisterSpec("water_level_m", 0, DataType.UINT16, scale=0.01, offset=1100), [525],
     1105.25),
])
def test_registers_decode_by_their_declared_type_and_order(
    spec: RegisterSpec, registers: list[int], value: float | None,
) -> None:
    assert spec.value_fn(registers) == (pytest.approx(value) if value is not None else None)


def test_a_register_spec_refuses_an_unknown_quantity() -> None:
    with pytest.raises(ValueError, match="unknown quantity"):
        RegisterSpec("depth_ft", 0)


@pytest.mark.parametrize(("age", "failing", "health"), [
    (timedelta(minutes=2), False, DeviceHealth.ONLINE),
    (timedelta(minutes=2), True, DeviceHealth.STALE),
    (timedelta(minutes=2, seconds=1), False, DeviceHealth.STALE),
    (timedelta(minutes=6), False, DeviceHealth.STALE),
    (timedelta(minutes=6, seconds=1), False, DeviceHealth.OFFLINE),
])
def test_a_gate_is_online_within_two_intervals_stale_within_six_then_offline(
    age: timedelta, failing: bool, health: DeviceHealth,
) -> None:
    interval = report_interval(StructureKind.INTEGRATED_GATE)
    assert classify(last_seen_at=AT, now=AT + age, interval=interval,
                    failing=failing) == health


def test_a_device_never_heard_from_or_that_left_its_last_will_is_offline() -> None:
    interval = timedelta(minutes=1)
    assert classify(last_seen_at=None, now=AT, interval=interval) == DeviceHealth.OFFLINE
    assert classify(last_seen_at=AT, now=AT, interval=interval,
                    announced_offline=True) == DeviceHealth.OFFLINE


def test_reporting_intervals_come_from_config_then_kind() -> None:
    assert report_interval(StructureKind.SOIL_MOISTURE) == timedelta(hours=1)
    assert report_interval("level_gauge", '{"report_interval_s": 30}') == timedelta(seconds=30)
    assert report_interval("level_gauge", "not json") == timedelta(minutes=5)


def test_out_of_range_and_missing_values_are_flagged() -> None:
    level = QUANTITIES["soil_moisture_pct_20cm"]
    assert level.quality_of(35.0) == Quality.OK
    assert level.quality_of(130.0) == Quality.OUT_OF_RANGE
    assert level.quality_of(None) == Quality.UNAVAILABLE
