"""Derived flows from heads, openings and levels, and measured daily volumes at turnouts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session
from tests.telemetry_factories import make_structure

from grassroots.irrigation.accounting.models import DailyVolume, VolumeSource
from grassroots.irrigation.derive import DeriveResult, derive_flows, measured_daily_volumes
from grassroots.irrigation.network.models import Structure, StructureKind, WaterUse
from grassroots.irrigation.telemetry.models import Reading
from grassroots.irrigation.telemetry.state import Quality
from grassroots.irrigation.telemetry.store import ReadingIn, store_readings
from grassroots.irrigation.water.hydraulics import GateRating, ParshallFlume
from grassroots.irrigation.water.volumes import ACCOUNTING_TZ
from grassroots.runtime import Runtime

T0 = datetime(2026, 3, 9, 2, 0, tzinfo=UTC)
STEP = timedelta(minutes=5)
DAY = date(2026, 3, 9)


def _flume(session: Session, width: float = 0.6, *, is_turnout: bool = False,
           water_use: WaterUse | None = None) -> Structure:
    return make_structure(session, kind=StructureKind.PARSHALL_FLUME,
                          config=json.dumps({"throat_width_m": width}),
                          is_turnout=is_turnout, water_use=water_use)


def _store(runtime: Runtime, structure_id: int,
           series: dict[str, Sequence[float | None]], start: datetime = T0) -> None:
    readings = [ReadingIn(structure_id, quantity, start + i * STEP, value,
                          int(Quality.UNAVAILABLE) if value is None else 0, "modbus")
                for quantity, values in series.items() for i, value in enumerate(values)]
    store_readings(engine_or_session_factory=runtime.session_factory, readings=readings)


def _derive(runtime: Runtime, start: datetime = T0, hours: int = 3) -> DeriveResult:
    return derive_flows(session_factory=runtime.session_factory, runtime=runtime,
                        since=start, until=start + timedelta(hours=hours))


def _flows(session: Session, structure_id: int) -> list[Reading]:
    session.expire_all()
    return list(session.scalars(select(Reading).where(
        Reading.structure_id == structure_id, Reading.quantity == "flow_m3s")
        .order_by(Reading.observed_at)))


def test_a_flume_head_series_gives_the_flumes_own_discharge(
        session: Session, runtime: Runtime) -> None:
    flume = _flume(session)
    heads = [0.20, 0.25, 0.30, 0.28, 0.22]
    _store(runtime, flume.id, {"head_m": heads})

    result = _derive(runtime)

    rows = _flows(session, flume.id)
    assert result.inserted == len(heads) == len(rows)
    rating = ParshallFlume(0.6)
    for row, ha in zip(rows, heads, strict=True):
        expected = rating.discharge(ha).q_m3s
        assert expected is not None
        assert row.value == pytest.approx(expected, rel=1e-12)
        assert row.quality == 0
        assert row.source == "derived"


def test_a_submerged_flume_reading_is_flagged_and_an_invalid_one_is_stored_as_null(
        session: Session, runtime: Runtime) -> None:
    flume = _flume(session)
    _store(runtime, flume.id, {"head_m": [0.40, 0.40, 0.41],
                               "water_level_downstream_m": [0.20, 0.30, 0.39]})

    _derive(runtime)

    free, submerged, invalid = _flows(session, flume.id)
    rating = ParshallFlume(0.6)
    assert free.quality == 0
    assert submerged.quality & Quality.SUBMERGED
    assert submerged.value == pytest.approx(rating.free_flow_m3s(0.40))
    assert invalid.value is None
    assert invalid.quality & Quality.INVALID


def test_an_unavailable_head_gives_an_unavailable_flow_not_zero(
        session: Session, runtime: Runtime) -> None:
    flume = _flume(session)
    _store(runtime, flume.id, {"head_m": [0.3, None, 0.31]})

    _derive(runtime)

    rows = _flows(session, flume.id)
    assert [r.value is None for r in rows] == [False, True, False]
    assert rows[1].quality & Quality.UNAVAILABLE


def test_a_gates_flow_comes_from_its_rating_with_opening_and_both_levels(
        session: Session, runtime: Runtime) -> None:
    gate = make_structure(session, kind=StructureKind.INTEGRATED_GATE, config=json.dumps(
        {"gate_width_m": 1.0, "discharge_coefficient": 0.6}))
    openings, upstream, downstream = [0.30, 0.32, 0.0], [1.20, 1.18, 1.22], [0.30, 0.90, 0.1]
    _store(runtime, gate.id, {"gate_opening_m": openings, "water_level_upstream_m": upstream,
                              "water_level_downstream_m": downstream})

    _derive(runtime)

    rows = _flows(session, gate.id)
    rating = GateRating(1.0, 0.6)
    expected = [rating.flow(e, h1, h2).q_m3s
                for e, h1, h2 in zip(openings, upstream, downstream, strict=True)]
    assert [r.value for r in rows] == pytest.approx(expected)
    assert rows[2].value == 0.0  # a closed gate passes nothing, which is a measurement
    # the second one runs submerged: less than the free-flow value
    assert rows[1].value is not None
    assert rows[1].value < rating.flow(0.32, 1.18).q_m3s  # type: ignore[operator]


def test_a_stuck_head_sensor_flags_the_derived_flow(session: Session, runtime: Runtime) -> None:
    flume = _flume(session)
    _store(runtime, flume.id, {"head_m": [0.30] * 16})  # 75 minutes of the same value

    _derive(runtime)

    rows = _flows(session, flume.id)
    stuck = [bool(r.quality & Quality.STUCK) for r in rows]
    assert not stuck[0] and stuck[-1]
    # the run must last an hour before it is called stuck: 12 steps of 5 minutes
    assert stuck.index(True) == 12
    assert all(r.value is not None for r in rows)


def test_a_spiking_head_is_flagged_on_the_spike_only(session: Session, runtime: Runtime) -> None:
    flume = _flume(session)
    _store(runtime, flume.id, {"head_m": [0.30, 0.31, 1.50, 0.32, 0.31]})

    _derive(runtime)

    assert [bool(r.quality & Quality.SPIKE) for r in _flows(session, flume.id)] == [
        False, False, True, False, False]


def _flow_day(runtime: Runtime, structure_id: int, *, skip: tuple[datetime, datetime] | None
              = None) -> None:
    start = datetime(2026, 3, 9, tzinfo=ACCOUNTING_TZ) - STEP
    times = [start + i * STEP for i in range(24 * 12 + 3)]
    readings = [ReadingIn(structure_id, "flow_m3s", t, 1.0, 0, "modbus") for t in times
                if skip is None or not skip[0] < t < skip[1]]
    store_readings(engine_or_session_factory=runtime.session_factory, readings=readings)


def _turnout(session: Session) -> Structure:
    return _flume(session, is_turnout=True, water_use=WaterUse.AGRICULTURE)


def test_a_constant_one_cubic_metre_per_second_fills_a_day_with_86400_m3(
        session: Session, runtime: Runtime) -> None:
    turnout = _turnout(session)
    _flow_day(runtime, turnout.id)

    result = measured_daily_volumes(session_factory=runtime.session_factory, runtime=runtime,
                                    day=DAY)

    (volume,) = result.volumes
    assert volume.volume_m3 == 86_400
    assert volume.coverage == pytest.approx(1.0)
    assert volume.gaps == ()
    row = session.scalars(select(DailyVolume)).one()
    assert (row.day, row.structure_id, row.volume_m3) == (DAY, turnout.id, 86_400)
    assert row.source == VolumeSource.MEASURED
    assert row.water_use == WaterUse.AGRICULTURE
    assert row.quality == 0


def test_a_day_with_a_two_hour_gap_reports_the_gap_and_a_lower_coverage(
        session: Session, runtime: Runtime) -> None:
    turnout = _turnout(session)
    gap_start = datetime(2026, 3, 9, 10, tzinfo=ACCOUNTING_TZ)
    _flow_day(runtime, turnout.id, skip=(gap_start, gap_start + timedelta(hours=2)))

    result = measured_daily_volumes(session_factory=runtime.session_factory, runtime=runtime,
                                    day=DAY)

    (volume,) = result.volumes
    (gap,) = volume.gaps
    assert (gap.start, gap.end) == (gap_start, gap_start + timedelta(hours=2))
    assert volume.coverage == pytest.approx(22 / 24)
    assert volume.volume_m3 == 22 * 3600
    row = session.scalars(select(DailyVolume)).one()
    assert row.volume_m3 == 22 * 3600
    assert row.quality & Quality.UNAVAILABLE  # the GAP bit of water.quality


def test_a_turnout_without_readings_gets_no_volume_row(
        session: Session, runtime: Runtime) -> None:
    _turnout(session)

    result = measured_daily_volumes(session_factory=runtime.session_factory, runtime=runtime,
                                    day=DAY)

    assert [v.volume_m3 for v in result.volumes] == [None]
    assert result.volumes[0].coverage == 0
    assert session.scalars(select(DailyVolume)).all() == []


def test_running_twice_changes_nothing(session: Session, runtime: Runtime) -> None:
    flume = _flume(session)
    _store(runtime, flume.id, {"head_m": [0.2, 0.3, 0.4], "water_level_downstream_m":
                               [0.1, 0.25, 0.39]})
    turnout = _turnout(session)
    _flow_day(runtime, turnout.id)

    first = _derive(runtime)
    measured_daily_volumes(session_factory=runtime.session_factory, runtime=runtime, day=DAY)
    before = [(r.observed_at, r.value, r.quality, r.received_at) for r in _flows(session, flume.id)]
    volumes_before = [(v.id, v.volume_m3, v.quality) for v in session.scalars(select(DailyVolume))]

    runtime.clock.advance(timedelta(minutes=10))  # type: ignore[attr-defined]
    second = _derive(runtime)
    measured_daily_volumes(session_factory=runtime.session_factory, runtime=runtime, day=DAY)

    assert first.inserted == 3
    assert (second.derived, second.inserted, second.duplicates) == (3, 0, 3)
    assert [(r.observed_at, r.value, r.quality, r.received_at)
            for r in _flows(session, flume.id)] == before
    session.expire_all()
    assert [(v.id, v.volume_m3, v.quality)
            for v in session.scalars(select(DailyVolume))] == volumes_before
