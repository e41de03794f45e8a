"""The ingest worker: MQTT ingestor, SL 651 centre, Modbus pollers and the state sweeper.

``cli_ingest`` runs them until Ctrl-C or SIGTERM. Several workers may run side by side
against one PostgreSQL (they coordinate only through it): give each its own MQTT client
id, or use a shared subscription on the broker, and only one SL 651 listener per port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from grassroots.irrigation.network.models import Structure
from grassroots.irrigation.telemetry.modbus_poll import ModbusPoller, poller_for, store_snapshot
from grassroots.irrigation.telemetry.mqtt_ingest import (
    DEFAULT_CLIENT_ID,
    DEFAULT_TOPIC_ROOT,
    SESSION_EXPIRY_S,
    MqttIngestor,
)
from grassroots.irrigation.telemetry.sl651_ingest import Sl651Sink
from grassroots.irrigation.telemetry.sl651_server import DEFAULT_HOST, DEFAULT_PORT, Sl651Server
from grassroots.irrigation.telemetry.state import refresh_states, report_interval
from grassroots.runtime import Runtime
from grassroots.settings import Settings

logger = logging.getLogger(__name__)

SWEEP_EVERY = timedelta(seconds=30)
COUNTERS_EVERY = timedelta(minutes=5)
MODBUS_THREADS = 16


@dataclass(frozen=True, slots=True)
class IngestOptions:
    mqtt_host: str | None = "127.0.0.1"  # None: no MQTT ingestor
    mqtt_port: int = 1883
    mqtt_client_id: str = DEFAULT_CLIENT_ID
    mqtt_topic_root: str = DEFAULT_TOPIC_ROOT
    mqtt_session_expiry_s: int = SESSION_EXPIRY_S
    sl651_host: str = DEFAULT_HOST
    sl651_port: int | None = DEFAULT_PORT  # None: no SL 651 centre; 0: any free port
    modbus: bool = True
    modbus_interval: timedelta | None = None  # None: each structure's reporting interval
    sweep_every: timedelta = SWEEP_EVERY


@dataclass
class IngestService:
    """Starts every intake in one process; ``stop()`` ends them in order."""

    runtime: Runtime
    options: IngestOptions = field(default_factory=IngestOptions)

    def __post_init__(self) -> None:
        self.mqtt: MqttIngestor | None = None
        self.sl651: Sl651Server | None = None
        self.sink: Sl651Sink | None = None
        self.pollers: dict[int, ModbusPoller] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._executor = ThreadPoolExecutor(MODBUS_THREADS, thread_name_prefix="modbus")

    async def start(self) -> None:
        options, runtime = self.options, self.runtime
        if options.sl651_port is not None:
            self.sink = Sl651Sink(session_factory=runtime.session_factory, clock=runtime.clock)
            self.sl651 = Sl651Server(self.sink, host=options.sl651_host,
                                     port=options.sl651_port, clock=runtime.clock)
            await self.sl651.start()
            self._spawn(self.sl651.serve_forever())
        if options.mqtt_host is not None:
            self.mqtt = MqttIngestor(session_factory=runtime.session_factory,
                                     host=options.mqtt_host, port=options.mqtt_port,
                                     client_id=options.mqtt_client_id,
                                     topic_root=options.mqtt_topic_root, clock=runtime.clock,
                                     session_expiry_s=options.mqtt_session_expiry_s)
            self.mqtt.start()
        if options.modbus:
            for structure in await asyncio.to_thread(self._modbus_structures):
                poller = poller_for(structure, clock=runtime.clock)
                if poller is None:
                    continue
                self.pollers[structure.id] = poller
                every = options.modbus_interval or report_interval(structure.kind,
                                                                   structure.config)
                self._spawn(self._poll_forever(structure.id, poller, every))
        self._spawn(self._sweep_forever())
        self._spawn(self._log_forever())
        logger.info("ingest running: mqtt %s, sl651 %s, %d modbus pollers",
                    f"{options.mqtt_host}:{options.mqtt_port}" if self.mqtt else "off",
                    f"{options.sl651_host}:{self.sl651.port}" if self.sl651 else "off",
                    len(self.pollers))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.sl651 is not None:
            await self.sl651.close()
        if self.mqtt is not None:
            await asyncio.to_thread(self.mqtt.stop)
        for poller in self.pollers.values():
            poller.close()
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._log_counters()

    def _spawn(self, work: Any) -> None:
        self._tasks.append(asyncio.create_task(work))

    def _modbus_structures(self) -> Sequence[Structure]:
        with self.runtime.session_factory() as session:
            return session.scalars(select(Structure).where(Structure.modbus_host.is_not(None))
                                   .order_by(Structure.id)).all()

    async def _poll_forever(self, structure_id: int, poller: ModbusPoller,
                            every: timedelta) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                await loop.run_in_executor(self._executor, self._poll_once, structure_id,
                                           poller)
            except asyncio.CancelledError:
                raise
            except Exception:  # the next poll tries again; one bad round must not end it
                logger.exception("Modbus poll of structure %s failed", structure_id)
            await asyncio.sleep(every.total_seconds())

    def _poll_once(self, structure_id: int, poller: ModbusPoller) -> None:
        store_snapshot(session_factory=self.runtime.session_factory, structure_id=structure_id,
                       snapshot=poller.poll(), now=self.runtime.clock.now())

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.options.sweep_every.total_seconds())
            try:
                changes = await asyncio.to_thread(self._sweep)
            except Exception:
                logger.exception("device state sweep failed")
                continue
            for change in changes:
                logger.info("device of structure %s: %s -> %s", change.structure_id,
                            change.previous, change.current)

    def _sweep(self) -> list[Any]:
        with self.runtime.session_factory() as session, session.begin():
            return refresh_states(session=session, now=self.runtime.clock.now())

    async def _log_forever(self) -> None:
        while True:
            await asyncio.sleep(COUNTERS_EVERY.total_seconds())
            self._log_counters()

    def _log_counters(self) -> None:
        if self.mqtt is not None:
            logger.info("mqtt ingest counters: %s", self.mqtt.counters.as_dict())
        if self.sl651 is not None and self.sink is not None:
            logger.info("sl651 counters: %s; sink: %s", self.sl651.counters.as_dict(),
                        self.sink.counters.as_dict())


async def serve(runtime: Runtime, options: IngestOptions, stop: asyncio.Event) -> None:
    """Run the ingest service until ``stop`` is set."""
    service = IngestService(runtime, options)
    try:
        await service.start()
        await stop.wait()
    finally:
        await service.stop()


def cli_ingest(
    settings: Settings,
    *,
    mqtt_host: str | None = "127.0.0.1",
    mqtt_port: int = 1883,
    sl651_port: int | None = DEFAULT_PORT,
    modbus: bool = True,
) -> int:
    """`grassroots ingest`: run every telemetry intake until Ctrl-C; 0 on a clean stop."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    runtime = Runtime(settings)
    options = IngestOptions(mqtt_host=mqtt_host, mqtt_port=mqtt_port, sl651_port=sl651_port,
                            modbus=modbus)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, stop.set)
        await serve(runtime, options, stop)

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    except OSError as error:  # e.g. the SL 651 port is taken
        logger.error("ingest could not start: %s", error)
        return 1
    finally:
        runtime.engine.dispose()
    return 0
