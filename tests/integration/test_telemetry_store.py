import random
import threading
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from tests.telemetry_factories import make_structure

from grassroots.irrigation.network.models import StructureKind
from grassroots.irrigation.telemetry.models import DeviceState, Reading
from grassroots.irrigation.telemetry.state import (
    Announced,
    DeviceHealth,
    Quality,
    refresh_states,
)
from grassroots.irrigation.telemetry.store import (
    COPY_MIN_ROWS,
    Contact,
    ReadingIn,
    StoreResult,
    bulk_load,
    store_readings,
)
from grassroots.irrigation.water.quality import QualityFlag
from grassroots.kernel.audit.models import AuditRow
from grassroots.kernel.clock import FixedClock
from grassroots.runtime import Runtime

T0 = datetime(2026, 3, 10, 0, 0, tzinfo=UTC)


def level(structure_id: int, minute: int, value: float | None, *, source: str = "mqtt",
          quantity: str = "water_level_m", quality: int = 0) -> ReadingIn:
    if value is None and not quality:
        quality = Quality.UNAVAILABLE
    return ReadingIn(structure_id, quantity, T0 + timedelta(minutes=minute), value, quality,
                     source)


def store(runtime: Runtime, readings: list[ReadingIn], **kwargs: object) -> StoreResult:
    return store_readings(engine_or_session_factory=runtime.session_factory,
                          readings=readings, received_at=runtime.clock.now(), **kwargs)


def stored(session: Session, structure_id: int,
           quantity: str = "water_level_m") -> list[tuple[datetime, float | None, int]]:
    session.expire_all()
    rows = session.execute(
        sa.select(Reading.observed_at, Reading.value, Reading.quality)
        .where(Reading.structure_id == structure_id, Reading.quantity == quantity)
        .order_by(Reading.observed_at)).tuples().all()
    return list(rows)


def device(session: Session, structure_id: int) -> DeviceState:
    session.expire_all()
    state = session.get(DeviceState, structure_id)
    assert state is not None
    return state


def test_a_reading_sent_twice_is_stored_once(runtime: Runtime, session: Session) -> None:
    gate = make_structure(session)
    batch = [level(gate.id, 0, 1.5), level(gate.id, 1, 1.6)]

    first = store(runtime, batch)
    again = store(runtime, batch + batch)

    assert first == StoreResult(inserted=2, duplicates=0)
    assert again == StoreResult(inserted=0, duplicates=4)
    assert stored(session, gate.id) == [(T0, 1.5, 0), (T0 + timedelta(minutes=1), 1.6, 0)]


def test_the_copy_stored_first_wins_when_a_resend_carries_another_value(
    runtime: Runtime, session: Session,
) -> None:
    gate = make_structure(session)
    store(runtime, [level(gate.id, 0, 1.5)])

    result = store(runtime, [level(gate.id, 0, 9.9)])

    assert result == StoreResult(inserted=0, duplicates=1)
    assert stored(session, gate.id) == [(T0, 1.5, 0)]


def test_a_large_batch_with_repeats_is_stored_once_per_key(
    runtime: Runtime, session: Session,
) -> None:
    gate = make_structure(session)
    count = COPY_MIN_ROWS * 3  # big enough for the COPY path on PostgreSQL
    batch = [level(gate.id, minute, minute / 100) for minute in range(count)]
    store(runtime, batch[: count // 2])

    result = store(runtime, batch + batch[:10])

    assert result == StoreResult(inserted=count - count // 2, duplicates=count // 2 + 10)
    rows = stored(session, gate.id)
    assert len(rows) == count
    assert rows[-1] == (T0 + timedelta(minutes=count - 1), (count - 1) / 100, 0)


def test_readings_arriving_out_of_order_are_all_kept_in_time_order(
    runtime: Runtime, session: Session,
) -> None:
    gate = make_structure(session)

    store(runtime, [level(gate.id, minute, float(minute)) for minute in (5, 1, 4, 2, 3)])

    assert [value for _at, value, _q in stored(session, gate.id)] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert device(session, gate.id).last_reading_at == T0 + timedelta(minutes=5)


def test_late_data_is_accepted_without_moving_the_newest_reading_back(
    runtime: Runtime, session: Session, clock: FixedClock,
) -> None:
    gate = make_structure(session)
    store(runtime, [level(gate.id, 60, 2.0)])
    clock.advance(timedelta(hours=6))

    result = store(runtime, [level(gate.id, 10, 1.0)])  # a logger flushing its buffer

    assert result.inserted == 1
    assert [value for _at, value, _q in stored(session, gate.id)] == [1.0, 2.0]
    state = device(session, gate.id)
    assert state.last_reading_at == T0 + timedelta(minutes=60)
    assert state.last_seen_at == clock.now()


def test_an_unavailable_reading_is_stored_as_null_never_as_zero(
    runtime: Runtime, session: Session,
) -> None:
    gate = make_structure(session)
    store(runtime, [level(gate.id, 0, 1.2)])

    store(runtime, [level(gate.id, 1, None)])

    rows = stored(session, gate.id)
    assert rows[1] == (T0 + timedelta(minutes=1), None, Quality.UNAVAILABLE)
    # A reading without a value is not news about the water, but the device did talk.
    assert device(session, gate.id).last_reading_at == T0
    assert device(session, gate.id).state == DeviceHealth.ONLINE


def test_the_unavailable_flag_is_the_water_accounting_gap_flag() -> None:
    assert int(Quality.UNAVAILABLE) == int(QualityFlag.GAP)
    assert int(Quality.OUT_OF_RANGE) == int(QualityFlag.OUT_OF_RANGE)
    assert int(Quality.ESTIMATED) == int(QualityFlag.ESTIMATED)


def test_a_naive_observation_time_is_refused_before_anything_is_written(
    runtime: Runtime, session: Session,
) -> None:
    gate = make_structure(session)
    naive = ReadingIn(gate.id, "water_level_m", datetime(2026, 3, 10, 8, 0), 1.0)

    with pytest.raises(ValueError, match="naive"):
        store(runtime, [level(gate.id, 0, 1.0), naive])

    assert stored(session, gate.id) == []


def test_ingestion_writes_no_audit_rows(runtime: Runtime, session: Session) -> None:
    gate = make_structure(session)

    store(runtime, [level(gate.id, minute, 1.0) for minute in range(50)])

    assert session.scalar(sa.select(sa.func.count()).select_from(AuditRow)) == 0


def test_the_device_keeps_the_voltage_observed_last_not_received_last(
    runtime: Runtime, session: Session,
) -> None:
    rtu = make_structure(session, kind=StructureKind.LEVEL_GAUGE)
    store(runtime, [level(rtu.id, 30, 12.6, quantity="voltage_v")])

    store(runtime, [level(rtu.id, 10, 11.1, quantity="voltage_v")])

    state = device(session, rtu.id)
    assert (state.voltage_v, state.voltage_at) == (12.6, T0 + timedelta(minutes=30))


def test_a_failed_poll_is_recorded_without_counting_as_a_sign_of_life(
    runtime: Runtime, session: Session, clock: FixedClock,
) -> None:
    gate = make_structure(session)
    store(runtime, [level(gate.id, 0, 1.0, source="modbus")])
    seen = clock.now()
    clock.advance(timedelta(seconds=30))

    store(runtime, [level(gate.id, 1, None, source="modbus",
                          quality=Quality.UNAVAILABLE | Quality.NO_RESPONSE)],
          contacts=[Contact(gate.id, clock.now(), ok=False, error="timeout")])

    state = device(session, gate.id)
    assert state.last_seen_at == seen
    assert (state.last_failure_at, state.last_error) == (clock.now(), "timeout")
    with Session(runtime.engine) as sweep, sweep.begin():
        changes = refresh_states(session=sweep, now=clock.now())
    assert [(c.previous, c.current) for c in changes] == [
        (DeviceHealth.ONLINE, DeviceHealth.STALE)]


def test_an_http_upload_does_not_count_as_hearing_from_the_device(
    runtime: Runtime, session: Session,
) -> None:
    gate = make_structure(session)

    store(runtime, [level(gate.id, 0, 1.0, source="http", quality=Quality.MANUAL)])

    state = device(session, gate.id)
    assert state.last_seen_at is None
    assert state.state == DeviceHealth.OFFLINE
    assert state.last_reading_at == T0


def test_a_last_will_marks_the_device_offline_until_it_talks_again(
    runtime: Runtime, session: Session, clock: FixedClock,
) -> None:
    gate = make_structure(session)
    store(runtime, [level(gate.id, 0, 1.0)])
    clock.advance(timedelta(seconds=5))

    store(runtime, [], contacts=[Contact(gate.id, clock.now(), announced=Announced.OFFLINE)])
    assert device(session, gate.id).state == DeviceHealth.OFFLINE

    clock.advance(timedelta(seconds=5))
    store(runtime, [level(gate.id, 1, 1.1)])
    assert device(session, gate.id).state == DeviceHealth.ONLINE


def test_states_age_from_online_to_stale_to_offline_and_flip_once(
    runtime: Runtime, session: Session, clock: FixedClock,
) -> None:
    gauge = make_structure(session, kind=StructureKind.LEVEL_GAUGE)  # reports every 5 min
    store(runtime, [level(gauge.id, 0, 1.0)])

    def sweep() -> list[tuple[DeviceHealth, DeviceHealth]]:
        with Session(runtime.engine) as other, other.begin():
            return [(c.previous, c.current)
                    for c in refresh_states(session=other, now=clock.now())]

    clock.advance(timedelta(minutes=10))
    assert sweep() == []
    clock.advance(timedelta(minutes=1))
    assert sweep() == [(DeviceHealth.ONLINE, DeviceHealth.STALE)]
    assert sweep() == []
    clock.advance(timedelta(minutes=20))
    assert sweep() == [(DeviceHealth.STALE, DeviceHealth.OFFLINE)]
    assert device(session, gauge.id).state_changed_at == clock.now()


def test_a_structure_can_set_its_own_reporting_interval(
    runtime: Runtime, session: Session, clock: FixedClock,
) -> None:
    slow = make_structure(session, kind=StructureKind.LEVEL_GAUGE,
                          config='{"report_interval_s": 3600}')
    store(runtime, [level(slow.id, 0, 1.0)])
    clock.advance(timedelta(hours=1, minutes=59))

    with Session(runtime.engine) as other, other.begin():
        assert refresh_states(session=other, now=clock.now()) == []


def test_bulk_load_stores_a_lazy_stream_in_chunks(runtime: Runtime, session: Session) -> None:
    gates = [make_structure(session) for _ in range(3)]
    readings = (level(gates[i % 3].id, i // 3, float(i)) for i in range(3000))

    result = bulk_load(engine_or_session_factory=runtime.session_factory, readings=readings,
                       received_at=runtime.clock.now(), chunk_rows=700)

    assert result == StoreResult(inserted=3000, duplicates=0)
    assert len(stored(session, gates[2].id)) == 1000


def test_concurrent_writers_of_overlapping_batches_store_each_reading_once(
    runtime: Runtime, session: Session,
) -> None:
    gates = [make_structure(session) for _ in range(4)]
    batch = [level(gate.id, minute, float(minute)) for gate in gates for minute in range(600)]
    results: list[StoreResult] = []
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        mine = batch[:]
        random.Random(seed).shuffle(mine)
        try:
            for start in range(0, len(mine), 800):  # COPY-sized slices in different orders
                results.append(store(runtime, mine[start:start + 800]))
        except BaseException as error:  # surfaced below; a deadlock would land here
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(seed,)) for seed in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert errors == []
    assert sum(r.inserted for r in results) == len(batch)
    assert sum(r.duplicates for r in results) == 2 * len(batch)
    with Session(runtime.engine) as fresh:
        assert fresh.scalar(sa.select(sa.func.count()).select_from(Reading)) == len(batch)
