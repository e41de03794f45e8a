"""Telemetry ingest throughput: MQTT end to end into PostgreSQL and SQLite, bulk COPY, SL 651.

Run: .venv/bin/python bench/ingest.py [--readings 200000] [--bulk 1000000]

Each MQTT row: a publisher process sends ``--readings`` readings in QoS 1 messages of 10 to
50 readings each (random sizes, fixed seed) to a private Mosquitto started on an
ephemeral port; an ingestor process (MqttIngestor, manual acks after commit) stores them.
The time runs from the first publish to the commit that holds the last reading, and the
row count is checked afterwards. The bench creates and drops its own PostgreSQL database
(gr_bench_<pid>) and SQLite file, and stops its broker and processes, whatever happens.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import multiprocessing as mp
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from grassroots.db import Base, make_engine, make_session_factory
from grassroots.irrigation.network.models import Structure, StructureKind
from grassroots.irrigation.telemetry import models as telemetry_models  # noqa: F401
from grassroots.irrigation.telemetry.store import ReadingIn, bulk_load
from grassroots.models_registry import import_all_models

PG_ADMIN_URL = os.environ.get("GRASSROOTS_BENCH_PG_ADMIN_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/test")
DEVICES = 500
QUANTITIES = ("water_level_m", "water_level_upstream_m", "water_level_downstream_m",
              "flow_m3s", "gate_opening_m", "voltage_v", "head_m", "velocity_ms",
              "rain_mm", "air_temperature_c", "humidity_pct", "wind_speed_ms",
              *(f"soil_moisture_pct_{d}cm" for d in (10, 20, 30, 40, 50, 60, 80, 100)),
              *(f"intake_flow_{n}_m3s" for n in range(1, 9)),
              *(f"intake_water_level_{n}_m" for n in range(1, 9)),
              *(f"water_level_relative_{n}_m" for n in range(1, 9)))
STAGE_TIMEOUT_S = 300.0
T0 = datetime(2026, 5, 1, tzinfo=UTC)
ROOT = "bench/irrigation"


# --------------------------------------------------------------------------- databases


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    name = f"gr_bench_{os.getpid()}"
    admin = make_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def prepare(url: str) -> list[tuple[int, str]]:
    """Create the schema and DEVICES structures; return (structure id, MQTT device id)."""
    import_all_models()
    engine = make_engine(url)
    Base.metadata.create_all(engine)
    with make_session_factory(engine)() as session, session.begin():
        session.add_all(Structure(code=f"B{n:04d}", name=f"bench {n}",
                                  kind=StructureKind.INTEGRATED_GATE, lon=106.0, lat=38.0,
                                  mqtt_device_id=f"bench-{n:04d}") for n in range(DEVICES))
    with engine.connect() as connection:
        rows = connection.execute(sa.select(Structure.id, Structure.mqtt_device_id)
                                  .order_by(Structure.id)).all()
    engine.dispose()
    return [(int(row[0]), str(row[1])) for row in rows]


def count_readings(url: str) -> int:
    engine = make_engine(url)
    with engine.connect() as connection:
        total = connection.execute(sa.text("SELECT count(*) FROM irr_reading")).scalar_one()
    engine.dispose()
    return int(total)


# --------------------------------------------------------------------------- broker


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def private_broker(directory: Path) -> Iterator[int]:
    port = free_port()
    config = directory / "mosquitto.conf"
    # Settings docs/mqtt.md recommends for ingestion: a deep per-client queue, persistence.
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                      f"persistence_location {directory}/\nmax_queued_messages 1000000\n"
                      f"user {getpass.getuser()}\nlog_dest none\n")
    process = subprocess.Popen(["mosquitto", "-c", str(config)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("mosquitto did not start")
            time.sleep(0.05)
        yield port
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


# --------------------------------------------------------------------------- processes


def messages(devices: list[str], total: int, seed: int = 651) -> Iterator[tuple[str, bytes, int]]:
    """(topic, payload, readings) with 10-50 readings per message, ``total`` readings in all."""
    rng = random.Random(seed)
    sent = 0
    minute = 0
    while sent < total:
        for device in devices:
            if sent >= total:
                break
            size = min(rng.randint(10, 50), total - sent, len(QUANTITIES))
            ts = int((T0 + timedelta(minutes=minute)).timestamp() * 1000)
            payload = {"ts": ts, "seq": minute,
                       "readings": {q: round(rng.uniform(0, 10), 3) for q in QUANTITIES[:size]}}
            sent += size
            yield f"{ROOT}/{device}/telemetry", json.dumps(payload).encode(), size
        minute += 1


def publisher_main(port: int, devices: list[str], total: int, go: Any, done: Any) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    batch = list(messages(devices, total))
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{os.getpid()}",
                         protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    go.wait()
    started = time.time()
    infos = [client.publish(topic, payload, qos=1) for topic, payload, _ in batch]
    for info in infos:
        info.wait_for_publish(STAGE_TIMEOUT_S)
    done.put({"messages": len(batch), "publish_started": started,
              "publish_s": time.time() - started})
    client.disconnect()
    client.loop_stop()


def ingestor_main(url: str, port: int, total: int, ready: Any, done: Any) -> None:
    from grassroots.irrigation.telemetry.mqtt_ingest import MqttIngestor

    engine = make_engine(url)
    ingestor = MqttIngestor(session_factory=make_session_factory(engine), port=port,
                            client_id=f"bench-ingest-{os.getpid()}", topic_root=ROOT)
    ingestor.start()
    ingestor.wait_connected(30)
    ready.set()
    deadline = time.monotonic() + STAGE_TIMEOUT_S
    while (ingestor.counters.readings_inserted < total and time.monotonic() < deadline):
        time.sleep(0.002)
    finished = time.time()
    ingestor.stop()  # finishes and acknowledges the batch in hand
    counters = ingestor.counters.as_dict()
    engine.dispose()
    done.put({"finished": finished, **counters})


def mqtt_stage(url: str, port: int, devices: list[tuple[int, str]], total: int) -> dict[str, Any]:
    context = mp.get_context("spawn")
    ready, go = context.Event(), context.Event()
    results: Any = context.Queue()
    published: Any = context.Queue()
    ingest = context.Process(target=ingestor_main, args=(url, port, total, ready, results))
    publish = context.Process(target=publisher_main,
                              args=(port, [d for _, d in devices], total, go, published))
    ingest.start()
    publish.start()
    try:
        if not ready.wait(60):
            raise RuntimeError("ingestor did not connect")
        time.sleep(0.5)  # let the publisher build its messages before the clock starts
        go.set()
        sent = published.get(timeout=STAGE_TIMEOUT_S)
        stored = results.get(timeout=STAGE_TIMEOUT_S)
    finally:
        for process in (publish, ingest):
            process.join(30)
            if process.is_alive():
                process.kill()
    seconds = stored["finished"] - sent["publish_started"]
    return {"seconds": seconds, "messages": sent["messages"], "publish_s": sent["publish_s"],
            **stored}


# --------------------------------------------------------------------------- other rows


def bulk_stage(url: str, devices: list[tuple[int, str]], total: int) -> dict[str, Any]:
    ids = [sid for sid, _ in devices]
    per_device = -(-total // (len(ids) * 4))
    readings = [ReadingIn(sid, quantity, T0 + timedelta(days=30, minutes=m), m / 100.0, 0,
                          "sim")
                for sid in ids for quantity in QUANTITIES[:4] for m in range(per_device)]
    readings = readings[:total]
    engine = make_engine(url)
    started = time.perf_counter()
    result = bulk_load(engine_or_session_factory=engine, readings=readings)
    seconds = time.perf_counter() - started
    again_started = time.perf_counter()
    again = bulk_load(engine_or_session_factory=engine, readings=readings[: total // 10])
    again_s = time.perf_counter() - again_started
    engine.dispose()
    return {"seconds": seconds, "inserted": result.inserted, "redo_seconds": again_s,
            "redo_duplicates": again.duplicates}


def sl651_stage(seconds: float) -> list[tuple[str, float]]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from grassroots.irrigation.telemetry.sl651 import decode_frame, parse_report
    from grassroots.irrigation.telemetry.sl651_ingest import report_readings
    from sl651_decode import rate, timed_report  # the codec's own bench

    raw = timed_report()

    def decode() -> None:
        parse_report(decode_frame(raw))

    def to_readings() -> None:
        report_readings(parse_report(decode_frame(raw)), 1)

    return [("SL 651 timed report: decode + parse", rate(decode, seconds)),
            ("SL 651 timed report: decode + parse + map to readings",
             rate(to_readings, seconds))]


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readings", type=int, default=200_000)
    parser.add_argument("--bulk", type=int, default=1_000_000)
    parser.add_argument("--skip-sqlite", action="store_true")
    args = parser.parse_args()
    if shutil.which("mosquitto") is None:
        print("mosquitto is not installed", file=sys.stderr)
        return 1
    rows: list[tuple[str, int, float, float, str]] = []
    notes: list[str] = []
    workdir = Path(tempfile.mkdtemp(prefix="gr-bench-"))
    try:
        with postgres_database() as pg_url:
            pg_devices = prepare(pg_url)
            with private_broker(workdir) as port:
                stage = mqtt_stage(pg_url, port, pg_devices, args.readings)
            stored = count_readings(pg_url)
            rows.append(("MQTT QoS1 -> PostgreSQL", args.readings, stage["seconds"],
                         args.readings / stage["seconds"], ">= 20,000"))
            notes.append(f"PostgreSQL MQTT: {stage['messages']:,} messages, "
                         f"{stage['batches']:,} batches, rows in table {stored:,}, "
                         f"duplicates {stage['duplicates']}, acked {stage['acked']:,}, "
                         f"publisher done after {stage['publish_s']:.2f}s")
            bulk = bulk_stage(pg_url, pg_devices, args.bulk)
            rows.append(("bulk_load (COPY) -> PostgreSQL", bulk["inserted"], bulk["seconds"],
                         bulk["inserted"] / bulk["seconds"], ">= 100,000"))
            notes.append(f"bulk again with {args.bulk // 10:,} known readings: "
                         f"{bulk['redo_duplicates']:,} duplicates in {bulk['redo_seconds']:.2f}s")
        if not args.skip_sqlite:
            sqlite_url = f"sqlite:///{workdir / 'bench.db'}"
            sqlite_devices = prepare(sqlite_url)
            with private_broker(workdir) as port:
                stage = mqtt_stage(sqlite_url, port, sqlite_devices, args.readings)
            stored = count_readings(sqlite_url)
            rows.append(("MQTT QoS1 -> SQLite", args.readings, stage["seconds"],
                         args.readings / stage["seconds"], "-"))
            notes.append(f"SQLite MQTT: {stage['messages']:,} messages, "
                         f"{stage['batches']:,} batches, rows in table {stored:,}")
        for name, per_second in sl651_stage(2.0):
            rows.append((name, 0, 0.0, per_second, "frames/s, one core"))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nPython {platform.python_version()}, {os.cpu_count()} CPUs, "
          f"{platform.machine()}; readings of 10-50 per MQTT message\n")
    print(f"{'path':<55} {'readings':>10} {'seconds':>8} {'per second':>12}  target")
    for name, count, seconds, per_second, target in rows:
        shown_count = f"{count:,}" if count else "-"
        shown_s = f"{seconds:.2f}" if seconds else "-"
        print(f"{name:<55} {shown_count:>10} {shown_s:>8} {per_second:>12,.0f}  {target}")
    print()
    for note in notes:
        print("  " + note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
