"""End to end through a real Mosquitto: the machine's broker on 1883, or one of our own."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker
from tests.telemetry_factories import (
    PrivateBroker,
    Publisher,
    broker_answers,
    make_structure,
    wait_until,
)

from grassroots.db import make_engine, make_session_factory
from grassroots.irrigation.network.models import Structure
from grassroots.irrigation.telemetry.models import DeviceState, Reading
from grassroots.irrigation.telemetry.mqtt_ingest import MqttIngestor
from grassroots.irrigation.telemetry.state import DeviceHealth, Quality
from grassroots.runtime import Runtime

T0 = datetime(2026, 5, 1, 0, 0, tzinfo=UTC)
QUANTITIES = ("water_level_m", "flow_m3s", "gate_opening_m", "voltage_v")

pytestmark = pytest.mark.skipif(not broker_answers(),
                                reason="no MQTT broker at 127.0.0.1:1883")


@pytest.fixture
def root() -> str:
    return f"test/{uuid.uuid4().hex}/irrigation"


IngestorFactory = Callable[..., MqttIngestor]


@pytest.fixture
def ingestors(runtime: Runtime, root: str) -> Iterator[IngestorFactory]:
    """Builds started ingestors on the test's topic root; all are stopped at the end."""
    started: list[MqttIngestor] = []

    def build(*, client_id: str, port: int = 1883,
              session_factory: sessionmaker[Session] | None = None,
              share_group: str | None = None) -> MqttIngestor:
        ingestor = MqttIngestor(
            session_factory=session_factory or runtime.session_factory, port=port,
            client_id=client_id, topic_root=root, clock=runtime.clock, session_expiry_s=300,
            batch_window_s=0.02, retry_min_s=0.05, retry_max_s=0.2, reconnect_min_s=1,
            reconnect_max_s=2, share_group=share_group)
        ingestor.start()
        started.append(ingestor)
        assert ingestor.wait_connected(10), "ingestor did not connect"
        return ingestor

    yield build
    for ingestor in started:
        ingestor.stop()


@pytest.fixture
def publisher() -> Iterator[Publisher]:
    device = Publisher()
    yield device
    device.close()


def device_structure(session: Session) -> Structure:
    return make_structure(session, mqtt_device_id=f"dev-{uuid.uuid4().hex[:12]}")


def telemetry(seq: int, *, per_message: int = len(QUANTITIES)) -> dict[str, object]:
    return {"ts": (T0 + timedelta(minutes=seq)).isoformat(), "seq": seq,
            "readings": {q: seq + i / 10 for i, q in enumerate(QUANTITIES[:per_message])}}


def topic(root: str, structure: Structure, kind: str = "telemetry") -> str:
    return f"{root}/{structure.mqtt_device_id}/{kind}"


def count(session: Session, structure: Structure | None = None) -> int:
    query = sa.select(sa.func.count()).select_from(Reading)
    if structure is not None:
        query = query.where(Reading.structure_id == structure.id)
    with Session(session.get_bind()) as fresh:
        return int(fresh.scalar(query) or 0)


def keys(session: Session, structure: Structure) -> list[tuple[str, datetime]]:
    with Session(session.get_bind()) as fresh:
        return list(fresh.execute(
            sa.select(Reading.quantity, Reading.observed_at)
            .where(Reading.structure_id == structure.id)
            .order_by(Reading.observed_at, Reading.quantity)).tuples())


def expected_keys(messages: range) -> list[tuple[str, datetime]]:
    return sorted(((q, T0 + timedelta(minutes=seq)) for seq in messages for q in QUANTITIES),
                  key=lambda key: (key[1], key[0]))


def device_state(session: Session, structure: Structure) -> DeviceState | None:
    with Session(session.get_bind()) as fresh:
        return fresh.get(DeviceState, structure.id)


def announced(session: Session, structure: Structure) -> tuple[str | None, str | None]:
    state = device_state(session, structure)
    return (None, None) if state is None else (state.announced, state.state)


def test_readings_published_at_qos1_are_each_stored_once(
    session: Session, ingestors: IngestorFactory, publisher: Publisher, root: str,
) -> None:
    gates = [device_structure(session) for _ in range(3)]
    ingestor = ingestors(client_id=f"ingest-{uuid.uuid4().hex}")

    for seq in range(100):
        for gate in gates:
            publisher.publish(topic(root, gate), telemetry(seq))

    wait_until(lambda: ingestor.counters.acked == 300, message="300 acknowledgements")
    assert count(session) == 300 * len(QUANTITIES)
    assert keys(session, gates[1]) == expected_keys(range(100))
    assert ingestor.counters.duplicates == 0
    state = device_state(session, gates[0])
    assert state is not None and state.state == DeviceHealth.ONLINE
    assert state.voltage_v == pytest.approx(99.3)


def test_the_same_messages_published_twice_are_stored_once(
    session: Session, ingestors: IngestorFactory, publisher: Publisher, root: str,
) -> None:
    gate = device_structure(session)
    ingestor = ingestors(client_id=f"ingest-{uuid.uuid4().hex}")

    for _round in range(2):
        for seq in range(50):
            publisher.publish(topic(root, gate), telemetry(seq))

    wait_until(lambda: ingestor.counters.acked == 100, message="100 acknowledgements")
    assert keys(session, gate) == expected_keys(range(50))
    assert ingestor.counters.readings_inserted == 50 * len(QUANTITIES)
    assert ingestor.counters.duplicates == 50 * len(QUANTITIES)


def test_a_new_ingestor_with_the_same_client_id_takes_over_without_loss_or_duplicates(
    session: Session, ingestors: IngestorFactory, publisher: Publisher, root: str,
) -> None:
    gate = device_structure(session)
    client_id = f"ingest-{uuid.uuid4().hex}"
    first = ingestors(client_id=client_id)
    total = 400
    halfway = threading.Event()

    def stream() -> None:
        for seq in range(total):
            publisher.publish(topic(root, gate), telemetry(seq))
            if seq == total // 4:
                halfway.set()

    sender = threading.Thread(target=stream)
    sender.start()
    assert halfway.wait(20)
    first.stop()  # mid-stream: later messages queue in the broker for this client id
    acked_by_first = first.counters.acked
    stored_by_first = count(session, gate)
    second = ingestors(client_id=client_id)
    sender.join(30)

    wait_until(lambda: count(session, gate) == total * len(QUANTITIES), timeout=30,
               message="every reading stored")
    assert 0 < acked_by_first < total
    assert stored_by_first >= acked_by_first * len(QUANTITIES)
    assert keys(session, gate) == expected_keys(range(total))
    # Whatever the first one stored but could not acknowledge came again and was absorbed.
    assert second.counters.readings_inserted == total * len(QUANTITIES) - stored_by_first
    assert acked_by_first + second.counters.acked >= total


def test_two_workers_on_a_shared_subscription_split_the_stream_and_store_it_once(
    session: Session, ingestors: IngestorFactory, publisher: Publisher, root: str,
) -> None:
    gate = device_structure(session)
    group = f"g{uuid.uuid4().hex[:8]}"
    workers = [ingestors(client_id=f"ingest-{uuid.uuid4().hex}", share_group=group)
               for _ in range(2)]

    for seq in range(200):
        publisher.publish(topic(root, gate), telemetry(seq))

    wait_until(lambda: sum(w.counters.acked for w in workers) == 200, message="200 acks")
    assert all(worker.counters.acked > 0 for worker in workers)
    assert keys(session, gate) == expected_keys(range(200))


def test_a_database_failure_acknowledges_nothing_so_the_broker_delivers_again(
    session: Session, ingestors: IngestorFactory, publisher: Publisher, root: str,
    tmp_path: Path,
) -> None:
    gate = device_structure(session)
    client_id = f"ingest-{uuid.uuid4().hex}"
    broken = make_session_factory(make_engine(f"sqlite:///{tmp_path}/missing/dir/x.db"))
    failing = ingestors(client_id=client_id, session_factory=broken)

    for seq in range(20):
        publisher.publish(topic(root, gate), telemetry(seq))
    wait_until(lambda: failing.counters.db_failures >= 2, message="failed writes")
    failing.stop()

    assert failing.counters.acked == 0
    assert count(session, gate) == 0
    healthy = ingestors(client_id=client_id)
    wait_until(lambda: count(session, gate) == 20 * len(QUANTITIES),
               message="redelivered readings stored")
    # The PUBACKs go out just after the commit, so wait for them rather than race them.
    wait_until(lambda: healthy.counters.acked >= 20, message="redelivered messages acked")
    assert healthy.counters.acked == 20


def test_malformed_payloads_and_unknown_devices_are_counted_and_acknowledged(
    session: Session, ingestors: IngestorFactory, publisher: Publisher, root: str,
) -> None:
    gate = device_structure(session)
    ingestor = ingestors(client_id=f"ingest-{uuid.uuid4().hex}")

    publisher.publish(topic(root, gate), b"{not json")
    publisher.publish(topic(root, gate), {"ts": "2026-05-01T08:00:00", "readings": {}})
    publisher.publish(f"{root}/no-such-device/telemetry", telemetry(1))
    publisher.publish(topic(root, gate), {
        "ts": 1777593600000, "seq": 7,
        "readings": {"water_level_m": 1.25, "made_up_m": 3, "flow_m3s": "fast",
                     "gate_opening_m": None, "voltage_v": 400}})

    wait_until(lambda: ingestor.counters.acked == 4, message="four acknowledgements")
    counters = ingestor.counters
    assert (counters.malformed, counters.unknown_device, counters.rejected_readings) == (2, 1, 2)
    assert counters.out_of_range == 1
    with Session(session.get_bind()) as fresh:
        rows = fresh.execute(sa.select(Reading.quantity, Reading.value, Reading.quality)
                             .order_by(Reading.quantity)).tuples().all()
    assert rows == [("gate_opening_m", None, Quality.UNAVAILABLE),
                    ("voltage_v", 400.0, Quality.OUT_OF_RANGE),
                    ("water_level_m", 1.25, Quality.OK)]
    assert count(session) == 3


def test_a_device_last_will_marks_it_offline(
    session: Session, ingestors: IngestorFactory, root: str,
) -> None:
    gate = device_structure(session)
    status = topic(root, gate, "status")
    ingestors(client_id=f"ingest-{uuid.uuid4().hex}")
    device = Publisher(will=(status, b"offline"))
    try:
        device.publish(status, "online", retain=True)
        wait_until(lambda: announced(session, gate) == ("online", DeviceHealth.ONLINE),
                   message="device online")

        device.close(with_will=True)

        wait_until(lambda: announced(session, gate) == ("offline", DeviceHealth.OFFLINE),
                   message="last will stored")
    finally:
        cleaner = Publisher()
        cleaner.publish(status, b"", retain=True)  # leave no retained message behind
        cleaner.close()


def test_messages_queued_in_the_broker_survive_a_broker_restart(
    session: Session, ingestors: IngestorFactory, tmp_path: Path, root: str,
) -> None:
    broker = PrivateBroker(tmp_path / "broker")
    broker.start()
    try:
        gate = device_structure(session)
        client_id = f"ingest-{uuid.uuid4().hex}"
        first = ingestors(client_id=client_id, port=broker.port)
        first.stop()  # the session (and its subscription) stays with the broker

        device = Publisher(broker.port)
        for seq in range(30):
            device.publish(topic(root, gate), telemetry(seq))
        device.close()
        broker.restart()  # queued QoS 1 messages go to disk and come back

        running = ingestors(client_id=client_id, port=broker.port)
        wait_until(lambda: count(session, gate) == 30 * len(QUANTITIES),
                   message="queued readings after the restart")

        broker.restart()  # while connected: the ingestor reconnects with backoff
        wait_until(lambda: running.counters.connects >= 2, timeout=30, message="reconnect")
        device = Publisher(broker.port)
        for seq in range(30, 40):
            device.publish(topic(root, gate), telemetry(seq))
        device.close()
        wait_until(lambda: count(session, gate) == 40 * len(QUANTITIES),
                   message="readings after the reconnect")
        assert keys(session, gate) == expected_keys(range(40))
    finally:
        broker.stop()
