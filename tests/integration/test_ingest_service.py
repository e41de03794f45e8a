"""The ingest worker takes MQTT, SL 651 and Modbus at once into one database, then stops."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from tests.telemetry_factories import (
    ModbusDevice,
    Publisher,
    broker_answers,
    make_structure,
    wait_until,
)

from grassroots.irrigation.network.models import StructureKind
from grassroots.irrigation.telemetry.models import Reading
from grassroots.irrigation.telemetry.service import IngestOptions, IngestService
from grassroots.irrigation.telemetry.sl651 import (
    FunctionCode,
    StationClass,
    encode_report,
    reading,
)
from grassroots.runtime import Runtime

pytestmark = pytest.mark.skipif(not broker_answers(), reason="no MQTT broker at 1883")
OBSERVED = datetime(2026, 3, 10, 1, 0, tzinfo=UTC)


def sources(session: Session) -> dict[str, int]:
    with Session(session.get_bind()) as fresh:
        return dict(fresh.execute(sa.select(Reading.source, sa.func.count())
                                  .group_by(Reading.source)).tuples().all())


def test_one_worker_ingests_from_all_three_protocols(runtime: Runtime, session: Session) -> None:
    device = ModbusDevice([1500, 0], [0])
    device.start()
    root = f"test/{uuid.uuid4().hex}/irrigation"
    make_structure(session, kind=StructureKind.SMART_HOIST, modbus_host="127.0.0.1",
                   modbus_port=device.port, modbus_unit=ModbusDevice.UNIT,
                   config='{"modbus_registers": [{"quantity": "gate_opening_m", '
                          '"address": 0, "scale": 0.001}]}')
    mqtt_gate = make_structure(session, mqtt_device_id=f"dev-{uuid.uuid4().hex[:8]}")
    make_structure(session, kind=StructureKind.LEVEL_GAUGE, sl651_address="0012345678")
    options = IngestOptions(mqtt_client_id=f"ingest-{uuid.uuid4().hex}", mqtt_topic_root=root,
                            mqtt_session_expiry_s=60, sl651_port=0,
                            modbus_interval=timedelta(seconds=0.2),
                            sweep_every=timedelta(seconds=0.2))
    frame = encode_report(station="0012345678", function=FunctionCode.TIMED, serial=1,
                          sent_at=OBSERVED, station_class=StationClass.RIVER,
                          observed_at=OBSERVED, values=[reading(0x39, Decimal("1.5"))])

    async def scenario() -> None:
        service = IngestService(runtime, options)
        await service.start()
        try:
            assert service.mqtt is not None and service.sl651 is not None
            await asyncio.to_thread(service.mqtt.wait_connected, 10)
            reader, writer = await asyncio.open_connection("127.0.0.1", service.sl651.port)
            writer.write(frame)
            await writer.drain()
            assert await asyncio.wait_for(reader.read(4096), 5)  # confirmed
            writer.close()
            publisher = Publisher()
            publisher.publish(f"{root}/{mqtt_gate.mqtt_device_id}/telemetry",
                              {"ts": OBSERVED.isoformat(), "readings": {"flow_m3s": 0.4}})
            publisher.close()
            await asyncio.to_thread(wait_until, lambda: set(sources(session)) == {
                "mqtt", "sl651", "modbus"}, message="readings from every protocol")
        finally:
            await service.stop()

    try:
        asyncio.run(scenario())
    finally:
        device.close()
    counts = sources(session)
    assert counts["mqtt"] == 1 and counts["sl651"] == 1
    assert counts["modbus"] == 1  # every poll at the frozen test clock is one reading
