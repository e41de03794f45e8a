"""MQTT telemetry ingestion: at-least-once from the broker, exactly once in the database.

Topics (``{root}`` defaults to ``grassroots/irrigation``; ``{device_id}`` is the
structure's ``mqtt_device_id``, 1–64 characters without ``/``, ``+`` or ``#``)::

    {root}/{device_id}/telemetry   QoS 1, not retained: readings
    {root}/{device_id}/status      QoS 1, retained: "online" or "offline" (the last will)

Telemetry payload, UTF-8 JSON, one object or an array of them (a device flushing its
buffer after an outage)::

    {"ts": "2026-05-01T08:00:00+08:00",       # ISO 8601 with an offset, or epoch ms (int)
     "seq": 123,                              # optional device counter, for gap counting
     "readings": {"water_level_m": 1.234,     # quantity name -> number, or null when the
                  "flow_m3s": 0.52,           # sensor has no valid value (stored as
                  "gate_opening_m": null}}    # unavailable, never as zero)

A timestamp without an offset is refused (it would be ambiguous), as is epoch time
outside 2000–2100 (seconds sent where milliseconds are due). Quantity names come from
``state.QUANTITIES``; an unknown name or a non-numeric value drops that reading only.
Status payload: ``online`` / ``offline`` as plain text, or ``{"status": "online"}``.
A device should connect with a last will of ``offline`` on its status topic (retained,
QoS 1) and publish a retained ``online`` once connected.

Delivery. The ingestor connects with MQTT 5, a fixed client id, ``clean_start=False``
and a session expiry, so the broker keeps its subscription and queues QoS 1 messages
while it is away. Messages are acknowledged by hand (``manual_ack``): a batch of up to
``batch_messages`` messages or ``batch_window_s`` seconds is stored in one transaction,
and every PUBACK of the batch is sent, in the order the messages came, only after the
commit. A malformed message or an unknown device is logged, counted and acknowledged
with its batch, so it never blocks the queue. When the database fails, nothing is
acknowledged: the batch is retried with backoff, and if the ingestor stops meanwhile
the broker delivers the messages again to the next session. Storage deduplicates on
(structure, quantity, observed_at), so redelivery never stores a reading twice.

Acknowledgements carry the packet id of the connection the message came on; a message
that arrived before a reconnect is stored but not acknowledged, because the broker
resends it on the new connection and its copy there is acknowledged instead.

Broker settings that matter (Mosquitto): ``max_queued_messages`` (default 1000 per
client) bounds what is kept for an absent or slow session and excess messages are
dropped, so production brokers need it raised (see docs/mqtt.md); ``persistence true``
keeps sessions and queues across a broker restart.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from grassroots.irrigation.network.models import Structure
from grassroots.irrigation.telemetry.state import (
    QUANTITIES,
    Announced,
    Quality,
    Source,
    finite_or_none,
)
from grassroots.irrigation.telemetry.store import Contact, ReadingIn, insert_readings
from grassroots.kernel.clock import Clock, get_clock

logger = logging.getLogger(__name__)

DEFAULT_TOPIC_ROOT = "grassroots/irrigation"
DEFAULT_CLIENT_ID = "grassroots-ingest"
TELEMETRY = "telemetry"
STATUS = "status"
BATCH_MESSAGES = 5000
BATCH_WINDOW_S = 0.05
# The broker sends at most this many unacknowledged messages: it bounds our memory, and
# it must exceed a batch or batches would only ever close on the time window.
RECEIVE_MAXIMUM = 20_000
SESSION_EXPIRY_S = 7 * 24 * 3600
KEEPALIVE_S = 30
RETRY_MIN_S = 0.5
RETRY_MAX_S = 30.0
RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 30
UNKNOWN_DEVICE_RECHECK_S = 60.0
LOG_EVERY_S = 60.0
PAYLOAD_PREVIEW = 200
_EPOCH_MS_MIN = 946_684_800_000  # 2000-01-01
_EPOCH_MS_MAX = 4_102_444_800_000  # 2100-01-01
_MQTT = Source.MQTT.value


class PayloadError(ValueError):
    """A message that cannot be read; ``reason`` is stable for counters and logs."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Sample:
    """One timestamped set of readings from a telemetry payload."""

    observed_at: datetime
    readings: dict[str, object]
    seq: int | None = None


def parse_timestamp(value: object) -> datetime:
    """An ISO 8601 string with an offset, or integer epoch milliseconds, as aware UTC."""
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise PayloadError("bad_ts", value[:40]) from None
        if moment.utcoffset() is None:
            raise PayloadError("naive_ts", value[:40])
        return moment.astimezone(UTC)
    if isinstance(value, int) and not isinstance(value, bool):
        if not _EPOCH_MS_MIN <= value < _EPOCH_MS_MAX:
            raise PayloadError("ts_out_of_range", str(value))
        return datetime.fromtimestamp(value / 1000, UTC)
    raise PayloadError("bad_ts", repr(value)[:40])


def _sample(item: object) -> Sample:
    if not isinstance(item, dict):
        raise PayloadError("not_an_object")
    if "ts" not in item:
        raise PayloadError("no_ts")
    readings = item.get("readings")
    if not isinstance(readings, dict):
        raise PayloadError("no_readings")
    seq = item.get("seq")
    if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int)):
        raise PayloadError("bad_seq", repr(seq)[:40])
    return Sample(parse_timestamp(item["ts"]), readings, seq)


def parse_telemetry(payload: bytes) -> list[Sample]:
    """Decode a telemetry payload (an object or an array of objects)."""
    try:
        document = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise PayloadError("not_json") from None
    items = document if isinstance(document, list) else [document]
    if not items:
        raise PayloadError("empty")
    return [_sample(item) for item in items]


def parse_status(payload: bytes) -> Announced | None:
    """``online``/``offline`` as text, or {"status": ...} as JSON; None for an empty payload
    (someone cleared the retained status, which says nothing about the device)."""
    text = payload.decode("utf-8", errors="replace").strip()
    if not text:
        return None
    if text.startswith("{"):
        try:
            text = str(json.loads(text).get("status", ""))
        except (ValueError, AttributeError):
            raise PayloadError("bad_status") from None
    try:
        return Announced(text.strip().lower())
    except ValueError:
        raise PayloadError("bad_status", text[:40]) from None


def split_topic(topic: str, root: str) -> tuple[str, str]:
    """(device_id, kind) of ``{root}/{device_id}/{kind}``."""
    prefix = root + "/"
    if not topic.startswith(prefix):
        raise PayloadError("bad_topic", topic[:100])
    parts = topic[len(prefix):].split("/")
    if len(parts) != 2 or not parts[0] or parts[1] not in (TELEMETRY, STATUS):
        raise PayloadError("bad_topic", topic[:100])
    return parts[0], parts[1]


@dataclass(slots=True)
class IngestCounters:
    """Running totals of one ingestor (the audit trail does not cover telemetry)."""

    messages: int = 0
    telemetry_messages: int = 0
    status_messages: int = 0
    readings_inserted: int = 0
    duplicates: int = 0
    malformed: int = 0
    unknown_device: int = 0
    rejected_readings: int = 0
    out_of_range: int = 0
    seq_gaps: int = 0
    batches: int = 0
    db_failures: int = 0
    acked: int = 0
    not_acked_reconnected: int = 0
    connects: int = 0
    disconnects: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class _Message(NamedTuple):
    generation: int
    mid: int
    qos: int
    topic: str
    payload: bytes


@dataclass(slots=True)
class _Parsed:
    message: _Message
    device_id: str | None = None
    kind: str = TELEMETRY
    samples: list[Sample] = field(default_factory=list)
    status: Announced | None = None
    error: PayloadError | None = None


class DeviceDirectory:
    """Maps MQTT device ids to structure ids; an unknown id is looked up again later."""

    def __init__(self, *, recheck_s: float = UNKNOWN_DEVICE_RECHECK_S) -> None:
        self.recheck_s = recheck_s
        self._known: dict[str, int] = {}
        self._unknown: dict[str, float] = {}

    def resolve(self, session: Session, device_ids: set[str]) -> dict[str, int]:
        now = time.monotonic()
        wanted = [d for d in device_ids if d not in self._known
                  and now - self._unknown.get(d, -self.recheck_s) >= self.recheck_s]
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            found = dict(session.execute(
                select(Structure.mqtt_device_id, Structure.id)
                .where(Structure.mqtt_device_id.in_(chunk))).tuples().all())
            for device_id in chunk:
                if device_id in found:
                    self._known[device_id] = found[device_id]
                    self._unknown.pop(device_id, None)
                else:
                    self._unknown[device_id] = now
        return {d: self._known[d] for d in device_ids if d in self._known}


class _Throttle:
    """At most one log line per key per period, so a misbehaving device cannot flood logs."""

    def __init__(self, period_s: float = LOG_EVERY_S) -> None:
        self.period_s = period_s
        self._last: dict[str, float] = {}

    def ready(self, key: str) -> bool:
        now = time.monotonic()
        if now - self._last.get(key, -self.period_s) < self.period_s:
            return False
        if len(self._last) > 10_000:
            self._last.clear()
        self._last[key] = now
        return True


class MqttIngestor:
    """Subscribes to device telemetry and stores it; see the module docstring for guarantees."""

    def __init__(
        self,
        *,
        session_factory: sessionmaker[Session],
        host: str = "127.0.0.1",
        port: int = 1883,
        client_id: str = DEFAULT_CLIENT_ID,
        topic_root: str = DEFAULT_TOPIC_ROOT,
        clock: Clock | None = None,
        batch_messages: int = BATCH_MESSAGES,
        batch_window_s: float = BATCH_WINDOW_S,
        receive_maximum: int = RECEIVE_MAXIMUM,
        session_expiry_s: int = SESSION_EXPIRY_S,
        keepalive_s: int = KEEPALIVE_S,
        retry_min_s: float = RETRY_MIN_S,
        retry_max_s: float = RETRY_MAX_S,
        reconnect_min_s: int = RECONNECT_MIN_S,
        reconnect_max_s: int = RECONNECT_MAX_S,
        username: str | None = None,
        password: str | None = None,
        share_group: str | None = None,
    ) -> None:
        if not 1 <= receive_maximum <= 65535:
            raise ValueError("receive_maximum must be 1..65535")
        self.session_factory = session_factory
        self.host = host
        self.port = port
        self.client_id = client_id
        self.topic_root = topic_root.rstrip("/")
        # Several ingest workers split one stream with an MQTT 5 shared subscription.
        self.share_group = share_group
        self.batch_messages = batch_messages
        self.batch_window_s = batch_window_s
        self.receive_maximum = receive_maximum
        self.session_expiry_s = session_expiry_s
        self.keepalive_s = keepalive_s
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        self.counters = IngestCounters()
        self.connected = threading.Event()
        self.directory = DeviceDirectory()
        self._clock = clock or get_clock()
        self._queue: queue.SimpleQueue[_Message] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._generation = 0
        self._ack_lock = threading.Lock()
        self._last_seq: dict[str, int] = {}
        self._throttle = _Throttle()
        self._worker: threading.Thread | None = None
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                   protocol=mqtt.MQTTv5, manual_ack=True)
        if username is not None:
            self._client.username_pw_set(username, password)
        self._client.reconnect_delay_set(reconnect_min_s, reconnect_max_s)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe

    # ------------------------------------------------------------------ lifecycle

    @property
    def topics(self) -> list[str]:
        prefix = f"$share/{self.share_group}/" if self.share_group else ""
        return [f"{prefix}{self.topic_root}/+/{TELEMETRY}", f"{prefix}{self.topic_root}/+/{STATUS}"]

    def start(self) -> None:
        """Connect (retrying in the background) and start storing."""
        if self._worker is not None:
            raise RuntimeError("ingestor already started")
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = self.session_expiry_s
        properties.ReceiveMaximum = self.receive_maximum
        self._client.connect_async(self.host, self.port, keepalive=self.keepalive_s,
                                   clean_start=False, properties=properties)
        self._worker = threading.Thread(target=self._work, name=f"mqtt-ingest-{self.client_id}",
                                        daemon=True)
        self._worker.start()
        self._client.loop_start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the batch being written, then disconnect; unacknowledged messages stay
        with the broker for the next session."""
        self._stopping.set()
        if self._worker is not None:
            self._worker.join(timeout)
        self._client.disconnect()
        self._client.loop_stop()
        self.connected.clear()
        self._stopped.set()

    def run(self) -> None:
        """Block until stop() is called from another thread or Ctrl-C."""
        self.start()
        try:
            while not self._stopped.wait(0.5):
                pass
        except KeyboardInterrupt:
            self.stop()

    def wait_connected(self, timeout: float = 10.0) -> bool:
        """Wait until connected and subscribed."""
        return self.connected.wait(timeout)

    def __enter__(self) -> MqttIngestor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ paho callbacks

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags,
                    reason: ReasonCode, properties: Properties | None) -> None:
        if reason.is_failure:
            logger.warning("MQTT connect to %s:%s refused: %s", self.host, self.port, reason)
            return
        with self._ack_lock:
            self._generation += 1
        self.counters.connects += 1
        logger.info("MQTT ingestor %s connected to %s:%s (session present: %s)",
                    self.client_id, self.host, self.port, flags.session_present)
        options = SubscribeOptions(qos=1)
        client.subscribe([(topic, options) for topic in self.topics])

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int,
                      reasons: list[ReasonCode], properties: Properties | None) -> None:
        refused = [str(reason) for reason in reasons if reason.is_failure]
        if refused:
            logger.error("MQTT ingestor %s: subscription refused (%s)", self.client_id,
                         ", ".join(refused))
            return
        self.connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any,
                       flags: mqtt.DisconnectFlags, reason: ReasonCode,
                       properties: Properties | None) -> None:
        # From here on, packet ids of earlier messages belong to a dead connection.
        with self._ack_lock:
            self._generation += 1
        self.connected.clear()
        self.counters.disconnects += 1
        if not self._stopping.is_set():
            logger.warning("MQTT ingestor %s lost the broker (%s); reconnecting",
                           self.client_id, reason)

    def _on_message(self, client: mqtt.Client, userdata: Any,
                    message: mqtt.MQTTMessage) -> None:
        self._queue.put(_Message(self._generation, message.mid, message.qos, message.topic,
                                 message.payload))

    # ------------------------------------------------------------------ worker

    def _work(self) -> None:
        while (batch := self._take_batch()) is not None:
            try:
                self._process(batch)
            except Exception:  # a bug must not silently stop ingestion
                logger.exception("MQTT ingest batch failed; messages left unacknowledged")

    def _take_batch(self) -> list[_Message] | None:
        first: _Message | None = None
        while first is None:
            if self._stopping.is_set():
                return None
            try:
                first = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
        batch = [first]
        deadline = time.monotonic() + self.batch_window_s
        while len(batch) < self.batch_messages:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except queue.Empty:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(self._queue.get(timeout=remaining))
            except queue.Empty:
                break
        return batch

    def _process(self, batch: Sequence[_Message]) -> None:
        parsed = [self._parse(message) for message in batch]
        delay = self.retry_min_s
        while True:
            try:
                self._store(parsed)
                break
            except Exception as error:
                self.counters.db_failures += 1
                logger.error("MQTT ingest: storing %d messages failed (%s); retrying in %.1fs, "
                             "nothing acknowledged", len(batch), error, delay)
                if self._stopping.wait(delay):
                    return
                delay = min(delay * 2, self.retry_max_s)
        self._ack(batch)

    def _parse(self, message: _Message) -> _Parsed:
        self.counters.messages += 1
        item = _Parsed(message)
        try:
            item.device_id, item.kind = split_topic(message.topic, self.topic_root)
            if item.kind == TELEMETRY:
                self.counters.telemetry_messages += 1
                item.samples = parse_telemetry(message.payload)
            else:
                self.counters.status_messages += 1
                item.status = parse_status(message.payload)
        except PayloadError as error:
            item.error = error
            self.counters.malformed += 1
            if self._throttle.ready(f"malformed:{item.device_id}"):
                logger.warning("MQTT malformed message on %s (%s), acknowledged and dropped: %r",
                               message.topic, error, message.payload[:PAYLOAD_PREVIEW])
        return item

    def _store(self, parsed: Sequence[_Parsed]) -> None:
        now = self._clock.now()
        with self.session_factory() as session, session.begin():
            wanted = {p.device_id for p in parsed if p.error is None and p.device_id}
            ids = self.directory.resolve(session, wanted)
            readings: list[ReadingIn] = []
            contacts: list[Contact] = []
            tally = _Tally()
            for item in parsed:
                if item.error is not None or item.device_id is None:
                    continue
                structure_id = ids.get(item.device_id)
                if structure_id is None:
                    tally.unknown.append(item.device_id)
                    continue
                if item.kind == STATUS:
                    if item.status is None:
                        continue
                    contacts.append(Contact(structure_id, now, announced=item.status,
                                            source=_MQTT))
                    continue
                for sample in item.samples:
                    tally.track_seq(self._last_seq, item.device_id, sample.seq)
                    readings.extend(_readings(structure_id, item.device_id, sample, tally))
            result = insert_readings(session, readings, received_at=now, contacts=contacts)
        # Committed: only now do the counters move.
        counters = self.counters
        counters.batches += 1
        counters.readings_inserted += result.inserted
        counters.duplicates += result.duplicates
        counters.unknown_device += len(tally.unknown)
        counters.rejected_readings += tally.rejected
        counters.out_of_range += tally.out_of_range
        counters.seq_gaps += tally.gaps
        for device_id in set(tally.unknown):
            if self._throttle.ready(f"unknown:{device_id}"):
                logger.warning("MQTT message from unknown device %r acknowledged and dropped "
                               "(no structure has this mqtt_device_id)", device_id)
        for device_id, name, why in tally.rejected_log:
            if self._throttle.ready(f"reading:{device_id}:{name}"):
                logger.warning("MQTT %s: reading %r dropped (%s)", device_id, name, why)

    def _ack(self, batch: Sequence[_Message]) -> None:
        # In arrival order, as MQTT asks; the lock keeps a reconnect from slipping between
        # the generation check and the PUBACK.
        with self._ack_lock:
            for message in batch:
                if message.qos == 0:
                    continue
                if message.generation != self._generation:
                    self.counters.not_acked_reconnected += 1
                    continue
                self._client.ack(message.mid, message.qos)
                self.counters.acked += 1


@dataclass(slots=True)
class _Tally:
    unknown: list[str] = field(default_factory=list)
    rejected: int = 0
    out_of_range: int = 0
    gaps: int = 0
    rejected_log: list[tuple[str, str, str]] = field(default_factory=list)

    def track_seq(self, last_seq: dict[str, int], device_id: str, seq: int | None) -> None:
        if seq is None:
            return
        previous = last_seq.get(device_id)
        if previous is not None and seq > previous + 1:
            self.gaps += seq - previous - 1
        if previous is None or seq > previous:
            last_seq[device_id] = seq


def _readings(structure_id: int, device_id: str, sample: Sample,
              tally: _Tally) -> Iterator[ReadingIn]:
    for name, raw in sample.readings.items():
        spec = QUANTITIES.get(name)
        if spec is None:
            tally.rejected += 1
            tally.rejected_log.append((device_id, name, "unknown quantity"))
            continue
        try:
            value = finite_or_none(raw)
        except ValueError as error:
            tally.rejected += 1
            tally.rejected_log.append((device_id, name, str(error)))
            continue
        quality = spec.quality_of(value)
        if quality & Quality.OUT_OF_RANGE:
            tally.out_of_range += 1
        yield ReadingIn(structure_id, name, sample.observed_at, value, int(quality), _MQTT)
